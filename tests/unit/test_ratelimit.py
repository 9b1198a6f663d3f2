"""Token buckets with time passed in: burst, refill, the per-key bound, the shared cap, the table's size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pierce.ratelimit import KeyedLimiter, TokenBucket, Verdict


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(100.4) is False  # 0.8 of a token
    assert bucket.take(100.5) is True  # 1.0
    assert bucket.take(100.5) is False
    # A long pause refills to the burst, not beyond.
    assert sum(bucket.take(1000.0) for _ in range(10)) == 3


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=1, now=50.0)
    assert bucket.take(50.0) is True
    assert bucket.take(40.0) is False
    assert bucket.take(50.05) is False  # the stamp stayed at 50: half a token
    assert bucket.take(50.1) is True


@given(
    times=st.lists(st.floats(min_value=0, max_value=60, allow_nan=False), min_size=1, max_size=400),
    rate=st.floats(min_value=0.1, max_value=50),
    burst=st.integers(min_value=1, max_value=60),
)
def test_never_more_than_burst_plus_rate_times_elapsed(times: list[float], rate: float, burst: int) -> None:
    times.sort()
    limiter = KeyedLimiter(rate=rate, burst=burst, global_rate=1e9)
    allowed = [t for t in times if limiter.check(b"k", t) is Verdict.ALLOWED]
    assert len(allowed) <= burst + rate * (times[-1] - times[0]) + 1e-9
    # Nothing is refused while the burst lasts.
    assert allowed[: min(burst, len(times))] == times[: min(burst, len(times))]


def test_keys_have_their_own_buckets_and_the_shared_one_caps_them_all() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=2, global_rate=5.0)
    verdicts = [limiter.check(key, 0.0) for key in (b"a", b"a", b"a", b"b", b"b", b"c", b"c")]
    assert verdicts == [Verdict.ALLOWED] * 2 + [Verdict.KEY_LIMITED] + [Verdict.ALLOWED] * 3 + [
        Verdict.GLOBAL_LIMITED
    ]
    # One second later the shared bucket has 5 more tokens (its burst is one second's worth).
    later = [limiter.check(bytes([i]), 1.0) for i in range(7)]
    assert later.count(Verdict.ALLOWED) == 5


def test_the_table_is_bounded_and_evicts_the_least_recently_seen_key() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=1, global_rate=1e9, max_keys=3)
    for key in (b"a", b"b", b"c"):
        assert limiter.check(key, 0.0) is Verdict.ALLOWED
    assert limiter.check(b"a", 0.0) is Verdict.KEY_LIMITED  # a is now the most recent
    for i in range(1000):
        limiter.check(i.to_bytes(4, "big"), 0.0)
    assert len(limiter) == 3 and limiter.evicted == 1000
    # A flood of other keys evicts everything in turn, a included (it comes back with a full bucket).
    assert limiter.check(b"a", 0.0) is Verdict.ALLOWED


def test_the_least_recently_seen_goes_first() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=1, global_rate=1e9, max_keys=2)
    limiter.check(b"a", 0.0)
    limiter.check(b"b", 0.0)
    limiter.check(b"a", 0.0)  # refused, but a is now the most recent
    limiter.check(b"c", 0.0)  # evicts b
    assert limiter.check(b"a", 0.0) is Verdict.KEY_LIMITED
    assert limiter.check(b"b", 0.0) is Verdict.ALLOWED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0.0, "burst": 1, "global_rate": 1.0},
        {"rate": 1.0, "burst": 0, "global_rate": 1.0},
        {"rate": 1.0, "burst": 1, "global_rate": -1.0},
        {"rate": 1.0, "burst": 1, "global_rate": 1.0, "max_keys": 0},
    ],
)
def test_limits_must_be_positive(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        KeyedLimiter(**kwargs)  # type: ignore[arg-type]
