"""Who may try to log in on the control port, and how often. Bookkeeping only: no sockets, no asyncio,
time from an injected clock.

Every connection that has not logged in yet holds a `Ticket`. `Admission` caps the tickets in total
(``max_pending_logins``) and per source (``max_pending_logins_per_ip``), and slows down sources whose
logins fail (`FailurePolicy`):

* a *source* is an IPv4 address, or the /64 of an IPv6 address (one subscriber's prefix: a single
  machine can use all of it);
* a source with a logged-in connection still open (a client's control session) is held to the total
  cap only, so the burst of work connections a crowd of visitors causes is never turned away;
* the first ``free`` failures in a row cost nothing: a mistyped token, a client with an old one;
* each further failure blocks the source for ``first_block`` seconds, doubling up to ``max_block``.
  A blocked source's new connections are refused at once, and once the block is over it may try one
  login at a time until one succeeds;
* a successful login clears the source; a source without failures for ``forget_after`` starts over;
* at most ``max_sources`` failing sources are remembered (the longest quiet go first).

So a fixed typo works again at most ``max_block`` seconds after the fix, while a guesser gets one try
per ``max_block`` per source instead of hundreds a second.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

Clock = Callable[[], float]


class Refusal(enum.Enum):
    """Why a new connection was turned away before it said anything."""

    PENDING = "too many connections waiting to log in"
    SOURCE = "too many connections from this address waiting to log in"
    BLOCKED = "too many failed logins from this address"


class FailurePolicy(msgspec.Struct, frozen=True):
    #: Failures in a row a source may make before it is slowed down.
    free: int = 5
    #: Seconds of the first block; each further failure doubles it.
    first_block: float = 1.0
    max_block: float = 60.0
    #: Seconds without a failure after which a source starts over.
    forget_after: float = 900.0
    #: Failing sources remembered at once.
    max_sources: int = 4096

    def block(self, failures: int) -> float:
        """Seconds a source is blocked after its ``failures``-th failure in a row."""
        over = failures - self.free
        if over <= 0:
            return 0.0
        return min(self.max_block, self.first_block * 2.0 ** min(over - 1, 32))


DEFAULT_FAILURE_POLICY = FailurePolicy()


class _Record(msgspec.Struct):
    failures: int
    last: float
    blocked_until: float


class AdmissionStats(msgspec.Struct):
    """Counters since start."""

    admitted: int = 0
    logged_in: int = 0
    failed: int = 0
    #: Failed logins that were a wrong token or proof (`pierce.handshake.AuthenticationFailed`).
    auth_failed: int = 0
    refused_pending: int = 0
    refused_source: int = 0
    refused_blocked: int = 0


class Ticket:
    """One connection from ``source``: waiting to log in, then maybe logged in, until `release`."""

    __slots__ = ("_admission", "_state", "source")

    def __init__(self, admission: Admission, source: str) -> None:
        self.source = source
        self._admission = admission
        self._state = _WAITING

    @property
    def open(self) -> bool:
        """Still waiting: the peer has not logged in (a stranger, as far as we know)."""
        return self._state is _WAITING

    def logged_in(self) -> None:
        if self._state is _WAITING:
            self._state = _LOGGED_IN
            self._admission._logged_in(self.source)

    def failed(self) -> float:
        """The login failed; returns the seconds the source is now blocked (0: not blocked)."""
        if self._state is not _WAITING:
            return 0.0
        self._state = _ENDED
        return self._admission._failed(self.source)

    def release(self) -> None:
        """The connection is over (or handed on); without a verdict if it never logged in."""
        if self._state is _WAITING:
            self._admission._unwait(self.source)
        elif self._state is _LOGGED_IN:
            self._admission._leave(self.source)
        self._state = _ENDED


_WAITING, _LOGGED_IN, _ENDED = "waiting", "logged in", "ended"


class Admission:
    """The pending-login counts and the failure table of one control port."""

    def __init__(
        self,
        *,
        max_pending: int,
        max_pending_per_source: int,
        policy: FailurePolicy = DEFAULT_FAILURE_POLICY,
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_pending = max_pending
        self.max_pending_per_source = max_pending_per_source
        self.policy = policy
        self.stats = AdmissionStats()
        self._clock = clock
        self._pending: dict[str, int] = {}
        self._total = 0
        #: Logged-in connections still held by a ticket (control sessions, visitors), by source.
        self._live: dict[str, int] = {}
        #: Failing sources, the longest quiet first.
        self._failures: OrderedDict[str, _Record] = OrderedDict()

    @property
    def pending(self) -> int:
        return self._total

    def pending_from(self, source: str) -> int:
        return self._pending.get(source, 0)

    def failures_of(self, source: str) -> int:
        """Failed logins of ``source`` in a row (0 once it logged in or was forgotten)."""
        record = self._record(source)
        return record.failures if record is not None else 0

    def blocked_for(self, source: str) -> float:
        """Seconds until ``source`` may connect again (0: it may)."""
        record = self._record(source)
        return max(0.0, record.blocked_until - self._clock()) if record is not None else 0.0

    def admit(self, source: str) -> Ticket | Refusal:
        """A ticket for a new connection from ``source``, or why it must be refused."""
        cap: int | None = self.max_pending_per_source
        record = self._record(source)
        if record is not None and record.failures > self.policy.free:
            if record.blocked_until > self._clock():
                self.stats.refused_blocked += 1
                return Refusal.BLOCKED
            cap = 1  # on probation: one login at a time until one succeeds
        elif source in self._live:
            cap = None  # a client's burst of work connections: only the total cap
        if self._total >= self.max_pending:
            self.stats.refused_pending += 1
            return Refusal.PENDING
        if cap is not None and self._pending.get(source, 0) >= cap:
            self.stats.refused_source += 1
            return Refusal.SOURCE
        self._pending[source] = self._pending.get(source, 0) + 1
        self._total += 1
        self.stats.admitted += 1
        return Ticket(self, source)

    def _record(self, source: str) -> _Record | None:
        record = self._failures.get(source)
        if record is not None and self._clock() - record.last > self.policy.forget_after:
            del self._failures[source]
            return None
        return record

    def _unwait(self, source: str) -> None:
        _decrement(self._pending, source)
        self._total -= 1

    def _logged_in(self, source: str) -> None:
        self._unwait(source)
        self._live[source] = self._live.get(source, 0) + 1
        self.stats.logged_in += 1
        self._failures.pop(source, None)

    def _leave(self, source: str) -> None:
        _decrement(self._live, source)

    def _failed(self, source: str) -> float:
        self._unwait(source)
        self.stats.failed += 1
        now = self._clock()
        record = self._record(source)
        if record is None:
            while len(self._failures) >= self.policy.max_sources:
                self._failures.popitem(last=False)
            record = self._failures[source] = _Record(failures=0, last=now, blocked_until=0.0)
        record.failures += 1
        record.last = now
        self._failures.move_to_end(source)
        block = self.policy.block(record.failures)
        if block:
            record.blocked_until = max(record.blocked_until, now + block)
        return block


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class LogBudget:
    """A token bucket for log lines a stranger can cause: ``burst`` at once, then ``per_second``."""

    def __init__(self, *, burst: int = 20, per_second: float = 1.0, clock: Clock = time.monotonic) -> None:
        self.burst = burst
        self.per_second = per_second
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        #: Lines left out since the last one logged.
        self.suppressed = 0

    def take(self) -> int | None:
        """None: leave this line out. Otherwise log it, with the count of lines left out before it."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return None
        self._tokens -= 1.0
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed
