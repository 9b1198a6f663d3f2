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
import random
from pathlib import Path

from support.streams import MiB, duplex_service, duplex_visit, payload, tcp_server
from support.stun import free_port_pair
from support.tunnel import StartPierce
from test_map_udp import udp_echo
from test_secret_proxies import secret_proxy, serve_secret, visit, visitor_port
from test_tunnel_udp import Visitor


async def direct_visitor(pierce: StartPierce, port: int, name: str, *extra: str):  # type: ignore[no-untyped-def]
    proc = await visit(pierce, port, name, "--p2p", *extra)
    (direct,) = await proc.wait_event("p2p.direct", timeout=20)
    assert direct["conn_path"].startswith("direct "), direct
    return proc, direct


async def test_xtcp_goes_direct_and_the_server_carries_none_of_the_bytes(
    pierce: StartPierce, tmp_path: Path
) -> None:
    size = 32 * MiB
    down, up = payload(size, 31), payload(size, 32)
    service, service_got = duplex_service(down)
    async with tcp_server(service) as local:
        server, port, owner = await serve_secret(
            pierce, tmp_path, [secret_proxy("xtcp", "p2p-ssh", local)], stun_port=free_port_pair()
        )
        visitor, direct = await direct_visitor(pierce, port, "p2p-ssh")
        got = await duplex_visit("127.0.0.1", await visitor_port(visitor), up)
        assert got == (hashlib.sha256(down).hexdigest(), size)
        assert await service_got == (hashlib.sha256(up).hexdigest(), size)
        (opened,) = await visitor.wait_event("visitor.open")
        assert opened["conn_path"] == direct["conn_path"]
        (closed,) = await visitor.wait_event("visitor.close")
        assert closed["up_bytes"] == size and closed["down_bytes"] == size
        (result,) = await server.wait_event("p2p.result")
        assert result["conn_path"] == direct["conn_path"] and result["proxy"] == "p2p-ssh"
        (owned,) = await owner.wait_event("p2p.direct")
        assert owned["conn_path"] == direct["conn_path"]
        # Not one connection of this proxy crossed the server's relay.
        assert server.matching("proxy.conn_open") == []


async def test_xudp_datagrams_take_the_direct_path(pierce: StartPierce, tmp_path: Path) -> None:
    echo_transport, _, udp_local = await udp_echo()
    try:
        server, port, _ = await serve_secret(
            pierce, tmp_path, [secret_proxy("xudp", "p2p-dns", udp_local)], stun_port=free_port_pair()
        )
        visitor, direct = await direct_visitor(pierce, port, "p2p-dns", "--udp")
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


async def test_twenty_connections_at_once_over_one_direct_path(pierce: StartPierce, tmp_path: Path) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        writer.close()

    async with tcp_server(echo) as local:
        server, port, _ = await serve_secret(
            pierce, tmp_path, [secret_proxy("xtcp", "p2p-ssh", local)], stun_port=free_port_pair()
        )
        visitor, direct = await direct_visitor(pierce, port, "p2p-ssh")
        vport = await visitor_port(visitor)

        async def one(seed: int) -> None:
            data = payload(MiB, seed)
            got = await duplex_visit("127.0.0.1", vport, data)
            assert got == (hashlib.sha256(data).hexdigest(), MiB)

        await asyncio.gather(*(one(seed) for seed in range(20)))
        opened = await visitor.wait_event("visitor.open", count=20)
        assert {e["conn_path"] for e in opened} == {direct["conn_path"]}
        assert len(server.matching("p2p.result")) == 1  # one rendezvous for all twenty
        assert server.matching("proxy.conn_open") == []
