"""What every secret proxy (stcp, sudp) shares: the server side, the visit, and the owner's verdict.

A secret proxy opens no public port. Its owner registers it (`NewStcpProxy` / `NewSudpProxy`); a visitor
logs in on the server's control port with the token as `Role.VISITOR`, names the proxy and proves that it
knows the proxy's secret (`Visit`). The secret never leaves the owner's client, so the server cannot
check the proof itself: it asks the owner (`VisitorCheck` on the control channel), and only after a
`VisitorVerdict` without a code does it pair the visitor's connection with a work connection of the owner
and relay the two:

    application -> visitor -> TLS -> server -> work connection -> owner's client -> local service

Both hops carry the data as chunks over TLS (or a plain work connection), so half-close passes end to
end. An stcp stream carries the application's bytes; an sudp stream carries `UdpPacket` frames.

Server side: `SecretProxyServer` (its kinds subclass it) and `serve_visit`. Owner side: `check_visitor`
(the verdict, and the log line of a refused visitor); the kind modules serve accepted visitors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import ClassVar

import msgspec

from pierce.addr import format_sockaddr
from pierce.errors import InvalidValue, PierceError
from pierce.logs import event
from pierce.protocol import (
    ErrorCode,
    SecretKind,
    StartWork,
    Visit,
    VisitorCheck,
    VisitorVerdict,
    VisitReady,
    verify_visitor_proof,
)
from pierce.proxies.base import ProxyOwner, ProxySite, ProxySpec, ProxyType, check_proxy, masked_repr
from pierce.proxies.bridge import ChannelVisitor, LiveConnections, bridge, refuse_channel
from pierce.snapshot import ProxyStats
from pierce.transport import MessageChannel

log = logging.getLogger("pierce.proxy")

#: Seconds the server waits for the owner's `VisitorVerdict`.
VISIT_CHECK_TIMEOUT = 10.0
#: Checks one proxy may have waiting for the owner's verdict; visitors beyond it are refused.
MAX_PENDING_CHECKS = 256


class SecretProxyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What the configs of secret proxies share (the kinds add their tag and options)."""

    #: The kind's secret kind, for `check_visitor`.
    secret_kind: ClassVar[SecretKind]

    name: str
    local_ip: str = "127.0.0.1"
    local_port: int
    #: Shared with the visitors; it never leaves this client (visitors send an HMAC proof of it).
    secret_key: str
    #: Client ids of the visitors allowed in; empty or ``"*"`` lets in every visitor with the secret.
    allow_users: list[str] = []

    def __post_init__(self) -> None:
        check_proxy(self.name, self.local_port)
        if not self.secret_key:
            raise InvalidValue("secret_key", "expected a non-empty secret shared with the visitors")

    def __repr__(self) -> str:
        return masked_repr(self)


class SecretSpec(ProxySpec, frozen=True, kw_only=True):
    """Register a secret proxy: no public port; visitors reach it through the control port.

    The secret stays with the client, which checks each visitor's proof (`VisitorCheck`).
    """


