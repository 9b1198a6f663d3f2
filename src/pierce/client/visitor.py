"""Visitors: local ports that reach secret (stcp, sudp) proxies of other clients through the server.

``pierce visit`` runs one visitor; the ``[[visitors]]`` tables of client.toml run beside ``pierce client``.
Each tunnel is a TLS connection of its own to the server's control port, logged in as a user
(`Role.VISITOR`). Its `Visit` names the proxy; the visitor and the proxy's owner prove the secret to
each other through the server (`pierce.proxies.visitor_auth`: SRP the first time, a ticket after), so
the secret never crosses the wire and a forged service learns nothing. The owner checks ``allow_users``
against the visitor's authenticated user and logs a refusal; the visitor gets the owner's reason and
logs ``visitor.refused``.

- stcp: `StcpVisitor` accepts on ``bind_addr:bind_port``; every connection gets a tunnel of its own and
  is relayed by `pierce.relay.relay`, half-close included.
- sudp: `SudpVisitor` binds a UDP port. Every local application shares one tunnel, opened at the first
  datagram and again at the next datagram after it broke; replies go only to addresses that sent here.

`Visitors.start` first runs a ``check_only`` visit per visitor, so a wrong secret or name shows at start
and not at the first connection; ``pierce visit`` exits non-zero on it.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import socket
import time
from collections import OrderedDict
from typing import Any

from pierce.addr import HostPort, format_sockaddr
from pierce.client.revisit import revisit
from pierce.client.session import Dialer
from pierce.client.visit import NoDirectPath, open_visit
from pierce.config import (
    P2P_VISITORS,
    ClientConfig,
    StcpVisitorConfig,
    SudpVisitorConfig,
    VisitorConfig,
    XtcpVisitorConfig,
    XudpVisitorConfig,
)
from pierce.errors import PierceError
from pierce.listeners import TcpListener, bind_socket, tune_tcp
from pierce.logs import event, relay_summary
from pierce.p2p.direct import DirectPath
from pierce.p2p.handoff import hand_over, ready_timeout
from pierce.p2p.visitor import VisitorP2p
from pierce.protocol import (
    MAX_HOST_LENGTH,
    Refused,
    UdpPacket,
)
from pierce.proxies.sudp import DatagramTunnel
from pierce.proxies.visitor_auth import VisitorTickets
from pierce.relay import End, RelayStats, SocketEnd, relay
from pierce.snapshot import ConnectionPath, VisitorInfo
from pierce.transport import StreamChannel
from pierce.udpflow import PENDING_LIMIT, DatagramProtocol, DropCounter

log = logging.getLogger("pierce.visitor")

#: Seconds an sudp visitor waits after a failed tunnel before it tries again.
SUDP_RETRY_DELAY = 1.0
#: Local applications an sudp visitor remembers as destinations for replies.
MAX_APPS = 4096

#: Visits through the server one visitor has in its handshake at once; its other new connections wait
#: their turn. The server resets connections beyond its cap of those waiting to log in
#: (``max_pending_logins``, 256 in all and 16 per address by default): a burst of a thousand
#: connections to a visitor must not become a burst of a thousand handshakes.
MAX_PENDING_VISITS = 8

EXIT_OK = 0
EXIT_REFUSED = 1


def log_failure(config: VisitorConfig, exc: PierceError, level: int = logging.WARNING) -> None:
    """``visitor.refused`` (with the owner's or server's reason) or ``visitor.failed``."""
    if isinstance(exc, Refused):
        event(
            log,
            level,
            "visitor.refused",
            f"visitor {config.name}: visit to proxy {config.server_name!r} refused: {exc.reason}",
            visitor_name=config.name,
            proxy=config.server_name,
            code=exc.code.value,
            reason=exc.reason,
        )
    else:
        event(
            log,
            level,
            "visitor.failed",
            f"visitor {config.name} (proxy {config.server_name!r}): {exc}",
            visitor_name=config.name,
            proxy=config.server_name,
            error=str(exc),
        )


class StcpVisitor:
    """A local TCP port; each connection to it reaches the secret proxy through a tunnel of its own."""

    def __init__(self, config: StcpVisitorConfig, dialer: Dialer, tickets: VisitorTickets) -> None:
        self.config = config
        self.dialer = dialer
        self.tickets = tickets
        self.listener: TcpListener | None = None
        #: The proxy accepted this visitor before (a connection then waits while its owner is away).
        self.known = False
        #: Visits in their handshake (`MAX_PENDING_VISITS`).
        self.handshakes = asyncio.Semaphore(MAX_PENDING_VISITS)
        #: The direct path manager of an xtcp visitor.
        self.p2p = VisitorP2p(config, dialer, tickets) if isinstance(config, XtcpVisitorConfig) else None

    @property
    def address(self) -> str:
        return self.listener.address if self.listener is not None else ""

    async def start(self) -> None:
        cfg = self.config
        self.listener = TcpListener.open(
            HostPort(cfg.bind_addr, cfg.bind_port), self._accepted, name=f"visitor {cfg.name}"
        )
        _log_listening(cfg, self.listener.address, self.listener.port)
        if self.p2p is not None:
            self.p2p.ensure(now=True)  # a direct path is likely up before the first connection

    async def _accepted(self, conn: socket.socket, addr: Any) -> None:
        cfg = self.config
        app = format_sockaddr(addr)
        started = time.monotonic()
        try:
            end, path = await self._open(cfg, started)
        except PierceError as exc:
            conn.close()
            log_failure(cfg, exc)
            return
        except BaseException:
            conn.close()
            raise
        tune_tcp(conn)
        event(
            log,
            logging.INFO,
            "visitor.open",
            f"visitor {cfg.name}: {app} -> proxy {cfg.server_name} ({path})",
            visitor_name=cfg.name,
            proxy=cfg.server_name,
            app=app,
            conn_path=path,
        )
        stats = await relay(SocketEnd(conn), end, RelayStats(started=started))
        text, fields = relay_summary(stats)
        event(
            log,
            logging.INFO,
            "visitor.close",
            f"visitor {cfg.name}: {app} -> proxy {cfg.server_name} {text}",
            visitor_name=cfg.name,
            proxy=cfg.server_name,
            app=app,
            **fields,
        )

    async def _open(self, cfg: StcpVisitorConfig, started: float) -> tuple[End, str]:
        """A tunnel for one connection (that came at ``started``), best first: a ready direct TCP
        connection, a stream of the direct UDP path, else the relay (tried again while the owner is
        away: `pierce.client.revisit`)."""
        if self.p2p is not None:
            pooled = await _take_tcp(self.p2p)
            if pooled is not None:
                return pooled
        direct = await direct_for(cfg, self.p2p)
        if direct is None and self.p2p is not None:  # fallback = false may have waited for a TCP one
            pooled = await _take_tcp(self.p2p)
            if pooled is not None:
                return pooled
        if direct is not None and self.p2p is not None:
            try:
                stream = await _open_stream(self.p2p, direct)
            except (PierceError, OSError) as exc:
                stream = None
                self.p2p.path_dead(direct, str(exc))
            if stream is not None:
                return stream, direct.path.value
            if not getattr(cfg, "fallback", True):
                raise NoDirectPath(f"the direct path to {cfg.server_name!r} stopped answering")
        return await _via_server(self, cfg, started)

    async def close(self) -> None:
        if self.p2p is not None:
            self.p2p.close()
        if self.listener is not None:
            await self.listener.close()


class SudpVisitor:
    """A local UDP port whose datagrams reach the secret proxy; one tunnel carries every application's."""

    def __init__(self, config: SudpVisitorConfig, dialer: Dialer, tickets: VisitorTickets) -> None:
        self.config = config
        self.dialer = dialer
        self.tickets = tickets
        self.address = ""
        self.apps: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._transport: asyncio.DatagramTransport | None = None
        self._tunnel: DatagramTunnel | None = None
        self._tunnel_path = RELAY
        self._task: asyncio.Task[None] | None = None
        self._pending: list[tuple[tuple[str, int], bytes]] = []
        self._retry_at = 0.0
        self._dropped = DropCounter(log, "udp.dropped", f"visitor {config.name}", visitor_name=config.name)
        #: The proxy accepted this visitor before (a new tunnel then waits while its owner is away).
        self.known = False
        #: Visits in their handshake (`MAX_PENDING_VISITS`).
        self.handshakes = asyncio.Semaphore(MAX_PENDING_VISITS)
        #: The direct path manager of an xudp visitor.
        self.p2p = VisitorP2p(config, dialer, tickets) if isinstance(config, XudpVisitorConfig) else None
        if self.p2p is not None:
            self.p2p.on_direct = self._direct_up

    async def start(self) -> None:
        cfg = self.config
        sock = bind_socket(HostPort(cfg.bind_addr, cfg.bind_port), socket.SOCK_DGRAM)
        try:
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: DatagramProtocol(self.from_app, log, f"visitor {self.config.name}"), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        name = sock.getsockname()
        self.address = format_sockaddr(name)
        _log_listening(cfg, self.address, int(name[1]))
        if self.p2p is not None:
            self.p2p.ensure(now=True)

    def _direct_up(self) -> None:
        """A direct path came up: a tunnel through the relay ends, the next datagram opens one on it."""
        if self._tunnel is not None and self._tunnel_path == RELAY:
            self._tunnel.close()

    def from_app(self, data: bytes, addr: Any) -> None:
        app = (str(addr[0]), int(addr[1]))
        if len(app[0]) > MAX_HOST_LENGTH:
            return
        if app in self.apps:
            self.apps.move_to_end(app)
        else:
            self.apps[app] = None
            if len(self.apps) > MAX_APPS:
                self.apps.popitem(last=False)
        if self._tunnel is not None:
            self._tunnel.send(app[0], app[1], data)
            return
        if self._task is None and time.monotonic() < self._retry_at:
            self._dropped.drop("the last tunnel failed; waiting before the next try")
            return
        if len(self._pending) >= PENDING_LIMIT:
            self._dropped.drop("tunnel still opening")
            return
        self._pending.append((app, data))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_tunnel())

    def to_app(self, packet: UdpPacket) -> None:
        app = (packet.peer_host, packet.peer_port)
        if app not in self.apps:
            self._dropped.drop("reply to an address that never sent here")
            return
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(packet.data, app)

    async def _run_tunnel(self) -> None:
        cfg = self.config
        try:
            try:
                end, path = await self._open(cfg, time.monotonic())
            except PierceError as exc:
                log_failure(cfg, exc)
                self._retry_at = time.monotonic() + SUDP_RETRY_DELAY
                self._pending.clear()
                return
            self._tunnel_path = path
            tunnel = DatagramTunnel(end, cfg.server_name, self.to_app, self._dropped)
            self._tunnel = tunnel
            pending, self._pending = self._pending, []
            for app, data in pending:
                tunnel.send(app[0], app[1], data)
            event(
                log,
                logging.INFO,
                "visitor.open",
                f"visitor {cfg.name}: datagram tunnel to proxy {cfg.server_name} open ({path})",
                visitor_name=cfg.name,
                proxy=cfg.server_name,
                conn_path=path,
            )
            error = ""
            try:
                await tunnel.run()
            except (PierceError, OSError) as exc:
                error = str(exc) or type(exc).__name__
            event(
                log,
                logging.INFO,
                "visitor.close",
                f"visitor {cfg.name}: datagram tunnel to proxy {cfg.server_name} closed"
                + (f" ({error})" if error else ""),
                visitor_name=cfg.name,
                proxy=cfg.server_name,
                up_packets=tunnel.sent_packets,
                up_bytes=tunnel.sent_bytes,
                down_packets=tunnel.received_packets,
                down_bytes=tunnel.received_bytes,
                **({"error": error} if error else {}),
            )
        finally:
            self._tunnel = None
            self._task = None

    async def _open(self, cfg: SudpVisitorConfig, started: float) -> tuple[End, str]:
        direct = await direct_for(cfg, self.p2p)
        if direct is not None and self.p2p is not None:
            try:
                return await self.p2p.open_datagrams(direct), direct.path.value
            except (PierceError, OSError) as exc:
                if not getattr(cfg, "fallback", True):
                    raise NoDirectPath(f"the direct path to {cfg.server_name!r} failed: {exc}") from exc
        return await _via_server(self, cfg, started)

    async def close(self) -> None:
        if self.p2p is not None:
            self.p2p.close()
        if self._transport is not None:
            self._transport.close()
        if self._tunnel is not None:
            self._tunnel.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


