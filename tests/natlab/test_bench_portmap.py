"""Smoke test of ``bench/bench_portmap.py``: one quick round in the home-router lab, the shape of its
``--json``, bytes through every path, and nothing left behind (the mapping deleted, no lab namespace of the
run's own). Timing is the benchmark's business, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .lab import lab_namespaces
from .portmap_lab import missing_miniupnpd

pytestmark = pytest.mark.natlab

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_portmap.py"


def test_bench_portmap_quick_round(natlab_ready: None) -> None:
    if (reason := missing_miniupnpd()) is not None:
        pytest.skip(reason)
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    res = json.loads(out)
    paths = {"mapped", "routed", "direct", "outbound"}
    assert res["rounds"] == 1 and set(res["throughput_gbps_median"]) == paths, res
    assert all(n > 0 for n in res["bytes_received"].values()), res
    assert res["mapping"]["via"] == "pcp" and res["mapping"]["public"] == "11.0.0.1:6201", res
    assert res["mapping"]["map_port_exit_code"] == 0 and res["mapping"]["deleted_at_exit"] is True, res
    assert set(res["ratios"]) == {
        "throughput_mapped_vs_routed",
        "throughput_mapped_vs_outbound",
        "throughput_direct_vs_routed",
    }, res
    assert res["bars"]["throughput_mapped_vs_routed"]["bar"] == ">= 0.9x", res
    assert isinstance(res["bars"]["throughput_mapped_vs_routed"]["met"], bool), res
    leftover = [ns for ns in lab_namespaces() if ns.startswith(f"pz-{proc.pid}-")]
    assert leftover == [], leftover
