#!/usr/bin/env python3
"""Benchmark pierce reverse tunnels against an OpenSSH reverse tunnel, stunnel, socat and a direct path.

Runs on loopback and (with ``--netns``, as root) again across three network namespaces, the deployment a
tunnel is for: V (the visitor: iperf3 and latency clients) -> S (the public server host: pierce server,
sshd, socat) -> L (the LAN host: iperf3 server, echo service, pierce client, ``ssh -R`` client), joined
by veth links with a normal MTU, S routing between them. There every relay hop leaves the machine, so
pierce splices, as it would between real hosts. In each topology, in one run, interleaved (the order of
the paths rotates every round):
- TCP throughput: single-stream ``iperf3 -t SECONDS`` to one iperf3 server through
  ``pierce-tls`` (a pierce server + client, data connections over TLS, the default),
  ``ssh-R`` (``ssh -N -R PORT:127.0.0.1:IPERF`` through a local sshd started here with its own keys),
  ``stunnel`` (when installed: stunnel in client mode on S takes visitors and dials stunnel in server
  mode on L over TLS, the hop pierce encrypts; the certificate is checked),
  ``pierce-plain`` (``transport.encrypt_data = false`` on both ends: the relay can splice),
  ``socat`` (``TCP-LISTEN,fork`` on the server host to the target: one hop) and ``direct`` (in the
  namespaces: V -> L routed by S's kernel).
- CPU of each path's processes during its iperf3 runs (sshd with its session process, socat with the
  children it forks), as cores busy per Gbit/s moved.
- Time to first byte of a new visitor connection: connect, send 1 byte, read the echo, close; sequential
  connections to one echo service through every path; medians.
- Memory (loopback only): VmRSS of the pierce server + client at idle, then with ``--idle-conns`` visitor
  connections held open through a TCP proxy to a local echo (each carried one byte both ways first).

Prints absolute medians (context only: these machines are noisy) and the ratios the bars are about:
pierce-tls / ssh-R throughput (bar >= 1.0x, goal 1.5x), pierce-plain / socat throughput (bar >= 1.5x),
pierce-tls / socat first-byte time (bar <= 2.0x); pierce-tls / stunnel throughput and first byte (no bar).
With ``--web`` it measures only what the server's web side costs a tunnel moving data at full speed (on
loopback, pierce-tls, iperf3 through it): the server process's CPU seconds per GiB moved, interleaved per
round between a server without ``[web]`` (``no-web``), the same server with ``[web]`` on and no browser
(``web``), and that server with a headless Chromium showing its dashboard, live (``web+dashboard``; the
system's ``chromium`` through Playwright). Bar: the dashboard open adds < 2 % (web+dashboard / web). As
that ratio is within the noise of a loaded machine, each round also measures the server at rest with the
dashboard open and closed: the difference is what the dashboard costs, reported as a share of the CPU the
server spends per second moving data at full speed.

Usage: ``python3 bench/bench_tunnel.py [--netns] [--rounds 5] [--seconds 3] [--connections 500]
[--idle-conns 1000] [--web] [--json]``. Needs iperf3, socat, ss, ssh, ssh-keygen and /usr/sbin/sshd (and ip
for ``--netns``; chromium for ``--web``; stunnel and openssl for the stunnel path, which is left out without
them); run as root or as a user sshd accepts (the sshd and its keys live in a temporary directory).
The namespaces, their veths and every process started are removed at the end, on errors, Ctrl-C and
SIGTERM too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    LOOPBACK,
    SSHD,
    NetnsChain,
    Procs,
    Site,
    SshReverseTunnel,
    Stunnel,
    Tunnel,
    bar_verdicts,
    connect_latency,
    cores_per_gbps,
    exit_on_sigterm,
    free_port,
    hold_connections,
    iperf,
    missing_tools,
    paired_ratio,
    raise_fd_limit,
    rotated,
    settled,
    signals_held,
    start_echo,
    tree_cpu_seconds,
    wait_listening,
)

BARS = {
    "throughput_pierce_tls_vs_ssh": (">=", 1.0),
    "throughput_pierce_plain_vs_socat": (">=", 1.5),
    "first_byte_pierce_tls_vs_socat": ("<=", 2.0),
}
#: ``--web``: server CPU per GiB with the dashboard open / with [web] on and no browser.
WEB_BARS = {"cpu_per_gib_dashboard_vs_web": ("<=", 1.02)}
WEB_USER = "bench"
WEB_PASSWORD = "bench-web-pw-Zr8qL2xT5vN9"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def netns_site(chain: NetnsChain) -> Site:
    """V, S and L are the chain's namespaces a, b and c."""
    v, s, lan = (chain.prefix(ns) for ns in chain.names)
    layout = (
        f"V {chain.A_IP} -> S {chain.B_A_IP} | {chain.B_C_IP} -> L {chain.C_IP}, veth links, MTU 1500, "
        "S routes V <-> L"
    )
    return Site("netns-veth", layout, v, s, lan, chain.B_A_IP, chain.B_C_IP, chain.C_IP, "0.0.0.0")


