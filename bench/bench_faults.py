#!/usr/bin/env python3
"""pierce under faults, through the namespace lab of ``tests/natlab``: throughput under loss and delay next
to OpenSSH's, and recovery from a cut uplink.

Loss and delay (the default): `natlab.faults_lab` (an owner behind one cone NAT with a tcp, an stcp and an
xtcp proxy for one TCP echo, a visitor behind another, the pierce server on the core; the hosts send
wire-sized packets, their segmentation offloads off), plus an OpenSSH reverse tunnel over the same route:
a private sshd on the server host and ``ssh -N -R`` from the owner's host to the same echo. The owner's
NAT router, which every path crosses once each way, delays every packet by ``--delay`` ms (so the round
trip grows by twice that) and drops each packet at random with each probability of ``--loss`` in turn
(percent; 0 runs first; iptables ``statistic``). Per condition: ``--warmup`` uncounted transfers per
path (a relay's long-lived connection carries what its congestion control learnt from one condition
into the next), then ``--rounds`` rounds of one echo transfer per path, the order rotating: random bytes
from the visitor host, half-closed, read back to EOF, SHA-256 checked, bounded by ``--timeout`` seconds.
Paths: ``tunnel`` (the server's public port), ``stcp``, ``direct-tcp`` (the xtcp visitor's connection:
its direct TCP one while there is one, else QUIC or the relay: the path taken is reported), ``quic`` (an
xtcp visitor with ``direct_tcp = false``) and ``ssh-R`` (``--paths``: a comma-separated subset; the
ratios need ``ssh-R`` among them). The payload shrinks as loss grows
(``--size-mib`` at 0 and 1 %, a quarter of it at 5 %, an eighth at 20 %). Reported: median Mbit/s (both
directions summed) per path and condition, and each pierce path over ssh-R, paired per round; a transfer
that did not come back whole is counted and named, never timed. The TCP paths (all but ``quic``) run
the kernel's TCP congestion control on the lossy leg, the machine's default unless ``--tcp-cc`` names
another for the lab's hosts (a namespace may only pick one of
``net.ipv4.tcp_allowed_congestion_control``): with BBR they barely back off for random loss, with
``reno`` they halve their window at each loss, as QUIC with aioquic's own controllers would.

``--cuts 5,40,300``: the scenario of `natlab.partition_lab` for each cut length and each way to cut
(``drop``, ``link-down``): a paced transfer through the tunnel while the client's uplink is cut; reported:
whether the client lost the server, the seconds from the link's return to its next login against the
backoff it was in, the transfer's outcome (verified or reset, never short and orderly) and what the
server held afterwards.

Needs root (network namespaces), ssh, ssh-keygen and /usr/sbin/sshd. Usage:
``sudo .venv/bin/python bench/bench_faults.py [--loss 1,5,20] [--delay 50] [--rounds 3] [--size-mib 2]
[--paths quic,ssh-R] [--tcp-cc reno] [--json]`` or
``sudo .venv/bin/python bench/bench_faults.py --cuts 5,40,300 [--ways drop,link-down]``.
The machine is shared: run one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import SSHD, Procs, Site, SshReverseTunnel, missing_tools

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from natlab.faults_lab import PATHS, FaultsLab  # noqa: E402
from natlab.lab import Lab, missing_prerequisites, sweep_stale  # noqa: E402
from natlab.p2p_cells import SERVICE_PORT, random_payload  # noqa: E402

ALL_PATHS = (*PATHS, "ssh-R")


def ns_prefix(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def size_for(loss: float, size_mib: float) -> int:
    base = int(size_mib * (1 << 20))
    if loss <= 0.01:
        return base
    return base // 4 if loss <= 0.05 else base // 8


def loss_and_delay(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    losses = [0.0, *(float(x) / 100 for x in args.loss.split(",") if x)]
    started = time.monotonic()
    procs = Procs()
    try:
        with Lab() as lab:
            faults = FaultsLab(lab, workdir / "lab", tcp_congestion_control=args.tcp_cc)
            server_ip = faults.plab.server_ip
            site = Site(
                "faults", "owner behind a cone NAT, visitor behind another, server on the core",
                visitor=ns_prefix(faults.visitor.ns), server=ns_prefix(faults.plab.server.ns),
                lan=ns_prefix(faults.owner.ns), public_ip=server_ip, server_ip=server_ip,
                lan_ip=faults.owner.ip("lan-a"), service_ip="127.0.0.1",
            )  # fmt: skip
            ssh = SshReverseTunnel(procs, workdir, site, {"echo": SERVICE_PORT})
            targets = {path: faults.target(path) for path in PATHS}
            targets["ssh-R"] = f"{server_ip}:{ssh.public['echo']}"
            conditions = [run_condition(faults, targets, loss, args, workdir) for loss in losses]
    finally:
        procs.close()
    return {
        "delay_ms": args.delay,
        "tcp_congestion_control": args.tcp_cc
        or Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip(),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "ssh_cipher": ssh.cipher,
        "conditions": conditions,
        "seconds": round(time.monotonic() - started),
    }


def run_condition(
    faults: FaultsLab, targets: dict[str, str], loss: float, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    size = size_for(loss, args.size_mib)
    payload = random_payload(workdir / f"payload-{size}.bin", size)
    faults.impair(loss=loss, delay_ms=args.delay)
    paths = chosen_paths(args)
    mbit: dict[str, list[float | None]] = {path: [] for path in paths}
    failures: dict[str, list[str]] = {path: [] for path in paths}
    seen: dict[str, set[str]] = {path: set() for path in paths}
    try:
        for path in paths:  # not counted: connections find their pace
            for _ in range(args.warmup):
                faults.transfer(path, payload, args.timeout, target=targets[path])
        for r in range(args.rounds):
            k = r % len(paths)
            for path in paths[k:] + paths[:k]:
                result = faults.transfer(path, payload, args.timeout, target=targets[path])
                if result.get("conn_path"):
                    seen[path].add(str(result["conn_path"]))
                if result["verified"]:
                    mbit[path].append(2 * size * 8 / result["seconds"] / 1e6)
                else:
                    mbit[path].append(None)
                    failures[path].append(str(result.get("errno") or result.get("send_error") or result))
                shown = f"{mbit[path][-1]:.2f} Mbit/s" if mbit[path][-1] is not None else failures[path][-1]
                print(f"[loss {loss:.0%}] round {r + 1} {path}: {shown}", file=sys.stderr, flush=True)
    finally:
        faults.clear()
    rows = {}
    for path in paths:
        ok = [x for x in mbit[path] if x is not None]
        row: dict[str, Any] = {
            "mbit_s": round(statistics.median(ok), 3) if ok else None,
            "verified": len(ok),
            "failed": failures[path],
        }
        if path != "ssh-R" and "ssh-R" in mbit:
            pairs = [a / b for a, b in zip(mbit[path], mbit["ssh-R"], strict=True) if a and b]
            row["vs_ssh"] = round(statistics.median(pairs), 2) if pairs else None
            row["paths_seen"] = sorted(seen[path])
        rows[path] = row
    return {"loss": loss, "size_kib": size >> 10, "paths": rows}


def cuts(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from natlab.partition_lab import transfer_through_cut

    runs = []
    for seconds in (float(x) for x in args.cuts.split(",") if x):
        for how in args.ways.split(","):
            tmp = workdir / f"cut-{how}-{seconds:g}"
            tmp.mkdir(parents=True)
            print(f"[cuts] {how} for {seconds:g} s", file=sys.stderr, flush=True)
            with Lab() as lab:
                try:
                    report = transfer_through_cut(lab, tmp, how, seconds)  # type: ignore[arg-type]
                except AssertionError as exc:
                    report = {"cut": how, "seconds": seconds, "failed": str(exc).splitlines()[0]}
            print(f"[cuts] {json.dumps(report)}", file=sys.stderr, flush=True)
            runs.append(report)
    return {"cuts": runs}


def chosen_paths(args: argparse.Namespace) -> tuple[str, ...]:
    """The paths of ``--paths``, in `ALL_PATHS` order."""
    wanted = {p for p in args.paths.split(",") if p}
    if unknown := wanted - set(ALL_PATHS):
        raise SystemExit(f"unknown paths: {', '.join(sorted(unknown))} (known: {', '.join(ALL_PATHS)})")
    return tuple(p for p in ALL_PATHS if p in wanted)


def markdown(report: dict[str, Any]) -> str:
    paths = [p for p in ALL_PATHS if p in report["conditions"][0]["paths"]]
    pierce = [p for p in paths if p != "ssh-R"]
    lines = [
        f"Delay {report['delay_ms']} ms each way on the owner's router (plus the loss below), "
        f"TCP congestion control {report['tcp_congestion_control']}, {report['rounds']} rounds, "
        f"ssh cipher {report['ssh_cipher']}, {report['seconds']} s in all. "
        "Median Mbit/s, both directions summed; ratio = pierce path / ssh-R, paired per round.",
        "",
        "| loss | payload | " + " | ".join(paths) + " | " + " | ".join(f"{p}/ssh" for p in pierce) + " |",
        "|---" * (2 + len(paths) + len(pierce)) + "|",
    ]
    for cond in report["conditions"]:
        rows = cond["paths"]
        ratios = [f"{rows[p]['vs_ssh']:.2f}x" if rows[p].get("vs_ssh") else "-" for p in pierce]
        lines.append(
            f"| {cond['loss']:.0%} | {cond['size_kib']} KiB | "
            + " | ".join(cell(rows[p]) for p in paths)
            + " | "
            + " | ".join(ratios)
            + " |"
        )
    seen = {p: sorted({s for c in report["conditions"] for s in c["paths"][p]["paths_seen"]}) for p in pierce}
    lines += ["", "Paths the visitors' connections took: " + json.dumps({p: v for p, v in seen.items() if v})]
    return "\n".join(lines)


def cell(row: dict[str, Any]) -> str:
    text = "-" if row["mbit_s"] is None else f"{row['mbit_s']:g}"
    return text + (f" ({len(row['failed'])} failed)" if row["failed"] else "")


def cuts_markdown(report: dict[str, Any]) -> str:
    lines = [
        "| cut | how | client lost the server | link back -> logged in | backoff then | transfer | "
        "server after (public / control conns, API live) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in report["cuts"]:
        if "failed" in run:
            lines.append(f"| {run['seconds']:g} s | {run['cut']} | FAILED: {run['failed']} ||||||")
            continue
        after = run["server_after"]
        recovery = f"{run['recovery_s']} s" if "recovery_s" in run else "-"
        backoff = f"{run['backoff_s']} s" if "backoff_s" in run else "-"
        transfer = run["transfer"] + (f" ({run['error']})" if run.get("error") else "")
        lines.append(
            f"| {run['seconds']:g} s | {run['cut']} | {'yes' if run['client_lost_server'] else 'no'} | "
            f"{recovery} | {backoff} | {transfer} | {len(after['public'])} / {len(after['control'])}, "
            f"{after['api_connections']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loss", default="1,5,20", help="percent, comma-separated (0 %% always runs too)")
    parser.add_argument("--delay", type=float, default=50.0, help="ms each way, in every condition")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=float, default=2.0)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted transfers per path and condition")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one transfer may take")
    parser.add_argument("--cuts", default="", help="seconds, comma-separated: the partition runs instead")
    parser.add_argument("--ways", default="drop,link-down")
    parser.add_argument(
        "--tcp-cc", default="", help="TCP congestion control of the lab's hosts (default: the machine's)"
    )
    parser.add_argument(
        "--paths", default=",".join(ALL_PATHS), help="comma-separated, of " + ", ".join(ALL_PATHS)
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chosen_paths(args)
    if (reason := missing_prerequisites()) is not None:
        raise SystemExit(reason)
    if not args.cuts and (reason := missing_tools("ssh", "ssh-keygen", SSHD)) is not None:
        raise SystemExit(reason)
    sweep_stale()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        os.environ.setdefault("PIERCE_STATE_DIR", tmp)
        if args.cuts:
            report = cuts(args, Path(tmp))
            print(json.dumps(report, indent=1) if args.json else cuts_markdown(report))
        else:
            report = loss_and_delay(args, Path(tmp))
            print(json.dumps(report, indent=1) if args.json else markdown(report))


if __name__ == "__main__":
    main()
