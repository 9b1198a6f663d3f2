#!/usr/bin/env python3
"""Soak: a real `pierce server` and `pierce client` on loopback under slow, steady churn for N minutes,
their memory and file descriptors sampled throughout; fails when either keeps growing.

What runs: a local service (one process: a TCP echo that honours half-close, a UDP echo and an HTTP/1.1
echo that answers each POST with its body), a server with an http vhost port, and a client with four
proxies to it: ``tcp``, ``udp``, ``http`` (by Host on the vhost port; its requests recorded by the
inspector, as when ``admin_port`` is set) and ``stcp`` (a secret proxy), plus an stcp visitor of that
secret proxy in the same client (``[[visitors]]``), and its admin API.

What happens, for ``--minutes`` N:
- transfers at ``--rate`` per second (default 4, at most ``--concurrency`` at once): through the tcp
  proxy and the stcp visitor (1 KiB to 256 KiB; half of them send everything, half-close and read to EOF,
  the others read the echo while sending and close), through the vhost (one connection, 1 to 3 POSTs
  kept alive, bodies up to 64 KiB) and through the udp proxy (4 datagrams from one of 4 visitor sockets,
  retried up to 3 times each if lost). Every byte that comes back is checked: SHA-256 of what was sent
  against SHA-256 of what came back; a mismatch, an error or a transfer taking over 30 s is a failure;
- every ``--reload-every`` seconds the client's config is reloaded, adding then removing a tcp proxy
  (``extra``), by ``POST /api/reload`` and by SIGHUP in turn (admin add, SIGHUP remove, SIGHUP add, admin
  remove, ...). An added proxy must carry a verified transfer; a removed one's port must close;
- every ``--restart-every`` seconds the local service is stopped (in-flight transfers first drained) and
  started again on its ports; while it is down a visitor through the tcp proxy must be closed by
  pierce, not left hanging;
- every ``--interval`` seconds, transfers are drained (none in flight) and VmRSS (``/proc/PID/status``)
  and the open fds (``/proc/PID/fd``) of the server and the client are sampled, the RSS also split into
  the heap, anonymous maps and files (``/proc/PID/smaps``: growth in the heap that tracemalloc does not
  see is the allocator keeping freed memory).

Warm-up: the first ``--warmup`` fraction of the run (default 0.2), and at least until every action has
run once (each transfer kind, the inspector's ring filled, all four reload variants, a service restart):
allocator arenas, caches and lazily imported modules settle there. The measured window is what follows.

Slopes: least squares over the measured window's samples, KiB/min and fds/min per process.

The growth criterion, per process and per measure (RSS, fds), on the measured window split in quarters:
- rise: median of the last quarter minus median of the second quarter (medians: a sample caught during a
  brief peak does not move them);
- trend: the Theil-Sen slope (the median of the slopes between every pair of samples, robust to steps and
  outliers) over the window's second half, times that half's duration: what it still grew at the end;
- noise: the sample-to-sample scatter, 1.4826 x the median absolute deviation of successive differences
  divided by sqrt(2) (a robust standard deviation, blind to a slow trend);
- allowance: the larger of 4 x noise and a floor (RSS: 1 MiB or 2 % of the window's median RSS,
  whichever is larger; fds: 2 — fds are sampled when nothing is in flight, so they are exact);
- growing: rise > allowance AND trend > allowance / 2. One must see both: a level that is higher at the
  end and a slope that has not flattened. A step that stops (an arena added once) fails the second; a
  trend within noise the first.
Memory gets a verdict only from a measured window of 4 minutes or more (``--minutes 5`` with the default
warm-up): before that a process's RSS is still settling, and the server hands freed memory back to the
system after every 32 logins (a swing of 1-3 MiB), which a short window cannot tell from growth.
Shorter runs report the figures with ``"growing": null``; fds, exact counts, get a verdict in any run.

Exit status 0 when nothing is found growing and every transfer verified; 1 otherwise (with the
reasons); 2 when a tool is missing or the processes cannot start; 130 on Ctrl-C. Every process started
is stopped at the end, on errors, Ctrl-C and SIGTERM too.

``--tracemalloc DIR`` runs both roles with tracemalloc, a snapshot a minute, and prints what grew most
after the warm-up (a diagnosis: tracing itself costs memory and time, so its figures are not the soak's).

``--png FILE`` plots RSS and fds of both processes over time (needs matplotlib, the ``bench`` extra:
``pip install -e '.[bench]'``; without it the plot is skipped with a message).

Usage: ``python3 bench/soak.py --minutes 30 [--png docs/bench/soak.png] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    MAKE_CERTIFICATE,
    TOKEN,
    Procs,
    exit_on_sigterm,
    fd_count,
    free_port,
    missing_tools,
    signals_held,
    toml,
    vm_rss_kib,
    wait_listening,
)

VHOST = "soak.pierce.test"
SECRET = "soak-secret-Vb7Qm2Xc9Lr4"
ADMIN_USER = "soak"
ADMIN_PASSWORD = "soak-admin-Hd8Kp3Wz6Nt1Qy5"
#: The inspector's ring per http proxy; the warm-up sends more requests than this.
INSPECTOR_REQUESTS = 20
TRANSFER_TIMEOUT = 30.0
UDP_SOCKETS = 4
UDP_TRIES = 3
#: The shortest measured window (after the warm-up) that gets a memory verdict: a process's RSS still
#: settles in its first minutes, and the server's hands freed memory back after every 32 logins, a
#: swing of a megabyte or two; a shorter window cannot tell either from growth (fds are exact counts and
#: get a verdict in any window).
MEMORY_WINDOW_S = 240.0
#: ``--tracemalloc``: seconds between snapshots, frames kept per allocation.
TRACE_EVERY = 60.0
TRACE_FRAMES = 8
#: What the client's proxies are called; ``extra`` comes and goes with reloads.
EXTRA = "extra"

#: The local service: a TCP echo (half-close honoured), a UDP echo and an HTTP/1.1 echo (a POST's body
#: back, keep-alive) on 127.0.0.1, ports from argv (0: any); prints "TCP UDP HTTP" once listening.
SERVICE = r"""
import asyncio, sys

