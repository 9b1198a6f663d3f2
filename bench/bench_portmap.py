#!/usr/bin/env python3
"""Throughput through a port that `pierce map-port` mapped on a real home router, against plain routing
through the same router, in one run, interleaved.

The home-router lab of ``tests/natlab/portmap_lab.py`` (network namespaces, a NAPT router with a stateful
firewall and a real miniupnpd)::

    home 192.168.1.10 -- lan -- 192.168.1.1 router 11.0.0.1 -- outside -- visitor 11.0.0.10

``pierce map-port TCP P --public-port Q`` runs on ``home`` (the real process, which asks miniupnpd by PCP)
and an iperf3 server listens on ``home``. Single-stream iperf3 from ``visitor``, the bytes flowing
visitor -> home in every path, several rounds, the order rotated every round, medians:

- ``mapped``: visitor -> ``11.0.0.1:Q``, the mapped port: the router's DNAT rule miniupnpd added, its
  forward filter's ``miniupnpd`` chain, to ``home:P``.
- ``routed``: visitor -> ``192.168.1.10:P`` by a route (``192.168.1.0/24 via 11.0.0.1`` on the visitor)
  and one accept rule for that flow in the router's forward filter: the same two hosts, the same veths and
  bridges, the same router namespace with the same conntrack and the same nftables chains walked, only no
  address translation. This is the baseline of the bar ("plain routing through the same router"): the
  one thing that differs from ``mapped`` is what the mapping adds.
- ``direct``: a ``pierce client`` tcp proxy with ``direct = "auto"`` on ``home`` (service
  ``127.0.0.1:P``): visitor -> ``11.0.0.1:D``, the port the client mapped for its own direct listener, which
  relays to the service (splice). What the mapping costs when the client is in the data path (it is for
  loopback-only services and for its access lists). The client has no server to log in to here: the
  direct listener does not need one.
- ``outbound``: the everyday path through a home router, for context: home connects out to an iperf3
  server on the visitor (MASQUERADE), ``iperf3 -R`` so the bytes still flow visitor -> home.

The mapping is kernel NAT: pierce is not in the data path, only asks for the rule and renews it. The
result also carries how long ``map-port`` took from its start (interpreter included) to printing the
mapping, and whether the mapping was gone from the router once ``map-port`` exited (SIGTERM).

Usage (root: namespaces): ``sudo .venv/bin/python bench/bench_portmap.py [--rounds 5] [--seconds 3]
[--json] [--quick]``. Needs iperf3, miniupnpd (Debian packages miniupnpd miniupnpd-nftables), nft, iptables.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import bar_verdicts, exit_on_sigterm, missing_tools, paired_ratio, rotated, wait_listening

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from natlab.lab import Host, Lab, LabError, missing_prerequisites, sweep_stale  # noqa: E402
from natlab.portmap_lab import (  # noqa: E402
    HOME_IP,
    LAN_NET,
    ROUTER_OUT,
    TABLE,
    VISITOR_IP,
    HomeNet,
    home_router,
    missing_miniupnpd,
)

BARS = {"throughput_mapped_vs_routed": (">=", 0.9)}
#: iperf3 servers: on home (mapped and routed paths) and on the visitor (outbound); the mapped public port.
HOME_IPERF, VISITOR_IPERF, PUBLIC_PORT, DIRECT_PORT = 5201, 5202, 6201, 6202
PATHS = ("mapped", "routed", "direct", "outbound")


def iperf(host: Host, server: str, port: int, seconds: float, reverse: bool = False) -> tuple[float, int]:
    """One single-stream ``iperf3 -c`` from ``host``: (received Gbit/s, bytes received).

    iperf3's server runs one test at a time and may still be finishing the previous one (its results
    exchange) when the next client arrives: "busy" is retried for a few seconds.
    """
    argv = ["iperf3", "-c", server, "-p", str(port), "-t", str(seconds), "-J", *(["-R"] if reverse else [])]
    for attempt in range(20):
        out = host.run(*argv, check=False, timeout=seconds + 30)
        doc = json.loads(out.stdout)
        if "busy" in str(doc.get("error", "")) and attempt < 19:
            time.sleep(0.25)
            continue
        if "error" in doc:
            raise LabError(f"iperf3 {server}:{port}: {doc['error']}")
        got = doc["end"]["sum_received"]
        return float(got["bits_per_second"]) / 1e9, int(got["bytes"])
    raise AssertionError("unreachable")


def allow_routed(net: HomeNet) -> None:
    """The visitor reaches the LAN by a route through the router, one TCP port let through its filter."""
    net.lab.route(net.visitor, LAN_NET, via=ROUTER_OUT)
    net.router.run(
        "nft", "add", "rule", "inet", TABLE, "forward",
        "ip", "saddr", VISITOR_IP, "ip", "daddr", HOME_IP, "tcp", "dport", str(HOME_IPERF), "accept",
    )  # fmt: skip


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    gbps: dict[str, list[float]] = {p: [] for p in PATHS}
    received: dict[str, int] = {p: 0 for p in PATHS}
    with Lab() as lab:
        net = home_router(lab, workdir)
        for host, port in ((net.home, HOME_IPERF), (net.visitor, VISITOR_IPERF)):
            host.popen("iperf3", "-s", "-p", port, label=f"{host.name}:iperf3")
            wait_listening(port, ["ip", "netns", "exec", host.ns])
        allow_routed(net)

        started = time.monotonic()
        mapper = net.home.python(
            "-m", "pierce", "--json-logs", "map-port", "TCP", HOME_IPERF, "--public-port", PUBLIC_PORT,
            "--lifetime", args.lifetime, "--json", label="home:map-port",
        )  # fmt: skip
        mapping = mapper.expect_json("stdout", timeout=20, local_port=HOME_IPERF)
        map_seconds = time.monotonic() - started
        if mapping.get("public_ip") != ROUTER_OUT or mapping.get("public_port") != PUBLIC_PORT:
            raise LabError(f"unexpected mapping {mapping}\n{net.describe()}")

        client_conf = workdir / "client.toml"
        client_conf.write_text(
            f'server_addr = "{VISITOR_IP}"\nserver_port = 7000\ntoken = "bench-token-direct-Kq7vB2mN9pL4"\n'
            f"[port_mapping]\nlifetime_s = {args.lifetime}\n"
            f'[[proxies]]\ntype = "tcp"\nname = "iperf"\nlocal_port = {HOME_IPERF}\n'
            f'remote_port = {DIRECT_PORT}\ndirect = "auto"\n'
        )
        client = net.home.python(
            "-m", "pierce", "--json-logs", "client", "-c", client_conf, label="home:client",
            env={**os.environ, "PIERCE_STATE_DIR": str(workdir / "client-state")},
        )  # fmt: skip
        published = client.expect_json("stderr", timeout=20, event="proxy.direct")
        if published.get("address") != f"{ROUTER_OUT}:{DIRECT_PORT}":
            raise LabError(f"unexpected direct address {published}\n{net.describe()}")

        targets = {
            "mapped": (net.visitor, ROUTER_OUT, PUBLIC_PORT, False),
            "direct": (net.visitor, ROUTER_OUT, DIRECT_PORT, False),
            "routed": (net.visitor, HOME_IP, HOME_IPERF, False),
            "outbound": (net.home, VISITOR_IP, VISITOR_IPERF, True),
        }
        for r in range(args.rounds):
            for name in rotated(list(PATHS), r):
                host, server, port, reverse = targets[name]
                rate, nbytes = iperf(host, server, port, args.seconds, reverse)
                gbps[name].append(rate)
                received[name] += nbytes
            print(
                f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {gbps[n][-1]:.2f} Gbit/s" for n in PATHS),
                file=sys.stderr,
            )
        renewals = sum(1 for d in mapper.json_lines("stderr") if d.get("event") == "portmap.renewed")
        exit_code = mapper.stop()
        client.stop()
        deleted = net.miniupnpd.forwards() == set()

    ratios = {
        "throughput_mapped_vs_routed": paired_ratio(gbps["mapped"], gbps["routed"]),
        "throughput_mapped_vs_outbound": paired_ratio(gbps["mapped"], gbps["outbound"]),
        "throughput_direct_vs_routed": paired_ratio(gbps["direct"], gbps["routed"]),
    }
    return {
        "path": "netns-home-router",
        "rounds": args.rounds,
        "iperf_seconds": args.seconds,
        "mapping": {
            "via": mapping.get("via"),
            "public": f"{mapping.get('public_ip')}:{mapping.get('public_port')}",
            "lifetime": mapping.get("lifetime"),
            "seconds_to_mapping": round(map_seconds, 3),
            "renewals_during_run": renewals,
            "map_port_exit_code": exit_code,
            "deleted_at_exit": deleted,
        },
        "bytes_received": received,
        "throughput_gbps_median": {n: round(statistics.median(v), 2) for n, v in gbps.items()},
        "ratios": ratios,
        "bars": bar_verdicts(ratios, BARS),
    }


def print_table(res: dict[str, Any]) -> None:
    m = res["mapping"]
    print(f"\n{res['path']}: {res['rounds']} rounds, iperf3 -t {res['iperf_seconds']}, single stream")
    print(
        f"mapping {m['public']} via {m['via']}, lifetime {m['lifetime']} s: "
        f"{m['seconds_to_mapping']:.2f} s to map, {m['renewals_during_run']} renewals, "
        f"deleted at exit: {m['deleted_at_exit']}"
    )
    print(f"{'path':<10} {'throughput (Gbit/s)':>20}")
    for name, value in res["throughput_gbps_median"].items():
        print(f"{name:<10} {value:>20.2f}")
    for key, value in res["ratios"].items():
        bar = res["bars"].get(key)
        verdict = f"   (bar {bar['bar']}: {'met' if bar['met'] else 'MISSED'})" if bar else ""
        label = key.replace("_vs_", "/").replace("_", " ")
        print(f"{label:<30} = {value:.2f}x{verdict}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument(
        "--lifetime", type=int, default=30, help="the mapping's lease (s): short ones renew during the run"
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 1 s")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 1
    for reason in (missing_prerequisites(), missing_miniupnpd()):
        if reason is not None:
            print(f"bench: {reason}", file=sys.stderr)
            return 2
    if missing := missing_tools("iperf3"):
        print(f"bench: {missing} is not installed", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    sweep_stale()
    with tempfile.TemporaryDirectory(prefix="pierce-bench-portmap-") as tmp:
        os.environ.setdefault("PIERCE_STATE_DIR", tmp)
        res = run(args, Path(tmp))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
