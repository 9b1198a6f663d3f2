#!/usr/bin/env python3
"""Benchmark pierce's http proxy (virtual hosts) against nginx ``proxy_pass`` and the backend itself.

One backend, a real nginx serving a small static page on loopback, reached three ways in the same run:
- ``direct``: the backend itself;
- ``nginx``: a second nginx in front, ``proxy_pass`` to an upstream with keep-alive connections, setting
  the same forwarding headers pierce adds (X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, -Host);
- ``pierce``: a `pierce server` with ``vhost_http_port`` and a `pierce client` with an ``http`` proxy
  (``custom_domains``) to the backend, default settings (TLS work connections).
Every request carries the proxy's Host header. Before and after the load each path serves the page once and
its SHA-256 is checked.

Throughput: ``wrk --latency`` with a fixed number of keep-alive connections and threads, interleaved rounds
(the order of the paths rotates every round); medians of requests/s, p50 and p99, and pierce/nginx paired
ratios (goal >= 0.5x). These latencies are at saturation (each connection sends its next request as soon as
the answer arrives). Errors are counted (connect, read, write, non-2xx/3xx status, timeout). The proxies'
own CPU time per request over the rounds is reported too (nginx master + workers; pierce server, client).

Constant rate: ``h2load --h1 --rps`` through pierce, many clients each pacing its own requests
(4,000 requests/s for 30 s by default; the bar: p99 <= 10 ms and zero errors). The per-request log
gives p50/p99 (time from sending a request to the end of its response); errors are failed, errored and
timed-out requests, non-2xx answers and requests never done; the body bytes received must be exactly
requests x page size. The rate is held when h2load's achieved rate is within 2% of the target.

Against an older pierce (``--baseline SRC``): a fourth path, ``pierce_base``, the same server and client
run from the source tree SRC (a checkout of an older commit, e.g. ``git worktree add /tmp/old COMMIT``;
its ``src`` goes first on PYTHONPATH), in the same interleaved rounds; the paired ratio of requests/s
pierce/pierce_base is reported (bar of the vhost work: >= 1.4x), with both pairs' CPU per request.

Request inspector (``--inspector``): instead of the above, the http proxy with the client's request
inspector off (``pierce``) and on (``pierce_inspect``: a second client of the same server, its proxy on
another domain with ``inspect = true`` and its admin port open) in the same run, interleaved rounds as
above; the paired ratio of requests/s on/off is reported (bar: >= 0.95x), with the clients' CPU time per
request. After the rounds the inspected proxy's log must hold requests (read from its admin API).

Usage: ``python3 bench/bench_web.py [--rounds 5] [--seconds 5] [--connections 32] [--threads 2]
[--rate 4000] [--rate-seconds 30] [--rate-clients 40] [--json] [--quick] [--inspector]
[--baseline SRC]``.
Needs nginx, wrk and h2load (Debian packages nginx, wrk, nghttp2-client). Each nginx runs from a temporary
directory with its own config (as root it keeps root as its worker user) and is stopped on exit.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
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
    Procs,
    free_port,
    group_cpu_seconds,
    missing_tools,
    paired_ratio,
    percentile,
    rotated,
    wait_listening,
)

HOST = "127.0.0.1"
DOMAIN = "web.bench.example"
#: The domain of the inspected proxy (``--inspector``).
INSPECT_DOMAIN = "inspect.bench.example"
GOAL_INSPECT_ON_VS_OFF = 0.95
TOKEN = "bench-token-Kq7vB2mN9pL4sR8tW3zY6c"
PAGE = "/index.html"
PATHS = ["direct", "nginx", "pierce"]
GOAL_PIERCE_VS_NGINX = 0.5
#: requests/s of this pierce over an older one (``--baseline``) that the vhost work aims for.
GOAL_PIERCE_VS_BASE = 1.4
RATE_BAR = (4000, 30)
#: p99 latency (ms) the constant-rate run must stay within.
RATE_P99_MS = 10
#: Achieved / target rate at or above which the constant rate counts as held.
RATE_HELD = 0.98

#: wrk calls ``done`` once at the end: one machine-readable line beside its usual report.
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""
WRK_ERRORS = ("connect", "read", "write", "status", "timeout")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def page_bytes(size: int) -> bytes:
    """A static HTML page of exactly ``size`` bytes."""
    head, tail = b"<!doctype html><title>bench</title><pre>\n", b"\n</pre>\n"
    fill = hashlib.sha256(b"pierce bench page").hexdigest().encode() * (size // 64 + 1)
    return (head + fill)[: size - len(tail)] + tail


# -- nginx -----------------------------------------------------------------------------------------


def nginx_conf(root: Path, workers: str, http_block: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"  {kind}_temp_path {root / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\nmaster_process on;\nworker_processes {workers};\n{user}pid {root / 'nginx.pid'};\n"
        "error_log stderr warn;\nworker_rlimit_nofile 8192;\nevents { worker_connections 4096; }\n"
        f"http {{\n  access_log off;\n{temp}  keepalive_requests 1000000;\n{http_block}}}\n"
    )


def backend_block(port: int, www: Path) -> str:
    return f"  server {{\n    listen {HOST}:{port};\n    root {www};\n  }}\n"


def front_block(port: int, backend: int) -> str:
    """``proxy_pass`` over keep-alive upstream connections, with the headers pierce's vhost adds."""
    return (
        f"  upstream backend {{\n    server {HOST}:{backend};\n    keepalive 64;\n"
        "    keepalive_requests 1000000;\n  }\n"
        f"  server {{\n    listen {HOST}:{port};\n    server_name {DOMAIN};\n    location / {{\n"
        "      proxy_pass http://backend;\n      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n      proxy_set_header Host $host;\n'
        "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "      proxy_set_header X-Real-IP $remote_addr;\n"
        "      proxy_set_header X-Forwarded-Proto $scheme;\n"
        "      proxy_set_header X-Forwarded-Host $http_host;\n    }\n  }\n"
    )


