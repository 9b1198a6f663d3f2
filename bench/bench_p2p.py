#!/usr/bin/env python3
"""How often pierce's xtcp goes direct, between every pair of NAT kinds, through real Linux NATs.

The namespace lab of ``tests/natlab`` (``p2p_cells.matrix_lab``: an owner site and a visitor site of each
kind — none, cone, full-cone, symmetric, udp-blocked, syn-drop — plus one LAN shared by owner and
visitor without and one with hairpinning, and a ``pierce server`` on the core), built in both shapes:
``internet`` (each NAT behind its own ISP router) and ``flat`` (every NAT and the server on one bridge).

Per cell the owner's client (an ``xtcp`` proxy for a TCP echo) runs throughout; each attempt forgets
every router's UDP conntrack entries (TCP sessions, such as the owner's control connection, stay), starts
a fresh ``pierce visit --p2p``, waits for its verdict (``p2p.direct`` with the path kind and the time it
took, or ``p2p.failed``), sends 1 KiB through its port and back (``connected`` = that echo came back
whole, by whatever path), and stops the visitor. Reported per cell: direct successes / attempts,
connected / attempts, the median time to a usable direct path (the visitor's ``elapsed_ms``), and the
path kinds seen.

Throughput (``--size-mib``, default 32, each way through an echo, SHA-256 checked): in full-cone × cone
(direct in both shapes), the direct path (xtcp) against the relay (an stcp proxy of the same owner, same
service, same NATs), each ``--rounds`` times, interleaved; the ratio is direct / relay, paired per round.

``--throughput``: only the paths, in their own two-site lab (cone × cone, internet shape), one run,
``--rounds`` rounds of each ``--sizes`` (MiB, default 4,16,64), the order rotating every round; every
figure is the client's own time from its connect (or the stream's first byte) to the end of the echo,
both directions summed:

- relay: an stcp visitor of the owner's stcp proxy (same service, the server in the middle);
- direct tcp: an xtcp visitor whose connections take its ready direct TCP connection;
- quic: an xtcp visitor with ``[p2p] direct_tcp = false`` (a QUIC stream in the punched hole);
- bare: aioquic alone (``bench/bare_quic_echo.py``: two `QuicConnection`s and the least driver) between
  the same two hosts through the same NATs, to a UDP port forward on the owner's router; with aioquic's
  pacer (``bare``) and with pierce's (``bare_paced``, `pierce.p2p.quic_core.CoarsePacer`).

Reported per size: medians, direct tcp / relay and quic / bare (paired per round). ``--profile``
then samples (py-spy, when installed) both ends of one transfer of the largest size over the QUIC
path and over bare aioquic, and prints where each end's CPU time went by kind of work.

Needs root (network namespaces). Usage:
``sudo .venv/bin/python bench/bench_p2p.py [--attempts 20] [--shapes internet,flat] [--cells cone,sym]
[--rounds 3] [--size-mib 32] [--parallel 3] [--json]``, or ``sudo .venv/bin/python bench/bench_p2p.py
--throughput [--sizes 4,16,64] [--rounds 5] [--profile] [--json]`` (``--cells``: only cells whose name
contains one of the words; ``--parallel``: cells at once, only cells that share no site, which mostly
overlaps the waits of cells without UDP, whose visitors give up after the 10 s punch budget).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from natlab.lab import Lab, LabError, Proc, missing_prerequisites, sweep_stale  # noqa: E402
from natlab.p2p_cells import (  # noqa: E402
    CELLS,
    VISIT_PORT,
    Cell,
    PierceLab,
    Verdict,
    echo_transfer,
    matrix_lab,
    random_payload,
    tcp_verdict,
    verdict,
)
from natlab.p2p_lab import Shape, SiteSpec, build  # noqa: E402

PING = bytes(range(256)) * 4
BENCH = Path(__file__).resolve().parent
#: UDP ports of the bare aioquic echo servers (forwarded on the owner's router), by pacer.
BARE_PORTS = {"aioquic": 4433, "pierce": 4434}
PATHS = ("relay", "direct_tcp", "quic", "bare", "bare_paced")


def attempt(pl: PierceLab, cell: Cell) -> tuple[Verdict, Verdict, str, bool]:
    """One fresh visitor of ``cell``'s owner (already running): its verdicts on the UDP path and on a
    direct TCP connection, the path 1 KiB then took, and whether it echoed whole."""
    owner_host, visitor_host = cell.hosts(pl.plab)
    pl.plab.flush_conntrack("udp", cell.sites(pl.plab))
    visitor = pl.visitor(visitor_host, owner_host)
    try:
        try:
            got = verdict(visitor)
        except LabError as exc:
            none = Verdict("none", reason=f"no verdict: {str(exc).splitlines()[0]}")
            return none, none, "none", False
        try:
            tcp = tcp_verdict(visitor)
        except LabError as exc:
            tcp = Verdict("none", reason=f"no verdict: {str(exc).splitlines()[0]}")
        [echo] = visitor_host.run_helper("tcp_client.py", f"127.0.0.1:{VISIT_PORT}", "--hex", PING.hex())
        ok = echo["result"] == "ok" and echo["sha256"] == hashlib.sha256(PING).hexdigest()
        opened = visitor.expect_json("stderr", event="visitor.open")
        return got, tcp, str(opened.get("conn_path")), ok
    finally:
        visitor.stop()


def run_cell(pl: PierceLab, cell: Cell, attempts: int) -> dict[str, Any]:
    owner_host, _ = cell.hosts(pl.plab)
    pl.plab.flush_conntrack(sites=cell.sites(pl.plab))
    service, client = pl.owner(owner_host)
    verdicts: list[Verdict] = []
    tcps: list[Verdict] = []
    conn_paths: list[str] = []
    connected = 0
    try:
        for _ in range(attempts):
            got, tcp, conn_path, ok = attempt(pl, cell)
            verdicts.append(got)
            tcps.append(tcp)
            conn_paths.append(conn_path)
            connected += ok
    finally:
        client.stop()
        service.stop()
    times = [v.elapsed_ms for v in verdicts if v.direct and v.elapsed_ms is not None]
    tcp_times = [v.elapsed_ms for v in tcps if v.direct and v.elapsed_ms is not None]
    return {
        "cell": cell.name,
        "attempts": attempts,
        "direct": sum(v.direct for v in verdicts),
        "direct_tcp": sum(v.direct for v in tcps),
        "connected": connected,
        "median_direct_ms": round(statistics.median(times)) if times else None,
        "median_tcp_ms": round(statistics.median(tcp_times)) if tcp_times else None,
        "paths": dict(Counter(v.path for v in verdicts)),
        "conn_paths": dict(Counter(conn_paths)),
        "reasons": dict(Counter(v.reason for v in verdicts if v.reason)),
        "tcp_reasons": dict(Counter(v.reason for v in tcps if v.reason)),
    }


def run_cells(
    pl: PierceLab, cells: list[Cell], attempts: int, parallel: int, shape: str
) -> list[dict[str, Any]]:
    """Every cell, up to ``parallel`` at once among cells that share no site (each flushes only its own
    sites' routers, so cells running together do not disturb each other); rows in ``cells`` order."""
    rows: dict[Cell, dict[str, Any]] = {}
    busy: set[str] = set()
    waiting = list(cells)
    lock = threading.Condition()

    def worker() -> None:
        while True:
            with lock:
                while True:
                    if not waiting:
                        return
                    cell = next(
                        (c for c in waiting if not {s.spec.name for s in c.sites(pl.plab)} & busy), None
                    )
                    if cell is not None:
                        break
                    lock.wait()
                waiting.remove(cell)
                names = {s.spec.name for s in cell.sites(pl.plab)}
                busy.update(names)
            try:
                row = run_cell(pl, cell, attempts)
            except (LabError, OSError) as exc:  # the cell could not run (owner did not start...)
                row = {"cell": cell.name, "attempts": attempts, "direct": 0, "direct_tcp": 0, "connected": 0}
                row.update(median_direct_ms=None, median_tcp_ms=None, paths={}, conn_paths={})
                row.update(reasons={}, tcp_reasons={}, error=str(exc)[:2000])
            finally:
                with lock:
                    busy.difference_update(names)
                    lock.notify_all()
            rows[cell] = row
            print(f"[{shape}] {row}", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=worker) for _ in range(max(1, parallel))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [rows[cell] for cell in cells]


def throughput(pl: PierceLab, rounds: int, size: int, workdir: Path) -> dict[str, Any]:
    """full-cone × cone (direct in both shapes): the direct path against the relay (an stcp proxy of the
    same owner for the same service), interleaved; Mbit/s, both directions summed."""
    cell = Cell("full-cone", "cone")
    owner_host, visitor_host = cell.hosts(pl.plab)
    payload = random_payload(workdir / "payload.bin", size)
    pl.plab.flush_conntrack()
    service, client = pl.owner(owner_host, also_stcp=True)
    procs = [client, service]
    rows: dict[str, list[float]] = {"direct": [], "relay": []}
    try:
        direct = pl.visitor(visitor_host, owner_host)
        procs.insert(0, direct)
        relay = pl.visitor(visitor_host, owner_host, stcp=True, port=VISIT_PORT + 1)
        procs.insert(0, relay)
        got = verdict(direct)
        if not got.direct:
            raise LabError(f"{cell.name}: no direct path for the throughput run: {got}")
        for _ in range(rounds):
            moved = echo_transfer(pl.plab, visitor_host, direct, payload)
            rows["direct"].append(moved.mbit_s)
            moved = echo_transfer(pl.plab, visitor_host, relay, payload, port=VISIT_PORT + 1)
            rows["relay"].append(moved.mbit_s)
    finally:
        for proc in procs:
            proc.stop()
    ratios = [d / r for d, r in zip(rows["direct"], rows["relay"], strict=True)]
    return {
        "cell": cell.name,
        "direct_path": got.path,
        "direct_mbit_s": round(statistics.median(rows["direct"]), 1),
        "relay_mbit_s": round(statistics.median(rows["relay"]), 1),
        "ratio": round(statistics.median(ratios), 2),
        "rounds": rounds,
        "size_mib": size >> 20,
    }


class PathLab:
    """The two-site lab of ``--throughput``: every path between the same owner and visitor hosts."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        plab = build(lab, [SiteSpec("a", "cone"), SiteSpec("b", "cone")])
        self.pl = pl = PierceLab(plab, workdir)
        workdir.mkdir()
        pl.start_server()
        self.owner_site, visitor_site = plab.sites["a"], plab.sites["b"]
        self.owner, self.visitor = self.owner_site.host, visitor_site.host
        _, self.owner_client = pl.owner(self.owner, also_stcp=True)
        self.bare_servers: dict[str, Proc] = {}
        assert self.owner_site.router is not None
        for pacer, port in BARE_PORTS.items():
            server = self.owner.python(
                BENCH / "bare_quic_echo.py", "server", "--port", port, "--pacer", pacer, label="bare-server"
            )
            server.ready_port()
            self.bare_servers[pacer] = server
            self.owner_site.router.forward("udp", port, self.owner.ip("lan-a"))
        self.ports = {"relay": VISIT_PORT + 1, "direct_tcp": VISIT_PORT, "quic": VISIT_PORT + 2}
        self.procs = {
            "relay": pl.visitor(self.visitor, self.owner, stcp=True, port=self.ports["relay"]),
            "direct_tcp": pl.visitor(self.visitor, self.owner, port=self.ports["direct_tcp"]),
            "quic": pl.visitor(self.visitor, self.owner, port=self.ports["quic"], direct_tcp=False),
        }
        for name in ("direct_tcp", "quic"):
            got = verdict(self.procs[name])
            if got.path != "direct udp":
                raise LabError(f"{name}: no direct UDP path for the throughput run: {got}")
        # The TCP outcome is told after the UDP one.
        tcp = self.procs["direct_tcp"].expect_json("stderr", timeout=40, event="p2p.direct", proto="tcp")
        self.tcp_path = str(tcp.get("conn_path"))

    def transfer(self, path: str, payload: Path) -> tuple[float, str, float]:
        """One echo of ``payload`` over ``path``: Mbit/s (both ways summed), the path it took, and the CPU
        seconds its two ends (the owner's and the visitor's processes) took meanwhile."""
        size = payload.stat().st_size
        if path.startswith("bare"):
            pacer = "pierce" if path == "bare_paced" else "aioquic"
            server = self.bare_servers[pacer].pid
            cpu0 = cpu_seconds(server)
            [doc] = self.bare_client(payload, pacer)
            cpu = cpu_seconds(server) - cpu0 + doc.get("cpu_s", 0.0)
            if doc.get("result") != "ok" or doc["received"] != size:
                raise LabError(f"bare aioquic echo failed: {doc}")
            if doc["sha256"] != hashlib.sha256(payload.read_bytes()).hexdigest():
                raise LabError(f"bare aioquic echo came back different: {doc}")
            return 2 * size * 8 / doc["seconds"] / 1e6, f"bare aioquic ({pacer}'s pacer)", cpu
        ends = (self.owner_client.pid, self.procs[path].pid)
        cpu0 = sum(map(cpu_seconds, ends))
        moved = echo_transfer(self.pl.plab, self.visitor, self.procs[path], payload, port=self.ports[path])
        return moved.mbit_s, moved.conn_path, sum(map(cpu_seconds, ends)) - cpu0

    def bare_client(self, payload: Path, pacer: str, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        target = f"{self.owner_site.public_ip}:{BARE_PORTS[pacer]}"
        argv = (*prefix, sys.executable, BENCH / "bare_quic_echo.py", "client", target, "--send", payload,
                "--pacer", pacer)  # fmt: skip
        out = self.visitor.run(*argv, timeout=300).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Kinds of work in a py-spy sample, decided by the innermost aioquic frame of its stack (by file, then
#: function), else by the innermost frame: the first rule whose fragment is in ``file:function`` wins.
AIOQUIC_KINDS = [
    ("packet protection (AES-GCM, header protection)", ("crypto.py", "cryptography")),
    ("ACKs, loss recovery, congestion control", ("recovery.py", "congestion", "ack_frame", "rangeset.py")),
    ("building packets and frames", ("packet_builder.py", ":_write", ":datagrams_to_send", "stream.py:get_")),
    ("parsing received packets and frames", ("connection.py", "packet.py", "stream.py", "_buffer")),
    ("other aioquic", ("aioquic",)),
]
OTHER_KINDS = [
    ("pierce's layer (QuicPath, streams, relay)", ("pierce",)),
    ("the bare driver (incl. sendto/recvfrom)", ("bare_quic_echo.py",)),
    ("event loop and the rest", ("",)),
]


def classify(stack: list[str]) -> str:
    """``stack``: py-spy frames ``function (file:line)``, outermost first."""
    for frame in reversed(stack):
        func, _, where = frame.partition(" (")
        key = f"{where.rsplit(':', 1)[0]}:{func}"
        if "aioquic" in key:
            return next(kind for kind, frags in AIOQUIC_KINDS if any(f in key for f in frags))
    func, _, where = stack[-1].partition(" (") if stack else ("", "", "")
    key = f"{where.rsplit(':', 1)[0]}:{func}"
    return next(kind for kind, frags in OTHER_KINDS if any(f in key for f in frags))


def spy_summary(raw: Path, rate: int) -> dict[str, Any]:
    """CPU seconds sampled in a py-spy ``--format raw`` file, and their shares by kind of work."""
    kinds: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            kinds[classify(stack.split(";")[1:])] += int(count)  # the first frame names the thread
    total = sum(kinds.values()) or 1
    return {
        "cpu_s": round(total / rate, 2),
        "shares": {kind: round(n / total, 3) for kind, n in kinds.most_common()},
    }


def run_profiles(paths: PathLab, workdir: Path, size: int) -> dict[str, Any] | None:
    """Both ends of one ``size`` MiB echo over the QUIC path and over bare aioquic, sampled by py-spy."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("--profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return None
    rate = 250
    payload = random_payload(workdir / f"payload-{size}.bin", size << 20)
    out: dict[str, Any] = {"size_mib": size, "rate_hz": rate}

    def record(pid: int, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        raw = workdir / f"{name}.txt"
        argv = [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(raw),
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
        return proc, raw

    def finish(spies: list[tuple[subprocess.Popen[bytes], Path]]) -> list[dict[str, Any]]:
        for proc, _ in spies:
            proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
        for proc, _ in spies:
            proc.wait(30)
        return [spy_summary(raw, rate) for _, raw in spies]

    spies = [record(paths.owner_client.pid, "quic-owner"), record(paths.procs["quic"].pid, "quic-visitor")]
    mbit, _, _ = paths.transfer("quic", payload)
    owner, visitor = finish(spies)
    out["quic"] = {"mbit_s": round(mbit, 1), "owner": owner, "visitor": visitor}
    for pacer, name in (("aioquic", "bare"), ("pierce", "bare_paced")):
        spies = [record(paths.bare_servers[pacer].pid, f"{name}-server")]
        raw = workdir / f"{name}-client.txt"
        prefix = (spy, "record", "--rate", str(rate), "--format", "raw", "--output", str(raw), "--")
        [doc] = paths.bare_client(payload, pacer, prefix)
        [server] = finish(spies)
        mbit = 2 * (size << 20) * 8 / doc["seconds"] / 1e6
        out[name] = {"mbit_s": round(mbit, 1), "owner": server, "visitor": spy_summary(raw, rate)}
    return out


def lab_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sizes = [int(x) for x in args.sizes.split(",")]
    started = time.monotonic()
    with Lab() as lab:
        paths = PathLab(lab, workdir / "paths")
        rows: dict[int, dict[str, list[float]]] = {size: {p: [] for p in PATHS} for size in sizes}
        cpus: dict[int, dict[str, list[float]]] = {size: {p: [] for p in PATHS} for size in sizes}
        seen: dict[str, set[str]] = {p: set() for p in PATHS}
        for r in range(args.rounds):
            for size in sizes:
                payload = random_payload(workdir / f"payload-{size}.bin", size << 20)
                for path in PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]:
                    mbit, conn_path, cpu = paths.transfer(path, payload)
                    rows[size][path].append(mbit)
                    cpus[size][path].append(cpu * 1000 / (2 * size))
                    seen[path].add(conn_path)
                    print(f"[throughput] round {r + 1} {size} MiB {path}: {mbit:.0f} Mbit/s ({conn_path})",
                          file=sys.stderr, flush=True)  # fmt: skip
        profile = run_profiles(paths, workdir, max(sizes)) if args.profile else None
    return {
        "lab": "cone × cone, internet shape",
        "rounds": args.rounds,
        "tcp_path": paths.tcp_path,
        "paths_seen": {p: sorted(v) for p, v in seen.items()},
        "sizes": [size_row(size, rows[size], cpus[size]) for size in sizes],
        "profile": profile,
        "seconds": round(time.monotonic() - started),
    }


def size_row(size: int, runs: dict[str, list[float]], cpus: dict[str, list[float]]) -> dict[str, Any]:
    def paired(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(runs[a], runs[b], strict=True)), 2)

    row: dict[str, Any] = {"size_mib": size}
    for path in PATHS:
        row[f"{path}_mbit_s"] = round(statistics.median(runs[path]), 1)
        row[f"{path}_runs"] = [round(x, 1) for x in runs[path]]
        row[f"{path}_cpu_ms_per_mib"] = round(statistics.median(cpus[path]), 1)
    row["direct_tcp_to_relay"] = paired("direct_tcp", "relay")
    row["quic_to_bare"] = paired("quic", "bare")
    row["quic_to_bare_paced"] = paired("quic", "bare_paced")
    row["quic_cpu_to_bare"] = round(row["quic_cpu_ms_per_mib"] / row["bare_cpu_ms_per_mib"], 2)
    return row


def run_shape(shape: Shape, cells: list[Cell], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    with Lab() as lab:
        pl = PierceLab(matrix_lab(lab, shape), workdir / shape)
        pl.workdir.mkdir()
        pl.start_server()
        results = run_cells(pl, cells, args.attempts, args.parallel, shape)
        speed = throughput(pl, args.rounds, args.size_mib << 20, workdir) if args.rounds else None
    return {
        "shape": shape,
        "cells": results,
        "throughput": speed,
        "seconds": round(time.monotonic() - started),
    }


def markdown(report: dict[str, Any]) -> str:
    out = []
    for shape in report["shapes"]:
        out.append(
            f"**{shape['shape']}** ({report['attempts']} attempts per cell, "
            f"{report['parallel']} cells at once, {shape['seconds']} s)\n"
        )
        out.append(
            "| owner × visitor | UDP direct | median ms | UDP paths | TCP direct | median ms "
            "| a connection took | connected |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for row in shape["cells"]:
            n = row["attempts"]
            ms = "–" if row["median_direct_ms"] is None else str(row["median_direct_ms"])
            tcp_ms = "–" if row["median_tcp_ms"] is None else str(row["median_tcp_ms"])
            paths = ", ".join(f"{path} {count}" for path, count in sorted(row["paths"].items()))
            took = ", ".join(f"{path} {count}" for path, count in sorted(row["conn_paths"].items()))
            out.append(
                f"| {row['cell']} | {row['direct']}/{n} | {ms} | {paths} "
                f"| {row['direct_tcp']}/{n} | {tcp_ms} | {took} | {row['connected']}/{n} |"
            )
        speed = shape["throughput"]
        if speed:
            out.append(
                f"\nThroughput, {speed['cell']}, {speed['size_mib']} MiB each way, "
                f"median of {speed['rounds']}: "
                f"direct ({speed['direct_path']}) {speed['direct_mbit_s']} Mbit/s, relay "
                f"{speed['relay_mbit_s']} Mbit/s, direct / relay **{speed['ratio']}x**."
            )
        out.append("")
    return "\n".join(out)


LABELS = {
    "relay": "relay (stcp)",
    "direct_tcp": "direct tcp",
    "quic": "QUIC path",
    "bare": "bare aioquic",
    "bare_paced": "bare aioquic, pierce's pacer",
}


def throughput_markdown(report: dict[str, Any]) -> str:
    out = [
        f"Throughput, {report['lab']}, echo of N MiB each way (Mbit/s, both ways summed), "
        f"median of {report['rounds']} rounds ({report['seconds']} s):\n",
        "| MiB | " + " | ".join(LABELS[p] for p in PATHS) + " | direct tcp / relay | QUIC / bare "
        "| QUIC / bare (pierce's pacer) |",
        "|---" * (len(PATHS) + 4) + "|",
    ]
    for row in report["sizes"]:
        cells = " | ".join(f"{row[f'{p}_mbit_s']:,.0f}" for p in PATHS)
        out.append(
            f"| {row['size_mib']} | {cells} | {row['direct_tcp_to_relay']}x | {row['quic_to_bare']}x "
            f"| {row['quic_to_bare_paced']}x |"
        )
    out.append(
        "\nCPU of both ends per MiB moved (ms, medians): "
        + "; ".join(
            f"{row['size_mib']} MiB: "
            + ", ".join(f"{LABELS[p]} {row[f'{p}_cpu_ms_per_mib']}" for p in PATHS)
            + f" (QUIC / bare {row['quic_cpu_to_bare']}x)"
            for row in report["sizes"]
        )
        + "."
    )
    seen = "; ".join(f"{LABELS[p]}: {', '.join(v)}" for p, v in report["paths_seen"].items())
    out.append(f"\nPaths the connections took: {seen}.")
    profile = report.get("profile")
    if profile:
        out.append(f"\nWhere the CPU went ({profile['size_mib']} MiB, py-spy at {profile['rate_hz']} Hz):")
        for name in ("quic", "bare", "bare_paced"):
            run = profile[name]
            out.append(f"\n{LABELS[name]}, {run['mbit_s']:,.0f} Mbit/s:")
            for side in ("owner", "visitor"):
                spy = run[side]
                shares = ", ".join(f"{share:.0%} {kind}" for kind, share in spy["shares"].items())
                out.append(f"- {side} side, {spy['cpu_s']} CPU s: {shares}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attempts", type=int, default=20)
    parser.add_argument("--shapes", default="internet,flat")
    parser.add_argument("--cells", default="", help="comma-separated words; a cell runs if its name has one")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (0: none)")
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument(
        "--parallel", type=int, default=4, help="cells at once (only cells that share no site; 1: one by one)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--throughput", action="store_true", help="only the paths' throughput (see above)")
    parser.add_argument("--sizes", default="4,16,64", help="with --throughput: MiB per transfer")
    parser.add_argument("--profile", action="store_true", help="with --throughput: py-spy both QUIC ends")
    args = parser.parse_args()
    if (reason := missing_prerequisites()) is not None:
        raise SystemExit(reason)
    sweep_stale()
    if args.throughput:
        with tempfile.TemporaryDirectory(prefix="bench-p2p-") as tmp:
            os.environ.setdefault("PIERCE_STATE_DIR", tmp)
            speed = lab_throughput(args, Path(tmp))
        print(json.dumps(speed, indent=1) if args.json else throughput_markdown(speed))
        return
    words = [w for w in args.cells.split(",") if w]
    cells = [c for c in CELLS if not words or any(w in c.name for w in words)]
    shapes: list[Shape] = [s for s in ("internet", "flat") if s in args.shapes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-p2p-") as tmp:
        os.environ.setdefault("PIERCE_STATE_DIR", tmp)
        report = {
            "attempts": args.attempts,
            "parallel": args.parallel,
            "shapes": [run_shape(shape, cells, args, Path(tmp)) for shape in shapes],
        }
    print(json.dumps(report, indent=1) if args.json else markdown(report))


if __name__ == "__main__":
    main()