# -- server side ------------------------------------------------------------------------------------


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
        self.live = LiveConnections()
        self._checks: dict[int, asyncio.Future[VisitorVerdict]] = {}
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
        self, visit: Visit, *, visit_id: str, visitor_id: str, visitor: tuple[str, int]
    ) -> VisitorVerdict:
        """Ask the owner whether this visitor may pass; a verdict with a code when not (or no answer)."""
        if self._closed:
            return self.refusal(ErrorCode.UNKNOWN_PROXY, f"proxy {self.name!r} is closing")
        if len(self._checks) >= MAX_PENDING_CHECKS:
            return self.refusal(ErrorCode.LIMIT_REACHED, f"too many visitors of {self.name!r} being checked")
        self._check_serial += 1
        check_id = self._check_serial
        waiter: asyncio.Future[VisitorVerdict] = asyncio.get_running_loop().create_future()
        self._checks[check_id] = waiter
        try:
            await self.owner.channel.send(
                VisitorCheck(
                    proxy=self.name,
                    check_id=check_id,
                    kind=visit.kind,
                    visitor_id=visitor_id,
                    visitor_host=visitor[0],
                    visitor_port=visitor[1],
                    visit_id=visit_id,
                    client_nonce=visit.client_nonce,
                    proof=visit.proof,
                )
            )
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

    async def serve(self, channel: MessageChannel, visitor: tuple[str, int], visitor_id: str) -> None:
        """Pair an accepted visitor with a work connection of the owner and relay until both ends finish."""
        start = StartWork(proxy=self.name, visitor_host=visitor[0], visitor_port=visitor[1])
        await bridge(
            self.name,
            self.owner,
            self.live,
            ChannelVisitor(channel, visitor, self.name),
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
        await self.live.close()


async def serve_visit(
    lookup: Callable[[str], SecretProxyServer | None],
    channel: MessageChannel,
    visit: Visit,
    *,
    visit_id: str,
    visitor_id: str,
    visitor: tuple[str, int],
) -> None:
    """Serve one logged-in visitor connection that sent ``visit``: refuse it with a reason, or relay it."""
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
    else:
        verdict = await proxy.check(visit, visit_id=visit_id, visitor_id=visitor_id, visitor=visitor)
    if verdict.code is not None:
        event(
            log,
            logging.WARNING,
            "visitor.refused",
            f"visitor {who} ({visitor_id}) for proxy {visit.proxy!r} refused: {verdict.reason}",
            proxy=visit.proxy,
            visitor=who,
            visitor_id=visitor_id,
            code=verdict.code.value,
            reason=verdict.reason,
        )
        await refuse_channel(channel, verdict.code, verdict.reason)
        return
    assert proxy is not None
    if visit.check_only:
        try:
            await channel.send(VisitReady(proxy=proxy.name))
        finally:
            channel.close()
        return
    await proxy.serve(channel, visitor, visitor_id)


# -- owner side -------------------------------------------------------------------------------------


def check_visitor(config: object, msg: VisitorCheck) -> VisitorVerdict:
    """The owner's verdict on a visitor: secret proof, kind and ``allow_users``; a refusal is logged.

    ``config`` is the owner's config of the proxy the visitor names (None when there is none).
    """
    code: ErrorCode | None = None
    reason = ""
    secret = config if isinstance(config, SecretProxyConfig) else None
    if secret is None or secret.secret_kind is not msg.kind:
        code, reason = ErrorCode.UNKNOWN_PROXY, f"this client serves no {msg.kind.value} proxy {msg.proxy!r}"
    elif not verify_visitor_proof(
        secret.secret_key, msg.proof, proxy=msg.proxy, visit_id=msg.visit_id, client_nonce=msg.client_nonce
    ):
        code, reason = ErrorCode.AUTH_FAILED, f"wrong secret for proxy {msg.proxy!r}"
    else:
        allowed = secret.allow_users
        if allowed and "*" not in allowed and msg.visitor_id not in allowed:
            code = ErrorCode.NOT_ALLOWED
            reason = f"client id {msg.visitor_id!r} is not in allow_users of proxy {msg.proxy!r}"
    who = format_sockaddr((msg.visitor_host, msg.visitor_port))
    if code is not None:
        event(
            log,
            logging.WARNING,
            "visitor.refused",
            f"proxy {msg.proxy}: refused visitor {who} ({msg.visitor_id}): {reason}",
            proxy=msg.proxy,
            visitor=who,
            visitor_id=msg.visitor_id,
            code=code.value,
            reason=reason,
        )
    else:
        event(
            log,
            logging.DEBUG,
            "visitor.accepted",
            f"proxy {msg.proxy}: visitor {who} ({msg.visitor_id}) accepted",
            proxy=msg.proxy,
            visitor=who,
            visitor_id=msg.visitor_id,
        )
    return VisitorVerdict(proxy=msg.proxy, check_id=msg.check_id, code=code, reason=reason)
