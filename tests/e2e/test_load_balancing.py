"""Load balancing with real `pierce server` and several `pierce client` processes on loopback: members of a
group share one port or domain and take turns; a member whose local service fails its health check leaves
the group without a visitor noticing, and comes back when it recovers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.certs import self_signed
from support.procs import PierceProcess
from support.streams import free_port
from support.tunnel import TOKEN, StartPierce, start_client, start_server, write_toml

KEY = "group-key-Vb7nQ2xL9w"


class IdService:
    """A local service answering each connection's line with its id and the line (``b:<line>``); it can
    be stopped (its port refuses) and started again on the same port."""

    def __init__(self, ident: str, tls: ssl.SSLContext | None = None) -> None:
        self.ident = ident
        self.port = 0
        self.tls = tls
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            writer.write(f"{self.ident}:".encode() + line)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def id_services(*idents: str) -> AsyncIterator[list[IdService]]:
    services = [IdService(i) for i in idents]
    for s in services:
        await s.start()
    try:
        yield services
    finally:
        for s in services:
            with contextlib.suppress(Exception):
                await s.stop()


async def visit(
    port: int, nonce: int, *, connect: str = "", tls: ssl.SSLContext | None = None, sni: str = ""
) -> str | None:
    """One short verified connection: the id of the member whose service answered, None when it failed.

    ``connect``: a tcpmux name to ask for first (HTTP CONNECT); ``tls``: a TLS session inside, asking
    for ``sni``."""
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if connect:
                writer.write(f"CONNECT {connect}:22 HTTP/1.1\r\nHost: {connect}:22\r\n\r\n".encode())
                if not (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200"):
                    writer.close()
                    return None
            if tls is not None:
                await writer.start_tls(tls, server_hostname=sni)
            try:
                writer.write(f"{nonce}\n".encode())
                await writer.drain()
                answer = await reader.read(-1)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
        return None
    ident, _, echoed = answer.decode(errors="replace").partition(":")
    return ident if echoed == f"{nonce}\n" else None


def member(name: str, service: IdService, remote_port: int = 0, **options: Any) -> dict[str, Any]:
    return {
        "type": "tcp",
        "name": name,
        "local_ip": "127.0.0.1",
        "local_port": service.port,
        "remote_port": remote_port,
        "group": "g",
        "group_key": KEY,
        **options,
    }


async def ready_port(client: PierceProcess, name: str) -> int:
    (ready,) = await client.wait_event("proxy.ready", lambda e: e.get("proxy") == name)
    return int(ready["remote_port"])


async def waited(server: PierceProcess, name: str, proxy: str, *, count: int = 1) -> None:
    await server.wait_event(name, lambda e: e.get("proxy") == proxy, count=count, timeout=20)


async def test_three_clients_share_one_tcp_port_in_turns(pierce: StartPierce, tmp_path: Path) -> None:
    web_port = free_port()
    server, control = await start_server(pierce, tmp_path, web={"addr": "127.0.0.1", "port": web_port})
    async with id_services("a", "b", "c") as (a, b, c):
        public = free_port()
        first = await start_client(pierce, tmp_path, control, [member("a", a, public)], name="ca")
        assert await ready_port(first, "a") == public
        # Later members ask for port 0: they join the group's port.
        others = [
            await start_client(pierce, tmp_path, control, [member(n, s)], name=f"c{n}")
            for n, s in (("b", b), ("c", c))
        ]
        assert [await ready_port(p, n) for p, n in zip(others, "bc", strict=True)] == [public, public]
        await waited(server, "proxy.group_joined", "c")

        got = [await visit(public, i) for i in range(30)]
        assert Counter(got) == {"a": 10, "b": 10, "c": 10}, got

        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"http://127.0.0.1:{web_port}/api/proxies")
            text = await resp.text()
        shown = {p["name"]: (p["group"], p["group_members"], p["remote_port"]) for p in json.loads(text)}
        assert shown == {n: ("g", 3, public) for n in "abc"}
        assert KEY not in text

        # A member's client goes away: the others take its turns; the port stays open.
        await others[1].stop()
        await waited(server, "proxy.group_left", "c")
        got = [await visit(public, i) for i in range(20)]
        assert Counter(got) == {"a": 10, "b": 10}, got

        await first.stop()
        await others[0].stop()
        await server.wait_event("proxy.closed", lambda e: e.get("proxy") in ("a", "b"), count=2)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", public)
        assert server.matching("proxy.group_left", lambda e: e.get("members") == 0)

    for proc in (server, first, *others):
        assert not any(KEY in json.dumps(e) for e in proc.events)
        assert not any(KEY in line for line in proc.other_lines)


def client_doc(control: int, name: str, proxies: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "server_addr": "127.0.0.1",
        "server_port": control,
        "token": TOKEN,
        "client_id": name,
        "proxies": proxies,
    }


async def test_a_wrong_group_key_or_other_settings_are_refused_and_a_reload_fixes_it(
    pierce: StartPierce, tmp_path: Path
) -> None:
    server, control = await start_server(pierce, tmp_path)
    async with id_services("a", "b", "c") as (a, b, c):
        first = await start_client(pierce, tmp_path, control, [member("a", a)], name="ca")
        public = await ready_port(first, "a")
        wrong = "not-the-key-Zq4"
        bad_key = await start_client(pierce, tmp_path, control, [member("b", b, group_key=wrong)], name="cb")
        (refused,) = await bad_key.wait_event("proxy.refused", lambda e: e.get("proxy") == "b")
        assert "wrong group_key for group 'g'" in refused["error"], refused
        other = await start_client(
            pierce, tmp_path, control, [member("c", c, allow_ips=["127.0.0.0/8"])], name="cc"
        )
        (refused,) = await other.wait_event("proxy.refused", lambda e: e.get("proxy") == "c")
        assert "group 'g' is open with other allow_ips" in refused["error"], refused
        assert Counter([await visit(public, i) for i in range(4)]) == {"a": 4}

        # The right key, by a reload: it joins.
        write_toml(tmp_path / "cb.toml", client_doc(control, "cb", [member("b", b)]))
        bad_key.proc.send_signal(signal.SIGHUP)
        assert await ready_port(bad_key, "b") == public
        assert Counter([await visit(public, i) for i in range(4)]) == {"a": 2, "b": 2}

    for proc in (server, first, bad_key, other):
        for secret in (KEY, wrong):
            assert not any(secret in json.dumps(e) for e in proc.events)


async def test_no_visitor_fails_once_a_dead_member_is_marked_down_and_it_comes_back(
    pierce: StartPierce, tmp_path: Path
) -> None:
    """The issue's test: a steady stream of short verified connections while one member's service dies
    and recovers. Connections that reach the dying member before its health check marks it down may
    fail; from the moment the server has taken it out of the group none may, through its recovery."""
    server, control = await start_server(pierce, tmp_path)
    check = {"type": "tcp", "interval_s": 0.2, "timeout_s": 3, "max_failed": 2}
    async with id_services("a", "b") as (a, b):
        ca = await start_client(pierce, tmp_path, control, [member("a", a, health_check=check)], name="ca")
        public = await ready_port(ca, "a")
        cb = await start_client(pierce, tmp_path, control, [member("b", b, health_check=check)], name="cb")
        await ready_port(cb, "b")

        phase = "both"
        results: list[tuple[str, str | None]] = []
        changed = asyncio.Condition()
        stop = asyncio.Event()

        async def stream() -> None:
            nonce = 0
            while not stop.is_set():
                nonce += 1
                started_in = phase
                got = await visit(public, nonce)
                async with changed:
                    results.append((started_in, got))
                    changed.notify_all()

        async def until(pred: Any) -> None:
            async with asyncio.timeout(20), changed:
                await changed.wait_for(lambda: pred(results))

        def in_phase(name: str) -> list[str | None]:
            return [got for p, got in results if p == name]

        streaming = asyncio.create_task(stream())
        try:
            await until(lambda r: {"a", "b"} <= set(in_phase("both")))
            phase = "dying"
            await b.stop()
            await cb.wait_event("proxy.health_failed", lambda e: e.get("proxy") == "b", timeout=20)
            await waited(server, "proxy.group_left", "b")
            phase = "down"
            await until(lambda r: len(in_phase("down")) >= 30)
            await b.start()  # on the same port
            phase = "recovering"
            await cb.wait_event("proxy.health_recovered", lambda e: e.get("proxy") == "b", count=2)
            await waited(server, "proxy.group_joined", "b", count=2)
            phase = "back"
            await until(lambda r: in_phase("back").count("b") >= 5)
        finally:
            stop.set()
            await streaming

    after = [(p, got) for p, got in results if p in ("down", "recovering", "back")]
    assert all(got is not None for _, got in after), after
    assert set(in_phase("down")) == {"a"}
    assert set(in_phase("back")) == {"a", "b"}


class StatusService:
    """An HTTP service that says who it is on ``/`` and answers ``/healthz`` with ``health``."""

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.health = 200
        self.port = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StatusService]:
        async def root(request: web.Request) -> web.Response:
            return web.Response(text=self.ident)

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(status=self.health, text="ok" if self.health == 200 else "broken")

        app = web.Application()
        app.router.add_get("/", root)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        try:
            yield self
        finally:
            await runner.cleanup()


async def get(port: int, host: str) -> tuple[int, str]:
    """One request on a new connection: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read(-1)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


