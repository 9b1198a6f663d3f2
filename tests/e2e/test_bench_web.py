"""The web benchmark's smoke run: every path measured, every field reported, no errors (no timing limits)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_web.py"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
MISSING = [
    f"{tool} (Debian package {package})"
    for tool, package, found in [
        ("nginx", "nginx", NGINX),
        ("wrk", "wrk", shutil.which("wrk")),
        ("h2load", "nghttp2-client", shutil.which("h2load")),
        ("ss", "iproute2", shutil.which("ss")),
    ]
    if found is None
]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")

PATHS = {"direct", "nginx", "pierce", "pierce_base"}
WRK_ERRORS = {"connect", "read", "write", "status", "timeout"}
RATE_ERRORS = {"failed", "errored", "timeout", "non_2xx", "not_done"}


def run_quick(*args: str) -> dict[str, Any]:
    """``bench_web.py --quick --json``; on a hang it is terminated, which stops its nginx and pierce."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--json", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    assert proc.returncode == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_quick_run_reports_every_path_and_the_constant_rate_without_errors() -> None:
    """With this tree as its own baseline too (``--baseline``: the pierce_base path)."""
    res = run_quick("--baseline", str(ROOT))

    assert res["page_bytes"] == 1024
    assert (res["connections"], res["threads"]) == (32, 2)
    assert set(res["requests_per_s_median"]) == PATHS
    assert all(value > 0 for value in res["requests_per_s_median"].values())
    assert set(res["latency_us_median"]) == PATHS
    for latency in res["latency_us_median"].values():
        assert set(latency) == {"p50", "p99"}
        assert 0 < latency["p50"] <= latency["p99"]
    assert res["errors"] == {path: dict.fromkeys(WRK_ERRORS, 0) for path in PATHS}
    assert res["body_sha256_ok"] == dict.fromkeys(PATHS, True)
    assert set(res["cpu_us_per_request"]) == {
        "nginx",
        "pierce_server",
        "pierce_client",
        "pierce_base_server",
        "pierce_base_client",
    }
    assert set(res["ratios"]) == {
        "rps_pierce_vs_nginx",
        "rps_pierce_vs_direct",
        "rps_nginx_vs_direct",
        "rps_pierce_vs_base",
    }
    assert res["baseline"] == str(ROOT)
    assert all(isinstance(value, float) for value in res["ratios"].values())

    rate = res["constant_rate"]
    assert (rate["target_rps"], rate["clients"]) == (4000, 40)
    assert rate["requests"] == rate["target_rps"] * rate["seconds"]
    assert rate["succeeded"] == rate["requests"]
    assert rate["errors"] == dict.fromkeys(RATE_ERRORS, 0)
    assert rate["body_bytes_ok"] is True
    assert rate["zero_errors"] is True
    assert rate["achieved_rps"] > 0
    assert 0 < rate["p50_us"] <= rate["p99_us"] <= rate["max_us"]
    assert isinstance(rate["rate_held"], bool)

    bars = res["bars"]
    assert isinstance(bars["rps_pierce_vs_nginx"]["met"], bool)
    assert isinstance(bars["rps_pierce_vs_base"]["met"], bool)
    # A 3-second run cannot meet the 30-second bar; with zero errors it is reported as not measured.
    assert bars["constant_rate"]["met"] is None
