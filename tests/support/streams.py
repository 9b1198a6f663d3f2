"""Byte streams for transfer tests: seeded payloads, SHA-256 on arrival, small target services."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

MiB = 1024 * 1024
CHUNK = 256 * 1024


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


def duplex_service(down: bytes) -> tuple[Handler, asyncio.Future[tuple[str, int]]]:
    """A service that sends ``down`` while reading everything; the future gets (sha256, size) it read."""
    got: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sending = asyncio.create_task(send_all(writer, down))
        got.set_result(await read_digest(reader))
        await sending
        writer.write_eof()
        await writer.drain()
        writer.close()

    return service, got


async def duplex_visit(host: str, port: int, up: bytes) -> tuple[str, int]:
    """Connect, send ``up`` and half-close while reading to EOF at the same time; (sha256, size) read."""
    reader, writer = await asyncio.open_connection(host, port)

    async def upload() -> None:
        await send_all(writer, up)
        writer.write_eof()

    sending = asyncio.create_task(upload())
    got = await read_digest(reader)
    await sending
    writer.close()
    return got


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
