#!/usr/bin/env python3
"""Run the benchmarks one after another and write one Markdown report with PNG charts.

Each benchmark runs in its own subprocess with ``--json`` (bench_tunnel, bench_map, bench_web,
bench_memory, and bench_p2p's path throughput when run as root with the lab's tools); ``--quick`` passes
their short options so the whole report takes a few minutes. Written to ``--out`` (default docs/bench):
``report.md`` (the machine, one table per benchmark with the ratios and the bars, how each was run),
``results.json`` (every benchmark's own JSON), and the charts: ``throughput.png`` (pierce against socat,
rinetd, haproxy, ``ssh -R`` and stunnel, Gbit/s with the ratios), ``web.png`` (requests/s and latency
percentiles against nginx), ``memory.png`` (RSS against idle connections held, pierce TLS and plain and
the peers) and ``cpu.png`` (cores per Gbit/s, and CPU per request for the web proxies).

All figures come from one run on whatever machine runs it; the ratios compare tools measured in the same
run, interleaved, which is what to read on a shared, noisy machine.

Usage: ``python3 bench/report.py [--quick] [--out docs/bench] [--only tunnel,map,web,memory,p2p]``.
Needs matplotlib, a benchmark-only extra: ``pip install -e '.[bench]'`` (or ``pip install matplotlib``);
each benchmark needs its own tools (see its docstring); one that cannot run is listed with the reason.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def is_root() -> bool:
    return os.geteuid() == 0


#: name -> (script, full options, --quick options, title); every run adds --json.
BENCHES: dict[str, tuple[str, list[str], list[str], str]] = {
    "tunnel": (
        "bench_tunnel.py",
        ["--rounds", "5", "--seconds", "3", "--connections", "500"],
        ["--rounds", "2", "--seconds", "2", "--connections", "100", "--idle-conns", "500"],
        "Reverse tunnels: pierce vs ssh -R, stunnel, socat",
    ),
    "map": ("bench_map.py", [], ["--quick"], "Port mapping: pierce map vs socat, rinetd, haproxy"),
    "web": ("bench_web.py", [], ["--quick"], "Web proxies: pierce http proxy vs nginx proxy_pass"),
    "memory": (
        "bench_memory.py",
        ["--hold", "10000"],
        ["--quick", "--hold", "10000"],
        "Memory per idle tunnelled connection",
    ),
    "p2p": (
        "bench_p2p.py",
        ["--throughput", "--rounds", "5"],
        ["--throughput", "--sizes", "4", "--rounds", "1"],
        "P2P paths through NATs (cone x cone lab)",
    ),
}
#: Benchmarks whose topology needs root; as root the tunnel and map benches also run across namespaces.
NEEDS_ROOT = {"p2p"}


def run_bench(name: str, quick: bool, log_dir: Path) -> dict[str, Any]:
    script, full, short, _ = BENCHES[name]
    if name in NEEDS_ROOT and not is_root():
        return {"skipped": "needs root (network namespaces)"}
    if not (HERE / script).exists():
        return {"skipped": f"{script} is not there"}
    args = list(short if quick else full)
    if name in ("tunnel", "map") and is_root():
        args.append("--netns")
    argv = [sys.executable, str(HERE / script), *args, "--json"]
    shown = f"python3 bench/{script} {' '.join(args)} --json"
    print(f"report: {shown}", file=sys.stderr, flush=True)
    started = time.monotonic()
    log = log_dir / f"{name}.stderr"
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        try:
            stdout, _ = proc.communicate()
        except BaseException:
            # Ctrl-C or SIGTERM: the benchmark stops everything it started on SIGTERM; give it the time.
            proc.terminate()
            proc.wait(60)
            raise
    seconds = round(time.monotonic() - started)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-8:]
        return {"command": shown, "seconds": seconds, "failed": f"exit {proc.returncode}", "stderr": tail}
    return {"command": shown, "seconds": seconds, "result": json.loads(stdout)}


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -- Markdown --------------------------------------------------------------------------------------


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**MISSED**", None: "not measured"}[met]


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio_rows(ratios: dict[str, Any], bars: dict[str, Any]) -> list[str]:
    out = ["| ratio | value | bar |", "|---|---|---|"]
    for key, value in ratios.items():
        bar = bars.get(key)
        text = f"{bar['bar']}: {verdict(bar['met'])}" if bar else ""
        out.append(f"| {key.replace('_', ' ')} | {fmt(value)}x | {text} |")
    return out


def md_tunnel(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for res in results:
        thr, ttfb = res["throughput_gbps_median"], res["first_byte_us_median"]
        cpu = res.get("cpu_cores_per_gbps_median", {})
        out += [
            f"**{res['path']}** ({res['layout']}): {res['rounds']} rounds, iperf3 -t {res['iperf_seconds']}, "
            f"{res['connections_per_round']} connections per round, ssh cipher {res['ssh_cipher']}\n",
            "| path | Gbit/s | first byte µs | CPU cores per Gbit/s |",
            "|---|---|---|---|",
            *(f"| {n} | {thr[n]:.2f} | {ttfb[n]:,} | {fmt(cpu.get(n), 3)} |" for n in thr),
            "",
            *ratio_rows(res["ratios"], res["bars"]),
            "",
        ]
    return out


def md_map(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for res in results:
        thr, lat = res["throughput_gbps_median"], res["connect_latency_us_median"]
        cpu = res.get("relay_cpu_cores_per_gbps_median", {})
        out += [
            f"**{res['path']}**: {res['rounds']} rounds, iperf3 -t {res['iperf_seconds']}, "
            f"{res['connections']} connections\n",
            "| path | Gbit/s | connect+echo+close µs | relay CPU cores per Gbit/s |",
            "|---|---|---|---|",
            *(f"| {n} | {thr[n]:.2f} | {lat[n]:,} | {fmt(cpu.get(n), 3)} |" for n in thr),
            "",
            *ratio_rows(res["ratios"], res.get("bars", {})),
            "",
        ]
    return out


def md_web(res: dict[str, Any]) -> list[str]:
    rps, lat, err = res["requests_per_s_median"], res["latency_us_median"], res["errors"]
    cpu = res["cpu_us_per_request"]
    cpu_text = {
        "nginx": f"{cpu['nginx']} µs",
        "pierce": f"{cpu['pierce_server']} + {cpu['pierce_client']} µs (server + client)",
    }
    c = res["constant_rate"]
    return [
        f"{res['page_bytes']} B page, wrk -t{res['threads']} -c{res['connections']} -d{res['seconds']}s x "
        f"{res['rounds']} rounds\n",
        "| path | requests/s | p50 ms | p99 ms | errors | proxy CPU per request |",
        "|---|---|---|---|---|---|",
        *(
            f"| {n} | {rps[n]:,} | {lat[n]['p50'] / 1000:.2f} | {lat[n]['p99'] / 1000:.2f} | "
            f"{sum(err[n].values())} | {cpu_text.get(n, '–')} |"
            for n in rps
        ),
        "",
        *ratio_rows(res["ratios"], {k: v for k, v in res["bars"].items() if k in res["ratios"]}),
        "",
        f"Constant rate through pierce: target {c['target_rps']:,} requests/s for {c['seconds']} s over "
        f"{c['clients']} connections: achieved {c['achieved_rps']:,.0f}/s, p50 {fmt(c['p50_us'])} µs, "
        f"p99 {fmt(c['p99_us'])} µs, errors {sum(c['errors'].values())} "
        f"(bar {res['bars']['constant_rate']['bar']}: {verdict(res['bars']['constant_rate']['met'])}).",
        "",
    ]


def md_memory(res: dict[str, Any]) -> list[str]:
    counts, tools = res["counts"], res["tools"]
    head = "| tool | idle MiB (per process) | " + " | ".join(f"N={n:,}" for n in counts if n)
    out = [
        "VmRSS summed over each tool's processes (MiB) with N idle connections held open through it, each "
        "having carried a byte both ways; KiB per connection is the least-squares slope.\n",
        head + " | KiB/conn | fds at max N | notes |",
        "|---" * (len([n for n in counts if n]) + 5) + "|",
    ]
    for name, t in tools.items():
        at = {p["conns"]: p for p in t["points"]}
        per = ", ".join(f"{r} {v:.1f}" for r, v in (t["idle_mib_by_process"] or {}).items())
        cells = " | ".join(fmt(at[n]["rss_mib"], 1) if n in at else "–" for n in counts if n)
        fds = t["points"][-1]["fds"] if t["points"] else None
        note = t["note"] + (f"; FAILED: {t['failed']}" if t["failed"] else "")
        out.append(
            f"| {name} | {fmt(t['idle_mib'], 1)} ({per}) | {cells} | {fmt(t['per_conn_kib_slope'], 1)} | "
            f"{fmt(fds)} | {note} |"
        )
    out += ["", *ratio_rows(res["ratios"], {}), ""]
    held = res.get("hold")
    if held:
        out.append(
            f"Holding {held['target']:,} idle connections through pierce-tls: {held['opened']:,} opened in "
            f"{held['open_seconds']} s, {held['answered']:,} answered at the end"
            + (f"; opening stopped: {held['open_failure']}" if held["open_failure"] else "")
            + (
                f"; RSS {held['loaded_mib']} MiB ({held.get('per_conn_kib', '–')} KiB per connection)"
                if "loaded_mib" in held
                else ""
            )
            + "."
        )
        if held.get("fd_limit_note"):
            out.append(f"Note: {held['fd_limit_note']}.")
        out.append("")
    out += ["| bar (pierce-tls, server + client) | value | verdict |", "|---|---|---|"]
    for key, bar in res["bars"].items():
        out.append(
            f"| {key.replace('_', ' ')}: {bar['bar']} | {fmt(bar['value'], 1)} | {verdict(bar['met'])} |"
        )
    out.append("")
    return out


def md_p2p(res: dict[str, Any]) -> list[str]:
    out = [
        f"{res['lab']}, {res['rounds']} round(s); echo of N MiB each way, Mbit/s of both directions\n",
        "| MiB | relay (stcp) | direct TCP | QUIC path | bare aioquic | direct TCP / relay | QUIC / bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in res["sizes"]:
        out.append(
            f"| {row['size_mib']} | {row['relay_mbit_s']:,.0f} | {row['direct_tcp_mbit_s']:,.0f} | "
            f"{row['quic_mbit_s']:,.0f} | {row['bare_mbit_s']:,.0f} | {row['direct_tcp_to_relay']}x | "
            f"{row['quic_to_bare']}x |"
        )
    out.append("")
    return out


RENDER = {"tunnel": md_tunnel, "map": md_map, "web": md_web, "memory": md_memory, "p2p": md_p2p}


def markdown(report: dict[str, Any], charts: list[str]) -> str:
    m = report["machine"]
    out = [
        "# Benchmark report",
        "",
        f"Generated by `python3 bench/report.py{' --quick' if report['quick'] else ''}` on {m['date']}: "
        f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, Linux {m['kernel']}, Python {m['python']}.",
        "",
        "Every figure comes from this one run on a shared, noisy machine: absolute numbers are context. The "
        "ratios compare tools measured in the same run, interleaved, paired per round, and are what to read. "
        + (
            "`--quick` means few and short rounds: expect the ratios to move by 10-20 % between runs. "
            if report["quick"]
            else ""
        )
        + "Each benchmark's own docstring says what it measures.",
        "",
        *(f"![{c}]({c})" for c in charts),
        "",
    ]
    for name, entry in report["benches"].items():
        out += [f"## {BENCHES[name][3]}", ""]
        if "skipped" in entry:
            out += [f"Not run: {entry['skipped']}.", ""]
            continue
        out += [f"`{entry['command']}` ({entry['seconds']} s)", ""]
        if "failed" in entry:
            out += [f"Failed ({entry['failed']}):", "", "```", *entry["stderr"], "```", ""]
            continue
        out += RENDER[name](entry["result"])
    return "\n".join(out).rstrip() + "\n"


# -- charts ----------------------------------------------------------------------------------------


def bar_labels(ax: Any, bars: Any, texts: list[str]) -> None:
    for bar, text in zip(bars, texts, strict=True):
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )


#: Which pierce path a peer is compared with, per benchmark, and the ratio key (without the metric).
TUNNEL_PEERS = {
    "ssh-R": ("pierce-tls", "ssh"),
    "stunnel": ("pierce-tls", "stunnel"),
    "socat": ("pierce-plain", "socat"),
}
PIERCE_COLOURS = {
    "pierce": "#1f77b4",
    "pierce-tls": "#1f77b4",
    "pierce-plain": "#6baed6",
    "pierce-splice": "#9ecae1",
}
PEER_COLOUR, DIRECT_COLOUR = "#ff7f0e", "#999999"


def colour(name: str) -> str:
    return PIERCE_COLOURS.get(name, DIRECT_COLOUR if name == "direct" else PEER_COLOUR)


def grid(plt: Any, count: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A figure with ``count`` panels, at most two a row (readable at the README's width)."""
    cols = min(count, 2) if count != 3 else 3
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat


