#!/usr/bin/env python3
"""Load: many visitors at once through a real `pierce server` + `pierce client`, every byte verified, and
a long run of short connections.

Concurrent transfers (``--connections N``, default 1,000, all started at once; ``--size``, default 1 MiB
each way), one path at a time, each with its own processes on loopback:
- ``tcp``: a ``tcp`` proxy (TLS work connections, the default). Each visitor connection sends a 16-byte
  nonce and then SIZE - 16 bytes derived from it, and half-closes; at the same time it reads SIZE bytes
  derived from the nonce that the service sends as soon as the nonce arrives, then 32 bytes: the SHA-256
  the service computed over everything it read, then the service's EOF. Verified: the download's SHA-256
  and length, and that the service's digest is the one of what was sent (both ways, with half-close).
- ``http``: an ``http`` proxy on the server's vhost port (``custom_domains``). Each connection is one
  ``POST`` with a SIZE body (nonce first) and ``Connection: close``; the backend (a small HTTP/1.1
  server) answers 200 with a SIZE body derived from the nonce and ``X-Upload-Sha256`` over the body it
  read. Verified: status, the digest header, the body's SHA-256 and length.
- ``p2p``: an ``xtcp`` proxy reached by ``pierce visit --p2p`` on loopback, once the visitor reports its
  direct paths (a direct TCP connection and QUIC over UDP); the connections take the
  ready direct TCP connections and then QUIC streams, never the server (counted from the visitor's log:
  ``conn_paths``). The same exchange as ``tcp``.
- ``stcp`` (only with ``--paths``): a secret proxy reached by ``pierce visit`` through the server, the
  same exchange; each visitor connection is one more connection to the server's control port.
Each visitor connection comes from its own loopback address (127.1.0.1, 127.1.0.2, ...), as a thousand
visitors would from a thousand addresses: the web ports' per-address cap (``vhost_max_conns_per_ip``,
256 by default) then applies as it would on the internet, and the servers run with their defaults.
Reported per path: the wall time from the first connect to the last verified byte, per-connection
durations (connect to verified; p50/p99/max), failures (zero is the bar; the first reasons are kept;
a connection that stalls past ``--timeout`` is printed with how far it got each way: bytes sent and
whether its EOF went, bytes received and whether the service's EOF came),
the most connections open at the same time, and the payload moved per second (both directions).

Churn (``--churn N``, default 10,000): N short connections to an echo service through a ``tcp`` proxy,
``--churn-concurrency`` at a time (default 1: strictly one after the other): connect, send one byte, read
its echo, close. Time to first byte (connect start to the echoed byte) p50/p90/p99/max, and failures.

``--rounds R`` repeats everything R times (paths and churn in turn) and reports the median of each
figure; counts (connections, verified, failures) are summed. Exit status 1 when any transfer or churn
connection failed.

Usage: ``python3 bench/bench_load.py [--connections 1000] [--size 1MiB] [--churn 10000]
[--churn-concurrency 1] [--paths tcp,http,p2p] [--rounds 1] [--json] [--quick] [--logs DIR]
[--timeout 600] [--sndbuf BYTES]`` (``--quick``: 100 connections of 64 KiB and 500 churn, the CI smoke
run; ``--logs``: keep the pierce processes' logs there; ``--timeout``: seconds before a transfer counts
as stalled; ``--sndbuf``: cap the send buffers of the visitors' and the service's sockets, which over
a slow path otherwise hold each connection's bytes in the kernel). Needs ss. The load generator runs in
this process (uvloop when installed); the service in one more; everything started is stopped on exit,
on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    TOKEN,
    Procs,
    exit_on_sigterm,
    free_port,
    missing_tools,
    nofile_preexec,
    raise_fd_limit,
    signals_held,
    start_echo,
    toml,
    wait_listening,
)

PATHS = ("tcp", "http", "p2p")
#: Paths run only when asked for (``--paths``): ``stcp``, a secret proxy reached by ``pierce visit``
#: through the server (each visitor connection is a new connection to the server's control port).
EXTRA_PATHS = ("stcp",)
DOMAIN = "load.bench.example"
SECRET = "bench-secret-Hx4pQ9sW2mV7"
NONCE = 16
DIGEST = 32
CHUNK = 64 * 1024
#: Seed of the block every payload is cut from (both ends build it).
SEED = 0x10AD
#: Distinct download offsets (their expected digests are cached by the load generator).
OFFSETS = 256
#: Seconds one connection may take before it counts as failed (stalled); ``--timeout``.
CONN_TIMEOUT = 600.0
#: SO_SNDBUF of the load generator's and the service's sockets (``--sndbuf``; 0: the kernel's own).
SNDBUF = 0
#: Reasons kept per path in the report.
REASONS_KEPT = 5


# -- payloads --------------------------------------------------------------------------------------


@functools.cache
def block(size: int) -> bytes:
    """Twice ``size`` seeded bytes: every payload of that size is a slice of it."""
    return random.Random(SEED).randbytes(2 * size)


def download_offset(nonce: bytes, size: int) -> int:
    return (int.from_bytes(nonce[4:8], "big") % OFFSETS) * (size // OFFSETS)


def upload_offset(nonce: bytes, size: int) -> int:
    return int.from_bytes(nonce[:4], "big") % size


@functools.cache
def download_digest(offset: int, size: int) -> bytes:
    return hashlib.sha256(memoryview(block(size))[offset : offset + size]).digest()


def upload(nonce: bytes, size: int) -> memoryview:
    """What a visitor sends after its nonce (SIZE - 16 bytes)."""
    off = upload_offset(nonce, size)
    return memoryview(block(size))[off : off + size - NONCE]


# -- the service (a separate process: ``--serve MODE HOST SIZE``) ----------------------------------


async def serve_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> None:
    """Read a nonce, send SIZE bytes derived from it while hashing everything read, then the digest
    of what was read, then EOF."""
    try:
        nonce = await reader.readexactly(NONCE)
        h = hashlib.sha256(nonce)
        off = download_offset(nonce, size)
        down = memoryview(block(size))[off : off + size]

        async def send() -> None:
            for i in range(0, size, CHUNK):
                writer.write(down[i : i + CHUNK])
                await writer.drain()

        sending = asyncio.create_task(send())
        try:
            while chunk := await reader.read(CHUNK):
                h.update(chunk)
            await sending
        finally:
            sending.cancel()
        writer.write(h.digest())
        writer.write_eof()
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError) as exc:  # the visitor's side says so too
        print(f"service: exchange ended early: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        writer.close()


async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> None:
    """One HTTP/1.1 request with a body (Content-Length): answer 200 with SIZE bytes derived from the
    body's first 16 bytes and ``X-Upload-Sha256`` over the body; then close."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        length = int(match.group(1)) if match else 0
        nonce = await reader.readexactly(NONCE) if length >= NONCE else b"\0" * NONCE
        h = hashlib.sha256(nonce[: min(length, NONCE)])
        left = length - min(length, NONCE)
        while left:
            chunk = await reader.read(min(CHUNK, left))
            if not chunk:
                return
            h.update(chunk)
            left -= len(chunk)
        off = download_offset(nonce, size)
        down = memoryview(block(size))[off : off + size]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {size}\r\nX-Upload-Sha256: {h.hexdigest()}\r\n".encode()
            + b"Connection: close\r\n\r\n"
        )
        for i in range(0, size, CHUNK):
            writer.write(down[i : i + CHUNK])
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        print(f"service: request ended early: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        writer.close()


def serve(mode: str, host: str, size: int) -> None:
    async def main() -> None:
        handler = serve_http if mode == "http" else serve_exchange
        block(size)
        server = await asyncio.start_server(
            functools.partial(_serve_one, handler, size), host, 0, backlog=4096
        )
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    run_loop(main())


async def _serve_one(
    handler: Any, size: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    cap_sndbuf(writer)
    await handler(reader, writer, size)


def cap_sndbuf(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if SNDBUF and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)


def run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# -- the load generator ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the concurrent transfers of one path gave."""

    durations: list[float] = field(default_factory=list)  #: seconds, connect to verified, of the successes
    failures: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    max_open: int = 0


class Gauge:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def up(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def down(self) -> None:
        self.now -= 1


class Progress:
    """How far one connection got each way: said in the reason when it stalls."""

    def __init__(self) -> None:
        self.sent = 0
        self.eof_sent = False
        self.received = 0
        self.eof_received = False

    def __str__(self) -> str:
        sent = f"sent {self.sent}" + (" + EOF" if self.eof_sent else "")
        got = f"received {self.received}" + (" + EOF" if self.eof_received else "")
        return f"{sent}, {got}"


async def read_all(
    reader: asyncio.StreamReader, h: Any, hold: int, progress: Progress | None = None
) -> tuple[int, bytes]:
    """Read to EOF hashing everything but the last ``hold`` bytes; (bytes hashed, the held tail)."""
    tail = b""
    total = 0
    while chunk := await reader.read(CHUNK):
        if progress is not None:
            progress.received += len(chunk)
        data = tail + chunk
        cut = max(0, len(data) - hold)
        h.update(data[:cut])
        total += cut
        tail = data[cut:]
    if progress is not None:
        progress.eof_received = True
    return total, tail


async def send_upload(
    writer: asyncio.StreamWriter, nonce: bytes, size: int, half_close: bool, progress: Progress | None = None
) -> None:
    writer.write(nonce)
    body = upload(nonce, size)
    for i in range(0, len(body), CHUNK):
        writer.write(body[i : i + CHUNK])
        await writer.drain()
        if progress is not None:
            progress.sent = NONCE + i + len(body[i : i + CHUNK])
    if half_close:
        writer.write_eof()
    await writer.drain()
    if progress is not None:
        progress.eof_sent = half_close


def source(i: int) -> str:
    """Visitor ``i``'s own source address on loopback (127.1.0.1, 127.1.0.2, ...): a thousand visitors
    are a thousand addresses, as on the internet, so the web ports' per-address cap
    (``vhost_max_conns_per_ip``, 256 by default) applies to each as it would there."""
    return f"127.1.{i // 250 % 256}.{i % 250 + 1}"


def upload_digest(nonce: bytes, size: int) -> bytes:
    h = hashlib.sha256(nonce)
    h.update(upload(nonce, size))
    return h.digest()


async def exchange(port: int, i: int, nonce: bytes, size: int, gauge: Gauge, progress: Progress) -> None:
    """One ``tcp``/``p2p`` connection; raises with the reason when anything is off."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source(i), 0))
    cap_sndbuf(writer)
    gauge.up()
    try:
        sending = asyncio.create_task(send_upload(writer, nonce, size, half_close=True, progress=progress))
        try:
            h = hashlib.sha256()
            got, tail = await read_all(reader, h, DIGEST, progress)
            await sending
        finally:
            sending.cancel()
        if got != size:
            raise Verify(f"download {got} bytes, not {size}")
        if h.digest() != download_digest(download_offset(nonce, size), size):
            raise Verify("download SHA-256 mismatch")
        if len(tail) != DIGEST:
            raise Verify("no upload digest from the service")
        if tail != upload_digest(nonce, size):
            raise Verify("upload SHA-256 mismatch (the service read other bytes)")
    finally:
        gauge.down()
        writer.close()


async def http_exchange(port: int, i: int, nonce: bytes, size: int, gauge: Gauge, progress: Progress) -> None:
    """One ``http`` connection: POST SIZE bytes, read the 200 with SIZE bytes; raises on anything off."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source(i), 0))
    cap_sndbuf(writer)
    gauge.up()
    try:
        writer.write(
            f"POST /load HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
        )
        sending = asyncio.create_task(send_upload(writer, nonce, size, half_close=False))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await sending
        finally:
            sending.cancel()
        status = head.split(b"\r\n", 1)[0]
        if not re.match(rb"HTTP/1\.[01] 200 ", status):
            raise Verify(f"status {status.decode(errors='replace')!r}")
        length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        digest = re.search(rb"(?im)^x-upload-sha256:\s*([0-9a-f]{64})\s*$", head)
        if length is None or int(length.group(1)) != size:
            raise Verify("response Content-Length missing or wrong")
        if digest is None or bytes.fromhex(digest.group(1).decode()) != upload_digest(nonce, size):
            raise Verify("upload SHA-256 mismatch (the backend read other bytes)")
        h = hashlib.sha256()
        got, _ = await read_all(reader, h, 0)
        if got != size:
            raise Verify(f"response body {got} bytes, not {size}")
        if h.digest() != download_digest(download_offset(nonce, size), size):
            raise Verify("response body SHA-256 mismatch")
    finally:
        gauge.down()
        writer.close()


class Verify(Exception):
    """A transfer that completed with wrong bytes."""


async def transfers(port: int, count: int, size: int, kind: str, timeout: float = CONN_TIMEOUT) -> Outcome:
    """``count`` connections started at once; each one's time from connect to verified."""
    out = Outcome()
    gauge = Gauge()
    one = http_exchange if kind == "http" else exchange

    async def timed(i: int) -> None:
        nonce = hashlib.sha256(f"{kind}-{i}-{time.time_ns()}".encode()).digest()[:NONCE]
        t0 = time.perf_counter()
        progress = Progress()
        try:
            async with asyncio.timeout(timeout):
                await one(port, i, nonce, size, gauge, progress)
        except TimeoutError:  # a stall: how far it got each way says which side holds it
            print(f"bench: connection {i} from {source(i)} stalled: {progress}", file=sys.stderr, flush=True)
            out.failures[f"TimeoutError: stalled after {timeout:g} s"] += 1
            return
        except Exception as exc:  # every failure is counted by its reason
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            out.failures[reason[:200]] += 1
            return
        out.durations.append(time.perf_counter() - t0)

    block(size)
    for off in range(OFFSETS):  # warm the digests: the generator's CPU goes to the transfers
        download_digest(off * (size // OFFSETS), size)
    start = time.perf_counter()
    await asyncio.gather(*(timed(i) for i in range(count)))
    out.wall = time.perf_counter() - start
    out.max_open = gauge.peak
    return out


def churn(port: int, count: int, concurrency: int) -> tuple[list[float], Counter[str], float]:
    """``count`` connect / 1 byte / echo / close, ``concurrency`` threads each doing its share in a row;
    (seconds to the echoed byte of each success, failures by reason, wall seconds)."""
    ttfb: list[float] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(n: int) -> None:
        mine: list[float] = []
        bad: Counter[str] = Counter()
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                with socket.create_connection((HOST, port), timeout=30) as s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.sendall(b"x")
                    if s.recv(1) != b"x":
                        raise Verify("echo mismatch (or the connection closed)")
                    mine.append(time.perf_counter() - t0)
            except Exception as exc:  # counted by reason
                bad[f"{type(exc).__name__}: {exc}"[:200]] += 1
        with lock:
            ttfb.extend(mine)
            failures.update(bad)

    shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in shares]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ttfb, failures, time.perf_counter() - start


# -- pierce on loopback ----------------------------------------------------------------------------


def free_tcp_udp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the server's STUN port)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for STUN")


class Setup:
    """A `pierce server` and a `pierce client` (and for ``p2p`` a `pierce visit --p2p`) for one path,
    each with RLIMIT_NOFILE ``nofile``; ``port`` is where visitors connect."""

    def __init__(self, procs: Procs, workdir: Path, kind: str, service: int, nofile: int) -> None:
        self.procs, self.workdir, self.nofile = procs, workdir, nofile
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PIERCE_STATE_DIR": str(workdir / f"{kind}-state")}
        self.logs: dict[str, Path] = {}
        control = free_port()
        server: dict[str, Any] = {
            "bind_addr": HOST,
            "bind_port": control,
            "proxy_bind_addr": HOST,
            "token": TOKEN,
        }
        proxy: dict[str, Any] = {"name": f"load-{kind}", "local_ip": HOST, "local_port": service}
        if kind == "tcp":
            self.port = free_port()
            proxy |= {"type": "tcp", "remote_port": self.port}
        elif kind == "http":
            self.port = free_port()
            server["vhost_http_port"] = self.port
            proxy |= {"type": "http", "custom_domains": [DOMAIN]}
        elif kind == "stcp":
            proxy |= {"type": "stcp", "secret_key": SECRET}
        else:
            server["stun_port"] = free_tcp_udp_port()
            proxy |= {"type": "xtcp", "secret_key": SECRET}
        if kind != "p2p":
            server["stun_port"] = 0
        client = {"server_addr": HOST, "server_port": control, "token": TOKEN, "client_id": f"load-{kind}"}
        self.server = self._start(kind, "server", server, [])
        wait_listening(control)
        self.client = self._start(kind, "client", {**client, "proxies": [proxy]}, [])
        self.wait_event("client", "proxy.ready")
        if kind in ("stcp", "p2p"):
            self.port = free_port()
            self.visitor = self._start(
                kind,
                "visit",
                None,
                ["--server", f"{HOST}:{control}", "--token", TOKEN, "--name", proxy["name"],
                 "--secret", SECRET, *(["--p2p"] if kind == "p2p" else []), "--bind", f"{HOST}:{self.port}",
                 "--client-id", "load-visitor"],
            )  # fmt: skip
            if kind == "p2p":
                self.wait_direct()
        wait_listening(self.port)

    def _start(
        self, kind: str, role: str, doc: dict[str, Any] | None, argv: list[str]
    ) -> subprocess.Popen[bytes]:
        log = self.logs[role] = self.workdir / f"{kind}-{role}.log"
        level = "warning" if role == "server" else "info"
        if doc is not None:
            conf = self.workdir / f"{kind}-{role}.toml"
            conf.write_text(toml(doc))
            argv = ["-c", str(conf)]
        cmd = [sys.executable, "-m", "pierce", "--log-level", level, "--json-logs", role, *argv]
        with log.open("wb") as out:
            return self.procs.start(
                cmd, env=self.env, stdout=out, stderr=out, preexec_fn=nofile_preexec(self.nofile)
            )

    def events(self, role: str, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.logs[role].read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if doc.get("event") == name:
                        found.append(doc)
        return found

    def wait_event(self, role: str, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.events(role, name):
            self.check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {name} from pierce {role} in {timeout:g} s:\n{self.tail(role)}")
            time.sleep(0.05)

    def wait_direct(self, timeout: float = 30) -> None:
        """Until the visitor has its direct paths: QUIC over UDP and a direct TCP connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            protos = {e.get("proto") for e in self.events("visit", "p2p.direct")}
            if {"udp", "tcp"} <= protos:
                return
            self.check_running()
            time.sleep(0.1)
        raise RuntimeError(f"the P2P visitor found no direct path in {timeout:g} s:\n{self.tail('visit')}")

    def tail(self, role: str) -> str:
        return self.logs[role].read_text(errors="replace")[-3000:]

    def check_running(self) -> None:
        for role, proc in (("server", self.server), ("client", self.client), *self.extra()):
            if proc.poll() is not None:
                raise RuntimeError(f"pierce {role} exited (rc={proc.returncode}):\n{self.tail(role)}")

    def extra(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        return [("visit", self.visitor)] if hasattr(self, "visitor") else []

    def conn_paths(self) -> dict[str, int]:
        """The visitor's connections by the path they took (``p2p`` only)."""
        return dict(Counter(str(e.get("conn_path")) for e in self.events("visit", "visitor.open")))


def start_service(procs: Procs, mode: str, size: int, nofile: int) -> int:
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", mode, "--size", str(size)]
    argv += ["--sndbuf", str(SNDBUF)]
    proc = procs.start(argv, stdout=subprocess.PIPE, preexec_fn=nofile_preexec(nofile))
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def stop(procs: Procs) -> None:
    with signals_held():
        procs.close()


# -- one round -------------------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile (of a non-empty list)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def run_path(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    nofile = 4 * args.connections + 1024
    procs = Procs()
    try:
        service = start_service(procs, "http" if kind == "http" else "exchange", args.size, nofile)
        setup = Setup(procs, workdir, kind, service, nofile)
        # One verified transfer first: logins done, pools filled, the proxy routed (an http proxy is
        # routed once the client has registered it: until then its domain is unknown, 404).
        deadline = time.monotonic() + 20
        while (warm := run_loop(transfers(setup.port, 1, args.size, kind))).failures:
            setup.check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: the first transfer failed: {dict(warm.failures)}")
            time.sleep(0.1)
        before = Counter(setup.conn_paths() if kind in ("stcp", "p2p") else {})
        out = run_loop(transfers(setup.port, args.connections, args.size, kind, args.timeout))
        setup.check_running()
        if out.failures:  # what the processes said, for the cause
            for role in setup.logs:
                print(f"--- {kind} {role} log (end):\n{setup.tail(role)}", file=sys.stderr)
        paths = dict(Counter(setup.conn_paths()) - before) if kind in ("stcp", "p2p") else None
    finally:
        stop(procs)
    moved = 2 * args.size * len(out.durations)
    res: dict[str, Any] = {
        "connections": args.connections,
        "ok": len(out.durations),
        "failures": sum(out.failures.values()),
        "failure_reasons": dict(out.failures.most_common(REASONS_KEPT)),
        "max_open": out.max_open,
        "total_s": round(out.wall, 2),
        "conn_ms": summary(out.durations, (50, 99)),
        "payload_mib_per_s": round(moved / out.wall / 2**20, 1) if out.wall else 0.0,
    }
    if paths is not None:
        res["conn_paths"] = paths
    return res


def summary(values: list[float], qs: tuple[int, ...]) -> dict[str, float | None]:
    if not values:
        return {**{f"p{q}": None for q in qs}, "max": None}
    return {**{f"p{q}": ms(pct(values, q)) for q in qs}, "max": ms(max(values))}


def run_churn(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    procs = Procs()
    nofile = 4 * args.churn_concurrency + 1024
    try:
        echo = start_echo(procs, HOST, nofile=nofile)
        setup = Setup(procs, workdir, "tcp", echo, nofile)
        churn(setup.port, 20, 1)  # warm up
        ttfb, failures, wall = churn(setup.port, args.churn, args.churn_concurrency)
        setup.check_running()
    finally:
        stop(procs)
    return {
        "connections": args.churn,
        "concurrency": args.churn_concurrency,
        "ok": len(ttfb),
        "failures": sum(failures.values()),
        "failure_reasons": dict(failures.most_common(REASONS_KEPT)),
        "total_s": round(wall, 2),
        "connections_per_s": round(len(ttfb) / wall, 1) if wall else 0.0,
        "ttfb_ms": summary(ttfb, (50, 90, 99)),
    }


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures: the median over the rounds; counts of failures (and their reasons, paths): summed."""
    if len(rounds) == 1:
        return rounds[0]
    res: dict[str, Any] = {}
    for key, first in rounds[0].items():
        values = [r[key] for r in rounds]
        if key in ("failures", "ok", "connections"):
            res[key] = sum(values)
        elif key in ("failure_reasons", "conn_paths"):
            total: Counter[str] = Counter()
            for v in values:
                total.update(v)
            res[key] = dict(total)
        elif isinstance(first, dict):
            res[key] = {
                k: (
                    None
                    if any(v[k] is None for v in values)
                    else round(statistics.median(v[k] for v in values), 1)
                )
                for k in first
            }
        elif isinstance(first, float):
            res[key] = round(statistics.median(values), 2)
        else:
            res[key] = first
    return res


# -- main ------------------------------------------------------------------------------------------


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(|B|KiB|MiB|K|M)", text.strip(), re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 1MiB or 65536, got {text!r}")
    unit = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20}[m.group(2).lower()]
    return int(m.group(1)) * unit


def parse_size(text: str) -> int:
    size = parse_bytes(text)
    if size < 2 * NONCE:
        raise argparse.ArgumentTypeError(f"a size of at least {2 * NONCE} bytes")
    return size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=1000, help="concurrent transfers per path")
    ap.add_argument("--size", type=parse_size, default=2**20, help="bytes each way per transfer (1MiB)")
    ap.add_argument("--churn", type=int, default=10_000, help="short connections in the churn (0: none)")
    ap.add_argument("--churn-concurrency", type=int, default=1, help="churn connections at a time")
    ap.add_argument("--paths", default=",".join(PATHS), help="which of tcp,http,p2p,stcp (empty: none)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything; report medians")
    ap.add_argument("--quick", action="store_true", help="100 connections of 64 KiB, churn 500 (CI)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--timeout", type=float, default=CONN_TIMEOUT, help="seconds before a transfer counts as stalled"
    )
    ap.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")
    ap.add_argument(
        "--sndbuf",
        type=parse_bytes,
        default=0,
        help="SO_SNDBUF of the visitors' and the service's sockets (default: the kernel's)",
    )
    ap.add_argument("--serve", choices=("exchange", "http"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    global SNDBUF
    SNDBUF = args.sndbuf
    if args.serve:
        raise_fd_limit(1 << 20)
        serve(args.serve, HOST, args.size)
        return 0
    if args.quick:
        args.connections, args.size, args.churn = 100, 64 * 1024, 500
    paths = [p for p in args.paths.split(",") if p]
    if unknown := set(paths) - set(PATHS) - set(EXTRA_PATHS):
        ap.error(f"unknown paths: {', '.join(sorted(unknown))}")
    if missing := missing_tools("ss"):
        print(f"bench: {missing} is not installed", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    raise_fd_limit(2 * max(args.connections, args.churn_concurrency) + 1024)
    workdir = Path(tempfile.mkdtemp(prefix="pierce-load-"))
    rounds: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    churns: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            for kind in paths:
                res = run_path(kind, args, workdir / f"r{r}")
                rounds[kind].append(res)
                print(f"round {r + 1}/{args.rounds} {kind}: {line(res)}", file=sys.stderr, flush=True)
            if args.churn:
                res = run_churn(args, workdir / f"r{r}")
                churns.append(res)
                print(f"round {r + 1}/{args.rounds} churn: {churn_line(res)}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped and removed", file=sys.stderr)
        return 130
    finally:
        if args.logs is not None:
            for log in workdir.rglob("*.log"):
                dest = args.logs / log.relative_to(workdir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, dest)
        shutil.rmtree(workdir, ignore_errors=True)
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "connections": args.connections,
        "size": args.size,
        "paths": {kind: median_of(rs) for kind, rs in rounds.items()},
        **({"churn": median_of(churns)} if churns else {}),
    }
    failed = sum(p["failures"] for p in result["paths"].values()) + sum(c["failures"] for c in churns)
    result["failures"] = failed
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 1 if failed else 0


def line(res: dict[str, Any]) -> str:
    c = res["conn_ms"]
    text = (
        f"{res['ok']}/{res['connections']} verified, {res['failures']} failed, {res['total_s']} s, "
        f"per connection p50 {c['p50']} ms p99 {c['p99']} ms max {c['max']} ms, "
        f"{res['max_open']} open at once, {res['payload_mib_per_s']} MiB/s"
    )
    if res.get("conn_paths"):
        text += f", paths {res['conn_paths']}"
    if res["failure_reasons"]:
        text += f"; reasons {res['failure_reasons']}"
    return text


def churn_line(res: dict[str, Any]) -> str:
    t = res["ttfb_ms"]
    text = (
        f"{res['ok']}/{res['connections']} ok ({res['concurrency']} at a time), {res['failures']} failed, "
        f"{res['total_s']} s ({res['connections_per_s']}/s); first byte p50 {t['p50']} ms p90 {t['p90']} ms "
        f"p99 {t['p99']} ms max {t['max']} ms"
    )
    if res["failure_reasons"]:
        text += f"; reasons {res['failure_reasons']}"
    return text


def print_report(result: dict[str, Any]) -> None:
    print(
        f"\n{result['connections']} concurrent connections x {result['size']} bytes each way, "
        f"{result['cpus']} CPUs, {result['rounds']} round(s) (medians)"
    )
    for kind, res in result["paths"].items():
        print(f"{kind:<5} {line(res)}")
    if "churn" in result:
        print(f"churn {churn_line(result['churn'])}")
    print(f"failures: {result['failures']}")


if __name__ == "__main__":
    raise SystemExit(main())
