from __future__ import annotations

import pytest

from pierce import config
from pierce.bandwidth import TokenBucket, limits_for, parse_rate
from pierce.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "rate"),
    [("10MB", 10 * 1024**2), ("512KB", 512 * 1024), ("1.5GB", int(1.5 * 1024**3)), (" 2 mb ", 2 * 1024**2)],
)
def test_rates_read_like_frp(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["10", "ten MB", "10Mbps", "0KB", "500B", "200GB", "-1MB"])
def test_bad_rates_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected a rate"):
        parse_rate(text)


def test_the_bucket_grants_the_rate_over_time_and_a_small_burst() -> None:
    bucket = TokenBucket.start(1_000_000, now=0.0)
    first = bucket.grant(10_000_000, now=0.0)
    assert first == bucket.burst  # the burst at once, no more
    assert bucket.grant(1, now=0.0) == 0
    assert bucket.wait_s(10_000_000, now=0.0) > 0
    taken = sum(bucket.grant(100_000, now=t / 100) for t in range(1, 1001))  # 10 s in 10 ms steps
    assert 0.99 * 10_000_000 <= taken <= 10_000_000 + bucket.burst
    bucket.refund(500)
    assert bucket.tokens <= bucket.burst


def test_a_reader_woken_late_gets_what_accrued_while_it_waited() -> None:
    # A busy event loop wakes a waiting reader every 200 ms instead of every 12 ms: the reader still gets
    # the rate (what accrued while it waited), where a bucket capped at its 50 ms burst would give it a
    # quarter of it; and never more than the rate.
    bucket = TokenBucket.start(1_000_000, now=0.0)
    bucket.grant(10_000_000, now=0.0)
    assert bucket.grant(1, now=0.0, waited_since=0.0) == 0
    late = [bucket.grant(10_000_000, now=t / 5, waited_since=(t - 1) / 5) for t in range(1, 51)]  # 10 s
    assert all(199_000 <= got <= 200_001 for got in late), late
    assert sum(late) <= 10_000_000
    # A reader that did not wait (the bucket filled while nobody read) gets the burst, no more.
    assert bucket.grant(10_000_000, now=20.0) == bucket.burst


def test_a_proxy_shares_its_throttles_and_a_new_rate_starts_afresh() -> None:
    one = limits_for("svc-bw", 1024 * 1024)
    assert one is not None and limits_for("svc-bw", 1024 * 1024) is one
    other = limits_for("svc-bw", 2 * 1024 * 1024)
    assert other is not None and other is not one
    assert limits_for("svc-bw", 0) is None


def test_a_bad_limit_in_a_config_names_the_key(tmp_path) -> None:
    path = tmp_path / "client.toml"
    path.write_text(
        'server_addr = "127.0.0.1"\ntoken = "t"\n[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal_port = 22\n'
        'bandwidth_limit = "fast"\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load(path, config.ClientConfig)
    assert "bandwidth_limit" in str(info.value) and 'expected a rate such as "10MB"' in str(info.value)


def test_datagrams_pass_while_tokens_last_then_are_dropped_and_the_rate_holds() -> None:
    bucket = TokenBucket.start(100_000, now=0.0)
    assert bucket.admit(60_000, now=0.0)  # a datagram larger than the bucket passes whole ...
    assert bucket.tokens < 0
    assert not bucket.admit(1, now=0.0)  # ... and leaves a debt: the next ones wait for the refill
    assert bucket.grant(10_000, now=0.0) == 0  # a stream sharing the bucket gets nothing, never less
    passed = bucket.burst - bucket.tokens
    for step in range(1, 1001):  # 10 s of 1,000-byte datagrams at ten times the rate
        for _ in range(10):
            if bucket.admit(1000, now=step / 100):
                passed += 1000
    assert 0.95 * 100_000 * 10 <= passed <= 100_000 * 10 + bucket.burst + 60_000


async def test_a_throttle_counts_the_datagrams_it_drops() -> None:
    from pierce.bandwidth import MIN_BURST, Throttle

    throttle = Throttle(1024)
    assert throttle.admit(MIN_BURST + 100)  # a debt of 100 bytes: about 0.1 s to pay back
    assert not throttle.admit(1) and not throttle.admit(1)
    assert throttle.dropped == 2
