"""HTTP/1.1 virtual hosts: one browser connection, routed request by request to inside services.

Theory of operation
-------------------
:func:`serve_http` owns one browser connection. Bytes from the browser go through a request parser of
:mod:`pierce.vhost.http_parse` (sans-I/O, llhttp), which turns them into events: a head, body pieces,
an end. Each head is routed by Host and path; the request goes to the route's backend connection
(opened with ``route.open`` on first use and kept, one per route, while the backend keeps it alive),
and the response comes back through a response parser the same way. Bodies are never held: each read
is parsed and written on before the next read, so memory stays at one read (at most :data:`READ_MAX`)
per direction whatever the body size. The parser removes chunked framing; a chunked body is framed
again on the way out, so both sides always see valid framing even when it changes (a close-delimited
response becomes chunked for an HTTP/1.1 browser, a chunked one close-delimited for an HTTP/1.0
browser).

A request body is sent by a task of its own while the response is read, so a backend may answer early
(``Expect: 100-continue``, 401, 413) without a deadlock. After a ``101 Switching Protocols`` answer to
an ``Upgrade`` request the two connections are handed to :func:`pierce.relay.relay`.

Answers made here, before anything reaches a backend: 400 (malformed head, or a target without one
unambiguous path: :mod:`pierce.vhost.paths`), 408 (a head not complete within its deadline), 431 (head
over the limits), 401 (basic auth), 404 (no route), 405 (CONNECT), 421 (on TLS ended here, a host the
connection's certificate does not name), 501 (an upgrade request with a body); 502 and 504 when the
backend cannot be opened, answers garbage or does not answer. After an error answer the connection is
closed with a short lingering read, so the browser receives the answer instead of a reset.

Time limits on the browser: each request head must be complete within ``header_timeout`` of its first
byte (of the connection's start, for the first head), however the bytes trickle in; between requests a
kept-alive connection may stay silent for ``timeout``. Every read also has the idle ``timeout``.

What is routed is what is forwarded: the request goes on with the canonical target whose path chose
the route (:func:`pierce.vhost.paths.canonical_target`), never with a raw target that a service could
read as another path.

Cancel safety: :func:`serve_http` may be cancelled at any point; it closes the browser connection and
every backend connection it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Literal, Protocol

import msgspec

from pierce.errors import RemoteError
from pierce.logs import event
from pierce.relay import End, relay
from pierce.vhost.http_parse import (
    EndOfMessage,
    Head,
    HeadTooLarge,
    Malformed,
    MessageParser,
    basic_auth_matches,
    declares_body,
    field_line,
    split_absolute_form,
    take_body,
)
from pierce.vhost.paths import UnsafeTarget, canonical_target
from pierce.vhost.router import normalize_host

log = logging.getLogger("pierce.vhost.http")

#: Idle seconds allowed while waiting for a request head or a response head (``vhost_http_timeout``).
DEFAULT_TIMEOUT = 60.0
#: Seconds a whole request head may take from its first byte (``vhost_header_timeout``).
DEFAULT_HEADER_TIMEOUT = 10.0
#: Largest request head accepted (request line and headers); larger heads are answered 431.
DEFAULT_MAX_HEAD_SIZE = 64 * 1024
#: Most header fields accepted in one request head; more are answered 431.
DEFAULT_MAX_HEADER_COUNT = 100
#: Bounds of a response head: a service behind a tunnel is a peer too, so its heads are limited.
MAX_RESPONSE_HEAD_SIZE = 256 * 1024
MAX_RESPONSE_HEADER_COUNT = 1000
#: Read sizes: a message starts with small reads, which grow while they come back full (bulk bodies).
#: A write is at most one read plus a head and chunk framing, well below the tunnel's 1 MiB data chunk.
READ_MIN = 64 * 1024
READ_MAX = 512 * 1024
#: Backend connections one browser connection keeps open at most (one per route it has used).
MAX_ROUTES_PER_CONNECTION = 8
#: After an error answer: how long and how much the browser's remaining input is read and discarded.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
#: Seconds an idle backend connection has to answer our end-of-data when its browser has left.
RELEASE_SECONDS = 5.0

ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


class HttpRoute(Protocol):
    """Where a request goes, and what is done to it on the way (one http proxy)."""

    @property
    def name(self) -> str: ...
    @property
    def http_user(self) -> str | None:
        """Basic auth user; None = no auth."""

    @property
    def http_password(self) -> str | None: ...
    @property
    def host_header_rewrite(self) -> str | None:
        """The Host header the backend sees; None = the browser's."""

    @property
    def request_headers(self) -> Mapping[str, str]:
        """Headers set (replaced or added) on every request."""

    @property
    def response_headers(self) -> Mapping[str, str]:
        """Headers set (replaced or added) on every response."""

    def admits(self, host: str) -> bool:
        """Whether a visitor from ``host`` may use this route (the proxy's allow_ips / deny_ips)."""
        ...

    async def open(self, visitor: tuple[str, int]) -> End:
        """A new connection to the inside service; raises when it cannot be had."""
        ...


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What one HTTP virtual-host port does beyond its routes."""

    #: ``X-Forwarded-Proto`` sent to backends: how the browser reached us.
    scheme: Literal["http", "https"] = "http"
    #: Idle seconds waiting for a request head or a response head.
    timeout: float = DEFAULT_TIMEOUT
    #: Seconds a whole request head may take (from the connection's start, for the first one).
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    #: Body of the 404 answer for unknown hosts (HTML); None = a built-in page.
    not_found_page: bytes | None = None
    max_head_size: int = DEFAULT_MAX_HEAD_SIZE
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    #: Answers ``GET /.well-known/acme-challenge/<token>`` before routing; None = route as usual.
    acme_challenge: Callable[[str], bytes | None] | None = None


Resolve = Callable[[str, str], HttpRoute | None]


async def serve_http(
    browser: End,
    visitor: tuple[str, int],
    resolve: Resolve,
    settings: HttpSettings,
    *,
    tls_names: frozenset[str] | None = None,
    on_first_head: Callable[[], None] | None = None,
) -> None:
    """Serve every request of one browser connection, then close it and its backend connections.

    ``visitor`` is the browser's address; ``resolve(host, path)`` picks the route of each request
    (``path`` without the query, in the canonical form of :mod:`pierce.vhost.paths`). ``tls_names``:
    the host names (normalised) this connection may ask for, those of the certificate it was accepted
    with; other hosts get 421. ``on_first_head`` is called once, when the first request head is complete.
    """
    conn = _BrowserConnection(browser, visitor, resolve, settings, tls_names, on_first_head)
    try:
        await conn.run()
    except (OSError, RemoteError, TimeoutError) as exc:
        event(
            log,
            logging.DEBUG,
            "vhost.http.aborted",
            f"{visitor[0]}:{visitor[1]}: connection ended: {exc!r}",
            visitor=f"{visitor[0]}:{visitor[1]}",
            error=repr(exc),
        )
    finally:
        await conn.close()


# -- what a route does to heads ---------------------------------------------------------------------

# Hop-by-hop fields, never passed on as received.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})
# Set by us on every request; a browser's own values are dropped (X-Forwarded-For is appended to).
_FORWARDED = frozenset({b"host", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"})
_REQUEST_SKIP = _HOP_BY_HOP | _FORWARDED
# Fields whose spelling with "_" for "-" is dropped too: CGI, WSGI, PHP and many frameworks map both to
# one name (HTTP_X_REAL_IP), so X_Real_IP would pass for ours (nginx drops every "_" name by default).
_UNDERSCORE_DROP = _REQUEST_SKIP | {b"x-forwarded-for", b"content-length", b"transfer-encoding"}
_RESPONSE_SKIP = frozenset({b"connection", b"keep-alive", b"proxy-connection"})


class _Backend:
    """A kept connection to one route's service and the parser of its responses."""

    __slots__ = ("end", "responses")

    def __init__(self, end: End) -> None:
        self.end = end
        self.responses = MessageParser(
            request=False, max_size=MAX_RESPONSE_HEAD_SIZE, max_count=MAX_RESPONSE_HEADER_COUNT
        )

    def reusable(self) -> bool:
        """False when the idle connection was closed or spoke out of turn (peeked, nothing consumed)."""
        if self.responses.events or self.responses.rest:
            return False
        sock = self.end.socket
        if sock is None:
            return not self.end.peer_done()
        try:
            sock.recv(1, socket.MSG_PEEK)  # the socket is non-blocking
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return False


