"""The wall clock jumps by hours (an NTP step, a wrong RTC fixed at boot) under a running server and
client: heartbeats keep the session up and the uptime runs on, because every timer and duration is on
the monotonic clock; ACME renewals follow the certificate's expiry by the wall clock (that is what expiry
means), so steps within the renewal margin order nothing and a step past it orders once.

The processes run under libfaketime (Debian package faketime) with ``FAKETIME_DONT_FAKE_MONOTONIC=1``:
``time.time()`` and every wall-clock reading moves by what the shared timestamp file says, read again at
each call, while ``CLOCK_MONOTONIC`` runs on, as after a real ``settimeofday``. The logs' ``ts`` (wall
clock) shows each jump arrived.

What time passed is measured with a canary: a second client stopped with ``SIGSTOP`` right after the
jump, which the server drops once ``heartbeat_timeout`` has passed on its own clock. A timer on the wall
clock would have failed by then: a deadline pushed hours into the past fires at its next check (the client
gives up on a live server), one pushed hours ahead never does (the client stops pinging, and the server
drops it no later than the canary).
"""

from __future__ import annotations

import datetime
import hashlib
import signal
from pathlib import Path
from typing import Any

import pytest
from support.dashboard import get_json
from support.procs import PierceProcess
from support.streams import MiB, free_port, tcp_server
from support.tunnel import TOKEN, StartPierce, write_toml
from support.web import http_proxy
from test_resource_faults import echo_service
from test_tunnel_restart import verified_echo
from test_tunnel_tcp import tcp_proxy

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
if LIBFAKETIME is None:
    pytest.skip("libfaketime is not installed (Debian package faketime)", allow_module_level=True)

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 3.0
HOUR = 3600.0


class Clock:
    """The wall-clock offset of every process started with `env`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(0)

    def set(self, seconds: float) -> None:
        self.path.write_text(f"{seconds:+.0f}\n")

    def env(self, state: Path) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "PIERCE_STATE_DIR": str(state),
        }


async def client(
    pierce: StartPierce, tmp_path: Path, clock: Clock, port: int, name: str, proxies: list
) -> PierceProcess:
    conf = write_toml(
        tmp_path / f"{name}.toml",
        {
            "server_addr": "127.0.0.1",
            "server_port": port,
            "token": TOKEN,
            "client_id": name,
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "heartbeat_timeout": HEARTBEAT_TIMEOUT,
            "proxies": proxies,
        },
    )
    proc = await pierce("client", "-c", str(conf), env=clock.env(tmp_path / f"{name}-state"))
    await proc.wait_event("client.connected")
    return proc


async def canary_dropped(
    pierce: StartPierce, tmp_path: Path, clock: Clock, server: PierceProcess, port: int, name: str
) -> dict:
    """Start a client, stop it, and return the server's event dropping it: ``heartbeat_timeout`` has
    passed on the server's clock since it stopped."""
    canary = await client(pierce, tmp_path, clock, port, name, [])
    await server.wait_event("client.login", lambda e: e["client_id"] == name)
    canary.proc.send_signal(signal.SIGSTOP)
    try:
        (dropped,) = await server.wait_event("client.timeout", lambda e: e["client_id"] == name, timeout=30)
    finally:
        canary.proc.send_signal(signal.SIGCONT)
    return dropped


async def test_heartbeats_survive_wall_clock_jumps_of_hours_both_ways(pierce, tmp_path: Path) -> None:
    clock = Clock(tmp_path / "faketime")
    public, web_port = free_port(), free_port()
    async with tcp_server(echo_service) as local:
        conf = write_toml(
            tmp_path / "server.toml",
            {
                "bind_addr": "127.0.0.1",
                "bind_port": 0,
                "token": TOKEN,
                "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                "web": {"addr": "127.0.0.1", "port": web_port},
            },
        )
        server = await pierce("server", "-c", str(conf), env=clock.env(tmp_path / "state"))
        (ready,) = await server.wait_event("server.listening")
        port = int(ready["port"])
        main = await client(
            pierce, tmp_path, clock, port, "main", [tcp_proxy("svc", local, remote_port=public)]
        )
        await main.wait_event("proxy.ready")
        started = ready["ts"]
        await server.wait_event("web.listening")
        uptimes = [(await get_json(f"http://127.0.0.1:{web_port}/api/serverinfo"))["uptime_s"]]

        for n, offset in enumerate((5 * HOUR, -5 * HOUR), start=1):
            clock.set(offset)
            dropped = await canary_dropped(pierce, tmp_path, clock, server, port, f"canary{n}")
            # The server's wall clock did jump (its log stamps say so) ...
            assert abs(dropped["ts"] - started - offset) < HOUR, (dropped["ts"], started, offset)
            # ... and the main client's session lived through it on both sides.
            assert main.matching("client.disconnected") == []
            assert server.matching("client.timeout", lambda e: e["client_id"] == "main") == []
            assert server.matching("client.gone", lambda e: e["client_id"] == "main") == []
            await verified_echo(public, MiB + n, 50 + n)
            # The server's uptime runs on: it neither leaps by the jump nor goes back.
            uptimes.append((await get_json(f"http://127.0.0.1:{web_port}/api/serverinfo"))["uptime_s"])
            assert uptimes[-2] < uptimes[-1] < uptimes[-2] + HOUR / 2, uptimes
        assert len(main.matching("client.connected")) == 1


