"""One logged-in client on the server: its control channel, its proxies and its work-connection pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pierce.addr import HostPort
from pierce.errors import LocalError, PierceError
from pierce.listeners import PortInUse
from pierce.logs import event
from pierce.protocol import (
    CloseProxy,
    Error,
    ErrorCode,
    NewHttpProxy,
    NewHttpsProxy,
    NewProxy,
    NewStcpProxy,
    NewSudpProxy,
    NewTcpProxy,
    NewUdpProxy,
    Ping,
    Pong,
    ProtocolError,
    ProxyReady,
    ProxyRefused,
    SecretKind,
    UdpPacket,
    VisitorVerdict,
)
from pierce.proxies.http import HttpProxyServer, HttpsProxyServer, _VhostProxy
from pierce.proxies.stcp import SecretProxyServer
from pierce.proxies.tcp import TcpProxyServer
from pierce.proxies.udp import UdpProxyServer
from pierce.server.workconn import WorkConn, WorkConnPool
from pierce.transport import ConnectionClosed, MessageChannel
from pierce.udpflow import DropCounter
from pierce.vhost.router import RouteError, RouteTaken

if TYPE_CHECKING:
    from pierce.server.app import Server

log = logging.getLogger("pierce.server")


class ProxyRefusal(PierceError):
    def __init__(self, code: ErrorCode, reason: str) -> None:
        self.code = code
        super().__init__(reason)


class PublicProxy(Protocol):
    """What a session needs from a proxy of any kind (`TcpProxyServer`, `UdpProxyServer`)."""

    name: str
    port: int

    async def close(self) -> None: ...


class ControlSession:
    """Owns everything one client registered; ``close()`` frees its ports and connections."""

    def __init__(
        self, server: Server, channel: MessageChannel, *, client_id: str, run_id: str, peer: str
    ) -> None:
        self.server = server
        self.channel = channel
        self.client_id = client_id
        self.run_id = run_id
        self.peer = peer
        self.pool = WorkConnPool(channel)
        self._work_serial = 0
        self.proxies: dict[str, PublicProxy] = {}
        self.started = time.time()
        self.last_seen = time.monotonic()
        self.closed = asyncio.Event()
        self._foreign_udp = DropCounter(log, "udp.unknown_proxy", f"client {client_id}: UDP packets")

    # -- work connections --------------------------------------------------------------------------

    def add_work_conn(self, conn: WorkConn) -> None:
        self._work_serial += 1
        conn.serial = self._work_serial
        self.pool.put(conn)

    async def take_work_conn(self) -> WorkConn:
        return await self.pool.get(self.server.config.user_conn_timeout)

    # -- control loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the control channel until the client leaves, goes silent, or breaks the protocol."""
        timeout = self.server.config.heartbeat_timeout
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        msg = await self.channel.recv()
                except TimeoutError:
                    event(
                        log,
                        logging.WARNING,
                        "client.timeout",
                        f"client {self.client_id} ({self.peer}) silent for {timeout:g}s, dropping it",
                        client_id=self.client_id,
                        peer=self.peer,
                    )
                    return
                self.last_seen = time.monotonic()
                await self._handle(msg)
        except ConnectionClosed:
            event(
                log,
                logging.INFO,
                "client.gone",
                f"client {self.client_id} ({self.peer}) disconnected",
                client_id=self.client_id,
                peer=self.peer,
            )
        except ProtocolError as exc:
            event(
                log,
                logging.WARNING,
                "client.protocol_error",
                f"client {self.client_id} ({self.peer}) broke the protocol: {exc}",
                client_id=self.client_id,
                peer=self.peer,
                error=str(exc),
            )
            with contextlib.suppress(PierceError):
                await self.channel.send(Error(code=exc.code, reason=str(exc)))

    async def _handle(self, msg: object) -> None:
        match msg:
            case Ping(seq=seq):
                await self.channel.send(Pong(seq=seq))
            case (
                NewTcpProxy()
                | NewUdpProxy()
                | NewHttpProxy()
                | NewHttpsProxy()
                | NewStcpProxy()
                | NewSudpProxy()
            ):
                await self._new_proxy(msg)
            case VisitorVerdict():
                secret = self.proxies.get(msg.proxy)
                if isinstance(secret, SecretProxyServer):
                    secret.verdict(msg)
            case CloseProxy(name=name):
                await self._close_proxy(name, reason="closed by client")
            case UdpPacket():
                proxy = self.proxies.get(msg.proxy)
                if isinstance(proxy, UdpProxyServer):
                    proxy.deliver(msg)
                else:  # only this client's own UDP proxies: never another client's port
                    self._foreign_udp.drop(f"not a UDP proxy of this client: {msg.proxy!r}", proxy=msg.proxy)
            case Error(code=code, reason=reason):
                event(
                    log,
                    logging.WARNING,
                    "client.error",
                    f"client {self.client_id} says: {reason}",
                    client_id=self.client_id,
                    code=code.value,
                )
                raise ConnectionClosed(reason)
            case _:
                raise ProtocolError(f"unexpected {type(msg).__name__} on the control channel")

    async def _new_proxy(self, msg: NewProxy) -> None:
        name = msg.name
        proxy: PublicProxy
        try:
            match msg:
                case NewTcpProxy(remote_port=port):
                    kind = "tcp"
                    proxy = self._open_proxy(name, port, lambda addr: TcpProxyServer(name, self, addr))
                case NewUdpProxy(remote_port=port):
                    kind = "udp"
                    proxy = self._open_proxy(name, port, lambda addr: UdpProxyServer(name, self, addr))
                case NewHttpProxy() | NewHttpsProxy():
                    kind = "http" if isinstance(msg, NewHttpProxy) else "https"
                    proxy = self._open_vhost_proxy(msg)
                case NewStcpProxy() | NewSudpProxy():
                    secret = SecretKind.STCP if isinstance(msg, NewStcpProxy) else SecretKind.SUDP
                    kind = secret.value
                    self._check_name(name)
                    proxy = SecretProxyServer(name, secret, self)
        except ProxyRefusal as exc:
            event(
                log,
                logging.WARNING,
                "proxy.refused",
                f"client {self.client_id}: proxy {name}: {exc}",
                client_id=self.client_id,
                proxy=name,
                code=exc.code.value,
                reason=str(exc),
            )
            await self.channel.send(ProxyRefused(name=name, code=exc.code, reason=str(exc)))
            return
        self.proxies[name] = proxy
        self.server.proxy_owners[name] = self
        where = f"listening on {kind} port {proxy.port}"
        if isinstance(proxy, SecretProxyServer):
            where = f"registered ({kind}: no public port, for visitors with its secret)"
        event(
            log,
            logging.INFO,
            "proxy.ready",
            f"client {self.client_id}: proxy {name} {where}",
            client_id=self.client_id,
            proxy=name,
            type=kind,
            remote_port=proxy.port,
        )
        urls = proxy.urls() if isinstance(proxy, _VhostProxy) else []
        await self.channel.send(ProxyReady(name=name, remote_port=proxy.port, urls=urls))

    def _check_name(self, name: str) -> None:
        owner = self.server.proxy_owners.get(name)
        if owner is not None and owner is not self:
            raise ProxyRefusal(
                ErrorCode.DUPLICATE_NAME, f"proxy name {name!r} is already used by client {owner.client_id}"
            )
        if name in self.proxies:
            raise ProxyRefusal(ErrorCode.DUPLICATE_NAME, f"proxy name {name!r} is already registered")

    def _open_vhost_proxy(self, msg: NewHttpProxy | NewHttpsProxy) -> PublicProxy:
        """Check the name and the domains, then add the proxy's routes on the shared web ports."""
        self._check_name(msg.name)
        front = self.server.vhost
        if front is None:
            raise ProxyRefusal(
                ErrorCode.NOT_AVAILABLE, "this server has no web ports (vhost_http_port / vhost_https_port)"
            )
        vproxy: HttpProxyServer | HttpsProxyServer
        try:
            domains = front.domains_of(msg.custom_domains, msg.subdomain)
            if isinstance(msg, NewHttpProxy):
                vproxy = HttpProxyServer(
                    msg.name,
                    self,
                    domains,
                    front.front("http"),
                    front.remove,
                    locations=msg.locations,
                    http_user=msg.http_user,
                    http_password=msg.http_password,
                    host_header_rewrite=msg.host_header_rewrite,
                    request_headers=msg.request_headers,
                    response_headers=msg.response_headers,
                    https_auto=msg.https_auto,
                )
                front.add_http(vproxy)
            else:
                vproxy = HttpsProxyServer(
                    msg.name,
                    self,
                    domains,
                    front.front("https"),
                    front.remove,
                )
                front.add_https(vproxy)
        except RouteTaken as exc:
            raise ProxyRefusal(ErrorCode.DOMAIN_TAKEN, str(exc)) from exc
        except RouteError as exc:
            raise ProxyRefusal(ErrorCode.NOT_AVAILABLE, str(exc)) from exc
        return vproxy

    def _open_proxy(self, name: str, port: int, opener: Callable[[HostPort], PublicProxy]) -> PublicProxy:
        """Check the name, the limits and the port rules, then bind with ``opener`` (port 0: any allowed)."""
        cfg = self.server.config
        self._check_name(name)
        held = sum(1 for p in self.proxies.values() if not isinstance(p, _VhostProxy | SecretProxyServer))
        if cfg.max_ports_per_client and held >= cfg.max_ports_per_client:
            raise ProxyRefusal(
                ErrorCode.LIMIT_REACHED, f"client already holds {held} ports (max_ports_per_client)"
            )
        bind = cfg.proxy_bind_addr
        if port:
            if not cfg.port_allowed(port):
                allowed = ", ".join(str(r) for r in cfg.allow_ports)
                raise ProxyRefusal(
                    ErrorCode.PORT_NOT_ALLOWED, f"port {port} is not allowed (allow_ports: {allowed})"
                )
            candidates = [port]
        elif cfg.allow_ports:
            candidates = [p for r in cfg.allow_ports for p in r]
            random.shuffle(candidates)
            candidates = candidates[:256]
        else:
            candidates = [0]
        last: LocalError | None = None
        for candidate in candidates:
            try:
                return opener(HostPort(bind, candidate))
            except PortInUse as exc:
                last = exc
            except LocalError as exc:
                raise ProxyRefusal(ErrorCode.INTERNAL, str(exc)) from exc
        if port:
            raise ProxyRefusal(ErrorCode.PORT_IN_USE, f"port {port} is already in use on the server")
        raise ProxyRefusal(ErrorCode.PORT_IN_USE, f"no free port in allow_ports ({last})")

    async def _close_proxy(self, name: str, *, reason: str) -> None:
        proxy = self.proxies.pop(name, None)
        if proxy is None:
            return
        if self.server.proxy_owners.get(name) is self:
            del self.server.proxy_owners[name]
        await proxy.close()
        event(
            log,
            logging.INFO,
            "proxy.closed",
            f"client {self.client_id}: proxy {name} closed ({reason})",
            client_id=self.client_id,
            proxy=name,
            reason=reason,
        )

    async def close(self, reason: str) -> None:
        """Free every port and connection of this client."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.pool.close()
        for name in list(self.proxies):
            await self._close_proxy(name, reason=reason)
        self.channel.close()
