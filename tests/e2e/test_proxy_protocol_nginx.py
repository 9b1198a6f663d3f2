"""PROXY protocol headers from our builders, read by a real nginx (`listen ... proxy_protocol`).

nginx logs ``$proxy_protocol_addr`` and friends; each test sends a header with a made-up visitor
address, then an HTTP request for a file, and checks the access log line and the file's SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.streams import MiB, free_port, payload

from pierce.addr import SockAddr
from pierce.proxy_protocol import build_v1, build_v2

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package nginx)")

FILE_NAME = "payload.bin"
FILE = payload(MiB + 7, 5)
LOG_FORMAT = (
    "'$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr "
    '$proxy_protocol_server_port "$request" $status $body_bytes_sent\''
)


@dataclass
class Nginx:
    """A running nginx serving ``root`` on 127.0.0.1:``port`` behind ``proxy_protocol``."""

    proc: asyncio.subprocess.Process
    root: Path
    port: int
    output: list[str] = field(default_factory=list)

    def access_log(self) -> list[str]:
        return (self.root / "access.log").read_text().splitlines()


def nginx_conf(root: Path, port: int) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {kind}_temp_path {root / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {root / "nginx.pid"};
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
  access_log off;
{temp}
  log_format visitor {LOG_FORMAT};
  server {{
    listen 127.0.0.1:{port} proxy_protocol;
    access_log {root / "access.log"} visitor;
    root {root / "www"};
  }}
}}
"""


async def read_until_started(proc: asyncio.subprocess.Process, output: list[str]) -> None:
    """Collect nginx's stderr until the master has its listening socket and starts a worker."""
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        output.append(line.decode(errors="replace").rstrip())
        if "start worker process" in output[-1]:
            return
    raise AssertionError("nginx exited while starting:\n" + "\n".join(output))


async def drain(proc: asyncio.subprocess.Process, output: list[str]) -> None:
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        output.append(line.decode(errors="replace").rstrip())


@pytest.fixture
async def nginx() -> AsyncIterator[Nginx]:
    """nginx in a temporary directory; stopped and the directory removed whatever the test did."""
    assert NGINX is not None
    root = Path(tempfile.mkdtemp(prefix="pierce-nginx-"))
    proc: asyncio.subprocess.Process | None = None
    draining: asyncio.Task[None] | None = None
    try:
        (root / "www").mkdir()
        (root / "www" / FILE_NAME).write_bytes(FILE)
        port = free_port()
        (root / "nginx.conf").write_text(nginx_conf(root, port))
        proc = await asyncio.create_subprocess_exec(
            NGINX,
            "-p",
            str(root),
            "-c",
            str(root / "nginx.conf"),
            "-e",
            "stderr",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        server = Nginx(proc, root, port)
        async with asyncio.timeout(20):
            await read_until_started(proc, server.output)
        draining = asyncio.create_task(drain(proc, server.output))
        yield server
    finally:
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if draining is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await draining
        shutil.rmtree(root, ignore_errors=True)


async def get_through_header(port: int, header: bytes, path: str) -> tuple[bytes, bytes]:
    """Send ``header`` then a GET for ``path``; (status line, body) of nginx's answer, read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: nas.example.com\r\nConnection: close\r\n\r\n".encode()
        writer.write(header + request)
        await writer.drain()
        async with asyncio.timeout(20):
            response = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


Builder = Callable[[SockAddr | None, SockAddr | None], bytes]
CASES: list[tuple[str, Builder, SockAddr, SockAddr]] = [
    ("v1-ipv4", build_v1, ("198.51.100.7", 4711), ("203.0.113.80", 80)),
    ("v2-ipv4", build_v2, ("198.51.100.7", 4711), ("203.0.113.80", 80)),
    ("v1-ipv6", build_v1, ("2001:db8::7", 4711, 0, 0), ("2001:db8::80", 80, 0, 0)),
    ("v2-ipv6", build_v2, ("2001:db8::7", 4711, 0, 0), ("2001:db8::80", 80, 0, 0)),
    ("v2-mapped", build_v2, ("::ffff:198.51.100.9", 50000, 0, 0), ("::ffff:203.0.113.80", 443, 0, 0)),
]


@pytest.mark.parametrize(("case", "build", "source", "destination"), CASES, ids=[c[0] for c in CASES])
async def test_nginx_logs_the_visitor_address_from_our_header(
    nginx: Nginx, case: str, build: Builder, source: SockAddr, destination: SockAddr
) -> None:
    path = f"/{FILE_NAME}?case={case}"
    status, body = await get_through_header(nginx.port, build(source, destination), path)

    assert status == b"HTTP/1.1 200 OK"
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(FILE).hexdigest()
    src_host, dst_host = (host.removeprefix("::ffff:") for host in (source[0], destination[0]))
    assert nginx.access_log() == [
        f'{src_host} {source[1]} {dst_host} {destination[1]} "GET {path} HTTP/1.1" 200 {len(FILE)}'
    ], nginx.output


@pytest.mark.parametrize("build", [build_v1, build_v2], ids=["v1-unknown", "v2-local"])
async def test_nginx_accepts_unknown_and_local_headers(nginx: Nginx, build: Builder) -> None:
    status, body = await get_through_header(nginx.port, build(None, None), f"/{FILE_NAME}")

    assert status == b"HTTP/1.1 200 OK"
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(FILE).hexdigest()
    (line,) = nginx.access_log()
    assert line.startswith(f'- - - - "GET /{FILE_NAME} HTTP/1.1" 200 '), line


async def test_nginx_refuses_a_connection_without_header(nginx: Nginx) -> None:
    status, _ = await get_through_header(nginx.port, b"", f"/{FILE_NAME}")
    assert status == b""
    assert nginx.access_log() == []


# -- through the tunnel: the client sends the header with the real visitor's address -------------------


async def visit_through(port: int, path: str, host: str = "nas.example.com") -> tuple[int, bytes, bytes]:
    """GET ``path`` from the public ``port``; (visitor's source port, status line, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    source_port = writer.get_extra_info("sockname")[1]
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(20):
            response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return source_port, head.split(b"\r\n", 1)[0], body


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("kind", ["tcp", "http"])
async def test_proxy_tells_nginx_the_visitor_address(
    pierce, tmp_path: Path, nginx: Nginx, kind: str, version: str
) -> None:
    """The client puts the real visitor's address (and the public port it came to) in front of the bytes."""
    from support.tunnel import start_client, start_server

    proxy: dict[str, object] = {"type": kind, "name": "web", "local_port": nginx.port}
    proxy["proxy_protocol_version"] = version
    public = free_port()
    if kind == "tcp":
        _, control = await start_server(pierce, tmp_path)
        proxy["remote_port"] = public
    else:
        _, control = await start_server(pierce, tmp_path, vhost_http_port=public)
        proxy["custom_domains"] = ["nas.example.com"]
    client = await start_client(pierce, tmp_path, control, [proxy])
    await client.wait_event("proxy.ready")
    path = f"/{FILE_NAME}?via={kind}-{version}"
    source_port, status, body = await visit_through(public, path)
    assert status == b"HTTP/1.1 200 OK"
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(FILE).hexdigest()
    assert nginx.access_log() == [
        f'127.0.0.1 {source_port} 127.0.0.1 {public} "GET {path} HTTP/1.1" 200 {len(FILE)}'
    ], nginx.output
