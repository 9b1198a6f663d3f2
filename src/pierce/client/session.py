"""One logged-in session of the client: control channel, proxies, heartbeats, work-connection pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pierce.addr import HostPort
from pierce.config import ClientConfig
from pierce.dial import connect_tcp, open_stream
from pierce.errors import PierceError
from pierce.handshake import client_login, client_work_login, plain_binding, visitor_key, work_key
from pierce.known_hosts import KnownHosts, PinNotSaved
from pierce.logs import event
from pierce.mux import MuxChannel, MuxConnection
from pierce.protocol import (
    MAX_FRAME_SIZE,
    CloseProxy,
    DirectAddress,
    Error,
    ErrorCode,
    Feature,
    NewProxy,
    P2pAnswer,
    P2pRequest,
    P2pStart,
    Ping,
    Pong,
    ProtocolError,
    ProxyReady,
    ProxyRefused,
    Refused,
    ReqWorkConn,
    Role,
    StartWork,
    UdpPacket,
    VisitorAnswer,
    VisitorCheck,
    WorkReady,
    certificate_binding,
)
from pierce.protocol.heartbeat import Due, Heartbeat
from pierce.protocol.messages import MAX_IDLE_WORK_CONNS
from pierce.proxies.http import HttpProxyConfig
from pierce.proxies.https import HttpsProxyConfig
from pierce.proxies.registry import ProxyConfig, client_spec, encode_spec, work_handler
from pierce.proxies.secret import answer_visitor, check_visitor
from pierce.proxies.udp import UdpProxies, UdpProxyConfig
from pierce.snapshot import ProxyState
from pierce.statedir import state_dir_for
from pierce.tls import certificate_fingerprint, check_peer, client_context
from pierce.transport import ConnectionClosed, MessageChannel, SocketChannel, StreamChannel

if TYPE_CHECKING:
    from pierce.inspect.inspector import Inspector
    from pierce.p2p.owner import OwnerP2p
    from pierce.proxies.visitor_auth import OwnerExchanges

log = logging.getLogger("pierce.client")

DIAL_TIMEOUT = 10.0
#: Seconds a multiplexed connection has to answer a ping once the server went silent (a round trip).
MUX_PROBE_TIMEOUT = 5.0
#: After a work connection could not be opened, the pool is filled again this many seconds later (plus or
#: minus 20%), the wait doubling up to `REFILL_MAX_S` while dials keep failing.
REFILL_FIRST_S = 1.0
REFILL_MAX_S = 20.0
#: A proxy the server could not open for a reason of its own (`ErrorCode.INTERNAL`: out of descriptors,
#: ...) is asked for again this many seconds later, the wait doubling up to `REASK_MAX_S`.
REASK_FIRST_S = 1.0
REASK_MAX_S = 60.0
#: The name TLS is checked against when a CA file is configured (generated certificates carry it).
SERVER_NAME = "pierce"


class ServerUnreachable(PierceError):
    """Could not reach or log in to the server (retried with backoff)."""


def features_of(config: ClientConfig) -> frozenset[str]:
    transport = config.transport
    if not transport.encrypt_data:
        return frozenset()
    return frozenset({Feature.ENCRYPT_DATA, Feature.MUX} if transport.tcp_mux else {Feature.ENCRYPT_DATA})


class Dialer:
    """Opens authenticated connections to the server (control and work)."""

    def __init__(self, config: ClientConfig, client_id: str) -> None:
        self.config = config
        self.client_id = client_id
        self.server = HostPort(config.server_addr, config.server_port)
        #: The visitor session from the last visitor login: its run id and visitor key.
        self._visitor_session: tuple[str, bytes] | None = None
        #: What the server offered at the last control login.
        self.server_features: frozenset[str] = frozenset()
        #: The server's address as last connected (its STUN answers there).
        self._server_ip = ""
        self._ssl = client_context(
            fingerprint=config.server_fingerprint or None,
            ca_file=Path(config.trusted_ca_file) if config.trusted_ca_file else None,
        )
        #: The name sent in the TLS ClientHello: the one the certificate must carry when a CA vouches for
        #: it; none otherwise ("": nothing checks it then, and no IDNA codec loads for a constant).
        self._sni = SERVER_NAME if self._ssl.check_hostname else ""
        #: Trust on first use, unless the config pins the certificate or its CA.
        self.known_hosts: KnownHosts | None = None
        if not (config.server_fingerprint or config.trusted_ca_file):
            self.known_hosts = KnownHosts.in_state_dir(state_dir_for("client", config.state_dir))

    async def _tls(self) -> tuple[StreamChannel, bytes]:
        sock = await connect_tcp(self.server, DIAL_TIMEOUT)
        self._server_ip = str(sock.getpeername()[0])
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):  # `open_stream` closes the socket when it fails
                reader, writer = await open_stream(
                    sock, ssl=self._ssl, server_hostname=self._sni, limit=2**20
                )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise ServerUnreachable(f"TLS handshake with {self.server} failed: {exc}") from exc
        channel = StreamChannel(reader, writer)
        try:
            der = check_peer(
                writer.get_extra_info("ssl_object"), fingerprint=self.config.server_fingerprint or None
            )
            if self.known_hosts is not None:
                self._check_known(der)
        except PierceError:
            channel.close()
            raise
        return channel, certificate_binding(der)

    def server_ip(self) -> str:
        """The server's IP address as last connected (its name, before the first connection)."""
        return self._server_ip or self.server.host

    def _check_known(self, der: bytes) -> None:
        """Trust on first use: record the certificate of a new server, refuse a changed one."""
        assert self.known_hosts is not None
        try:
            pinned = self.known_hosts.check(self.server, der)
        except PinNotSaved as exc:
            # As ssh does: a first use is accepted even when it cannot be remembered (a full disk must
            # not take the tunnel down); it stays a first use, and is said so, until it can be.
            fingerprint = certificate_fingerprint(der)
            event(
                log,
                logging.WARNING,
                "tls.pin_unsaved",
                f"first connection to {self.server}: its certificate {fingerprint} is accepted but "
                f"cannot be recorded ({exc}); the next connection is trusted on first use again",
                server=str(self.server),
                fingerprint=fingerprint,
                path=str(self.known_hosts.path),
                error=str(exc),
            )
            return
        if pinned:
            fingerprint = certificate_fingerprint(der)
            event(
                log,
                logging.INFO,
                "tls.pinned",
                f"first connection to {self.server}: its certificate {fingerprint} is recorded in "
                f"{self.known_hosts.path}; another certificate will be refused",
                server=str(self.server),
                fingerprint=fingerprint,
                path=str(self.known_hosts.path),
            )

    async def _login(
        self, channel: MessageChannel, binding: bytes, role: Role, resume: tuple[str, bytes] | None
    ) -> tuple[str, bytes, bytes, frozenset[str]]:
        try:
            return await asyncio.wait_for(
                client_login(
                    channel,
                    user=self.config.user,
                    token=self.config.token,
                    features=features_of(self.config),
                    client_id=self.client_id,
                    role=role,
                    binding=binding,
                    resume=resume,
                ),
                DIAL_TIMEOUT,
            )
        except BaseException:
            channel.close()
            raise

    async def control(self, resume: tuple[str, bytes] | None) -> tuple[MessageChannel, str, bytes]:
        """A logged-in control channel, its run id and session key.

        ``resume``: the previous session's run id and resume key, so the server hands its place over.
        """
        channel, binding = await self._tls()
        run_id, key, _, self.server_features = await self._login(channel, binding, Role.CONTROL, resume)
        return channel, run_id, key

    @property
    def multiplexed(self) -> bool:
        """Work connections are streams of a multiplexed connection (both sides offered it)."""
        return Feature.MUX in self.server_features and Feature.MUX in features_of(self.config)

    async def visitor(self) -> tuple[StreamChannel, str]:
        """A logged-in visitor connection (always TLS) and its visit id (fresh, known to both ends).

        The first logs in (SRP); later ones prove the visitor session's key, until the server forgets
        the session (it restarted, or the session expired): then a fresh login again.
        """
        channel, binding = await self._tls()
        if self._visitor_session is not None:
            run_id, key = self._visitor_session
            try:
                nonce = await self._join(channel, binding, run_id, key, Role.VISITOR)
                return channel, nonce.hex()
            except Refused as exc:
                if exc.code is not ErrorCode.UNKNOWN_SESSION:
                    raise
                self._visitor_session = None
                channel, binding = await self._tls()
        run_id, key, nonce, _ = await self._login(channel, binding, Role.VISITOR, None)
        self._visitor_session = (run_id, visitor_key(key, run_id))
        return channel, nonce.hex()

    async def work(self, run_id: str, key: bytes) -> MessageChannel:
        """A logged-in work connection of session ``run_id`` (``key``: its work key): TLS, or plain
        when data is unencrypted."""
        channel: MessageChannel
        if self.config.transport.encrypt_data:
            channel, binding = await self._tls()
        else:
            sock = await connect_tcp(self.server, DIAL_TIMEOUT)
            channel, binding = SocketChannel(sock), plain_binding(run_id)
        await self._join(channel, binding, run_id, key, Role.WORK)
        return channel

    async def mux(self, run_id: str, key: bytes) -> MuxConnection:
        """A multiplexed connection joined to session ``run_id`` (``key``: its work key), not yet run."""
        channel, binding = await self._tls()
        await self._join(channel, binding, run_id, key, Role.MUX)
        return MuxConnection(channel.reader, channel.writer, initiator=True)

    async def _join(
        self, channel: MessageChannel, binding: bytes, run_id: str, key: bytes, role: Role
    ) -> bytes:
        """Join session ``run_id`` by proving ``key``; the server's nonce. Closes ``channel`` on failure."""
        try:
            return await asyncio.wait_for(
                client_work_login(
                    channel,
                    key=key,
                    features=features_of(self.config),
                    client_id=self.client_id,
                    run_id=run_id,
                    binding=binding,
                    role=role,
                ),
                DIAL_TIMEOUT,
            )
        except BaseException:
            channel.close()
            raise


