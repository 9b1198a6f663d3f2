"""The tunnel benchmark's smoke run: every path in every topology reported, nothing left behind after a run
or a Ctrl-C (no timing limits)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_tunnel.py"
SSHD = "/usr/sbin/sshd"
MISSING = [tool for tool in ("iperf3", "socat", "ss", "ssh", "ssh-keygen") if shutil.which(tool) is None] + (
    [] if os.access(SSHD, os.X_OK) else [SSHD]
)
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")
#: The namespace topology needs root and iproute2.
NETNS = os.geteuid() == 0 and shutil.which("ip") is not None

#: stunnel is a peer when installed (Debian stunnel4; CI installs it).
PATHS = ["direct", "pierce-tls", "ssh-R", "pierce-plain", "socat"] + (
    ["stunnel"] if shutil.which("stunnel") and shutil.which("openssl") else []
)
BARS = {"throughput_pierce_tls_vs_ssh", "throughput_pierce_plain_vs_socat", "first_byte_pierce_tls_vs_socat"}
QUICK = ["--rounds", "1", "--seconds", "1", "--connections", "20", "--idle-conns", "20"]


def start(tmp_path: Path, *args: str, script: Path = SCRIPT) -> subprocess.Popen[str]:
    """The benchmark (``script``, this one's by default) with its temporary files under ``tmp_path``: every
    process it starts inherits that TMPDIR, which is how leftovers are found."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Output of a finished run; on a hang it is terminated, which stops and removes what it started."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise


def namespaces(pid: int) -> list[str]:
    """Network namespaces of the benchmark process ``pid``."""
    if not NETNS:
        return []
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"pzt{pid % 100000}-")]


def leftovers(tmp_path: Path) -> list[str]:
    """Command lines of live processes started by a run whose TMPDIR was ``tmp_path``: that TMPDIR is in
    their environment, or (sshd, which writes its process title over it) their files are in their title."""
    marker = f"TMPDIR={tmp_path}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if marker in environ or str(tmp_path) in cmd:
            found.append(cmd)
    return found


def check_topology(res: dict[str, Any], path: str) -> None:
    assert res["path"] == path
    assert list(res["throughput_gbps_median"]) == PATHS
    assert list(res["first_byte_us_median"]) == PATHS
    assert all(v > 0 for v in res["throughput_gbps_median"].values())
    assert all(v > 0 for v in res["first_byte_us_median"].values())
    assert all(v > 0 for v in res["ratios"].values())
    assert set(res["bars"]) == BARS
    assert all(isinstance(bar["met"], bool) for bar in res["bars"].values())


def test_quick_run_reports_every_path_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc = start(tmp_path, *QUICK, *(["--netns"] if NETNS else []), "--json")
    out, err = finish(proc, timeout=100)
    assert proc.returncode == 0, err
    results = json.loads(out)

    assert [r["path"] for r in results] == (["loopback", "netns-veth"] if NETNS else ["loopback"])
    loopback = results[0]
    check_topology(loopback, "loopback")
    for mode in ("tls", "plain"):
        rss = loopback["rss"][mode]
        assert rss["conns"] == 20
        assert rss["idle_mib"] > 0
        assert rss["loaded_mib"] > 0
        assert rss["fds"] > 20
    if NETNS:
        check_topology(results[1], "netns-veth")
        assert "rss" not in results[1]
        assert "203.0.113" in results[1]["layout"] and "198.51.100" in results[1]["layout"]

    assert namespaces(proc.pid) == []
    assert leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not NETNS, reason="needs root and iproute2")
def test_ctrl_c_in_the_namespaces_removes_them_and_every_process(tmp_path: Path) -> None:
    proc = start(tmp_path, *QUICK, "--netns")
    try:
        # Interrupt once the LAN namespace runs its services, a pierce client and the ssh -R client.
        deadline = time.monotonic() + 90
        while not any(cmd.startswith("ssh ") for cmd in lan_processes(proc.pid)):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the namespaces never came up"
            time.sleep(0.1)
        assert namespaces(proc.pid)
        running = leftovers(tmp_path)
        assert any("iperf3 -s" in cmd for cmd in running) and any("sshd" in cmd for cmd in running)
        proc.send_signal(signal.SIGINT)
        _, err = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert namespaces(proc.pid) == []
    assert leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def lan_processes(pid: int) -> list[str]:
    """Command lines of the processes in the benchmark's LAN namespace (none before it exists)."""
    ns = f"pzt{pid % 100000}-c"
    if ns not in namespaces(pid):
        return []
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    cmds = []
    for p in pids:
        try:
            cmds.append(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return cmds


CHROMIUM = os.environ.get("PIERCE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (Debian package chromium)")
def test_web_run_reports_the_server_cpu_per_gib_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc = start(tmp_path, "--web", "--rounds", "1", "--seconds", "1", "--json")
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    (res,) = json.loads(out)
    assert res["path"] == "loopback-web"
    assert list(res["server_cpu_s_per_gib_median"]) == ["no-web", "web", "web+dashboard"]
    assert all(v > 0 for v in res["throughput_gbps_median"].values())
    assert all(v > 0 for v in res["server_cpu_s_per_gib_median"].values())
    assert set(res["ratios"]) == {"cpu_per_gib_dashboard_vs_web", "cpu_per_gib_web_vs_no_web"}
    assert isinstance(res["bars"]["cpu_per_gib_dashboard_vs_web"]["met"], bool)
    assert res["server_busy_cpu_s_per_s_median"] > 0
    assert set(res["server_idle_cpu_ms_per_s_mean"]) == {"closed", "open"}
    assert isinstance(res["dashboard_cpu_share_of_busy_server"], float)
    assert leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []
