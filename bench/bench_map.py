#!/usr/bin/env python3
"""Benchmark `pierce map` against socat, rinetd, haproxy and a direct connection, in one run, interleaved.

Measures, on loopback and (with ``--netns``, as root) across two veth links between network
namespaces A -> B -> C with the relays running on B:
- TCP throughput: iperf3 (single stream, ``-t SECONDS``) direct, through ``pierce map`` (the relay
  mode it picks for that path), through ``pierce map`` with ``PIERCE_RELAY=splice`` forced, through
  ``socat`` (``TCP-LISTEN,fork``), ``rinetd`` (one forwarding rule) and ``haproxy`` (``mode tcp``, one
  ``listen`` section, its default threads); several rounds, the order rotated every round, medians.
- Connection set-up latency: 1,000 sequential connect / 1-byte echo / close through each path.
- The relay's CPU during each iperf3 run (its processes, with the per-connection children socat forks),
  as cores busy per Gbit/s moved.

Prints absolute medians (for context only: these machines are noisy) and the ratios that matter.
Usage: ``python3 bench/bench_map.py [--netns] [--rounds 5] [--seconds 3] [--connections 1000] [--json]``.
Needs iperf3 and socat on PATH; rinetd and haproxy (Debian packages of those names) are measured when
installed (as root the script installs them with apt-get when missing, unless ``--no-install``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import (
    NetnsChain,
    Procs,
    bar_verdicts,
    connect_latency,
    cores_per_gbps,
    free_port,
    iperf,
    missing_tools,
    paired_ratio,
    rotated,
    start_echo,
    tree_cpu_seconds,
    wait_listening,
)

BARS = {"throughput_pierce_vs_socat": (">=", 2.0), "connect_latency_pierce_vs_socat": ("<=", 1.0)}


class Topology:
    """Where each role runs and which addresses it uses: loopback, or namespaces A -> B -> C."""

    def __init__(self, netns: bool) -> None:
        self.netns = netns
        self.tag = f"pzb{os.getpid() % 100000}"
        if netns:
            # "direct" here means routed by B's kernel: the baseline a relay is compared with.
            self.chain = NetnsChain(self.tag)
            self.client_ns, self.relay_ns, self.server_ns = self.chain.names
            self.relay_ip, self.server_ip = NetnsChain.B_A_IP, NetnsChain.C_IP
        else:
            self.relay_ip = self.server_ip = "127.0.0.1"

    def prefix(self, role: str) -> list[str]:
        if not self.netns:
            return []
        return [
            "ip",
            "netns",
            "exec",
            {"client": self.client_ns, "relay": self.relay_ns, "server": self.server_ns}[role],
        ]

    def build(self) -> None:
        if self.netns:
            self.chain.build()

    def teardown(self) -> None:
        if self.netns:
            self.chain.close()


#: Peers measured when their program is installed: name -> (program, Debian package).
OPTIONAL_PEERS = {"rinetd": ("rinetd", "rinetd"), "haproxy": ("haproxy", "haproxy")}


def install_missing_peers() -> None:
    """As root, ``apt-get install`` the optional peers that are missing (a failure only leaves them out)."""
    missing = [pkg for prog, pkg in OPTIONAL_PEERS.values() if shutil.which(prog) is None]
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    print(f"bench: installing {', '.join(missing)} with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False)


def rinetd_argv(
    workdir: Path, prefix: list[str], listen: str, port: int, target: str, tport: int
) -> list[str]:
    """rinetd in the foreground with one forwarding rule."""
    conf = workdir / f"rinetd-{port}.conf"
    conf.write_text(f"{listen} {port} {target} {tport}\n")
    return [*prefix, "rinetd", "-f", "-c", str(conf)]


def haproxy_argv(
    workdir: Path, prefix: list[str], listen: str, port: int, target: str, tport: int
) -> list[str]:
    """haproxy in the foreground (``-db``), ``mode tcp``, one listener to one server, default threads."""
    conf = workdir / f"haproxy-{port}.cfg"
    conf.write_text(
        "global\n  maxconn 4096\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
        f"listen map\n  bind {listen}:{port}\n  server target {target}:{tport}\n"
    )
    return [*prefix, "haproxy", "-db", "-f", str(conf)]


def run(topo: Topology, args: argparse.Namespace) -> dict[str, Any]:
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="pierce-bench-map-"))
    try:
        topo.build()
        iperf_port = free_port()
        procs.start(
            [*topo.prefix("server"), "iperf3", "-s", "-p", str(iperf_port), "-B", topo.server_ip],
            stdout=subprocess.DEVNULL,
        )
        echo_port = start_echo(procs, topo.server_ip, topo.prefix("server"))
        wait_listening(iperf_port, topo.prefix("server"))

        def pierce(env: dict[str, str]) -> Callable[[int, int], list[str]]:
            def argv(listen: int, target: int) -> list[str]:
                return [
                    *topo.prefix("relay"),
                    "env",
                    *(f"{k}={v}" for k, v in env.items()),
                    sys.executable,
                    "-m",
                    "pierce",
                    "--log-level",
                    "warning",
                    "map",
                    f"{topo.relay_ip}:{listen}",
                    f"{topo.server_ip}:{target}",
                ]

            return argv

        def socat(listen: int, target: int) -> list[str]:
            return [
                *topo.prefix("relay"),
                "socat",
                f"TCP-LISTEN:{listen},fork,reuseaddr,bind={topo.relay_ip}",
                f"TCP:{topo.server_ip}:{target}",
            ]

        paths: dict[str, tuple[str, int, int]] = {"direct": (topo.server_ip, iperf_port, echo_port)}
        pids: dict[str, list[int]] = {"direct": []}  #: each relay's processes, for its CPU time
        relays = {"pierce": pierce({}), "pierce-splice": pierce({"PIERCE_RELAY": "splice"}), "socat": socat}
        relay, ip, sip = topo.prefix("relay"), topo.relay_ip, topo.server_ip
        if shutil.which("rinetd"):
            relays["rinetd"] = lambda listen, target: rinetd_argv(workdir, relay, ip, listen, sip, target)
        if shutil.which("haproxy"):
            relays["haproxy"] = lambda listen, target: haproxy_argv(workdir, relay, ip, listen, sip, target)
        for name, argv in relays.items():
            tp, ep = free_port(), free_port()
            pids[name] = []
            for port, target in ((tp, iperf_port), (ep, echo_port)):
                pids[name].append(procs.start(argv(port, target), stderr=subprocess.DEVNULL).pid)
                wait_listening(port, topo.prefix("relay"))
            paths[name] = (topo.relay_ip, tp, ep)

        names = list(paths)
        gbps: dict[str, list[float]] = {n: [] for n in names}
        cores: dict[str, list[float]] = {n: [] for n in names if pids[n]}
        lat: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in rotated(names, r):
                host, tp, _ = paths[name]
                before = tree_cpu_seconds(pids[name])
                gbps[name].append(iperf(host, tp, args.seconds, topo.prefix("client")))
                if pids[name]:
                    used = tree_cpu_seconds(pids[name]) - before
                    cores[name].append(cores_per_gbps(used, args.seconds, gbps[name][-1]))
            for name in rotated(names, r):
                host, _, ep = paths[name]
                count = max(1, args.connections // args.rounds)
                lat[name].append(connect_latency(host, ep, count, topo.prefix("client")))
            print(
                f"{'netns' if topo.netns else 'loopback'} round {r + 1}/{args.rounds}: "
                + ", ".join(f"{n} {gbps[n][-1]:.2f} Gbit/s {lat[n][-1]:.0f} us" for n in names),
                file=sys.stderr,
            )
    finally:
        procs.close()
        topo.teardown()
        shutil.rmtree(workdir, ignore_errors=True)

    ratios = {
        "throughput_pierce_vs_socat": paired_ratio(gbps["pierce"], gbps["socat"]),
        "throughput_pierce_vs_direct": paired_ratio(gbps["pierce"], gbps["direct"]),
        "throughput_pierce_splice_vs_socat": paired_ratio(gbps["pierce-splice"], gbps["socat"]),
        "connect_latency_pierce_vs_socat": paired_ratio(lat["pierce"], lat["socat"]),
    }
    for peer in OPTIONAL_PEERS:
        if peer in gbps:
            ratios[f"throughput_pierce_vs_{peer}"] = paired_ratio(gbps["pierce"], gbps[peer])
            ratios[f"connect_latency_pierce_vs_{peer}"] = paired_ratio(lat["pierce"], lat[peer])
    for peer in ("socat", *OPTIONAL_PEERS):
        if peer in cores:
            ratios[f"cpu_per_gbps_pierce_vs_{peer}"] = paired_ratio(cores["pierce"], cores[peer])
    return {
        "path": "netns-veth" if topo.netns else "loopback",
        "rounds": args.rounds,
        "iperf_seconds": args.seconds,
        "connections": args.connections,
        "throughput_gbps_median": {n: round(statistics.median(v), 2) for n, v in gbps.items()},
        "connect_latency_us_median": {n: round(statistics.median(v)) for n, v in lat.items()},
        "relay_cpu_cores_per_gbps_median": {n: round(statistics.median(v), 3) for n, v in cores.items()},
        "ratios": ratios,
        "bars": bar_verdicts(ratios, BARS),
    }


def print_table(res: dict[str, Any]) -> None:
    thr, lat, rat = res["throughput_gbps_median"], res["connect_latency_us_median"], res["ratios"]
    print(
        f"\n{res['path']}: {res['rounds']} rounds, iperf3 -t {res['iperf_seconds']}, "
        f"{res['connections']} connections"
    )
    cpu = res["relay_cpu_cores_per_gbps_median"]
    print(
        f"{'path':<14} {'throughput (Gbit/s)':>20} {'connect+echo+close (us)':>25} {'relay CPU/(Gbit/s)':>19}"
    )
    for n in thr:
        print(f"{n:<14} {thr[n]:>20.2f} {lat[n]:>25.0f} {cpu.get(n, '-'):>19}")
    for key, value in rat.items():
        bar = res["bars"].get(key)
        verdict = f"   (bar {bar['bar']}: {'met' if bar['met'] else 'MISSED'})" if bar else ""
        label = key.replace("connect_latency", "latency").replace("_vs_", "/").replace("_", " ")
        print(f"{label:<34} = {value:.2f}x{verdict}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument(
        "--netns", action="store_true", help="also run across veth links between namespaces (root)"
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 2 s, 200 connections")
    ap.add_argument(
        "--no-install", action="store_true", help="do not apt-get install rinetd and haproxy when missing"
    )
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.connections = 2, 2, 200
    if missing := missing_tools("iperf3", "socat", "ss"):
        print(f"bench: {missing} is not installed", file=sys.stderr)
        return 2
    if not args.no_install:
        install_missing_peers()
    results = [run(Topology(netns=False), args)]
    if args.netns:
        results.append(run(Topology(netns=True), args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for res in results:
            print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