def start_nginx(
    procs: Procs, root: Path, workers: str, http_block: str, port: int
) -> subprocess.Popen[bytes]:
    """nginx in the foreground with its prefix, config, pid file and temp paths under ``root``."""
    root.mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(nginx_conf(root, workers, http_block))
    nginx = nginx_binary()
    assert nginx is not None
    log = root / "error.log"
    with log.open("wb") as out:
        proc = procs.start(
            [nginx, "-p", str(root), "-c", str(conf), "-e", "stderr"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_listening(port)
    except RuntimeError:
        raise RuntimeError(f"nginx did not start (rc={proc.poll()}):\n{log.read_text()}") from None
    return proc


# -- pierce ----------------------------------------------------------------------------------------


class WebTunnel:
    """A `pierce server` with a vhost HTTP port and a `pierce client` with one ``http`` proxy."""

    def __init__(
        self, procs: Procs, workdir: Path, backend: int, *, inspected: bool = False, src: Path | None = None
    ) -> None:
        """``inspected``: a second client too, its proxy on `INSPECT_DOMAIN` recorded by its inspector.
        ``src``: run pierce from this source tree (its ``src`` first on PYTHONPATH) instead of this one."""
        workdir.mkdir(parents=True, exist_ok=True)
        control, self.port = free_port(), free_port()
        self.logs = [workdir / "pierce-server.log", workdir / "pierce-client.log"]
        server_conf = workdir / "server.toml"
        server_conf.write_text(
            f'bind_addr = "{HOST}"\nbind_port = {control}\ntoken = "{TOKEN}"\n'
            f"vhost_http_port = {self.port}\nstun_port = 0\n"
        )
        client_conf = workdir / "client.toml"
        client_conf.write_text(
            f'server_addr = "{HOST}"\nserver_port = {control}\ntoken = "{TOKEN}"\nclient_id = "bench"\n'
            '[[proxies]]\nname = "web"\ntype = "http"\n'
            f'local_ip = "{HOST}"\nlocal_port = {backend}\ncustom_domains = ["{DOMAIN}"]\n'
        )
        env = {**os.environ, "PIERCE_STATE_DIR": str(workdir / "pierce-state")}
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src / "src"), env.get("PYTHONPATH")]))
        self.procs = [self._start(procs, "server", server_conf, self.logs[0], env)]
        wait_listening(control)
        wait_listening(self.port)
        self.procs.append(self._start(procs, "client", client_conf, self.logs[1], env))
        #: The inspected client's admin port and state directory (``inspected`` only).
        self.admin_port = 0
        self.admin_state = workdir / "inspect-state"
        if inspected:
            self.admin_port = free_port()
            inspect_conf = workdir / "client-inspect.toml"
            inspect_conf.write_text(
                f'server_addr = "{HOST}"\nserver_port = {control}\ntoken = "{TOKEN}"\n'
                f'client_id = "bench-inspect"\nadmin_port = {self.admin_port}\n'
                f'state_dir = "{self.admin_state}"\n'
                '[[proxies]]\nname = "web-inspect"\ntype = "http"\ninspect = true\n'
                f'local_ip = "{HOST}"\nlocal_port = {backend}\ncustom_domains = ["{INSPECT_DOMAIN}"]\n'
            )
            self.logs.append(workdir / "pierce-client-inspect.log")
            self.procs.append(self._start(procs, "client", inspect_conf, self.logs[2], env))

    def inspected_requests(self) -> int:
        """How many requests the inspected proxy's log holds (its admin API, with the generated token)."""
        token = (self.admin_state / "admin.token").read_text().strip()
        conn = http.client.HTTPConnection(HOST, self.admin_port, timeout=10)
        try:
            conn.request("GET", "/api/inspect/web-inspect", headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            doc = json.loads(response.read())
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"inspector API answered {response.status}: {doc}")
        return len(doc["requests"])

    @staticmethod
    def _start(
        procs: Procs, role: str, conf: Path, log: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "pierce", "--log-level", "warning", role, "-c", str(conf)]
        with log.open("wb") as out:
            return procs.start(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def check_running(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"{log.stem} exited (rc={proc.returncode}):\n{log.read_text()[-4000:]}")


# -- HTTP checks -----------------------------------------------------------------------------------


def fetch(port: int, host: str = DOMAIN) -> tuple[int, bytes]:
    """GET the page with the proxy's Host header; (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", PAGE, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_page(
    port: int, page: bytes, tunnel: WebTunnel | None = None, timeout: float = 20, host: str = DOMAIN
) -> None:
    """Poll until ``port`` serves the page (a vhost answers 404 until the proxy is registered)."""
    deadline = time.monotonic() + timeout
    last = "nothing yet"
    while time.monotonic() < deadline:
        if tunnel is not None:
            tunnel.check_running()
        try:
            status, body = fetch(port, host)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200 and body == page:
                return
            last = f"status {status}, {len(body)} bytes"
        time.sleep(0.05)
    raise RuntimeError(f"port {port} does not serve the page: {last}")


def page_intact(port: int, page: bytes, host: str = DOMAIN) -> bool:
    """One GET; True when the body's SHA-256 is the page's."""
    status, body = fetch(port, host)
    return status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(page).digest()


# -- load generators -------------------------------------------------------------------------------


def wrk(
    port: int, seconds: int, connections: int, threads: int, script: Path, host: str = DOMAIN
) -> dict[str, Any]:
    """One closed-loop ``wrk`` run on keep-alive connections; requests/s, latency, error counts."""
    argv = [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
        "--timeout", "10s", "-s", str(script), "-H", f"Host: {host}", f"http://{HOST}:{port}{PAGE}",
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK-RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (rc={out.returncode}):\n{out.stdout}\n{out.stderr}")
    doc = json.loads(line.removeprefix("WRK-RESULT "))
    return {
        "requests": doc["requests"],
        "rps": doc["requests"] / (doc["duration_us"] / 1e6),
        "p50_us": doc["p50_us"],
        "p99_us": doc["p99_us"],
        "errors": {key: doc[key] for key in WRK_ERRORS},
    }


def _count(pattern: str, text: str) -> tuple[str, ...]:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"h2load output without {pattern!r}:\n{text}")
    return match.groups()


def h2load_rate(
    port: int, rate: int, seconds: int, clients: int, page_size: int, log: Path
) -> dict[str, Any]:
    """``rate`` requests/s for ``seconds`` over ``clients`` HTTP/1.1 connections, each paced by h2load."""
    total = rate * seconds
    argv = [
        "h2load", "--h1", "-t", "1", "-c", str(clients), "--rps", str(rate // clients), "-n", str(total),
        "-N", "10s", "--log-file", str(log), "--connect-to", f"{HOST}:{port}", f"http://{DOMAIN}{PAGE}",
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=3 * seconds + 60)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed (rc={out.returncode}):\n{text}")
    _, _, done, succeeded, failed, errored, timeout = map(
        int,
        _count(
            r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
            r"(\d+) errored, (\d+) timeout",
            text,
        ),
    )
    ok_2xx, s3, s4, s5 = map(int, _count(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text))
    (data,) = map(int, _count(r"traffic: .*\((\d+)\) data", text))
    elapsed, unit, achieved = _count(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", text)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    times = sorted(int(row[2]) for row in rows if row[1].startswith("2"))
    errors = {
        "failed": failed,
        "errored": errored,
        "timeout": timeout,
        "non_2xx": s3 + s4 + s5,
        "not_done": total - done,
    }
    return {
        "target_rps": rate,
        "seconds": seconds,
        "clients": clients,
        "requests": total,
        "succeeded": succeeded,
        "achieved_rps": round(float(achieved), 1),
        "elapsed_s": round(float(elapsed) / {"us": 1e6, "ms": 1e3, "s": 1.0}[unit], 2),
        "p50_us": percentile(times, 50) if times else None,
        "p99_us": percentile(times, 99) if times else None,
        "max_us": times[-1] if times else None,
        "errors": errors,
        "body_bytes_ok": ok_2xx == total and data == total * page_size,
        "zero_errors": succeeded == total and ok_2xx == total and not any(errors.values()),
        "rate_held": float(achieved) >= RATE_HELD * rate,
    }


def rate_verdict(rate: dict[str, Any], *, full: bool) -> bool | None:
    """The constant-rate bar: met, missed, or None when a shorter or slower run (--quick) had no errors."""
    p99_ok = rate["p99_us"] is not None and rate["p99_us"] <= RATE_P99_MS * 1000
    if full:
        return bool(rate["zero_errors"] and rate["rate_held"] and p99_ok)
    return False if not rate["zero_errors"] else None


# -- the run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    procs = Procs()
    paths = list(PATHS)
    page = page_bytes(args.page_size)
    with tempfile.TemporaryDirectory(prefix="pierce-bench-web-") as tmp:
        workdir = Path(tmp)
        try:
            www = workdir / "www"
            www.mkdir()
            (www / PAGE.lstrip("/")).write_bytes(page)
            backend, front = free_port(), free_port()
            start_nginx(procs, workdir / "backend", args.nginx_workers, backend_block(backend, www), backend)
            nginx = start_nginx(
                procs, workdir / "front", args.nginx_workers, front_block(front, backend), front
            )
            tunnel = WebTunnel(procs, workdir, backend)
            # CPU time of the proxies alone (the backend serves every path): nginx master + workers, pierce.
            server, client = tunnel.procs
            groups = {"nginx": [nginx.pid], "pierce_server": [server.pid], "pierce_client": [client.pid]}
            ports = {"direct": backend, "nginx": front, "pierce": tunnel.port}
            tunnels = {"pierce": tunnel}
            if args.baseline is not None:
                base = tunnels["pierce_base"] = WebTunnel(procs, workdir / "base", backend, src=args.baseline)
                groups["pierce_base_server"] = [base.procs[0].pid]
                groups["pierce_base_client"] = [base.procs[1].pid]
                ports["pierce_base"] = base.port
                paths.append("pierce_base")
            for name in paths:
                wait_page(ports[name], page, tunnels.get(name))
            intact = {name: page_intact(port, page) for name, port in ports.items()}

            script = workdir / "report.lua"
            script.write_text(WRK_REPORT)
            for name in paths:  # warm up: logins done, work connections and upstream keep-alives open
                wrk(ports[name], args.warmup, args.connections, args.threads, script)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
            cpu_before = {name: sum(map(group_cpu_seconds, pids)) for name, pids in groups.items()}
            for r in range(args.rounds):
                for name in rotated(paths, r):
                    runs[name].append(wrk(ports[name], args.seconds, args.connections, args.threads, script))
                print(
                    f"round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{n} {runs[n][-1]['rps']:.0f} req/s" for n in paths),
                    file=sys.stderr,
                )

            cpu = {
                name: sum(map(group_cpu_seconds, pids)) - cpu_before[name] for name, pids in groups.items()
            }
            print(
                f"constant rate: {args.rate} req/s for {args.rate_seconds} s through pierce", file=sys.stderr
            )
            rate = h2load_rate(
                tunnel.port,
                args.rate,
                args.rate_seconds,
                args.rate_clients,
                len(page),
                workdir / "h2load.log",
            )
            for one in tunnels.values():
                one.check_running()
            intact = {name: intact[name] and page_intact(port, page) for name, port in ports.items()}
        finally:
            procs.close()

    rps = {n: [one["rps"] for one in runs[n]] for n in paths}
    ratios = {
        "rps_pierce_vs_nginx": paired_ratio(rps["pierce"], rps["nginx"]),
        "rps_pierce_vs_direct": paired_ratio(rps["pierce"], rps["direct"]),
        "rps_nginx_vs_direct": paired_ratio(rps["nginx"], rps["direct"]),
    }
    cpu_paths = [
        ("nginx", "nginx", "nginx"),
        ("pierce_server", "pierce_server", "pierce"),
        ("pierce_client", "pierce_client", "pierce"),
    ]
    bars: dict[str, dict[str, Any]] = {}
    if "pierce_base" in rps:
        ratios["rps_pierce_vs_base"] = paired_ratio(rps["pierce"], rps["pierce_base"])
        cpu_paths += [
            ("pierce_base_server", "pierce_base_server", "pierce_base"),
            ("pierce_base_client", "pierce_base_client", "pierce_base"),
        ]
        bars["rps_pierce_vs_base"] = {
            "bar": f">= {GOAL_PIERCE_VS_BASE}x",
            "met": ratios["rps_pierce_vs_base"] >= GOAL_PIERCE_VS_BASE,
        }
    full_bar = args.rate >= RATE_BAR[0] and args.rate_seconds >= RATE_BAR[1]
    return {
        "path": "loopback",
        "cpus": os.cpu_count(),
        "page_bytes": len(page),
        "host_header": DOMAIN,
        "nginx_workers": args.nginx_workers,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": args.connections,
        "threads": args.threads,
        "baseline": str(args.baseline) if args.baseline is not None else None,
        "requests_per_s_median": {n: round(statistics.median(v)) for n, v in rps.items()},
        "latency_us_median": {
            n: {q: round(statistics.median(one[f"{q}_us"] for one in runs[n])) for q in ("p50", "p99")}
            for n in paths
        },
        "errors": {n: {k: sum(one["errors"][k] for one in runs[n]) for k in WRK_ERRORS} for n in paths},
        "cpu_us_per_request": {
            name: round(cpu[group] * 1e6 / max(1, sum(one["requests"] for one in runs[path])), 1)
            for name, group, path in cpu_paths
        },
        "body_sha256_ok": intact,
        "ratios": ratios,
        "constant_rate": rate,
        "bars": {
            **bars,
            "rps_pierce_vs_nginx": {
                "bar": f">= {GOAL_PIERCE_VS_NGINX}x",
                "met": ratios["rps_pierce_vs_nginx"] >= GOAL_PIERCE_VS_NGINX,
            },
            "constant_rate": {
                "bar": f"{RATE_BAR[0]} req/s for {RATE_BAR[1]} s, p99 <= {RATE_P99_MS} ms, zero errors",
                # A shorter or slower run (--quick) cannot meet the bar, only fail it.
                "met": rate_verdict(rate, full=full_bar),
            },
        },
    }


INSPECT_PATHS = {"pierce": DOMAIN, "pierce_inspect": INSPECT_DOMAIN}


def run_inspector(args: argparse.Namespace) -> dict[str, Any]:
    """``--inspector``: the http proxy with the request inspector off and on, in the same run."""
    procs = Procs()
    page = page_bytes(args.page_size)
    with tempfile.TemporaryDirectory(prefix="pierce-bench-inspect-") as tmp:
        workdir = Path(tmp)
        try:
            www = workdir / "www"
            www.mkdir()
            (www / PAGE.lstrip("/")).write_bytes(page)
            backend = free_port()
            start_nginx(procs, workdir / "backend", args.nginx_workers, backend_block(backend, www), backend)
            tunnel = WebTunnel(procs, workdir, backend, inspected=True)
            _, client, client_inspect = tunnel.procs
            groups = {"pierce": [client.pid], "pierce_inspect": [client_inspect.pid]}
            for host in INSPECT_PATHS.values():
                wait_page(tunnel.port, page, tunnel, host=host)
            intact = {name: page_intact(tunnel.port, page, host) for name, host in INSPECT_PATHS.items()}
            script = workdir / "report.lua"
            script.write_text(WRK_REPORT)
            for host in INSPECT_PATHS.values():
                wrk(tunnel.port, args.warmup, args.connections, args.threads, script, host)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in INSPECT_PATHS}
            cpu = dict.fromkeys(INSPECT_PATHS, 0.0)
            for r in range(args.rounds):
                for name in rotated(list(INSPECT_PATHS), r):
                    before = group_cpu_seconds(groups[name][0])
                    runs[name].append(
                        wrk(
                            tunnel.port,
                            args.seconds,
                            args.connections,
                            args.threads,
                            script,
                            INSPECT_PATHS[name],
                        )
                    )
                    cpu[name] += group_cpu_seconds(groups[name][0]) - before
                print(
                    f"round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{n} {runs[n][-1]['rps']:.0f} req/s" for n in INSPECT_PATHS),
                    file=sys.stderr,
                )
            tunnel.check_running()
            recorded = tunnel.inspected_requests()
            intact = {n: intact[n] and page_intact(tunnel.port, page, h) for n, h in INSPECT_PATHS.items()}
        finally:
            procs.close()
    rps = {n: [one["rps"] for one in runs[n]] for n in INSPECT_PATHS}
    ratio = paired_ratio(rps["pierce_inspect"], rps["pierce"])
    return {
        "path": "loopback",
        "cpus": os.cpu_count(),
        "page_bytes": len(page),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": args.connections,
        "threads": args.threads,
        "requests_per_s_median": {n: round(statistics.median(v)) for n, v in rps.items()},
        "latency_us_median": {
            n: {q: round(statistics.median(one[f"{q}_us"] for one in runs[n])) for q in ("p50", "p99")}
            for n in INSPECT_PATHS
        },
        "errors": {
            n: {k: sum(one["errors"][k] for one in runs[n]) for k in WRK_ERRORS} for n in INSPECT_PATHS
        },
        "client_cpu_us_per_request": {
            n: round(cpu[n] * 1e6 / max(1, sum(one["requests"] for one in runs[n])), 1) for n in INSPECT_PATHS
        },
        "body_sha256_ok": intact,
        "inspected_requests_kept": recorded,
        "ratios": {"rps_inspect_on_vs_off": ratio},
        "bars": {
            "rps_inspect_on_vs_off": {
                "bar": f">= {GOAL_INSPECT_ON_VS_OFF}x",
                "met": ratio >= GOAL_INSPECT_ON_VS_OFF,
            }
        },
    }


def print_inspector_table(res: dict[str, Any]) -> None:
    rps, lat, err = res["requests_per_s_median"], res["latency_us_median"], res["errors"]
    cpu = res["client_cpu_us_per_request"]
    print(
        f"\n{res['path']} ({res['cpus']} CPUs): {res['page_bytes']} B page, wrk -t{res['threads']} "
        f"-c{res['connections']} -d{res['seconds']}s x {res['rounds']} rounds, http proxy, inspector off / on"
    )
    print(
        f"{'path':<15} {'requests/s':>11} {'p50 (ms)':>9} {'p99 (ms)':>9} {'errors':>7} {'sha256':>7} "
        f"{'client CPU us/req':>18}"
    )
    for n in rps:
        print(
            f"{n:<15} {rps[n]:>11,} {lat[n]['p50'] / 1000:>9.2f} {lat[n]['p99'] / 1000:>9.2f} "
            f"{sum(err[n].values()):>7} {'ok' if res['body_sha256_ok'][n] else 'BAD':>7} {cpu[n]:>18.1f}"
        )
    bar = res["bars"]["rps_inspect_on_vs_off"]
    verdict = "met" if bar["met"] else "MISSED"
    print(
        f"\nrequests/s  inspector on/off = {res['ratios']['rps_inspect_on_vs_off']:.2f}x   "
        f"(bar {bar['bar']}: {verdict}); requests kept by the inspector: {res['inspected_requests_kept']}"
    )


def print_table(res: dict[str, Any]) -> None:
    rps, lat, err = res["requests_per_s_median"], res["latency_us_median"], res["errors"]
    print(
        f"\n{res['path']} ({res['cpus']} CPUs): {res['page_bytes']} B page, wrk -t{res['threads']} "
        f"-c{res['connections']} -d{res['seconds']}s x {res['rounds']} rounds, "
        f"nginx worker_processes {res['nginx_workers']}"
    )
    cpu = dict(res["cpu_us_per_request"])
    split = f"{cpu.pop('pierce_server'):.1f} + {cpu.pop('pierce_client'):.1f}"
    cpu["pierce"] = split
    if "pierce_base_server" in cpu:
        cpu["pierce_base"] = f"{cpu.pop('pierce_base_server'):.1f} + {cpu.pop('pierce_base_client'):.1f}"
    print(
        f"{'path':<11} {'requests/s':>11} {'p50 (ms)':>9} {'p99 (ms)':>9} {'errors':>7} {'sha256':>7} "
        f"{'proxy CPU us/request':>24}"
    )
    for n in rps:
        print(
            f"{n:<11} {rps[n]:>11,} {lat[n]['p50'] / 1000:>9.2f} {lat[n]['p99'] / 1000:>9.2f} "
            f"{sum(err[n].values()):>7} {'ok' if res['body_sha256_ok'][n] else 'BAD':>7} "
            f"{cpu.get(n, '-'):>24}"
        )
    print()

    def ms(us: int) -> str:
        return f"{us / 1000:.2f} ms"

    def yes(flag: bool, good: str = "yes", bad: str = "NO") -> str:
        return good if flag else bad

    rat, bar = res["ratios"], res["bars"]["rps_pierce_vs_nginx"]
    goal = f"(goal {bar['bar']}: {yes(bar['met'], 'met', 'MISSED')})"
    print(f"{'requests/s  pierce/nginx':<26} = {rat['rps_pierce_vs_nginx']:.2f}x   {goal}")
    print(f"{'requests/s  pierce/direct':<26} = {rat['rps_pierce_vs_direct']:.2f}x")
    print(f"{'requests/s  nginx/direct':<26} = {rat['rps_nginx_vs_direct']:.2f}x")
    if "rps_pierce_vs_base" in rat:
        bar = res["bars"]["rps_pierce_vs_base"]
        goal = f"(bar {bar['bar']}: {yes(bar['met'], 'met', 'MISSED')})"
        print(
            f"{'requests/s  pierce/base':<26} = {rat['rps_pierce_vs_base']:.2f}x   {goal}"
            f"   base: {res['baseline']}"
        )

    c, bar = res["constant_rate"], res["bars"]["constant_rate"]
    verdict = {True: "met", False: "MISSED", None: "not measured: shorter or slower run"}[bar["met"]]
    errors = ", ".join(f"{k} {v}" for k, v in c["errors"].items())
    print(
        f"\nconstant rate through pierce: h2load --h1 -c{c['clients']}, target {c['target_rps']:,} req/s "
        f"for {c['seconds']} s ({c['requests']:,} requests)"
    )
    print(f"  achieved {c['achieved_rps']:,.1f} req/s in {c['elapsed_s']} s (held: {yes(c['rate_held'])})")
    if c["p50_us"] is not None:
        print(f"  latency p50 {ms(c['p50_us'])}, p99 {ms(c['p99_us'])}, max {ms(c['max_us'])}")
    print(
        f"  succeeded {c['succeeded']:,}; errors: {errors}; body bytes {yes(c['body_bytes_ok'], 'ok', 'BAD')}"
    )
    print(f"  zero errors: {yes(c['zero_errors'], 'PASS', 'FAIL')}   (bar {bar['bar']}: {verdict})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5, help="seconds of each wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of wrk per path before the rounds")
    ap.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--page-size", type=int, default=1024, help="bytes of the static page")
    ap.add_argument("--nginx-workers", default="auto", help="worker_processes of both nginx instances")
    ap.add_argument("--rate", type=int, default=RATE_BAR[0], help="requests/s of the constant-rate run")
    ap.add_argument("--rate-seconds", type=int, default=RATE_BAR[1], help="seconds of the constant-rate run")
    ap.add_argument("--rate-clients", type=int, default=40, help="h2load connections sharing the rate")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 2 s, 3 s at the rate")
    ap.add_argument(
        "--inspector", action="store_true", help="only the http proxy, request inspector off vs on (ratio)"
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="SRC",
        help="also run pierce from this source tree (an older commit's checkout) as path pierce_base",
    )
    args = ap.parse_args()
    if args.baseline is not None and not (args.baseline / "src" / "pierce" / "__main__.py").is_file():
        ap.error(f"--baseline {args.baseline}: no src/pierce/__main__.py there (a pierce checkout?)")
    if args.quick:
        args.rounds, args.seconds, args.warmup, args.rate_seconds = 1, 2, 1, 3
    if args.page_size < 64:
        ap.error("--page-size must be at least 64 bytes")
    if args.rate % args.rate_clients:
        ap.error("--rate must be a multiple of --rate-clients (each client paces rate/clients requests/s)")
    if missing := missing_tools("wrk", "ss", *([] if args.inspector else ["h2load"])):
        print(f"bench: {missing} is not installed", file=sys.stderr)
        return 2
    if nginx_binary() is None:
        print("bench: nginx is not installed", file=sys.stderr)
        return 2
    # A terminated run still stops its nginx and pierce processes (the finally in `run`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    res = run_inspector(args) if args.inspector else run(args)
    if args.json:
        print(json.dumps(res, indent=2))
    elif args.inspector:
        print_inspector_table(res)
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
