"""``pierce server``: the public side. Accepts clients on one control port and opens their proxies.

Every connection to the control port starts with a `Hello` naming its role. TLS connections (first
byte 0x16) carry control channels and encrypted work connections; a plain connection may only be a
work connection of a client whose data is unencrypted by agreement (``transport.encrypt_data = false``
on both ends), so the relay can splice it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from pierce.addr import HostPort, format_sockaddr, source_of
from pierce.config import ServerConfig
from pierce.errors import LocalError, PierceError
from pierce.handshake import (
    AuthenticationFailed,
    Login,
    plain_binding,
    server_login,
    server_work_login,
    visitor_key,
)
from pierce.listeners import TcpListener, drop, tune_tcp
from pierce.logs import event
from pierce.mux import MuxChannel, MuxConnection, MuxStream
from pierce.nat.stun_policy import StunPolicy
from pierce.nat.stun_server import StunServer
from pierce.protocol import (
    MAX_FRAME_SIZE,
    Error,
    ErrorCode,
    Feature,
    Hello,
    ProtocolError,
    Refused,
    Role,
    UnexpectedMessage,
    Visit,
    certificate_binding,
)
from pierce.protocol.messages import DEFAULT_USER
from pierce.protocol.pake import Verifier, make_verifier
from pierce.proxies.base import Front
from pierce.relay import wait_fd
from pierce.runtime import release_free_memory
from pierce.server.admission import Admission, LogBudget, Refusal, Ticket
from pierce.server.claims import Claims
from pierce.server.proxies.group import ProxyGroups
from pierce.server.proxies.registry import configured_fronts, secret_proxy, visitor_path
from pierce.server.session import ControlSession
from pierce.server.token import generated_token
from pierce.server.users import Users
from pierce.server.workconn import WorkConn
from pierce.snapshot import ServerProxyInfo, ServerSnapshot
from pierce.statedir import prepare_state_dir, state_dir_for
from pierce.tls import ServerCertificate, ensure_server_certificate, server_context
from pierce.transport import ConnectionClosed, MessageChannel, SocketChannel, StreamChannel, accept_tls

if TYPE_CHECKING:
    from pierce.server.proxies.rendezvous import P2pCounters
    from pierce.server.proxies.secret import SecretProxyServer
    from pierce.server.visitor_sessions import VisitorSessions
    from pierce.web.app import WebServer

log = logging.getLogger("pierce.server")

#: Seconds a logged-in visitor has to name the proxy it visits (the login itself has ``login_timeout_s``).
VISIT_TIMEOUT = 10.0
#: Seconds a session whose client id a new login names has to answer a ping; a live one keeps its
#: place (the newcomer is refused), a silent one is replaced.
PROBE_TIMEOUT = 3.0
_TLS_HANDSHAKE_BYTE = 0x16
#: Admissions (connections let in to log in) that make a crowd, and seconds after the last of them has
#: left before the memory they used goes back to the system (`release_free_memory`).
TRIM_AFTER = 32
TRIM_DELAY = 1.0


class Server:
    """Owns the control listener, the TLS identity and every client session."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: dict[str, ControlSession] = {}  # by run id
        self.proxy_owners: dict[str, ControlSession] = {}  # by proxy name
        #: Each user's SRP verifier (`pierce.protocol.pake`): the server keeps no token in memory.
        self.verifiers: dict[str, Verifier] = user_verifiers(config)
        #: Which user owns which proxy name, port and domain.
        self.claims = Claims(config.claim_hold_s)
        #: Load-balancing groups of proxies that share a port, domain or tcpmux name.
        self.groups = ProxyGroups()
        #: Each user's limits (``[[users]]``: clients, proxies, ports, bandwidth) and their use.
        self.users = Users(config)
        #: Logged-in visitors, whose later connections prove a key derived from their login (made, as the
        #: rest of the visiting side, with the first visitor).
        self.visitor_sessions: VisitorSessions | None = None
        transport = config.transport
        self.features = frozenset(
            {Feature.DIRECT}
            | ({Feature.ENCRYPT_DATA} if transport.encrypt_data else set())
            | ({Feature.MUX} if transport.encrypt_data and transport.tcp_mux else set())
        )
        self.certificate: ServerCertificate | None = None
        self._ssl: ssl.SSLContext | None = None
        self._listener: TcpListener | None = None
        #: The STUN responder (``stun_port``), when it could start.
        self.stun: StunServer | None = None
        #: What the server saw of P2P rendezvous (from the first visitor).
        self.p2p: P2pCounters | None = None
        #: Listeners shared between proxies (the web ports, ...), by type, when configured.
        self.fronts: dict[type, Front] = {}
        #: Connections waiting to log in, and sources whose logins fail.
        self.admission = Admission(
            max_pending=config.max_pending_logins, max_pending_per_source=config.max_pending_logins_per_ip
        )
        #: Rate limits of the log lines strangers cause, one per event name (a flood of one kind
        #: hides no other).
        self._noise: dict[str, LogBudget] = {}
        self._trimmed_at = 0  # admissions when memory was last given back
        self._trim: asyncio.TimerHandle | None = None
        #: The JSON API and /metrics (``[web]``), when configured.
        self.web: WebServer | None = None
        self.started_at = time.time()
        self._started = time.monotonic()  # for the uptime: a wall-clock step must not change it

    async def start(self) -> str:
        cfg = self.config
        state = state_dir_for("server", cfg.state_dir)
        prepare_state_dir(state, log)
        if not cfg.token and not cfg.users:  # no identity configured: one generated token
            token = generated_token(state, allow_weak=cfg.allow_weak_token)
            self.config = cfg = msgspec.structs.replace(cfg, token=token)
            self.verifiers = user_verifiers(cfg)
        self.certificate = ensure_server_certificate(
            state,
            cert_file=Path(cfg.tls_cert_file) if cfg.tls_cert_file else None,
            key_file=Path(cfg.tls_key_file) if cfg.tls_key_file else None,
        )
        self._ssl = server_context(self.certificate)
        for front_type in configured_fronts(cfg):
            front = front_type(cfg, state)
            self.fronts[type(front)] = front
            await front.start()
        self._start_stun()
        self._listener = TcpListener.open(
            HostPort(cfg.bind_addr, cfg.bind_port), self._accept, name="control", handler_owns=True
        )
        if cfg.web.port:
            # aiohttp and prometheus_client load only when [web] is configured
            from pierce.web.app import WebServer

            self.web = WebServer(cfg.web, self.snapshot)
            await self.web.start()
        event(
            log,
            logging.INFO,
            "server.listening",
            f"pierce server listening on {self._listener.address}; certificate SHA-256 fingerprint "
            f"{self.certificate.fingerprint}" + (" (new, generated)" if self.certificate.generated else ""),
            listen=self._listener.address,
            port=self._listener.port,
            fingerprint=self.certificate.fingerprint,
            generated=self.certificate.generated,
        )
        release_free_memory()  # what starting up freed (imports, config, certificate) goes back now
        return self._listener.address

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.port

    def _start_stun(self) -> None:
        """STUN on ``stun_port`` and the next port; when they are taken the server runs without it."""
        cfg = self.config
        if not cfg.stun_port:
            return
        try:
            policy = StunPolicy(
                rate=cfg.stun_rate,
                burst=cfg.stun_burst,
                global_rate=cfg.stun_global_rate,
                allow_response_port=cfg.stun_allow_response_port,
            )
            stun = StunServer(cfg.bind_addr, cfg.stun_port, cfg.stun_alt_addr or None, policy=policy)
            stun.start()
        except (LocalError, ValueError) as exc:
            event(log, logging.WARNING, "stun.unavailable", f"STUN not started: {exc}", error=str(exc))
            return
        self.stun = stun

    async def close(self) -> None:
        if self.web is not None:
            await self.web.close()
        if self._listener is not None:
            self._listener.stop_accepting()
        if self._trim is not None:
            self._trim.cancel()
        if self.stun is not None:
            self.stun.close()
        # Each client is told why (it logs "server shutting down" and reconnects), before the listener's
        # tasks, which run the sessions, are cancelled.
        sessions = list(self.sessions.values())
        await asyncio.gather(
            *(s.close("server shutting down", tell=ErrorCode.NOT_AVAILABLE) for s in sessions),
            return_exceptions=True,
        )
        if self._listener is not None:
            await self._listener.close()
        for front in self.fronts.values():
            await front.close()

    def snapshot(self) -> ServerSnapshot:
        """What the server is doing now: its clients, their proxies and the traffic through them."""
        from pierce import __version__

        ports = {"bind_port": self.port if self._listener is not None else 0}
        for front in self.fronts.values():
            ports.update(front.ports())
        stun: dict[str, int] = {}
        if self.stun is not None:
            ports["stun_port"] = self.stun.layout.port
            stun = msgspec.structs.asdict(self.stun.stats)
        sessions = list(self.sessions.values())
        return ServerSnapshot(
            version=__version__,
            address=self._listener.address if self._listener is not None else "",
            fingerprint=self.certificate.fingerprint if self.certificate is not None else "",
            ports=ports,
            clients=[s.info() for s in sessions],
            stun=stun,
            p2p=self.p2p.snapshot() if self.p2p is not None else {},
            logins=msgspec.structs.asdict(self.admission.stats),
            users=sorted(self.verifiers),
            user_limits=self.users.info(),
            started_at=self.started_at,
            uptime_s=time.monotonic() - self._started,
            proxies=[
                ServerProxyInfo(
                    name=p.name,
                    type=p.type,
                    client_id=s.client_id,
                    user=s.user,
                    remote_port=p.port,
                    urls=p.urls,
                    stats=p.stats(),
                    group=p.group.name if p.group is not None else "",
                    group_members=len(p.group.members) if p.group is not None else 0,
                    path=visitor_path(p),
                    direct=s.direct.get(p.name, ""),
                )
                for s in sessions
                for p in s.proxies.values()
            ],
        )

    # -- new connections ---------------------------------------------------------------------------
    #
    # Until it has logged in, a connection is a stranger's: it holds an admission ticket (capped in total
    # and per source), all of it (TLS handshake, Hello, the login exchange) runs under one deadline, its
    # buffers are small, and any failure aborts it at once. Each socket has one owner at a time:
    # `_accept` until `_open_channel` hands it to a channel (or closes it), then the channel.

    async def _accept(self, sock: socket.socket, addr: Any) -> None:
        peer = format_sockaddr(addr)
        source = source_of(str(addr[0]))
        ticket = self.admission.admit(source)
        if isinstance(ticket, Refusal):
            drop(sock)
            reason = ticket.value
            self._event(
                logging.WARNING,
                "login.turned_away",
                f"connection from {peer} refused: {reason}",
                peer=peer,
                source=source,
                reason=reason,
            )
            return
        channel: MessageChannel | None = None
        hello: Hello | None = None
        try:
            async with asyncio.timeout(self.config.login_timeout_s) as deadline:
                channel, binding = await self._open_channel(sock, deadline.when() or 0.0)
                channel.on_login(functools.partial(_logged_in, deadline, ticket))
                first = await channel.recv()
                if not isinstance(first, Hello):
                    raise UnexpectedMessage(first, "Hello")
                hello = first
                await self._serve(channel, hello, binding, addr, peer)
        except (PierceError, TimeoutError, OSError) as exc:
            if channel is not None:
                await asyncio.sleep(0)  # a refusal just written leaves first (uvloop sends at the loop's end)
                channel.abort()
            self._dropped(exc, ticket, peer, hello)
        except BaseException:
            if channel is not None:
                channel.abort()
            raise
        finally:
            ticket.release()
            self._after_storm()

    async def _open_channel(
        self, sock: socket.socket, deadline: float
    ) -> tuple[MessageChannel, bytes | None]:
        """A channel on ``sock``, TLS or plain by its first byte; TLS must be up by ``deadline`` (loop time).

        Takes ``sock`` over: it is closed here when this fails before TLS starts, and belongs to the TLS
        transport from `accept_tls` on, also when that fails.
        """
        loop = asyncio.get_running_loop()
        try:
            first = await _peek_byte(loop, sock)
        except BaseException:
            drop(sock)
            raise
        if first != _TLS_HANDSHAKE_BYTE:
            tune_tcp(sock)  # StartWork and the visitor's first bytes must not wait for an ACK (Nagle)
            return SocketChannel(sock), None
        assert self._ssl is not None and self.certificate is not None
        timeout = max(deadline - loop.time(), 0.01)
        channel = await accept_tls(sock, self._ssl, handshake_timeout=timeout)
        return channel, certificate_binding(self.certificate.der)

    async def _serve(
        self, channel: MessageChannel, hello: Hello, binding: bytes | None, addr: Any, peer: str
    ) -> None:
        if hello.role is Role.CONTROL:
            await self._control(channel, hello, binding, peer)
        elif hello.role is Role.WORK:
            await self._work(channel, hello, binding, peer)
        elif hello.role is Role.MUX:
            await self._mux(channel, hello, binding, peer)
        else:
            await self._visitor(channel, hello, binding, (str(addr[0]), int(addr[1])))

    def _dropped(self, exc: Exception, ticket: Ticket, peer: str, hello: Hello | None) -> None:
        """Log a connection that ended in ``exc``; a stranger's failure counts against its source."""
        error = str(exc) or type(exc).__name__
        if isinstance(exc, AuthenticationFailed):
            self.admission.stats.auth_failed += 1
        stranger = ticket.open
        if stranger and _is_failure(exc, said_hello=hello is not None):
            block = ticket.failed()
            if block:
                failures = self.admission.failures_of(ticket.source)
                self._event(
                    logging.WARNING,
                    "login.blocked",
                    f"{failures} failed logins in a row from {ticket.source}: "
                    f"refusing its connections for {block:g}s",
                    source=ticket.source,
                    failures=failures,
                    block_s=block,
                )
        log_event = self._event if stranger else functools.partial(event, log)
        if hello is None:
            log_event(
                logging.WARNING,
                "login.failed",
                f"connection from {peer} dropped before login: {error}",
                peer=peer,
                error=error,
            )
            return
        log_event(
            logging.WARNING,
            "auth.failed" if isinstance(exc, AuthenticationFailed) else "login.refused",
            f"{hello.role.value} connection from {peer} ({hello.client_id}) refused: {error}",
            peer=peer,
            client_id=hello.client_id,
            role=hello.role.value,
            error=error,
        )

    def _after_storm(self) -> None:
        """Once nobody waits to log in after a crowd did, hand the memory it used back to the system
        (a moment later, so a storm in waves is one hand-back per pause, not one per wave)."""
        crowd = self.admission.stats.admitted - self._trimmed_at >= TRIM_AFTER
        if crowd and not self.admission.pending and self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._release_memory)

    def _release_memory(self) -> None:
        self._trim = None
        if not self.admission.pending:  # else the next connection to end calls _after_storm again
            self._trimmed_at = self.admission.stats.admitted
            release_free_memory()

    def _event(self, level: int, name: str, message: str, **fields: Any) -> None:
        """`event` for what strangers can cause as often as they like: rate-limited, gaps counted."""
        if not log.isEnabledFor(level):
            return
        budget = self._noise.get(name)
        if budget is None:
            budget = self._noise[name] = LogBudget()
        suppressed = budget.take()
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
            message += f" ({suppressed} similar lines left out before this one)"
        event(log, level, name, message, **fields)

    async def _tls_login(
        self,
        channel: MessageChannel,
        hello: Hello,
        binding: bytes | None,
        run_id: str,
        role: str,
        admit: Callable[[Login], Awaitable[None]] | None = None,
    ) -> Login:
        """Refuse a plain connection for ``role``; else run the login exchange, handing out ``run_id``."""
        if binding is None:
            await channel.send(Error(code=ErrorCode.BAD_MESSAGE, reason=f"{role} connections must use TLS"))
            raise Refused(ErrorCode.BAD_MESSAGE, f"plain {role} connection")
        return await server_login(  # within the connection's one login deadline (`_accept`)
            channel,
            hello,
            verifier=self.verifiers.get,
            features=self.features,
            binding=binding,
            run_id=run_id,
            resume=self._resume_key,
            admit=admit,
        )

    def _resume_key(self, user: str, run_id: str) -> bytes | None:
        session = self.sessions.get(run_id)
        return session.resume_key if session is not None and session.user == user else None

    async def _control(self, channel: MessageChannel, hello: Hello, binding: bytes | None, peer: str) -> None:
        run_id = secrets.token_hex(8)
        client_id = hello.client_id

        async def admit(login: Login) -> None:
            """Only the same user's sessions are ever touched. A client that proves it held its
            previous session (resume) replaces it at once; a session of the same client id that answers
            a ping is live, so the newcomer is refused (no two devices kick each other off); a silent one
            is stale and replaced."""
            user = login.user
            for old in list(self.sessions.values()):
                if old.user != user:
                    continue
                resumed = login.resumed and old.run_id == hello.run_id
                if not resumed and old.client_id != client_id:
                    continue
                if not resumed and await old.probe(PROBE_TIMEOUT):
                    raise Refused(
                        ErrorCode.DUPLICATE_CLIENT,
                        f"client id {client_id!r} is already connected and answering; give each client "
                        "of a user its own client_id",
                    )
                event(
                    log,
                    logging.INFO,
                    "client.replaced",
                    f"client {client_id} of user {user} reconnected from {peer}; closing its previous "
                    "session" + (" (resumed)" if resumed else " (it did not answer)"),
                    client_id=client_id,
                    user=user,
                    peer=peer,
                )
                await self._end_session(old, "replaced by a new login")
            # After the replacements (they free their places); no await from here until the session
            # is in `sessions` or the login failed, so the count stays right.
            self.users[user].take_client()
            admitted.append(user)

        admitted: list[str] = []
        try:
            login = await self._tls_login(channel, hello, binding, run_id, "control", admit)
        except BaseException:
            for name in admitted:
                self.users[name].client_left()
            raise
        user = login.user
        session = ControlSession(
            self,
            channel,
            user=user,
            client_id=client_id,
            run_id=run_id,
            peer=peer,
            key=login.key,
            software=hello.software,
        )
        self.sessions[run_id] = session
        event(
            log,
            logging.INFO,
            "client.login",
            f"client {client_id} (user {user}) logged in from {peer}",
            client_id=client_id,
            user=user,
            peer=peer,
            run_id=run_id,
        )
        try:
            await session.run()
        finally:
            await self._end_session(session, "client disconnected")

    async def _end_session(self, session: ControlSession, reason: str) -> None:
        if self.sessions.get(session.run_id) is session:
            del self.sessions[session.run_id]
            session.limits.client_left()
        await session.close(reason)

    async def _work(self, channel: MessageChannel, hello: Hello, binding: bytes | None, peer: str) -> None:
        session = self.sessions.get(hello.run_id)
        if session is None:
            reason = "unknown or expired session; log in again"
            await channel.send(Error(code=ErrorCode.UNKNOWN_SESSION, reason=reason))
            raise Refused(ErrorCode.UNKNOWN_SESSION, reason)
        plain = binding is None
        if plain and self.config.transport.encrypt_data:
            reason = "plain work connection refused: transport.encrypt_data is true on the server"
            await channel.send(Error(code=ErrorCode.FEATURE_MISMATCH, reason=reason))
            raise Refused(ErrorCode.FEATURE_MISMATCH, reason)
        await server_work_login(
            channel,
            hello,
            key=session.work_key,
            features=self.features,
            binding=binding or plain_binding(hello.run_id),
        )
        session.add_work_conn(WorkConn(channel))

    async def _mux(self, channel: MessageChannel, hello: Hello, binding: bytes | None, peer: str) -> None:
        """A multiplexed connection of a session: each stream the client opens is a work connection."""
        session = self.sessions.get(hello.run_id)
        if session is None:
            reason = "unknown or expired session; log in again"
            await channel.send(Error(code=ErrorCode.UNKNOWN_SESSION, reason=reason))
            raise Refused(ErrorCode.UNKNOWN_SESSION, reason)
        if Feature.MUX not in self.features or binding is None or not isinstance(channel, StreamChannel):
            reason = "multiplexed connection refused: transport.tcp_mux is off on the server"
            await channel.send(Error(code=ErrorCode.FEATURE_MISMATCH, reason=reason))
            raise Refused(ErrorCode.FEATURE_MISMATCH, reason)
        await server_work_login(channel, hello, key=session.work_key, features=self.features, binding=binding)

        def work_stream(stream: MuxStream) -> None:
            if session.closed.is_set():
                stream.close()
            else:
                session.add_work_conn(WorkConn(MuxChannel(stream, peer=peer, max_frame_size=MAX_FRAME_SIZE)))

        conn = MuxConnection(channel.reader, channel.writer, initiator=False, on_stream=work_stream)
        session.mux.add(conn)
        event(
            log,
            logging.INFO,
            "work.mux_joined",
            f"client {session.client_id}: multiplexed work connection from {peer}",
            client_id=session.client_id,
            peer=peer,
        )
        try:
            await conn.run()
        finally:
            session.mux.discard(conn)

    async def _visitor(
        self, channel: MessageChannel, hello: Hello, binding: bytes | None, peer: tuple[str, int]
    ) -> None:
        """A visitor of a secret proxy: log in (or prove its visitor session), read its `Visit`, then
        refuse it or relay it."""
        from pierce.server.proxies.rendezvous import P2pCounters
        from pierce.server.proxies.secret import serve_visit
        from pierce.server.visitor_sessions import VisitorSessions

        if self.visitor_sessions is None:
            self.visitor_sessions = VisitorSessions()
        if self.p2p is None:
            self.p2p = P2pCounters()
        if hello.pake or binding is None:  # a fresh login (a plain connection is refused by it)
            run_id = secrets.token_hex(16)
            login = await self._tls_login(channel, hello, binding, run_id, "visitor")
            self.visitor_sessions.add(run_id, login.user, visitor_key(login.key, run_id))
            user, nonce = login.user, login.nonce
        else:
            found = self.visitor_sessions.get(hello.run_id)
            if found is None:
                reason = "unknown or expired visitor session; log in again"
                await channel.send(Error(code=ErrorCode.UNKNOWN_SESSION, reason=reason))
                raise Refused(ErrorCode.UNKNOWN_SESSION, reason)
            nonce = await server_work_login(
                channel, hello, key=found.key, features=self.features, binding=binding
            )
            user = found.user
        event(
            log,
            logging.DEBUG,
            "visitor.login",
            f"visitor {format_sockaddr(peer)} (user {user}) logged in"
            + (" (fresh login)" if hello.pake else " (visitor session key)"),
            visitor=format_sockaddr(peer),
            user=user,
            fresh=bool(hello.pake),
        )
        async with asyncio.timeout(VISIT_TIMEOUT):
            visit = await channel.recv()
        if not isinstance(visit, Visit):
            raise UnexpectedMessage(visit, "Visit")
        await serve_visit(
            self._secret_proxy,
            channel,
            visit,
            visit_id=nonce.hex(),
            visitor_user=user,
            visitor_id=hello.client_id,
            visitor=peer,
            stun_port=self.stun.layout.port if self.stun is not None else 0,
            p2p=self.p2p,
        )

    def _secret_proxy(self, name: str) -> SecretProxyServer | None:
        owner = self.proxy_owners.get(name)
        return secret_proxy(owner.proxies.get(name) if owner is not None else None)


