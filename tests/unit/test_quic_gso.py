"""`pierce.p2p.quic.gso_runs`: how a burst of datagrams is cut into UDP_SEGMENT sends."""

from __future__ import annotations

from pierce.p2p.quic import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, gso_runs

A, B = ("192.0.2.1", 1000), ("192.0.2.2", 2000)


def d(size: int, tag: int = 0) -> bytes:
    return bytes([tag % 256]) * size


def flatten(runs: list[tuple[tuple[str, int], int, list[bytes]]]) -> list[tuple[bytes, tuple[str, int]]]:
    return [(data, addr) for addr, _, run in runs for data in run]


def test_equal_datagrams_to_one_address_make_one_run_in_order() -> None:
    burst = [(d(1200, i), A) for i in range(10)]
    runs = gso_runs(burst)
    assert [(addr, size, len(run)) for addr, size, run in runs] == [(A, 1200, 10)]
    assert flatten(runs) == burst


def test_a_shorter_datagram_ends_its_run_and_a_longer_one_starts_a_new_one() -> None:
    burst = [(d(1200), A), (d(1200), A), (d(700), A), (d(1200), A), (d(300), A), (d(1200), A)]
    runs = gso_runs(burst)
    assert [(size, [len(x) for x in run]) for _, size, run in runs] == [
        (1200, [1200, 1200, 700]),
        (1200, [1200, 300]),
        (1200, [1200]),
    ]
    assert flatten(runs) == burst


def test_another_address_starts_a_new_run() -> None:
    burst = [(d(1200), A), (d(1200), B), (d(1200), B), (d(1200), A)]
    runs = gso_runs(burst)
    assert [(addr, len(run)) for addr, _, run in runs] == [(A, 1), (B, 2), (A, 1)]
    assert flatten(runs) == burst


def test_runs_stay_within_the_kernel_limits() -> None:
    small = [(d(100, i), A) for i in range(3 * GSO_MAX_SEGMENTS + 5)]
    assert all(len(run) <= GSO_MAX_SEGMENTS for _, _, run in gso_runs(small))
    assert flatten(gso_runs(small)) == small
    big = [(d(1452, i), A) for i in range(200)]
    runs = gso_runs(big)
    assert all(sum(map(len, run)) <= GSO_MAX_BYTES for _, _, run in runs)
    assert len(runs[0][2]) == GSO_MAX_BYTES // 1452
    assert flatten(runs) == big


def test_nothing_to_send_is_no_run() -> None:
    assert gso_runs([]) == []