def socat(procs: Procs, site: Site, target: int) -> tuple[int, int]:
    """``socat`` on the server host forwarding a public port to ``target`` on the LAN host; (port, pid)."""
    port = free_port()
    argv = [
        *site.server,
        "socat",
        f"TCP-LISTEN:{port},fork,reuseaddr,bind={site.public_ip}",
        f"TCP:{site.lan_ip}:{target}",
    ]
    proc = procs.start(argv, stderr=subprocess.DEVNULL)  # quiet about visitors that reset
    wait_listening(port, site.server)
    return port, proc.pid


def memory(procs: Procs, workdir: Path, echo_port: int, mode: str, count: int) -> dict[str, float]:
    targets = {"echo": echo_port}
    tunnel = Tunnel(procs, workdir, f"rss-{mode}", site=LOOPBACK, encrypt=mode == "tls", targets=targets)
    public = tunnel.public["echo"]
    hold_connections(public, 1)[0].close()  # logged in and the pool is full
    idle = settled(tunnel.rss_mib)
    held = hold_connections(public, count)
    try:
        loaded = settled(tunnel.rss_mib)
        fds = tunnel.fds()
    finally:
        for sock in held:
            sock.close()
    return {
        "idle_mib": round(idle, 1),
        "conns": count,
        "loaded_mib": round(loaded, 1),
        "per_conn_kib": round((loaded - idle) * 1024 / count, 1),
        "fds": fds,
    }