def user_verifiers(config: ServerConfig) -> dict[str, Verifier]:
    """An SRP verifier per user: computed from a token, or as configured."""
    verifiers = {DEFAULT_USER: make_verifier(DEFAULT_USER, config.token)} if config.token else {}
    for user in config.users:
        verifiers[user.name] = (
            Verifier.parse(user.verifier) if user.verifier else make_verifier(user.name, user.token)
        )
    return verifiers


async def _peek_byte(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> int:
    """The first byte the peer sent, left in the socket."""
    while True:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await wait_fd(loop, sock.fileno(), writable=False)
            continue
        if not data:
            raise ConnectionClosed("closed before sending anything")
        return data[0]


def _logged_in(deadline: asyncio.Timeout, ticket: Ticket) -> None:
    """The peer authenticated: no more login deadline, no longer a stranger."""
    if not deadline.expired():
        deadline.reschedule(None)
    ticket.logged_in()


def _is_failure(exc: Exception, *, said_hello: bool) -> bool:
    """Whether a stranger's connection that ended in ``exc`` counts as a failed login of its source.

    Guesses, garbage and slots held until the deadline count; a connection closed before it said
    anything (a port scan, a TLS health check) does not, nor a refusal that no guess of the token can
    cause (an expired session, a setting both ends must share, a client id already connected).
    """
    if isinstance(exc, Refused):
        return exc.code not in (
            ErrorCode.UNKNOWN_SESSION,
            ErrorCode.FEATURE_MISMATCH,
            ErrorCode.DUPLICATE_CLIENT,
            ErrorCode.LIMIT_REACHED,  # a user's max_clients: the login itself was right
        )
    if isinstance(exc, AuthenticationFailed | ProtocolError | TimeoutError | ssl.SSLError):
        return True
    if isinstance(exc, ConnectionClosed | ConnectionError):
        return said_hello  # gave up in the middle of a login, after making us compute one
    return False


async def run_server(config: ServerConfig) -> None:
    from pierce.runtime import wait_for_stop_signal

    server = Server(config)
    await server.start()
    loop = asyncio.get_running_loop()
    # SIGHUP (a habit from other daemons, logrotate) would end the process by default: the server reads
    # its config and certificate files only when it starts, so it says so and serves on with what it has.
    with contextlib.suppress(NotImplementedError, AttributeError, RuntimeError):  # Windows has no SIGHUP
        loop.add_signal_handler(signal.SIGHUP, _on_hup)
    try:
        sig = await wait_for_stop_signal()
        log.info("stopping on %s", sig.name)
    finally:
        await server.close()


def _on_hup() -> None:
    event(
        log,
        logging.WARNING,
        "server.sighup",
        "SIGHUP: the server reads its config and certificate files only when it starts, so nothing was "
        "reloaded; still serving with what it loaded (restart it to apply changes)",
    )