async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def http(reader, writer):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value == b"close":
                    close = True
            body = await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + b"Content-Length: %d\r\n" % len(body)
                + (b"Connection: close\r\n" if close else b"")
                + b"\r\n" + body
            )
            await writer.drain()
            if close:
                return
    except ConnectionError:
        pass
    finally:
        writer.close()

class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)

async def main():
    host, tcp, udp, web = sys.argv[1], *map(int, sys.argv[2:5])
    tcp_server = await asyncio.start_server(echo, host, tcp)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=(host, udp))
    web_server = await asyncio.start_server(http, host, web)
    ports = (
        tcp_server.sockets[0].getsockname()[1],
        transport.get_extra_info("sockname")[1],
        web_server.sockets[0].getsockname()[1],
    )
    print(*ports, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


#: ``--tracemalloc DIR``: runs a pierce role (argv[4:]) with tracemalloc on (argv[3] frames), writing a
#: snapshot to ``DIR/NNNN.snap`` (argv[1]) every argv[2] seconds, for finding what grows.
TRACED = r"""
import sys, threading, time, tracemalloc
from pathlib import Path
out, every = Path(sys.argv[1]), float(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
tracemalloc.start(int(sys.argv[3]))

def dump():
    for n in range(100000):
        time.sleep(every)
        tracemalloc.take_snapshot().dump(str(out / f"{n:04d}.snap"))

threading.Thread(target=dump, daemon=True).start()
from pierce.cli import main
raise SystemExit(main(sys.argv[4:]))
"""


class TransferFailed(Exception):
    """A transfer whose bytes did not come back intact, or that failed."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def log_uniform(lo: int, hi: int) -> int:
    """A size between ``lo`` and ``hi``, uniform in its logarithm: as many small as large transfers."""
    return int(math.exp(random.uniform(math.log(lo), math.log(hi))))


def udp_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- transfers -------------------------------------------------------------------------------------


async def tcp_transfer(port: int, size: int, half_close: bool) -> None:
    """``size`` random bytes through ``port`` to the echo and back, compared by SHA-256. ``half_close``:
    everything sent, then the write side shut and the echo read to EOF; else read while sending, then
    closed."""
    data = os.urandom(size)
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        if half_close:
            writer.write(data)
            await writer.drain()
            writer.write_eof()
            got = await reader.read(-1)
        else:

            async def send() -> None:
                writer.write(data)
                await writer.drain()

            sending = asyncio.create_task(send())
            try:
                got = await reader.readexactly(size)
            except asyncio.IncompleteReadError as exc:
                got = exc.partial
            await sending
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if digest(got) != digest(data):
        raise TransferFailed(f"{len(got)} of {size} bytes back, SHA-256 differs")


async def http_transfer(port: int, bodies: list[bytes]) -> None:
    """One connection to the vhost port, a POST per body (kept alive, the last one ``Connection:
    close``); each response's body must be the request's (SHA-256)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for i, body in enumerate(bodies):
            last = i == len(bodies) - 1
            writer.write(
                f"POST /soak/{i} HTTP/1.1\r\nHost: {VHOST}\r\nContent-Length: {len(body)}\r\n"
                f"{'Connection: close' if last else 'Connection: keep-alive'}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")[1:]
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if b" 200 " not in status + b" " or length is None:
                raise TransferFailed(f"request {i + 1}: {status.decode(errors='replace')} (length {length})")
            got = await reader.readexactly(length)
            if digest(got) != digest(body):
                raise TransferFailed(f"request {i + 1}: {len(got)} of {len(body)} bytes, SHA-256 differs")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class UdpVisitors:
    """A few visitor sockets, reused: the client keeps a local socket per visitor address until its idle
    timeout, so fresh addresses would show as descriptors that come and go."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.free: asyncio.Queue[socket.socket] = asyncio.Queue()
        self.all: list[socket.socket] = []
        for _ in range(UDP_SOCKETS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((HOST, port))
            self.all.append(sock)
            self.free.put_nowait(sock)
        self.retried = 0

    async def exchange(self, count: int) -> None:
        """``count`` datagrams, each answered with its own bytes (SHA-256; a lost one is sent again, up
        to `UDP_TRIES` times)."""
        sock = await self.free.get()
        loop = asyncio.get_running_loop()
        try:
            for _ in range(count):
                data = os.urandom(8) + os.urandom(random.randint(16, 1400))
                for _ in range(UDP_TRIES):
                    await loop.sock_sendall(sock, data)
                    try:
                        got = await asyncio.wait_for(self._reply(sock, data[:8]), 2)
                    except TimeoutError:
                        self.retried += 1
                        continue
                    if digest(got) != digest(data):
                        raise TransferFailed(f"datagram of {len(data)} bytes came back altered")
                    break
                else:
                    raise TransferFailed(f"datagram unanswered after {UDP_TRIES} tries")
        finally:
            self.free.put_nowait(sock)

    @staticmethod
    async def _reply(sock: socket.socket, tag: bytes) -> bytes:
        """The next datagram tagged ``tag`` (a late answer to a retried one is skipped)."""
        loop = asyncio.get_running_loop()
        while True:
            got = await loop.sock_recv(sock, 65536)
            if got[:8] == tag:
                return got

    def close(self) -> None:
        for sock in self.all:
            sock.close()


# -- the processes ---------------------------------------------------------------------------------


@dataclass
class Ports:
    control: int = field(default_factory=free_port)
    vhost: int = field(default_factory=free_port)
    tcp: int = field(default_factory=free_port)
    udp: int = field(default_factory=udp_free_port)
    extra: int = field(default_factory=free_port)
    visitor: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    #: The local service's, known once it has started.
    service: tuple[int, int, int] = (0, 0, 0)


class Service:
    """The local service, restartable on the same ports."""

    def __init__(self, procs: Procs, ports: Ports) -> None:
        self.procs = procs
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-c", SERVICE, HOST, *map(str, self.ports.service)]
        self.proc = self.procs.start(argv, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the local service did not start")
        tcp, udp, web = map(int, line.split())
        self.ports.service = (tcp, udp, web)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)
        self.procs.procs.remove(self.proc)
        self.proc = None


def server_doc(ports: Ports) -> dict[str, Any]:
    return {
        "bind_addr": HOST,
        "bind_port": ports.control,
        "proxy_bind_addr": HOST,
        "token": TOKEN,
        "vhost_http_port": ports.vhost,
    }


def client_doc(ports: Ports, *, extra: bool) -> dict[str, Any]:
    tcp, udp, web = ports.service
    proxies: list[dict[str, Any]] = [
        {"name": "tcp", "type": "tcp", "local_ip": HOST, "local_port": tcp, "remote_port": ports.tcp},
        {"name": "udp", "type": "udp", "local_ip": HOST, "local_port": udp, "remote_port": ports.udp},
        {"name": "web", "type": "http", "local_ip": HOST, "local_port": web, "custom_domains": [VHOST]},
        {"name": "secret", "type": "stcp", "local_ip": HOST, "local_port": tcp, "secret_key": SECRET},
    ]
    if extra:
        proxies.append(
            {"name": EXTRA, "type": "tcp", "local_ip": HOST, "local_port": tcp, "remote_port": ports.extra}
        )
    return {
        "server_addr": HOST,
        "server_port": ports.control,
        "token": TOKEN,
        "client_id": "soak",
        "admin_port": ports.admin,
        "admin_user": ADMIN_USER,
        "admin_password": ADMIN_PASSWORD,
        "inspector": {"requests": INSPECTOR_REQUESTS},
        "proxies": proxies,
        "visitors": [
            {
                "type": "stcp",
                "name": "to-secret",
                "server_name": "secret",
                "secret_key": SECRET,
                "bind_addr": HOST,
                "bind_port": ports.visitor,
            }
        ],
    }


class Pierce:
    """The server and the client, their config files and logs."""

    def __init__(self, procs: Procs, workdir: Path, ports: Ports, traced: Path | None = None) -> None:
        self.ports = ports
        self.traced = traced
        self.workdir = workdir
        self.env = {**os.environ, "PIERCE_STATE_DIR": str(workdir / "state")}
        self.logs = {"server": workdir / "server.log", "client": workdir / "client.log"}
        server_conf = workdir / "server.toml"
        server_conf.write_text(toml(server_doc(ports)))
        self.client_conf = workdir / "client.toml"
        self.write_client(extra=False)
        subprocess.run(
            [sys.executable, "-c", MAKE_CERTIFICATE, str(workdir / "state" / "server")],
            env=self.env,
            check=True,
        )
        self.server = self._start(procs, "server", server_conf)
        wait_listening(ports.control)
        self.client = self._start(procs, "client", self.client_conf)

    def _start(self, procs: Procs, role: str, conf: Path) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "pierce", "--log-level", "warning", role, "-c", str(conf)]
        if self.traced is not None:
            argv[1:3] = ["-c", TRACED, str(self.traced / role), str(TRACE_EVERY), str(TRACE_FRAMES)]
        with self.logs[role].open("wb") as out:
            return procs.start(argv, env=self.env, stdout=out, stderr=out)

    def write_client(self, *, extra: bool) -> None:
        self.client_conf.write_text(toml(client_doc(self.ports, extra=extra)))

    def pids(self) -> dict[str, int]:
        return {"server": self.server.pid, "client": self.client.pid}

    def alive(self) -> dict[str, bool]:
        return {"server": self.server.poll() is None, "client": self.client.poll() is None}

    def admin(self, method: str, action: str) -> dict[str, Any]:
        """One call of the client's admin API (blocking: run it in a thread)."""
        auth = base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
        req = urllib.request.Request(
            f"http://{HOST}:{self.ports.admin}/api/{action}",
            method=method,
            headers={"Authorization": f"Basic {auth}"},
        )
        with urllib.request.urlopen(req, timeout=15) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc

    def log_summary(self) -> dict[str, Any]:
        """Per role, lines logged by level (the roles log at ``warning`` and above), and the first
        lines above a warning (an error, a traceback)."""
        out: dict[str, Any] = {}
        for role, path in self.logs.items():
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            levels = Counter(
                line.split()[2] for line in lines if len(line.split()) > 2 and line.split()[2].isupper()
            )
            worse = [line for line in lines if " WARNING " not in line][:10]
            tracebacks = sum(line.startswith("Traceback") for line in lines)
            out[role] = {"by_level": dict(levels), "not_warnings": worse, "tracebacks": tracebacks}
        return out

    def log_tail(self, lines: int = 8) -> list[str]:
        out = []
        for role, path in self.logs.items():
            with contextlib.suppress(OSError):
                out += [f"{role}: {line}" for line in path.read_text().splitlines()[-lines:]]
        return out


def memory_by_kind(pid: int) -> dict[str, int]:
    """Resident KiB of ``pid`` by kind of mapping (``/proc/PID/smaps``): ``heap`` (the brk heap, glibc's
    main arena), ``anon`` (anonymous maps: pymalloc's arenas, other threads' malloc arenas, large
    blocks) and ``files`` (code and data of the interpreter and libraries). A growth in ``anon`` or
    ``heap`` that tracemalloc does not see is the allocator keeping freed memory."""
    kinds = {"heap": 0, "anon": 0, "files": 0}
    kind = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=6)
        if "-" in first[0] and len(first) >= 5 and ":" in first[3]:  # a mapping's header line
            name = first[5] if len(first) > 5 else ""
            kind = "heap" if name == "[heap]" else "anon" if not name or name.startswith("[") else "files"
        elif first[0] == "Rss:":
            kinds[kind] += int(first[1])
    return kinds


