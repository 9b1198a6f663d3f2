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

Needs root (network namespaces). Usage:
``sudo .venv/bin/python bench/bench_p2p.py [--attempts 20] [--shapes internet,flat] [--cells cone,sym]
[--rounds 3] [--size-mib 32] [--parallel 3] [--json]`` (``--cells``: only cells whose name contains one of
the words; ``--parallel``: cells at once, only cells that share no site, which mostly overlaps the waits
of cells without UDP, whose visitors give up after the 10 s punch budget).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from natlab.lab import Lab, LabError, missing_prerequisites, sweep_stale  # noqa: E402
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
from natlab.p2p_lab import Shape  # noqa: E402

PING = bytes(range(256)) * 4


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
    args = parser.parse_args()
    if (reason := missing_prerequisites()) is not None:
        raise SystemExit(reason)
    sweep_stale()
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
