"""The server's shared web ports: HTTP routed by Host and path, HTTPS routed by SNI.

`VhostFront` owns the two listeners, the two domain routers and, with ``[acme]``, the certificate
manager. On the HTTPS port the SNI decides: a name an ``https`` proxy claims is relayed untouched (TLS ends
at the inside service); a name of an ``http`` proxy with ``https_auto`` is terminated here with its ACME
certificate and then served like plain HTTP (``X-Forwarded-Proto: https``); anything else is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pierce.addr import HostPort, format_sockaddr
from pierce.config import ServerConfig
from pierce.errors import LocalError
from pierce.listeners import TcpListener, set_nodelay
from pierce.logs import event
from pierce.proxies.http import HttpProxyServer, HttpsProxyServer, _VhostProxy
from pierce.relay import SocketEnd, StreamEnd
from pierce.vhost.http import HttpSettings, serve_http
from pierce.vhost.router import DomainRouter, RouteError, full_domain
from pierce.vhost.sni import SniError, peek_client_hello

if TYPE_CHECKING:
    from pierce.vhost.acme import CertificateManager

log = logging.getLogger("pierce.vhost")

#: Seconds a visitor on the HTTPS port has to send its whole ClientHello.
CLIENT_HELLO_TIMEOUT = 10.0


class VhostFront:
    """Listeners on ``vhost_http_port`` / ``vhost_https_port`` and the routes of every web proxy."""

    def __init__(self, config: ServerConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.http_routes: DomainRouter[HttpProxyServer] = DomainRouter()
        self.https_routes: DomainRouter[HttpsProxyServer] = DomainRouter()
        self.acme: CertificateManager | None = None
        self._http: TcpListener | None = None
        self._https: TcpListener | None = None
        not_found = Path(config.custom_404_file).read_bytes() if config.custom_404_file else None
        self._settings = HttpSettings(
            scheme="http",
            timeout=config.vhost_http_timeout,
            not_found_page=not_found,
            acme_challenge=self._acme_challenge,
        )
        self._tls_settings = HttpSettings(
            scheme="https",
            timeout=config.vhost_http_timeout,
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
                    "vhost.listening",
                    f"{kind} virtual hosts on {listener.address}",
                    kind=kind,
                    listen=listener.address,
                    port=listener.port,
                )

    async def close(self) -> None:
        for listener in (self._http, self._https):
            if listener is not None:
                await listener.close()
        if self.acme is not None:
            await self.acme.close()

    # -- routes ------------------------------------------------------------------------------------

    def domains_of(self, custom_domains: list[str], subdomain: str) -> list[str]:
        """The full domain names a proxy asks for (``subdomain`` needs the server's ``subdomain_host``)."""
        domains = list(custom_domains)
        if subdomain:
            if not self.config.subdomain_host:
                raise RouteError(f'subdomain "{subdomain}" needs subdomain_host in the server config')
            domains.append(full_domain(subdomain, self.config.subdomain_host))
        if not domains:
            raise RouteError("no domain: set custom_domains or subdomain")
        return domains

    def add_http(self, proxy: HttpProxyServer) -> None:
        if self._http is None:
            raise RouteError("this server serves no HTTP virtual hosts (vhost_http_port is 0)")
        if proxy.https_auto and (self.acme is None or self._https is None):
            raise RouteError("https_auto needs [acme] and vhost_https_port in the server config")
        self.http_routes.add_all(proxy.domains, proxy.locations, proxy)
        if proxy.https_auto and self.acme is not None:
            self.acme.want(proxy.domains)

    def add_https(self, proxy: HttpsProxyServer) -> None:
        if self._https is None:
            raise RouteError("this server serves no HTTPS virtual hosts (vhost_https_port is 0)")
        self.https_routes.add_all(proxy.domains, ["/"], proxy)

    def remove(self, proxy: _VhostProxy) -> None:
        if isinstance(proxy, HttpProxyServer):
            self.http_routes.remove_value(proxy)
            if proxy.https_auto and self.acme is not None:
                self.acme.forget(proxy.domains)
        elif isinstance(proxy, HttpsProxyServer):
            self.https_routes.remove_value(proxy)

    def front(self, kind: str) -> HostPort:
        """The public address of the ``kind`` port (port 0 when it is off: `add_http`/`add_https` refuse)."""
        listener = self._http if kind == "http" else self._https
        return HostPort(self.config.proxy_bind_addr, listener.port if listener is not None else 0)

    # -- visitors ----------------------------------------------------------------------------------

    def _acme_challenge(self, token: str) -> bytes | None:
        return self.acme.challenge_response(token) if self.acme is not None else None

    async def _http_visitor(self, conn: socket.socket, addr: Any) -> None:
        set_nodelay(conn)
        await serve_http(SocketEnd(conn), (addr[0], addr[1]), self.http_routes.lookup, self._settings)

    async def _https_visitor(self, conn: socket.socket, addr: Any) -> None:
        visitor = format_sockaddr(addr)
        set_nodelay(conn)
        try:
            hello = await peek_client_hello(conn, CLIENT_HELLO_TIMEOUT)
        except (SniError, TimeoutError, OSError) as exc:
            conn.close()
            event(
                log,
                logging.INFO,
                "https.bad_hello",
                f"{visitor}: no usable TLS ClientHello: {exc or type(exc).__name__}",
                client=visitor,
                error=str(exc) or type(exc).__name__,
            )
            return
        name = hello.server_name
        if not name:
            conn.close()
            event(
                log,
                logging.INFO,
                "https.no_sni",
                f"{visitor}: TLS without a server name, closed",
                client=visitor,
            )
            return
        passthrough = self.https_routes.lookup(name)
        if passthrough is not None:
            await passthrough.serve(conn, (addr[0], addr[1]), name)
            return
        context = self.acme.context_for(name) if self.acme is not None else None
        if context is not None and self.http_routes.lookup(name) is not None:
            await self._terminate(conn, addr, name, context)
            return
        conn.close()
        event(
            log,
            logging.INFO,
            "https.unknown_name",
            f"{visitor}: no proxy serves {name!r} over HTTPS, closed",
            client=visitor,
            server_name=name,
        )

    async def _terminate(self, conn: socket.socket, addr: Any, name: str, context: Any) -> None:
        """TLS ends here (automatic HTTPS); the requests inside go through the HTTP router."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=context, ssl_handshake_timeout=CLIENT_HELLO_TIMEOUT
            )
        except (OSError, LocalError, TimeoutError) as exc:
            conn.close()
            event(
                log,
                logging.INFO,
                "https.handshake_failed",
                f"{format_sockaddr(addr)}: TLS handshake for {name!r} failed: {exc}",
                client=format_sockaddr(addr),
                server_name=name,
                error=str(exc),
            )
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await serve_http(
            StreamEnd(reader, writer), (addr[0], addr[1]), self.http_routes.lookup, self._tls_settings
        )
