"""The visitor's side of P2P: keep a direct path to one xtcp/xudp service when the NATs allow it.

`VisitorP2p` runs attempts in the background and never holds a connection back for one: a new
connection takes the direct path when it is up, else the relay through the server at once (or, with
``fallback = false``, waits up to ``fallback_timeout_ms`` for a direct path and is refused without one).
An attempt: a P2P visit (`pierce.client.visitor.accepted_visit` with ``p2p``), a sealed offer with this
side's candidates, the owner's offer in `P2pStart`, a punch as the controlling agent, QUIC to the
owner's pinned certificate, and a `P2pResult` for the server's counters.

When the direct path dies, new connections go through the relay at once and a new attempt starts. A
failed attempt is retried after `RETRY_FIRST` seconds, doubling to `RETRY_MAX`; when both NATs are
symmetric (no direct path is possible) the retry waits `RETRY_MAX` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from pierce.addr import HostPort
from pierce.client.visit import accepted_visit
from pierce.errors import PierceError
from pierce.logs import event
from pierce.nat.punch import FailReason, PunchSettings, Role
from pierce.p2p.datagrams import DatagramEnd
from pierce.p2p.direct import (
    HARD,
    AfterLock,
    DirectPath,
    NoHole,
    behaviour,
    path_settings,
    punch_hole,
    punch_settings,
)
from pierce.p2p.gather import from_wire, gather_udp, to_wire
from pierce.p2p.keepalive import load as load_lifetimes
from pierce.p2p.keepalive import tuned
from pierce.p2p.settings import PathSettings
from pierce.p2p.tcp_direct import connect_direct, secure_visitor
from pierce.p2p.tcp_pool import POOL_IDLE_MAX, POOL_SIZE, reserved_port, tcp_candidates
from pierce.protocol import Error, P2pOffer, P2pResult, P2pStart, Refused, UnexpectedMessage
from pierce.protocol.auth import p2p_key
from pierce.protocol.messages import SecretKind
from pierce.protocol.p2p import BadOffer, Offer, open_offer, seal
from pierce.relay import End
from pierce.snapshot import ConnectionPath
from pierce.statedir import state_dir_for
from pierce.transport import MessageChannel

if TYPE_CHECKING:
    from pierce.client.session import Dialer
    from pierce.config import XtcpVisitorConfig, XudpVisitorConfig
    from pierce.proxies.visitor_auth import VisitorTickets

log = logging.getLogger("pierce.p2p")

RETRY_FIRST = 5.0
RETRY_MAX = 300.0
#: Seconds for the owner's offer after ours (the server gives the owner 10 s to answer).
START_TIMEOUT = 15.0
QUIC_TIMEOUT = 5.0
#: Seconds before the owner's idle limit that a pooled TCP connection is dropped unused.
POOL_MARGIN = 10.0


class P2pStatus(msgspec.Struct):
    """What the visitor's snapshot says about its direct path."""

    path: ConnectionPath = ConnectionPath.RELAY
    rtt_ms: float = 0.0
    #: Why the visitor is on the relay (the last attempt's failure), "" when direct or untried.
    reason: str = ""
    attempts: int = 0
    direct_since: float | None = None
    #: Milliseconds the last successful punch took.
    punch_ms: int = 0
    history: list[str] = msgspec.field(default_factory=list)


