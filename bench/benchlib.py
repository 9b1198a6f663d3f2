"""Pieces shared by the benchmark scripts: processes, readiness, iperf3, connection latency, ratios.

Every measurement can run inside a network namespace: pass the ``ip netns exec NS`` prefix as ``prefix``
(an empty list means the current namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: A TCP echo (asyncio, uvloop when installed) on ``argv[1]``, any free port; prints the port.
ECHO_SERVER = r"""
import asyncio, resource, socket, sys
try:
    import uvloop
except ImportError:
    uvloop = None

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

async def handle(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, sys.argv[1], 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

(uvloop.run if uvloop else asyncio.run)(main())
"""

#: ``count`` sequential connect / send 1 byte / read the echo / close; prints the median in microseconds.
LATENCY_CLIENT = r"""
import socket, statistics, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for _ in range(count):
    t0 = time.perf_counter()
    with socket.create_connection((host, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise SystemExit("echo mismatch")
    times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1e6)
"""


def missing_tools(*tools: str) -> str | None:
    """The first tool not on PATH, or None."""
    return next((tool for tool in tools if shutil.which(tool) is None), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Procs:
    """Background processes, each in its own process group; ``close()`` stops them all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def start_echo(procs: Procs, host: str, prefix: Sequence[str] = ()) -> int:
    """Start `ECHO_SERVER` on ``host``; return its port."""
    echo = procs.start([*prefix, sys.executable, "-c", ECHO_SERVER, host], stdout=subprocess.PIPE)
    assert echo.stdout is not None
    return int(echo.stdout.readline())


def wait_listening(port: int, prefix: Sequence[str] = (), timeout: float = 10) -> None:
    """Poll `ss` (in the namespace of ``prefix``) until something listens on TCP ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([*prefix, "ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
        if out.stdout.strip():
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def iperf(host: str, port: int, seconds: float, prefix: Sequence[str] = ()) -> float:
    """One single-stream ``iperf3 -c`` run; received Gbit/s (``end.sum_received``).

    iperf3's server runs one test at a time and may still be finishing the previous one (its
    results exchange) when the next client arrives: "busy" is retried for a few seconds.
    """
    for attempt in range(20):
        out = subprocess.run(
            [*prefix, "iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        doc = json.loads(out.stdout)
        if "busy" in str(doc.get("error", "")) and attempt < 19:
            time.sleep(0.25)
            continue
        if "error" in doc:
            raise RuntimeError(doc["error"])
        return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
    raise AssertionError("unreachable")


def connect_latency(host: str, port: int, count: int, prefix: Sequence[str] = ()) -> float:
    """Median microseconds for connect + 1-byte echo + close, measured in a fresh process."""
    out = subprocess.run(
        [*prefix, sys.executable, "-c", LATENCY_CLIENT, host, str(port), str(count)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return float(out.stdout)


def rotated(items: list[str], k: int) -> Iterator[str]:
    """``items`` starting at index ``k``: each round runs the paths in another order."""
    k %= len(items)
    yield from items[k:] + items[:k]


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Pair by pair within each round, then the median: robust to drift between rounds."""
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 2)


def percentile(ordered: Sequence[int], q: float) -> int:
    """The nearest-rank ``q``-th percentile of a sorted, non-empty sequence."""
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid`` (all their threads)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class NetnsChain:
    """Network namespaces ``TAG-a``, ``TAG-b`` and ``TAG-c`` in a row, joined by two veth links (MTU 1500).

    Link a-b is 198.51.100.0/24 (a .2, b .1), link b-c is 203.0.113.0/24 (b .1, c .3); b forwards between
    them, so a and c reach each other routed by b's kernel. Needs root. ``close()`` kills what still runs
    inside and deletes the namespaces (their veths go with them); it is safe after a partial ``build()``.
    """

    A_IP, B_A_IP, B_C_IP, C_IP = "198.51.100.2", "198.51.100.1", "203.0.113.1", "203.0.113.3"

    def __init__(self, tag: str) -> None:
        self.names = tuple(f"{tag}-{r}" for r in "abc")

    @staticmethod
    def prefix(ns: str) -> list[str]:
        """The command prefix that runs a command inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns]

    def build(self) -> None:
        a, b, c = self.names
        cmds = [
            *(["ip", "netns", "add", n] for n in (a, b, c)),
            *(["ip", "-n", n, "link", "set", "lo", "up"] for n in (a, b, c)),
            ["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b],
            ["ip", "-n", b, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", c],
            ["ip", "-n", a, "addr", "add", f"{self.A_IP}/24", "dev", "eth0"],
            ["ip", "-n", b, "addr", "add", f"{self.B_A_IP}/24", "dev", "eth0"],
            ["ip", "-n", b, "addr", "add", f"{self.B_C_IP}/24", "dev", "eth1"],
            ["ip", "-n", c, "addr", "add", f"{self.C_IP}/24", "dev", "eth0"],
            ["ip", "-n", a, "link", "set", "eth0", "up"],
            ["ip", "-n", b, "link", "set", "eth0", "up"],
            ["ip", "-n", b, "link", "set", "eth1", "up"],
            ["ip", "-n", c, "link", "set", "eth0", "up"],
            ["ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["ip", "-n", a, "route", "add", "203.0.113.0/24", "via", self.B_A_IP],
            ["ip", "-n", c, "route", "add", "198.51.100.0/24", "via", self.B_C_IP],
        ]
        for cmd in cmds:
            subprocess.run(cmd, check=True)

    def close(self) -> None:
        for ns in self.names:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)
