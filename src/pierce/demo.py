"""``pierce demo``: a whole tunnel on loopback with no config, to see pierce work in ten seconds.

One asyncio program holds everything: a `Server` and a `Client` (the real ones, as ``pierce server`` and
``pierce client`` run them), a small local web service, a random token, a temporary state directory for the
generated certificate, and ports the kernel picks on 127.0.0.1. The client exposes the web service; the demo
fetches it through the tunnel's public port and checks the bytes (SHA-256) end to end.

The client also offers the web service as an ``xtcp`` (P2P) proxy, and a second client visits it: the
visitor makes a direct path (here a LAN one on loopback; across NATs a hole-punched one) and requests go
over it, not through the server.

Then either a live panel (public address, proxies, the P2P visitor's path, connections, bytes, recent
events) until Ctrl-C, or, with ``--check``, a few more verified requests (a page, a 4 MiB download, a
1 MiB upload echoed back, concurrent visitors, the download over the direct path), one line per step, and
``demo check: OK`` (exit 0) or the failing step (exit 1).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pierce.addr import HostPort
from pierce.client.app import Client
from pierce.config import ClientConfig, ServerConfig, XtcpVisitorConfig
from pierce.errors import PierceError
from pierce.logs import event, human_bytes
from pierce.proxies.tcp import TcpProxyConfig
from pierce.proxies.xtcp import XtcpProxyConfig
from pierce.server.app import Server
from pierce.snapshot import ClientProxyInfo, ConnectionPath, ProxyState, ProxyStats, VisitorInfo
from pierce.statedir import new_secret

log = logging.getLogger("pierce.demo")

PROXY_NAME = "web"
#: The web service again, as a P2P proxy, and the visitor's name for it.
P2P_PROXY = "web-p2p"
P2P_VISITOR = "to-web-p2p"
LOOPBACK = "127.0.0.1"
MiB = 1024 * 1024
#: The large download of ``--check``.
BLOB_SIZE = 4 * MiB
#: The upload ``--check`` sends and gets echoed back.
UPLOAD_SIZE = 1 * MiB
CONCURRENT_VISITORS = 16
#: Seconds one step may take before the check fails; the whole check normally takes about one second.
STEP_TIMEOUT = 15.0
REFRESH_PER_SECOND = 4


class DemoFailure(PierceError):
    """A step of the demo did not do what it should."""


# -- events: what the panel shows and what the demo waits on --------------------------------------------


class TappedEvent(msgspec.Struct, frozen=True):
    ts: float
    level: int
    name: str
    message: str
    fields: dict[str, Any]


class EventTap(logging.Handler):
    """Keeps the recent pierce events of this process and wakes whoever waits for a change.

    The server and client report through their log events (``proxy.ready``, ``proxy.close``...); the demo
    re-checks its conditions each time one arrives instead of polling.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, keep: int = 200) -> None:
        super().__init__(logging.DEBUG)
        self.loop = loop
        self.recent: collections.deque[TappedEvent] = collections.deque(maxlen=keep)
        self._wake = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        name = getattr(record, "event", None)
        if not name:
            return
        fields = dict(getattr(record, "fields", None) or {})
        self.recent.append(TappedEvent(record.created, record.levelno, name, record.getMessage(), fields))
        self.loop.call_soon_threadsafe(self._wake.set)

    async def wait_for(self, condition: Callable[[], bool], timeout: float) -> None:
        """Return once ``condition()`` holds, re-checked after every event; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._wake.clear()
                await self._wake.wait()


@contextlib.contextmanager
def tapped_logging(tap: EventTap, *, quiet_console: bool) -> Iterator[None]:
    """Route pierce's events to ``tap`` without changing what the user's log handlers show.

    The tap needs INFO events whatever ``--log-level`` says, so the logger goes down to INFO and each
    existing handler keeps the level it had in effect; ``quiet_console`` raises them to WARNING (the panel
    or the step lines show the rest).
    """
    root = logging.getLogger("pierce")
    before = root.level
    handlers = {h: h.level for h in root.handlers}
    for h, level in handlers.items():
        h.setLevel(max(level, before, logging.WARNING if quiet_console else logging.NOTSET))
    root.setLevel(min(before, logging.INFO) if before else logging.INFO)
    root.addHandler(tap)
    try:
        yield
    finally:
        root.removeHandler(tap)
        root.setLevel(before)
        for h, level in handlers.items():
            h.setLevel(level)


# -- the local web service ---------------------------------------------------------------------------


class WebService:
    """The small service behind the tunnel: a page, a random blob to download, an echo for uploads."""

    def __init__(self, token_hint: str) -> None:
        self.page = (
            _PAGE.replace("{hint}", token_hint).replace("{blob_size}", human_bytes(BLOB_SIZE)).encode()
        )
        self.blob = os.urandom(BLOB_SIZE)
        self.requests = 0
        self.bytes_served = 0
        self._runner: web.AppRunner | None = None
        self.address = HostPort(LOOPBACK, 0)

    async def start(self) -> HostPort:
        app = web.Application(client_max_size=4 * UPLOAD_SIZE)
        app.router.add_get("/", self._index)
        app.router.add_get("/blob", self._blob)
        app.router.add_post("/echo", self._echo)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, LOOPBACK, 0).start()
        self._runner = runner
        self.address = HostPort(LOOPBACK, int(runner.addresses[0][1]))
        return self.address

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _count(self, body: bytes) -> None:
        self.requests += 1
        self.bytes_served += len(body)

    async def _index(self, request: web.Request) -> web.Response:
        self._count(self.page)
        return web.Response(body=self.page, content_type="text/html", charset="utf-8")

    async def _blob(self, request: web.Request) -> web.Response:
        self._count(self.blob)
        return web.Response(body=self.blob, content_type="application/octet-stream")

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._count(body)
        return web.Response(body=body, content_type="application/octet-stream")


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>pierce demo</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>It works.</h1>
<p>This page was served by a small web service on a loopback port and reached you through a
<b>pierce</b> tunnel: your browser talked to the server's public port, the server handed the connection
to the client over a pre-opened, authenticated TLS work connection, and the client dialed the service.</p>
<p><a href="/blob">Download {blob_size} of random bytes</a> through the same tunnel.</p>
<p><small>demo {hint}</small></p>
</body></html>
"""


