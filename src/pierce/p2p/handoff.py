"""The handoff of a direct connection to one visitor connection: `GO` from the visitor, `READY` back.

A direct path can die without a sign (a NAT that rebooted or flushed its table drops everything until
the next punch), and a visitor connection sent into a dead path would be lost. So before a visitor
connection is given a QUIC stream or a ready direct TCP connection, the visitor sends `GO` and waits for
the owner's `READY`, at most `ready_timeout` (a few round trips, at least `MIN_READY_TIMEOUT`): without
it, the connection takes the relay instead (its bytes are still unread in the local socket, nothing is
lost) and the path is treated as dead. The owner answers as soon as `GO` arrives, before it connects
its local service. One round trip on the direct path per connection is the price.

A busy path is not a dead one: where a thousand transfers share a QUIC path, a new stream's `READY`
queues behind their bytes for longer than that, so while the path keeps delivering packets
(``progress``) the visitor waits on, one timeout at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from pierce.errors import PierceError
from pierce.relay import End

GO = b"\x01"
READY = b"\x02"
#: Seconds a visitor waits for `READY` at least (and four round trips on a slower path).
MIN_READY_TIMEOUT = 2.0


def ready_timeout(rtt_s: float) -> float:
    return max(MIN_READY_TIMEOUT, 4 * rtt_s)


async def hand_over(end: End, timeout: float, progress: Callable[[], int] | None = None) -> float | None:
    """The visitor's side: `GO`, then `READY` within ``timeout``, or later while ``progress()`` (a count
    of what the path delivered from the owner) moved during each ``timeout``. The round trip in seconds
    (the path's RTT as a connection sees it), or None (``end`` closed) when no `READY` came."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        answer = await _go_ready(end, timeout, progress)
    except (TimeoutError, PierceError, OSError):
        answer = b""
    if answer != READY:
        end.close()
        return None
    return loop.time() - sent


async def _go_ready(end: End, timeout: float, progress: Callable[[], int] | None) -> bytes:
    async with asyncio.timeout(timeout):
        await end.write(GO)
    reading = asyncio.ensure_future(end.read(1))
    try:
        while True:
            seen = progress() if progress is not None else 0
            done, _ = await asyncio.wait({reading}, timeout=timeout)
            if done:
                return reading.result()
            if progress is None or progress() == seen:
                raise TimeoutError
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading


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
