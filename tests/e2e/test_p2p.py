"""P2P (xtcp/xudp) on one host with real processes: the visitor and the owner meet through the server's
rendezvous, punch, and carry the visitor's bytes over QUIC without the server.

On one host every path is "direct" (the two sockets see each other's interface and loopback addresses);
the NAT cases are in tests/natlab. What this proves end to end: the rendezvous messages, the sealed
offers, the punch, QUIC with the pinned certificate and the visitor's proof, streams carrying TCP
connections (32 MiB each way, half-close) and datagrams, the path in logs and snapshots, the server's
counters, and that the server's relay carried none of those bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from pathlib import Path

import pytest
from support.streams import MiB, duplex_service, duplex_visit, payload, tcp_server
from support.stun import free_port_pair
from support.tunnel import StartPierce
from test_client_admin import admin_request, start_admin_client
from test_map_udp import udp_echo
from test_secret_proxies import SECRET, secret_proxy, serve_secret, visit, visitor_port
from test_tunnel_udp import Visitor

from pierce.p2p import keepalive


async def echo_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    writer.close()


def admin_auth(tmp_path: Path) -> dict[str, str]:
    token = (tmp_path / "client-state" / "admin.token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


async def direct_visitor(pierce: StartPierce, port: int, name: str, *extra: str, tcp: bool = True):  # type: ignore[no-untyped-def]
    """A P2P visitor once its direct paths are up: the UDP one (QUIC) and, for xtcp, a ready direct TCP
    connection. Returns the process and the path a new connection takes first (TCP before UDP)."""
    proc = await visit(pierce, port, name, "--p2p", *extra)
    (udp,) = await proc.wait_event("p2p.direct", lambda e: e["proto"] == "udp", timeout=20)
    assert udp["conn_path"].startswith("direct "), udp
    if not tcp:
        return proc, udp
    (first,) = await proc.wait_event("p2p.direct", lambda e: e["proto"] == "tcp", timeout=20)
    assert first["conn_path"] in ("direct lan", "direct tcp"), first
    return proc, first


@pytest.mark.parametrize("encrypt", [True, False], ids=["tls", "plain-spliced"])
async def test_xtcp_goes_direct_and_the_server_carries_none_of_the_bytes(
    pierce: StartPierce, tmp_path: Path, encrypt: bool
) -> None:
    """A connection takes a ready direct TCP connection (TLS pinned to the owner's certificate, or plain
    with proofs when encrypt_data = false): 32 MiB each way, half-close, and not a byte via the server."""
    size = 32 * MiB
    down, up = payload(size, 31), payload(size, 32)
    service, service_got = duplex_service(down)
    settings = {} if encrypt else {"transport": {"encrypt_data": False}}
    async with tcp_server(service) as local:
        server, port, owner = await serve_secret(
            pierce, tmp_path, [secret_proxy("xtcp", "p2p-ssh", local)], stun_port=free_port_pair(), **settings
        )
        visitor, direct = await direct_visitor(pierce, port, "p2p-ssh")  # the owner says whether to encrypt
        got = await duplex_visit("127.0.0.1", await visitor_port(visitor), up)
        assert got == (hashlib.sha256(down).hexdigest(), size)
        assert await service_got == (hashlib.sha256(up).hexdigest(), size)
        (opened,) = await visitor.wait_event("visitor.open")
        assert opened["conn_path"] == direct["conn_path"]
        (closed,) = await visitor.wait_event("visitor.close")
        assert closed["up_bytes"] == size and closed["down_bytes"] == size
        results = await server.wait_event("p2p.result", count=2)
        assert {r["conn_path"] for r in results} <= {"direct lan", "direct udp", "direct tcp"}
        assert {r["proxy"] for r in results} == {"p2p-ssh"}
        await owner.wait_event("p2p.direct")
        # Not one connection of this proxy crossed the server's relay.
        assert server.matching("proxy.conn_open") == []


async def test_xudp_datagrams_take_the_direct_path(pierce: StartPierce, tmp_path: Path) -> None:
    echo_transport, _, udp_local = await udp_echo()
    try:
        server, port, _ = await serve_secret(
            pierce, tmp_path, [secret_proxy("xudp", "p2p-dns", udp_local)], stun_port=free_port_pair()
        )
        visitor, direct = await direct_visitor(pierce, port, "p2p-dns", "--udp", tcp=False)
        sock = await Visitor.open(await visitor_port(visitor))
        try:
            for size in (1, 1400, 9000, 60000):
                datagram = random.Random(size).randbytes(size)
                assert await sock.exchange(datagram) == datagram
        finally:
            sock.close()
        (opened,) = await visitor.wait_event("visitor.open")
        assert opened["conn_path"] == direct["conn_path"]
        assert server.matching("proxy.conn_open") == []
    finally:
        echo_transport.close()


async def test_twenty_connections_at_once_over_the_direct_paths(pierce: StartPierce, tmp_path: Path) -> None:
    """More connections at once than direct TCP connections are ready: the rest go as QUIC streams on
    the one UDP path, never through the server."""

    async with tcp_server(echo_service) as local:
        server, port, _ = await serve_secret(
            pierce, tmp_path, [secret_proxy("xtcp", "p2p-ssh", local)], stun_port=free_port_pair()
        )
        visitor, _ = await direct_visitor(pierce, port, "p2p-ssh")
        vport = await visitor_port(visitor)

        async def one(seed: int) -> None:
            data = payload(MiB, seed)
            got = await duplex_visit("127.0.0.1", vport, data)
            assert got == (hashlib.sha256(data).hexdigest(), MiB)

        await asyncio.gather(*(one(seed) for seed in range(20)))
        opened = await visitor.wait_event("visitor.open", count=20)
        assert "relay" not in {e["conn_path"] for e in opened}
        assert "relay" not in {e["conn_path"] for e in server.matching("p2p.result")}
        assert server.matching("proxy.conn_open") == []


async def test_snapshots_say_which_path_and_its_rtt(pierce: StartPierce, tmp_path: Path) -> None:
    """``[[visitors]]`` of ``pierce client``: the admin API's snapshot names the path new connections
    take, the direct path's RTT and the attempts; the server counts only direct results."""
    async with tcp_server(echo_service) as local:
        server, port, _ = await serve_secret(
            pierce, tmp_path, [secret_proxy("xtcp", "p2p-ssh", local)], stun_port=free_port_pair()
        )
        visitor_cfg = {
            "type": "xtcp",
            "name": "to-ssh",
            "server_name": "p2p-ssh",
            "secret_key": SECRET,
            "bind_port": 0,
        }
        setup = await start_admin_client(
            pierce, tmp_path, port, [], client_id="laptop", visitors=[visitor_cfg]
        )
        await setup.proc.wait_event("p2p.direct", lambda e: e["proto"] == "tcp", timeout=20)
        status, _, body = await asyncio.to_thread(
            admin_request, setup.settings["admin_port"], "status", admin_auth(tmp_path)
        )
        assert status == 200
        (info,) = json.loads(body)["visitors"]
        assert info["type"] == "xtcp" and info["proxy"] == "p2p-ssh"
        assert info["path"] in ("direct lan", "direct tcp") and info["reason"] == ""
        assert info["rtt_ms"] > 0 and info["p2p_attempts"] == 1 and info["direct_since"] > 0
        counts = server.matching("p2p.result")
        assert counts and all(r["conn_path"] != "relay" for r in counts)


async def test_a_measured_mapping_lifetime_shortens_the_keepalive(
    pierce: StartPierce, tmp_path: Path
) -> None:
    """``pierce nat --lifetime`` recorded that mappings behind this address live 6 s idle: the visitor's
    direct path keeps alive every 3 s; the owner, with no record, every 15 s (the default)."""
    state = tmp_path / "visitor-state"
    keepalive.record(state, "127.0.0.1", 6.0)
    async with tcp_server(echo_service) as local:
        _, port, owner = await serve_secret(
            pierce, tmp_path, [secret_proxy("xtcp", "p2p-ssh", local)], stun_port=free_port_pair()
        )
        _, udp = await direct_visitor(pierce, port, "p2p-ssh", "--state-dir", str(state), tcp=False)
        assert udp["keepalive_s"] == 3.0, udp
        (owned,) = await owner.wait_event("p2p.direct", lambda e: e["proto"] == "udp")
        assert owned["keepalive_s"] == 15.0, owned
