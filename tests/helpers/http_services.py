"""HTTP services and clients for the virtual-host engine's tests.

- `web_service(name)`: an aiohttp app on a free loopback port that says who it is and what it saw,
  streams large bodies both ways (SHA-256 on arrival) and echoes websockets.
- `raw_service(answer)`: a socket server answering each request head with bytes of our choosing
  (close-delimited bodies, a service that drops kept connections).
- `file_service(directory)`: the standard library's static file server (``http.server``), which
  percent-decodes and normalises paths its own way, as many real backends do.
- `request_line_service()`: answers each request with its request line, to see what a service receives.
- `read_responses(...)`: responses read from a raw connection with httptools.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httptools
from aiohttp import WSMsgType, web
from support.streams import CHUNK, payload


@dataclass
class ServiceLog:
    """What a service saw: one entry per request."""

    requests: list[dict[str, Any]] = field(default_factory=list)


def web_app(name: str, seen: ServiceLog) -> web.Application:
    async def info(request: web.Request) -> web.Response:
        body = await request.read()
        doc = {
            "service": name,
            "method": request.method,
            "path": request.path_qs,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "header_list": list(request.headers.items()),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        seen.requests.append(doc)
        return web.json_response(doc, headers={"X-Service": name})

    async def download(request: web.Request) -> web.StreamResponse:
        size, seed = int(request.query["size"]), int(request.query.get("seed", "1"))
        seen.requests.append({"service": name, "path": request.path_qs})
        data = payload(size, seed)
        chunked = request.query.get("chunked") == "1"
        response = web.StreamResponse(headers={} if chunked else {"Content-Length": str(size)})
        if chunked:
            response.enable_chunked_encoding()
        await response.prepare(request)
        view = memoryview(data)
        for i in range(0, size if request.method != "HEAD" else 0, CHUNK):
            await response.write(view[i : i + CHUNK])
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        h, total = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(CHUNK):
            h.update(chunk)
            total += len(chunk)
        seen.requests.append({"service": name, "path": request.path_qs})
        return web.json_response(
            {
                "service": name,
                "sha256": h.hexdigest(),
                "size": total,
                "chunked": request.headers.get("Transfer-Encoding", "").lower() == "chunked",
            }
        )

    async def status(request: web.Request) -> web.Response:
        seen.requests.append({"service": name, "path": request.path_qs})
        return web.Response(status=int(request.match_info["code"]), headers={"X-Service": name})

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        seen.requests.append({"service": name, "path": request.path_qs})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"{name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/ws", ws_echo)
    app.router.add_route("*", "/{tail:.*}", info)
    return app


@contextlib.asynccontextmanager
async def web_service(name: str) -> AsyncIterator[tuple[int, ServiceLog]]:
    """Serve `web_app(name)` on a free loopback port; yields the port and what it sees."""
    seen = ServiceLog()
    runner = web.AppRunner(web_app(name, seen), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield port, seen
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await runner.cleanup()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.asynccontextmanager
async def file_service(directory: Path) -> AsyncIterator[int]:
    """Serve the files under ``directory`` on a free loopback port (threads of its own); yields the port."""
    handler = functools.partial(_QuietFiles, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="file service", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()


class _Heads:
    """httptools callbacks that only note when a request head is complete."""

    def __init__(self) -> None:
        self.heads = 0

    def on_headers_complete(self) -> None:
        self.heads += 1


Answer = Callable[[asyncio.StreamWriter], Awaitable[bool]]


@contextlib.asynccontextmanager
async def raw_service(answer: Answer) -> AsyncIterator[tuple[int, list[int]]]:
    """A service that calls ``answer(writer)`` for each request head (bodiless requests only).

    ``answer`` returns False to close the connection afterwards. Yields the port and a list that
    counts requests per accepted connection.
    """
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(connections)
        connections.append(0)
        heads = _Heads()
        parser = httptools.HttpRequestParser(heads)
        try:
            while data := await reader.read(65536):
                parser.feed_data(data)
                while heads.heads:
                    heads.heads -= 1
                    connections[index] += 1
                    if not await answer(writer):
                        return
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), connections
    finally:
        server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await server.wait_closed()


@contextlib.asynccontextmanager
async def request_line_service() -> AsyncIterator[int]:
    """A service that answers each request (bodiless) with its request line as the body, as received."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                line = head.partition(b"\r\n")[0]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await server.wait_closed()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    version: str

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


class _ResponseCollector:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self.in_message = False

    def on_message_begin(self) -> None:
        self._headers, self._body = [], []
        self.in_message = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode(), value.decode()))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        version = self.parser.get_http_version()
        self.done.append(Response(status, self._headers, b"".join(self._body), version))
        self.in_message = False


async def read_responses(reader: asyncio.StreamReader, count: int, *, to_eof: bool = False) -> list[Response]:
    """Read ``count`` responses (interim 1xx ones included) from a raw connection.

    With ``to_eof`` the connection is read to its end: a close-delimited last response is completed
    by the EOF, and the test learns that the server closed.
    """
    collector = _ResponseCollector()
    while len(collector.done) < count or to_eof:
        data = await reader.read(65536)
        if not data:
            if collector.in_message:
                # A close-delimited body ends with the connection.
                collector.on_message_complete()
            break
        collector.parser.feed_data(data)
    return collector.done