class _RouteUse:
    """One route as used by one browser connection: its header edits, encoded once, and its backend."""

    __slots__ = (
        "auth",
        "backend",
        "host",
        "request_drop",
        "request_set",
        "response_drop",
        "response_set",
        "route",
    )

    def __init__(self, route: HttpRoute) -> None:
        self.route = route
        self.backend: _Backend | None = None
        user = route.http_user
        self.auth = None if user is None else (user.encode(), (route.http_password or "").encode())
        rewrite = route.host_header_rewrite
        self.host = None if rewrite is None else rewrite.encode()
        self.request_set = b"".join(field_line(k, v) for k, v in route.request_headers.items())
        self.request_drop = frozenset(k.lower().encode() for k in route.request_headers)
        if self.auth is not None:
            self.request_drop |= {b"authorization"}
        self.response_set = b"".join(field_line(k, v) for k, v in route.response_headers.items())
        self.response_drop = frozenset(k.lower().encode() for k in route.response_headers)

    def authorized(self, value: bytes | None) -> bool:
        assert self.auth is not None
        return basic_auth_matches(value, *self.auth)

    def drop_backend(self) -> None:
        if self.backend is not None:
            self.backend.end.close()
            self.backend = None

    def release_backend(self, *, check_idle: bool = True) -> None:
        """End the backend cleanly after a whole exchange (a tunnel connection can then serve again).

        ``check_idle``: only if nothing arrived since (the browser left while the backend was kept).
        """
        backend, self.backend = self.backend, None
        if backend is None:
            return
        if check_idle and not backend.reusable():
            backend.end.close()
            return
        task = asyncio.get_running_loop().create_task(_release(backend.end))
        _RELEASING.add(task)
        task.add_done_callback(_RELEASING.discard)


