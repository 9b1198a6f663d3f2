"""The owner's side of P2P: answer a visitor's rendezvous, punch, and serve its QUIC streams.

`OwnerP2p` belongs to the client (it outlives reconnects of the control channel, and so do the direct
paths it holds). For a `P2pRequest` it checks that the visit was accepted for an xtcp/xudp proxy of this
client (`pierce.proxies.visitor_auth.OwnerExchanges.visit_key`), gathers candidates on a fresh UDP
socket, answers with its sealed offer, and on `P2pStart` punches and accepts the visitor's QUIC
connection. Every stream the visitor opens is served like a work connection of that proxy (the local
service gets the visitor's bytes; an xudp stream carries `UdpPacket` frames as an sudp tunnel does).

For a proxy with ``direct = "auto"`` the attempt also asks the router in front of this host to map a
public UDP port to its socket, while the socket gathers its candidates (`pierce.p2p.portmapping`): a
mapping whose address is public is offered as one more candidate, kept while the attempt and its path
live, and deleted when they end.

Every client has an `OwnerP2p`, most never use it: the punching, gathering and direct-path code
(`pierce.nat.punch`, `pierce.p2p.*`) and QUIC (aioquic) are imported by the first attempt, `cryptography`
when the process first makes its identity (`pierce.p2p.identity`), the port mapping client
(`pierce.portmap`) by the first attempt of a proxy with ``direct = "auto"``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from pierce.addr import HostPort
from pierce.errors import PierceError
from pierce.logs import event
from pierce.protocol import ErrorCode, P2pAnswer, P2pRequest, P2pStart, StartWork
from pierce.protocol.auth import p2p_key
from pierce.protocol.p2p import BadOffer, Offer, open_offer, seal
from pierce.relay import End
from pierce.snapshot import ConnectionPath
from pierce.transport import MessageChannel

if TYPE_CHECKING:
    from pierce.config import P2pOptions, PortMappingOptions
    from pierce.nat.punch import PunchSettings
    from pierce.p2p.direct import DirectPath
    from pierce.p2p.portmapping import HeldMapping, PathMappings
    from pierce.p2p.quic import QuicPath
    from pierce.p2p.settings import PathSettings
    from pierce.proxies.visitor_auth import OwnerExchanges

log = logging.getLogger("pierce.p2p")

#: Direct paths one client holds or sets up at once: UDP paths (a socket and a QUIC connection each),
#: rendezvous in progress and direct TCP connections waiting for their visitor.
MAX_DIRECT_PATHS = 256
#: Seconds between the answer and `P2pStart` before the attempt is dropped.
START_TIMEOUT = 15.0
QUIC_TIMEOUT = 5.0
#: Seconds a new stream may take to say `GO` (the visitor sends it first thing).
HANDOFF_TIMEOUT = 10.0

#: Serves one stream of a proxy: (config, start, end) -> coroutine (`pierce.proxies.registry.work_handler`).
StreamHandler = Callable[[Any, StartWork, End], Coroutine[Any, Any, None] | None]


async def _closing(work: Coroutine[Any, Any, None], quic: QuicPath) -> None:
    """Serve an xudp path's datagrams; when that ends, so does the path."""
    try:
        await work
    finally:
        quic.close()


async def _release(mapping: asyncio.Task[HeldMapping | None]) -> None:
    """The attempt or its path ended: delete the router's mapping of its socket (or stop asking)."""
    if not mapping.done():
        mapping.cancel()  # PathMappings deletes what the router still grants
        await asyncio.gather(mapping, return_exceptions=True)
        return
    held = None if mapping.cancelled() or mapping.exception() is not None else mapping.result()
    if held is not None:
        await held.close()


