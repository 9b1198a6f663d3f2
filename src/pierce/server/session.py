"""One logged-in client on the server: its control channel, its proxies and its work-connection pool."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pierce.addr import HostPort, parse_host_port
from pierce.errors import LocalError, PierceError
from pierce.handshake import resume_key, work_key
from pierce.listeners import PortInUse
from pierce.logs import event
from pierce.mux import MuxConnection
from pierce.protocol import (
    CloseProxy,
    DirectAddress,
    Error,
    ErrorCode,
    NewProxy,
    P2pAnswer,
    Ping,
    Pong,
    ProtocolError,
    ProxyReady,
    ProxyRefused,
    Refused,
    UdpPacket,
    VisitorVerdict,
)
from pierce.proxies.base import F, P, ProxyType, ServerProxy
from pierce.proxies.registry import decode_spec
from pierce.server.claims import Key, Thing
from pierce.server.proxies.group import ProxyGroups
from pierce.server.proxies.registry import open_proxy, secret_proxy, udp_proxy, visitor_path
from pierce.server.workconn import WorkConn, WorkConnPool
from pierce.snapshot import ClientInfo, ConnectionPath
from pierce.transport import ConnectionClosed, MessageChannel

if TYPE_CHECKING:
    from pierce.bandwidth import Limits
    from pierce.server.app import Server
    from pierce.udpflow import DropCounter

log = logging.getLogger("pierce.server")

#: Seconds `ControlSession.close` waits to tell the client why its session ends (a stalled client is
#: not waited for).
TELL_TIMEOUT = 1.0


class ControlSession:
    """Owns everything one client registered; ``close()`` frees its ports and connections.

    It is the owner (`pierce.proxies.base.ProxyOwner`) of its proxies and the site
    (`pierce.proxies.base.ProxySite`) they open on: port rules and limits, the server's shared fronts.
    """

    def __init__(
        self,
        server: Server,
        channel: MessageChannel,
        *,
        user: str,
        client_id: str,
        run_id: str,
        peer: str,
        key: bytes,
        software: str = "",
    ) -> None:
        self.server = server
        self.channel = channel
        self.user = user
        self.client_id = client_id
        self.run_id = run_id
        self.peer = peer
        #: The limits of this session's user, shared with its other sessions.
        self.limits = server.users[user]
        #: The client's version, as it told in `Hello`.
        self.software = software
        #: Keys derived from the login's: work connections prove the first, a reconnect the second.
        self.work_key = work_key(key, run_id)
        self.resume_key = resume_key(key, run_id)
        #: What each proxy claimed (`pierce.server.claims`), released when it closes.
        self._claimed: dict[str, list[Key]] = {}
        self._probe: asyncio.Future[None] | None = None
        self._probe_seq = 0
        self.pool = WorkConnPool(channel)
        #: The client's multiplexed connections (their streams are work connections in ``pool``).
        self.mux: set[MuxConnection] = set()
        self._work_serial = 0
        self.proxies: dict[str, ServerProxy] = {}
        #: Where the client says its proxies are also reachable without the server (`DirectAddress`), by
        #: proxy name; only for proxies open now.
        self.direct: dict[str, str] = {}
        #: Proxies holding a public port of their own (``max_ports_per_client`` counts them).
        self._port_holders: set[str] = set()
        self.started = time.time()
        self.last_seen = time.monotonic()
        self.closed = asyncio.Event()
        #: UDP packets for no UDP proxy of this client (made with the first).
        self._foreign_udp: DropCounter | None = None

    # -- work connections --------------------------------------------------------------------------

    def add_work_conn(self, conn: WorkConn) -> None:
        self._work_serial += 1
        conn.serial = self._work_serial
        self.pool.put(conn)

    async def take_work_conn(self) -> WorkConn:
        return await self.pool.get(self.server.config.user_conn_timeout)

    def work_conn_dead(self, work: WorkConn, proxy: str, error: str) -> None:
        dropped = self.pool.drop_idle()
        event(
            log,
            logging.WARNING,
            "proxy.work_dead",
            f"client {self.client_id}: work connection {work.serial} for proxy {proxy} is dead ({error}); "
            f"{dropped} idle ones closed with it, fresh ones asked for",
            client_id=self.client_id,
            proxy=proxy,
            work_conn=work.serial,
            error=error,
            closed_idle=dropped,
        )

    @property
    def owner(self) -> ControlSession:
        return self

    @property
    def bandwidth(self) -> Limits | None:
        return self.limits.bandwidth

    def info(self) -> ClientInfo:
        return ClientInfo(
            user=self.user,
            client_id=self.client_id,
            run_id=self.run_id,
            address=self.peer,
            connected_since=self.started,
            idle_s=round(time.monotonic() - self.last_seen, 3),
            proxies=list(self.proxies),
            idle_work_conns=self.pool.idle,
            version=self.software,
            path=next(
                (p for p in map(visitor_path, self.proxies.values()) if p.direct), ConnectionPath.RELAY
            ),
        )

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

    async def probe(self, timeout: float) -> bool:
        """Whether the client answers a `Ping` within ``timeout`` seconds (live, not stale)."""
        if self.closed.is_set():
            return False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_future()
            self._probe_seq += 1
            try:
                await self.channel.send(Ping(seq=self._probe_seq))
            except (PierceError, OSError):
                return False
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._probe)
        except TimeoutError:
            return False
        return not self.closed.is_set()

    async def _handle(self, msg: object) -> None:
        match msg:
            case Ping(seq=seq):
                await self.channel.send(Pong(seq=seq))
            case Pong():
                if self._probe is not None and not self._probe.done():
                    self._probe.set_result(None)
            case NewProxy():
                await self._new_proxy(msg)
            case VisitorVerdict():
                secret = secret_proxy(self.proxies.get(msg.proxy))
                if secret is not None:
                    secret.verdict(msg)
            case P2pAnswer():
                secret = secret_proxy(self.proxies.get(msg.proxy))
                if secret is not None:
                    secret.p2p_answer(msg)
            case CloseProxy(name=name):
                await self._close_proxy(name, reason="closed by client")
            case DirectAddress():
                self._direct_address(msg)
            case UdpPacket():
                udp = udp_proxy(self.proxies.get(msg.proxy))
                if udp is not None:
                    udp.deliver(msg)
                else:  # only this client's own UDP proxies: never another client's port
                    self._drop_foreign_udp(msg)
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

    def _drop_foreign_udp(self, msg: UdpPacket) -> None:
        if self._foreign_udp is None:
            from pierce.udpflow import DropCounter

            self._foreign_udp = DropCounter(log, "udp.unknown_proxy", f"client {self.client_id}: UDP packets")
        self._foreign_udp.drop(f"not a UDP proxy of this client: {msg.proxy!r}", proxy=msg.proxy)

    async def _new_proxy(self, msg: NewProxy) -> None:
        name = msg.name
        try:
            spec = decode_spec(msg.spec)
            self._check_name(name)
            self.limits.check_proxy()
            proxy = open_proxy(name, spec, self)
            try:
                self._claim(name, proxy)
            except Refused:
                await proxy.close()
                raise
        except (Refused, ProtocolError) as exc:
            code = exc.code if isinstance(exc, Refused) else ErrorCode.BAD_MESSAGE
            event(
                log,
                logging.WARNING,
                "proxy.refused",
                f"client {self.client_id}: proxy {name}: {exc}",
                client_id=self.client_id,
                proxy=name,
                code=code.value,
                reason=str(exc),
            )
            await self.channel.send(ProxyRefused(name=name, code=code, reason=str(exc)))
            return
        self.proxies[name] = proxy
        self.limits.proxies += 1
        self.server.proxy_owners[name] = self
        where = f"on port {proxy.port}" if proxy.port else "with no public port, for visitors with its secret"
        if proxy.urls:
            where = "at " + ", ".join(proxy.urls)
        event(
            log,
            logging.INFO,
            "proxy.ready",
            f"client {self.client_id}: {proxy.type} proxy {name} open {where}",
            client_id=self.client_id,
            proxy=name,
            type=proxy.type.value,
            remote_port=proxy.port,
            urls=proxy.urls,
        )
        await self.channel.send(ProxyReady(name=name, remote_port=proxy.port, urls=proxy.urls))

    def _check_name(self, name: str) -> None:
        if name in self.proxies:
            raise Refused(ErrorCode.DUPLICATE_NAME, f"proxy name {name!r} is already registered")
        why = self.server.claims.conflict(self.user, [(Thing.NAME, name)])
        if why is not None:
            raise Refused(ErrorCode.DUPLICATE_NAME, why)
        owner = self.server.proxy_owners.get(name)
        if owner is not None and owner is not self:  # the same user's other client: say no more
            raise Refused(ErrorCode.DUPLICATE_NAME, f"proxy name {name!r} is used by another client")

    def _claim(self, name: str, proxy: ServerProxy) -> None:
        """Claim the proxy's name, own port and domains for this user; close it when another user has
        one (opening is synchronous, so no visitor reached it in between)."""
        keys: list[Key] = [(Thing.NAME, name)]
        if name in self._port_holders:
            keys.append((Thing.PORT, f"{proxy.port}/{'udp' if proxy.type is ProxyType.UDP else 'tcp'}"))
        keys += [(Thing.DOMAIN, d) for d in proxy.domains]
        why = self.server.claims.conflict(self.user, keys)
        if why is not None:
            self._port_holders.discard(name)
            raise Refused(ErrorCode.DOMAIN_TAKEN if "domain" in why else ErrorCode.PORT_IN_USE, why)
        self.server.claims.take(self.user, keys)
        self._claimed[name] = keys

    # -- the site proxies open on ------------------------------------------------------------------

    @property
    def groups(self) -> ProxyGroups:
        return self.server.groups

    def front(self, kind: type[F]) -> F:
        front = self.server.fronts.get(kind)
        if front is None:
            raise Refused(ErrorCode.NOT_AVAILABLE, kind.missing)
        assert isinstance(front, kind)
        return front

    def bind_public(self, name: str, port: int, opener: Callable[[HostPort], P]) -> P:
        """Check the limits and the port rules, then bind with ``opener`` (port 0: any allowed)."""
        cfg = self.server.config
        held = len(self._port_holders)
        if cfg.max_ports_per_client and held >= cfg.max_ports_per_client:
            raise Refused(
                ErrorCode.LIMIT_REACHED, f"client already holds {held} ports (max_ports_per_client)"
            )
        bind = cfg.proxy_bind_addr
        limits = self.limits
        if port:
            if not cfg.port_allowed(port):
                allowed = ", ".join(str(r) for r in cfg.allow_ports)
                raise Refused(
                    ErrorCode.PORT_NOT_ALLOWED, f"port {port} is not allowed (allow_ports: {allowed})"
                )
            if not limits.port_allowed(port):
                raise limits.port_refusal(port)
            candidates = [port]
        elif cfg.allow_ports or limits.allow_ports:
            ranges = limits.allow_ports or cfg.allow_ports
            candidates = [p for r in ranges for p in r if cfg.port_allowed(p) and limits.port_allowed(p)]
            random.shuffle(candidates)
            candidates = candidates[:256]
        else:
            candidates = [0]
        last: LocalError | None = None
        for candidate in candidates:
            try:
                opened = opener(HostPort(bind, candidate))
            except PortInUse as exc:
                last = exc
                continue
            except LocalError as exc:
                raise Refused(ErrorCode.INTERNAL, str(exc)) from exc
            self._port_holders.add(name)
            return opened
        if port:
            raise Refused(ErrorCode.PORT_IN_USE, f"port {port} is already in use on the server")
        raise Refused(ErrorCode.PORT_IN_USE, f"no free port in allow_ports ({last})")

    def _direct_address(self, msg: DirectAddress) -> None:
        """Note (or forget) where the client says a proxy of its own is reachable directly."""
        if msg.name not in self.proxies:
            return  # closed since, or refused: the client's claim is about nothing open here
        if not msg.address:
            self.direct.pop(msg.name, None)
            return
        try:
            where = parse_host_port(msg.address)
            ipaddress.ip_address(where.host)
        except ValueError:
            raise ProtocolError(
                f"direct address of proxy {msg.name!r} is not ip:port: {msg.address!r}"
            ) from None
        if self.direct.get(msg.name) == msg.address:
            return
        self.direct[msg.name] = msg.address
        event(
            log,
            logging.INFO,
            "proxy.direct",
            f"client {self.client_id}: proxy {msg.name} is also reachable directly at {msg.address} (as the "
            "client reports it)",
            client_id=self.client_id,
            proxy=msg.name,
            address=msg.address,
        )

    async def _close_proxy(self, name: str, *, reason: str) -> None:
        proxy = self.proxies.pop(name, None)
        self.direct.pop(name, None)
        self._port_holders.discard(name)
        self.server.claims.release(self.user, self._claimed.pop(name, []))
        if proxy is None:
            return
        self.limits.proxies -= 1
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

    async def close(self, reason: str, *, tell: ErrorCode | None = None) -> None:
        """Free every port and connection of this client; with ``tell``, send the client an `Error` with
        that code and ``reason`` first (at most `TELL_TIMEOUT` seconds), so it knows why."""
        if self.closed.is_set():
            return
        self.closed.set()
        if tell is not None:
            with contextlib.suppress(PierceError, OSError, TimeoutError):
                async with asyncio.timeout(TELL_TIMEOUT):
                    await self.channel.send(Error(code=tell, reason=reason))
        self.pool.close()
        for conn in list(self.mux):
            conn.drain("client session closed")  # live streams go on; each closes after its last
        for name in list(self.proxies):
            await self._close_proxy(name, reason=reason)
        self.channel.close()
