#!/usr/bin/env python3
"""Memory per connection: what idle tunnelled connections cost pierce, and the tools it is compared with.

On loopback, each tool carries visitors to its own TCP echo service, all in one run:
- ``pierce-tls``: a `pierce server` + `pierce client`, one tcp proxy, data connections over TLS (default);
- ``pierce-plain``: the same with ``transport.encrypt_data = false`` on both ends;
- ``ssh-R``: ``ssh -N -R`` through a private sshd started here with its own keys (sshd counted with the
  processes it forks for the session);
- ``pagekite`` (Debian package pagekite, when installed): pagekite.py as front-end and back-end, a raw
  kite to the echo. pagekite carries raw TCP only through its front-end's HTTP CONNECT (``--rawports
  virtual``), so each visitor first sends ``CONNECT kite:port`` and reads the ``200``; the back-end's
  tunnel to the front-end runs over TLS (``--fe_certname``, a self-signed certificate it checks) and
  carries every visitor multiplexed on that one connection;
- ``stunnel`` (Debian package stunnel4, when installed): stunnel in client mode takes visitors and dials
  stunnel in server mode over TLS, which connects to the echo (a forward TLS pipe, not a reverse tunnel).

For each tool: VmRSS of each of its processes once idle (logged in, a first visitor carried, pools
filled, the figure settled), then with N idle visitor connections held open through it, for N in
``--counts`` (each connection first carries one byte both ways, checked; N grows from one count to the
next, the order of the tools rotating at every count); each figure is read once it stops moving. Per
tool: the least-squares slope of RSS against N in KiB per connection, RSS - idle per connection at each
N, and the file descriptors its processes hold. Ratios pierce / peer of idle RSS and of the slope. A
tool that fails to carry a connection, or takes longer than ``--step-budget`` seconds to reach the next
count, is reported with where it stopped and left out of the larger counts. pagekite's front-end answers
a lone CONNECT only at the next turn of its select loop (about 1.1 s when idle), so its visitors are
opened 25 at a time; the others one after another.
``--rounds`` repeats the whole sweep with fresh processes; figures are medians over rounds.

``--hold N`` (e.g. 10000) then holds N idle connections through a fresh pierce-tls tunnel and checks at
the end that every one still answers (a byte sent, its echo read). The benchmark raises its own
RLIMIT_NOFILE and starts the pierce processes and the echo with a raised limit too (root may go past the
hard limit); pierce's own defaults are not touched. If pierce cannot hold them, the report says after
how many connections, what failed, whether the processes still run and the last lines of their logs.

Bars (pierce-tls, server + client): idle <= 60 MiB; with 1,000 idle connections <= 80 MiB and <= 16 KiB
per additional connection (the slope); 10,000 connections held, every one answering at the end.

Usage: ``python3 bench/bench_memory.py [--counts 0,250,500,1000,2000] [--rounds 1] [--hold 10000]
[--json]``. Needs ss, ssh, ssh-keygen, /usr/sbin/sshd and openssl; pagekite and stunnel are measured when
installed. Every process started is stopped at the end, on errors, Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    LOOPBACK,
    SSHD,
    HoldFailed,
    Procs,
    SshReverseTunnel,
    Stunnel,
    Tunnel,
    exit_on_sigterm,
    fd_count,
    free_port,
    hold_connections,
    missing_tools,
    raise_fd_limit,
    rotated,
    settled,
    signals_held,
    start_echo,
    vm_rss_kib,
    wait_listening,
)

PIERCE = ("pierce-tls", "pierce-plain")
PEERS = ("ssh-R", "pagekite", "stunnel")
KITE = "echo.bench.example"
KITE_SECRET = "bench-kite-Wf3pQ8zR1tY6"
BAR_IDLE_MIB = 60.0
BAR_LOADED = (1000, 80.0)  #: connections, MiB
BAR_PER_CONN_KIB = 16.0
BAR_HOLD = 10_000
#: Connections opened between two progress lines (and RSS reads) while holding ``--hold``.
HOLD_CHUNK = 500
#: Connections opened between two checks of a tool's time budget in the sweep.
GROW_CHUNK = 25


@dataclass
class Subject:
    """One tool under test: where visitors connect, its processes by role, and what a visitor sends first."""

    name: str
    port: int
    roles: Callable[[], dict[str, list[int]]]
    prelude: Callable[[socket.socket], None] | None = None
    note: str = ""
    #: Visitors opened at once (1: one after another).
    parallel: int = 1
    held: list[socket.socket] = field(default_factory=list)
    failed: str | None = None

    def sample(self) -> dict[str, Any]:
        by_role = {role: sum(map(vm_rss_kib, pids)) for role, pids in self.roles().items()}
        return {
            "rss_mib": round(sum(by_role.values()) / 1024, 2),
            "rss_mib_by_process": {role: round(kib / 1024, 2) for role, kib in by_role.items()},
            "fds": sum(fd_count(pid) for pids in self.roles().values() for pid in pids),
        }

    def total_mib(self) -> float:
        return sum(vm_rss_kib(pid) for pids in self.roles().values() for pid in pids) / 1024

    def grow(self, count: int, budget: float = 0) -> None:
        """Hold ``count`` connections in all, within ``budget`` seconds if given (a failure or a tool too
        slow is recorded, not raised: it is a finding; the tool is left out of the larger counts)."""
        if self.failed is not None or count <= len(self.held):
            return
        start = time.monotonic()
        while len(self.held) < count:
            chunk = min(GROW_CHUNK, count - len(self.held))
            began = time.monotonic()
            try:
                self.held += self._open(chunk)
            except HoldFailed as exc:
                self.failed = f"{len(self.held) + exc.opened} connections held, then {exc}"
                return
            if budget and len(self.held) < count and time.monotonic() - start > budget:
                each = (time.monotonic() - began) / chunk
                self.failed = (
                    f"too slow: {len(self.held)} connections held after {budget:.0f} s towards {count} "
                    f"(the last {chunk} took {each:.2f} s each)"
                )
                return

    def _open(self, count: int) -> list[socket.socket]:
        """``count`` more connections: one after another, or ``parallel`` at a time."""
        if self.parallel <= 1:
            return hold_connections(self.port, count, prelude=self.prelude)
        with ThreadPoolExecutor(self.parallel) as pool:
            futures = [
                pool.submit(hold_connections, self.port, 1, prelude=self.prelude) for _ in range(count)
            ]
            got: list[socket.socket] = []
            failure: HoldFailed | None = None
            for future in futures:
                try:
                    got += future.result()
                except HoldFailed as exc:
                    failure = failure or exc
        if failure is not None:
            for sock in got:
                sock.close()
            raise HoldFailed(len(got), failure.cause, [])
        return got

    def release(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()


# -- pagekite --------------------------------------------------------------------------------------


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A P-256 key and a self-signed certificate for ``name``; (key, cert)."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def connect_prelude(kite: str, port: int) -> Callable[[socket.socket], None]:
    """What a pagekite visitor sends for a raw kite: an HTTP CONNECT; the ``200`` head is read."""
    request = f"CONNECT {kite}:{port} HTTP/1.1\r\nHost: {kite}:{port}\r\n\r\n".encode()

    def prelude(sock: socket.socket) -> None:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError(f"pagekite closed the CONNECT: {head!r}")
            head += data
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise ConnectionError(f"pagekite answered {status!r}")
        if head.split(b"\r\n\r\n", 1)[1]:
            raise ConnectionError("bytes after pagekite's CONNECT answer")

    return prelude


class PageKite:
    """pagekite.py as front-end on loopback and as back-end with a raw kite to ``target``, its tunnel over
    TLS to the front-end (which presents a self-signed certificate the back-end checks)."""

    def __init__(self, procs: Procs, workdir: Path, target: int) -> None:
        d = workdir / "pagekite"
        d.mkdir()
        key, cert = self_signed(d, "fe.bench.example")
        pem = d / "fe.pem"
        pem.write_bytes(key.read_bytes() + cert.read_bytes())
        self.port = free_port()
        common = ["pagekite", "--clean", "--nullui", "--nocrashreport"]
        with (d / "frontend.out").open("wb") as out:
            self.frontend = procs.start(
                [
                    *common, "--isfrontend", f"--host={HOST}", f"--ports={self.port}", "--protos=raw",
                    "--rawports=virtual", f"--domain=raw:{KITE}:{KITE_SECRET}",
                    f"--tls_endpoint=fe.bench.example:{pem}", "--tls_default=fe.bench.example",
                    f"--logfile={d / 'frontend.log'}",
                ],
                stdout=out, stderr=out,
            )  # fmt: skip
        wait_listening(self.port)
        with (d / "backend.out").open("wb") as out:
            self.backend = procs.start(
                [
                    *common, f"--frontend={HOST}:{self.port}", "--fe_certname=fe.bench.example",
                    f"--ca_certs={cert}", f"--service_on=raw-{target}:{KITE}:{HOST}:{target}:{KITE_SECRET}",
                    f"--logfile={d / 'backend.log'}",
                ],
                stdout=out, stderr=out,
            )  # fmt: skip
        self.prelude = connect_prelude(KITE, target)
        self._wait_kite(d)

    def _wait_kite(self, d: Path, timeout: float = 30) -> None:
        """Until the front-end carries a visitor to the kite (the back-end logs in, then registers it)."""
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            if self.backend.poll() is not None:
                raise RuntimeError(f"pagekite back-end exited:\n{(d / 'backend.out').read_text()[-2000:]}")
            try:
                hold_connections(self.port, 1, prelude=self.prelude, timeout=5)[0].close()
                return
            except HoldFailed as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"pagekite's kite never came up: {last}")

    def roles(self) -> dict[str, list[int]]:
        return {"frontend": [self.frontend.pid], "backend": [self.backend.pid]}


# -- the sweep -------------------------------------------------------------------------------------


def start_subjects(procs: Procs, workdir: Path, names: list[str]) -> list[Subject]:
    subjects = []
    for name in names:
        echo = start_echo(procs, HOST)
        targets = {"echo": echo}
        if name in PIERCE:
            tunnel = Tunnel(
                procs, workdir, name, site=LOOPBACK, encrypt=name == "pierce-tls", targets=targets
            )
            note = "data connections over TLS" if name == "pierce-tls" else "transport.encrypt_data = false"
            subjects.append(Subject(name, tunnel.public["echo"], tunnel.roles, note=note))
        elif name == "ssh-R":
            ssh = SshReverseTunnel(procs, workdir, LOOPBACK, targets)
            subjects.append(
                Subject(name, ssh.public["echo"], ssh.roles, note=f"{ssh.cipher}; sshd with its session")
            )
        elif name == "pagekite":
            kite = PageKite(procs, workdir, echo)
            note = (
                "raw kite through HTTP CONNECT; tunnel over TLS, visitors multiplexed on it; "
                f"visitors opened {GROW_CHUNK} at a time (a lone CONNECT waits ~1.1 s for its select loop)"
            )
            subjects.append(Subject(name, kite.port, kite.roles, kite.prelude, note, parallel=GROW_CHUNK))
        elif name == "stunnel":
            pipe = Stunnel(procs, workdir, LOOPBACK, targets)
            note = "client -> TLS -> server, one TLS connection per visitor (forward, not reverse)"
            subjects.append(Subject(name, pipe.public["echo"], pipe.roles, note=note))
    return subjects


def sweep(names: list[str], counts: list[int], rnd: int, budget: float) -> dict[str, dict[str, Any]]:
    """One round: fresh processes for every tool, then each count in turn, the tools rotating."""
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="pierce-bench-mem-"))
    subjects: list[Subject] = []
    try:
        subjects = start_subjects(procs, workdir, names)
        for subject in subjects:  # logged in, a visitor carried, pools full
            subject.grow(1)
            subject.release()
        by_name = {s.name: s for s in subjects}
        points: dict[str, list[dict[str, Any]]] = {s.name: [] for s in subjects}
        for i, count in enumerate(counts):
            for name in rotated(list(by_name), i + rnd):
                subject = by_name[name]
                subject.grow(count, budget)
                if subject.failed is not None:
                    continue
                settled(subject.total_mib)
                points[name].append({"conns": count, **subject.sample()})
            print(
                f"round {rnd + 1}, {count} connections: "
                + ", ".join(
                    f"{n} {p[-1]['rss_mib']:.1f} MiB" if p and p[-1]["conns"] == count else f"{n} -"
                    for n, p in points.items()
                ),
                file=sys.stderr,
            )
        return {s.name: {"note": s.note, "points": points[s.name], "failed": s.failed} for s in subjects}
    finally:
        with signals_held():
            for subject in subjects:
                subject.release()
            procs.close()
            shutil.rmtree(workdir, ignore_errors=True)


def slope(points: list[dict[str, Any]]) -> float | None:
    """Least-squares KiB of RSS per connection over the points."""
    if len({p["conns"] for p in points}) < 2:
        return None
    xs, ys = [p["conns"] for p in points], [p["rss_mib"] * 1024 for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def merge_rounds(rounds: list[dict[str, dict[str, Any]]], counts: list[int]) -> dict[str, dict[str, Any]]:
    """Per tool and count, the median over rounds of every figure; the slope and per-connection figures."""
    tools: dict[str, dict[str, Any]] = {}
    for name in rounds[0]:
        points = []
        for count in counts:
            seen = [p for r in rounds for p in r[name]["points"] if p["conns"] == count]
            if not seen:
                continue
            roles = seen[0]["rss_mib_by_process"]
            points.append(
                {
                    "conns": count,
                    "rss_mib": round(statistics.median(p["rss_mib"] for p in seen), 1),
                    "rss_mib_by_process": {
                        role: round(statistics.median(p["rss_mib_by_process"][role] for p in seen), 1)
                        for role in roles
                    },
                    "fds": round(statistics.median(p["fds"] for p in seen)),
                }
            )
        idle = next((p for p in points if p["conns"] == 0), None)
        per_conn = (
            {
                str(p["conns"]): round((p["rss_mib"] - idle["rss_mib"]) * 1024 / p["conns"], 1)
                for p in points
                if p["conns"]
            }
            if idle
            else {}
        )
        k = slope(points)
        tools[name] = {
            "note": rounds[0][name]["note"],
            "points": points,
            "idle_mib": idle["rss_mib"] if idle else None,
            "idle_mib_by_process": idle["rss_mib_by_process"] if idle else None,
            "per_conn_kib_slope": round(k, 1) if k is not None else None,
            "per_conn_kib_at": per_conn,
            "failed": next((r[name]["failed"] for r in rounds if r[name]["failed"]), None),
        }
    return tools


# -- --hold ----------------------------------------------------------------------------------------


def log_tail(paths: list[Path], lines: int = 5) -> list[str]:
    out = []
    for path in paths:
        with contextlib.suppress(OSError):
            out += [f"{path.stem}: {line}" for line in path.read_text().splitlines()[-lines:]]
    return out


def answer_check(held: list[socket.socket], timeout: float = 60) -> dict[str, Any]:
    """A byte sent on every held connection, then every echo awaited at once (until ``timeout``)."""
    failed: dict[str, int] = {}
    waiting: set[socket.socket] = set()
    for sock in held:
        try:
            sock.sendall(b"y")
            waiting.add(sock)
        except OSError as exc:
            failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
    answered, deadline = 0, time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for sock in waiting:
            sel.register(sock, selectors.EVENT_READ)
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                sel.unregister(sock)
                waiting.discard(sock)
                try:
                    ok = sock.recv(1) == b"y"
                except OSError as exc:
                    failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
                    continue
                if ok:
                    answered += 1
                else:
                    failed["closed"] = failed.get("closed", 0) + 1
    if waiting:
        failed["no answer in time"] = len(waiting)
    return {"answered": answered, "not_answered": failed}


def hold(count: int) -> dict[str, Any]:
    """``count`` idle connections through a fresh pierce-tls tunnel; at the end each must still answer."""
    # Per connection: the benchmark holds 1 socket, the echo 1, the server 2 (visitor, work connection),
    # the client 2 (work connection, service).
    nofile = 2 * count + 4096
    raise_fd_limit(count + 1024)
    own_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="pierce-bench-hold-"))
    held: list[socket.socket] = []
    result: dict[str, Any] = {"target": count, "nofile": nofile}
    try:
        echo = start_echo(procs, HOST, nofile=nofile)
        tunnel = Tunnel(
            procs, workdir, "hold", site=LOOPBACK, encrypt=True, targets={"echo": echo}, nofile=nofile
        )
        limits = {
            role: int(Path(f"/proc/{pids[0]}/limits").read_text().split("Max open files")[1].split()[0])
            for role, pids in tunnel.roles().items()
        }
        result["nofile_in_effect"] = {"benchmark": own_limit, **limits}
        if min(limits.values()) < 2 * count + 64:
            result["fd_limit_note"] = (
                f"RLIMIT_NOFILE of the pierce processes is {min(limits.values()):,} (asked {nofile:,}; "
                f"the hard limit here could not be raised), below the 2 per connection each holds for "
                f"{count:,}"
            )
        port = tunnel.public["echo"]
        hold_connections(port, 1)[0].close()
        result["idle_mib"] = round(settled(tunnel.rss_mib), 1)
        start, failure = time.monotonic(), None
        while len(held) < count and failure is None:
            try:
                held += hold_connections(port, min(HOLD_CHUNK, count - len(held)), keep_on_error=True)
            except HoldFailed as exc:
                held += exc.held
                failure = f"{exc.cause.__class__.__name__}: {exc.cause} at connection {len(held) + 1:,}"
            print(f"hold: {len(held)} connections, {tunnel.rss_mib():.1f} MiB", file=sys.stderr)
        result["open_seconds"] = round(time.monotonic() - start, 1)
        result["opened"] = len(held)
        result["open_failure"] = failure
        alive = {"server": tunnel.server.poll() is None, "client": tunnel.client.poll() is None}
        result["processes_alive"] = alive
        if all(alive.values()):
            result["loaded_mib"] = round(settled(tunnel.rss_mib), 1)
            result["loaded_mib_by_process"] = {
                role: round(vm_rss_kib(pids[0]) / 1024, 1) for role, pids in tunnel.roles().items()
            }
            result["fds"] = tunnel.fds()
            if held:
                result["per_conn_kib"] = round(
                    (result["loaded_mib"] - result["idle_mib"]) * 1024 / len(held), 1
                )
        result.update(answer_check(held))
        result["all_answered"] = result["answered"] == count
        if not result["all_answered"]:
            result["log_tail"] = log_tail(tunnel.logs)
        return result
    finally:
        with signals_held():
            for sock in held:
                sock.close()
            procs.close()
            shutil.rmtree(workdir, ignore_errors=True)


# -- the report ------------------------------------------------------------------------------------


def ratios_of(tools: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for mine in PIERCE:
        for peer in PEERS:
            if mine not in tools or peer not in tools:
                continue
            a, b = tools[mine], tools[peer]
            key = f"{mine.replace('-', '_')}_vs_{peer.replace('-', '_').lower()}"
            out[f"idle_rss_{key}"] = round(a["idle_mib"] / b["idle_mib"], 2) if a["idle_mib"] else None
            ka, kb = a["per_conn_kib_slope"], b["per_conn_kib_slope"]
            out[f"per_conn_{key}"] = round(ka / kb, 2) if ka is not None and kb else None
    return out


def bars_of(tools: dict[str, dict[str, Any]], held: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The issue's bars for pierce-tls; ``met`` is None when this run did not measure the figure."""
    tls = tools.get("pierce-tls", {})
    at = {p["conns"]: p["rss_mib"] for p in tls.get("points", [])}
    k = tls.get("per_conn_kib_slope")
    return {
        "idle_mib_pierce_tls": {
            "bar": f"<= {BAR_IDLE_MIB:g} MiB",
            "value": tls.get("idle_mib"),
            "met": tls["idle_mib"] <= BAR_IDLE_MIB if tls.get("idle_mib") is not None else None,
        },
        "loaded_mib_pierce_tls_1000": {
            "bar": f"<= {BAR_LOADED[1]:g} MiB with {BAR_LOADED[0]:,} connections",
            "value": at.get(BAR_LOADED[0]),
            "met": at[BAR_LOADED[0]] <= BAR_LOADED[1] if BAR_LOADED[0] in at else None,
        },
        "per_conn_kib_pierce_tls": {
            "bar": f"<= {BAR_PER_CONN_KIB:g} KiB per additional connection",
            "value": k,
            "met": k <= BAR_PER_CONN_KIB if k is not None else None,
        },
        "hold_10000": {
            "bar": f"{BAR_HOLD:,} idle connections held, every one answering",
            "value": held["answered"] if held else None,
            "met": (held["all_answered"] if held["target"] >= BAR_HOLD else None) if held else None,
        },
    }


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[met]