async def listening(port: int) -> bool:
    out = await asyncio.create_subprocess_exec(
        "ss", "-Hltn", f"sport = :{port}", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    stdout, _ = await out.communicate()
    return bool(stdout.strip())


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    """Poll ``check`` until it holds; `TransferFailed` naming ``what`` at ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TransferFailed(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.1)


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Settings:
    minutes: float
    rate: float
    concurrency: int
    interval: float
    reload_every: float
    restart_every: float
    warmup: float
    seed: int


class Soak:
    """The churn, the actions and the samples of one run."""

    def __init__(self, settings: Settings, pierce: Pierce, service: Service) -> None:
        self.s = settings
        self.pierce = pierce
        self.service = service
        self.ports = pierce.ports
        self.udp = UdpVisitors(self.ports.udp)
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failures: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.reloads: Counter[str] = Counter()
        self.restarts = 0
        self.outage_probes = 0
        self.in_flight: set[asyncio.Task[bool]] = set()
        self.open = asyncio.Event()
        self.open.set()
        self.extra = False
        self.reload_count = 0
        self.t0 = time.monotonic()
        self.warmup_end = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def fail(self, kind: str, why: str) -> None:
        self.failed[kind] += 1
        line = f"{self.now():7.1f} s {kind}: {why}"
        if len(self.failures) < 50:
            self.failures.append(line)
        print(f"soak: FAILED {line}", file=sys.stderr)

    async def checked(self, kind: str, attempt: Awaitable[None]) -> bool:
        try:
            await asyncio.wait_for(attempt, TRANSFER_TIMEOUT)
        except TransferFailed as exc:
            self.fail(kind, str(exc))
            return False
        except TimeoutError:
            self.fail(kind, f"no end within {TRANSFER_TIMEOUT:.0f} s")
            return False
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.fail(kind, f"{type(exc).__name__}: {exc}")
            return False
        self.ok[kind] += 1
        return True

    # transfers

    async def carries(self, kind: str) -> bool:
        """Whether one transfer of ``kind`` goes through (before the run: is everything up yet?)."""
        try:
            await asyncio.wait_for(self.transfer(kind), 10)
        except (
            OSError,
            TransferFailed,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            return False
        return True

    def transfer(self, kind: str) -> Awaitable[None]:
        if kind == "tcp":
            return tcp_transfer(self.ports.tcp, log_uniform(1024, 256 * 1024), random.random() < 0.5)
        if kind == "stcp":
            return tcp_transfer(self.ports.visitor, log_uniform(1024, 256 * 1024), random.random() < 0.5)
        if kind == "http":
            bodies = [os.urandom(log_uniform(1, 64 * 1024)) for _ in range(random.randint(1, 3))]
            return http_transfer(self.ports.vhost, bodies)
        if kind == "udp":
            return self.udp.exchange(4)
        raise AssertionError(kind)

    async def launcher(self) -> None:
        """Transfers at ``rate`` per second, at most ``concurrency`` at once, while the gate is open."""
        kinds, weights = ["tcp", "stcp", "http", "udp"], [0.35, 0.2, 0.25, 0.2]
        gap = 1 / self.s.rate
        while True:
            await self.open.wait()
            if len(self.in_flight) < self.s.concurrency:
                kind = random.choices(kinds, weights)[0]
                task = asyncio.create_task(self.checked(kind, self.transfer(kind)))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
            await asyncio.sleep(random.expovariate(1 / gap))

    async def drained(self) -> None:
        """The gate closed and no transfer in flight."""
        self.open.clear()
        if self.in_flight:
            await asyncio.wait(set(self.in_flight))

    # actions

    async def reload(self) -> None:
        """Add or remove ``extra``, by the admin API or SIGHUP (in the order admin add, SIGHUP remove,
        SIGHUP add, admin remove); check the change took effect."""
        i = self.reload_count
        self.reload_count += 1
        how = "admin" if i % 4 in (0, 3) else "sighup"
        add = not self.extra
        kind = f"reload_{'add' if add else 'remove'}_{how}"
        self.pierce.write_client(extra=add)
        try:
            if how == "admin":
                answer = await asyncio.to_thread(self.pierce.admin, "POST", "reload")
                want = "added" if add else "removed"
                if answer.get(want) != [EXTRA]:
                    raise TransferFailed(f"reload answered {answer}")
            else:
                os.kill(self.pierce.client.pid, signal.SIGHUP)
            if add:
                await until(lambda: listening(self.ports.extra), f"{EXTRA}'s port after the reload")
            else:
                await until(
                    lambda: _not(listening(self.ports.extra)), f"{EXTRA}'s port closed after the reload"
                )
        except (TransferFailed, OSError) as exc:
            self.fail(kind, str(exc))
            return
        finally:
            self.extra = add
        self.reloads[kind] += 1
        self.events.append({"t": round(self.now(), 2), "event": kind})
        if add:
            size = log_uniform(1024, 256 * 1024)
            await self.checked("tcp_extra", tcp_transfer(self.ports.extra, size, random.random() < 0.5))

    async def restart_service(self) -> None:
        """Drained, the local service stopped; a visitor then must be closed by pierce; started again."""
        await self.drained()
        try:
            await asyncio.to_thread(self.service.stop)
            await self.checked("outage_probe", outage_probe(self.ports.tcp))
            self.outage_probes += 1
            await asyncio.to_thread(self.service.start)
        finally:
            self.open.set()
        self.restarts += 1
        self.events.append({"t": round(self.now(), 2), "event": "service_restart"})

    async def sample(self) -> None:
        """Drained, fds settled (a closed connection's descriptors go a moment after its visitor saw the
        end), then VmRSS and fds of both processes."""
        await self.drained()
        try:
            pids = self.pierce.pids()
            fds = {role: fd_count(pid) for role, pid in pids.items()}
            for _ in range(20):
                await asyncio.sleep(0.1)
                again = {role: fd_count(pid) for role, pid in pids.items()}
                if again == fds:
                    break
                fds = again
            point: dict[str, Any] = {"t": round(self.now(), 2)}
            for role, pid in pids.items():
                point[role] = {"rss_kib": vm_rss_kib(pid), "fds": fds[role], **memory_by_kind(pid)}
            self.samples.append(point)
        finally:
            self.open.set()

    async def warm_up(self) -> None:
        """Every action once: each transfer kind, the inspector's ring filled, the four reloads, a
        service restart."""
        for kind in ("tcp", "stcp", "http", "udp"):
            await self.checked(kind, self.transfer(kind))
        for _ in range(INSPECTOR_REQUESTS + 5):
            await self.checked("http", self.transfer("http"))
        for _ in range(4):
            await self.reload()
        await self.restart_service()
        for kind in ("tcp", "stcp", "http", "udp"):
            await self.checked(kind, self.transfer(kind))

    async def run(self) -> None:
        total = self.s.minutes * 60
        self.t0 = time.monotonic()
        await self.sample()
        await self.warm_up()
        self.warmup_end = max(self.now(), self.s.warmup * total)
        launcher = asyncio.create_task(self.launcher())
        next_sample = self.now() + self.s.interval
        next_reload = self.now() + self.s.reload_every
        next_restart = self.now() + self.s.restart_every
        try:
            while self.now() < total:
                await asyncio.sleep(max(0.0, min(next_sample, next_reload, next_restart, total) - self.now()))
                if not all(self.pierce.alive().values()):
                    raise RuntimeError(f"a pierce process exited: {self.pierce.alive()}")
                t = self.now()
                if t >= next_restart:
                    await self.restart_service()
                    next_restart += self.s.restart_every
                if t >= next_reload:
                    await self.reload()
                    next_reload += self.s.reload_every
                if t >= next_sample or t >= total:
                    await self.sample()
                    next_sample += self.s.interval
                    self.progress()
        finally:
            launcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await launcher
            await self.drained()
            self.udp.close()

    def progress(self) -> None:
        last = self.samples[-1]
        print(
            f"soak: {last['t']:7.1f} s  server {last['server']['rss_kib'] / 1024:6.1f} MiB "
            f"{last['server']['fds']:4d} fds  client {last['client']['rss_kib'] / 1024:6.1f} MiB "
            f"{last['client']['fds']:4d} fds  transfers {sum(self.ok.values())} ok, "
            f"{sum(self.failed.values())} failed",
            file=sys.stderr,
        )


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def outage_probe(port: int) -> None:
    """With the local service down, a visitor through the tcp proxy is closed (EOF or reset), no echo.
    The reset may come before this side has seen its connect complete (the server turns the visitor
    away as soon as the client says the service refused): that is closed too."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except ConnectionResetError:
        return
    try:
        writer.write(b"is anyone there?")
        await writer.drain()
        try:
            got = await asyncio.wait_for(reader.read(-1), 15)
        except ConnectionResetError:
            got = b""
        except TimeoutError as exc:
            raise TransferFailed("left open with the local service down") from exc
        if got:
            raise TransferFailed(f"{len(got)} bytes came back with the local service down")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# -- the analysis ----------------------------------------------------------------------------------


def least_squares(ts: list[float], ys: list[float]) -> float:
    """The least-squares slope of ``ys`` against ``ts`` (per unit of ``ts``); 0 with fewer than 2 times."""
    if len(set(ts)) < 2:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / sum((t - mt) ** 2 for t in ts)


def theil_sen(ts: list[float], ys: list[float]) -> float:
    """The median of the slopes between every pair of samples: robust to steps and outliers."""
    slopes = [
        (ys[j] - ys[i]) / (ts[j] - ts[i])
        for i in range(len(ts))
        for j in range(i + 1, len(ts))
        if ts[j] != ts[i]
    ]
    return statistics.median(slopes) if slopes else 0.0


def noise(ys: list[float]) -> float:
    """A robust standard deviation of one sample: 1.4826 x MAD of successive differences / sqrt(2)."""
    diffs = [b - a for a, b in itertools.pairwise(ys)]
    if len(diffs) < 2:
        return 0.0
    m = statistics.median(diffs)
    return 1.4826 * statistics.median(abs(d - m) for d in diffs) / math.sqrt(2)


def growth(ts: list[float], ys: list[float], floor: float, min_span: float = 0.0) -> dict[str, Any]:
    """The module docstring's criterion over the measured window's samples ``(ts, ys)`` (seconds,
    values): ``growing`` and the figures it was decided on (per minute, in the unit of ``ys``).
    ``growing`` is None (with ``why``) below 8 samples, or when the window spans less than ``min_span``
    seconds (the figures are still given)."""
    if len(ts) < 8:
        return {"samples": len(ts), "growing": None, "why": "fewer than 8 samples after warm-up"}
    start, end = ts[0], ts[-1]
    span = end - start

    def within(lo: float, hi: float) -> list[float]:
        return [y for t, y in zip(ts, ys, strict=True) if start + lo * span <= t <= start + hi * span]

    q2, q4 = statistics.median(within(0.25, 0.5)), statistics.median(within(0.75, 1.0))
    half = [(t, y) for t, y in zip(ts, ys, strict=True) if t >= start + span / 2]
    trend_slope = theil_sen([t for t, _ in half], [y for _, y in half])
    trend = trend_slope * (half[-1][0] - half[0][0])
    sigma = noise(ys)
    allowance = max(4 * sigma, floor)
    rise = q4 - q2
    return {
        "samples": len(ts),
        "per_min": round(least_squares(ts, ys) * 60, 2),
        "second_half_per_min": round(trend_slope * 60, 2),
        "q2_median": q2,
        "q4_median": q4,
        "rise": round(rise, 2),
        "trend": round(trend, 2),
        "noise": round(sigma, 2),
        "allowance": round(allowance, 2),
        "growing": rise > allowance and trend > allowance / 2,
    } | (
        {
            "growing": None,
            "why": f"a measured window of {span:.0f} s: too short to tell (at least {min_span:.0f} s)",
        }
        if span < min_span
        else {}
    )


def analyse(samples: list[dict[str, Any]], warmup_end: float) -> dict[str, Any]:
    """Per process: RSS (KiB) and fds growth over the samples taken after ``warmup_end``."""
    measured = [s for s in samples if s["t"] >= warmup_end]
    out: dict[str, Any] = {}
    for role in ("server", "client"):
        ts = [s["t"] for s in measured]
        rss = [float(s[role]["rss_kib"]) for s in measured]
        fds = [float(s[role]["fds"]) for s in measured]
        base = statistics.median(rss) if rss else 0.0
        out[role] = {
            "rss_kib": growth(ts, rss, max(1024.0, 0.02 * base), MEMORY_WINDOW_S),
            "fds": growth(ts, fds, 2.0),
        }
    return out


def plot(result: dict[str, Any], path: Path) -> str | None:
    """RSS and fds of both processes over time, the warm-up shaded, service restarts marked; the reason
    when it cannot be drawn (no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is missing; install the benchmark extra: pip install -e '.[bench]'"
    samples = result["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (ax_rss, ax_fds) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=[2, 1])
    for role, colour in (("server", "tab:blue"), ("client", "tab:orange")):
        slope = result["slopes"][role]
        ax_rss.plot(
            minutes,
            [s[role]["rss_kib"] / 1024 for s in samples],
            color=colour,
            label=f"{role} ({slope['rss_kib_per_min']:+.1f} KiB/min)",
        )
        ax_fds.plot(
            minutes,
            [s[role]["fds"] for s in samples],
            color=colour,
            label=f"{role} ({slope['fds_per_min']:+.2f} fds/min)",
        )
    for ax in (ax_rss, ax_fds):
        ax.axvspan(0, result["warmup_s"] / 60, color="0.9", label="warm-up" if ax is ax_rss else None)
        for e in result["events"]:
            if e["event"] == "service_restart":
                ax.axvline(e["t"] / 60, color="0.75", linewidth=0.6, linestyle=":")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    ax_rss.set_ylabel("VmRSS, MiB")
    ax_rss.set_ylim(bottom=0)
    ax_fds.set_ylabel("open fds")
    ax_fds.set_ylim(0, 1.25 * max(s[role]["fds"] for s in samples for role in ("server", "client")))
    ax_fds.set_xlabel("minutes (dotted: local service restarts)")
    t = result["transfers"]
    ax_rss.set_title(
        f"pierce soak, {result['minutes']:g} min: {t['ok']:,} transfers verified, {t['failed']} failed, "
        f"{sum(result['reloads'].values())} reloads, {result['restarts']} service restarts",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -- main ------------------------------------------------------------------------------------------


def run(settings: Settings, traced: Path | None = None) -> dict[str, Any]:
    random.seed(settings.seed)
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="pierce-soak-"))
    try:
        ports = Ports()
        service = Service(procs, ports)
        service.start()
        pierce = Pierce(procs, workdir, ports, traced)
        soak = Soak(settings, pierce, service)

        async def main() -> None:
            # Up: the proxies registered and the visitor listening, each kind carrying a transfer.
            for kind in ("tcp", "stcp", "http", "udp"):
                await until(functools.partial(soak.carries, kind), f"{kind} through pierce", 30)
            await soak.run()

        try:
            asyncio.run(main())
        except (RuntimeError, TransferFailed) as exc:
            raise SetupFailed(f"{exc}\n" + "\n".join(pierce.log_tail())) from exc
        analysis = analyse(soak.samples, soak.warmup_end)
        failed = sum(soak.failed.values())
        told = [analysis[r]["rss_kib"]["growing"] for r in analysis]
        memory = True if True in told else None if None in told else False
        fds = any(analysis[r]["fds"]["growing"] for r in analysis)
        reasons = [
            *([f"{failed} transfers or checks failed"] if failed else []),
            *(f"{r}: memory keeps growing" for r in analysis if analysis[r]["rss_kib"]["growing"]),
            *(f"{r}: fds keep growing" for r in analysis if analysis[r]["fds"]["growing"]),
        ]
        return {
            "minutes": settings.minutes,
            "interval_s": settings.interval,
            "rate_per_s": settings.rate,
            "reload_every_s": settings.reload_every,
            "restart_every_s": settings.restart_every,
            "warmup_s": round(soak.warmup_end, 1),
            "cpus": os.cpu_count(),
            "transfers": {
                "ok": sum(soak.ok.values()),
                "failed": failed,
                "by_kind": {
                    k: {"ok": soak.ok[k], "failed": soak.failed[k]} for k in sorted(soak.ok | soak.failed)
                },
                "udp_retries": soak.udp.retried,
            },
            "failures": soak.failures,
            "reloads": dict(soak.reloads),
            "restarts": soak.restarts,
            "events": soak.events,
            "samples": soak.samples,
            "slopes": {
                role: {
                    "rss_kib_per_min": analysis[role]["rss_kib"].get("per_min"),
                    "fds_per_min": analysis[role]["fds"].get("per_min"),
                }
                for role in analysis
            },
            "growth": analysis,
            "logs": pierce.log_summary(),
            "verdict": {
                "memory_growing": memory,
                "fds_growing": fds,
                "transfers_failed": failed,
                "pass": not reasons,
                "reasons": reasons,
            },
        }
    finally:
        with signals_held():
            procs.close()
            shutil.rmtree(workdir, ignore_errors=True)


def trace_report(directory: Path, warmup_s: float, top: int = 12) -> list[str]:
    """Per role, what grew most between the first snapshot after the warm-up and the last one, by the
    line that allocated it (and the lines that called it)."""
    import tracemalloc

    lines = []
    for role in ("server", "client"):
        snaps = sorted((directory / role).glob("*.snap"))
        first = next((i for i in range(len(snaps)) if (i + 1) * TRACE_EVERY >= warmup_s), None)
        if first is None or first >= len(snaps) - 1:
            lines.append(f"{role}: too few snapshots ({len(snaps)})")
            continue
        old, new = (tracemalloc.Snapshot.load(str(snaps[i])) for i in (first, -1))
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
        old, new = old.filter_traces(ignore), new.filter_traces(ignore)
        lines.append(
            f"{role}: traced {sum(t.size for t in new.traces) / 1024:.0f} KiB; growth from snapshot "
            f"{first} to {len(snaps) - 1} ({TRACE_EVERY:g} s apart):"
        )
        for stat in new.compare_to(old, "traceback")[:top]:
            lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
            lines += [f"      {frame.filename}:{frame.lineno}" for frame in list(stat.traceback)[-4:]]
    return lines


class SetupFailed(RuntimeError):
    """The processes did not come up, or one exited during the run."""


def print_report(res: dict[str, Any]) -> None:
    t = res["transfers"]
    print(
        f"\nsoak: {res['minutes']:g} min on loopback ({res['cpus']} CPUs), warm-up {res['warmup_s']:.0f} s, "
        f"{len(res['samples'])} samples every {res['interval_s']:g} s"
    )
    kinds = ", ".join(
        f"{k} {v['ok']}" + (f" ({v['failed']} failed)" if v["failed"] else "")
        for k, v in t["by_kind"].items()
    )
    print(
        f"transfers verified: {t['ok']:,}, failed: {t['failed']}  [{kinds}; udp retries {t['udp_retries']}]"
    )
    print(
        f"reloads: {sum(res['reloads'].values())} {res['reloads']}; local service restarts: {res['restarts']}"
    )
    for line in res["failures"][:10]:
        print(f"  {line}")
    for role, logs in res["logs"].items():
        print(f"{role} log: {logs['by_level'] or 'nothing'}")
        for line in logs["not_warnings"]:
            print(f"  {line}")
    print(
        f"\n{'process':<8} {'RSS first':>10} {'RSS last':>10} {'KiB/min':>9} {'fds':>9} {'fds/min':>8}"
        "  growing"
    )
    for role in ("server", "client"):
        g = res["growth"][role]
        first, last = res["samples"][0][role], res["samples"][-1][role]
        print(
            f"{role:<8} {first['rss_kib'] / 1024:>7.1f} MiB {last['rss_kib'] / 1024:>6.1f} MiB "
            f"{g['rss_kib'].get('per_min', 0):>+9.1f} {first['fds']:>4}->{last['fds']:<4} "
            f"{g['fds'].get('per_min', 0):>+8.2f}  rss {g['rss_kib']['growing']}, fds {g['fds']['growing']}"
        )
        for what, unit in (("rss_kib", "KiB"), ("fds", "fds")):
            x = g[what]
            if "rise" in x:
                print(
                    f"         {what:<7} rise {x['rise']:+.1f} {unit} (Q4 - Q2 medians), "
                    f"trend {x['trend']:+.1f} (second half), noise {x['noise']:.1f}, "
                    f"allowance {x['allowance']:.1f}"
                )
            if "why" in x:
                print(f"         {what:<7} no verdict: {x['why']}")
    v = res["verdict"]
    print(f"\nverdict: {'PASS' if v['pass'] else 'FAIL: ' + '; '.join(v['reasons'])}")
    if v["memory_growing"] is None:
        print("(memory: no verdict from a run this short)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10, help="how long (default 10)")
    ap.add_argument("--rate", type=float, default=4, help="transfers started per second (default 4)")
    ap.add_argument("--concurrency", type=int, default=4, help="transfers in flight at most (default 4)")
    ap.add_argument("--interval", type=float, help="seconds between samples (default: 5, or run/30 if less)")
    ap.add_argument("--reload-every", type=float, help="seconds between reloads (default: run/12, 5 to 30)")
    ap.add_argument(
        "--restart-every",
        type=float,
        help="seconds between local service restarts (default: run/4, 15 to 120)",
    )
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the run left out of the verdict")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the sizes and kinds (default 0)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--png", type=Path, help="write a plot of RSS and fds over time here")
    ap.add_argument(
        "--tracemalloc",
        type=Path,
        metavar="DIR",
        help=f"run both roles with tracemalloc, a snapshot every {TRACE_EVERY:g} s into DIR, and print "
        "what grew most after the warm-up (a diagnosis: tracing changes the figures)",
    )
    args = ap.parse_args()
    if missing := missing_tools("ss"):
        print(f"soak: {missing} is not installed", file=sys.stderr)
        return 2
    total = args.minutes * 60
    settings = Settings(
        minutes=args.minutes,
        rate=args.rate,
        concurrency=args.concurrency,
        interval=args.interval or min(5.0, max(1.0, total / 30)),
        reload_every=args.reload_every or min(30.0, max(5.0, total / 12)),
        restart_every=args.restart_every or min(120.0, max(15.0, total / 4)),
        warmup=args.warmup,
        seed=args.seed,
    )
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        res = run(settings, args.tracemalloc)
    except KeyboardInterrupt:
        print("soak: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except SetupFailed as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    if args.tracemalloc:
        res["tracemalloc"] = trace_report(args.tracemalloc, res["warmup_s"])
        print("\n".join(res["tracemalloc"]), file=sys.stderr)
    if args.png:
        why = plot(res, args.png)
        print(f"soak: no plot: {why}" if why else f"soak: plot written to {args.png}", file=sys.stderr)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_report(res)
    return 0 if res["verdict"]["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