# -- the stack: server, client, web service -----------------------------------------------------------


class DemoStack:
    """Owns the server, the client, the web service and the temporary state directory."""

    def __init__(self, tap: EventTap) -> None:
        self.tap = tap
        self.token = new_secret(24)
        self._state = tempfile.TemporaryDirectory(prefix="pierce-demo-")
        self.web = WebService(self.token[:8])
        self.server: Server | None = None
        self.client: Client | None = None
        self.public = HostPort(LOOPBACK, 0)
        self._client_task: asyncio.Task[None] | None = None
        #: The P2P visitor: another client with an xtcp visitor of `P2P_PROXY`.
        self.secret = new_secret(16)
        self.visitor: Client | None = None
        self._visitor_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.public}/"

    async def start_server(self) -> str:
        config = ServerConfig(
            bind_addr=LOOPBACK,
            bind_port=0,
            token=self.token,
            state_dir=self._state.name,
            stun_port=free_stun_port(),  # P2P rendezvous; 0 (none free) leaves the visitor on the relay
        )
        self.server = Server(config)
        await self.server.start()
        info = self.server.snapshot()
        return f"server listening on {info.address} (TLS, certificate {info.fingerprint[:23]}...)"

    async def start_web(self) -> str:
        address = await self.web.start()
        return f"web service listening on {address}"

    def _client_config(self, client_id: str, **parts: Any) -> ClientConfig:
        """A client of the demo's server (``parts``: its proxies or visitors)."""
        assert self.server is not None
        server = self.server.snapshot()
        return ClientConfig(
            server_addr=LOOPBACK,
            server_port=server.ports["bind_port"],
            token=self.token,
            client_id=client_id,
            server_fingerprint=server.fingerprint,
            **parts,
        )

    async def start_client(self) -> str:
        config = self._client_config(
            "demo",
            proxies=[
                TcpProxyConfig(name=PROXY_NAME, local_ip=LOOPBACK, local_port=self.web.address.port),
                XtcpProxyConfig(
                    name=P2P_PROXY,
                    local_ip=LOOPBACK,
                    local_port=self.web.address.port,
                    secret_key=self.secret,
                ),
            ],
        )
        client = self.client = Client(config)
        self._client_task = asyncio.get_running_loop().create_task(client.run())

        def proxy() -> ClientProxyInfo:
            return next(p for p in client.snapshot().proxies if p.name == PROXY_NAME)

        def settled() -> bool:
            now = client.snapshot()
            failed = not now.connected and now.attempts > 0 and now.last_error
            return (
                proxy().state is not ProxyState.PENDING
                or bool(failed)
                or self._client_task is None
                or self._client_task.done()
            )

        await self.tap.wait_for(settled, STEP_TIMEOUT)
        ready = proxy()
        if ready.state is not ProxyState.RUNNING or ready.remote_port is None:
            raise DemoFailure(ready.error or client.snapshot().last_error or "the client stopped")
        self.public = HostPort(LOOPBACK, ready.remote_port)
        return f"client logged in; proxy {PROXY_NAME} ({ready.local}) is public at {self.public}"

    async def start_visitor(self) -> str:
        """The P2P visitor's client; returns once its direct path is up (or says why it is not)."""
        config = self._client_config(
            "demo-visitor",
            visitors=[
                XtcpVisitorConfig(
                    name=P2P_VISITOR, server_name=P2P_PROXY, secret_key=self.secret, bind_port=0
                )
            ],
        )
        visitor = self.visitor = Client(config)
        self._visitor_task = asyncio.get_running_loop().create_task(visitor.run())
        started = time.monotonic()

        def settled() -> bool:
            info = self.visitor_info()
            done = self._visitor_task is None or self._visitor_task.done()
            return done or (info is not None and (info.path is not ConnectionPath.RELAY or bool(info.reason)))

        await self.tap.wait_for(settled, STEP_TIMEOUT)
        info = self.visitor_info()
        if info is None or info.path is ConnectionPath.RELAY:
            why = info.reason if info is not None else "the visitor's client stopped"
            raise DemoFailure(f"no direct path: {why}")
        took = (time.monotonic() - started) * 1000
        return f"P2P visitor at {info.listen}: {info.path.value} path to {P2P_PROXY} in {took:.0f} ms"

    def visitor_info(self) -> VisitorInfo | None:
        if self.visitor is None:
            return None
        found = [v for v in self.visitor.snapshot().visitors if v.name == P2P_VISITOR]
        return found[0] if found else None

    @property
    def p2p_url(self) -> str:
        info = self.visitor_info()
        return f"http://{info.listen}/" if info is not None else ""

    def relayed(self, proxy: str) -> int:
        """Connections the server relayed for ``proxy`` (0 for a P2P proxy whose visitors went direct)."""
        if self.server is None:
            return 0
        return sum(p.stats.total_connections for p in self.server.snapshot().proxies if p.name == proxy)

    async def start(self) -> None:
        for step in (self.start_server, self.start_web, self.start_client, self.start_visitor):
            await step()

    def proxy_counters(self) -> ProxyStats | None:
        """The server side of the demo proxy: its active connections and byte counters."""
        if self.server is None:
            return None
        found = [p.stats for p in self.server.snapshot().proxies if p.name == PROXY_NAME]
        return found[0] if found else None

    async def close(self) -> None:
        if self.visitor is not None:
            await self.visitor.close()
        if self._visitor_task is not None:
            self._visitor_task.cancel()
            await asyncio.gather(self._visitor_task, return_exceptions=True)
        if self.client is not None:
            await self.client.close()
        if self._client_task is not None:
            self._client_task.cancel()
            await asyncio.gather(self._client_task, return_exceptions=True)
        if self.server is not None:
            await self.server.close()
        await self.web.close()
        self._state.cleanup()