#: Backend connections being ended cleanly after their browser left.
_RELEASING: set[asyncio.Task[None]] = set()


async def _release(end: End) -> None:
    """Send our end-of-data, wait for the service's, then close: both sides know the stream is whole."""
    try:
        end.write_eof()
        async with asyncio.timeout(RELEASE_SECONDS):
            total = 0
            while total < LINGER_BYTES and (data := await end.read(READ_MIN)):
                total += len(data)
    except (OSError, RemoteError, TimeoutError):
        pass
    finally:
        end.close()


# -- answers made here ------------------------------------------------------------------------------

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


def _page(status: int) -> bytes:
    title = f"{status} {_REASONS[status]}"
    html = f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>\n"
    return html.encode()


_HTML = b"text/html; charset=utf-8"
_WWW_AUTHENTICATE = b'WWW-Authenticate: Basic realm="pierce", charset="UTF-8"\r\n'


class _UpstreamGone(Exception):
    """The backend closed or reset before sending any byte of a response."""


class _UpstreamFailed(Exception):
    """The backend sent something that is not an HTTP response, or timed out; answered 502/504."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Aborted(RemoteError):
    """A body cannot be finished: one side went away, stalled or broke the framing in the middle of it."""


class _Watchdog:
    """Idle timeouts for the waits of one task without a timer per wait.

    Arming only records a deadline (and moves the one timer handle earlier when the new deadline comes
    before it); the handle, when it fires, re-arms itself for a later deadline or cancels the task if the
    deadline has passed while armed. Like ``asyncio.timeout``, the
    waiter turns that cancellation into TimeoutError (:meth:`expired` takes it back with ``uncancel``).
    """

    __slots__ = ("_deadline", "_fired", "_handle", "_loop", "_task")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._deadline: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    def arm(self, seconds: float) -> None:
        deadline = self._deadline = self._loop.time() + seconds
        handle = self._handle
        if handle is None or handle.when() > deadline:  # a shorter wait than the one the timer is for
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(deadline, self._check)

    def disarm(self) -> None:
        self._deadline = None

    def expired(self) -> bool:
        """True (once) when the current cancellation was the watchdog's own."""
        if not self._fired:
            return False
        self._fired = False
        self._task.uncancel()
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self._deadline is None:
            return
        if self._loop.time() < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._check)
            return
        self._deadline = None
        self._fired = True
        self._task.cancel()


