"""A visit: one connection to the server's control port that the owner of a secret proxy accepted.

The visitor logs in (`Dialer.visitor`), names the proxy in `Visit` and proves the secret to the owner
through the server (`pierce.proxies.visitor_auth`): with a ticket from an earlier exchange one HMAC each
way, otherwise the SRP exchange first. The owner proves the secret back before any data is sent.
"""

from __future__ import annotations

import asyncio

import msgspec

from pierce.client.session import Dialer, ServerUnreachable
from pierce.config import VisitorConfig
from pierce.errors import LocalError
from pierce.handshake import AuthenticationFailed
from pierce.protocol import (
    Error,
    ErrorCode,
    Refused,
    UnexpectedMessage,
    Visit,
    VisitAnswer,
    VisitChallenge,
    VisitReady,
    new_nonce,
)
from pierce.protocol.auth import owner_proof, verify, visit_proof
from pierce.protocol.pake import PakeClient, PakeFailed
from pierce.proxies.visitor_auth import VisitorTickets, ticket_key
from pierce.transport import StreamChannel

#: Seconds to wait for the server's answer to `Visit` (it asks the proxy's owner, then takes a work
#: connection: each may take up to 10 s on the server).
VISIT_TIMEOUT = 30.0


async def open_visit(
    dialer: Dialer, config: VisitorConfig, tickets: VisitorTickets, *, check_only: bool = False
) -> StreamChannel:
    """A visitor connection the server accepted (`VisitReady` read and the owner's proof checked):
    data may flow on it.

    With a ticket from an earlier exchange the visit costs one HMAC each way; without one (or when the
    owner no longer knows it) it runs the SRP exchange with the owner first. Raises Refused with the
    reason, AuthenticationFailed when the owner cannot prove the secret, or another PierceError when
    the server cannot be reached or the login fails.
    """
    return (await accepted_visit(dialer, config, tickets, check_only=check_only)).channel


class Accepted(msgspec.Struct, frozen=True):
    """An accepted visit: its connection, the visit id, the server's answer and the key the visitor
    shares with the owner (the ticket key)."""

    channel: StreamChannel
    visit_id: str
    ready: VisitReady
    key: bytes


async def accepted_visit(
    dialer: Dialer,
    config: VisitorConfig,
    tickets: VisitorTickets,
    *,
    check_only: bool = False,
    p2p: bool = False,
) -> Accepted:
    """`open_visit`, with what a P2P rendezvous needs besides the connection (``p2p``: ask for one)."""
    try:
        return await _visit(dialer, config, tickets, check_only, p2p)
    except Refused as exc:
        if exc.code is not ErrorCode.UNKNOWN_TICKET:
            raise
        tickets.drop(config.server_name)  # the owner restarted or forgot it: exchange afresh
        return await _visit(dialer, config, tickets, check_only, p2p)


async def _visit(
    dialer: Dialer, config: VisitorConfig, tickets: VisitorTickets, check_only: bool, p2p: bool
) -> Accepted:
    proxy = config.server_name
    try:
        channel, visit_id = await dialer.visitor()
    except (OSError, TimeoutError) as exc:
        raise ServerUnreachable(
            f"cannot reach the server {dialer.server}: {exc or type(exc).__name__}"
        ) from exc
    try:
        async with asyncio.timeout(VISIT_TIMEOUT):
            held = tickets.get(proxy)
            if held is not None:
                ticket, key = held
                nonce = new_nonce()
                await channel.send(
                    Visit(
                        proxy=proxy,
                        kind=config.secret_kind,
                        ticket=ticket,
                        nonce=nonce,
                        proof=visit_proof(key, proxy=proxy, visit_id=visit_id, nonce=nonce),
                        check_only=check_only,
                        p2p=p2p,
                    )
                )
                ready = await _ready(channel)
                if not verify(owner_proof(key, proxy=proxy, visit_id=visit_id, nonce=nonce), ready.proof):
                    raise AuthenticationFailed(OWNER_UNPROVEN.format(proxy=proxy))
                return Accepted(channel, visit_id, ready, key)
            pake = PakeClient(proxy, config.secret_key)
            await channel.send(
                Visit(proxy=proxy, kind=config.secret_kind, pake=pake.public, check_only=check_only, p2p=p2p)
            )
            challenge = await channel.recv()
            if isinstance(challenge, Error):
                raise Refused(challenge.code, challenge.reason)
            if not isinstance(challenge, VisitChallenge):
                raise UnexpectedMessage(challenge, "VisitChallenge")
            try:
                await channel.send(VisitAnswer(proof=pake.answer(challenge.salt, challenge.pake)))
                ready = await _ready(channel)
                session_key = pake.confirm(ready.proof)
            except PakeFailed:
                raise AuthenticationFailed(OWNER_UNPROVEN.format(proxy=proxy)) from None
            tickets.keep(proxy, ready.ticket, session_key)
            return Accepted(channel, visit_id, ready, ticket_key(session_key, proxy))
    except TimeoutError:
        channel.close()
        raise ServerUnreachable(f"no answer from the server {dialer.server} in {VISIT_TIMEOUT:g}s") from None
    except BaseException:
        channel.close()
        raise


class NoDirectPath(LocalError):
    """A P2P visitor with ``fallback = false`` found no direct path."""


OWNER_UNPROVEN = (
    "the client serving proxy {proxy!r} could not prove it knows the secret: a forged service; "
    "nothing was sent to it"
)


async def _ready(channel: StreamChannel) -> VisitReady:
    reply = await channel.recv()
    if isinstance(reply, Error):
        raise Refused(reply.code, reply.reason)
    if not isinstance(reply, VisitReady):
        raise UnexpectedMessage(reply, "VisitReady")
    return reply
