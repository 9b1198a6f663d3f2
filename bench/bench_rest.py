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

``--floor`` also measures, each round, what the same Python pays without pierce's own code: a server and
a client of a few lines that import the modules the pierce server and client imported (all but
``pierce.*``), then hold TLS connections as the two roles do (a control and a multiplexed work
connection) on the loop pierce runs on (uvloop when installed), their free heap pages given back as
pierce does (``malloc_trim``); their VmRSS once idle as ``*_floor_mib``.

Usage: ``python3 bench/bench_rest.py [--rounds 5] [--settle 2] [--web] [--admin] [--floor] [--json]``.
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

#: ``--floor``: a role without pierce's code. Imports the modules named in ``argv[3]``, then serves TLS
#: (``server CERT,KEY``; prints its port) or holds two TLS connections to it (``client PORT``; prints
#: "ready"), on uvloop when installed; gives its free heap pages back, then idles.
FLOOR = r"""
import asyncio, ctypes, importlib, ssl, sys
for name in sys.argv[3].split(","):
    try:
        importlib.import_module(name)
    except Exception:
        pass
try:
    import uvloop
    run = uvloop.run
except ImportError:
    run = asyncio.run

async def serve(reader, writer):
    while await reader.read(65536):
        pass

async def main():
    if sys.argv[1] == "server":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*sys.argv[2].split(","))
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
        print(server.sockets[0].getsockname()[1], flush=True)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        held = [await asyncio.open_connection("127.0.0.1", int(sys.argv[2]), ssl=ctx) for _ in range(2)]
        for _, writer in held:
            writer.write(b"x")
        print("ready", flush=True)
    ctypes.CDLL(None).malloc_trim(0)
    await asyncio.Event().wait()

run(main())
"""


class Proc:
    """A ``python -X importtime -m pierce --json-logs ...`` whose stderr is read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, started: float) -> None:
        self.proc = proc
        self.started = started
        self.events: dict[str, tuple[float, dict[str, Any]]] = {}
        self.modules = 0
        #: The names of the modules imported (``-X importtime`` order).
        self.imported: list[str] = []
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
                if not text.rstrip().endswith("| imported package"):
                    self.modules += 1
                    self.imported.append(text.rsplit("|", 1)[-1].strip())
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


def vm_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


async def floor(cert_dir: Path, imported: dict[str, list[str]], settle: float) -> dict[str, float]:
    """VmRSS of a server and a client without pierce's code (`FLOOR`), each importing what the pierce
    process of its role imported."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(role: str, arg: str) -> str:
        modules = ",".join(n for n in imported[role] if n != "pierce" and not n.startswith("pierce."))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FLOOR, role, arg, modules,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        if not line:
            raise RuntimeError(f"the floor {role} exited (rc={await proc.wait()})")
        return line

    try:
        port = await start("server", f"{cert_dir / 'server.crt'},{cert_dir / 'server.key'}")
        await start("client", port)
        await asyncio.sleep(settle)  # a measurement at rest, not a synchronisation
        return {"server_floor_mib": vm_rss_mib(procs[0].pid), "client_floor_mib": vm_rss_mib(procs[1].pid)}
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()


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


async def one_round(tmp: Path, settle: float, web: bool, admin: bool, with_floor: bool) -> dict[str, float]:
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
        result = {
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
    if with_floor:
        imported = {"server": server.imported, "client": client.imported}
        result.update(await floor(tmp / "server-state" / "server", imported, settle))
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--web", action="store_true", help="the server with a [web] dashboard")
    parser.add_argument("--admin", action="store_true", help="the client with an admin_port")
    parser.add_argument("--floor", action="store_true", help="also the same imports and TLS without pierce")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds: list[dict[str, float]] = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="pierce-bench-rest-") as tmp:
            rounds.append(await one_round(Path(tmp), args.settle, args.web, args.admin, args.floor))
        if not args.json:
            print(f"round {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in rounds[-1].items()), flush=True)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    if args.json:
        print(json.dumps({"rounds": rounds, "median": median}))
        return
    print(f"\nmedian of {args.rounds} rounds:")
    floor_head = " VmRSS MiB without pierce's code |" if args.floor else ""
    print(f"| process | start to ready ms | VmRSS MiB idle | modules |{floor_head}")
    print("|---|---|---|---|" + ("---|" if args.floor else ""))
    for role in ("server", "client"):
        row = [median[f"{role}_start_ms"], median[f"{role}_rss_mib"], median[f"{role}_modules"]]
        cell = f" {median[f'{role}_floor_mib']:.1f} |" if args.floor else ""
        print(f"| {role} | {row[0]:.0f} | {row[1]:.1f} | {row[2]:.0f} |{cell}")


if __name__ == "__main__":
    asyncio.run(main())