def free_stun_port() -> int:
    """A port P for the server's STUN: UDP P and P + 1 and TCP P free on loopback (0: none found)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = int(probe.getsockname()[1])
        if port >= 65534:
            continue
        held: list[socket.socket] = []
        try:
            for kind, p in (
                (socket.SOCK_DGRAM, port),
                (socket.SOCK_DGRAM, port + 1),
                (socket.SOCK_STREAM, port),
            ):
                sock = socket.socket(socket.AF_INET, kind)
                held.append(sock)
                sock.bind((LOOPBACK, p))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return port
    return 0


# -- fetching through the tunnel ----------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def fetch_verified(
    http: aiohttp.ClientSession, url: str, want: bytes, *, method: str = "GET", data: bytes | None = None
) -> int:
    """One request through the tunnel; the body must be ``want`` byte for byte. Returns its size."""
    async with http.request(method, url, data=data) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise DemoFailure(f"{method} {url}: HTTP {resp.status}")
    if _sha(body) != _sha(want):
        raise DemoFailure(
            f"{method} {url}: got {len(body)} bytes with SHA-256 {_sha(body)[:16]}..., "
            f"expected {len(want)} bytes with {_sha(want)[:16]}..."
        )
    return len(body)


def _http() -> aiohttp.ClientSession:
    # One connection per request: every request is a new visitor, served from the client's pool.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT),
        auto_decompress=False,
    )


class Totals(msgspec.Struct):
    visitors: int = 0
    up: int = 0
    down: int = 0


async def run_check(stack: DemoStack, say: Callable[[str], None]) -> bool:
    """Every step of ``pierce demo --check``: one line each, and the verdict line. True when all passed."""
    started = time.monotonic()
    totals = Totals()

    async def page() -> str:
        async with _http() as http:
            n = await fetch_verified(http, stack.url, stack.web.page)
        totals.visitors += 1
        totals.down += n
        return f"GET / through the tunnel: {human_bytes(n)}, SHA-256 matches"

    async def blob() -> str:
        async with _http() as http:
            n = await fetch_verified(http, stack.url + "blob", stack.web.blob)
        totals.visitors += 1
        totals.down += n
        return f"GET /blob: {human_bytes(n)}, SHA-256 matches"

    async def upload() -> str:
        body = os.urandom(UPLOAD_SIZE)
        async with _http() as http:
            n = await fetch_verified(http, stack.url + "echo", body, method="POST", data=body)
        totals.visitors += 1
        totals.up += n
        totals.down += n
        return f"POST /echo: {human_bytes(n)} up and back, SHA-256 matches"

    async def concurrent() -> str:
        async with _http() as http:
            sizes = await asyncio.gather(
                *(fetch_verified(http, stack.url, stack.web.page) for _ in range(CONCURRENT_VISITORS))
            )
        totals.visitors += len(sizes)
        totals.down += sum(sizes)
        return f"{CONCURRENT_VISITORS} concurrent visitors: every page matches"

    async def counters() -> str:
        stats = stack.proxy_counters()
        if stats is None:
            raise DemoFailure(f"the server has no proxy {PROXY_NAME!r}")
        proxy: ProxyStats = stats

        def settled() -> bool:
            nonlocal proxy
            proxy = stack.proxy_counters() or proxy
            return proxy.connections == 0 and proxy.bytes_in >= totals.up and proxy.bytes_out >= totals.down

        try:
            await stack.tap.wait_for(settled, STEP_TIMEOUT)
        except TimeoutError:
            raise DemoFailure(
                f"server counters: {proxy.connections} connections still open, in {proxy.bytes_in} B, "
                f"out {proxy.bytes_out} B; expected 0 open, at least {totals.up} B in, {totals.down} B out"
            ) from None
        return (
            f"server counters: {totals.visitors} visitors closed, {human_bytes(proxy.bytes_in)} in, "
            f"{human_bytes(proxy.bytes_out)} out"
        )

    async def direct() -> str:
        async with _http() as http:
            n = await fetch_verified(http, stack.p2p_url + "blob", stack.web.blob)
        relayed = stack.relayed(P2P_PROXY)
        if relayed:
            raise DemoFailure(
                f"{relayed} connection(s) of {P2P_PROXY} went through the server, expected none"
            )
        return f"GET /blob over the direct path: {human_bytes(n)}, SHA-256 matches, none via the server"

    steps: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("server", stack.start_server),
        ("web service", stack.start_web),
        ("client", stack.start_client),
        ("page", page),
        ("download", blob),
        ("upload", upload),
        ("concurrent visitors", concurrent),
        ("counters", counters),
        ("p2p visitor", stack.start_visitor),
        ("direct path", direct),
    ]
    for name, step in steps:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                detail = await step()
        except TimeoutError:
            say(f"FAIL {name}: no result within {STEP_TIMEOUT:g}s")
            say(f"demo check: FAILED at step {name!r}")
            return False
        except (PierceError, OSError, aiohttp.ClientError) as exc:
            say(f"FAIL {name}: {exc}")
            say(f"demo check: FAILED at step {name!r}")
            return False
        say(f"ok   {detail} ({(time.monotonic() - t0) * 1000:.0f} ms)")
    say(f"demo check: OK ({time.monotonic() - started:.2f}s)")
    return True


# -- the live panel -----------------------------------------------------------------------------------


def render_panel(stack: DemoStack, self_check: str) -> Panel:
    client = stack.client
    status = client.snapshot() if client is not None else None
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("Open", Text(stack.url, style="bold cyan underline"))
    if stack.server is not None:
        server = stack.server.snapshot()
        head.add_row("Server", f"{server.address}  TLS {server.fingerprint[:23]}...")
    if status is not None:
        state = Text("connected", style="green") if status.connected else Text("disconnected", style="red")
        state.append(f"  run {status.run_id}  attempts {status.attempts}", style="dim")
        if status.last_error:
            state.append(f"  last error: {status.last_error}", style="yellow")
        head.add_row("Client", state)
    head.add_row("Check", self_check)

    proxies = Table(expand=True, title="Proxies", title_justify="left")
    for col in ("proxy", "local", "public", "state", "active", "in", "out"):
        proxies.add_column(col, justify="right" if col in ("active", "in", "out") else "left")
    counters = stack.proxy_counters()
    if status is not None:
        for p in status.proxies:
            public = f"{LOOPBACK}:{p.remote_port}" if p.remote_port else "-"
            style = {"running": "green", "refused": "red"}.get(p.state, "yellow")
            proxies.add_row(
                p.name,
                p.local,
                public,
                Text(p.state, style=style),
                str(counters.connections) if counters else "-",
                human_bytes(counters.bytes_in) if counters else "-",
                human_bytes(counters.bytes_out) if counters else "-",
            )
    info = stack.visitor_info()
    if info is not None:
        path = info.path.value + (f", rtt {info.rtt_ms:.1f} ms" if info.rtt_ms else "")
        proxies.add_row(
            P2P_PROXY,
            f"{stack.web.address}",
            f"P2P visitor {info.listen}",
            Text(path, style="green"),
            "",
            "",
            "",
        )
    web_line = Text(
        f"web service {stack.web.address}: {stack.web.requests} requests, "
        f"{human_bytes(stack.web.bytes_served)} served ",
        style="dim",
    )

    events = Table(expand=True, title="Recent events", title_justify="left", show_header=False, box=None)
    events.add_column(style="dim", no_wrap=True, min_width=8)
    events.add_column(style="bold", no_wrap=True, min_width=16)
    events.add_column(overflow="ellipsis", no_wrap=True)
    for ev in list(stack.tap.recent)[-8:]:
        level_style = "red" if ev.level >= logging.ERROR else "yellow" if ev.level >= logging.WARNING else ""
        events.add_row(
            time.strftime("%H:%M:%S", time.localtime(ev.ts)), ev.name, Text(ev.message, level_style)
        )

    return Panel(
        Group(head, Text(), proxies, web_line, Text(), events),
        title="[bold]pierce demo[/bold]",
        subtitle="Ctrl-C to stop",
    )


async def run_panel(stack: DemoStack, console: Console, duration: float) -> None:
    await stack.start()
    async with _http() as http:
        n = await fetch_verified(http, stack.url, stack.web.page)
    self_check = f"GET {stack.url} through the tunnel: {human_bytes(n)}, SHA-256 matches"
    event(
        log, logging.INFO, "demo.ready", f"demo ready at {stack.url}", url=stack.url, port=stack.public.port
    )
    console.print(f"pierce demo: open [bold cyan]{stack.url}[/] (Ctrl-C to stop)")

    from pierce.runtime import wait_for_stop_signal

    stopper = asyncio.get_running_loop().create_task(wait_for_stop_signal())
    deadline = time.monotonic() + duration if duration > 0 else None
    try:
        with Live(render_panel(stack, self_check), console=console, auto_refresh=False) as live:
            while not stopper.done() and (deadline is None or time.monotonic() < deadline):
                # A UI refresh, not synchronisation: wake at the refresh rate or on the stop signal.
                await asyncio.wait({stopper}, timeout=1 / REFRESH_PER_SECOND)
                live.update(render_panel(stack, self_check), refresh=True)
    finally:
        stopper.cancel()
    reason = stopper.result().name if stopper.done() and not stopper.cancelled() else "duration elapsed"
    event(log, logging.INFO, "demo.stopped", f"demo stopping ({reason})", reason=reason)


async def run_demo(*, check: bool, duration: float = 0.0, json_logs: bool = False) -> int:
    """``pierce demo [--check] [--duration S]``; returns the exit status."""
    tap = EventTap(asyncio.get_running_loop())
    console = Console()
    with tapped_logging(tap, quiet_console=not json_logs):
        stack = DemoStack(tap)
        try:
            if check:
                ok = await run_check(stack, lambda line: print(line, flush=True))
                return 0 if ok else 1
            try:
                await run_panel(stack, console, duration)
            except (DemoFailure, PierceError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                console.print(f"[red]demo failed:[/] {exc}")
                return 1
            return 0
        finally:
            await stack.close()
