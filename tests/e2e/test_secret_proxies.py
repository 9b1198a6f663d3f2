"""Secret proxies (stcp, sudp) and visitors, with real `pierce server`, `pierce client` and `pierce visit`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import pytest
from support.procs import PierceProcess
from support.streams import MiB, duplex_service, duplex_visit, echo, payload, send_all, tcp_server
from support.tunnel import TOKEN, StartPierce, start_client, start_server
from test_map_udp import udp_echo
from test_tunnel_udp import MAX_DATAGRAM, Visitor

SECRET = "open sesame 7d1e"


def secret_proxy(kind: str, name: str, local: str, **extra: Any) -> dict[str, Any]:
    host, _, port = local.rpartition(":")
    return {
        "type": kind,
        "name": name,
        "local_ip": host,
        "local_port": int(port),
        "secret_key": SECRET,
        **extra,
    }


async def serve_secret(
    pierce: StartPierce, tmp_path: Path, proxies: list[dict[str, Any]], *, stun_port: int = 0, **settings: Any
) -> tuple[PierceProcess, int, PierceProcess]:
    """A server (STUN on ``stun_port``; none by default) and the owner's client with ``proxies``, all
    registered."""
    server, port = await start_server(pierce, tmp_path, stun_port=stun_port, **settings)
    owner = await start_client(pierce, tmp_path, port, proxies, name="owner", **settings)
    for proxy in proxies:
        (ready,) = await owner.wait_event("proxy.ready", lambda e, n=proxy["name"]: e.get("proxy") == n)
        assert ready["remote_port"] == 0
    return server, port, owner


async def visit(
    pierce: StartPierce, port: int, name: str, *extra: str, secret: str = SECRET
) -> PierceProcess:
    return await pierce(
        "visit", "--server", f"127.0.0.1:{port}", "--token", TOKEN, "--name", name, "--secret", secret, *extra
    )


async def visitor_port(proc: PierceProcess) -> int:
    (ready,) = await proc.wait_event("visitor.listening")
    return int(ready["port"])


async def echo_through(port: int, size: int, seed: int) -> bytes:
    """Send ``size`` seeded bytes and half-close while reading the echo to EOF; return what came back."""
    data = payload(size, seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def upload() -> None:
        with contextlib.suppress(ConnectionError):  # a refused visitor's connection closes early
            await send_all(writer, data)
            writer.write_eof()

    try:
        sending = asyncio.create_task(upload())
        try:
            back = await reader.read(-1)
        except ConnectionResetError:  # closed with our bytes unread: refused
            back = b""
        await sending
    finally:
        writer.close()
    return back


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("encrypt", [True, False], ids=["tls-data", "plain-work-conn"])
async def test_stcp_64mib_both_ways_with_half_close_and_no_public_port(
    pierce, tmp_path: Path, encrypt: bool
) -> None:
    size = 64 * MiB
    down, up = payload(size, 21), payload(size, 22)
    service, service_got = duplex_service(down)
    async with tcp_server(service) as local:
        server, port, owner = await serve_secret(
            pierce, tmp_path, [secret_proxy("stcp", "files", local)], transport={"encrypt_data": encrypt}
        )
        visitor = await visit(pierce, port, "files", "--bind", "127.0.0.1:0", "--client-id", "laptop")
        (checked,) = await visitor.wait_event("visitor.checked")
        assert checked["proxy"] == "files"
        vport = await visitor_port(visitor)
        # Registered, yet the server listens on nothing but its control port.
        assert listening_tcp_ports(server.proc.pid) == {port}
        got_down = await duplex_visit("127.0.0.1", vport, up)
        got_up = await service_got
    assert got_up == (hashlib.sha256(up).hexdigest(), size)
    assert got_down == (hashlib.sha256(down).hexdigest(), size)
    (opened,) = await server.wait_event("proxy.conn_open")
    assert (opened["proxy"], opened["visitor_id"], opened["type"]) == ("files", "laptop", "stcp")
    for proc, name in ((server, "proxy.conn_close"), (owner, "proxy.conn_close"), (visitor, "visitor.close")):
        (closed,) = await proc.wait_event(name)
        assert (closed["up_bytes"], closed["down_bytes"]) == (size, size), (name, closed)
        assert "error" not in closed
    assert not owner.matching("visitor.refused")


async def test_wrong_secret_is_refused_and_logged_by_the_owner(pierce, tmp_path: Path) -> None:
    async with tcp_server(echo) as local:
        server, port, owner = await serve_secret(pierce, tmp_path, [secret_proxy("stcp", "ssh", local)])
        intruder = await visit(pierce, port, "ssh", "--client-id", "intruder", secret="guess")
        assert await intruder.wait_exit() == 1
        (refused,) = intruder.matching("visitor.refused")
        assert refused["code"] == "auth_failed"
        assert refused["reason"] == "wrong secret for proxy 'ssh'"
        assert not intruder.matching("visitor.listening")  # no port was opened
        (logged,) = await owner.wait_event("visitor.refused")
        assert (logged["proxy"], logged["visitor_id"], logged["code"]) == ("ssh", "intruder", "auth_failed")
        assert logged["visitor"].startswith("127.0.0.1:")
        await server.wait_event("visitor.refused", lambda e: e["visitor"] == logged["visitor"])

        # Nothing else is affected: the owner stays logged in and the right secret gets through.
        friend = await visit(pierce, port, "ssh")
        data = payload(MiB + 3, 5)
        back = await echo_through(await visitor_port(friend), len(data), 5)
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
        assert not owner.matching("client.disconnected")
        assert len(owner.matching("visitor.refused")) == 1


async def test_unknown_name_wrong_kind_and_wrong_token_are_refused(pierce, tmp_path: Path) -> None:
    async with tcp_server(echo) as local:
        _, port, owner = await serve_secret(pierce, tmp_path, [secret_proxy("stcp", "ssh", local)])
        unknown = await visit(pierce, port, "nope")
        wrong_kind = await visit(pierce, port, "ssh", "--udp")
        assert await unknown.wait_exit() == 1
        assert await wrong_kind.wait_exit() == 1
        (refused,) = unknown.matching("visitor.refused")
        assert (refused["code"], refused["reason"]) == (
            "unknown_proxy",
            "no secret proxy named 'nope' on this server",
        )
        (refused,) = wrong_kind.matching("visitor.refused")
        assert refused["code"] == "unknown_proxy"
        assert "'ssh' is stcp, this visitor is sudp" in refused["reason"]

        bad_token = await pierce(
            "visit", "--server", f"127.0.0.1:{port}", "--token", "nope", "--name", "ssh", "--secret", SECRET
        )
        assert await bad_token.wait_exit() == 1
        (failed,) = bad_token.matching("visitor.failed")
        assert "wrong token" in failed["error"]
        assert not owner.matching("visitor.refused")  # none of them reached the owner


USERS = [
    {"name": "friend", "token": "friend-token-3c9a1f0e7b2d"},
    {"name": "stranger", "token": "stranger-token-8e4b2a6c1d0f"},
]


async def test_allow_users_and_visitors_tables_of_client_toml(pierce, tmp_path: Path) -> None:
    """``[[visitors]]`` in client.toml; only users in ``allow_users`` pass, also per connection. The
    user is the one the server authenticated: a client id the visitor picks itself proves nothing."""
    async with tcp_server(echo) as local:
        _, port = await start_server(pierce, tmp_path, stun_port=0, users=USERS)
        owner = await start_client(
            pierce, tmp_path, port, [secret_proxy("stcp", "db", local, allow_users=["friend"])], name="owner"
        )
        await owner.wait_event("proxy.ready")
        visitors = [
            {"type": "stcp", "name": "to-db", "server_name": "db", "secret_key": SECRET, "bind_port": 0}
        ]
        friend = await start_client(
            pierce,
            tmp_path,
            port,
            [],
            name="laptop",
            visitors=visitors,
            user="friend",
            token=USERS[0]["token"],
        )
        # The stranger names itself "friend" as its client id: that is not who it is.
        stranger = await start_client(
            pierce,
            tmp_path,
            port,
            [],
            name="friend",
            visitors=visitors,
            user="stranger",
            token=USERS[1]["token"],
        )

        await friend.wait_event("visitor.checked")
        data = payload(256 * 1024, 9)
        back = await echo_through(await visitor_port(friend), len(data), 9)
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()

        (refused,) = await stranger.wait_event("visitor.refused")
        assert refused["code"] == "not_allowed"
        assert refused["reason"] == "user 'stranger' is not in allow_users of proxy 'db'"
        # A client keeps the port open (the owner may change its mind); each connection is checked again.
        assert await echo_through(await visitor_port(stranger), 1000, 3) == b""
        await stranger.wait_event("visitor.refused", count=2)
        logged = await owner.wait_event("visitor.refused", count=2)
        assert {(e["user"], e["visitor_id"]) for e in logged} == {("stranger", "friend")}
        assert len(owner.matching("visitor.refused")) == 2


async def test_sudp_round_trips_of_several_sizes(pierce, tmp_path: Path) -> None:
    echo_transport, echo_server, local = await udp_echo()
    try:
        _, port, owner = await serve_secret(pierce, tmp_path, [secret_proxy("sudp", "dns", local)])
        visitor = await visit(pierce, port, "dns", "--udp")
        await visitor.wait_event("visitor.checked")
        vport = await visitor_port(visitor)
        sizes = [1, 2, 100, 1400, 1500, 9000, 32_000, MAX_DATAGRAM - 1, MAX_DATAGRAM]

        async def app(aid: int) -> tuple[str, str]:
            rng = random.Random(aid)
            sock = await Visitor.open(vport)
            replies = []
            try:
                for size in sizes + [rng.randint(2, MAX_DATAGRAM) for _ in range(6)]:
                    data = bytes([aid]) + rng.randbytes(size - 1)
                    replies.append(await sock.exchange(data))
                assert {d[0] for d in sock.drain()} == {aid}  # only its own datagrams came back
            finally:
                sock.close()
            sent = hashlib.sha256(b"".join(len(d).to_bytes(4, "big") + d for d in sock.sent))
            got = hashlib.sha256(b"".join(len(d).to_bytes(4, "big") + d for d in replies))
            return sent.hexdigest(), got.hexdigest()

        for sent, got in await asyncio.gather(*(app(aid) for aid in range(3))):
            assert sent == got
        # One tunnel for the visitor, a flow per application at the owner.
        assert len(echo_server.peers) == 3
        opened = await owner.wait_event("udp.open", lambda e: e.get("proxy") == "dns", count=3)
        assert len({e["client"] for e in opened}) == 3
        assert len(visitor.matching("visitor.open")) == 1
        assert len(owner.matching("proxy.conn_open")) == 1
    finally:
        echo_transport.close()


async def test_p2p_proxies_refuse_visitors_of_other_kinds(pierce, tmp_path: Path) -> None:
    """An xtcp proxy opens no port and takes only P2P visitors: an stcp visitor is told which kind it is.
    (P2P visits themselves: tests/e2e/test_p2p.py and the NAT matrix in tests/natlab.)"""
    async with tcp_server(echo) as local:
        _, port, owner = await serve_secret(pierce, tmp_path, [secret_proxy("xtcp", "p2p-ssh", local)])
        (ready,) = owner.matching("proxy.ready")
        assert ready["remote_port"] == 0
        plain = await visit(pierce, port, "p2p-ssh")  # an stcp visitor for an xtcp proxy
        assert await plain.wait_exit() == 1
        (refused,) = plain.matching("visitor.refused")
        assert "'p2p-ssh' is xtcp, this visitor is stcp" in refused["reason"]


async def test_a_burst_beyond_the_servers_pending_login_cap_gets_through(
    pierce: StartPierce, tmp_path: Path
) -> None:
    """600 connections at once to one stcp visitor: each is a visit through the server, more than the
    server lets wait to log in at once (``max_pending_logins``, 256). The visitor has at most a few
    handshakes going at a time (`MAX_PENDING_VISITS`), so none is reset and every echo comes back whole."""
    async with tcp_server(echo) as local:
        _, port, _ = await serve_secret(pierce, tmp_path, [secret_proxy("stcp", "burst", local)])
        visitor = await visit(pierce, port, "burst")
        vport = await visitor_port(visitor)
        got = await asyncio.gather(*(echo_through(vport, 2048, seed) for seed in range(600)))
        assert [g == payload(2048, seed) for seed, g in enumerate(got)] == [True] * 600
        assert visitor.matching("visitor.failed") == []
