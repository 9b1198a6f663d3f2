"""The HTTP virtual-host engine on real loopback sockets: a listener runs `serve_http` per connection and
routes open real connections to aiohttp services (or small raw ones); browsers are aiohttp, curl and
raw sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import random
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import pytest
from helpers.http_services import Response, raw_service, read_responses, web_service
from support.streams import MiB, payload, tcp_server

from pierce.addr import HostPort
from pierce.dial import connect_tcp
from pierce.listeners import TcpListener
from pierce.relay import End, SocketEnd
from pierce.vhost.http import HttpSettings, serve_http

A, B = "a.example.com", "b.example.com"


@dataclass(eq=False)
class Route:
    """An http proxy as the engine sees it, reaching a local port."""

    name: str
    port: int
    http_user: str | None = None
    http_password: str | None = None
    host_header_rewrite: str | None = None
    request_headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    opened: int = 0
    denied: tuple[str, ...] = ()

    def admits(self, host: str) -> bool:
        return host not in self.denied

    async def open(self, visitor: tuple[str, int]) -> End:
        self.opened += 1
        return SocketEnd(await connect_tcp(HostPort("127.0.0.1", self.port), 5.0))


class Routes:
    """Host (without port) and longest path prefix -> route."""

    def __init__(self, *entries: tuple[str, str, Route]) -> None:
        self.entries = list(entries)

    def __call__(self, host: str, path: str) -> Route | None:
        name = host.rpartition(":")[0] if ":" in host else host
        best: tuple[int, Route] | None = None
        for domain, location, route in self.entries:
            under = path == location or path.startswith(location.rstrip("/") + "/")
            if domain == name.lower() and under and (best is None or len(location) > best[0]):
                best = (len(location), route)
        return None if best is None else best[1]


@dataclass
class Front:
    port: int
    accepted: int = 0
    finished: int = 0
    #: Exceptions that escaped serve_http (there must be none).
    errors: list[BaseException] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def idle(self) -> None:
        """Wait until every accepted connection has been served to its end."""
        async with asyncio.timeout(10):
            while self.finished < self.accepted:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def vhost(routes: Routes, settings: HttpSettings | None = None) -> AsyncIterator[Front]:
    """A listener on a free loopback port that serves every connection with `serve_http`."""
    front = Front(0)

    async def visitor(conn: socket.socket, addr: Any) -> None:
        front.accepted += 1
        try:
            await serve_http(SocketEnd(conn), (addr[0], addr[1]), routes, settings or HttpSettings())
        except Exception as exc:
            front.errors.append(exc)
            raise
        finally:
            front.finished += 1
            front.changed.set()

    listener = TcpListener.open(HostPort("127.0.0.1", 0), visitor, name="vhost test")
    front.port = listener.port
    try:
        yield front
        assert front.errors == []
    finally:
        await listener.close()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def raw_exchange(port: int, data: bytes, count: int, *, to_eof: bool = False) -> list[Response]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_responses(reader, count, to_eof=to_eof)
    finally:
        writer.close()


def get(path: str, host: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", f"Host: {host}", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def test_two_domains_reach_two_services_and_unknown_hosts_get_404() -> None:
    async with web_service("a") as (pa, _), web_service("b") as (pb, _):
        routes = Routes((A, "/", Route("a", pa)), (B, "/", Route("b", pb)))
        async with vhost(routes) as front, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{front.port}"
            for host, service in ((A, "a"), (f"{B}:{front.port}", "b"), ("A.Example.com", "a")):
                async with session.get(f"{url}/x?q=1", headers={"Host": host}) as resp:
                    doc = await resp.json()
                    assert (resp.status, doc["service"], doc["path"]) == (200, service, "/x?q=1")
            async with session.get(url, headers={"Host": "nowhere.example.com"}) as resp:
                assert resp.status == 404
                assert "404 Not Found" in await resp.text()
        page = b"<html><body>custom: no such site</body></html>"
        async with vhost(routes, HttpSettings(not_found_page=page)) as front:
            (custom,) = await raw_exchange(front.port, get("/", "nowhere.example.com"), 1)
            assert (custom.status, custom.body) == (404, page)


async def test_paths_go_to_their_services_over_one_keepalive_connection() -> None:
    async with web_service("site") as (ps, _), web_service("api") as (pa, _):
        site, api = Route("site", ps), Route("api", pa)
        routes = Routes((A, "/", site), (A, "/api", api))
        async with vhost(routes) as front:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                expected = [("/", "site"), ("/api", "api"), ("/api/v1/x", "api"), ("/apix", "site")] * 2
                for path, service in expected:
                    async with session.get(f"http://127.0.0.1:{front.port}{path}", headers={"Host": A}) as r:
                        doc = await r.json()
                        assert (doc["service"], doc["path"]) == (service, path)
                async with session.post(
                    f"http://127.0.0.1:{front.port}/api/post", headers={"Host": A}, data=b"x" * 1000
                ) as r:
                    doc = await r.json()
                    assert doc["body_sha256"] == hashlib.sha256(b"x" * 1000).hexdigest()
            # One browser connection; one backend connection per route, reused for every request.
            assert (front.accepted, site.opened, api.opened) == (1, 1, 1)


async def test_a_denied_address_gets_403_and_never_reaches_the_service() -> None:
    async with web_service("a") as (pa, seen):
        route = Route("a", pa, denied=("127.0.0.1",))
        async with vhost(Routes((A, "/", route))) as front, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{front.port}/x"
            async with session.get(url, headers={"Host": A}) as resp:
                assert resp.status == 403
        assert seen.requests == [] and route.opened == 0


async def test_basic_auth_is_answered_before_the_service() -> None:
    async with web_service("a") as (pa, seen):
        route = Route("a", pa, http_user="alice", http_password="s3cret:x")
        async with vhost(Routes((A, "/", route))) as front, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{front.port}/private"
            for auth in (None, basic("alice", "wrong"), basic("bob", "s3cret:x"), "Basic !!notbase64"):
                headers = {"Host": A} | ({"Authorization": auth} if auth else {})
                async with session.get(url, headers=headers) as resp:
                    assert resp.status == 401
                    assert resp.headers["WWW-Authenticate"].startswith('Basic realm="')
            assert seen.requests == [] and route.opened == 0
            async with session.get(
                url, headers={"Host": A, "Authorization": basic("alice", "s3cret:x")}
            ) as r:
                doc = await r.json()
                assert r.status == 200 and doc["service"] == "a"
                assert "authorization" not in doc["headers"]  # the credentials were for us


async def test_forwarded_rewritten_and_set_headers() -> None:
    async with web_service("a") as (pa, _):
        route = Route(
            "a",
            pa,
            host_header_rewrite="inside.lan",
            request_headers={"X-From-Pierce": "yes", "User-Agent": "pierce-test"},
            response_headers={"X-Service": "replaced", "X-Frame-Options": "DENY"},
        )
        settings = HttpSettings(scheme="https")
        async with vhost(Routes((A, "/", route)), settings) as front:
            request = get(
                "/h",
                f"{A}:8080",
                "X-Forwarded-For: 203.0.113.9",
                "X-Real-IP: 6.6.6.6",
                "X-Forwarded-Proto: gopher",
                "User-Agent: browser",
            )
            (resp,) = await raw_exchange(front.port, request, 1)
            doc = json.loads(resp.body)
            seen = doc["headers"]
            assert seen["host"] == "inside.lan"
            assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
            assert seen["x-real-ip"] == "127.0.0.1"
            assert seen["x-forwarded-proto"] == "https"
            assert seen["x-forwarded-host"] == f"{A}:8080"
            assert seen["x-from-pierce"] == "yes"
            names = [k.lower() for k, _ in doc["header_list"]]
            assert names.count("user-agent") == 1 and seen["user-agent"] == "pierce-test"
            assert names.count("host") == 1
            assert resp.header("X-Service") == "replaced"
            assert resp.header("X-Frame-Options") == "DENY"


async def test_unreachable_service_gets_502_and_the_connection_goes_on() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # bound, never listening: connections are refused
        async with web_service("a") as (pa, _):
            routes = Routes((A, "/", Route("a", pa)), (B, "/", Route("dead", dead_port)))
            async with vhost(routes) as front:
                both = get("/", B) + get("/", A)
                first, second = await raw_exchange(front.port, both, 2)
                assert first.status == 502 and b"502 Bad Gateway" in first.body
                assert second.status == 200 and json.loads(second.body)["service"] == "a"


async def test_malformed_and_oversized_heads_get_400_and_431() -> None:
    async with web_service("a") as (pa, seen):
        async with vhost(Routes((A, "/", Route("a", pa)))) as front:
            cases = [
                (b"NOT HTTP AT ALL\r\n\r\n", 400),
                (b"GET / HTTP/1.1\r\nHost: a\nBad\r\n\r\n", 400),
                (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
                (get("/", A, f"Host: {B}"), 400),  # two Hosts
                (get("/", A, "X-Big: " + "y" * 100_000), 431),
                (get("/", A, *(f"X-{i}: {i}" for i in range(150))), 431),
                (b"GET / HTTP/1.1\r\nHost: " + A.encode() + b"\r\nX-Endless: " + b"z" * 300_000, 431),
            ]
            for request, status in cases:
                (resp,) = await raw_exchange(front.port, request, 1, to_eof=True)
                assert resp.status == status, request[:60]
                assert resp.header("Connection") == "close"
            assert seen.requests == []
            (resp,) = await raw_exchange(front.port, get("/after", A), 1)
            assert resp.status == 200
            # The limits are settings.
            strict = HttpSettings(max_head_size=200, max_header_count=3)
        async with vhost(Routes((A, "/", Route("a", pa))), strict) as front:
            (resp,) = await raw_exchange(front.port, get("/", A, "X-1: 1", "X-2: 2", "X-3: 3"), 1)
            assert resp.status == 431
            (resp,) = await raw_exchange(front.port, get("/" + "p" * 300, A), 1)
            assert resp.status == 431
            (resp,) = await raw_exchange(front.port, get("/", A, "X-1: 1"), 1)
            assert resp.status == 200


async def test_chunked_upload_and_download_keep_their_bytes() -> None:
    up, down = payload(3 * MiB + 17, seed=1), payload(5 * MiB + 3, seed=2)

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(up), 100_000):
            yield up[i : i + 100_000]

    async with (
        web_service("a") as (pa, _),
        vhost(Routes((A, "/", Route("a", pa)))) as front,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{front.port}"
        async with session.post(f"{base}/upload", data=pieces(), headers={"Host": A}) as resp:
            doc = await resp.json()
            assert doc["chunked"] is True
            assert (doc["sha256"], doc["size"]) == (hashlib.sha256(up).hexdigest(), len(up))
        query = f"size={len(down)}&seed=2&chunked=1"
        async with session.get(f"{base}/download?{query}", headers={"Host": A}) as resp:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            h = hashlib.sha256()
            async for chunk in resp.content.iter_chunked(1 << 16):
                h.update(chunk)
            assert h.hexdigest() == hashlib.sha256(down).hexdigest()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_32_mib_download_and_upload_with_curl(tmp_path: Path) -> None:
    size = 32 * MiB
    up = payload(size, seed=3)
    (tmp_path / "up.bin").write_bytes(up)
    async with web_service("a") as (pa, _), web_service("b") as (pb, _):
        routes = Routes((A, "/", Route("a", pa)), (B, "/", Route("b", pb)))
        async with vhost(routes) as front:
            port = front.port
            resolve = ["--resolve", f"{A}:{port}:127.0.0.1", "--resolve", f"{B}:{port}:127.0.0.1"]
            proc = await asyncio.create_subprocess_exec(
                "curl",
                "-sS",
                "--fail",
                *resolve,
                "-o",
                str(tmp_path / "down.bin"),
                f"http://{A}:{port}/download?size={size}&seed=4",
                # Over 1 MiB curl asks `Expect: 100-continue` first.
                "--next",
                "-sS",
                "--fail",
                *resolve,
                "--data-binary",
                f"@{tmp_path / 'up.bin'}",
                "-H",
                "Content-Type: application/octet-stream",
                f"http://{B}:{port}/upload",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            down = hashlib.sha256((tmp_path / "down.bin").read_bytes()).hexdigest()
            assert down == hashlib.sha256(payload(size, seed=4)).hexdigest()
            doc = json.loads(out)
            assert (doc["service"], doc["size"], doc["sha256"]) == ("b", size, hashlib.sha256(up).hexdigest())


async def test_websocket_echo_passes_through() -> None:
    big = payload(MiB, seed=5)
    async with web_service("a") as (pa, _), web_service("b") as (pb, _):
        routes = Routes((A, "/", Route("a", pa)), (B, "/", Route("b", pb)))
        async with vhost(routes) as front, aiohttp.ClientSession() as session:
            # A plain request first: the upgrade comes on a kept connection with another route in use.
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as one:
                async with one.get(f"http://127.0.0.1:{front.port}/", headers={"Host": A}) as resp:
                    assert (await resp.json())["service"] == "a"
                async with one.ws_connect(f"http://127.0.0.1:{front.port}/ws", headers={"Host": B}) as ws:
                    await ws.send_str("hello")
                    assert await ws.receive_str() == "b:hello"
                    await ws.send_bytes(big)
                    echoed = await ws.receive_bytes()
                    assert hashlib.sha256(echoed).digest() == hashlib.sha256(big).digest()
                    await ws.close()
            assert front.accepted == 1
            async with session.ws_connect(f"http://127.0.0.1:{front.port}/ws", headers={"Host": A}) as ws:
                for i in range(20):
                    await ws.send_str(f"m{i}")
                    assert await ws.receive_str() == f"a:m{i}"


async def test_head_204_304_expect_continue_and_keepalive() -> None:
    async with web_service("a") as (pa, _):
        route = Route("a", pa)
        async with vhost(Routes((A, "/", route))) as front:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                base = f"http://127.0.0.1:{front.port}"
                async with session.head(f"{base}/download?size=5000", headers={"Host": A}) as resp:
                    assert resp.status == 200 and resp.headers["Content-Length"] == "5000"
                    assert await resp.read() == b""
                for code in (204, 304):
                    async with session.get(f"{base}/status/{code}", headers={"Host": A}) as resp:
                        assert resp.status == code and await resp.read() == b""
                body = payload(200_000, seed=6)
                async with session.post(f"{base}/e", data=body, headers={"Host": A}, expect100=True) as resp:
                    assert (await resp.json())["body_sha256"] == hashlib.sha256(body).hexdigest()
                async with session.get(f"{base}/last", headers={"Host": A}) as resp:
                    assert (await resp.json())["path"] == "/last"
            assert (front.accepted, route.opened) == (1, 1)


async def test_close_delimited_responses_and_http10_browsers() -> None:
    async def close_delimited(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        return False

    async with (
        raw_service(close_delimited) as (port, _),
        vhost(Routes((A, "/", Route("raw", port)))) as front,
    ):
        # An HTTP/1.1 browser gets it chunked and keeps its connection.
        first, second = await raw_exchange(front.port, get("/1", A) + get("/2", A), 2)
        for resp in (first, second):
            assert (resp.status, resp.body) == (200, b"until the end")
            assert resp.header("Transfer-Encoding") == "chunked"
        # An HTTP/1.0 browser gets it delimited by close.
        (resp,) = await raw_exchange(front.port, get("/", A, version="1.0"), 1, to_eof=True)
        assert (resp.status, resp.body) == (200, b"until the end")
        assert resp.header("Transfer-Encoding") is None and resp.header("Connection") == "close"

    async with web_service("a") as (pa, _), vhost(Routes((A, "/", Route("a", pa)))) as front:
        # HTTP/1.0 with keep-alive; a chunked answer is turned into a close-delimited one.
        request = get("/x", A, "Connection: keep-alive", version="1.0")
        chunked = get("/download?size=70000&seed=7&chunked=1", A, "Connection: keep-alive", version="1.0")
        first, second = await raw_exchange(front.port, request + chunked, 2, to_eof=True)
        assert first.header("Connection") == "keep-alive"
        assert json.loads(first.body)["path"] == "/x"
        assert second.header("Transfer-Encoding") is None and second.body == payload(70000, seed=7)


async def test_pipelined_requests_half_close_and_a_service_that_drops_kept_connections() -> None:
    count = 0

    async def then_close(writer: asyncio.StreamWriter) -> bool:
        nonlocal count
        count += 1
        body = f"answer {count}".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        return False  # closes a connection it announced as kept

    async with raw_service(then_close) as (port, connections), web_service("a") as (pa, _):
        raw, a = Route("raw", port), Route("a", pa)
        async with vhost(Routes((A, "/", a), (B, "/", raw))) as front:
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.write(get("/1", A) + get("/2", B) + get("/3", A))
            await writer.drain()
            got = await read_responses(reader, 3)
            assert [json.loads(got[0].body)["path"], got[1].body, json.loads(got[2].body)["path"]] == [
                "/1",
                b"answer 1",
                "/3",
            ]
            # The raw service has closed its kept connection: the next request opens a new one.
            writer.write(get("/4", B))
            writer.write_eof()  # half-close: the answer still arrives, then the connection ends
            (resp,) = await read_responses(reader, 1, to_eof=True)
            assert resp.body == b"answer 2"
            writer.close()
            assert connections == [1, 1] and raw.opened == 2 and a.opened == 1


async def test_acme_challenge_is_answered_before_routing() -> None:
    def challenge(token: str) -> bytes | None:
        return b"key-authorization-of-" + token.encode() if token == "tok123" else None

    async with web_service("a") as (pa, seen):
        settings = HttpSettings(acme_challenge=challenge)
        async with vhost(Routes((A, "/", Route("a", pa))), settings) as front:
            known = get("/.well-known/acme-challenge/tok123", "unrouted.example.com")
            unknown = get("/.well-known/acme-challenge/other", A)
            first, second = await raw_exchange(front.port, known + unknown, 2)
            assert (first.status, first.body) == (200, b"key-authorization-of-tok123")
            assert second.status == 200 and json.loads(second.body)["service"] == "a"
            assert len(seen.requests) == 1


async def test_routing_path_is_normalised_and_one_debug_event_per_request() -> None:
    async with web_service("public") as (pp, _), web_service("admin") as (pa, _):
        admin = Route("admin", pa, http_user="root", http_password="pw")
        routes = Routes((A, "/", Route("public", pp)), (A, "/admin", admin))
        handler = Records()
        records = handler.records
        logger = logging.getLogger("pierce.vhost.http")
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.DEBUG)
        try:
            async with vhost(routes) as front:
                sneaky = get("/%61dmin/x", A) + get("/public/../admin", A) + get("/x", A)
                first, second, third = await raw_exchange(front.port, sneaky, 3)
                assert (first.status, second.status, third.status) == (401, 401, 200)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
        requests = [r for r in records if getattr(r, "event", None) == "vhost.http.request"]
        assert [r.fields["status"] for r in requests] == [401, 401, 200]  # type: ignore[attr-defined]
        assert requests[2].fields["proxy"] == "public"  # type: ignore[attr-defined]


async def test_idle_timeouts_408_and_504() -> None:
    never = asyncio.Event()

    async def silent(writer: asyncio.StreamWriter) -> bool:
        await never.wait()
        return False

    async with raw_service(silent) as (port, _):
        settings = HttpSettings(timeout=0.3)
        async with vhost(Routes((A, "/", Route("silent", port))), settings) as front:
            # An idle keep-alive connection is closed without an answer.
            assert await raw_exchange(front.port, b"", 0, to_eof=True) == []
            # A head that stops halfway gets 408.
            (resp,) = await raw_exchange(front.port, b"GET / HTTP/1.1\r\nHo", 1, to_eof=True)
            assert resp.status == 408
            # A service that never answers: 504.
            (resp,) = await raw_exchange(front.port, get("/", A), 1)
            assert resp.status == 504
            await front.idle()


async def test_a_side_that_goes_away_mid_body_ends_both_connections() -> None:
    backend_done: asyncio.Queue[str] = asyncio.Queue()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers with a huge body until the engine drops the connection."""
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except ConnectionError:
            await backend_done.put("download closed")
        finally:
            writer.close()

    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Promises 100 bytes, sends 10, closes."""
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        writer.close()

    async def upload_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads a request body until the engine drops the connection."""
        while await reader.read(65536):
            pass
        await backend_done.put("upload closed")
        writer.close()

    async with tcp_server(endless) as e, tcp_server(short) as sh, tcp_server(upload_sink) as up:
        routes = Routes(
            (A, "/", Route("endless", int(e.rpartition(":")[2]))),
            (B, "/short", Route("short", int(sh.rpartition(":")[2]))),
            (B, "/up", Route("up", int(up.rpartition(":")[2]))),
        )
        async with vhost(routes) as front:
            # The browser resets in the middle of a download.
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.write(get("/", A))
            await reader.readexactly(1 << 20)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.close()
            async with asyncio.timeout(10):
                assert await backend_done.get() == "download closed"
            # The service closes in the middle of a response: the browser's connection ends too.
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.write(get("/short", B))
            data = await reader.read()
            assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n0123456789")
            writer.close()
            # The browser goes away in the middle of an upload.
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.write(b"POST /up HTTP/1.1\r\nHost: b.example.com\r\nContent-Length: 1000000\r\n\r\n")
            writer.write(b"y" * 300_000)
            await writer.drain()
            writer.close()
            async with asyncio.timeout(10):
                assert await backend_done.get() == "upload closed"
            await front.idle()
            # The server stops in the middle of a download (serve_http is cancelled).
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.write(get("/", A))
            await reader.readexactly(1 << 20)
        async with asyncio.timeout(10):
            assert await backend_done.get() == "download closed"
            while await reader.read(1 << 20):  # to EOF: the browser's connection was closed too
                pass
        writer.close()