def run(args: argparse.Namespace, *, netns: bool) -> dict[str, Any]:
    """Every path in one topology, interleaved; the RSS figure too on loopback."""
    procs = Procs()
    chain = NetnsChain(f"pzt{os.getpid() % 100000}") if netns else None
    workdir = Path(tempfile.mkdtemp(prefix="pierce-bench-"))
    try:
        if chain is not None:
            chain.build()
        site = netns_site(chain) if chain is not None else LOOPBACK
        iperf_port = free_port()
        procs.start(
            [*site.lan, "iperf3", "-s", "-p", str(iperf_port), "-B", site.service_ip],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        echo_port = start_echo(procs, site.service_ip, site.lan)
        wait_listening(iperf_port, site.lan)
        targets = {"iperf": iperf_port, "echo": echo_port}

        tls = Tunnel(procs, workdir, "tls", site=site, encrypt=True, targets=targets)
        ssh = SshReverseTunnel(procs, workdir, site, targets)
        plain = Tunnel(procs, workdir, "plain", site=site, encrypt=False, targets=targets)
        socats = {name: socat(procs, site, port) for name, port in targets.items()}
        paths: dict[str, tuple[str, dict[str, int]]] = {
            "direct": (site.lan_ip, targets),
            "pierce-tls": (site.public_ip, tls.public),
            "ssh-R": (site.public_ip, ssh.public),
            "pierce-plain": (site.public_ip, plain.public),
            "socat": (site.public_ip, {name: port for name, (port, _) in socats.items()}),
        }
        #: Each path's processes (their trees), for the CPU it spends moving data.
        pids: dict[str, list[int]] = {
            "direct": [],
            "pierce-tls": [tls.server.pid, tls.client.pid],
            "ssh-R": [ssh.sshd.pid, ssh.client.pid],
            "pierce-plain": [plain.server.pid, plain.client.pid],
            "socat": [socats["iperf"][1]],
        }
        if shutil.which("stunnel") and shutil.which("openssl"):  # optional (Debian stunnel4)
            pipe = Stunnel(procs, workdir, site, targets)
            paths["stunnel"] = (site.public_ip, pipe.public)
            pids["stunnel"] = [pipe.client.pid, pipe.server.pid]
        names = list(paths)
        for host, ports in paths.values():  # warm up: logins done, pools full, sockets in the caches
            connect_latency(host, ports["echo"], 20, site.visitor)

        gbps: dict[str, list[float]] = {n: [] for n in names}
        cores: dict[str, list[float]] = {n: [] for n in names if pids[n]}
        ttfb: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in rotated(names, r):
                host, ports = paths[name]
                before = tree_cpu_seconds(pids[name])
                gbps[name].append(iperf(host, ports["iperf"], args.seconds, site.visitor))
                if pids[name]:
                    used = tree_cpu_seconds(pids[name]) - before
                    cores[name].append(cores_per_gbps(used, args.seconds, gbps[name][-1]))
            for name in rotated(names, r):
                host, ports = paths[name]
                ttfb[name].append(connect_latency(host, ports["echo"], args.connections, site.visitor))
            print(
                f"{site.path} round {r + 1}/{args.rounds}: "
                + ", ".join(f"{n} {gbps[n][-1]:.2f} Gbit/s {ttfb[n][-1]:.0f} us" for n in names),
                file=sys.stderr,
            )

        rss = None
        if chain is None:
            raise_fd_limit(args.idle_conns + 256)
            rss = {
                mode: memory(procs, workdir, echo_port, mode, args.idle_conns) for mode in ("tls", "plain")
            }
    finally:
        with signals_held():
            procs.close()
            if chain is not None:
                chain.close()
            shutil.rmtree(workdir, ignore_errors=True)

    ratios = {
        "throughput_pierce_tls_vs_ssh": paired_ratio(gbps["pierce-tls"], gbps["ssh-R"]),
        "throughput_pierce_plain_vs_socat": paired_ratio(gbps["pierce-plain"], gbps["socat"]),
        "throughput_pierce_tls_vs_direct": paired_ratio(gbps["pierce-tls"], gbps["direct"]),
        "first_byte_pierce_tls_vs_socat": paired_ratio(ttfb["pierce-tls"], ttfb["socat"]),
        "first_byte_pierce_plain_vs_socat": paired_ratio(ttfb["pierce-plain"], ttfb["socat"]),
        "first_byte_ssh_vs_socat": paired_ratio(ttfb["ssh-R"], ttfb["socat"]),
    }
    for mine, peer in (("pierce-tls", "ssh-R"), ("pierce-tls", "stunnel"), ("pierce-plain", "socat")):
        if peer in cores:
            key = f"cpu_per_gbps_{mine.replace('-', '_')}_vs_{peer.replace('-', '_').lower()}"
            ratios[key] = paired_ratio(cores[mine], cores[peer])
    if "stunnel" in gbps:
        ratios["throughput_pierce_tls_vs_stunnel"] = paired_ratio(gbps["pierce-tls"], gbps["stunnel"])
        ratios["first_byte_pierce_tls_vs_stunnel"] = paired_ratio(ttfb["pierce-tls"], ttfb["stunnel"])
    return {
        "path": site.path,
        "layout": site.layout,
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "iperf_seconds": args.seconds,
        "connections_per_round": args.connections,
        "ssh_cipher": ssh.cipher,
        "throughput_gbps_median": {n: round(statistics.median(v), 2) for n, v in gbps.items()},
        "first_byte_us_median": {n: round(statistics.median(v)) for n, v in ttfb.items()},
        "cpu_cores_per_gbps_median": {n: round(statistics.median(v), 3) for n, v in cores.items()},
        **({"rss": rss} if rss is not None else {}),
        "ratios": ratios,
        "bars": bar_verdicts(ratios, BARS),
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chromium_path() -> str | None:
    return os.environ.get("PIERCE_CHROMIUM") or next(
        (found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None
    )


class Dashboard:
    """One headless Chromium tab (Playwright over the system's browser) that shows the server's dashboard,
    live, or a blank page."""

    def __init__(self, url: str, chromium: str) -> None:
        from playwright.sync_api import sync_playwright

        self.url = url
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=chromium, args=["--disable-gpu"])
            context = self._browser.new_context(
                http_credentials={"username": WEB_USER, "password": WEB_PASSWORD}
            )
            self.page = context.new_page()
        except BaseException:
            self._playwright.stop()
            raise

    def show(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_selector("#status[data-state=live]", timeout=15_000)

    def hide(self) -> None:
        self.page.goto("about:blank")

    def close(self) -> None:
        try:
            self._browser.close()
        finally:
            self._playwright.stop()


def web_cost(args: argparse.Namespace, chromium: str) -> dict[str, Any]:
    """``--web``: the server's CPU seconds per GiB without [web], with it, and with the dashboard open."""
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="pierce-bench-"))
    dashboard: Dashboard | None = None
    try:
        iperf_port = free_port()
        procs.start(
            ["iperf3", "-s", "-p", str(iperf_port), "-B", HOST],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(iperf_port)
        targets = {"iperf": iperf_port}
        web_port = free_port()
        web = {"addr": HOST, "port": web_port, "user": WEB_USER, "password": WEB_PASSWORD}
        bare = Tunnel(procs, workdir, "bare", site=LOOPBACK, encrypt=True, targets=targets)
        watched = Tunnel(procs, workdir, "web", site=LOOPBACK, encrypt=True, targets=targets, web=web)
        wait_listening(web_port)
        dashboard = Dashboard(f"http://{HOST}:{web_port}/", chromium)
        paths = {"no-web": bare, "web": watched, "web+dashboard": watched}
        names = list(paths)
        for tunnel in (bare, watched):  # warm up: logins done, pools full
            iperf(HOST, tunnel.public["iperf"], 1)
        gbps: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        busy: list[float] = []  #: server CPU seconds per second while moving data ([web], no browser)
        idle: dict[str, list[float]] = {"closed": [], "open": []}  #: the same at rest
        for r in range(args.rounds):
            for name in rotated(names, r):
                tunnel = paths[name]
                if name == "web+dashboard":
                    dashboard.show()
                else:
                    dashboard.hide()
                before = process_cpu_seconds(tunnel.server.pid)
                rate = iperf(HOST, tunnel.public["iperf"], args.seconds)
                used = process_cpu_seconds(tunnel.server.pid) - before
                gbps[name].append(rate)
                cpu[name].append(used / (rate * 1e9 * args.seconds / 8 / 2**30))
                if name == "web":
                    busy.append(used / args.seconds)
            for state in rotated(list(idle), r):
                if state == "open":
                    dashboard.show()
                else:
                    dashboard.hide()
                before, start = process_cpu_seconds(watched.server.pid), time.monotonic()
                time.sleep(args.seconds)
                idle[state].append(
                    (process_cpu_seconds(watched.server.pid) - before) / (time.monotonic() - start)
                )
            print(
                f"web round {r + 1}/{args.rounds}: "
                + ", ".join(f"{n} {gbps[n][-1]:.2f} Gbit/s {cpu[n][-1]:.3f} CPU s/GiB" for n in names),
                file=sys.stderr,
            )
    finally:
        with signals_held():
            if dashboard is not None:
                dashboard.close()
            procs.close()
            shutil.rmtree(workdir, ignore_errors=True)
    ratios = {
        "cpu_per_gib_dashboard_vs_web": paired_ratio(cpu["web+dashboard"], cpu["web"]),
        "cpu_per_gib_web_vs_no_web": paired_ratio(cpu["web"], cpu["no-web"]),
    }
    dashboard_cpu = sum(idle["open"]) / len(idle["open"]) - sum(idle["closed"]) / len(idle["closed"])
    return {
        "path": "loopback-web",
        "layout": "pierce-tls on 127.0.0.1, iperf3 single stream; server CPU from /proc",
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "iperf_seconds": args.seconds,
        "throughput_gbps_median": {n: round(statistics.median(v), 2) for n, v in gbps.items()},
        "server_cpu_s_per_gib_median": {n: round(statistics.median(v), 4) for n, v in cpu.items()},
        "server_busy_cpu_s_per_s_median": round(statistics.median(busy), 3),
        "server_idle_cpu_ms_per_s_mean": {k: round(1000 * sum(v) / len(v), 2) for k, v in idle.items()},
        "dashboard_cpu_share_of_busy_server": round(dashboard_cpu / statistics.median(busy), 4),
        "ratios": ratios,
        "bars": bar_verdicts(ratios, WEB_BARS),
    }


def print_web_table(res: dict[str, Any]) -> None:
    thr, cpu, rat = res["throughput_gbps_median"], res["server_cpu_s_per_gib_median"], res["ratios"]
    print(
        f"\n{res['path']} ({res['layout']}; {res['cpus']} CPUs): {res['rounds']} rounds, "
        f"iperf3 -t {res['iperf_seconds']}"
    )
    print(f"{'path':<14} {'throughput (Gbit/s)':>20} {'server CPU s/GiB':>17}")
    for n in thr:
        print(f"{n:<14} {thr[n]:>20.2f} {cpu[n]:>17.4f}")
    bar = res["bars"]["cpu_per_gib_dashboard_vs_web"]
    print(
        f"\nserver CPU/GiB  web+dashboard/web = {rat['cpu_per_gib_dashboard_vs_web']:.3f}x"
        f"   (bar {bar['bar']}: {'met' if bar['met'] else 'MISSED'})"
    )
    print(f"server CPU/GiB  web/no-web        = {rat['cpu_per_gib_web_vs_no_web']:.3f}x")
    rest = res["server_idle_cpu_ms_per_s_mean"]
    print(
        f"server at rest: {rest['closed']:.2f} ms CPU/s with the dashboard closed, {rest['open']:.2f} open; "
        f"moving data: {res['server_busy_cpu_s_per_s_median']:.3f} s CPU/s; the dashboard's share of that: "
        f"{100 * res['dashboard_cpu_share_of_busy_server']:.2f} %"
    )


def print_table(res: dict[str, Any]) -> None:
    thr, ttfb, rat = res["throughput_gbps_median"], res["first_byte_us_median"], res["ratios"]
    print(
        f"\n{res['path']} ({res['layout']}; {res['cpus']} CPUs): {res['rounds']} rounds, "
        f"iperf3 -t {res['iperf_seconds']}, {res['connections_per_round']} sequential connections per round; "
        f"ssh cipher {res['ssh_cipher']}"
    )
    cpu = res.get("cpu_cores_per_gbps_median", {})
    print(f"{'path':<14} {'throughput (Gbit/s)':>20} {'first byte (us)':>16} {'CPU/(Gbit/s)':>13}")
    for n in thr:
        print(f"{n:<14} {thr[n]:>20.2f} {ttfb[n]:>16.0f} {cpu.get(n, '-'):>13}")
    if "rss" in res:
        print(f"\n{'RSS server+client':<18} {'idle (MiB)':>11} {'conns':>6}", end="")
        print(f" {'loaded (MiB)':>13} {'KiB/conn':>9}")
        for mode, m in res["rss"].items():
            print(
                f"{'pierce-' + mode:<18} {m['idle_mib']:>11.1f} {m['conns']:>6} {m['loaded_mib']:>13.1f} "
                f"{m['per_conn_kib']:>9.1f}"
            )

    def line(label: str, key: str) -> None:
        if key not in rat:
            return
        bar = res["bars"].get(key)
        verdict = f"   (bar {bar['bar']}: {'met' if bar['met'] else 'MISSED'})" if bar else ""
        print(f"{label:<36} = {rat[key]:.2f}x{verdict}")

    print()
    line("throughput  pierce-tls/ssh-R", "throughput_pierce_tls_vs_ssh")
    line("throughput  pierce-tls/stunnel", "throughput_pierce_tls_vs_stunnel")
    line("throughput  pierce-plain/socat", "throughput_pierce_plain_vs_socat")
    line("throughput  pierce-tls/direct", "throughput_pierce_tls_vs_direct")
    line("first byte  pierce-tls/socat", "first_byte_pierce_tls_vs_socat")
    line("first byte  pierce-plain/socat", "first_byte_pierce_plain_vs_socat")
    line("first byte  ssh-R/socat", "first_byte_ssh_vs_socat")
    line("first byte  pierce-tls/stunnel", "first_byte_pierce_tls_vs_stunnel")
    line("CPU/Gbit/s  pierce-tls/ssh-R", "cpu_per_gbps_pierce_tls_vs_ssh_r")
    line("CPU/Gbit/s  pierce-tls/stunnel", "cpu_per_gbps_pierce_tls_vs_stunnel")
    line("CPU/Gbit/s  pierce-plain/socat", "cpu_per_gbps_pierce_plain_vs_socat")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--connections", type=int, default=500, help="sequential connections per path and round")
    ap.add_argument("--idle-conns", type=int, default=1000, help="connections held open for the RSS figure")
    ap.add_argument(
        "--netns", action="store_true", help="also run across veth links between namespaces V, S, L (root)"
    )
    ap.add_argument(
        "--web",
        action="store_true",
        help="only measure the web side's CPU cost (no [web], [web], [web] with a dashboard open)",
    )
    ap.add_argument(
        "--json", action="store_true", help="print the results as JSON (a list, one per topology)"
    )
    args = ap.parse_args()
    if args.web:
        return main_web(args)
    tools = ("iperf3", "socat", "ss", "ssh", "ssh-keygen", SSHD, *(("ip",) if args.netns else ()))
    if missing := missing_tools(*tools):
        print(f"bench: {missing} is not installed", file=sys.stderr)
        return 2
    if args.netns and os.geteuid() != 0:
        print("bench: --netns needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        results = [run(args, netns=False)]
        if args.netns:
            results.append(run(args, netns=True))
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped and removed", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for res in results:
            print_table(res)
    return 0


def main_web(args: argparse.Namespace) -> int:
    chromium = chromium_path()
    if (missing := missing_tools("iperf3", "ss")) or chromium is None:
        print(f"bench: {missing or 'chromium (or $PIERCE_CHROMIUM)'} is not installed", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        result = web_cost(args, chromium)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped and removed", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps([result], indent=2))
    else:
        print_web_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