class VisitorP2p:
    def __init__(
        self,
        config: XtcpVisitorConfig | XudpVisitorConfig,
        dialer: Dialer,
        tickets: VisitorTickets,
        settings: PunchSettings | None = None,
        path: PathSettings | None = None,
    ) -> None:
        self.config = config
        self.dialer = dialer
        self.tickets = tickets
        #: ``[p2p]`` of the visitor's client config, unless given.
        self.settings = settings or punch_settings(dialer.config.p2p)
        self.path_settings = path or path_settings(dialer.config.p2p)
        #: Mapping lifetimes `pierce nat --lifetime` measured, by public address (`pierce.p2p.keepalive`).
        self.lifetimes = load_lifetimes(state_dir_for("client", dialer.config.state_dir))
        self.status = P2pStatus()
        self.direct: DirectPath | None = None
        self._attempt: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        #: Called when a direct path comes up (an xudp visitor moves its datagram tunnel over).
        self.on_direct: Callable[[], None] | None = None
        #: An xudp visitor's datagram end on the direct path (DATAGRAM frames arrive there).
        self.datagrams: DatagramEnd | None = None
        #: xtcp: direct TCP connections kept ready (end, path kind, when made), and their refill.
        self.tcp = config.secret_kind is SecretKind.XTCP and dialer.config.p2p.direct_tcp
        self._pool: deque[tuple[End, ConnectionPath, float]] = deque()
        self._tcp_task: asyncio.Task[None] | None = None
        self._tcp_retry_at = 0.0
        self._tcp_delay = RETRY_FIRST
        #: The kind of the last direct TCP connection made ("direct lan" or "direct tcp"), and why the
        #: last attempt failed.
        self.tcp_path: ConnectionPath | None = None
        self.tcp_reason = ""
        #: Whether either NAT maps per destination (learnt by the UDP attempt): then no TCP reflexive
        #: address is the one the peer must reach, and no direct TCP connection is tried.
        self.symmetric = False
        #: The direct TCP path's round trip as the last handoff measured it (0: none yet).
        self.tcp_rtt_ms = 0.0

    def rtt_ms(self) -> float:
        """The RTT of the path a new connection would take now (0 on the relay): the direct TCP
        path's from its last handoff (the UDP path's until one was measured), else the QUIC path's."""
        direct = self.direct
        quic = direct.rtt_ms if direct is not None and direct.alive else 0.0
        if self._pool and self.tcp_path is not None:
            return self.tcp_rtt_ms or quic
        return quic

    def usable(self) -> DirectPath | None:
        """The direct path if it is up (and an attempt started in the background when it is not)."""
        if self.direct is not None and self.direct.alive:
            return self.direct
        self.ensure()
        return None

    async def wait_direct(self, timeout: float) -> DirectPath | None:
        """The direct path, waiting up to ``timeout`` for an attempt (``fallback = false``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.usable()
            if found is not None or self._pool:
                return found
            if self._attempt is None and self._tcp_task is None:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return None

    def ensure(self, *, now: bool = False) -> None:
        """Start an attempt unless one runs or the retry delay has not passed."""
        if self._closed or self._attempt is not None:
            return
        if not now and time.monotonic() < self._retry_at:
            return
        self._attempt = asyncio.get_running_loop().create_task(self._run(), name=f"p2p {self.config.name}")

    async def _run(self) -> None:
        cfg = self.config
        self.status.attempts += 1
        started = time.monotonic()
        try:
            direct = await self._connect()
        except (PierceError, OSError, TimeoutError, BadOffer) as exc:
            reason = str(exc) or type(exc).__name__
            self._failed(reason, both_symmetric=FailReason.BOTH_SYMMETRIC.value in reason)
            self._fill_tcp()
            return
        finally:
            self._attempt = None
            self._changed.set()
        self.direct = direct
        self._retry_delay = RETRY_FIRST
        self.status = P2pStatus(
            path=direct.path,
            rtt_ms=direct.rtt_ms,
            attempts=self.status.attempts,
            direct_since=time.time(),
            punch_ms=round(direct.punch_s * 1000),
        )
        event(
            log,
            logging.INFO,
            "p2p.direct",
            f"visitor {cfg.name}: direct path to proxy {cfg.server_name} ({direct.path.value}) after "
            f"{(time.monotonic() - started) * 1000:.0f} ms, rtt {direct.rtt_ms:.1f} ms",
            visitor_name=cfg.name,
            proxy=cfg.server_name,
            conn_path=direct.path.value,
            proto="udp",
            elapsed_ms=round((time.monotonic() - started) * 1000),
            rtt_ms=round(direct.rtt_ms, 1),
            keepalive_s=direct.quic.keepalive_s,
        )
        self._watcher = asyncio.get_running_loop().create_task(self._watch(direct))
        if self.on_direct is not None:
            self.on_direct()
        self._fill_tcp()  # after the UDP outcome is told: the TCP one follows it

    async def _watch(self, direct: DirectPath) -> None:
        await direct.quic.wait_closed()
        if self.direct is direct:
            self.direct = None
            self.status.path = ConnectionPath.RELAY
            self.status.reason = f"direct path closed: {direct.quic.reason}"
            event(
                log,
                logging.INFO,
                "p2p.closed",
                f"visitor {self.config.name}: direct path closed ({direct.quic.reason}); new connections "
                "go through the server while a new one is tried",
                visitor_name=self.config.name,
                proxy=self.config.server_name,
                reason=direct.quic.reason,
            )
            self._changed.set()
            self.ensure(now=True)

    def _failed(self, reason: str, *, both_symmetric: bool) -> None:
        self._retry_at = time.monotonic() + (RETRY_MAX if both_symmetric else self._retry_delay)
        self._retry_delay = min(RETRY_MAX, self._retry_delay * 2)
        self.status.path = ConnectionPath.RELAY
        self.status.reason = reason
        event(
            log,
            logging.INFO,
            "p2p.failed",
            f"visitor {self.config.name}: no direct path to proxy {self.config.server_name} ({reason}); "
            "connections go through the server",
            visitor_name=self.config.name,
            proxy=self.config.server_name,
            proto="udp",
            reason=reason,
        )

    async def _connect(self) -> DirectPath:
        from pierce.p2p.quic import QuicPath  # aioquic: loaded with the first attempt of a P2P visitor

        cfg = self.config
        visit = await accepted_visit(self.dialer, cfg, self.tickets, p2p=True)
        channel = visit.channel
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        kept = False
        result_sent = False
        try:
            sock.bind(("0.0.0.0", 0))
            key = p2p_key(visit.key, proxy=cfg.server_name, visit_id=visit.visit_id)
            stun = (self.dialer.server_ip(), visit.ready.stun_port) if visit.ready.stun_port else None
            gathered = await gather_udp(sock, stun)
            settings, path_settings = tuned(
                self.settings, self.path_settings, self.lifetimes, gathered.reflexive
            )
            data, tag = seal(
                Offer(
                    candidates=to_wire(gathered.candidates),
                    mapping=gathered.mapping.value if gathered.mapping else "",
                ),
                key,
                owner=False,
            )
            await channel.send(P2pOffer(offer=data, mac=tag))
            start, theirs = await _start(channel, key)
            self.symmetric = any(m in HARD for m in (gathered.mapping, behaviour(theirs.mapping)))
            try:
                hole = await punch_hole(
                    Role.CONTROLLING,
                    sock,
                    visit_id=visit.visit_id,
                    key=key,
                    local=gathered,
                    remote=theirs,
                    settings=settings,
                    stun_asked=stun is not None,
                    delay=start.delay_ms / 1000,
                )
            except NoHole as exc:
                await channel.send(P2pResult(path=ConnectionPath.RELAY.value, reason=str(exc)))
                result_sent = True
                raise
            sock, peer, after = hole.sock, hole.peer, hole.after
            try:
                quic = await QuicPath.connect(
                    sock,
                    peer,
                    fingerprint=theirs.fingerprint,
                    key=key,
                    timeout=QUIC_TIMEOUT,
                    on_other=after.on_other,
                    on_datagram=self._on_datagram,
                    settings=path_settings,
                )
            except BaseException:
                after.close()
                raise
            kind = hole.kind
            direct = DirectPath(quic, kind, hole.elapsed)
            asyncio.get_running_loop().create_task(_close_after(direct, after, sock))
            kept = True
            await channel.send(
                P2pResult(
                    path=kind.value,
                    elapsed_ms=round(hole.elapsed * 1000),
                    rtt_ms=round(direct.rtt_ms, 2),
                )
            )
            result_sent = True
            return direct
        except BaseException as exc:
            if not result_sent and channel.alive():
                with contextlib.suppress(PierceError, OSError):
                    await channel.send(P2pResult(path=ConnectionPath.RELAY.value, reason=str(exc)[:500]))
            raise
        finally:
            channel.close()
            if not kept:
                sock.close()

    # -- direct TCP connections --------------------------------------------------------------------

    def take_tcp(self) -> tuple[End, ConnectionPath] | None:
        """A ready direct TCP connection (the caller sends `GO` on it first), and a refill started."""
        found = None
        now = time.monotonic()
        while self._pool and found is None:
            end, kind, made = self._pool.popleft()
            if now - made < POOL_IDLE_MAX - POOL_MARGIN:
                found = (end, kind)
            else:
                end.close()  # the owner is about to give up on it
        self._fill_tcp()
        return found

    def path_dead(self, direct: DirectPath, why: str) -> None:
        """``direct`` stopped answering: close it (new connections take the relay) and punch again."""
        if self.direct is direct:
            self.status.reason = f"the direct path stopped answering ({why})"
        direct.quic.close_now(why)

    def tcp_dead(self, why: str) -> None:
        """A ready direct TCP connection did not answer: the others went the same way; make new ones."""
        while self._pool:
            self._pool.popleft()[0].close()
        self.tcp_reason = why
        self._tcp_retry_at = 0.0
        self._fill_tcp()

    def tcp_ready(self) -> bool:
        """Whether a direct TCP connection is ready to take."""
        return bool(self._pool)

    def path_now(self) -> ConnectionPath:
        """The path a new connection would take now: a ready direct TCP connection, the direct UDP
        path, or the relay."""
        if self._pool and self.tcp_path is not None:
            return self.tcp_path
        if self.direct is not None and self.direct.alive:
            return self.direct.path
        return ConnectionPath.RELAY

    def why_relay(self) -> str:
        """Why new connections would take the relay now ("" when a direct path is up)."""
        if self.path_now() is not ConnectionPath.RELAY:
            return ""
        reasons = [r for r in (self.status.reason, self.tcp_reason) if r]
        return "; ".join(dict.fromkeys(reasons))

    def _fill_tcp(self) -> None:
        if self.symmetric:
            if not self.tcp_reason and self.tcp:
                self.tcp_reason = (
                    "a symmetric NAT: no direct TCP connection (its TCP ports cannot be predicted)"
                )
                event(
                    log,
                    logging.INFO,
                    "p2p.failed",
                    f"visitor {self.config.name}: {self.tcp_reason}",
                    visitor_name=self.config.name,
                    proxy=self.config.server_name,
                    proto="tcp",
                    reason=self.tcp_reason,
                )
            return
        if not self.tcp or self._closed or self._tcp_task is not None or len(self._pool) >= POOL_SIZE:
            return
        if time.monotonic() < self._tcp_retry_at:
            return
        self._tcp_task = asyncio.get_running_loop().create_task(
            self._tcp_loop(), name=f"p2p tcp {self.config.name}"
        )

    async def _tcp_loop(self) -> None:
        cfg = self.config
        try:
            while not self._closed and len(self._pool) < POOL_SIZE:
                started = time.monotonic()
                try:
                    end, kind = await self._connect_tcp()
                except (PierceError, OSError, TimeoutError, BadOffer, ssl.SSLError) as exc:
                    self.tcp_reason = str(exc) or type(exc).__name__
                    self._tcp_retry_at = time.monotonic() + self._tcp_delay
                    self._tcp_delay = min(RETRY_MAX, self._tcp_delay * 2)
                    event(
                        log,
                        logging.INFO,
                        "p2p.failed",
                        f"visitor {cfg.name}: no direct TCP connection to proxy {cfg.server_name} "
                        f"({self.tcp_reason})",
                        visitor_name=cfg.name,
                        proxy=cfg.server_name,
                        proto="tcp",
                        reason=self.tcp_reason,
                    )
                    return
                first = self.tcp_path is None
                self.tcp_path, self.tcp_reason, self._tcp_delay = kind, "", RETRY_FIRST
                self._pool.append((end, kind, time.monotonic()))
                self._changed.set()
                if first:
                    event(
                        log,
                        logging.INFO,
                        "p2p.direct",
                        f"visitor {cfg.name}: direct TCP connection to proxy {cfg.server_name} "
                        f"({kind.value}) after {(time.monotonic() - started) * 1000:.0f} ms",
                        visitor_name=cfg.name,
                        proxy=cfg.server_name,
                        conn_path=kind.value,
                        proto="tcp",
                        elapsed_ms=round((time.monotonic() - started) * 1000),
                    )
        finally:
            self._tcp_task = None

    async def _connect_tcp(self) -> tuple[End, ConnectionPath]:
        """One direct TCP connection: a rendezvous asking for "tcp", the race, then TLS or proofs."""
        cfg = self.config
        visit = await accepted_visit(self.dialer, cfg, self.tickets, p2p=True)
        channel = visit.channel
        result = P2pResult(path=ConnectionPath.RELAY.value, reason="gave up")
        try:
            key = p2p_key(visit.key, proxy=cfg.server_name, visit_id=visit.visit_id)
            stun_port = visit.ready.stun_port
            loop = asyncio.get_running_loop()
            begun = loop.time()
            with reserved_port() as port:
                stun = HostPort(self.dialer.server_ip(), stun_port) if stun_port else None
                candidates = await tcp_candidates(port, stun)
                data, tag = seal(Offer(candidates=to_wire(candidates, "tcp"), want="tcp"), key, owner=False)
                await channel.send(P2pOffer(offer=data, mac=tag))
                start, theirs = await _start(channel, key)
                start_at = loop.time() + start.delay_ms / 1000
                sock, _, kind = await connect_direct(
                    "visitor",
                    port,
                    from_wire(theirs.candidates, "tcp"),
                    start_at=start_at,
                    deadline=start_at + self.settings.budget_s,
                    opening_ttl=self.settings.opening_ttl,
                )
            end = await secure_visitor(sock, theirs.fingerprint, key, encrypt=theirs.encrypt)
            path = ConnectionPath.DIRECT_LAN if kind == "lan" else ConnectionPath.DIRECT_TCP
            result = P2pResult(path=f"{path.value}", elapsed_ms=round((loop.time() - begun) * 1000))
            return end, path
        except BaseException as exc:
            result = P2pResult(path=ConnectionPath.RELAY.value, reason=(str(exc) or type(exc).__name__)[:500])
            raise
        finally:
            if channel.alive():
                with contextlib.suppress(PierceError, OSError):
                    await channel.send(result)
            channel.close()

    def _on_datagram(self, data: bytes) -> None:
        if self.datagrams is not None:
            self.datagrams.deliver(data)

    async def open_datagrams(self, direct: DirectPath) -> DatagramEnd:
        """The xudp tunnel's end on ``direct``: DATAGRAM frames, and a stream for the large ones."""
        end = DatagramEnd(direct.quic)
        self.datagrams = end
        await end.open()
        return end

    def close(self) -> None:
        self._closed = True
        if self._tcp_task is not None:
            self._tcp_task.cancel()
        while self._pool:
            self._pool.popleft()[0].close()
        if self._attempt is not None:
            self._attempt.cancel()
        if self.direct is not None:
            self.direct.close()


async def _start(channel: MessageChannel, key: bytes) -> tuple[P2pStart, Offer]:
    """The server's `P2pStart` and the owner's offer in it, opened (or the owner's refusal, raised)."""
    async with asyncio.timeout(START_TIMEOUT):
        start = await channel.recv()
    if isinstance(start, Error):
        raise Refused(start.code, start.reason)
    if not isinstance(start, P2pStart):
        raise UnexpectedMessage(start, "P2pStart")
    return start, open_offer(start.offer, start.mac, key, owner=True)


async def _close_after(direct: DirectPath, after: AfterLock, sock: socket.socket) -> None:
    await direct.quic.wait_closed()
    after.close()
    sock.close()
