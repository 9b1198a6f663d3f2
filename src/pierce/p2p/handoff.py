"""The handoff of a direct connection to one visitor connection: `GO` from the visitor, `READY` back.

A direct path can die without a sign (a NAT that rebooted or flushed its table drops everything until
the next punch), and a visitor connection sent into a dead path would be lost. So before a visitor
connection is given a QUIC stream or a ready direct TCP connection, the visitor sends `GO` and waits for
the owner's `READY`, at most `ready_timeout` (a few round trips, at least `MIN_READY_TIMEOUT`): without
it, the connection takes the relay instead (its bytes are still unread in the local socket, nothing is
lost) and the path is treated as dead. The owner answers as soon as `GO` arrives, before it connects
its local service. One round trip on the direct path per connection is the price.
"""

from __future__ import annotations

import asyncio

from pierce.errors import PierceError
from pierce.relay import End

GO = b"\x01"
READY = b"\x02"
#: Seconds a visitor waits for `READY` at least (and four round trips on a slower path).
MIN_READY_TIMEOUT = 2.0


def ready_timeout(rtt_s: float) -> float:
    return max(MIN_READY_TIMEOUT, 4 * rtt_s)


async def hand_over(end: End, timeout: float) -> float | None:
    """The visitor's side: `GO`, then `READY` within ``timeout``. The round trip in seconds (the
    path's RTT as a connection sees it), or None (``end`` closed) when no `READY` came."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        async with asyncio.timeout(timeout):
            await end.write(GO)
            answer = await end.read(1)
    except (TimeoutError, PierceError, OSError):
        answer = b""
    if answer != READY:
        end.close()
        return None
    return loop.time() - sent


async def take_over(end: End, timeout: float) -> bool:
    """The owner's side: wait up to ``timeout`` for `GO` and answer `READY`; False (``end`` closed)
    when anything else comes."""
    try:
        async with asyncio.timeout(timeout):
            if await end.read(1) != GO:
                end.close()
                return False
            await end.write(READY)
    except (TimeoutError, PierceError, OSError):
        end.close()
        return False
    return True
