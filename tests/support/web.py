"""Inside web services for vhost tests: who answered, what it saw, large bodies, a websocket echo."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web

from support.streams import CHUNK, payload


def web_app(name: str) -> web.Application:
    async def info(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "service": name,
                "path": request.path_qs,
                "host": request.headers.get("Host", ""),
                "headers": {k.lower(): v for k, v in request.headers.items()},
            },
            headers={"X-Service": name},
        )

    async def download(request: web.Request) -> web.StreamResponse:
        size, seed = int(request.query["size"]), int(request.query.get("seed", "1"))
        data = payload(size, seed)
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        view = memoryview(data)
        for i in range(0, size, CHUNK):
            await response.write(view[i : i + CHUNK])
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        h, total = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(CHUNK):
            h.update(chunk)
            total += len(chunk)
        return web.json_response({"sha256": h.hexdigest(), "size": total})

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", ws_echo)
    app.router.add_route("*", "/{tail:.*}", info)
    return app


@contextlib.asynccontextmanager
async def web_service(name: str) -> AsyncIterator[int]:
    """Serve `web_app(name)` on a free loopback port; yields the port."""
    runner = web.AppRunner(web_app(name), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await runner.cleanup()


async def curl(*args: str) -> tuple[int, str, str]:
    """Run curl; returns (exit code, stdout, stderr)."""
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "30", *args, stdout=pipe, stderr=pipe
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
