"""`pierce map` TCP forwarding, tested with real processes on loopback and bytes checked end to end."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from support.procs import host_port

MiB = 1024 * 1024
CHUNK = 256 * 1024


@pytest.fixture(autouse=True, params=["splice", "copy"])
def relay_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test through both socket fast paths of the relay (see pierce.relay)."""
    mode = str(request.param)
    if mode == "splice" and sys.platform != "linux":
        pytest.skip("splice is Linux-only")
    monkeypatch.setenv("PIERCE_RELAY", mode)
    return mode


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def send_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        writer.write(view[i : i + CHUNK])
        await writer.drain()


async def read_digest(reader: asyncio.StreamReader) -> tuple[str, int]:
    h = hashlib.sha256()
    total = 0
    while chunk := await reader.read(CHUNK):
        h.update(chunk)
        total += len(chunk)
    return h.hexdigest(), total


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """A target service in the test process; yields its ``host:port``."""
    server = await asyncio.start_server(handler, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_64mib_both_directions_at_once(pierce) -> None:
    size = 64 * MiB
    down = payload(size, 1)
    up = payload(size, 2)
    server_got: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sending = asyncio.create_task(send_all(writer, down))
        server_got.set_result(await read_digest(reader))
        await sending
        writer.write_eof()
        await writer.drain()
        writer.close()

    async with tcp_server(target) as addr:
        proc = await pierce("map", "127.0.0.1:0", addr)
        (listen,) = await proc.listening()
        reader, writer = await asyncio.open_connection(*host_port(listen))

        async def upload() -> None:
            await send_all(writer, up)
            writer.write_eof()

        sending = asyncio.create_task(upload())
        got_down = await read_digest(reader)
        await sending
        got_up = await server_got
        writer.close()

    assert got_up == (hashlib.sha256(up).hexdigest(), size)
    assert got_down == (hashlib.sha256(down).hexdigest(), size)
    (closed,) = await proc.wait_event("tcp.close")
    assert closed["up_bytes"] == size
    assert closed["down_bytes"] == size
    assert closed["duration_s"] > 0
    assert "error" not in closed


async def test_half_close_client_still_gets_whole_reply(pierce) -> None:
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


async def test_200_concurrent_connections(pierce) -> None:
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


async def test_no_fd_left_behind_when_either_side_vanishes(pierce) -> None:
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
        await proc.wait_event("tcp.close", count=30)
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
