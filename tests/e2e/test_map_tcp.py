"""`pierce map` TCP forwarding, tested with real processes on loopback and bytes checked end to end."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import sys

import pytest
from support.procs import host_port
from support.streams import (
    CHUNK,
    MiB,
    duplex_service,
    duplex_visit,
    echo,
    payload,
    read_digest,
    send_all,
    tcp_server,
)


@pytest.fixture(autouse=True, params=["splice", "copy"])
def relay_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test through both socket fast paths of the relay (see pierce.relay)."""
    mode = str(request.param)
    if mode == "splice" and sys.platform != "linux":
        pytest.skip("splice is Linux-only")
    monkeypatch.setenv("PIERCE_RELAY", mode)
    return mode


async def test_64mib_both_directions_at_once(pierce, relay_mode: str) -> None:
    size = 64 * MiB
    down = payload(size, 1)
    up = payload(size, 2)
    service, server_got = duplex_service(down)
    async with tcp_server(service) as addr:
        proc = await pierce("map", "127.0.0.1:0", addr)
        (listen,) = await proc.listening()
        got_down = await duplex_visit(*host_port(listen), up)
        got_up = await server_got

    assert got_up == (hashlib.sha256(up).hexdigest(), size)
    assert got_down == (hashlib.sha256(down).hexdigest(), size)
    (closed,) = await proc.wait_event("tcp.close")
    assert closed["up_bytes"] == size
    assert closed["down_bytes"] == size
    assert closed["duration_s"] > 0
    assert "error" not in closed
    assert closed["mode"] == relay_mode  # the forced fast path is the one that ran


