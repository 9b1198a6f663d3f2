"""`WebServer`: the aiohttp application behind ``[web]``: the JSON API, its OpenAPI document, /metrics and
the dashboard (a page and its script from the package, live through server-sent events on ``/api/events``;
neither is in the OpenAPI document).

It holds only a callable that returns the server's snapshot; each request builds one and answers from it,
so a request costs one pass over the clients and proxies and nothing is counted on the data path. A timer
feeds the traffic history (`pierce.web.history`) from the snapshot every ``SAMPLE_S``.

Who may ask: with ``user``/``password`` set, every request needs them (HTTP basic, else 401). Without
them (only allowed on loopback) anything on the host may read, so a browser page is kept out the way
the client's admin API does it: the ``Host`` must be ``localhost``, a loopback address or the address
the request arrived on (DNS rebinding), and a DELETE carrying an ``Origin`` is refused (a cross-site
request). Requests are small and bounded: no request bodies (``client_max_size``), header lines and
fields as aiohttp caps them, idle keep-alive connections closed after ``KEEPALIVE_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pierce.config import WebOptions
from pierce.local_http import ConnectionGuard, ConnectionLimits, host_header_allowed, start_site
from pierce.logs import event
from pierce.proxies.base import ProxyType
from pierce.snapshot import ServerSnapshot
from pierce.vhost.http_parse import basic_auth_matches
from pierce.web import api
from pierce.web.history import TrafficHistory
from pierce.web.metrics import registry
from pierce.web.openapi import OPENAPI_PATH, document

log = logging.getLogger("pierce.server")

#: Seconds between the history's samples of the snapshot.
SAMPLE_S = 10.0
#: Seconds an idle keep-alive connection stays open.
KEEPALIVE_S = 15.0
#: Connections open at once, and from one source (an IPv4 address or IPv6 /64); more get 503 and close.
#: A browser keeps at most 6 per host, each event stream holds one.
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_SOURCE = 16
#: Seconds a request head may take from the connection's opening (or its first byte) until it is read.
HEAD_TIMEOUT_S = 10.0
#: Seconds between two log lines about connections turned away (the ones between are counted).
REFUSED_LOG_INTERVAL_S = 1.0
#: Seconds between two ``state`` events of ``/api/events``, and the most one may take to be sent.
EVENT_INTERVAL_S = 2.0
EVENT_SEND_TIMEOUT_S = 10.0
#: ``/api/events`` streams open at once (more get 503).
MAX_EVENT_STREAMS = 16
#: The dashboard's files, served from the package (no CDN).
STATIC = {
    "/": ("index.html", "text/html"),
    "/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard.css": ("dashboard.css", "text/css"),
}
#: Sent with the dashboard's files: it loads only from this origin and may not be framed.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: The query parameters each path takes; any other is refused (400), so a typo is never ignored.
QUERY_KEYS = {"/api/proxies": frozenset({"type"})}
#: Request bodies are not used; anything larger than this is refused (413).
MAX_BODY = 1024


class WebServer:
    """The server's web side on ``[web] addr:port``."""

    def __init__(
        self,
        options: WebOptions,
        snapshot: Callable[[], ServerSnapshot],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self._snapshot = snapshot
        self._clock = clock
        self.history = TrafficHistory()
        self._registry = registry(snapshot)
        self._openapi = msgspec.json.encode(document(basic_auth=bool(options.password)))
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        files = importlib.resources.files("pierce.web") / "static"
        self._static = {
            path: (files.joinpath(name).read_bytes(), kind) for path, (name, kind) in STATIC.items()
        }
        self.address = ""
        limits = ConnectionLimits(
            max_connections=MAX_CONNECTIONS,
            max_per_source=MAX_CONNECTIONS_PER_SOURCE,
            head_timeout=HEAD_TIMEOUT_S,
        )
        self.guard = ConnectionGuard(limits, self._turned_away)
        self._unlogged_refusals = 0
        self._refusal_logged_at = -REFUSED_LOG_INTERVAL_S

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/api/serverinfo", self._serverinfo)
        app.router.add_get("/api/users", self._users)
        app.router.add_get("/api/clients", self._clients)
        app.router.add_get("/api/proxies", self._proxies)
        app.router.add_delete("/api/proxies/offline", self._forget_offline)
        app.router.add_get("/api/proxies/{name}", self._proxy)
        app.router.add_get("/api/proxies/{name}/traffic", self._traffic)
        app.router.add_get(OPENAPI_PATH, self._document)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/events", self._events)
        for path in STATIC:
            app.router.add_get(path, self._file)
        return app

    async def start(self) -> str:
        """Listen on ``addr:port``; returns the bound ``host:port``. `LocalError` when it cannot bind."""
        opts = self.options
        self._runner, self.address, port = await start_site(
            self.application(),
            opts.addr,
            opts.port,
            "[web]",
            guard=self.guard,
            keepalive_timeout=KEEPALIVE_S,
        )
        self._sampler = asyncio.create_task(self._sample())
        event(
            log,
            logging.INFO,
            "web.listening",
            f"web API on http://{self.address}/api/serverinfo, metrics on /metrics",
            listen=self.address,
            port=port,
        )
        return self.address

    async def close(self) -> None:
        for stream in list(self._streams):  # else the runner waits for them to end on their own
            stream.cancel()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _sample(self) -> None:
        while True:
            self._observe()
            await asyncio.sleep(SAMPLE_S)

    def _observe(self) -> tuple[ServerSnapshot, float]:
        """A snapshot, fed to the history first (so an answer includes the bytes up to now)."""
        snap, now = self._snapshot(), self._clock()
        self.history.observe(snap.proxies, now)
        return snap, now

    def _turned_away(self, peer: str, reason: str) -> None:
        """A connection over the caps was refused: logged at most once a second, with a count."""
        self._unlogged_refusals += 1
        now = time.monotonic()
        if now - self._refusal_logged_at < REFUSED_LOG_INTERVAL_S:
            return
        event(
            log,
            logging.WARNING,
            "web.turned_away",
            f"web: connection from {peer} refused: {reason}"
            + (f" ({self._unlogged_refusals} since the last line)" if self._unlogged_refusals > 1 else ""),
            peer=peer,
            reason=reason,
            refused=self._unlogged_refusals,
        )
        self._refusal_logged_at = now
        self._unlogged_refusals = 0

    # -- who may ask ------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        opts = self.options
        if opts.password:
            header = request.headers.get("Authorization", "")
            if not basic_auth_matches(
                header.encode(errors="replace"), opts.user.encode(), opts.password.encode()
            ):
                return _error(
                    401,
                    "this API needs the [web] user and password (HTTP basic auth)",
                    headers={"WWW-Authenticate": 'Basic realm="pierce server"'},
                )
        else:
            sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
            local = str(sockname[0]) if isinstance(sockname, tuple) and sockname else None
            if not host_header_allowed(request.host, local):
                return _error(403, f"unexpected Host header {request.host!r}")
            if request.method not in ("GET", "HEAD") and request.headers.get("Origin") is not None:
                return _error(403, "changes from web pages are not accepted")
        route = request.match_info.route.resource
        allowed = QUERY_KEYS.get(route.canonical, frozenset()) if route is not None else frozenset()
        unknown = sorted(set(request.query) - allowed)
        if unknown and request.match_info.http_exception is None:  # a 404 or 405 says so first
            return _error(400, f"unknown query parameter {unknown[0][:64]!r}")
        response: web.StreamResponse = await handler(request)
        return response

    # -- endpoints --------------------------------------------------------------------------------

    async def _serverinfo(self, request: web.Request) -> web.Response:
        snap, _ = self._observe()
        return _json(api.server_info(snap))

    async def _users(self, request: web.Request) -> web.Response:
        return _json(api.users(self._snapshot()))

    async def _clients(self, request: web.Request) -> web.Response:
        return _json(api.clients(self._snapshot()))

    async def _proxies(self, request: web.Request) -> web.Response:
        kind: ProxyType | None = None
        if "type" in request.query:
            text = request.query["type"]
            try:
                kind = ProxyType(text)
            except ValueError:
                choices = ", ".join(t.value for t in ProxyType)
                return _error(400, f"unknown proxy type {text[:64]!r}; expected one of {choices}")
        snap, now = self._observe()
        return _json(api.proxies(snap, self.history, now, kind))

    async def _proxy(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        snap, now = self._observe()
        found = api.proxy(snap, self.history, now, name)
        if found is None:
            return _error(404, f"no proxy named {name[:255]!r}")
        return _json(found)

    async def _traffic(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        _, now = self._observe()
        found = api.traffic(self.history, name, now)
        if found is None:
            return _error(404, f"no traffic kept for a proxy named {name[:255]!r}")
        return _json(found)

    async def _forget_offline(self, request: web.Request) -> web.Response:
        self._observe()  # a proxy that closed since the last sample is offline now
        return _json(api.Removed(removed=self.history.forget_offline()))

    async def _document(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _file(self, request: web.Request) -> web.Response:
        body, kind = self._static[request.path]
        return web.Response(body=body, content_type=kind, headers=PAGE_HEADERS)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: a ``state`` event (`api.DashboardState`) now and every ``EVENT_INTERVAL_S``."""
        if len(self._streams) >= MAX_EVENT_STREAMS:
            return _error(503, f"at most {MAX_EVENT_STREAMS} live views at once")
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            while True:
                snap, now = self._observe()
                state = api.DashboardState(
                    serverinfo=api.server_info(snap),
                    clients=api.clients(snap),
                    proxies=api.proxies(snap, self.history, now),
                )
                async with asyncio.timeout(EVENT_SEND_TIMEOUT_S):  # a reader that stopped reading goes
                    await response.write(b"event: state\ndata: " + msgspec.json.encode(state) + b"\n\n")
                await asyncio.sleep(EVENT_INTERVAL_S)
        except (ConnectionError, TimeoutError):
            return response
        finally:
            self._streams.discard(task)


def _json(value: Any) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), content_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(api.ApiError(error=message)),
        content_type="application/json",
        headers=headers,
    )
