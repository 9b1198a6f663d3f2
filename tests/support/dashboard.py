"""The server's web side in tests: a server with ``[web]`` on, a client with tcp proxies, traffic through
them, and plain HTTP requests to the API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import aiohttp

from support.procs import PierceProcess
from support.streams import free_port, payload, send_all
from support.tunnel import start_client, start_server

WEB_USER = "ops"
WEB_PASSWORD = "web-pw-Zr8qL2xT5vN9"


def tcp_proxy(name: str, local: str) -> dict[str, Any]:
    host, _, port = local.rpartition(":")
    return {"type": "tcp", "name": name, "local_ip": host, "local_port": int(port), "remote_port": 0}


async def start_web_server(pierce: Any, tmp_path: Path, **web: Any) -> tuple[PierceProcess, int, str]:
    """A server with ``[web]`` on a free loopback port; returns it, its control port and the web base URL."""
    server, port = await start_server(
        pierce, tmp_path, stun_port=0, web={"addr": "127.0.0.1", "port": free_port(), **web}
    )
    (ready,) = await server.wait_event("web.listening")
    return server, port, f"http://{ready['listen']}"


async def start_proxies(
    pierce: Any, tmp_path: Path, server_port: int, proxies: list[dict[str, Any]], name: str = "web-test"
) -> tuple[PierceProcess, dict[str, int]]:
    """A client with ``proxies``; returns it and each proxy's public port, once all are ready."""
    client = await start_client(pierce, tmp_path, server_port, proxies, name=name)
    ports = {}
    for proxy in proxies:
        (ready,) = await client.wait_event("proxy.ready", lambda e, n=proxy["name"]: e.get("proxy") == n)
        ports[proxy["name"]] = int(ready["remote_port"])
    return client, ports


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def request(
    method: str, url: str, *, auth: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, decoded JSON body or text); ``auth`` is an Authorization header value."""
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {**(headers or {}), **({"Authorization": auth} if auth else {})}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, headers=headers) as resp,
    ):
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def get_json(url: str, auth: str | None = None) -> Any:
    status, body = await request("GET", url, auth=auth)
    assert status == 200, (url, status, body)
    return body


async def echo_through(port: int, size: int) -> None:
    """Send ``size`` bytes through a proxy to the echo service and read them all back."""
    data = payload(size, 7)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await send_all(writer, data)
    writer.write_eof()
    async with asyncio.timeout(30):
        back = await reader.read(-1)
    writer.close()
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
