"""TCP proxies: a public port on the server whose connections reach a local service of the client.

Server side: `TcpProxyServer` accepts visitors and hands each one to a work connection of the owning
client (`StartWork`), then relays. Client side: `serve_tcp_work` dials the local service for a work
connection that received `StartWork`, and relays. Both use the one relay in `pierce.relay`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any, Protocol

from pierce.addr import HostPort, format_sockaddr
from pierce.dial import TargetUnreachable, connect_tcp
from pierce.listeners import TcpListener, set_nodelay
from pierce.logs import event, log_relay_closed
from pierce.protocol import StartWork
from pierce.relay import End, RelayStats, SocketEnd, relay
from pierce.transport import TlsEnd

log = logging.getLogger("pierce.proxy")

#: How long the client waits for its local service to accept.
LOCAL_CONNECT_TIMEOUT = 10.0


class WorkSource(Protocol):
    """What a server-side proxy needs from its client session."""

    client_id: str

    async def take_work_conn(self) -> Any: ...


class TcpProxyServer:
    """The public listener of one TCP proxy on the server."""

    def __init__(self, name: str, session: WorkSource, listener_addr: HostPort) -> None:
        self.name = name
        self.session = session
        self.listener = TcpListener.open(listener_addr, self._visitor, name=f"proxy {name}")
        self.port = self.listener.port
        #: Relays in progress; their counters move while they run.
        self.live: set[RelayStats] = set()
        self._closed_in = 0
        self._closed_out = 0

    @property
    def connections(self) -> int:
        return len(self.live)

    @property
    def bytes_in(self) -> int:
        """Visitor -> client bytes so far, live connections included."""
        return self._closed_in + sum(s.a_to_b for s in self.live)

    @property
    def bytes_out(self) -> int:
        return self._closed_out + sum(s.b_to_a for s in self.live)

    async def _visitor(self, conn: socket.socket, addr: Any) -> None:
        visitor = format_sockaddr(addr)
        started = time.monotonic()
        try:
            work = await self.session.take_work_conn()
        except TimeoutError:
            conn.close()
            event(
                log,
                logging.WARNING,
                "proxy.no_work_conn",
                f"{self.name}: {visitor}: no work connection from client {self.session.client_id} in time",
                proxy=self.name,
                client=visitor,
            )
            return
        set_nodelay(conn)
        try:
            here = conn.getsockname()
            end = await work.start(
                StartWork(
                    proxy=self.name,
                    visitor_host=addr[0],
                    visitor_port=addr[1],
                    server_host=here[0],
                    server_port=here[1],
                )
            )
        except Exception as exc:
            conn.close()
            work.close()
            event(
                log,
                logging.WARNING,
                "proxy.work_failed",
                f"{self.name}: {visitor}: {exc}",
                proxy=self.name,
                client=visitor,
                error=str(exc),
            )
            return
        event(
            log,
            logging.INFO,
            "proxy.open",
            f"{self.name}: visitor {visitor}",
            proxy=self.name,
            client=visitor,
            work_conn=work.serial,
        )
        stats = RelayStats(started=started)
        self.live.add(stats)
        try:
            await relay(SocketEnd(conn), end, stats)
        finally:
            self.live.discard(stats)
            self._closed_in += stats.a_to_b
            self._closed_out += stats.b_to_a
        log_relay_closed(
            log, "proxy.close", self.name, visitor, f"client {self.session.client_id}", stats, proxy=self.name
        )

    async def close(self) -> None:
        await self.listener.close()


async def serve_tcp_work(
    name: str,
    local: HostPort,
    start: StartWork,
    tunnel: End,
    *,
    header: bytes = b"",
    tls: ssl.SSLContext | None = None,
) -> None:
    """Client side: connect the local service for one visitor and relay it with the tunnel end.

    ``header`` (a PROXY protocol header) goes to the local service before the visitor's bytes. With
    ``tls`` the visitor's TLS ends here (the https2http plugin) and the local service gets plain bytes.
    """
    visitor = format_sockaddr((start.visitor_host, start.visitor_port))
    if tls is not None:
        tls_end = TlsEnd(tunnel, tls, server_side=True)
        try:
            await tls_end.handshake(LOCAL_CONNECT_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            tunnel.close()
            event(
                log,
                logging.INFO,
                "proxy.tls_failed",
                f"{name}: visitor {visitor}: TLS handshake failed: {exc or type(exc).__name__}",
                proxy=name,
                client=visitor,
                error=str(exc) or type(exc).__name__,
            )
            return
        tunnel = tls_end
    try:
        local_end = SocketEnd(await connect_tcp(local, LOCAL_CONNECT_TIMEOUT))
        if header:
            try:
                await local_end.write(header)
            except OSError as exc:
                local_end.close()
                raise TargetUnreachable(f"closed before the PROXY protocol header went out: {exc}") from exc
    except TargetUnreachable as exc:
        tunnel.close()
        event(
            log,
            logging.WARNING,
            "proxy.local_failed",
            f"{name}: visitor {visitor}: local service {local} unreachable: {exc}",
            proxy=name,
            client=visitor,
            target=str(local),
            error=str(exc),
        )
        return
    except asyncio.CancelledError:
        tunnel.close()
        raise
    event(
        log,
        logging.INFO,
        "proxy.open",
        f"{name}: visitor {visitor} -> {local}",
        proxy=name,
        client=visitor,
        target=str(local),
    )
    stats = await relay(tunnel, local_end)
    log_relay_closed(log, "proxy.close", name, visitor, str(local), stats, proxy=name)