def print_report(res: dict[str, Any]) -> None:
    counts, tools = res["counts"], res["tools"]
    print(
        f"\nloopback ({res['cpus']} CPUs), {res['rounds']} round(s): VmRSS summed over each tool's "
        "processes, MiB, with N idle connections held through it (fds: at the largest N)"
    )
    head = f"{'tool':<13}" + "".join(f"{'N=' + str(n):>9}" for n in counts)
    print(head + f" {'KiB/conn':>9} {'fds':>6}")
    for name, t in tools.items():
        at = {p["conns"]: p for p in t["points"]}
        row = "".join(f"{at[n]['rss_mib']:>9.1f}" if n in at else f"{'-':>9}" for n in counts)
        k = t["per_conn_kib_slope"]
        fds = t["points"][-1]["fds"] if t["points"] else 0
        print(f"{name:<13}{row} {k if k is not None else '-':>9} {fds:>6}")
    print("\nidle, per process (MiB):")
    for name, t in tools.items():
        parts = ", ".join(f"{r} {v:.1f}" for r, v in (t["idle_mib_by_process"] or {}).items())
        print(f"  {name:<13} {parts}   ({t['note']})")
        if t["failed"]:
            print(f"  {'':<13} FAILED: {t['failed']}")
    print()
    for key, value in res["ratios"].items():
        print(f"{key:<40} = {value:.2f}x" if value is not None else f"{key:<40} = -")
    held = res.get("hold")
    if held:
        print(
            f"\nhold: {held['opened']:,} of {held['target']:,} connections opened through pierce-tls in "
            f"{held['open_seconds']} s (RLIMIT_NOFILE {held['nofile_in_effect']})"
        )
        if held["open_failure"]:
            print(f"  opening stopped: {held['open_failure']}")
        if "loaded_mib" in held:
            by = ", ".join(f"{r} {v:.1f}" for r, v in held["loaded_mib_by_process"].items())
            print(
                f"  RSS idle {held['idle_mib']:.1f} MiB, held {held['loaded_mib']:.1f} MiB ({by}), "
                f"{held.get('per_conn_kib', '-')} KiB/conn, {held['fds']:,} fds"
            )
        print(f"  processes alive: {held['processes_alive']}")
        print(
            f"  answered at the end: {held['answered']:,} of {held['target']:,} "
            f"(of {held['opened']:,} held; not answering: {held['not_answered'] or 'none'})"
        )
        if held.get("fd_limit_note"):
            print(f"  {held['fd_limit_note']}")
        for line in held.get("log_tail", []):
            print(f"    {line}")
    print()
    for key, bar in res["bars"].items():
        value = bar["value"]
        print(
            f"{key:<28} {value if value is not None else '-':>8}   (bar {bar['bar']}: {verdict(bar['met'])})"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="0,250,500,1000,2000", help="idle connections held, comma-separated")
    ap.add_argument("--rounds", type=int, default=1, help="sweeps, each with fresh processes (medians)")
    ap.add_argument("--hold", type=int, default=0, help="then hold this many through pierce-tls (0: skip)")
    ap.add_argument("--tools", default=",".join(PIERCE + PEERS), help="which tools, comma-separated")
    ap.add_argument(
        "--step-budget",
        type=float,
        default=120,
        help="seconds a tool may take to reach the next count; slower, it is left out of larger counts",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--quick", action="store_true", help="a smoke run: counts 0,250,500,1000")
    args = ap.parse_args()
    counts = sorted({0, *(int(c) for c in args.counts.split(",") if c)})
    if args.quick:
        counts = [0, 250, 500, 1000]
    if missing := missing_tools("ss", "ssh", "ssh-keygen", SSHD, "openssl"):
        print(f"bench: {missing} is not installed", file=sys.stderr)
        return 2
    names = [n for n in args.tools.split(",") if n]
    if unknown := set(names) - set(PIERCE + PEERS):
        ap.error(f"unknown tools: {', '.join(sorted(unknown))}")
    skipped = {
        n: f"{n} is not installed" for n in names if n in ("pagekite", "stunnel") and not shutil.which(n)
    }
    names = [n for n in names if n not in skipped]
    raise_fd_limit(len(names) * max(counts) + 1024)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        rounds = [sweep(names, counts, r, args.step_budget) for r in range(args.rounds)]
        held = hold(args.hold) if args.hold else None
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    tools = merge_rounds(rounds, counts)
    res = {
        "path": "loopback",
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "counts": counts,
        "tools": tools,
        "skipped": skipped,
        "ratios": ratios_of(tools),
        **({"hold": held} if held else {}),
        "bars": bars_of(tools, held),
    }
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_report(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
