"""The web port faces strangers: its connections are capped (in all and per source) and a request head must
arrive within a deadline (slowloris), with a real `pierce server` and raw sockets on loopback.

Loopback has a whole /8, so connections from 127.0.0.2, 127.0.0.3, ... are other sources to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from support.dashboard import start_web_server
from support.procs import host_port

from pierce.web.app import HEAD_TIMEOUT_S, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE

#: What a deadline may overrun by on a busy machine.
SLACK_S = 3.0

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(base: str, source: str = "127.0.0.1") -> Conn:
    host, port = host_port(base.removeprefix("http://"))
    return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def get(conn: Conn, path: str = "/dashboard.js") -> int:
    """One keep-alive request on ``conn``; its status (the body is read and dropped)."""
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def refused(base: str, source: str) -> bytes:
    """Connect from ``source`` and read what the server says before it closes (it sends 503 unasked)."""
    reader, writer = await connect(base, source)
    try:
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


async def open_served(base: str, source: str, count: int) -> list[Conn]:
    conns = [await connect(base, source) for _ in range(count)]
    assert [await get(c) for c in conns] == [200] * count  # each one counted by the server
    return conns


async def test_connections_are_capped_in_all_and_per_source(pierce, tmp_path: Path) -> None:
    server, _, base = await start_web_server(pierce, tmp_path)
    held: list[Conn] = []
    try:
        held += await open_served(base, "127.0.0.1", MAX_CONNECTIONS_PER_SOURCE)
        answer = await refused(base, "127.0.0.1")
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        (line,) = await server.wait_event("web.turned_away")
        assert str(MAX_CONNECTIONS_PER_SOURCE) in line["reason"]

        sources = iter(f"127.0.0.{i}" for i in range(2, 255))
        while len(held) < MAX_CONNECTIONS:
            held += await open_served(
                base, next(sources), min(MAX_CONNECTIONS_PER_SOURCE, MAX_CONNECTIONS - len(held))
            )
        fresh = next(sources)
        answer = await refused(base, fresh)
        assert answer.startswith(b"HTTP/1.1 503 "), answer

        # One goes: a new connection is served again (once the server has seen the close).
        _, writer = held.pop()
        writer.close()
        async with asyncio.timeout(10):
            while True:
                conn = await connect(base, fresh)
                try:
                    with contextlib.suppress(asyncio.IncompleteReadError):
                        if await get(conn) == 200:
                            break
                finally:
                    conn[1].close()
    finally:
        for _, writer in held:
            writer.close()


async def trickle(conn: Conn, head: bytes, every_s: float = 1.0) -> float:
    """Send ``head`` a byte at a time, ``every_s`` apart, until the server closes; seconds it took."""
    reader, writer = conn
    start = time.monotonic()
    closed = asyncio.ensure_future(reader.read(-1))
    try:
        for byte in head:
            writer.write(bytes([byte]))
            done, _ = await asyncio.wait([closed], timeout=every_s)
            if done:
                return time.monotonic() - start
        raise AssertionError(f"the head was sent whole over {time.monotonic() - start:.1f} s without a cut")
    except ConnectionError:
        return time.monotonic() - start
    finally:
        closed.cancel()
        writer.close()


@pytest.mark.timeout(60)
async def test_a_slow_request_head_is_cut_at_the_deadline(pierce, tmp_path: Path) -> None:
    _, _, base = await start_web_server(pierce, tmp_path)
    slow_head = b"GET /api/serverinfo HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 100

    async def first_request() -> float:
        return await trickle(await connect(base), slow_head)

    async def second_request() -> float:
        conn = await connect(base, "127.0.0.2")
        assert await get(conn) == 200  # a normal request first, then the next head trickles in
        return await trickle(conn, slow_head)

    async def event_stream() -> int:
        """A stream is one long request: it outlives the head deadline."""
        reader, writer = await connect(base, "127.0.0.3")
        writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        events = 0
        deadline = time.monotonic() + HEAD_TIMEOUT_S + SLACK_S
        async with asyncio.timeout(HEAD_TIMEOUT_S + 3 * SLACK_S):
            while time.monotonic() < deadline:
                events += (await reader.readline()).startswith(b"event: state")
        writer.close()
        return events

    cut_first, cut_second, events = await asyncio.gather(first_request(), second_request(), event_stream())
    assert cut_first <= HEAD_TIMEOUT_S + SLACK_S, cut_first
    assert cut_second <= HEAD_TIMEOUT_S + SLACK_S, cut_second
    assert events >= HEAD_TIMEOUT_S // 2, events  # one every 2 s, all through
