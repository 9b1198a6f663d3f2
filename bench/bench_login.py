#!/usr/bin/env python3
"""How many logins per second a pierce server takes, and what each costs it in CPU.

A real ``pierce server`` process on loopback (its own state directory, a generated certificate); this
script logs in with pierce's own client code, ``--concurrency`` logins at a time for ``--seconds``:

- ``control``: a full login (TCP + TLS 1.3 + SRP-6a + the channel-binding proofs), as a client starts or
  reconnects. Each uses its own client id, so no liveness probe runs.
- ``visitor``: the same login as a visitor of a secret service (no `Visit` follows; the server gives up
  on it after its login deadline, so those connections are closed by this script at once).
- ``work``: a work connection joining a logged-in session: TCP + TLS + one HMAC each way over a key
  derived from the session (what a client's pool pays; a visitor's first byte never waits for it).
- ``work-plain``: the same without TLS (``encrypt_data = false`` on both ends).

Reported per kind: logins/s (median of ``--rounds``) and the server's CPU per login in ms (user + system
of the server process over the round, divided by the logins done). Ratios are what to compare between
runs: these machines are noisy.

Usage: ``python3 bench/bench_login.py [--rounds 3] [--seconds 3] [--concurrency 8] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from benchlib import Procs, free_port, group_cpu_seconds, wait_listening

from pierce.client.session import Dialer
from pierce.config import ClientConfig, TransportOptions

TOKEN = "bench-login-token-7c41e9a2f0b35d68"


async def one(kind: str, dialer: Dialer, session: tuple[str, bytes] | None, serial: int) -> None:
    if kind == "control":
        dialer.client_id = f"bench-{serial}"
        channel, _, _ = await dialer.control(None)
    elif kind == "visitor":
        channel, _ = await dialer.visitor()
    else:
        assert session is not None
        channel = await dialer.work(*session)
    channel.abort()


async def round_of(kind: str, port: int, seconds: float, concurrency: int, pgid: int) -> tuple[float, float]:
    plain = kind == "work-plain"
    config = ClientConfig(
        server_addr="127.0.0.1",
        server_port=port,
        token=TOKEN,
        transport=TransportOptions(encrypt_data=not plain),
    )
    dialer = Dialer(config, "bench")
    session = None
    keeper = None
    if kind.startswith("work"):
        from pierce.handshake import work_key

        keeper, run_id, key = await dialer.control(None)
        session = (run_id, work_key(key, run_id))
    done = 0
    serial = 0
    cpu0 = group_cpu_seconds(pgid)
    start = time.monotonic()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal done, serial
        while time.monotonic() < deadline:
            serial += 1
            await one(kind, Dialer(config, "bench") if kind != "work" else dialer, session, serial)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    cpu = group_cpu_seconds(pgid) - cpu0
    if keeper is not None:
        keeper.close()
    return done / elapsed, cpu / max(done, 1) * 1000


def start_server(procs: Procs, state: Path, port: int, encrypt: bool) -> int:
    conf = state / f"server-{port}.toml"
    conf.write_text(
        f'bind_addr = "127.0.0.1"\nbind_port = {port}\ntoken = "{TOKEN}"\nstun_port = 0\n'
        f"[transport]\nencrypt_data = {'true' if encrypt else 'false'}\n"
    )
    proc = procs.start(
        [sys.executable, "-m", "pierce", "--log-level", "error", "server", "-c", str(conf)],
        env={**os.environ, "PIERCE_STATE_DIR": str(state / f"s{port}")},
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    return proc.pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = ["control", "visitor", "work", "work-plain"]
    procs = Procs()
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tls_port = free_port()
            plain_port = free_port()
            pgid_tls = start_server(procs, Path(tmp), tls_port, True)
            pgid_plain = start_server(procs, Path(tmp), plain_port, False)
            rates: dict[str, list[float]] = {k: [] for k in kinds}
            costs: dict[str, list[float]] = {k: [] for k in kinds}
            for r in range(args.rounds):
                for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                    pgid, port = (pgid_plain, plain_port) if kind == "work-plain" else (pgid_tls, tls_port)
                    rate, cost = asyncio.run(round_of(kind, port, args.seconds, args.concurrency, pgid))
                    rates[kind].append(rate)
                    costs[kind].append(cost)
            for kind in kinds:
                results[kind] = {
                    "logins_per_s": round(statistics.median(rates[kind])),
                    "server_cpu_ms_per_login": round(statistics.median(costs[kind]), 2),
                }
    finally:
        procs.close()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'kind':<12} {'logins/s':>9} {'server CPU ms/login':>20}")
        for kind, row in results.items():
            print(f"{kind:<12} {row['logins_per_s']:>9} {row['server_cpu_ms_per_login']:>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