async def _stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a request body's sender and wait until it has stopped; its failure was acted on already."""
    if task is None:
        return
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled():
        task.exception()


# -- one browser connection -------------------------------------------------------------------------


class _BrowserConnection:
    def __init__(
        self,
        browser: End,
        visitor: tuple[str, int],
        resolve: Resolve,
        settings: HttpSettings,
        tls_names: frozenset[str] | None,
        on_first_head: Callable[[], None] | None,
    ) -> None:
        self.browser = browser
        self.visitor = visitor
        self.visitor_ip = visitor[0].encode()
        self.resolve = resolve
        self.settings = settings
        self.tls_names = tls_names
        self.on_first_head = on_first_head
        self.timeout = settings.timeout if settings.timeout > 0 else None
        self.header_timeout = settings.header_timeout if settings.header_timeout > 0 else None
        self.loop = asyncio.get_running_loop()
        #: When the head being read must be complete (loop time); None until its first byte. The first
        #: head's deadline runs from the connection's start.
        self.head_deadline: float | None = (
            None if self.header_timeout is None else self.loop.time() + self.header_timeout
        )
        self.requests = MessageParser(
            request=True, max_size=settings.max_head_size, max_count=settings.max_header_count
        )
        self.routes: dict[str, _RouteUse] = {}
        #: Bytes to parse before reading again (after a refused upgrade).
        self.pending = b""
        #: True after an answer made here that ends the connection: the browser may still be sending.
        self.linger = False
        #: True once the connection was handed to the relay (which closes both ends).
        self.handed_off = False
        #: The current request's body: taken from the parser entirely / written to the backend entirely.
        self.body_done = True
        self.body_sent = True
        self.status = 0
        self.route_name = ""
        self.watchdog = _Watchdog()

    async def run(self) -> None:
        while (head := await self._next_head()) is not None:
            self.status = 0
            self.route_name = ""
            keep = await self._handle(head)
            if head.upgrade and self.requests.rest and not self.handed_off:
                self.pending, self.requests.rest = self.requests.rest, b""
            if log.isEnabledFor(logging.DEBUG):
                self._log_request(head)
            if not keep:
                return

    async def close(self) -> None:
        self.watchdog.close()
        for use in self.routes.values():
            use.release_backend()
        self.routes.clear()
        if self.handed_off:
            return
        try:
            if self.linger:
                self.browser.write_eof()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(LINGER_SECONDS):
                        total = 0
                        while total < LINGER_BYTES and (data := await self.browser.read(READ_MIN)):
                            total += len(data)
        finally:
            self.browser.close()

    def _log_request(self, head: Head) -> None:
        host = (head.host or b"").decode("latin-1")
        target = head.target.decode("latin-1")
        method = head.method.decode("latin-1")
        event(
            log,
            logging.DEBUG,
            "vhost.http.request",
            f"{self.visitor[0]}: {method} {host}{target} -> {self.route_name or '-'} {self.status}",
            visitor=f"{self.visitor[0]}:{self.visitor[1]}",
            proxy=self.route_name,
            method=method,
            host=host,
            target=target,
            status=self.status,
        )

    # -- requests from the browser

    async def _next_head(self) -> Head | None:
        """The next request head; None when the browser is done (EOF, timeout, bad head answered)."""
        events = self.requests.events
        header_timeout = self.header_timeout
        if header_timeout is not None and self.head_deadline is None and self.requests.in_head:
            self.head_deadline = self.loop.time() + header_timeout  # pipelined: its first bytes are here
        while True:
            while events:
                item = events.popleft()
                if isinstance(item, Head):
                    self.head_deadline = None
                    if self.on_first_head is not None:
                        done, self.on_first_head = self.on_first_head, None
                        done()
                    return item
            if self.pending:
                data, self.pending = self.pending, b""
            else:
                try:
                    data = await self._read_head()
                except TimeoutError:
                    if self.requests.in_head:
                        await self._answer(None, 408)
                    return None
                if not data:
                    return None
                if header_timeout is not None and self.head_deadline is None:
                    self.head_deadline = self.loop.time() + header_timeout
            try:
                self.requests.feed(data)
            except HeadTooLarge:
                await self._answer(None, 431)
                return None
            except Malformed:
                await self._answer(None, 400)
                return None

    async def _handle(self, head: Head) -> bool:
        """Answer one request; True when the browser connection stays open for the next one."""
        events = self.requests.events
        has_body = not (events and isinstance(events[0], EndOfMessage))
        if head.method == b"CONNECT":
            return await self._answer(head, 405, has_body=has_body)
        target = head.target
        host = head.host
        if b"#" in target:
            return await self._answer(head, 400, has_body=has_body)  # and split_absolute_form drops it
        if target[:1] != b"/" and target != b"*":
            absolute = split_absolute_form(target)
            if absolute is None:
                return await self._answer(head, 400, has_body=has_body)
            host, target = absolute
        elif head.host_count > 1 or (host is None and head.version != "1.0"):
            return await self._answer(head, 400, has_body=has_body)
        if head.upgrade and declares_body(head):
            # llhttp ends an upgrade request at its head: a body would be taken for the new protocol.
            return await self._answer(head, 501)
        host = host or b""
        if self.tls_names is not None and normalize_host(host) not in self.tls_names:
            return await self._answer(head, 421, has_body=has_body)
        if target == b"*":
            path = "/"
        else:
            try:
                target, raw_path = canonical_target(target)
            except UnsafeTarget:
                return await self._answer(head, 400, has_body=has_body)
            path = raw_path.decode("latin-1")
        challenge = self.settings.acme_challenge
        if (
            challenge is not None
            and path.startswith(ACME_CHALLENGE_PREFIX)
            and head.method in (b"GET", b"HEAD")
        ):
            answer = challenge(path[len(ACME_CHALLENGE_PREFIX) :])
            if answer is not None:
                return await self._answer(head, 200, answer, content_type=b"text/plain", has_body=has_body)
        route = self.resolve(host.decode("latin-1"), path)
        if route is None:
            page = self.settings.not_found_page
            return await self._answer(head, 404, page, has_body=has_body)
        use = self._use(route)
        self.route_name = route.name
        if not route.admits(self.visitor[0]):
            return await self._answer(head, 403, has_body=has_body)
        if use.auth is not None and not use.authorized(head.authorization):
            return await self._answer(head, 401, extra=_WWW_AUTHENTICATE, has_body=has_body)
        request = self._request_head(head, target, host, use)
        return await self._exchange(head, use, request, has_body)

    def _use(self, route: HttpRoute) -> _RouteUse:
        use = self.routes.get(route.name)
        if use is not None and use.route is route:
            return use
        if use is not None:
            use.drop_backend()
            del self.routes[route.name]
        elif len(self.routes) >= MAX_ROUTES_PER_CONNECTION:
            oldest = next(iter(self.routes))
            self.routes.pop(oldest).drop_backend()
        use = self.routes[route.name] = _RouteUse(route)
        return use

    def _request_head(self, head: Head, target: bytes, host: bytes, use: _RouteUse) -> bytes:
        drop = use.request_drop
        out = [head.method, b" ", target, b" HTTP/1.1\r\n"]
        if b"host" not in drop:
            out += (b"Host: ", use.host or host, b"\r\n")
        forwarded_for: bytes | None = None
        for name, value in head.headers:
            key = name.lower()
            if key in _REQUEST_SKIP or key in drop:
                if key == b"upgrade" and head.upgrade:
                    out += (name, b": ", value, b"\r\n")
                continue
            if b"_" in key:
                dashed = key.replace(b"_", b"-")
                if dashed in _UNDERSCORE_DROP or dashed in drop:
                    continue
            if key == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
                continue
            out += (name, b": ", value, b"\r\n")
        if head.upgrade:
            out.append(b"Connection: upgrade\r\n")
        ip = self.visitor_ip
        if b"x-forwarded-for" not in drop:
            out += (
                b"X-Forwarded-For: ",
                ip if forwarded_for is None else forwarded_for + b", " + ip,
                b"\r\n",
            )
        if b"x-forwarded-proto" not in drop:
            out += (b"X-Forwarded-Proto: ", self.settings.scheme.encode(), b"\r\n")
        if b"x-forwarded-host" not in drop:
            out += (b"X-Forwarded-Host: ", host, b"\r\n")
        if b"x-real-ip" not in drop:
            out += (b"X-Real-IP: ", ip, b"\r\n")
        out += (use.request_set, b"\r\n")
        return b"".join(out)

    async def _answer(
        self,
        head: Head | None,
        status: int,
        body: bytes | None = None,
        *,
        content_type: bytes = _HTML,
        extra: bytes = b"",
        has_body: bool = False,
    ) -> bool:
        """Send an answer made here; True when the connection can go on to the next request."""
        keep = head is not None and head.keep_alive and status not in (400, 405, 408, 431, 501)
        if keep and has_body:
            keep = self._discard_body()
        if body is None:
            body = _page(status)
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status].encode()),
            b"Content-Type: ",
            content_type,
            b"\r\nContent-Length: %d\r\n" % len(body),
            extra,
            b"Cache-Control: no-store\r\n" if status != 200 else b"",
            b"" if keep else b"Connection: close\r\n",
            b"\r\n",
        ]
        if head is None or head.method != b"HEAD":
            lines.append(body)
        self.status = status
        self.linger = not keep
        await self.browser.write(b"".join(lines))
        return keep

    def _discard_body(self) -> bool:
        """Drop a request body that has arrived whole; False when it has not (the connection must end)."""
        events = self.requests.events
        if not any(isinstance(item, EndOfMessage) for item in events):
            return False
        while not isinstance(events.popleft(), EndOfMessage):
            pass
        return True

    # -- one request through a backend

    async def _exchange(self, head: Head, use: _RouteUse, request: bytes, has_body: bool) -> bool:
        if not has_body:
            self.requests.events.popleft()  # the request's end
        self.body_done = self.body_sent = not has_body
        for attempt in (0, 1):
            backend = use.backend
            if backend is not None and not backend.reusable():
                use.drop_backend()
                backend = None
            reused = backend is not None
            if backend is None:
                try:
                    async with asyncio.timeout(self.timeout):
                        backend = _Backend(await use.route.open(self.visitor))
                except TimeoutError:
                    return await self._answer(head, 504, has_body=has_body)
                except Exception as exc:
                    event(
                        log,
                        logging.INFO,
                        "vhost.http.backend_failed",
                        f"{use.route.name}: cannot reach the service: {exc or type(exc).__name__}",
                        proxy=use.route.name,
                        visitor=f"{self.visitor[0]}:{self.visitor[1]}",
                        error=str(exc) or type(exc).__name__,
                    )
                    return await self._answer(head, 502, has_body=has_body)
                use.backend = backend
            sender: asyncio.Task[None] | None = None
            try:
                if has_body:
                    chunked = any(k.lower() == b"transfer-encoding" for k, _ in head.headers)
                    sender = asyncio.ensure_future(self._send_body(backend.end, request, chunked))
                else:
                    try:
                        await backend.end.write(request)
                    except OSError as exc:
                        raise _UpstreamGone from exc
                return await self._respond(head, use, backend, sender)
            except _UpstreamGone:
                use.drop_backend()
                await _stop(sender)
                if reused and attempt == 0 and not has_body:
                    continue  # a kept connection the service had closed: once more on a new one
                return await self._answer(head, 502, has_body=not self.body_done)
            except _UpstreamFailed as exc:
                use.drop_backend()
                await _stop(sender)
                event(
                    log,
                    logging.INFO,
                    "vhost.http.bad_response",
                    f"{use.route.name}: {exc}",
                    proxy=use.route.name,
                    error=str(exc),
                )
                return await self._answer(head, exc.status, has_body=not self.body_done)
            finally:
                await _stop(sender)
        raise AssertionError("unreachable")

    async def _send_body(self, end: End, request: bytes, chunked: bool) -> None:
        """Send the request head and body to the backend as the body arrives (a task of its own)."""
        events = self.requests.events
        pieces = [request]
        size = READ_MIN
        while True:
            done = take_body(events, pieces, chunked)
            if done:
                self.body_done = True
            if pieces:
                data = b"".join(pieces)
                pieces.clear()
                try:
                    await end.write(data)
                except OSError:
                    return  # the service stopped reading; its answer (if any) is still read
            if done:
                self.body_sent = True
                return
            try:
                async with asyncio.timeout(self.timeout):
                    data = await self.browser.read(size)
            except TimeoutError as exc:
                raise _Aborted("request body stalled") from exc
            if not data:
                raise _Aborted("browser closed in the middle of a request body")
            if len(data) == size and size < READ_MAX:
                size = min(size * 4, READ_MAX)
            try:
                self.requests.feed(data)
            except Malformed as exc:
                raise _Aborted(f"bad request body: {exc}") from exc

    async def _read_head(self) -> bytes:
        """The browser's next bytes while a head is due: within the idle timeout and the head's deadline."""
        deadline = self.head_deadline
        if deadline is None:
            return await self._read_within(self.browser, READ_MIN)
        left = deadline - self.loop.time()
        if left <= 0:
            raise TimeoutError
        if self.timeout is not None and self.timeout < left:
            left = self.timeout
        return await self._read_within(self.browser, READ_MIN, left)

    async def _read_within(self, end: End, size: int, seconds: float | None = None) -> bytes:
        """``end.read(size)`` within the idle timeout (or ``seconds``); raises TimeoutError when it passes."""
        if seconds is None:
            seconds = self.timeout
        if seconds is None:
            return await end.read(size)
        watchdog = self.watchdog
        watchdog.arm(seconds)
        try:
            return await end.read(size)
        except asyncio.CancelledError:
            if watchdog.expired():
                raise TimeoutError from None
            raise
        finally:
            watchdog.disarm()

    async def _read_backend(
        self, backend: _Backend, size: int, sender: asyncio.Task[None] | None, *, head: bool
    ) -> bytes:
        """The next bytes of a response (b"" at EOF or reset), watching the request body's sender.

        While a head is awaited the idle timeout applies (TimeoutError); a body may take its time.
        """
        end = backend.end
        try:
            if sender is None or sender.done():
                if sender is not None and sender.exception() is not None:
                    raise _Aborted from sender.exception()
                return await (self._read_within(end, size) if head else end.read(size))
            reader = asyncio.ensure_future(end.read(size))
            try:
                async with asyncio.timeout(self.timeout if head else None):
                    await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
                    if not reader.done():
                        failure = sender.exception()
                        if failure is not None:
                            raise _Aborted from failure
                    return await reader
            finally:
                if not reader.done():
                    reader.cancel()
                    await asyncio.wait({reader})
        except TimeoutError:
            raise
        except OSError:
            return b""

    async def _respond(
        self, request: Head, use: _RouteUse, backend: _Backend, sender: asyncio.Task[None] | None
    ) -> bool:
        """Pass the backend's answer to the browser; True when the browser connection stays open."""
        responses = backend.responses
        events = responses.events
        responses.skip_body = request.method == b"HEAD"
        head = await self._final_head(request, use, backend, sender)
        if head is None:
            return False  # switched protocols: the relay has had both connections
        self.status = head.status
        # Framing towards the browser, decided while the head is written out in one pass.
        no_body = bool(events) and isinstance(events[0], EndOfMessage)
        out = [b"HTTP/1.1 %d " % head.status, head.reason, b"\r\n"]
        drop = use.response_drop
        coding: bytes | None = None
        content_length = False
        for name, value in head.headers:
            key = name.lower()
            if key in _RESPONSE_SKIP or key in drop:
                continue
            if key == b"transfer-encoding":
                coding = value if coding is None else coding + b", " + value
                continue
            if key == b"content-length":
                content_length = True
            out += (name, b": ", value, b"\r\n")
        te_chunked = coding is not None and coding.lower().rstrip().endswith(b"chunked")
        to_eof = not (no_body or te_chunked or content_length)
        rechunk = (te_chunked or to_eof) and request.version == "1.1" and not no_body
        ends_by_close = (te_chunked or to_eof) and not rechunk and not no_body
        if rechunk and not te_chunked:
            coding = b"chunked" if coding is None else coding + b", chunked"
        if coding is not None and (rechunk or no_body):
            out += (b"Transfer-Encoding: ", coding, b"\r\n")
        close = not request.keep_alive or not self.body_done or ends_by_close
        if close:
            out.append(b"Connection: close\r\n")
        elif request.version != "1.1":
            out.append(b"Connection: keep-alive\r\n")
        out += (use.response_set, b"\r\n")
        pieces = [b"".join(out)]
        # The body, as it arrives.
        size = READ_MIN
        while True:
            done = take_body(events, pieces, rechunk)
            if pieces:
                data = b"".join(pieces)
                pieces.clear()
                await self.browser.write(data)
            if done:
                break
            data = await self._read_backend(backend, size, sender, head=False)
            if not data:
                if not to_eof:
                    raise _Aborted("the service closed in the middle of a response")
                if rechunk:
                    await self.browser.write(b"0\r\n\r\n")
                break
            if len(data) == size and size < READ_MAX:
                size = min(size * 4, READ_MAX)
            try:
                responses.feed(data)
            except Malformed as exc:
                raise _Aborted(f"malformed response body: {exc}") from exc
        if sender is not None:
            if not sender.done() and self.body_done:
                async with asyncio.timeout(self.timeout):
                    await asyncio.wait({sender})  # only its last write is left
            if not sender.done() or sender.exception() is not None or not self.body_done:
                close = True
            if not self.body_done:
                self.linger = True  # the browser may still be sending the rest of the body
        whole = responses.clean and not events and self.body_sent
        reusable = whole and head.keep_alive and not to_eof
        responses.skip_body = False
        if not reusable:
            if whole:  # e.g. "Connection: close" from the service: end the stream cleanly, not abruptly
                use.release_backend(check_idle=False)
            else:
                use.drop_backend()
        return not close

    async def _final_head(
        self, request: Head, use: _RouteUse, backend: _Backend, sender: asyncio.Task[None] | None
    ) -> Head | None:
        """The final response head; interim (1xx) ones are passed on. None after a protocol switch."""
        events = backend.responses.events
        received = False
        while True:
            while events:
                item = events.popleft()
                if not isinstance(item, Head):
                    continue
                if item.status == 101:
                    if not request.upgrade:
                        raise _UpstreamFailed(502, "101 Switching Protocols without an upgrade request")
                    await self._switch(item, use, backend)
                    return None
                if item.status >= 200:
                    return item
                interim = [b"HTTP/1.1 %d " % item.status, item.reason, b"\r\n"]
                for name, value in item.headers:
                    interim += (name, b": ", value, b"\r\n")
                interim.append(b"\r\n")
                await self.browser.write(b"".join(interim))
            try:
                data = await self._read_backend(backend, READ_MIN, sender, head=True)
            except TimeoutError:
                raise _UpstreamFailed(504, "no response within the timeout") from None
            if not data:
                if received:
                    raise _UpstreamFailed(502, "connection closed in the middle of a response head")
                raise _UpstreamGone
            received = True
            try:
                backend.responses.feed(data)
            except Malformed as exc:
                raise _UpstreamFailed(502, f"malformed response: {exc}") from exc

    async def _switch(self, head: Head, use: _RouteUse, backend: _Backend) -> None:
        """After ``101 Switching Protocols``: both connections go to the relay as they are."""
        drop = use.response_drop
        out = [b"HTTP/1.1 101 ", head.reason, b"\r\n"]
        for name, value in head.headers:
            if name.lower() not in drop:
                out += (name, b": ", value, b"\r\n")
        out += (use.response_set, b"\r\n", backend.responses.rest)
        self.status = 101
        await self.browser.write(b"".join(out))
        rest, self.requests.rest = self.requests.rest, b""
        if rest:
            await backend.end.write(rest)
        use.backend = None
        for other in self.routes.values():
            other.drop_backend()
        self.handed_off = True
        await relay(self.browser, backend.end)  # owns and closes both from its first step
