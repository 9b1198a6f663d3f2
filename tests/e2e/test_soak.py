"""The soak command's one-minute run: every transfer verified, every action taken, samples of both
processes, the slopes and the verdict reported, nothing left behind; and its growth criterion on
series whose answer is known (no timing limits)."""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "soak.py"
sys.path.insert(0, str(SCRIPT.parent))

from soak import growth  # noqa: E402
from test_bench_tunnel import finish, leftovers, start  # noqa: E402

KINDS = {"tcp", "stcp", "http", "udp", "tcp_extra", "outage_probe"}
RELOADS = {"reload_add_admin", "reload_remove_sighup", "reload_add_sighup", "reload_remove_admin"}


@pytest.mark.skipif(shutil.which("ss") is None, reason="not installed: ss")
@pytest.mark.timeout(240)
def test_one_minute_soak_verifies_every_transfer_and_reports_flat_fds(tmp_path: Path) -> None:
    proc = start(tmp_path, "--minutes", "1", "--json", script=SCRIPT)
    out, err = finish(proc, timeout=200)
    assert out, err
    res = json.loads(out)

    transfers = res["transfers"]
    assert transfers["failed"] == 0, res["failures"]
    assert res["failures"] == []
    assert set(transfers["by_kind"]) == KINDS
    assert all(v["ok"] > 0 for v in transfers["by_kind"].values()), transfers
    assert set(res["reloads"]) == RELOADS
    assert res["restarts"] >= 1

    samples = res["samples"]
    assert len(samples) >= 20
    for s in samples:
        for role in ("server", "client"):
            assert s[role]["rss_kib"] > 0 and s[role]["fds"] > 0
            assert all(s[role][kind] > 0 for kind in ("heap", "anon", "files"))
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert 0 < res["warmup_s"] < samples[-1]["t"]

    for role in ("server", "client"):
        assert isinstance(res["slopes"][role]["rss_kib_per_min"], float)
        assert isinstance(res["slopes"][role]["fds_per_min"], float)
        for measure in ("rss_kib", "fds"):
            assert {"rise", "trend", "noise", "allowance", "per_min", "growing"} <= set(
                res["growth"][role][measure]
            )
        # fds are exact counts: a verdict in any run. Memory needs a longer window than a minute's (the
        # RSS still settles, the server's periodic hand-back of freed memory swings it): no verdict.
        assert res["growth"][role]["fds"]["growing"] is False, res["growth"][role]["fds"]
        assert res["growth"][role]["rss_kib"]["growing"] is None
        assert "too short" in res["growth"][role]["rss_kib"]["why"]
    for role in ("server", "client"):  # no exception escaped into the logs
        assert res["logs"][role]["tracebacks"] == 0, res["logs"]
    verdict = res["verdict"]
    assert {"memory_growing", "fds_growing", "transfers_failed", "pass", "reasons"} <= set(verdict)
    assert verdict["fds_growing"] is False
    assert verdict["memory_growing"] is None
    assert verdict["transfers_failed"] == 0
    assert verdict["pass"] is True and verdict["reasons"] == []
    assert proc.returncode == 0, err

    assert leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def series(
    f: Callable[[float], float], n: int = 360, noise: float = 50.0, seed: int = 1
) -> tuple[list[float], list[float]]:
    """``n`` samples 5 s apart (30 minutes) of ``f(t)`` (KiB) plus Gaussian noise."""
    rnd = random.Random(seed)
    ts = [5.0 * i for i in range(n)]
    return ts, [30_000 + f(t) + rnd.gauss(0, noise) for t in ts]


def test_growth_criterion_on_known_series() -> None:
    floor = 1024.0
    # Flat with noise; flat with rare spikes (a sample caught at a peak).
    assert growth(*series(lambda t: 0), floor)["growing"] is False
    ts, ys = series(lambda t: 0)
    ys = [y + (5000 if i % 17 == 0 else 0) for i, y in enumerate(ys)]
    assert growth(ts, ys, floor)["growing"] is False
    # A step that happens once (an arena added) between the second and the last quarter, then flat.
    assert growth(*series(lambda t: 3000 if t > 1000 else 0), floor)["growing"] is False
    # Warming up and flattening out (1 - e^-t).
    assert growth(*series(lambda t: 4000 * (1 - 2.718 ** (-t / 60))), floor)["growing"] is False
    # A leak: 100 KiB per minute, steadily; and in steps of 256 KiB every two minutes.
    assert growth(*series(lambda t: 100 * t / 60), floor)["growing"] is True
    assert growth(*series(lambda t: 256 * (t // 120)), floor)["growing"] is True
    # Noisier than the floor: the allowance follows the noise.
    g = growth(*series(lambda t: 0, noise=2000), floor)
    assert g["growing"] is False and g["allowance"] > floor
    # fds: exact counts, one more every 3 minutes is a leak; one more once is not.
    ts = [5.0 * i for i in range(360)]
    assert growth(ts, [20.0 + t // 180 for t in ts], 2.0)["growing"] is True
    assert growth(ts, [20.0 + (t > 100) for t in ts], 2.0)["growing"] is False
    # Too few samples, or too short a window: no verdict (the figures are still given).
    assert growth(ts[:5], [1.0] * 5, 2.0)["growing"] is None
    short = growth(*series(lambda t: 100 * t / 60, n=12), floor, min_span=240)
    assert short["growing"] is None and "rise" in short
