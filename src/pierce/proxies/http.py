"""HTTP and HTTPS proxies on the server: routes on the shared vhost ports, reaching one client each.

An `HttpProxyServer` is what the vhost router hands a request to: it carries the proxy's options
(basic auth, header rewrites) and opens connections to the client's local service through a work
connection. An `HttpsProxyServer` takes whole TLS connections, chosen by SNI, and relays them untouched.
The client side of both is `pierce.proxies.tcp.serve_tcp_work`: to the client they are TCP streams.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping

from pierce.addr import HostPort, format_sockaddr
from pierce.logs import event, log_relay_closed
from pierce.protocol import StartWork
from pierce.proxies.tcp import WorkSource
from pierce.relay import End, RelayStats, SocketEnd, relay

log = logging.getLogger("pierce.proxy")


class _VhostProxy:
    """What http and https proxies share: a name, an owner, domains, and a way to reach the client."""

    kind = "http"

    def __init__(
        self,
        name: str,
        session: WorkSource,
        domains: list[str],
        front: HostPort,
        on_close: Callable[[_VhostProxy], None],
    ) -> None:
        self.name = name
        self.session = session
        self.domains = domains
        #: The public address visitors connect to (the destination of PROXY protocol headers).
        self.front = front
        self.port = front.port
        self._on_close = on_close
        self.live: set[RelayStats] = set()

    def urls(self) -> list[str]:
        default = 80 if self.kind == "http" else 443
        suffix = "" if self.port == default else f":{self.port}"
        return [f"{self.kind}://{d}{suffix}/" for d in self.domains]

    async def open(self, visitor: tuple[str, int]) -> End:
        """A new stream to the client's local service for this visitor, through a work connection."""
        work = await self.session.take_work_conn()
        try:
            return await work.start(  # type: ignore[no-any-return]
                StartWork(
                    proxy=self.name,
                    visitor_host=visitor[0],
                    visitor_port=visitor[1],
                    server_host=self.front.host,
                    server_port=self.front.port,
                )
            )
        except BaseException:
            work.close()
            raise

    async def close(self) -> None:
        self._on_close(self)


class HttpProxyServer(_VhostProxy):
    """An http proxy: requests whose Host and path it claims, with its options applied by the server."""

    kind = "http"

    def __init__(
        self,
        name: str,
        session: WorkSource,
        domains: list[str],
        front: HostPort,
        on_close: Callable[[_VhostProxy], None],
        *,
        locations: list[str],
        http_user: str,
        http_password: str,
        host_header_rewrite: str,
        request_headers: Mapping[str, str],
        response_headers: Mapping[str, str],
        https_auto: bool,
    ) -> None:
        super().__init__(name, session, domains, front, on_close)
        self.locations = locations
        self.http_user = http_user or None
        self.http_password = http_password or None
        self.host_header_rewrite = host_header_rewrite or None
        self.request_headers = dict(request_headers)
        self.response_headers = dict(response_headers)
        self.https_auto = https_auto


class HttpsProxyServer(_VhostProxy):
    """An https proxy: TLS connections whose SNI it claims, relayed without being decrypted."""

    kind = "https"

    async def serve(self, conn: socket.socket, addr: tuple[str, int], server_name: str) -> None:
        visitor = format_sockaddr(addr)
        started = time.monotonic()
        try:
            end = await self.open((addr[0], addr[1]))
        except Exception as exc:
            conn.close()
            event(
                log,
                logging.WARNING,
                "proxy.work_failed",
                f"{self.name}: {visitor} ({server_name}): {exc or type(exc).__name__}",
                proxy=self.name,
                client=visitor,
                server_name=server_name,
                error=str(exc) or type(exc).__name__,
            )
            return
        event(
            log,
            logging.INFO,
            "proxy.open",
            f"{self.name}: visitor {visitor} for {server_name}",
            proxy=self.name,
            client=visitor,
            server_name=server_name,
        )
        stats = RelayStats(started=started)
        self.live.add(stats)
        try:
            await relay(SocketEnd(conn), end, stats)
        finally:
            self.live.discard(stats)
        log_relay_closed(
            log, "proxy.close", self.name, visitor, f"client {self.session.client_id}", stats, proxy=self.name
        )