async def test_bad_service_answers_get_502() -> None:
    async def garbage(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SPEAK FRIEND AND ENTER\r\n\r\n")
        return False

    async def unasked_switch(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        return False

    async def huge_head(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * 300_000 + b"\r\nContent-Length: 0\r\n\r\n")
        return False

    async with (
        raw_service(garbage) as (pg, _),
        raw_service(unasked_switch) as (ps, _),
        raw_service(huge_head) as (ph, _),
    ):
        routes = Routes(
            (A, "/", Route("garbage", pg)), (A, "/big", Route("big", ph)), (B, "/", Route("switch", ps))
        )
        async with vhost(routes) as front:
            answers = await raw_exchange(front.port, get("/", A) + get("/", B) + get("/big", A), 3)
            assert [r.status for r in answers] == [502, 502, 502]


async def test_connect_upgrade_with_body_and_absolute_form() -> None:
    async with web_service("a") as (pa, seen), vhost(Routes((A, "/", Route("a", pa)))) as front:
        (resp,) = await raw_exchange(front.port, b"CONNECT a.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 1)
        assert resp.status == 405
        upgrade_with_body = get("/", A, "Connection: upgrade", "Upgrade: h2c", "Content-Length: 3") + b"abc"
        (resp,) = await raw_exchange(front.port, upgrade_with_body, 1)
        assert resp.status == 501
        absolute = b"GET http://a.example.com/abs?x=1 HTTP/1.1\r\nHost: elsewhere.example.com\r\n\r\n"
        (resp,) = await raw_exchange(front.port, absolute, 1)
        doc = json.loads(resp.body)
        assert (doc["path"], doc["headers"]["host"]) == ("/abs?x=1", A)
        assert [r["path"] for r in seen.requests] == ["/abs?x=1"]


async def test_mangled_requests_never_escape_the_engine() -> None:
    """Seeded mutations of valid requests: each gets an answer or a closed connection, never a crash."""
    rng = random.Random(20261122)
    valid = [
        get("/x", A, "Accept: */*"),
        b"POST /p HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\nHost: a.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        get("/w", A, "Connection: upgrade", "Upgrade: websocket"),
    ]
    specials = b"\r\n\x00: \t%/.?#\x7f\xff"

    def mangle(data: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            what = rng.randrange(4)
            at = rng.randrange(len(buf) + 1)
            if what == 0 and buf:
                del buf[min(at, len(buf) - 1)]
            elif what == 1:
                buf[at:at] = bytes([rng.choice(specials)])
            elif what == 2:
                buf[at:at] = rng.randbytes(rng.randint(1, 20))
            else:
                del buf[at:]
        return bytes(buf)

    async def one(data: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        try:
            writer.write(data)
            writer.write_eof()
            async with asyncio.timeout(10):
                for resp in await read_responses(reader, 0, to_eof=True):
                    assert resp.status in (101, 200, 400, 404, 405, 431, 501, 502), data
        except httptools.HttpParserError:
            pass  # a close-delimited answer cut short is still no crash
        finally:
            writer.close()

    async with web_service("a") as (pa, _), vhost(Routes((A, "/", Route("a", pa)))) as front:
        cases = [mangle(rng.choice(valid)) for _ in range(300)] + [rng.randbytes(200) for _ in range(20)]
        for i in range(0, len(cases), 20):
            await asyncio.gather(*(one(c) for c in cases[i : i + 20]))
        await front.idle()
