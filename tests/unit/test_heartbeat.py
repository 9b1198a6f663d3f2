"""The client's heartbeat with explicit time: a ping every interval, gone timeout after the last pong."""

from __future__ import annotations

import pytest

from pierce.protocol.heartbeat import Due, Heartbeat


def test_pings_every_interval_while_pongs_come() -> None:
    beat = Heartbeat(10, 30, now=100)
    assert beat.deadline() == 110
    assert beat.due(105) is Due.NOTHING
    assert beat.due(110) is Due.PING and beat.seq == 1
    beat.pong(110.2)
    assert beat.deadline() == 120
    assert beat.due(120) is Due.PING and beat.seq == 2
    beat.pong(120.5)
    assert beat.due(125) is Due.NOTHING


def test_gone_exactly_timeout_after_the_last_pong_not_an_interval_later() -> None:
    beat = Heartbeat(10, 25, now=0)
    for t in (10, 20):
        assert beat.due(t) is Due.PING
    assert beat.deadline() == 25  # the next ping (30) would be later
    assert beat.due(24.9) is Due.NOTHING
    assert beat.due(25) is Due.DEAD


def test_a_late_pong_moves_the_deadline() -> None:
    beat = Heartbeat(10, 30, now=0)
    assert beat.due(10) is Due.PING
    assert beat.due(20) is Due.PING
    beat.pong(29)
    assert beat.due(30) is Due.PING  # without that pong this would be DEAD
    for t in (40, 50):
        assert beat.due(t) is Due.PING
    assert beat.deadline() == 59 and beat.due(58.9) is Due.NOTHING
    assert beat.due(59) is Due.DEAD
    assert Heartbeat(10, 30, now=0).due(30) is Due.DEAD


@pytest.mark.parametrize(("interval", "timeout"), [(0, 30), (30, 30), (40, 30)])
def test_interval_must_be_below_timeout(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="interval < timeout"):
        Heartbeat(interval, timeout, now=0)
