"""What the client's admin API and the server's web side share: serving an aiohttp app on a configured
address (optionally behind a `ConnectionGuard`: a cap on connections and a deadline on request heads),
and the Host check that keeps other sites' pages out of a credential-less local API."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import msgspec
from aiohttp import web

from pierce.addr import format_sockaddr, source_of
from pierce.errors import LocalError


async def start_site(
    app: web.Application,
    addr: str,
    port: int,
    what: str,
    *,
    guard: ConnectionGuard | None = None,
    **runner: Any,
) -> tuple[web.AppRunner, str, int]:
    """Serve ``app`` on ``addr:port``; the runner, the bound ``host:port`` and its port. `LocalError`
    naming ``what`` (the config section) when the address cannot be bound. With a ``guard``, every
    connection passes it first (its middleware goes in front of the app's)."""
    if guard is not None:
        app.middlewares.insert(0, guard.middleware)
    app_runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner)
    await app_runner.setup()
    site: web.TCPSite
    if guard is None:
        site = web.TCPSite(app_runner, addr, port, reuse_address=True)
    else:
        site = _GuardedSite(app_runner, addr, port, guard)
    try:
        await site.start()
    except OSError as exc:
        await app_runner.cleanup()
        raise LocalError(f"{what}: cannot listen on {addr}:{port}: {exc.strerror or exc}") from exc
    host, bound = app_runner.addresses[0][:2]
    return app_runner, f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}", int(bound)


def host_header_allowed(host: str, local_address: str | None) -> bool:
    """True for ``localhost``, a loopback address, or `local_address` (where the request arrived).

    A page on another site can point its own name at this address (DNS rebinding), but the browser then
    sends that name as Host. An address literal that is neither loopback nor this connection's own
    address is refused too: nothing legitimate sends one.
    """
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name.lower() == "localhost":
        return True
    given = _ip(name)
    if given is None:
        return False
    if given.is_loopback:
        return True
    arrived = _ip(local_address) if local_address else None
    return arrived is not None and given == arrived


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# -- connection limits --------------------------------------------------------------------------------
#
# aiohttp bounds what one request may hold (line and field sizes, header count, body size) but neither
# how many connections are open nor how long a request head may take to arrive: a stranger could hold
# thousands of sockets, or keep each one alive by sending a header byte every few seconds (slowloris).
# `ConnectionGuard` adds both in front of aiohttp's own protocol, without touching its internals: the
# site's protocol factory wraps each aiohttp handler in `_GuardedConnection`, which counts the
# connection (refusing it beyond the caps with a canned 503) and arms a deadline for the request head;
# a middleware, the first code that runs once aiohttp has parsed a head, disarms it. After the handler,
# the next byte that arrives arms the deadline again for the next head (idle keep-alive connections are
# closed by aiohttp's keepalive_timeout).

#: What a connection beyond the caps gets before it is closed.
_BUSY_TEXT = b"too many connections to this port; try again later\n"
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_TEXT)).encode() + b"\r\n\r\n" + _BUSY_TEXT
)


class ConnectionLimits(msgspec.Struct, frozen=True, kw_only=True):
    #: Connections open at once; more are answered 503 and closed.
    max_connections: int
    #: Of those, from one source (`pierce.addr.source_of`: an IPv4 address or an IPv6 /64).
    max_per_source: int
    #: Seconds from a connection's opening (or the first byte after its previous request) until its
    #: request head has been read; a connection that takes longer is cut.
    head_timeout: float


class ConnectionGuard:
    """Caps and head deadlines for the connections of one site (see the comment above)."""

    def __init__(self, limits: ConnectionLimits, on_refused: Callable[[str, str], None]) -> None:
        self.limits = limits
        #: Called with (peer, reason) for each connection turned away.
        self._on_refused = on_refused
        self._sources: Counter[str] = Counter()
        self._open: dict[asyncio.BaseTransport, _GuardedConnection] = {}

    @property
    def open(self) -> int:
        return len(self._open)

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedConnection(self, inner())

    def admit(self, conn: _GuardedConnection, transport: asyncio.BaseTransport, source: str) -> str:
        """Count ``conn`` in; the reason it is refused, or "" when admitted."""
        limits = self.limits
        if len(self._open) >= limits.max_connections:
            return f"{limits.max_connections} connections open"
        if self._sources[source] >= limits.max_per_source:
            return f"{limits.max_per_source} connections open from {source}"
        self._open[transport] = conn
        self._sources[source] += 1
        return ""

    def refused(self, peer: str, reason: str) -> None:
        self._on_refused(peer, reason)

    def release(self, transport: asyncio.BaseTransport, source: str) -> None:
        if self._open.pop(transport, None) is not None:
            self._sources[source] -= 1
            if not self._sources[source]:
                del self._sources[source]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        conn = self._open.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.head_read()
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            if conn is not None:
                conn.handled()


class _GuardedConnection(asyncio.Protocol):
    """One connection: counted by its guard, with a deadline for each request head; everything else
    goes to aiohttp's handler (``inner``) unchanged."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._source = ""
        self._deadline: asyncio.TimerHandle | None = None
        #: In a handler (no deadline), and whether bytes arrived meanwhile (the next head's).
        self._handling = False
        self._early_bytes = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports are not asyncio's subclasses
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._source = source_of(host)
        reason = self._guard.admit(self, transport, self._source)
        if reason:
            transport.write(BUSY_RESPONSE)
            transport.close()
            self._guard.refused(format_sockaddr(peer) if isinstance(peer, tuple) else host, reason)
            return
        self._transport = transport
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return  # refused: whatever it sends is dropped with it
        if self._handling:
            self._early_bytes = True
        elif self._deadline is None:
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._transport is None:
            return None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            return
        self._disarm()
        self._guard.release(transport, self._source)
        self._inner.connection_lost(exc)

    def head_read(self) -> None:
        self._disarm()
        self._handling = True
        self._early_bytes = False

    def handled(self) -> None:
        self._handling = False
        if self._early_bytes and self._transport is not None:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.limits.head_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._transport is not None:
            self._transport.abort()


class _GuardedSite(web.TCPSite):
    """`web.TCPSite` whose connections go through a `ConnectionGuard` first."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner (so cleanup stops it)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog, reuse_address=True
        )
