"""The load benchmark's smoke run: every path reported with every transfer verified and no failure, the
churn's first-byte percentiles, and nothing left behind (no timing limits)."""

from __future__ import annotations

import json
from pathlib import Path

from test_bench_tunnel import finish, leftovers, start

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_load.py"


def test_quick_run_verifies_every_transfer_on_every_path(tmp_path: Path) -> None:
    proc = start(tmp_path, "--quick", "--json", script=SCRIPT)
    out, err = finish(proc, timeout=240)
    assert proc.returncode == 0, err
    res = json.loads(out)

    assert res["connections"] == 100 and res["size"] == 64 * 1024 and res["failures"] == 0
    assert list(res["paths"]) == ["tcp", "http", "p2p"]
    for kind, path in res["paths"].items():
        assert path["connections"] == 100
        assert path["ok"] == 100 and path["failures"] == 0, (kind, path["failure_reasons"])
        assert path["max_open"] > 1
        assert set(path["conn_ms"]) == {"p50", "p99", "max"}
        assert 0 < path["conn_ms"]["p50"] <= path["conn_ms"]["p99"] <= path["conn_ms"]["max"]
        assert path["total_s"] > 0 and path["payload_mib_per_s"] > 0
    # Every P2P connection took a direct path, none the server.
    p2p_paths = res["paths"]["p2p"]["conn_paths"]
    assert sum(p2p_paths.values()) == 100 and "relay" not in p2p_paths

    churn = res["churn"]
    assert churn["connections"] == 500 and churn["concurrency"] == 1
    assert churn["ok"] == 500 and churn["failures"] == 0
    t = churn["ttfb_ms"]
    assert 0 < t["p50"] <= t["p90"] <= t["p99"] <= t["max"]

    assert leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []
