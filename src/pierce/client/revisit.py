"""A new visitor connection outlasts a short absence of the proxy's owner.

When a router on the owner's side reboots (or forgets its NAT table), the owner's connections to the
server die: the server drops the owner's proxies, and the owner logs in again once it notices, at its
next heartbeat (``heartbeat_interval``, 10 s by default) plus its reconnect delay (about 1 s). A
visitor connection arriving in between would be refused ("no secret proxy named ..."). A visit fails
before the visitor reads a byte from the application's socket, so nothing is lost by trying again: the
visitor does, with a growing delay, for at most `REVISIT_WINDOW` seconds after the connection came and
`MAX_REVISITS` times. Retried: the owner is gone or does not answer (unknown proxy, timeout), its work
connection failed, the server cannot be reached. Only a proxy that accepted this visitor before is
waited for: a name nobody serves, a wrong secret or a user not allowed is an answer at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pierce.client.session import ServerUnreachable
from pierce.errors import PierceError
from pierce.logs import event
from pierce.protocol import ErrorCode, Refused

log = logging.getLogger("pierce.visitor")

T = TypeVar("T")

#: Seconds after a connection came within which another visit may start (the owner's default heartbeat
#: interval, its reconnect delay and a login, with room to spare).
REVISIT_WINDOW = 15.0
#: Visits after the first, at most.
MAX_REVISITS = 8
FIRST_DELAY = 0.25
MAX_DELAY = 2.0
#: Refusals that say the owner is away for now (not that this visitor may not come in).
AWAY = frozenset({ErrorCode.UNKNOWN_PROXY, ErrorCode.TIMEOUT, ErrorCode.INTERNAL})


def owner_away(exc: PierceError) -> bool:
    """Whether ``exc`` may pass once the owner (or the server) is back."""
    if isinstance(exc, Refused):
        return exc.code in AWAY
    return isinstance(exc, ServerUnreachable)


async def revisit(
    visit: Callable[[], Awaitable[T]],
    *,
    known: bool,
    since: float,
    name: str,
    proxy: str,
) -> T:
    """``visit()``, tried again while the owner looks away (see the module doc); ``known``: the proxy
    accepted this visitor before; ``since``: when the connection came (`time.monotonic`). Raises the
    last failure."""
    delay = FIRST_DELAY
    for failures in range(MAX_REVISITS + 1):
        try:
            return await visit()
        except PierceError as exc:
            left = since + REVISIT_WINDOW - time.monotonic()
            if not known or not owner_away(exc) or failures == MAX_REVISITS or left <= delay:
                raise
            reason = exc.reason if isinstance(exc, Refused) else str(exc)
            event(
                log,
                logging.INFO,
                "visitor.retry",
                f"visitor {name}: proxy {proxy} cannot be reached now ({reason}); trying again in "
                f"{delay:.2f}s",
                visitor_name=name,
                proxy=proxy,
                reason=reason,
                failures=failures + 1,
                delay_s=round(delay, 2),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
    raise AssertionError("unreachable")  # the last round raises