Visitor = StcpVisitor | SudpVisitor


async def _via_server(
    visitor: Visitor, cfg: StcpVisitorConfig | SudpVisitorConfig, started: float
) -> tuple[End, str]:
    """A visit through the server, tried again while the owner is away (`revisit`)."""

    async def handshake() -> StreamChannel:
        async with visitor.handshakes:
            return await open_visit(visitor.dialer, cfg, visitor.tickets)

    channel = await revisit(
        handshake,
        known=visitor.known,
        since=started,
        name=cfg.name,
        proxy=cfg.server_name,
    )
    visitor.known = True
    return channel.into_end(), RELAY


RELAY = ConnectionPath.RELAY.value


async def _take_tcp(p2p: VisitorP2p) -> tuple[End, str] | None:
    """A ready direct TCP connection that answered the handoff (None when there is none). One that
    does not answer means the path died: the others are dropped too and new ones are made."""
    pooled = p2p.take_tcp()
    if pooled is None:
        return None
    end, kind = pooled
    rtt = await hand_over(end, ready_timeout(p2p.tcp_rtt_ms / 1000))
    if rtt is not None:
        p2p.tcp_rtt_ms = rtt * 1000
        return end, kind.value
    p2p.tcp_dead("a ready direct TCP connection did not answer")
    return None


