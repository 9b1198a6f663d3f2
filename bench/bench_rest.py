#!/usr/bin/env python3
"""Memory at rest and time to start: an idle ``pierce server`` and an idle ``pierce client``.

Each round starts a real server (minimal config: control port and token; ``--web`` adds a ``[web]``
dashboard) and a real client with one tcp proxy (``--admin`` adds an ``admin_port``), on loopback, each
with a fresh state directory, the server's certificate made beforehand (as on every start but a
server's first, which loads cryptography to make it). Reported per process, median of ``--rounds``:

- start: wall time from spawning the process to its ready event (the server's ``server.listening``; the
  client's ``proxy.ready``, i.e. logged in and its proxy registered);
- RSS: ``VmRSS`` from ``/proc/PID/status`` once both are idle (``--settle`` seconds after the client's
  proxy is ready, so its work-connection pool has filled);
- modules: how many modules the process has imported by then (from ``python -X importtime``).

Usage: ``python3 bench/bench_rest.py [--rounds 5] [--settle 2] [--web] [--admin] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
TOKEN = "bench-rest-token-5d81c0e4a7b29f63"


class Proc:
    """A ``python -X importtime -m pierce --json-logs ...`` whose stderr is read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, started: float) -> None:
        self.proc = proc
        self.started = started
        self.events: dict[str, tuple[float, dict[str, Any]]] = {}
        self.modules = 0
        self._seen = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str, state: Path) -> Proc:
        env = {**os.environ, "PIERCE_STATE_DIR": str(state), "PYTHONPATH": str(SRC)}
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-X", "importtime", "-m", "pierce", "--json-logs", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        return cls(proc, started)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace")
            if text.startswith("import time:"):
                self.modules += not text.rstrip().endswith("| imported package")
                continue
            try:
                doc = json.loads(text)
            except ValueError:
                continue
            if isinstance(doc, dict) and "event" in doc:
                self.events.setdefault(doc["event"], (time.perf_counter(), doc))
                self._seen.set()
        self._seen.set()  # exited: a waiter stops waiting

    async def wait(self, name: str, timeout: float = 30) -> float:
        """Seconds from spawn to the first ``name`` event."""
        async with asyncio.timeout(timeout):
            while name not in self.events:
                if self._reader.done():
                    raise SystemExit(f"exited (rc={self.proc.returncode}) before {name!r}")
                self._seen.clear()
                await self._seen.wait()
        return self.events[name][0] - self.started

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) / 1024

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        await self._reader


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml(doc: dict[str, Any]) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in doc.items() if not isinstance(v, (dict, list))]
    for key, value in doc.items():
        if isinstance(value, dict):
            lines += [f"[{key}]", *(f"{k} = {json.dumps(v)}" for k, v in value.items())]
        elif isinstance(value, list):
            for item in value:
                lines += [f"[[{key}]]", *(f"{k} = {json.dumps(v)}" for k, v in item.items())]
    return "\n".join(lines) + "\n"


async def one_round(tmp: Path, settle: float, web: bool, admin: bool) -> dict[str, float]:
    server_doc: dict[str, Any] = {"bind_addr": "127.0.0.1", "bind_port": 0, "token": TOKEN}
    if web:
        server_doc["web"] = {"addr": "127.0.0.1", "port": free_port()}
    (tmp / "server.toml").write_text(toml(server_doc))
    make = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from pierce.tls import ensure_server_certificate; "
        "ensure_server_certificate(Path(sys.argv[1]))",
        str(tmp / "server-state" / "server"),
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    if await make.wait():
        raise RuntimeError("could not make the server's certificate")
    server = await Proc.start("server", "-c", str(tmp / "server.toml"), state=tmp / "server-state")
    client: Proc | None = None
    try:
        server_start = await server.wait("server.listening")
        port = server.events["server.listening"][1]["port"]
        client_doc: dict[str, Any] = {
            "server_addr": "127.0.0.1",
            "server_port": port,
            "token": TOKEN,
            "client_id": "bench",
            "proxies": [{"name": "ssh", "type": "tcp", "local_port": 22, "remote_port": 0}],
        }
        if admin:
            client_doc["admin_port"] = free_port()
        (tmp / "client.toml").write_text(toml(client_doc))
        client = await Proc.start("client", "-c", str(tmp / "client.toml"), state=tmp / "client-state")
        client_start = await client.wait("proxy.ready")
        await asyncio.sleep(settle)  # a measurement at rest, not a synchronisation
        return {
            "server_start_ms": server_start * 1000,
            "client_start_ms": client_start * 1000,
            "server_rss_mib": server.rss_mib(),
            "client_rss_mib": client.rss_mib(),
            "server_modules": server.modules,
            "client_modules": client.modules,
        }
    finally:
        if client is not None:
            await client.stop()
        await server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--web", action="store_true", help="the server with a [web] dashboard")
    parser.add_argument("--admin", action="store_true", help="the client with an admin_port")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds: list[dict[str, float]] = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="pierce-bench-rest-") as tmp:
            rounds.append(await one_round(Path(tmp), args.settle, args.web, args.admin))
        if not args.json:
            print(f"round {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in rounds[-1].items()), flush=True)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    if args.json:
        print(json.dumps({"rounds": rounds, "median": median}))
        return
    print(f"\nmedian of {args.rounds} rounds:")
    print("| process | start to ready ms | VmRSS MiB idle | modules |")
    print("|---|---|---|---|")
    for role in ("server", "client"):
        row = [median[f"{role}_start_ms"], median[f"{role}_rss_mib"], median[f"{role}_modules"]]
        print(f"| {role} | {row[0]:.0f} | {row[1]:.1f} | {row[2]:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
