"""Bandwidth limits: ``bandwidth_limit = "10MB"`` on a proxy, as a token bucket per direction.

A rate is a number and a unit, ``B``, ``KB``, ``MB`` or ``GB`` per second, 1024-based as frp reads
them (``"10MB"`` is 10 MiB/s). One `Throttle` per proxy and direction is shared by all its connections,
so the limit holds for the proxy as a whole. The relay asks it before every read (`Throttle.take`) and
reads at most what it grants: the bytes then wait in the kernel's socket buffers and TCP flow control
slows the sender down, wherever it is, with no unbounded queue anywhere.

`TokenBucket` is the arithmetic alone (sans-I/O: the caller passes ``now``), `Throttle` puts it on the
event loop's clock.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*$", re.IGNORECASE)
#: Smallest and largest limits accepted, bytes per second.
MIN_RATE = 1024
MAX_RATE = 100 * 1024**3
#: The bucket holds this many seconds of the rate (at least `MIN_BURST`): short bursts pass at once,
#: the long-run rate is the limit.
BURST_S = 0.05
MIN_BURST = 16 * 1024
#: A reader that finds the bucket empty waits until this share of the burst is back (no 1-byte reads).
REFILL_SHARE = 0.25


def parse_rate(text: str) -> int:
    """Bytes per second from ``"10MB"``, ``"512KB"``, ``"1.5GB"``; ValueError saying what is expected."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(
            f'expected a rate such as "10MB" or "512KB" (B, KB, MB or GB per second), got "{text}"'
        )
    rate = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f'expected a rate from 1KB to 100GB per second, got "{text}"')
    return rate


@dataclass(slots=True)
class TokenBucket:
    """``rate`` bytes per second with room for ``burst`` at once."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def start(cls, rate: float, now: float) -> TokenBucket:
        burst = max(MIN_BURST, rate * BURST_S)
        return cls(rate, burst, burst, now)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def grant(self, want: int, now: float) -> int:
        """Take up to ``want`` bytes now (0 when the bucket is empty)."""
        self._refill(now)
        granted = int(min(want, self.tokens))
        self.tokens -= granted
        return granted

    def refund(self, unused: int) -> None:
        self.tokens = min(self.burst, self.tokens + unused)

    def wait_s(self, want: int, now: float) -> float:
        """Seconds until a useful amount is back: ``want`` bytes or a share of the burst, the smaller."""
        self._refill(now)
        needed = min(want, self.burst * REFILL_SHARE) - self.tokens
        return max(0.0, needed / self.rate)


class Throttle:
    """A `TokenBucket` on the running loop's clock, shared by the connections of one direction."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._bucket: TokenBucket | None = None

    async def take(self, want: int) -> int:
        """Bytes the caller may read now, at least 1 and at most ``want``; waits while none are left."""
        loop = asyncio.get_running_loop()
        if self._bucket is None:
            self._bucket = TokenBucket.start(self.rate, loop.time())
        bucket = self._bucket
        while True:
            granted = bucket.grant(want, loop.time())
            if granted:
                return granted
            await asyncio.sleep(bucket.wait_s(want, loop.time()))

    def refund(self, unused: int) -> None:
        if unused > 0 and self._bucket is not None:
            self._bucket.refund(unused)


@dataclass(frozen=True, slots=True)
class Limits:
    """A proxy's throttles: toward the local service (``inbound``) and toward the visitor (``outbound``)."""

    inbound: Throttle
    outbound: Throttle


_by_proxy: dict[str, tuple[int, Limits]] = {}
#: Proxies whose limits are kept (a client config has far fewer).
MAX_PROXIES = 4096


def limits_for(proxy: str, rate: int) -> Limits | None:
    """The shared throttles of ``proxy`` at ``rate`` (None without a limit); a new rate starts afresh."""
    if not rate:
        _by_proxy.pop(proxy, None)
        return None
    known = _by_proxy.get(proxy)
    if known is not None and known[0] == rate:
        return known[1]
    if len(_by_proxy) >= MAX_PROXIES:
        _by_proxy.pop(next(iter(_by_proxy)))
    limits = Limits(Throttle(rate), Throttle(rate))
    _by_proxy[proxy] = (rate, limits)
    return limits