async def test_half_close_client_still_gets_whole_reply(pierce, relay_mode: str) -> None:
    request = payload(3 * MiB + 17, 3)

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Reply only after the client's EOF, as an HTTP/1.0 or `nc -N` exchange does.
        digest, _ = await read_digest(reader)
        reply = bytes.fromhex(digest) * (5 * MiB // 32)
        await send_all(writer, reply)
        writer.close()

    async with tcp_server(target) as addr:
        proc = await pierce("map", "127.0.0.1:0", addr)
        (listen,) = await proc.listening()
        reader, writer = await asyncio.open_connection(*host_port(listen))
        await send_all(writer, request)
        writer.write_eof()
        reply = await reader.read(-1)
        writer.close()

    assert reply == hashlib.sha256(request).digest() * (5 * MiB // 32)
    (closed,) = await proc.wait_event("tcp.close")
    assert (closed["up_bytes"], closed["mode"]) == (len(request), relay_mode)


async def test_200_concurrent_connections(pierce, relay_mode: str) -> None:
    async with tcp_server(echo) as addr:
        proc = await pierce("map", "127.0.0.1:0", addr)
        (listen,) = await proc.listening()

        async def one(i: int) -> bool:
            data = payload(64 * 1024 + i, 100 + i)
            reader, writer = await asyncio.open_connection(*host_port(listen))
            await send_all(writer, data)
            writer.write_eof()
            back = await reader.read(-1)
            writer.close()
            return back == data

        results = await asyncio.gather(*(one(i) for i in range(200)))
    assert all(results), f"{results.count(False)} of 200 connections returned wrong bytes"
    closes = await proc.wait_event("tcp.close", count=200)
    assert all("error" not in e for e in closes)
    assert {e["mode"] for e in closes} == {relay_mode}


async def test_target_refused_is_logged_and_rule_stays_up(pierce) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    proc = await pierce("map", "127.0.0.1:0", f"127.0.0.1:{dead_port}")
    (listen,) = await proc.listening()
    for _ in range(3):
        reader, writer = await asyncio.open_connection(*host_port(listen))
        assert await reader.read(-1) == b""  # closed without data
        writer.close()
    failures = await proc.wait_event("tcp.target_failed", count=3)
    assert all("refused" in e["error"].lower() for e in failures)
    assert proc.proc.returncode is None


async def test_target_connect_timeout(pierce) -> None:
    # A listener whose accept queue is full drops SYNs: a real unanswered connect, on loopback.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        proc = await pierce("map", "--connect-timeout", "0.5", "127.0.0.1:0", f"127.0.0.1:{port}")
        (listen,) = await proc.listening()
        reader, writer = await asyncio.open_connection(*host_port(listen))
        async with asyncio.timeout(10):
            assert await reader.read(-1) == b""
        writer.close()
        (failure,) = await proc.wait_event("tcp.target_failed")
        assert "timed out after 0.5s" in failure["error"]
    finally:
        for s in fillers:
            s.close()
        full.close()


async def test_no_fd_left_behind_when_either_side_vanishes(pierce, relay_mode: str) -> None:
    target_writers: list[asyncio.StreamWriter] = []
    target_seen = asyncio.Queue[asyncio.StreamWriter]()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target_writers.append(writer)
        await target_seen.put(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(CHUNK):
                pass
        writer.close()

    async with tcp_server(target) as addr:
        proc = await pierce("map", "127.0.0.1:0", addr)
        (listen,) = await proc.listening()
        baseline = proc.fd_count()
        clients = []
        for i in range(30):
            _reader, writer = await asyncio.open_connection(*host_port(listen))
            writer.write(payload(100_000, i))
            await writer.drain()
            target_writer = await target_seen.get()
            clients.append((i, writer, target_writer))
        assert proc.fd_count() > baseline
        for i, writer, target_writer in clients:
            if i % 3 == 0:  # client resets
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            elif i % 3 == 1:  # client closes normally
                writer.close()
            else:  # target vanishes (reset) while the client keeps its end open
                ts = target_writer.get_extra_info("socket")
                ts.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                target_writer.transport.abort()
        closes = await proc.wait_event("tcp.close", count=30)
        assert {e["mode"] for e in closes} == {relay_mode}
        assert proc.fd_count() == baseline
        for _, writer, _ in clients:
            writer.close()


async def test_allow_list_refuses_other_sources(pierce) -> None:
    async with tcp_server(echo) as addr:
        proc = await pierce("map", "-c", "/dev/null", "127.0.0.1:0", addr)  # both: usage error
        assert await proc.wait_exit() == 2

        denied = await pierce("map", "--allow", "10.0.0.0/8", "127.0.0.1:0", addr)
        allowed = await pierce("map", "--allow", "127.0.0.0/8", "--allow", "192.0.2.1", "127.0.0.1:0", addr)
        (d_listen,) = await denied.listening()
        (a_listen,) = await allowed.listening()

        reader, writer = await asyncio.open_connection(*host_port(d_listen))
        writer.write(b"hello")
        with contextlib.suppress(ConnectionError):
            assert await reader.read(-1) == b""
        writer.close()
        (ev,) = await denied.wait_event("tcp.denied")
        assert ev["client"].startswith("127.0.0.1:")

        reader, writer = await asyncio.open_connection(*host_port(a_listen))
        writer.write(b"hello")
        writer.write_eof()
        assert await reader.read(-1) == b"hello"
        writer.close()


async def test_ipv6_literals(pierce) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback address")
    async with tcp_server(echo, host="::1") as addr:
        proc = await pierce("map", "[::1]:0", addr)
        (listen,) = await proc.listening()
        assert listen.startswith("[::1]:")
        reader, writer = await asyncio.open_connection(*host_port(listen))
        writer.write(b"six")
        writer.write_eof()
        assert await reader.read(-1) == b"six"
        writer.close()


async def test_hostname_target_is_resolved(pierce) -> None:
    async with tcp_server(echo) as addr:
        port = host_port(addr)[1]
        proc = await pierce("map", "127.0.0.1:0", f"localhost:{port}")
        (listen,) = await proc.listening()
        reader, writer = await asyncio.open_connection(*host_port(listen))
        writer.write(b"by name")
        writer.write_eof()
        assert await reader.read(-1) == b"by name"
        writer.close()
        (opened,) = await proc.wait_event("tcp.open")
        assert opened["target"].endswith(f":{port}")


async def test_port_already_in_use_is_a_clear_error(pierce) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        proc = await pierce("map", f"127.0.0.1:{port}", "127.0.0.1:9")
        assert await proc.wait_exit() == 1
        errors = [e["msg"] for e in proc.events if e["level"] == "error"]
        assert any(f"cannot listen on 127.0.0.1:{port} (tcp): address already in use" in m for m in errors)
    finally:
        busy.close()
