"""Token buckets: one per key in a bounded table, under one shared bucket. Sans-I/O: time comes in as ``now``.

A bucket holds up to ``burst`` tokens and gains ``rate`` a second; each allowed event takes one. Over any
interval of length T a key is therefore allowed at most ``burst + rate * T`` events, however they arrive.

The per-key table keeps at most ``max_keys`` buckets. A new key when it is full evicts the least recently
used one: memory stays bounded whatever a flood of (spoofed) sources does, and the key evicted is the one
idle longest, whose bucket has had the most time to refill anyway. The shared bucket caps the total, so
evicting a bucket early can never let more than ``global_rate`` events a second through.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable

import msgspec

#: Buckets kept before the least recently used one is evicted (about 100 bytes each).
DEFAULT_MAX_KEYS = 10_000


class TokenBucket(msgspec.Struct):
    """``burst`` tokens at most, refilled at ``rate`` per second; starts full."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> bool:
        """Take one token if there is one (refilling for the time since the last call first)."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    #: This key has used its burst and rate.
    KEY_LIMITED = "key_limited"
    #: Every key together has used the shared rate.
    GLOBAL_LIMITED = "global_limited"


class KeyedLimiter:
    """A bucket per key (``rate``/s, ``burst``) in an LRU table of ``max_keys``, and a shared bucket
    (``global_rate``/s, bursting to one second's worth)."""

    def __init__(
        self, *, rate: float, burst: int, global_rate: float, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if rate <= 0 or burst < 1 or global_rate <= 0 or max_keys < 1:
            raise ValueError("rates must be > 0, burst and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._global = TokenBucket.full(global_rate, max(global_rate, 1.0), 0.0)
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: Hashable, now: float) -> Verdict:
        """Whether one more event for ``key`` at ``now`` is allowed; takes the tokens if so."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
                self.evicted += 1
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        if not bucket.take(now):
            return Verdict.KEY_LIMITED
        if not self._global.take(now):
            return Verdict.GLOBAL_LIMITED
        return Verdict.ALLOWED
