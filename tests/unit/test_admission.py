"""Admission to the control port: caps on connections waiting to log in, the slow-down of failing
sources, and the rate limit of the log lines strangers cause. Time is a hand-driven clock."""

from __future__ import annotations

import pytest

from pierce.addr import source_of
from pierce.server.admission import Admission, FailurePolicy, LogBudget, Refusal, Ticket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock, *, total: int = 10, per_source: int = 3, **policy: float) -> Admission:
    return Admission(
        max_pending=total,
        max_pending_per_source=per_source,
        policy=FailurePolicy(**policy),  # type: ignore[arg-type]
        clock=clock,
    )


def ticket(adm: Admission, source: str) -> Ticket:
    got = adm.admit(source)
    assert isinstance(got, Ticket), got
    return got


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_a_source_is_an_ipv4_address_or_an_ipv6_64(host: str, source: str) -> None:
    assert source_of(host) == source


def test_pending_logins_are_capped_per_source_then_in_total() -> None:
    clock = Clock()
    adm = admission(clock, total=5, per_source=2)
    a = [ticket(adm, "a") for _ in range(2)]
    assert adm.admit("a") is Refusal.SOURCE
    others = [ticket(adm, s) for s in ("b", "b", "c")]
    assert adm.pending == 5
    assert adm.admit("d") is Refusal.PENDING
    a[0].release()  # a place is free again, for anyone
    assert adm.pending_from("a") == 1
    ticket(adm, "d")
    assert (adm.stats.refused_source, adm.stats.refused_pending, adm.stats.admitted) == (1, 1, 6)
    for t in [a[1], *others]:
        t.release()
    assert adm.pending == 1


def test_a_ticket_ends_once_whatever_ends_it() -> None:
    adm = admission(Clock())
    t = ticket(adm, "a")
    assert t.failed() == 0.0
    t.release()
    t.logged_in()
    assert t.failed() == 0.0
    assert (adm.pending, adm.stats.failed, adm.stats.logged_in) == (0, 1, 0)


def test_a_source_with_a_live_session_is_held_to_the_total_cap_only() -> None:
    """A client's control session is open: the crowd of work connections its visitors cause gets in."""
    adm = admission(Clock(), total=8, per_source=2)
    control = ticket(adm, "a")
    control.logged_in()  # the session stays open
    work = [ticket(adm, "a") for _ in range(8)]
    assert adm.admit("a") is Refusal.PENDING
    for t in work:
        t.logged_in()
        t.release()  # handed to the pool
    control.release()  # the session ended: back to the per-source cap
    [ticket(adm, "a") for _ in range(2)]
    assert adm.admit("a") is Refusal.SOURCE


def test_failures_are_free_then_block_the_source_doubling_up_to_the_cap() -> None:
    clock = Clock()
    adm = admission(clock, free=3, first_block=1.0, max_block=4.0)
    blocks = [ticket(adm, "a").failed() for _ in range(3)]
    assert blocks == [0.0, 0.0, 0.0]
    assert adm.blocked_for("a") == 0.0
    assert ticket(adm, "a").failed() == 1.0  # the 4th failure
    assert adm.admit("a") is Refusal.BLOCKED
    assert ticket(adm, "b").failed() == 0.0  # other sources are not affected
    clock.now += 1.0
    assert ticket(adm, "a").failed() == 2.0
    clock.now += 2.0
    assert ticket(adm, "a").failed() == 4.0
    clock.now += 4.0
    assert ticket(adm, "a").failed() == 4.0  # capped
    assert adm.failures_of("a") == 7
    assert adm.stats.refused_blocked == 1


def test_after_a_block_a_source_gets_one_try_at_a_time_until_it_logs_in() -> None:
    clock = Clock()
    adm = admission(clock, per_source=5, free=1, first_block=1.0)
    ticket(adm, "a").failed()
    ticket(adm, "a").failed()
    clock.now += 1.0
    trying = ticket(adm, "a")
    assert adm.admit("a") is Refusal.SOURCE  # on probation: one at a time
    trying.logged_in()  # the token was fixed
    assert adm.failures_of("a") == 0
    [ticket(adm, "a") for _ in range(5)]  # the full allowance again


def test_failures_are_forgotten_after_a_quiet_while() -> None:
    clock = Clock()
    adm = admission(clock, free=2, forget_after=60.0)
    ticket(adm, "a").failed()
    ticket(adm, "a").failed()
    clock.now += 61
    assert adm.failures_of("a") == 0
    assert ticket(adm, "a").failed() == 0.0  # the first of a new series


def test_the_failure_table_is_bounded_and_drops_the_longest_quiet_first() -> None:
    clock = Clock()
    adm = admission(clock, total=100, max_sources=3)
    for source in ("a", "b", "c"):
        clock.now += 1
        ticket(adm, source).failed()
    clock.now += 1
    ticket(adm, "a").failed()  # "a" is fresh again; "b" is now the quietest
    ticket(adm, "d").failed()
    assert [adm.failures_of(s) for s in ("a", "b", "c", "d")] == [2, 0, 1, 1]


def test_log_budget_allows_a_burst_then_a_steady_rate_and_counts_what_it_left_out() -> None:
    clock = Clock()
    budget = LogBudget(burst=3, per_second=1.0, clock=clock)
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    clock.now += 1.0
    assert budget.take() == 2  # logged, saying two lines were left out before it
    assert budget.take() is None
    clock.now += 10.0  # refills up to the burst, no more
    assert [budget.take() for _ in range(4)] == [1, 0, 0, None]