async def acme_server(
    pierce: StartPierce,
    tmp_path: Path,
    clock: Clock,
    ca: Any,
    ports: tuple[int, int, int],
    renew_before: float,
) -> PierceProcess:
    http_port, https_port, port = ports
    conf = write_toml(
        tmp_path / "server.toml",
        {
            "bind_addr": "127.0.0.1",
            "bind_port": port,
            "token": TOKEN,
            "vhost_http_port": http_port,
            "vhost_https_port": https_port,
            "acme": {
                "email": "ops@example.com",
                "directory_url": ca.directory_url,
                "ca_file": str(ca.ca_bundle),
                "renew_before_days": renew_before / 86400,
            },
        },
    )
    server = await pierce("server", "-c", str(conf), env=clock.env(tmp_path / "state"))
    await server.wait_event("server.listening")
    return server


async def https_auto_client(pierce: StartPierce, tmp_path: Path, clock: Clock, port: int, name: str) -> None:
    """A client whose http proxy asks the server for a certificate for ``<name>.example.com``."""
    await client(
        pierce,
        tmp_path,
        clock,
        port,
        name,
        [http_proxy(name, free_port(), custom_domains=[f"{name}.example.com"], https_auto=True)],
    )


def acme_state(state: Path) -> dict[str, str]:
    """SHA-256 of the ACME account key and certificates by path."""
    return {
        str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((state / "server" / "acme").rglob("*"))
        if p.is_file()
    }


async def test_acme_renewals_follow_expiry_not_clock_steps(pierce, tmp_path: Path) -> None:
    """A certificate due for renewal in 20 hours (by its expiry and renew_before_days): wall-clock steps of
    5 hours either way order nothing; a step of 25 hours makes it due, and it is renewed once (not again
    and again, though the new certificate is due at once by that clock: a reissue waits an hour of
    monotonic time)."""
    from helpers.acme_pebble import MISSING, running_pebble

    if MISSING is not None:
        pytest.skip(MISSING)
    clock = Clock(tmp_path / "faketime")
    ports = (free_port(), free_port(), free_port())
    with running_pebble(tmp_path / "pebble", http_port=ports[0]) as ca:
        # First start: the certificate of a.example.com, and how long the CA's certificates live.
        server = await acme_server(pierce, tmp_path, clock, ca, ports, 30 * 86400.0)
        await https_auto_client(pierce, tmp_path, clock, ports[2], "a")
        (issued,) = await server.wait_event("acme.issued", timeout=60)
        lifetime = datetime.datetime.fromisoformat(issued["not_after"]).timestamp() - issued["ts"]
        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0
        state = acme_state(tmp_path / "state")
        assert any(name.endswith("account.key") for name in state), state

        # Restarted so that the certificate is due 20 hours from now: loaded from disk, nothing ordered.
        server = await acme_server(pierce, tmp_path, clock, ca, ports, lifetime - 20 * HOUR)
        await server.wait_event("acme.loaded")
        assert acme_state(tmp_path / "state") == state

        for n, offset in enumerate((5 * HOUR, -5 * HOUR), start=1):
            clock.set(offset)
            # A new name wakes the renewal loop, which looks at every certificate with this clock.
            await https_auto_client(pierce, tmp_path, clock, ports[2], f"n{n}")
            await server.wait_event(
                "acme.issued", lambda e, n=n: e["names"] == [f"n{n}.example.com"], timeout=60
            )
            assert server.matching("acme.order", lambda e: e["reason"] == "renewal") == []
        clock.set(25 * HOUR)
        await https_auto_client(pierce, tmp_path, clock, ports[2], "late")
        (renewal,) = await server.wait_event(
            "acme.issued", lambda e: e["names"] == ["a.example.com"], timeout=60
        )
        assert renewal["replaced"] == issued["serial"]
        await server.wait_event("acme.renew_margin", lambda e: e["names"] == ["a.example.com"])
        await server.wait_event("acme.issued", lambda e: e["names"] == ["late.example.com"], timeout=60)
        orders = server.matching("acme.order", lambda e: e["names"] == ["a.example.com"])
        assert {o["reason"] for o in orders} == {"renewal"}, orders
        # One renewal: an order that failed (a busy machine's timeout) is retried, nothing more.
        failed = server.matching("acme.failed", lambda e: e["names"] == ["a.example.com"])
        assert len(orders) == 1 + len(failed), (orders, failed)
        issued_again = server.matching("acme.issued", lambda e: e["names"] == ["a.example.com"])
        assert len(issued_again) == 1, issued_again
