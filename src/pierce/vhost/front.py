"""The server's shared web ports: HTTP routed by Host and path, HTTPS routed by SNI.

`VhostFront` owns the two listeners, the two domain routers and, with ``[acme]``, the certificate
manager. It knows routes, not proxy kinds: an http proxy (`pierce.proxies.http`) adds an `HttpRoute`, an
https proxy (`pierce.proxies.https`) an `SniRoute`. On the HTTPS port the SNI decides: a name an ``https``
proxy claims is relayed untouched (TLS ends at the inside service); a name of an ``http`` proxy with
``https_auto`` is terminated here with its ACME certificate and then served like plain HTTP
(``X-Forwarded-Proto: https``); anything else is closed.

Hostile visitors: both ports share one `ConnectionLimits` (connections per source address, connections
that have not sent their first head or ClientHello yet); over a cap a connection is reset at once and
the refusal logged at most every few seconds (`RefusalLog`). ``vhost_header_timeout`` is one deadline
for the ClientHello and, when TLS ends here, the handshake after it; the HTTP engine holds each request
head to it too. A connection without SNI is closed: no certificate can be chosen for it, so there is
nothing it could be routed to unambiguously. On TLS ended here, requests may only name hosts that the
connection's certificate names (others get 421 Misdirected Request), so a Host header cannot reach a
proxy whose certificate the visitor never saw.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pierce.addr import HostPort, format_sockaddr
from pierce.errors import LocalError
from pierce.listeners import TcpListener, tune_tcp
from pierce.logs import event, log_front_refused
from pierce.relay import SocketEnd, StreamEnd
from pierce.vhost.http import HttpRoute, HttpSettings, serve_http
from pierce.vhost.limits import Admission, ConnectionLimits, RefusalLog, admit_or_reset
from pierce.vhost.router import DomainRouter, RouteError
from pierce.vhost.sni import SniError, peek_client_hello

if TYPE_CHECKING:
    from pierce.config import ServerConfig
    from pierce.vhost.acme import Certificate, CertificateManager

log = logging.getLogger("pierce.vhost")

#: Least time given to a TLS handshake that starts just before the deadline (asyncio wants one > 0).
MIN_HANDSHAKE_TIMEOUT = 0.05


class SniRoute(Protocol):
    """Where TLS connections for a name go untouched (one https proxy)."""

    async def serve(self, conn: socket.socket, addr: tuple[str, int], server_name: str) -> None: ...


class VhostFront:
    """Listeners on ``vhost_http_port`` / ``vhost_https_port`` and the routes of every web proxy."""

    missing: ClassVar[str] = "this server has no web ports (vhost_http_port / vhost_https_port)"

    def __init__(self, config: ServerConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.http_routes: DomainRouter[HttpRoute] = DomainRouter()
        self.https_routes: DomainRouter[SniRoute] = DomainRouter()
        self.acme: CertificateManager | None = None
        self._http: TcpListener | None = None
        self._https: TcpListener | None = None
        self.limits = ConnectionLimits(
            per_source=config.vhost_max_conns_per_ip, pending=config.vhost_max_pending_conns
        )
        self._refusals = RefusalLog()
        self._header_timeout = config.vhost_header_timeout
        not_found = Path(config.custom_404_file).read_bytes() if config.custom_404_file else None
        self._settings = HttpSettings(
            scheme="http",
            timeout=config.vhost_http_timeout,
            header_timeout=config.vhost_header_timeout,
            not_found_page=not_found,
            acme_challenge=self._acme_challenge,
        )
        self._tls_settings = HttpSettings(
            scheme="https",
            timeout=config.vhost_http_timeout,
            header_timeout=config.vhost_header_timeout,
            not_found_page=not_found,
            acme_challenge=None,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        bind = cfg.proxy_bind_addr
        if cfg.acme is not None:
            from pierce.vhost.acme import CertificateManager

            self.acme = CertificateManager(
                self.state_dir / "acme",
                email=cfg.acme.email,
                directory_url=cfg.acme.directory_url,
                ca_file=Path(cfg.acme.ca_file) if cfg.acme.ca_file else None,
                renew_before=cfg.acme.renew_before_days * 86400,
            )
            await self.acme.start()
        if cfg.vhost_http_port:
            self._http = TcpListener.open(
                HostPort(bind, cfg.vhost_http_port), self._http_visitor, name="vhost http"
            )
        if cfg.vhost_https_port:
            self._https = TcpListener.open(
                HostPort(bind, cfg.vhost_https_port), self._https_visitor, name="vhost https"
            )
        for kind, listener in (("http", self._http), ("https", self._https)):
            if listener is not None:
                event(
                    log,
                    logging.INFO,
                    "front.listening",
                    f"{kind} virtual hosts on {listener.address}",
                    front=kind,
                    listen=listener.address,
                    port=listener.port,
                )

    async def close(self) -> None:
        for listener in (self._http, self._https):
            if listener is not None:
                await listener.close()
        if self.acme is not None:
            await self.acme.close()

    def ports(self) -> dict[str, int]:
        ports = {}
        if self._http is not None:
            ports["vhost_http_port"] = self._http.port
        if self._https is not None:
            ports["vhost_https_port"] = self._https.port
        return ports

    # -- routes ------------------------------------------------------------------------------------

    @property
    def http_address(self) -> HostPort:
        """The public address of the HTTP port (port 0 when it is off: `add_http` refuses)."""
        return HostPort(self.config.proxy_bind_addr, self._http.port if self._http is not None else 0)

    @property
    def https_address(self) -> HostPort:
        return HostPort(self.config.proxy_bind_addr, self._https.port if self._https is not None else 0)

    def add_http(
        self, route: HttpRoute, domains: list[str], locations: list[str], *, https_auto: bool
    ) -> None:
        """Route requests for ``domains`` and ``locations`` to ``route``; RouteError when it cannot be."""
        if self._http is None:
            raise RouteError("this server serves no HTTP virtual hosts (vhost_http_port is 0)")
        if https_auto and (self.acme is None or self._https is None):
            raise RouteError("https_auto needs [acme] and vhost_https_port in the server config")
        self.http_routes.add_all(domains, locations, route)
        if https_auto and self.acme is not None:
            self.acme.want(domains)

    def remove_http(self, route: HttpRoute, domains: Iterable[str], *, https_auto: bool) -> None:
        self.http_routes.remove_value(route)
        if https_auto and self.acme is not None:
            self.acme.forget(list(domains))

    def add_https(self, route: SniRoute, domains: list[str]) -> None:
        if self._https is None:
            raise RouteError("this server serves no HTTPS virtual hosts (vhost_https_port is 0)")
        self.https_routes.add_all(domains, ["/"], route)

    def remove_https(self, route: SniRoute) -> None:
        self.https_routes.remove_value(route)

    # -- visitors ----------------------------------------------------------------------------------

    def _acme_challenge(self, token: str) -> bytes | None:
        return self.acme.challenge_response(token) if self.acme is not None else None

    def _admit(self, conn: socket.socket, addr: Any, front: str) -> Admission | None:
        return admit_or_reset(self.limits, self._refusals, conn, addr, front, log)

    async def _http_visitor(self, conn: socket.socket, addr: Any) -> None:
        admission = self._admit(conn, addr, "http")
        if admission is None:
            return
        try:
            tune_tcp(conn)
            await serve_http(
                SocketEnd(conn),
                (addr[0], addr[1]),
                self.http_routes.lookup,
                self._settings,
                on_first_head=admission.settle,
            )
        finally:
            admission.release()

    async def _https_visitor(self, conn: socket.socket, addr: Any) -> None:
        admission = self._admit(conn, addr, "https")
        if admission is None:
            return
        try:
            await self._serve_https(conn, addr, admission)
        finally:
            admission.release()

    async def _serve_https(self, conn: socket.socket, addr: Any, admission: Admission) -> None:
        visitor = format_sockaddr(addr)
        tune_tcp(conn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._header_timeout  # for the ClientHello and a handshake after it
        try:
            hello = await peek_client_hello(conn, self._header_timeout)
        except (SniError, TimeoutError, OSError) as exc:
            conn.close()
            reason = f"no usable TLS ClientHello: {exc or type(exc).__name__}"
            log_front_refused(log, "https", visitor, "bad_hello", reason)
            return
        admission.settle()
        name = hello.server_name
        if not name:
            conn.close()
            log_front_refused(log, "https", visitor, "no_sni", "TLS without a server name, closed")
            return
        passthrough = self.https_routes.lookup(name)
        if passthrough is not None:
            await passthrough.serve(conn, (addr[0], addr[1]), name)
            return
        cert = self.acme.certificate_for(name) if self.acme is not None else None
        if cert is not None and self.http_routes.lookup(name) is not None:
            await self._terminate(conn, addr, name, cert, deadline)
            return
        conn.close()
        reason = f"no proxy serves {name!r} over HTTPS, closed"
        log_front_refused(log, "https", visitor, "unknown_name", reason, server_name=name)

    async def _terminate(
        self, conn: socket.socket, addr: Any, name: str, cert: Certificate, deadline: float
    ) -> None:
        """TLS ends here (automatic HTTPS); the requests inside go through the HTTP router, for the names
        of ``cert`` only."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=cert.context,
                ssl_handshake_timeout=max(deadline - loop.time(), MIN_HANDSHAKE_TIMEOUT),
            )
        except (OSError, LocalError, TimeoutError) as exc:
            conn.close()
            reason = f"TLS handshake for {name!r} failed: {exc or type(exc).__name__}"
            log_front_refused(
                log, "https", format_sockaddr(addr), "handshake_failed", reason, server_name=name
            )
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await serve_http(
            StreamEnd(reader, writer),
            (addr[0], addr[1]),
            self.http_routes.lookup,
            self._tls_settings,
            tls_names=frozenset(cert.names),
        )