async def test_an_http_group_by_domain_and_a_health_path_answering_500(
    pierce: StartPierce, tmp_path: Path
) -> None:
    http_port = free_port()
    server, control = await start_server(pierce, tmp_path, vhost_http_port=http_port)
    domain = "app.example.test"
    check = {"type": "http", "path": "/healthz", "interval_s": 0.2, "timeout_s": 2}

    def web_member(name: str, service: StatusService) -> dict[str, Any]:
        return {
            "type": "http",
            "name": name,
            "local_ip": "127.0.0.1",
            "local_port": service.port,
            "custom_domains": [domain],
            "group": "web",
            "group_key": KEY,
            "health_check": check,
        }

    async with StatusService("a").running() as a, StatusService("b").running() as b:
        b.health = 500  # from the start: b is not registered until its check passes
        clients = [
            await start_client(pierce, tmp_path, control, [web_member(s.ident, s)], name=f"c{s.ident}")
            for s in (a, b)
        ]
        await clients[0].wait_event("proxy.ready", lambda e: e.get("proxy") == "a")
        (failed,) = await clients[1].wait_event("proxy.health_failed", lambda e: e.get("proxy") == "b")
        assert "answered 500 to GET /healthz" in failed["error"], failed
        got = [await get(http_port, domain) for _ in range(4)]
        assert Counter(got) == {(200, "a"): 4}, got
        assert not server.matching("proxy.group_joined", lambda e: e.get("proxy") == "b")

        b.health = 200
        await waited(server, "proxy.group_joined", "b")
        got = [await get(http_port, domain) for _ in range(10)]
        assert Counter(got) == {(200, "a"): 5, (200, "b"): 5}, got

        b.health = 500  # up, then down: it leaves the group
        await clients[1].wait_event("proxy.health_failed", lambda e: e.get("proxy") == "b", count=2)
        await waited(server, "proxy.group_left", "b")
        got = [await get(http_port, domain) for _ in range(6)]
        assert Counter(got) == {(200, "a"): 6}, got