async def _open_stream(p2p: VisitorP2p, direct: DirectPath) -> End | None:
    """A QUIC stream that answered the handoff (None, and the path closed, when it did not)."""
    end = await direct.quic.open_stream()
    quic = direct.quic
    if await hand_over(end, ready_timeout(quic.rtt), progress=lambda: quic.datagrams_received) is not None:
        return end
    p2p.path_dead(direct, "a new stream was not answered")
    return None


#: Seconds beyond the punch budget that a strict start waits for the first attempt (the rendezvous and
#: the QUIC handshake).
FIRST_ATTEMPT_SLACK = 10.0


async def direct_for(
    cfg: VisitorConfig, p2p: VisitorP2p | None, *, wait: float | None = None
) -> DirectPath | None:
    """The direct path a new tunnel of a P2P visitor takes: the one that is up, else none at once (with
    ``fallback``), else (``fallback = false``) the first that comes up within ``fallback_timeout_ms``
    (or ``wait`` seconds); NoDirectPath when there is none then."""
    if p2p is None or not isinstance(cfg, P2P_VISITORS):
        return None
    direct = p2p.usable()
    if direct is not None or (cfg.fallback and wait is None):
        return direct
    timeout = wait if wait is not None else cfg.fallback_timeout_ms / 1000
    direct = await p2p.wait_direct(timeout)
    if direct is None and not p2p.tcp_ready():
        why = p2p.status.reason or "no attempt finished in time"
        raise NoDirectPath(
            f"no direct path to proxy {cfg.server_name!r} within {timeout * 1000:.0f} ms ({why}), "
            "and fallback = false forbids the relay"
        )
    return direct


