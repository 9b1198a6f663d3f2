"""Bandwidth limits: ``bandwidth_limit = "10MB"`` on a proxy, as a token bucket per direction.

A rate is a number and a unit, ``B``, ``KB``, ``MB`` or ``GB`` per second, 1024-based as frp reads
them (``"10MB"`` is 10 MiB/s). One `Throttle` per proxy and direction is shared by all its connections,
so the limit holds for the proxy as a whole. The relay asks it before every read (`Throttle.take`) and
reads at most what it grants: the bytes then wait in the kernel's socket buffers and TCP flow control
slows the sender down, wherever it is, with no unbounded queue anywhere.

Datagrams cannot wait: a UDP proxy asks `Throttle.admit` for each one and drops it when the bucket is
empty (counted in `Throttle.dropped`). A datagram that finds any tokens passes whole and may leave the
bucket in debt, so a datagram larger than the bucket still passes, and over any time the bytes passed
stay within the rate plus one bucket and one datagram. TCP connections and datagrams may share one
throttle (a user's limit on the server covers all its proxies).

`TokenBucket` is the arithmetic alone (sans-I/O: the caller passes ``now``), `Throttle` puts it on the
event loop's clock.
"""

from __future__ import annotations

import asyncio
import re

import msgspec

_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*$", re.IGNORECASE)
#: Smallest and largest limits accepted, bytes per second.
MIN_RATE = 1024
MAX_RATE = 100 * 1024**3
#: The bucket holds this many seconds of the rate (at least `MIN_BURST`): short bursts pass at once,
#: the long-run rate is the limit.
BURST_S = 0.05
MIN_BURST = 16 * 1024
#: The bucket of throttles that admit datagrams holds more: a datagram cannot wait in a socket buffer
#: for tokens, and datagrams come in clumps (a sender's or our event loop's pause, a batch read from the
#: tunnel), so a 50 ms bucket would throw away the budget of any pause longer than that.
DATAGRAM_BURST_S = 0.25
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


class TokenBucket(msgspec.Struct):
    """``rate`` bytes per second with room for ``burst`` at once."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def start(cls, rate: float, now: float, burst_s: float = BURST_S) -> TokenBucket:
        burst = max(MIN_BURST, rate * burst_s)
        return cls(rate, burst, burst, now)

    def _refill(self, now: float, room: float = 0.0) -> None:
        if now > self.stamp:
            self.tokens = min(max(self.burst, room), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def grant(self, want: int, now: float, waited_since: float | None = None) -> int:
        """Take up to ``want`` bytes now (0 when the bucket is empty). A reader that has waited since
        ``waited_since`` may take what accrued while it waited, even beyond the burst: a late wake-up
        (a busy event loop) must not throw away budget a waiting reader was owed."""
        room = (now - waited_since) * self.rate if waited_since is not None else 0.0
        self._refill(now, room)
        granted = int(min(want, max(self.tokens, 0.0)))
        self.tokens -= granted
        return granted

    def admit(self, size: int, now: float) -> bool:
        """Whether a datagram of ``size`` bytes passes now: yes while any tokens are left (it takes all
        of ``size``, possibly leaving a debt of less than one datagram), no when the bucket is empty."""
        self._refill(now)
        if self.tokens <= 0:
            return False
        self.tokens -= size
        return True

    def refund(self, unused: int) -> None:
        """Give back granted bytes that were not read (up to the burst, or to what is there already)."""
        self.tokens = max(self.tokens, min(self.burst, self.tokens + unused))

    def wait_s(self, want: int, now: float) -> float:
        """Seconds until a useful amount is back: ``want`` bytes or a share of the burst, the smaller."""
        self._refill(now)
        needed = min(want, self.burst * REFILL_SHARE) - self.tokens
        return max(0.0, needed / self.rate)


class Throttle:
    """A `TokenBucket` on the running loop's clock, shared by the connections of one direction."""

    def __init__(self, rate: int, burst_s: float = BURST_S) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._bucket: TokenBucket | None = None
        #: Datagrams `admit` turned away so far.
        self.dropped = 0

    def _started(self, now: float) -> TokenBucket:
        if self._bucket is None:
            self._bucket = TokenBucket.start(self.rate, now, self.burst_s)
        return self._bucket

    async def take(self, want: int) -> int:
        """Bytes the caller may read now, at least 1 and at most ``want``; waits while none are left."""
        loop = asyncio.get_running_loop()
        bucket = self._started(loop.time())
        waited_since: float | None = None
        while True:
            granted = bucket.grant(want, loop.time(), waited_since)
            if granted:
                return granted
            if waited_since is None:
                waited_since = loop.time()
            await asyncio.sleep(bucket.wait_s(want, loop.time()))

    def refund(self, unused: int) -> None:
        if unused > 0 and self._bucket is not None:
            self._bucket.refund(unused)

    def admit(self, size: int) -> bool:
        """Whether a datagram of ``size`` bytes passes now (`TokenBucket.admit`); a refusal is counted."""
        now = asyncio.get_running_loop().time()
        if self._started(now).admit(size, now):
            return True
        self.dropped += 1
        return False


class Limits(msgspec.Struct, frozen=True):
    """A proxy's throttles: toward the local service (``inbound``) and toward the visitor (``outbound``)."""

    inbound: Throttle
    outbound: Throttle

    @classmethod
    def of(cls, rate: int, burst_s: float = BURST_S) -> Limits:
        return cls(Throttle(rate, burst_s), Throttle(rate, burst_s))


_by_proxy: dict[str, tuple[int, float, Limits]] = {}
#: Proxies whose limits are kept (a client config has far fewer).
MAX_PROXIES = 4096


def limits_for(proxy: str, rate: int, *, burst_s: float = BURST_S) -> Limits | None:
    """The shared throttles of ``proxy`` at ``rate`` (None without a limit); a new rate starts afresh."""
    if not rate:
        _by_proxy.pop(proxy, None)
        return None
    known = _by_proxy.get(proxy)
    if known is not None and known[:2] == (rate, burst_s):
        return known[2]
    if len(_by_proxy) >= MAX_PROXIES:
        _by_proxy.pop(next(iter(_by_proxy)))
    limits = Limits.of(rate, burst_s)
    _by_proxy[proxy] = (rate, burst_s, limits)
    return limits
