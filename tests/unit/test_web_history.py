"""The web side's traffic history: per-minute deltas, counters that start over, its bounds."""

from __future__ import annotations

from pierce.proxies.base import ProxyType
from pierce.snapshot import ProxyStats, ServerProxyInfo
from pierce.web.history import MINUTE, TrafficHistory

T0 = 1_700_000_000.0 - 1_700_000_000.0 % MINUTE


def proxy(name: str, bytes_in: int = 0, bytes_out: int = 0, conns: int = 0) -> ServerProxyInfo:
    return ServerProxyInfo(
        name=name,
        type=ProxyType.TCP,
        client_id="c",
        remote_port=1,
        urls=[],
        stats=ProxyStats(bytes_in=bytes_in, bytes_out=bytes_out, total_connections=conns),
    )


def test_growth_is_added_to_the_minute_it_was_seen_in() -> None:
    history = TrafficHistory()
    history.observe([proxy("a", 100, 10, 1)], T0 + 5)
    history.observe([proxy("a", 150, 30, 1)], T0 + 50)
    history.observe([proxy("a", 400, 30, 2)], T0 + MINUTE + 1)
    assert history.traffic("a", T0 + MINUTE + 2) == [(int(T0), 150, 30), (int(T0) + MINUTE, 250, 0)]


def test_a_proxy_opened_again_counts_from_zero() -> None:
    history = TrafficHistory()
    history.observe([proxy("a", 1000, 1000, 5)], T0)
    history.observe([], T0 + 1)
    assert [p.name for p, _ in history.offline()] == ["a"]
    history.observe([proxy("a", 70, 7, 1)], T0 + 2)  # its client came back: new counters
    assert history.offline() == []
    assert history.traffic("a", T0 + 3) == [(int(T0), 1070, 1007)]


def test_bounded_in_proxies_and_in_time() -> None:
    history = TrafficHistory(max_proxies=2, window_minutes=10)
    history.observe([proxy("a", 1), proxy("b", 1)], T0)
    history.observe([proxy("b", 1), proxy("c", 1)], T0 + 1)  # a went offline: c takes its place
    history.observe([proxy("b", 1), proxy("c", 1), proxy("d", 1)], T0 + 2)  # full, none offline
    assert len(history) == 2 and history.traffic("a", T0) is None and history.traffic("d", T0) is None
    history.observe([proxy("c", 2)], T0 + 3)
    assert [p.name for p, _ in history.offline()] == ["b"]
    history.observe([proxy("c", 3)], T0 + 3 + 10 * MINUTE)  # b was gone for the whole window
    assert history.offline() == []
    assert history.traffic("c", T0 + 3 + 10 * MINUTE) == [(int(T0) + 10 * MINUTE, 1, 0)]
    assert history.forget_offline() == []


def test_forget_offline() -> None:
    history = TrafficHistory()
    history.observe([proxy("a"), proxy("b")], T0)
    history.observe([proxy("b")], T0 + 1)
    assert history.forget_offline() == ["a"]
    assert history.traffic("a", T0 + 1) is None and history.traffic("b", T0 + 1) == []