class OwnerP2p:
    def __init__(
        self,
        exchanges: OwnerExchanges,
        proxies: Callable[[], dict[str, Any]],
        handler: StreamHandler,
        *,
        server_host: Callable[[], str],
        options: P2pOptions,
        state_dir: Path,
        encrypt_data: Callable[[], bool] = lambda: True,
        port_mapping: PortMappingOptions | None = None,
    ) -> None:
        self.exchanges = exchanges
        self.proxies = proxies
        self.handler = handler
        self.server_host = server_host
        #: ``[p2p]``, and where `pierce nat --lifetime` records what it measured (`pierce.p2p.keepalive`).
        self.options = options
        self.state_dir = state_dir
        self._tunables: tuple[PunchSettings, PathSettings, dict[str, float]] | None = None
        #: Whether a direct TCP path is encrypted (``transport.encrypt_data``; the visitor follows).
        self.encrypt_data = encrypt_data
        self.paths: dict[str, DirectPath] = {}
        self._starts: dict[str, asyncio.Future[P2pStart]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Direct TCP connections waiting for a visitor connection to take them.
        self._pooled = 0
        #: ``[port_mapping]``: how proxies with ``direct = "auto"`` ask the router for their mappings.
        self.port_mapping = port_mapping
        self._mappings: PathMappings | None = None

    def tunables(self) -> tuple[PunchSettings, PathSettings, dict[str, float]]:
        """The punch's and QUIC's settings from ``[p2p]``, and the mapping lifetimes measured by public
        address: worked out at the first attempt, when the code that punches loads."""
        if self._tunables is None:
            from pierce.p2p.direct import path_settings, punch_settings
            from pierce.p2p.keepalive import load

            self._tunables = (
                punch_settings(self.options),
                path_settings(self.options),
                load(self.state_dir),
            )
        return self._tunables

    @property
    def mappings(self) -> PathMappings:
        """The router port mappings of the direct paths (made, with its client, at the first use)."""
        if self._mappings is None:
            from pierce.config import PortMappingOptions
            from pierce.p2p.portmapping import PathMappings

            self._mappings = PathMappings(self.port_mapping or PortMappingOptions())
        return self._mappings

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request(self, msg: P2pRequest, channel: MessageChannel) -> None:
        """A visitor's rendezvous arrived on the control channel; answered on ``channel``."""
        self._spawn(self._guarded(msg, channel), f"p2p {msg.proxy}")

    async def _guarded(self, msg: P2pRequest, channel: MessageChannel) -> None:
        try:
            await self._attempt(msg, channel)
        except (PierceError, OSError) as exc:  # the control channel went away mid-answer
            event(
                log,
                logging.DEBUG,
                "p2p.failed",
                f"proxy {msg.proxy}: rendezvous ended: {exc}",
                proxy=msg.proxy,
                reason=str(exc),
            )

    def start(self, msg: P2pStart) -> None:
        waiter = self._starts.get(msg.visit_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def _attempt(self, msg: P2pRequest, channel: MessageChannel) -> None:
        # The punching and path code (and aioquic) load with the first attempt, never at start.
        from pierce.nat.punch import Role
        from pierce.p2p.datagrams import DatagramEnd
        from pierce.p2p.direct import DirectPath, NoHole, punch_hole
        from pierce.p2p.gather import gather_udp, mapped_to_wire, to_wire
        from pierce.p2p.handoff import take_over
        from pierce.p2p.identity import process_identity
        from pierce.p2p.keepalive import tuned
        from pierce.p2p.quic import QuicPath
        from pierce.proxies.base import DirectMode
        from pierce.proxies.xtcp import XtcpProxyConfig
        from pierce.proxies.xudp import XudpProxyConfig

        def no(code: ErrorCode, reason: str) -> P2pAnswer:
            return P2pAnswer(proxy=msg.proxy, visit_id=msg.visit_id, code=code, reason=reason)

        config = self.proxies().get(msg.proxy)
        ticket_key = self.exchanges.visit_key(msg.visit_id, msg.proxy)
        if not isinstance(config, XtcpProxyConfig | XudpProxyConfig):
            await channel.send(no(ErrorCode.UNKNOWN_PROXY, f"this client serves no P2P proxy {msg.proxy!r}"))
            return
        if ticket_key is None:
            await channel.send(no(ErrorCode.AUTH_FAILED, "no accepted visit with that id"))
            return
        if len(self.paths) + len(self._starts) + self._pooled >= MAX_DIRECT_PATHS:
            await channel.send(no(ErrorCode.LIMIT_REACHED, f"{MAX_DIRECT_PATHS} direct paths already"))
            return
        key = p2p_key(ticket_key, proxy=msg.proxy, visit_id=msg.visit_id)
        try:
            theirs = open_offer(msg.offer, msg.mac, key, owner=False)
        except BadOffer as exc:
            await channel.send(no(ErrorCode.BAD_MESSAGE, str(exc)))
            return
        if theirs.want == "tcp":
            if not isinstance(config, XtcpProxyConfig):
                await channel.send(no(ErrorCode.BAD_MESSAGE, "a direct TCP path is for xtcp proxies only"))
                return
            await self._attempt_tcp(msg, channel, config, key, theirs)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        waiter: asyncio.Future[P2pStart] = asyncio.get_running_loop().create_future()
        self._starts[msg.visit_id] = waiter
        kept = False
        #: direct = "auto": the router's mapping of the socket, asked for while the socket gathers.
        mapping: asyncio.Task[HeldMapping | None] | None = None
        try:
            sock.bind(("0.0.0.0", 0))
            if config.direct is DirectMode.AUTO:
                mapping = asyncio.get_running_loop().create_task(
                    self.mappings.request(sock.getsockname()[1], msg.proxy)
                )
            stun = (self.server_host(), msg.stun_port) if msg.stun_port else None
            gathered = await gather_udp(sock, stun)
            held = await mapping if mapping is not None else None
            if held is not None:
                gathered = msgspec.structs.replace(
                    gathered, candidates=[*gathered.candidates, held.candidate]
                )
            settings, path_settings = tuned(*self.tunables(), gathered.reflexive)
            identity = process_identity()
            ours = Offer(
                candidates=to_wire(gathered.candidates),
                mapping=gathered.mapping.value if gathered.mapping else "",
                fingerprint=identity.fingerprint,
                mapped=mapped_to_wire(gathered.candidates),
            )
            data, tag = seal(ours, key, owner=True)
            await channel.send(P2pAnswer(proxy=msg.proxy, visit_id=msg.visit_id, offer=data, mac=tag))
            async with asyncio.timeout(START_TIMEOUT):
                start = await waiter
            try:
                hole = await punch_hole(
                    Role.CONTROLLED,
                    sock,
                    visit_id=msg.visit_id,
                    key=key,
                    local=gathered,
                    remote=theirs,
                    settings=settings,
                    stun_asked=msg.stun_port != 0,
                    delay=start.delay_ms / 1000,
                )
            except NoHole as exc:
                event(
                    log,
                    logging.INFO,
                    "p2p.failed",
                    f"proxy {msg.proxy}: no direct path to the visitor ({exc})",
                    proxy=msg.proxy,
                    proto="udp",
                    reason=str(exc),
                )
                return
            if mapping is not None and hole.sock is not sock:  # a prediction socket won: not the mapped one
                await _release(mapping)
                mapping = None
            sock, peer, kind, after = hole.sock, hole.peer, hole.kind, hole.after
            visitor = f"{peer[0]}:{peer[1]}"

            start_work = StartWork(proxy=msg.proxy, visitor_host=peer[0], visitor_port=peer[1])
            datagrams: list[DatagramEnd] = []  # xudp: the one datagram end, once the path is up

            async def serve(end: End) -> None:
                if datagrams:  # xudp: the visitor's stream for large datagrams
                    datagrams[0].attach_stream(end)
                    await datagrams[0].finished.wait()
                    return
                if not await take_over(end, HANDOFF_TIMEOUT):
                    return
                work = self.handler(config, start_work, end)
                if work is None:
                    end.close()
                    return
                await work

            def on_datagram(data: bytes) -> None:
                if datagrams:
                    datagrams[0].deliver(data)

            try:
                quic = await QuicPath.accept(
                    sock,
                    peer,
                    identity=identity,
                    key=key,
                    on_stream=serve,
                    timeout=QUIC_TIMEOUT,
                    on_other=after.on_other,
                    on_datagram=on_datagram,
                    settings=path_settings,
                )
            except BaseException:
                after.close()
                raise
            kept = True
            if isinstance(config, XudpProxyConfig):
                datagrams.append(DatagramEnd(quic))
                work = self.handler(config, start_work, datagrams[0])
                if work is not None:
                    self._spawn(_closing(work, quic), f"p2p {msg.proxy} datagrams")
            direct = DirectPath(quic, kind, hole.elapsed, msg.proxy)
            self.paths[msg.visit_id] = direct
            event(
                log,
                logging.INFO,
                "p2p.direct",
                f"proxy {msg.proxy}: direct path to visitor {visitor} ({kind.value}) after "
                f"{hole.elapsed * 1000:.0f} ms",
                proxy=msg.proxy,
                visitor=visitor,
                conn_path=kind.value,
                proto="udp",
                elapsed_ms=round(hole.elapsed * 1000),
                keepalive_s=quic.keepalive_s,
            )
            try:
                await quic.wait_closed()
            finally:
                after.close()
                quic.close()
                sock.close()
                self.paths.pop(msg.visit_id, None)
                event(
                    log,
                    logging.INFO,
                    "p2p.closed",
                    f"proxy {msg.proxy}: direct path to visitor {visitor} closed: {quic.reason}",
                    proxy=msg.proxy,
                    visitor=visitor,
                    reason=quic.reason,
                )
        except (TimeoutError, PierceError, OSError, ssl.SSLError) as exc:
            event(
                log,
                logging.INFO,
                "p2p.failed",
                f"proxy {msg.proxy}: direct path attempt ended: {exc or type(exc).__name__}",
                proxy=msg.proxy,
                reason=str(exc) or type(exc).__name__,
            )
        finally:
            self._starts.pop(msg.visit_id, None)
            if not kept:
                sock.close()
            if mapping is not None:
                await _release(mapping)

    async def _attempt_tcp(
        self, msg: P2pRequest, channel: MessageChannel, config: Any, key: bytes, theirs: Offer
    ) -> None:
        """One direct TCP connection for a visitor's pool: candidates from one fixed port, the
        simultaneous open (or LAN connect), then TLS or the plain proofs. The connection waits for the
        visitor's handoff before the local service is connected (a pooled one may wait a while)."""
        from pierce.p2p.gather import from_wire, to_wire
        from pierce.p2p.handoff import take_over
        from pierce.p2p.identity import process_identity
        from pierce.p2p.tcp_direct import connect_direct, secure_owner
        from pierce.p2p.tcp_pool import POOL_IDLE_MAX, reserved_port, tcp_candidates
        from pierce.proxies.xtcp import XtcpProxyConfig

        assert isinstance(config, XtcpProxyConfig)
        waiter: asyncio.Future[P2pStart] = asyncio.get_running_loop().create_future()
        self._starts[msg.visit_id] = waiter
        encrypt = self.encrypt_data()
        try:
            with reserved_port() as port:
                stun = HostPort(self.server_host(), msg.stun_port) if msg.stun_port else None
                candidates = await tcp_candidates(port, stun)
                identity = process_identity()
                ours = Offer(
                    candidates=to_wire(candidates, "tcp"),
                    fingerprint=identity.fingerprint,
                    encrypt=encrypt,
                    want="tcp",
                )
                data, tag = seal(ours, key, owner=True)
                await channel.send(P2pAnswer(proxy=msg.proxy, visit_id=msg.visit_id, offer=data, mac=tag))
                async with asyncio.timeout(START_TIMEOUT):
                    start = await waiter
                loop = asyncio.get_running_loop()
                start_at = loop.time() + start.delay_ms / 1000
                sock, candidate, kind = await connect_direct(
                    "owner",
                    port,
                    from_wire(theirs.candidates, "tcp"),
                    start_at=start_at,
                    deadline=start_at + self.tunables()[0].budget_s,
                    opening_ttl=self.tunables()[0].opening_ttl,
                )
            end = await secure_owner(sock, identity, key, encrypt=encrypt)
        except (TimeoutError, PierceError, OSError, ssl.SSLError) as exc:
            event(
                log,
                logging.INFO,
                "p2p.failed",
                f"proxy {msg.proxy}: direct TCP attempt ended: {exc or type(exc).__name__}",
                proxy=msg.proxy,
                reason=str(exc) or type(exc).__name__,
            )
            return
        finally:
            self._starts.pop(msg.visit_id, None)
        path = ConnectionPath.DIRECT_LAN if kind == "lan" else ConnectionPath.DIRECT_TCP
        visitor = f"{candidate.host}:{candidate.port}"
        self._pooled += 1
        try:
            taken = await take_over(end, POOL_IDLE_MAX)
        finally:
            self._pooled -= 1
        if not taken:
            return
        start_work = StartWork(proxy=msg.proxy, visitor_host=candidate.host, visitor_port=candidate.port)
        work = self.handler(config, start_work, end)
        if work is None:
            end.close()
            return
        event(
            log,
            logging.DEBUG,
            "p2p.direct",
            f"proxy {msg.proxy}: a visitor connection from {visitor} over {path.value}",
            proxy=msg.proxy,
            visitor=visitor,
            conn_path=path.value,
            proto="tcp",
        )
        await work

    def by_proxy(self) -> dict[str, list[DirectPath]]:
        """The live direct paths of each proxy, oldest first."""
        found: dict[str, list[DirectPath]] = {}
        for path in self.paths.values():
            found.setdefault(path.proxy, []).append(path)
        return found

    async def close(self) -> None:
        for path in list(self.paths.values()):
            path.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._mappings is not None:
            await self._mappings.close()
