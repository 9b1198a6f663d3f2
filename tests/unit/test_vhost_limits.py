"""Connection caps of the web ports and the rate limit of their log lines, without sockets."""

from __future__ import annotations

from pierce.addr import source_of
from pierce.vhost.limits import (
    TOO_MANY_CONNS,
    TOO_MANY_PENDING,
    Admission,
    ConnectionLimits,
    RefusalLog,
)


def test_sources_are_addresses_and_ipv6_slash_64s() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2::1") == source_of("2001:db8:1:2:ffff::9")
    assert source_of("2001:db8:1:2::1") != source_of("2001:db8:1:3::1")
    assert source_of("fe80::1%eth0") == source_of("fe80::2")


def test_per_source_cap_counts_open_connections() -> None:
    limits = ConnectionLimits(per_source=2, pending=0)
    first, second = limits.admit("192.0.2.1"), limits.admit("192.0.2.1")
    assert isinstance(first, Admission) and isinstance(second, Admission)
    assert limits.admit("192.0.2.1") == TOO_MANY_CONNS
    assert isinstance(limits.admit("192.0.2.2"), Admission)
    first.release()
    first.release()  # twice is once
    third = limits.admit("192.0.2.1")
    assert isinstance(third, Admission)
    second.release()
    third.release()
    assert "192.0.2.1" not in limits.per_source  # nothing kept for a source without connections
    assert limits.refused == {TOO_MANY_CONNS: 1, TOO_MANY_PENDING: 0}


def test_pending_cap_counts_connections_until_their_first_head() -> None:
    limits = ConnectionLimits(per_source=0, pending=2)
    a, b = limits.admit("192.0.2.1"), limits.admit("192.0.2.2")
    assert isinstance(a, Admission) and isinstance(b, Admission)
    assert limits.admit("192.0.2.3") == TOO_MANY_PENDING
    a.settle()
    a.settle()
    c = limits.admit("192.0.2.3")
    assert isinstance(c, Admission)
    assert limits.pending == 2
    a.release()  # settled already: pending unchanged
    assert limits.pending == 2
    b.release()
    c.release()
    assert (limits.pending, limits.per_source) == (0, {})


def test_refusals_are_logged_first_then_at_most_once_per_interval_with_a_count() -> None:
    log = RefusalLog(interval=10)
    assert log.note(TOO_MANY_CONNS, 100.0) == 1
    assert [log.note(TOO_MANY_CONNS, 100.0 + i) for i in range(1, 6)] == [0] * 5
    assert log.note(TOO_MANY_PENDING, 101.0) == 1  # each code on its own
    assert log.note(TOO_MANY_CONNS, 110.0) == 6  # five held back and this one
    assert log.note(TOO_MANY_CONNS, 111.0) == 0
