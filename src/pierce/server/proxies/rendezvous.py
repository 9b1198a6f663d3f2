"""The server's side of a P2P rendezvous for xtcp/xudp: relay the two sealed offers, tell both sides
to start, count how it ended.

A visitor that wants a direct path makes a visit with ``p2p`` set (`pierce.server.proxies.secret.serve_visit`
checks it with the owner as for any visit). After `VisitReady` the connection carries, with a deadline
on each step:

    visitor -> server   P2pOffer(offer, mac)            its candidates, sealed with the rendezvous key
    server  -> owner    P2pRequest(visit_id, offer, mac, stun_port)    over the owner's control channel
    owner   -> server   P2pAnswer(visit_id, offer, mac) (or a code: the owner will not try)
    server  -> both     P2pStart(...)                   at once, so both start punching together
    visitor -> server   P2pResult(path, elapsed, rtt)   counted, then the connection closes

The offers are sealed with a key only the visitor and the owner hold (`pierce.protocol.auth.p2p_key`,
derived from their secret exchange): the server relays bytes it cannot alter. What the server sees,
it counts (`P2pCounters`): attempts, the path each took, and fallbacks to the relay.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING

from pierce.errors import PierceError
from pierce.logs import event
from pierce.protocol import (
    Error,
    ErrorCode,
    P2pAnswer,
    P2pOffer,
    P2pRequest,
    P2pResult,
    P2pStart,
    UnexpectedMessage,
)
from pierce.snapshot import ConnectionPath
from pierce.transport import MessageChannel

if TYPE_CHECKING:
    from pierce.server.proxies.secret import SecretProxyServer

log = logging.getLogger("pierce.p2p")

#: Seconds the visitor has to send its offer, and the owner to answer.
OFFER_TIMEOUT = 10.0
#: Seconds the visitor has to report how its attempt ended (its punch budget plus the QUIC handshake).
RESULT_TIMEOUT = 30.0
#: Rendezvous one proxy may have waiting for the owner's answer.
MAX_PENDING_ANSWERS = 64
_PATHS = {p.value for p in ConnectionPath}


class P2pCounters:
    """What the server saw of P2P attempts (`pierce.snapshot.ServerSnapshot.p2p`)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


async def serve_rendezvous(
    proxy: SecretProxyServer,
    channel: MessageChannel,
    *,
    visit_id: str,
    visitor: str,
    stun_port: int,
    counters: P2pCounters,
) -> None:
    """Run one rendezvous on an accepted P2P visit (`VisitReady` already sent)."""
    counters.counts["attempts"] += 1
    try:
        async with asyncio.timeout(OFFER_TIMEOUT):
            offer = await channel.recv()
        if not isinstance(offer, P2pOffer):
            raise UnexpectedMessage(offer, "P2pOffer")
        answer = await proxy.p2p_ask(
            P2pRequest(
                proxy=proxy.name, visit_id=visit_id, offer=offer.offer, mac=offer.mac, stun_port=stun_port
            )
        )
        if answer.code is not None:
            counters.counts["refused"] += 1
            await channel.send(Error(code=answer.code, reason=answer.reason))
            return
        start_visitor = P2pStart(visit_id=visit_id, offer=answer.offer, mac=answer.mac)
        await asyncio.gather(
            channel.send(start_visitor), proxy.owner.channel.send(P2pStart(visit_id=visit_id))
        )
        async with asyncio.timeout(RESULT_TIMEOUT):
            result = await channel.recv()
        if not isinstance(result, P2pResult):
            raise UnexpectedMessage(result, "P2pResult")
    except (TimeoutError, PierceError, OSError) as exc:
        counters.counts["failed"] += 1
        event(
            log,
            logging.INFO,
            "p2p.rendezvous_failed",
            f"proxy {proxy.name}: rendezvous with visitor {visitor} ended early: {exc or type(exc).__name__}",
            proxy=proxy.name,
            visitor=visitor,
            error=str(exc) or type(exc).__name__,
        )
        return
    finally:
        channel.close()
    path = result.path if result.path in _PATHS else "unknown"
    if path in _PATHS:
        proxy.path = ConnectionPath(path)
    counters.counts[path if path != ConnectionPath.RELAY.value else "fallbacks"] += 1
    event(
        log,
        logging.INFO,
        "p2p.result",
        f"proxy {proxy.name}: visitor {visitor} is {path}"
        + (f" after {result.elapsed_ms} ms, rtt {result.rtt_ms:.1f} ms" if path != "relay" else "")
        + (f" ({result.reason})" if result.reason else ""),
        proxy=proxy.name,
        visitor=visitor,
        conn_path=path,
        elapsed_ms=result.elapsed_ms,
        rtt_ms=result.rtt_ms,
        reason=result.reason,
    )


def refusal(msg: P2pRequest, code: ErrorCode, reason: str) -> P2pAnswer:
    return P2pAnswer(proxy=msg.proxy, visit_id=msg.visit_id, code=code, reason=reason)
