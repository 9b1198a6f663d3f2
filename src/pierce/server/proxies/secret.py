"""The server side of secret proxies (`pierce.proxies.secret`): the registered proxy of each kind
(stcp, sudp, xtcp, xudp), the owner's verdicts it waits for, and `serve_visit`.

Imported with the first secret proxy or visitor (`pierce.server.proxies.registry` tells the kinds apart
until then, by their type)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import ClassVar

from pierce.addr import format_sockaddr
from pierce.errors import PierceError
from pierce.logs import event
from pierce.protocol import (
    ErrorCode,
    P2pAnswer,
    P2pRequest,
    SecretKind,
    StartWork,
    UnexpectedMessage,
    Visit,
    VisitAnswer,
    VisitChallenge,
    VisitorAnswer,
    VisitorCheck,
    VisitorVerdict,
    VisitReady,
)
from pierce.proxies.base import ProxyOwner, ProxySite, ProxyType
from pierce.proxies.secret import MAX_PENDING_CHECKS, P2P_KINDS, VISIT_CHECK_TIMEOUT, SecretSpec
from pierce.server.proxies.bridge import ChannelVisitor, LiveConnections, bridge, refuse_channel
from pierce.server.proxies.rendezvous import (
    MAX_PENDING_ANSWERS,
    OFFER_TIMEOUT,
    P2pCounters,
    refusal,
    serve_rendezvous,
)
from pierce.snapshot import ConnectionPath, ProxyStats
from pierce.transport import MessageChannel

log = logging.getLogger("pierce.proxy")


class SecretProxyServer:
    """A registered secret proxy on the server: the owner's verdicts it waits for and its live visitors."""

    type: ClassVar[ProxyType]
    kind: ClassVar[SecretKind]

    def __init__(self, name: str, owner: ProxyOwner) -> None:
        self.name = name
        self.owner = owner
        #: Secret proxies hold no port; `ProxyReady` says 0.
        self.port = 0
        self.urls: list[str] = []
        #: Secret proxies form no groups.
        self.group: None = None
        self.domains: list[str] = []
        self.live = LiveConnections()
        #: The path the latest P2P visitor reported taking (`pierce.server.proxies.rendezvous`).
        self.path = ConnectionPath.RELAY
        self._checks: dict[int, asyncio.Future[VisitorVerdict]] = {}
        #: P2P rendezvous waiting for the owner's `P2pAnswer`, by visit id.
        self._p2p: dict[str, asyncio.Future[P2pAnswer]] = {}
        self._check_serial = 0
        self._closed = False

    @classmethod
    def create(cls, name: str, spec: SecretSpec, site: ProxySite) -> SecretProxyServer:
        return cls(name, site.owner)

    def stats(self) -> ProxyStats:
        return self.live.stats()

    def refusal(self, code: ErrorCode, reason: str) -> VisitorVerdict:
        """A verdict that turns a visitor of this proxy away."""
        return VisitorVerdict(proxy=self.name, check_id=0, code=code, reason=reason)

    async def check(
        self,
        visit: Visit,
        channel: MessageChannel,
        *,
        visit_id: str,
        visitor_user: str,
        visitor_id: str,
        visitor: tuple[str, int],
    ) -> VisitorVerdict:
        """Run the visitor's proof past the owner, relaying a fresh exchange when there is one; a
        verdict with a code when the visitor may not pass (or the owner does not answer)."""
        if self._closed:
            return self.refusal(ErrorCode.UNKNOWN_PROXY, f"proxy {self.name!r} is closing")
        if len(self._checks) >= MAX_PENDING_CHECKS:
            return self.refusal(ErrorCode.LIMIT_REACHED, f"too many visitors of {self.name!r} being checked")
        self._check_serial += 1
        check_id = self._check_serial
        first = VisitorCheck(
            proxy=self.name,
            check_id=check_id,
            kind=visit.kind,
            visitor_user=visitor_user,
            visitor_id=visitor_id,
            visitor_host=visitor[0],
            visitor_port=visitor[1],
            visit_id=visit_id,
            pake=visit.pake,
            ticket=visit.ticket,
            nonce=visit.nonce,
            proof=visit.proof,
        )
        verdict = await self._ask(first, check_id)
        if verdict.code is not None or not verdict.pake:
            return verdict
        # A fresh exchange: the owner's challenge goes to the visitor, its answer back to the owner.
        await channel.send(VisitChallenge(salt=verdict.salt, pake=verdict.pake))
        try:
            async with asyncio.timeout(VISIT_CHECK_TIMEOUT):
                answer = await channel.recv()
        except TimeoutError:
            return self.refusal(ErrorCode.TIMEOUT, f"no answer from the visitor in {VISIT_CHECK_TIMEOUT:g}s")
        if not isinstance(answer, VisitAnswer):
            raise UnexpectedMessage(answer, "VisitAnswer")
        return await self._ask(
            VisitorAnswer(proxy=self.name, check_id=check_id, proof=answer.proof), check_id
        )

    async def _ask(self, msg: VisitorCheck | VisitorAnswer, check_id: int) -> VisitorVerdict:
        """Send ``msg`` to the owner and wait for its `VisitorVerdict`."""
        waiter: asyncio.Future[VisitorVerdict] = asyncio.get_running_loop().create_future()
        self._checks[check_id] = waiter
        try:
            await self.owner.channel.send(msg)
            async with asyncio.timeout(VISIT_CHECK_TIMEOUT):
                return await waiter
        except TimeoutError:
            return self.refusal(
                ErrorCode.TIMEOUT,
                f"the client serving {self.name!r} did not answer in {VISIT_CHECK_TIMEOUT:g}s",
            )
        except (PierceError, OSError):
            return self.refusal(ErrorCode.UNKNOWN_PROXY, f"the client serving {self.name!r} went away")
        finally:
            self._checks.pop(check_id, None)

    def verdict(self, msg: VisitorVerdict) -> None:
        """The owner answered a `VisitorCheck` (unknown or late answers are ignored)."""
        waiter = self._checks.get(msg.check_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def p2p_ask(self, request: P2pRequest) -> P2pAnswer:
        """Send a visitor's offer to the owner and wait for its `P2pAnswer` (a refusal on a timeout,
        when the owner went away or too many wait)."""
        if self._closed or len(self._p2p) >= MAX_PENDING_ANSWERS or request.visit_id in self._p2p:
            return refusal(request, ErrorCode.LIMIT_REACHED, "too many P2P rendezvous waiting")
        waiter: asyncio.Future[P2pAnswer] = asyncio.get_running_loop().create_future()
        self._p2p[request.visit_id] = waiter
        try:
            await self.owner.channel.send(request)
            async with asyncio.timeout(OFFER_TIMEOUT):
                return await waiter
        except TimeoutError:
            return refusal(request, ErrorCode.TIMEOUT, f"the owner did not answer in {OFFER_TIMEOUT:g}s")
        except (PierceError, OSError):
            return refusal(request, ErrorCode.UNKNOWN_PROXY, f"the client serving {self.name!r} went away")
        finally:
            self._p2p.pop(request.visit_id, None)

    def p2p_answer(self, msg: P2pAnswer) -> None:
        """The owner answered a `P2pRequest` (unknown or late answers are ignored)."""
        waiter = self._p2p.get(msg.visit_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def serve(
        self, channel: MessageChannel, visitor: tuple[str, int], visitor_id: str, ready: VisitReady
    ) -> None:
        """Pair an accepted visitor with a work connection of the owner and relay until both ends finish."""
        # Confirmed: the visitor hears `VisitReady` only on a live work connection, so a dead pooled one
        # never loses its bytes (the visitor reads none from its application before).
        start = StartWork(proxy=self.name, visitor_host=visitor[0], visitor_port=visitor[1], confirm=True)
        await bridge(
            self.name,
            self.owner,
            self.live,
            ChannelVisitor(channel, visitor, ready),
            start,
            visitor_id=visitor_id,
            type=self.type.value,
        )

    async def close(self) -> None:
        """Refuse the visitors being checked and end the live ones."""
        self._closed = True
        for waiter in self._checks.values():
            if not waiter.done():
                waiter.set_result(self.refusal(ErrorCode.UNKNOWN_PROXY, f"proxy {self.name!r} was closed"))
        for visit_id, answer in self._p2p.items():
            if not answer.done():
                answer.set_result(
                    P2pAnswer(
                        proxy=self.name,
                        visit_id=visit_id,
                        code=ErrorCode.UNKNOWN_PROXY,
                        reason=f"proxy {self.name!r} was closed",
                    )
                )
        await self.live.close()


async def serve_visit(
    lookup: Callable[[str], SecretProxyServer | None],
    channel: MessageChannel,
    visit: Visit,
    *,
    visit_id: str,
    visitor_user: str,
    visitor_id: str,
    visitor: tuple[str, int],
    stun_port: int = 0,
    p2p: P2pCounters | None = None,
) -> None:
    """Serve one logged-in visitor connection that sent ``visit``: refuse it with a reason, relay it,
    or (a P2P visit) run its rendezvous."""
    who = format_sockaddr(visitor)
    proxy = lookup(visit.proxy)
    if proxy is None:
        verdict = VisitorVerdict(
            proxy=visit.proxy,
            check_id=0,
            code=ErrorCode.UNKNOWN_PROXY,
            reason=f"no secret proxy named {visit.proxy!r} on this server",
        )
    elif proxy.kind is not visit.kind:
        verdict = proxy.refusal(
            ErrorCode.UNKNOWN_PROXY,
            f"proxy {visit.proxy!r} is {proxy.kind.value}, this visitor is {visit.kind.value}",
        )
    elif visit.p2p and proxy.kind not in P2P_KINDS:
        verdict = proxy.refusal(ErrorCode.BAD_MESSAGE, f"proxy {visit.proxy!r} is not a P2P proxy")
    else:
        verdict = await proxy.check(
            visit,
            channel,
            visit_id=visit_id,
            visitor_user=visitor_user,
            visitor_id=visitor_id,
            visitor=visitor,
        )
    if verdict.code is not None:
        event(
            log,
            logging.WARNING,
            "visitor.refused",
            f"visitor {who} (user {visitor_user}, {visitor_id}) for proxy {visit.proxy!r} refused: "
            f"{verdict.reason}",
            proxy=visit.proxy,
            visitor=who,
            visitor_id=visitor_id,
            user=visitor_user,
            code=verdict.code.value,
            reason=verdict.reason,
        )
        await refuse_channel(channel, verdict.code, verdict.reason)
        return
    assert proxy is not None
    ready = VisitReady(proxy=proxy.name, proof=verdict.proof, ticket=verdict.ticket, stun_port=stun_port)
    if visit.p2p:
        await channel.send(ready)
        await serve_rendezvous(
            proxy, channel, visit_id=visit_id, visitor=who, stun_port=stun_port, counters=p2p or P2pCounters()
        )
        return
    if visit.check_only:
        try:
            await channel.send(ready)
        finally:
            channel.close()
        return
    await proxy.serve(channel, visitor, visitor_id, ready)


class StcpProxyServer(SecretProxyServer):
    type = ProxyType.STCP
    kind = SecretKind.STCP


class SudpProxyServer(SecretProxyServer):
    type = ProxyType.SUDP
    kind = SecretKind.SUDP


class XtcpProxyServer(SecretProxyServer):
    type = ProxyType.XTCP
    kind = SecretKind.XTCP


class XudpProxyServer(SecretProxyServer):
    type = ProxyType.XUDP
    kind = SecretKind.XUDP