class ClientSession:
    """Runs one login until the connection dies; the `Client` reconnects around it."""

    def __init__(
        self,
        dialer: Dialer,
        channel: MessageChannel,
        run_id: str,
        key: bytes,
        proxies: dict[str, ProxyConfig],
        on_proxy_state: Callable[[str, ProxyState, int | None, str, Sequence[str]], None],
        spawn_active: Callable[[Coroutine[Any, Any, None]], None],
        udp: UdpProxies | None = None,
        exchanges: Callable[[], OwnerExchanges] | None = None,
        p2p: Callable[[], OwnerP2p] | None = None,
        ready: Callable[[str], bool] = lambda name: True,
        inspector: Callable[[], Inspector] | None = None,
    ) -> None:
        self.dialer = dialer
        self.config = dialer.config
        self.channel = channel
        self.run_id = run_id
        self.work_key = work_key(key, run_id)
        self.proxies = dict(proxies)
        #: Whether a proxy may be registered now (False while its health check fails).
        self.ready = ready
        #: The proxies asked for (`NewProxy`) and not withdrawn since.
        self.registered: set[str] = set()
        self.on_proxy_state = on_proxy_state
        #: Runs a visitor's relay outside this session, so it survives a reconnect or a reload.
        self.spawn_active = spawn_active
        #: The client's UDP proxies and their visitor flows; they outlive this session when the client
        #: passes its own (this session only lends them its channel).
        self.udp = udp if udp is not None else UdpProxies()
        self._owns_udp = udp is None
        #: Secret services' exchanges and tickets; the client's own, so tickets outlive a reconnect. Each of
        #: these three is asked for when first needed (made then: its code loads only for a proxy using it).
        self._exchanges = exchanges
        #: Direct paths to P2P visitors (the client's own: they outlive this session).
        self.p2p = p2p
        #: Records the requests of http proxies (the client's own: logs outlive this session).
        self.inspector = inspector
        self.tasks: set[asyncio.Task[None]] = set()
        #: The multiplexed connection work streams are opened on (`Dialer.multiplexed`), and its dial.
        self._mux: MuxConnection | None = None
        #: The session ended because the server went silent (its heartbeats unanswered).
        self._silent = False
        self._mux_dial: asyncio.Future[MuxConnection] | None = None
        self.idle_work = 0
        self._closing = False
        #: The wait before the pool is filled again after a failed dial, and whether a refill is due.
        self._refill_wait = REFILL_FIRST_S
        self._refill_due = False
        #: The next wait before a proxy the server could not open is asked for again, by name.
        self._reask_wait: dict[str, float] = {}
        #: TLS contexts of https2http plugins, by certificate and key file.
        self._tls_contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self.heartbeat = Heartbeat(
            self.config.heartbeat_interval, self.config.heartbeat_timeout, time.monotonic()
        )

    def exchanges(self) -> OwnerExchanges:
        if self._exchanges is None:
            from pierce.proxies.visitor_auth import OwnerExchanges

            own = OwnerExchanges()
            self._exchanges = lambda: own
        return self._exchanges()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        """Register proxies, keep the pool full and heartbeats going; return or raise when the link dies."""
        self.udp.attach(self.channel)
        await self.udp.retain([p.name for p in self.proxies.values() if isinstance(p, UdpProxyConfig)])
        for proxy in list(self.proxies.values()):
            if self.ready(proxy.name):
                await self.register(proxy)
        for _ in range(self.config.pool_count):
            self._spawn(self._work_conn(), "work")
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            while True:
                try:
                    msg = await self.channel.recv()
                except ConnectionClosed:
                    # A silent server: the heartbeat aborted the channel, and its reason is the one to
                    # tell ("no answer from the server for 30s", not "connection closed by peer").
                    if heartbeat.done() and not heartbeat.cancelled():
                        self._silent = True
                        heartbeat.result()
                    raise
                await self._handle(msg)
                if heartbeat.done():
                    heartbeat.result()
        finally:
            heartbeat.cancel()
            await self.close()

    async def _handle(self, msg: object) -> None:
        match msg:
            case Pong():
                self.heartbeat.pong(time.monotonic())
            case Ping(seq=seq):  # the server checks that this session is alive
                await self.channel.send(Pong(seq=seq))
            case ProxyReady(name=name, remote_port=port, urls=urls):
                self._reask_wait.pop(name, None)
                self.on_proxy_state(name, ProxyState.RUNNING, port, "", urls)
            case ProxyRefused(name=name, code=code, reason=reason):
                self.on_proxy_state(name, ProxyState.REFUSED, None, f"{code.value}: {reason}", ())
                if code is ErrorCode.INTERNAL:
                    self._ask_again(name)
            case ReqWorkConn(count=count):
                # The server's pool ran dry: visitors arrive faster than pool_count covers. Open what it
                # asks for and as many again, so the pool grows with demand (the server keeps at most
                # MAX_IDLE_WORK_CONNS idle connections per client and closes extras).
                for _ in range(min(2 * count, MAX_IDLE_WORK_CONNS)):
                    self._spawn(self._work_conn(), "work")
            case UdpPacket():
                self.udp.deliver(msg)
            case VisitorCheck():
                await self.channel.send(check_visitor(self.proxies.get(msg.proxy), msg, self.exchanges()))
            case VisitorAnswer():
                await self.channel.send(answer_visitor(msg, self.exchanges()))
            case P2pRequest():
                if self.p2p is None:
                    reason = "this client does not serve direct paths"
                    await self.channel.send(
                        P2pAnswer(
                            proxy=msg.proxy,
                            visit_id=msg.visit_id,
                            code=ErrorCode.UNKNOWN_PROXY,
                            reason=reason,
                        )
                    )
                else:
                    self.p2p().request(msg, self.channel)
            case P2pStart():
                if self.p2p is not None:
                    self.p2p().start(msg)
            case Error(code=code, reason=reason):
                raise ConnectionClosed(f"server closed the session: {reason} ({code.value})")
            case _:
                raise ProtocolError(f"unexpected {type(msg).__name__} on the control channel")

    async def _heartbeat(self) -> None:
        beat = self.heartbeat
        while True:
            await asyncio.sleep(max(0.0, beat.deadline() - time.monotonic()))
            match beat.due(time.monotonic()):
                case Due.DEAD:
                    self.channel.abort()  # wakes the control loop with ConnectionClosed, now
                    raise ConnectionClosed(f"no answer from the server for {beat.timeout:g}s")
                case Due.PING:
                    await self.channel.send(Ping(seq=beat.seq))
                case Due.NOTHING:
                    pass

    def _ask_again(self, name: str) -> None:
        """Ask for proxy ``name`` again after a wait (`REASK_FIRST_S`, doubling): the server's trouble
        opening it (its descriptors ran out, ...) may pass."""
        wait = self._reask_wait.get(name, REASK_FIRST_S)
        self._reask_wait[name] = min(2 * wait, REASK_MAX_S)
        event(
            log,
            logging.INFO,
            "proxy.retry",
            f"proxy {name}: asking the server again in {wait:g}s",
            proxy=name,
            delay_s=wait,
        )

        async def later() -> None:
            await asyncio.sleep(wait)
            proxy = self.proxies.get(name)
            if proxy is None or self._closing:
                return
            self.registered.discard(name)
            with contextlib.suppress(PierceError, OSError):  # the session is ending: it says why
                await self.register(proxy)

        self._spawn(later(), f"ask again {name}")

    async def register(self, proxy: ProxyConfig) -> None:
        """Ask the server to open ``proxy`` (once: a proxy asked for already is left as it is)."""
        self.proxies[proxy.name] = proxy
        if proxy.name in self.registered:
            return
        self.registered.add(proxy.name)
        spec = await client_spec(proxy, self.udp)
        await self.channel.send(NewProxy(name=proxy.name, spec=encode_spec(spec)))

    async def publish_direct(self, name: str, address: str) -> None:
        """Tell the server where proxy ``name`` is also reachable without it ("": nowhere now); nothing to
        a server that does not take it (`Feature.DIRECT`) or for a proxy it does not hold."""
        if Feature.DIRECT in self.dialer.server_features and name in self.registered:
            await self.channel.send(DirectAddress(name=name, address=address))

    async def unregister(self, name: str) -> None:
        """Withdraw proxy ``name`` from the server and forget it."""
        self.proxies.pop(name, None)
        await self.udp.unregister(name)
        if name in self.registered:
            self.registered.discard(name)
            await self.channel.send(CloseProxy(name=name))

    async def _work_conn(self) -> None:
        """Open one work connection and put it in the pool."""
        try:
            if self.dialer.multiplexed:
                channel: MessageChannel = await self._work_stream()
            else:
                channel = await self.dialer.work(self.run_id, self.work_key)
        except (PierceError, OSError, TimeoutError) as exc:
            delay = self._refill_later()
            if delay is None:
                event(log, logging.DEBUG, "work.failed", f"work connection failed: {exc}", error=str(exc))
            else:
                event(
                    log,
                    logging.DEBUG,
                    "work.failed",
                    f"work connection failed: {exc}; filling the pool again in {delay:.1f}s",
                    error=str(exc),
                    delay_s=round(delay, 2),
                )
            return
        self._refill_wait = REFILL_FIRST_S  # dials work again
        await self._serve_work(channel)

    def _refill_later(self) -> float | None:
        """A dial failed: fill the pool again after a wait, rather than leave it short until the server
        asks for more (when a visitor finds it empty, and then waits for the dial). One refill at a time
        (the streams waiting for one multiplexed dial all fail with it); its wait doubles while dials keep
        failing. The wait, or None when a refill is due already or the session is closing."""
        if self._closing or self._refill_due:
            return None
        self._refill_due = True
        delay = self._refill_wait * random.uniform(0.8, 1.2)
        self._refill_wait = min(2 * self._refill_wait, REFILL_MAX_S)
        self._spawn(self._refill(delay), "refill")
        return delay

    async def _refill(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._refill_due = False
        for _ in range(self.config.pool_count - self.idle_work):
            self._spawn(self._work_conn(), "work")

    async def _work_stream(self) -> MuxChannel:
        """A work connection as a new stream of the multiplexed connection (dialled once when needed)."""
        conn = self._mux
        if conn is None or not conn.accepting:
            dial = self._mux_dial
            if dial is None:
                dial = self._mux_dial = asyncio.ensure_future(self._dial_mux())
                # Its failure is each waiter's to handle; waiters that were cancelled leave it unread.
                dial.add_done_callback(lambda f: f.cancelled() or f.exception())
            try:
                conn = await asyncio.shield(dial)
            finally:
                if dial.done() and self._mux_dial is dial:
                    self._mux_dial = None
        return MuxChannel(conn.open(), peer=str(self.dialer.server), max_frame_size=MAX_FRAME_SIZE)

    async def _dial_mux(self) -> MuxConnection:
        conn = await self.dialer.mux(self.run_id, self.work_key)
        if self._closing:
            conn.close("client session closed")
            raise ConnectionClosed("client session closed")
        self._mux = conn
        # Outside this session: the streams relaying visitors outlive a reconnect or a reload.
        self.spawn_active(self._run_mux(conn))
        return conn

    async def _run_mux(self, conn: MuxConnection) -> None:
        try:
            await conn.run()
        except ProtocolError as exc:
            event(
                log,
                logging.WARNING,
                "work.mux_failed",
                f"multiplexed work connection failed: {exc}",
                error=str(exc),
            )
        finally:
            if self._mux is conn:
                self._mux = None
                if not self._closing and not conn.state.going_away:
                    # Lost, not drained (a router that forgot it, a reset): its pooled streams went with
                    # it, and the server may already wait for one. Fill the pool again on a new
                    # connection now rather than at the server's next request.
                    for _ in range(self.config.pool_count):
                        self._spawn(self._work_conn(), "work")

    def _low_water(self) -> int:
        """Below this many idle work connections the client opens another when one is taken."""
        return max(1, (self.config.pool_count + 1) // 2)

    def _reuse_work(self, channel: MessageChannel) -> None:
        """A TLS work connection whose visitor ended cleanly waits for the next visitor."""
        if self._closing or self.idle_work >= MAX_IDLE_WORK_CONNS:
            channel.close()
        else:
            self._spawn(self._serve_work(channel), "work")

    async def _serve_work(self, channel: MessageChannel) -> None:
        """Wait in the pool for a visitor, then serve it; keep the pool above its low-water mark."""
        self.idle_work += 1
        try:
            msg = await channel.recv()
        except (PierceError, OSError):
            channel.close()
            return
        except BaseException:  # this session is closing (cancelled): do not leave the connection open
            channel.close()
            raise
        finally:
            self.idle_work -= 1
        if not isinstance(msg, StartWork):
            channel.close()
            event(log, logging.WARNING, "work.unexpected", f"work connection got {type(msg).__name__}")
            return
        # Used: open a replacement when the pool runs low. TLS connections come back after their
        # visitor (``_reuse_work``), so a steady trickle of visitors costs no new handshakes; the server
        # asks for more (ReqWorkConn) when visitors outrun the pool.
        if self.idle_work < self._low_water():
            self._spawn(self._work_conn(), "work")
        if msg.confirm:  # at once, before the local service is dialled: the server waits for it
            try:
                await channel.send(WorkReady())
            except (PierceError, OSError):
                channel.close()
                return
        proxy = self.proxies.get(msg.proxy)
        end = channel.into_end(on_reuse=lambda: self._reuse_work(channel))
        if proxy is None:
            end.close()
            event(
                log,
                logging.WARNING,
                "work.unknown_proxy",
                f"visitor for unknown proxy {msg.proxy!r}",
                proxy=msg.proxy,
            )
            return
        recorder = (
            self.inspector().recorder(proxy, msg)
            if self.inspector is not None and isinstance(proxy, HttpProxyConfig | HttpsProxyConfig)
            else None
        )
        handler = work_handler(proxy, msg, end, self._tls_contexts, recorder)
        if handler is None:
            end.close()
            event(
                log,
                logging.WARNING,
                "work.unexpected",
                f"visitor for proxy {msg.proxy!r}, which takes no work connections",
                proxy=msg.proxy,
            )
            return
        self.spawn_active(handler)

    async def _end_if_dead(self, conn: MuxConnection) -> None:
        """After the server went silent: the multiplexed connection most likely shares its dead link. If
        it does not answer a ping within `MUX_PROBE_TIMEOUT` (or a heartbeat interval, if shorter), its
        streams end now, with a named error, as the server ends them on its side; not when the link
        returns (a retransmission then draws the server's reset) or after TCP's ~15 minutes of retries.
        One that answers goes on draining."""
        if conn.ended:  # it had no stream left
            return
        try:
            await conn.ping(min(MUX_PROBE_TIMEOUT, self.config.heartbeat_interval))
        except (TimeoutError, ConnectionResetError):
            if not conn.ended:
                conn.abort(f"no answer from the server for {self.config.heartbeat_timeout:g}s")

    async def close(self) -> None:
        self._closing = True
        self.channel.close()
        if self._mux is not None:
            self._mux.drain("client session closed")  # live streams go on; closes after the last
            if self._silent:
                self.spawn_active(self._end_if_dead(self._mux))
        self.udp.detach(self.channel)
        if self._owns_udp:
            await self.udp.close()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