def _log_listening(config: VisitorConfig, address: str, port: int) -> None:
    kind = config.secret_kind.value
    event(
        log,
        logging.INFO,
        "visitor.listening",
        f"visitor {config.name}: {kind} on {address} reaches proxy {config.server_name}",
        visitor_name=config.name,
        proxy=config.server_name,
        type=kind,
        listen=address,
        port=port,
    )


class Visitors:
    """Every visitor of one config, sharing one dialer; ``close()`` frees their ports and tunnels."""

    def __init__(self, config: ClientConfig, client_id: str) -> None:
        self.dialer = Dialer(config, client_id)
        #: Tickets from each service's last exchange, so later visits skip the extra round trip.
        self.tickets = VisitorTickets()
        self.visitors: list[Visitor] = [
            StcpVisitor(v, self.dialer, self.tickets)
            if isinstance(v, StcpVisitorConfig)
            else SudpVisitor(v, self.dialer, self.tickets)
            for v in config.visitors
        ]

    async def check(self, visitor: Visitor) -> None:
        """A ``check_only`` visit: raises as `open_visit` does when this visitor would be turned away."""
        channel = await open_visit(self.dialer, visitor.config, self.tickets, check_only=True)
        channel.close()
        visitor.known = True
        cfg = visitor.config
        event(
            log,
            logging.INFO,
            "visitor.checked",
            f"visitor {cfg.name}: proxy {cfg.server_name} accepts this visitor",
            visitor_name=cfg.name,
            proxy=cfg.server_name,
        )

    async def start(self, *, strict: bool) -> None:
        """Check every visitor, then open its local port.

        ``strict``: a failed check raises (and no port is opened); otherwise it is logged and the port
        opens anyway, since the proxy's owner may only log in later. Failures are logged either way.
        A strict P2P visitor with ``fallback = false`` also waits for its first direct path and raises
        NoDirectPath (naming why) when none comes up: it could serve no connection.
        """
        for visitor in self.visitors:
            try:
                await self.check(visitor)
            except PierceError as exc:
                log_failure(visitor.config, exc, logging.ERROR)
                if strict:
                    raise
        for visitor in self.visitors:
            try:
                await visitor.start()
                cfg = visitor.config
                if strict and visitor.p2p is not None and isinstance(cfg, P2P_VISITORS) and not cfg.fallback:
                    await direct_for(
                        cfg, visitor.p2p, wait=visitor.p2p.settings.budget_s + FIRST_ATTEMPT_SLACK
                    )
            except PierceError as exc:  # e.g. the port is taken
                log_failure(visitor.config, exc, logging.ERROR)
                if strict:
                    raise

    def info(self) -> list[VisitorInfo]:
        """Each visitor as the snapshot shows it."""
        found = []
        for visitor in self.visitors:
            cfg = visitor.config
            p2p = visitor.p2p.status if visitor.p2p is not None else None
            found.append(
                VisitorInfo(
                    name=cfg.name,
                    type=cfg.secret_kind.value,
                    proxy=cfg.server_name,
                    listen=visitor.address,
                    path=visitor.p2p.path_now() if visitor.p2p is not None else ConnectionPath.RELAY,
                    rtt_ms=round(visitor.p2p.rtt_ms(), 2) if visitor.p2p is not None else 0.0,
                    reason=visitor.p2p.why_relay() if visitor.p2p is not None else "",
                    p2p_attempts=p2p.attempts if p2p is not None else 0,
                    direct_since=p2p.direct_since if p2p is not None else None,
                )
            )
        return found

    async def close(self) -> None:
        for visitor in self.visitors:
            await visitor.close()


def default_visitor_id() -> str:
    return platform.node() or "visitor"


async def run_visit(config: ClientConfig) -> int:
    """``pierce visit``: check the visitors, open their ports and serve until SIGINT/SIGTERM.

    Returns `EXIT_REFUSED` at once (after logging why) when a check fails.
    """
    from pierce.runtime import wait_for_stop_signal
    from pierce.statedir import prepare_state_dir, state_dir_for

    if not (config.server_fingerprint or config.trusted_ca_file):  # pinned on first use: state is kept
        prepare_state_dir(state_dir_for("client", config.state_dir), log)
    visitors = Visitors(config, config.client_id or default_visitor_id())
    try:
        try:
            await visitors.start(strict=True)
        except PierceError:
            return EXIT_REFUSED
        sig = await wait_for_stop_signal()
        log.info("stopping on %s", sig.name)
        return EXIT_OK
    finally:
        await visitors.close()
