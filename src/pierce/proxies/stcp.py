"""Secret TCP proxies (stcp), and what every secret proxy (stcp and sudp) shares on the server.

A secret proxy opens no public port. Its owner registers it (`NewStcpProxy` / `NewSudpProxy`); a visitor
logs in on the server's control port with the token as `Role.VISITOR`, names the proxy and proves that it
knows the proxy's secret (`Visit`). The secret never leaves the owner's client, so the server cannot
check the proof itself: it asks the owner (`VisitorCheck` on the control channel), and only after a
`VisitorVerdict` without a code does it pair the visitor's connection with a work connection of the owner
and relay the two:

    application -> visitor -> TLS -> server -> work connection -> owner's client -> local service

Both hops carry the data as `FramedEnd` chunks over TLS (or a plain work connection), so half-close
passes end to end. sudp (`pierce.proxies.sudp`) takes the same path; its stream carries `UdpPacket`
frames instead of a byte stream.

Server side: `SecretProxyServer` and `serve_visit`. Owner side: `check_visitor` (the verdict, and the
log line of a refused visitor); an accepted stcp visitor is served by `pierce.proxies.tcp.serve_tcp_work`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from pierce.addr import format_sockaddr
from pierce.config import ProxyConfig, StcpProxyConfig, SudpProxyConfig
from pierce.errors import PierceError
from pierce.logs import event, log_relay_closed
from pierce.protocol import (
    Error,
    ErrorCode,
    SecretKind,
    StartWork,
    Visit,
    VisitorCheck,
    VisitorVerdict,
    VisitReady,
    verify_visitor_proof,
)
from pierce.relay import RelayStats, relay
from pierce.transport import MessageChannel, StreamChannel

log = logging.getLogger("pierce.proxy")

#: Seconds the server waits for the owner's `VisitorVerdict`.
VISIT_CHECK_TIMEOUT = 10.0
#: Checks one proxy may have waiting for the owner's verdict; visitors beyond it are refused.
MAX_PENDING_CHECKS = 256


class SecretOwner(Protocol):
    """What a secret proxy needs from its owner's session on the server."""

    client_id: str
    channel: MessageChannel

    async def take_work_conn(self) -> Any: ...


def kind_of(config: ProxyConfig) -> SecretKind | None:
    """The secret kind of a proxy config, or None for a proxy with a public port."""
    if isinstance(config, StcpProxyConfig):
        return SecretKind.STCP
    if isinstance(config, SudpProxyConfig):
        return SecretKind.SUDP
    return None


# -- server side ------------------------------------------------------------------------------------


class SecretProxyServer:
    """A registered secret proxy on the server: the owner's verdicts it waits for and its live visitors."""

    #: Secret proxies hold no port; `ProxyReady` says 0.
    port = 0

    def __init__(self, name: str, kind: SecretKind, owner: SecretOwner) -> None:
        self.name = name
        self.kind = kind
        self.owner = owner
        self.live: set[RelayStats] = set()
        self._checks: dict[int, asyncio.Future[VisitorVerdict]] = {}
        self._check_serial = 0
        self._serving: set[asyncio.Task[Any]] = set()
        self._closed = False

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

    async def serve(self, channel: StreamChannel, visitor: tuple[str, int], visitor_id: str) -> None:
        """Pair an accepted visitor with a work connection of the owner and relay until both ends finish."""
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            await self._serve(channel, visitor, visitor_id)
        finally:
            self._serving.discard(task)

    async def _serve(self, channel: StreamChannel, visitor: tuple[str, int], visitor_id: str) -> None:
        who = format_sockaddr(visitor)
        started = time.monotonic()
        try:
            work = await self.owner.take_work_conn()
        except (TimeoutError, asyncio.CancelledError) as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                channel.close()
                raise
            reason = f"no work connection from the client serving {self.name!r} in time"
            await _refuse(channel, ErrorCode.TIMEOUT, reason)
            event(
                log, logging.WARNING, "proxy.no_work_conn", f"{self.name}: {who}: {reason}", proxy=self.name
            )
            return
        try:
            end = await work.start(
                StartWork(proxy=self.name, visitor_host=visitor[0], visitor_port=visitor[1])
            )
            await channel.send(VisitReady(proxy=self.name))
        except asyncio.CancelledError:
            work.close()
            channel.close()
            raise
        except (PierceError, OSError) as exc:
            work.close()
            channel.close()
            event(
                log,
                logging.WARNING,
                "proxy.work_failed",
                f"{self.name}: {who}: {exc}",
                proxy=self.name,
                client=who,
                error=str(exc),
            )
            return
        event(
            log,
            logging.INFO,
            "proxy.open",
            f"{self.name}: visitor {who} ({visitor_id})",
            proxy=self.name,
            client=who,
            visitor_id=visitor_id,
            type=self.kind.value,
            work_conn=work.serial,
        )
        stats = RelayStats(started=started)
        self.live.add(stats)
        try:
            await relay(channel.into_end(), end, stats)
        finally:
            self.live.discard(stats)
        target = f"client {self.owner.client_id}"
        log_relay_closed(
            log, "proxy.close", self.name, who, target, stats, proxy=self.name, visitor_id=visitor_id
        )

    async def close(self) -> None:
        """Refuse the visitors being checked and end the live ones."""
        self._closed = True
        for waiter in self._checks.values():
            if not waiter.done():
                waiter.set_result(self.refusal(ErrorCode.UNKNOWN_PROXY, f"proxy {self.name!r} was closed"))
        tasks = list(self._serving)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _refuse(channel: MessageChannel, code: ErrorCode, reason: str) -> None:
    with contextlib.suppress(PierceError, OSError):
        await channel.send(Error(code=code, reason=reason))
    channel.close()


async def serve_visit(
    lookup: Callable[[str], SecretProxyServer | None],
    channel: StreamChannel,
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
        await _refuse(channel, verdict.code, verdict.reason)
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


def check_visitor(config: ProxyConfig | None, msg: VisitorCheck) -> VisitorVerdict:
    """The owner's verdict on a visitor: secret proof, kind and ``allow_users``; a refusal is logged."""
    code: ErrorCode | None = None
    reason = ""
    secret = config if isinstance(config, StcpProxyConfig | SudpProxyConfig) else None
    if secret is None or kind_of(secret) is not msg.kind:
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