async def test_tcpmux_and_https_groups_take_turns_too(pierce: StartPierce, tmp_path: Path) -> None:
    name = "sec.example.test"
    crt, key = self_signed(tmp_path, name)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(crt, key)
    visiting = ssl.create_default_context(cafile=str(crt))
    server, control = await start_server(
        pierce, tmp_path, tcpmux_httpconnect_port=free_port(), vhost_https_port=free_port()
    )
    ports = {e["front"]: int(e["port"]) for e in await server.wait_event("front.listening", count=2)}
    mux = [IdService(f"mux-{i}") for i in "ab"]
    sec = [IdService(f"sec-{i}", served) for i in "ab"]
    for s in (*mux, *sec):
        await s.start()
    try:
        for i, (m, t) in enumerate(zip(mux, sec, strict=True)):
            common = {"local_ip": "127.0.0.1", "group_key": KEY, "custom_domains": [name]}
            proxies = [
                {"type": "tcpmux", "name": f"m{i}", "local_port": m.port, "group": "mux", **common},
                {"type": "https", "name": f"s{i}", "local_port": t.port, "group": "sec", **common},
            ]
            client = await start_client(pierce, tmp_path, control, proxies, name=f"c{i}")
            await client.wait_event("proxy.ready", count=2)
        got = [await visit(ports["tcpmux"], i, connect=name) for i in range(6)]
        assert Counter(got) == {"mux-a": 3, "mux-b": 3}, got
        got = [await visit(ports["https"], i, tls=visiting, sni=name) for i in range(6)]
        assert Counter(got) == {"sec-a": 3, "sec-b": 3}, got
    finally:
        for s in (*mux, *sec):
            await s.stop()
