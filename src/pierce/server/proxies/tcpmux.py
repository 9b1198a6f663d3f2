"""The server side of tcpmux proxies (`pierce.proxies.tcpmux`): the shared CONNECT listener, the proxies.

`TcpMuxFront` is the shared listener (a front, `pierce.proxies.base.Front`); `TcpMuxProxyServer` the
proxy; `TcpMuxGroup` the name of a group of them, which take turns. Before the answer every byte a
visitor sends is bounded: the request head by size, field count and time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pierce.addr import HostPort, format_sockaddr
from pierce.listeners import TcpListener, tune_tcp
from pierce.logs import event, log_front_refused
from pierce.protocol import ErrorCode, StartWork
from pierce.proxies.base import ProxyOwner, ProxySite, ProxyType
from pierce.proxies.tcpmux import TcpMuxSpec
from pierce.relay import End, SocketEnd, wait_fd
from pierce.server.proxies.bridge import LiveConnections, bridge
from pierce.server.proxies.group import ProxyGroup, ProxyGroups
from pierce.server.proxies.http import route_refusal
from pierce.snapshot import ProxyStats
from pierce.vhost.http_parse import Head, Malformed, MessageParser, basic_auth_matches
from pierce.vhost.limits import Admission, ConnectionLimits, RefusalLog, admit_or_reset
from pierce.vhost.router import DomainRouter, RouteError, normalize_host, proxy_domains

if TYPE_CHECKING:
    from pierce.config import ServerConfig

log = logging.getLogger("pierce.tcpmux")

#: Bounds of a CONNECT request head.
MAX_CONNECT_HEAD = 16 * 1024
MAX_CONNECT_FIELDS = 64
_READ_SIZE = 4096
#: After a refusal: how long and how much of the visitor's remaining input is read and dropped.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024


def _answer(status: str, detail: str = "", extra: str = "") -> bytes:
    body = f"{detail}\n".encode() if detail else b""
    return (
        f"HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_CHALLENGE = 'Proxy-Authenticate: Basic realm="pierce"\r\n'
_ALLOW = "Allow: CONNECT\r\n"
_REFUSALS = {ErrorCode.TIMEOUT: "504 Gateway Timeout"}


class ConnectVisitor:
    """A visitor whose CONNECT request named a proxy: hears ``200`` or an HTTP refusal."""

    def __init__(self, conn: socket.socket, address: tuple[str, int], early: bytes, *, answer: bool) -> None:
        self.conn = conn
        self.address = address
        #: Bytes for the service before the relay starts: what came after the CONNECT head, and in
        #: passthrough mode the head itself.
        self.early = early
        self._answer = answer

    async def accept(self) -> End:
        end = SocketEnd(self.conn)
        if self._answer:
            await end.write(_ESTABLISHED)
        return end

    async def refuse(self, code: ErrorCode, reason: str) -> None:
        await _refuse(self.conn, _answer(_REFUSALS.get(code, "502 Bad Gateway"), reason))


class MuxRoute(Protocol):
    """What a name on the tcpmux port leads to: one proxy, or a group of them."""

    @property
    def name(self) -> str: ...

    def authorized(self, head: Head) -> bool: ...

    async def serve(self, visitor: ConnectVisitor, here: tuple[str, int], name: str) -> None: ...


def _authorized(spec: TcpMuxSpec, head: Head) -> bool:
    """Whether ``head`` carries the ``Proxy-Authorization`` that ``spec`` asks for (if any)."""
    if not spec.http_user:
        return True
    value = next((v for f, v in head.headers if f.lower() == b"proxy-authorization"), None)
    return basic_auth_matches(value, spec.http_user.encode(), spec.http_password.encode())


class TcpMuxProxyServer:
    """A tcpmux proxy: CONNECT requests for the names it claims on the tcpmux port."""

    type: ClassVar[ProxyType] = ProxyType.TCPMUX

    def __init__(
        self,
        name: str,
        owner: ProxyOwner,
        front: TcpMuxFront,
        domains: list[str],
        spec: TcpMuxSpec,
        group: TcpMuxGroup | None = None,
    ):
        self.name = name
        self.owner = owner
        self.domains = domains
        self.port = front.port
        self.urls: list[str] = []
        self.live = LiveConnections()
        self.group = group
        self._front = front
        self._spec = spec

    def __str__(self) -> str:
        return f"proxy {self.name!r}"

    @classmethod
    def create(cls, name: str, spec: TcpMuxSpec, site: ProxySite) -> TcpMuxProxyServer:
        front = site.front(TcpMuxFront)
        try:
            domains = proxy_domains(spec.custom_domains, spec.subdomain, front.config.subdomain_host)
            if spec.group:
                user = site.owner.user
                group = site.groups.join(
                    TcpMuxGroup,
                    user,
                    name,
                    spec,
                    lambda: TcpMuxGroup(site.groups, user, spec, front, domains),
                )
                member = cls(name, site.owner, front, domains, spec, group)
                group.add(member)
                return member
            proxy = cls(name, site.owner, front, domains, spec)
            front.routes.add_all(domains, ["/"], proxy)
        except RouteError as exc:
            raise route_refusal(exc) from exc
        return proxy

    def authorized(self, head: Head) -> bool:
        return _authorized(self._spec, head)

    async def serve(self, visitor: ConnectVisitor, here: tuple[str, int], name: str) -> None:
        start = StartWork(
            proxy=self.name,
            visitor_host=visitor.address[0],
            visitor_port=visitor.address[1],
            server_host=here[0],
            server_port=here[1],
        )
        await bridge(self.name, self.owner, self.live, visitor, start, server_name=name)

    def stats(self) -> ProxyStats:
        return self.live.stats()

    async def close(self) -> None:
        if self.group is not None:
            await self.group.leave(self)
        else:
            self._front.routes.remove_value(self)
        await self.live.close()


class TcpMuxGroup(ProxyGroup[TcpMuxProxyServer]):
    """The names of a group of tcpmux proxies: each CONNECT goes to the next member."""

    kind = ProxyType.TCPMUX

    def __init__(
        self, groups: ProxyGroups, user: str, spec: TcpMuxSpec, front: TcpMuxFront, domains: list[str]
    ) -> None:
        super().__init__(groups, user, spec)
        self._front = front
        self._tcpmux_spec = spec
        front.routes.add_all(domains, ["/"], self)

    def authorized(self, head: Head) -> bool:
        return _authorized(self._tcpmux_spec, head)

    async def serve(self, visitor: ConnectVisitor, here: tuple[str, int], name: str) -> None:
        member = self.pick()
        if member is None:
            await visitor.refuse(ErrorCode.UNKNOWN_PROXY, f"group {self.name!r} has no member left")
            return
        await member.serve(visitor, here, name)

    async def release(self) -> None:
        self._front.routes.remove_value(self)


class TcpMuxFront:
    """The listener on ``tcpmux_httpconnect_port`` and the names of every tcpmux proxy."""

    missing: ClassVar[str] = "this server has no tcpmux port (tcpmux_httpconnect_port)"

    def __init__(self, config: ServerConfig, state_dir: Path) -> None:
        self.config = config
        self.routes: DomainRouter[MuxRoute] = DomainRouter()
        self._listener: TcpListener | None = None
        #: The same caps as the web ports (their keys), counted for this port on its own.
        self.limits = ConnectionLimits(
            per_source=config.vhost_max_conns_per_ip, pending=config.vhost_max_pending_conns
        )
        self._refusals = RefusalLog()

    @property
    def port(self) -> int:
        return self._listener.port if self._listener is not None else 0

    async def start(self) -> None:
        cfg = self.config
        self._listener = TcpListener.open(
            HostPort(cfg.proxy_bind_addr, cfg.tcpmux_httpconnect_port), self._visitor, name="tcpmux"
        )
        mode = "the CONNECT request goes on to the service" if cfg.tcpmux_passthrough else "answered here"
        event(
            log,
            logging.INFO,
            "front.listening",
            f"tcpmux (HTTP CONNECT, {mode}) on {self._listener.address}",
            front="tcpmux",
            listen=self._listener.address,
            port=self._listener.port,
        )

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()

    def ports(self) -> dict[str, int]:
        return {"tcpmux_httpconnect_port": self.port}

    async def _visitor(self, conn: socket.socket, addr: Any) -> None:
        admission = admit_or_reset(self.limits, self._refusals, conn, addr, "tcpmux", log)
        if admission is None:
            return
        try:
            await self._serve(conn, addr, admission)
        finally:
            admission.release()

    async def _serve(self, conn: socket.socket, addr: Any, admission: Admission) -> None:
        who = format_sockaddr(addr)
        tune_tcp(conn)
        try:
            # One deadline for the whole head (vhost_header_timeout): a byte now and then does not
            # keep it open.
            head, raw, rest = await read_connect(conn, self.config.vhost_header_timeout)
        except (Malformed, TimeoutError, OSError, EOFError) as exc:
            status = "408 Request Timeout" if isinstance(exc, TimeoutError) else "400 Bad Request"
            await _refuse(conn, _answer(status, "expected an HTTP CONNECT request"))
            reason = f"no usable CONNECT request: {exc or type(exc).__name__}"
            log_front_refused(log, "tcpmux", who, "bad_request", reason)
            return
        admission.settle()
        if head.method != b"CONNECT":
            await _refuse(conn, _answer("405 Method Not Allowed", "only CONNECT is served", _ALLOW))
            reason = f"{head.method.decode('latin-1')} instead of CONNECT"
            log_front_refused(log, "tcpmux", who, "not_connect", reason)
            return
        name = normalize_host(head.target)
        proxy = self.routes.lookup(name) if name else None
        if proxy is None:
            asked = name or head.target.decode("latin-1")
            await _refuse(conn, _answer("404 Not Found", f"no proxy serves {asked!r}"))
            log_front_refused(
                log, "tcpmux", who, "unknown_name", f"no proxy serves {asked!r}", server_name=asked
            )
            return
        if not proxy.authorized(head):
            await _refuse(conn, _answer("407 Proxy Authentication Required", "", _CHALLENGE))
            reason = f"wrong or missing Proxy-Authorization for {name!r}"
            log_front_refused(log, "tcpmux", who, "unauthorized", reason, server_name=name, proxy=proxy.name)
            return
        passthrough = self.config.tcpmux_passthrough
        early = raw + rest if passthrough else rest
        visitor = ConnectVisitor(conn, (addr[0], addr[1]), early, answer=not passthrough)
        here = conn.getsockname()
        await proxy.serve(visitor, (here[0], here[1]), name)


async def _refuse(conn: socket.socket, answer: bytes) -> None:
    """Answer and close. Input the visitor already sent is read and dropped for a moment (bounded), so
    closing with unread bytes does not reset the connection before the answer is read."""
    loop = asyncio.get_running_loop()
    left = LINGER_BYTES
    try:
        conn.setblocking(False)
        conn.send(answer)
        conn.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER_SECONDS):
            while left > 0:
                try:
                    data = conn.recv(min(left, 65536))
                except (BlockingIOError, InterruptedError):
                    await wait_fd(loop, conn.fileno(), writable=False)
                    continue
                if not data:
                    break
                left -= len(data)
    except (OSError, TimeoutError):
        pass
    finally:
        conn.close()


async def read_connect(conn: socket.socket, timeout: float) -> tuple[Head, bytes, bytes]:
    """Read one request head: the head, its raw bytes, and the bytes that came after it.

    Raises `Malformed` (including a head over the limits), TimeoutError, or EOFError when the peer
    leaves first.
    """
    loop = asyncio.get_running_loop()
    parser = MessageParser(request=True, max_size=MAX_CONNECT_HEAD, max_count=MAX_CONNECT_FIELDS)
    received = bytearray()
    conn.setblocking(False)
    async with asyncio.timeout(timeout):
        while True:
            # Plain recv and a readiness wait, as the relay does: the socket goes on to its pumps.
            try:
                data = conn.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                await wait_fd(loop, conn.fileno(), writable=False)
                continue
            if not data:
                raise EOFError(f"closed after {len(received)} bytes of a request head")
            received += data
            if len(received) > MAX_CONNECT_HEAD + _READ_SIZE:
                raise Malformed(f"request head over {MAX_CONNECT_HEAD} bytes")
            parser.feed(data)
            if parser.events and isinstance(head := parser.events[0], Head):
                rest = parser.rest
                return head, bytes(received[: len(received) - len(rest)]), rest