def chart_throughput(plt: Any, report: dict[str, Any], out: Path) -> str | None:
    panels = []
    for name in ("tunnel", "map"):
        entry = report["benches"].get(name, {})
        for res in entry.get("result") or []:
            panels.append((name, res))
    if not panels:
        return None
    fig, axes = grid(plt, len(panels), 5.2, 4.6)
    for ax, (name, res) in zip(axes, panels, strict=False):
        thr = res["throughput_gbps_median"]
        names = list(thr)
        bars = ax.bar(names, [thr[n] for n in names], color=[colour(n) for n in names])
        labels = []
        for n in names:
            text = f"{thr[n]:.1f}"
            if name == "tunnel" and n in TUNNEL_PEERS:
                mine, key = TUNNEL_PEERS[n]
                ratio = res["ratios"].get(f"throughput_{mine.replace('-', '_')}_vs_{key}")
                text += f"\n{mine}/this\n{ratio}x" if ratio is not None else ""
            elif name == "map" and n in ("socat", "rinetd", "haproxy"):
                ratio = res["ratios"].get(f"throughput_pierce_vs_{n}")
                text += f"\npierce/this\n{ratio}x" if ratio is not None else ""
            labels.append(text)
        bar_labels(ax, bars, labels)
        kind = "reverse tunnel" if name == "tunnel" else "port mapping"
        ax.set_title(f"{kind}, {res['path']}\nsingle-stream iperf3, median of {res['rounds']}", fontsize=10)
        ax.set_ylabel("Gbit/s")
        ax.set_ylim(0, max(thr.values()) * 1.3)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle("Throughput (higher is better; labels: Gbit/s and pierce / peer)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    return "throughput.png"


def chart_web(plt: Any, report: dict[str, Any], out: Path) -> str | None:
    res = report["benches"].get("web", {}).get("result")
    if not res:
        return None
    rps, lat = res["requests_per_s_median"], res["latency_us_median"]
    names = list(rps)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    bars = a.bar(names, [rps[n] for n in names], color=[colour(n) for n in names])
    ratio = res["ratios"]["rps_pierce_vs_nginx"]
    bar_labels(
        a, bars, [f"{rps[n]:,}" + (f"\npierce/nginx {ratio}x" if n == "pierce" else "") for n in names]
    )
    a.set_title(f"requests/s, wrk -c{res['connections']}, {res['page_bytes']} B page", fontsize=10)
    a.set_ylabel("requests/s")
    a.set_ylim(0, max(rps.values()) * 1.25)
    width = 0.38
    xs = range(len(names))
    for i, q in enumerate(("p50", "p99")):
        values = [lat[n][q] / 1000 for n in names]
        got = b.bar([x + (i - 0.5) * width for x in xs], values, width, label=q)
        bar_labels(b, got, [f"{v:.2f}" for v in values])
    b.set_xticks(list(xs), names)
    b.set_ylabel("ms")
    b.set_title("latency at saturation (lower is better)", fontsize=10)
    b.legend()
    fig.suptitle("Web proxies: pierce http proxy vs nginx proxy_pass (same run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "web.png", dpi=110)
    plt.close(fig)
    return "web.png"


def chart_memory(plt: Any, report: dict[str, Any], out: Path) -> str | None:
    res = report["benches"].get("memory", {}).get("result")
    if not res:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    styles = {
        "pierce-tls": ("#1f77b4", "-"),
        "pierce-plain": ("#6baed6", "-"),
        "ssh-R": ("#d62728", "--"),
        "pagekite": ("#ff7f0e", "--"),
        "stunnel": ("#2ca02c", "--"),
    }
    for name, t in res["tools"].items():
        xs = [p["conns"] for p in t["points"]]
        ys = [p["rss_mib"] for p in t["points"]]
        c, ls = styles.get(name, ("#7f7f7f", "--"))
        label = f"{name}: idle {fmt(t['idle_mib'], 0)} MiB, {fmt(t['per_conn_kib_slope'], 1)} KiB/conn"
        ax.plot(xs, ys, marker="o", linestyle=ls, color=c, label=label)
    bars = res["bars"]
    ax.scatter(
        [1000], [80], marker="*", s=160, color="black", zorder=5, label="bar: <= 80 MiB at 1,000 (pierce-tls)"
    )
    ax.axhline(60, color="black", linestyle=":", linewidth=1)
    ax.annotate("bar: idle <= 60 MiB", (0, 60), xytext=(4, 3), textcoords="offset points", fontsize=8)
    ax.set_xlabel("idle connections held through the tunnel")
    ax.set_ylabel("VmRSS of all the tool's processes (MiB)")
    met = bars["per_conn_kib_pierce_tls"]
    ax.set_title(
        f"Memory against idle connections held\n(pierce-tls: {fmt(met['value'], 1)} KiB per connection, "
        "bar <= 16 KiB)",
        fontsize=10,
    )
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)
    return "memory.png"


def chart_cpu(plt: Any, report: dict[str, Any], out: Path) -> str | None:
    panels = []
    for name, key in (("tunnel", "cpu_cores_per_gbps_median"), ("map", "relay_cpu_cores_per_gbps_median")):
        for res in report["benches"].get(name, {}).get("result") or []:
            if res.get(key):
                panels.append((name, res, res[key]))
    web = report["benches"].get("web", {}).get("result")
    count = len(panels) + (1 if web else 0)
    if not count:
        return None
    fig, axes = grid(plt, count, 4.8, 4.4)
    for ax, (name, res, cpu) in zip(axes, panels, strict=False):
        names = list(cpu)
        bars = ax.bar(names, [cpu[n] for n in names], color=[colour(n) for n in names])
        bar_labels(ax, bars, [f"{cpu[n]:.3f}" for n in names])
        kind = "tunnel (all its processes)" if name == "tunnel" else "port mapping (relay process)"
        ax.set_title(f"{kind}, {res['path']}", fontsize=10)
        ax.set_ylabel("CPU cores per Gbit/s (lower is better)")
        ax.set_ylim(0, max(cpu.values()) * 1.2)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    if web:
        ax = axes[len(panels)]
        c = web["cpu_us_per_request"]
        names, values = ["nginx", "pierce"], [c["nginx"], c["pierce_server"] + c["pierce_client"]]
        bars = ax.bar(names, values, color=[colour(n) for n in names])
        bar_labels(ax, bars, [f"{v:.1f}" for v in values])
        ax.set_title("web proxy (pierce: server + client)", fontsize=10)
        ax.set_ylabel("CPU µs per request (lower is better)")
        ax.set_ylim(0, max(values) * 1.2)
    fig.suptitle("CPU cost of moving data", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "cpu.png", dpi=110)
    plt.close(fig)
    return "cpu.png"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the benchmarks' short options: a few minutes")
    ap.add_argument("--out", default="docs/bench", help="directory for report.md, results.json and PNGs")
    ap.add_argument("--only", default=",".join(BENCHES), help="which benchmarks, comma-separated")
    ap.add_argument("--from-json", help="write the report from a results.json of an earlier run (no runs)")
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "report: matplotlib is missing; install the benchmark extra: pip install -e '.[bench]' "
            "(or: pip install matplotlib)",
            file=sys.stderr,
        )
        return 2
    names = [n for n in args.only.split(",") if n]
    if unknown := set(names) - set(BENCHES):
        ap.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C; `run_bench` passes it on to the running benchmark, which cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        report = {"machine": machine(), "quick": args.quick, "benches": {}}
        try:
            with tempfile.TemporaryDirectory(prefix="pierce-bench-report-") as logs:
                for name in names:
                    report["benches"][name] = run_bench(name, args.quick, Path(logs))
        except KeyboardInterrupt:
            print("report: interrupted", file=sys.stderr)
            return 130
        (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    charts = [
        c
        for c in (
            chart_throughput(plt, report, out),
            chart_web(plt, report, out),
            chart_memory(plt, report, out),
            chart_cpu(plt, report, out),
        )
        if c
    ]
    (out / "report.md").write_text(markdown(report, charts))
    print(f"report: wrote {out / 'report.md'} and {', '.join(charts) or 'no charts'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
