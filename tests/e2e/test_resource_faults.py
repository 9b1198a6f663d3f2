"""Resource faults: the process runs out of file descriptors, the disk under the state directory is full,
a certificate file is gone or garbage at reload. Each is a clear log line and a process that keeps
serving what it can: no exit, no crash loop; once the resource is back, verified transfers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.procs import PierceProcess
from support.streams import MiB, echo, free_port, tcp_server
from support.tunnel import TOKEN, StartPierce, client_config, start_client, start_server, write_toml
from test_tunnel_restart import Rig, verified_echo
from test_tunnel_tcp import tcp_proxy

#: Descriptors the server may open (soft and hard: pierce lifts its soft limit to the hard one).
FD_LIMIT = 64
#: Visitors held open at once: more than the server has descriptors for.
HOGS = 3 * FD_LIMIT


async def echo_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """`verified_echo`'s protocol: the first line is the command."""
    await reader.readline()
    await echo(reader, writer)


async def hold_connections(port: int, count: int) -> list[asyncio.StreamWriter]:
    """Open ``count`` connections to ``port`` and keep them open (those reset at once, turned away by
    the other side before the connect completed here, are left out)."""
    held = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionResetError:
            continue
        held.append(writer)
    return held


def one_line_per_pause(events: list[dict], rule: str) -> list[str]:
    """The accept errors and resumptions of listener ``rule``, in order, as "error"/"resumed"."""
    names = {"tcp.accept_error": "error", "tcp.accept_resumed": "resumed"}
    return [names[e["event"]] for e in events if e["event"] in names and e["rule"] == rule]


async def test_server_out_of_descriptors_says_so_keeps_its_clients_and_serves_again(
    pierce, tmp_path: Path
) -> None:
    public, public2, public3 = free_port(), free_port(), free_port()
    async with tcp_server(echo_service) as local:
        server, port = await start_server(
            pierce, tmp_path, prefix=("prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--")
        )
        first = [tcp_proxy("svc", local, remote_port=public)]
        client = await start_client(pierce, tmp_path, port, first)
        await client.wait_event("proxy.ready")
        # Visitors hold more connections than the server may have descriptors: it accepts what it can,
        # then says once why it stops accepting on that port.
        hogs = await hold_connections(public, HOGS)
        (failed,) = await server.wait_event("tcp.accept_error", lambda e: e["rule"] == "proxy svc")
        assert "Too many open files" in failed["msg"] and f"may open {FD_LIMIT}" in failed["msg"], failed
        # A proxy the logged-in client adds now (a reload) cannot get a port: refused with the reason, and
        # asked for again by the client.
        client_config(tmp_path, port, [*first, tcp_proxy("svc3", local, remote_port=public3)])
        client.proc.send_signal(signal.SIGHUP)
        (refused,) = await client.wait_event("proxy.refused", lambda e: e["proxy"] == "svc3")
        assert "Too many open files" in refused["error"], refused
        await client.wait_event("proxy.retry", lambda e: e["proxy"] == "svc3")
        # A client logging in meanwhile waits in the control port's backlog...
        late = await start_client(
            pierce, tmp_path, port, [tcp_proxy("svc2", local, remote_port=public2)], name="late"
        )
        await server.wait_event("tcp.accept_error", lambda e: e["rule"] == "control")
        for writer in hogs:
            writer.close()
        # ... and is let in once descriptors are free again, as are new visitors of the first client.
        await server.wait_event("tcp.accept_resumed", lambda e: e["rule"] == "control")
        # (its proxy is opened, or refused while the server is still short of descriptors, saying so, and
        # asked for again until it opens)
        await late.wait_event("proxy.ready", timeout=60)
        for refused in late.matching("proxy.refused"):
            assert "Too many open files" in refused["error"], refused
        assert len(late.matching("proxy.retry")) == len(late.matching("proxy.refused"))
        await client.wait_event("proxy.ready", lambda e: e["proxy"] == "svc3", timeout=60)
        await verified_echo(public, MiB + 3, 31)
        await verified_echo(public2, MiB + 5, 32)
        await verified_echo(public3, MiB + 7, 33)
        for rule in ("proxy svc", "control"):
            lines = one_line_per_pause(server.events, rule)
            assert lines[:2] == ["error", "resumed"], (rule, lines)
            assert all(a != b for a, b in itertools.pairwise(lines)), (rule, lines)
        assert client.matching("client.disconnected") == []
        assert server.proc.returncode is None


async def test_client_out_of_descriptors_refuses_what_it_cannot_carry_and_serves_again(
    pierce, tmp_path: Path
) -> None:
    public = free_port()
    async with tcp_server(echo_service) as local:
        _, port = await start_server(pierce, tmp_path)
        client = await start_client(
            pierce,
            tmp_path,
            port,
            [tcp_proxy("svc", local, remote_port=public)],
            prefix=("prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"),
        )
        await client.wait_event("proxy.ready")
        hogs = await hold_connections(public, HOGS)
        # Visitors arrive faster than the client has descriptors for their service connections: each one
        # it cannot carry is closed and said why, and the client stays logged in.
        (failed, *_) = await client.wait_event("proxy.local_failed")
        assert "Too many open files" in failed["error"] and f"may open {FD_LIMIT}" in failed["error"], failed
        for writer in hogs:
            writer.close()
        # Every visitor was either turned away or relayed and closed: the descriptors are free again.
        ended = ("proxy.local_failed", "proxy.conn_close")
        await client.wait_until(lambda: sum(len(client.matching(name)) for name in ended) >= HOGS)
        await verified_echo(public, MiB + 3, 33)
        # Nothing escaped as an unhandled error (asyncio prints those as plain lines).
        assert not [line for line in client.other_lines if "Traceback" in line or "never retrieved" in line]
        assert client.matching("client.disconnected") == []
        assert client.proc.returncode is None


@contextlib.contextmanager
def small_disk(path: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (this machine's tests run as root), unmounted at the end
    whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    """Write to ``disk`` until it is full."""
    block = b"\0" * 65536
    with (disk / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    small = disk / "filler-tail"
    with small.open("wb", buffering=0) as f, contextlib.suppress(OSError):  # the last partial block
        while True:
            f.write(b"\0" * 512)
    with pytest.raises(OSError):
        (disk / "probe").write_bytes(b"x" * 4096)


async def test_full_disk_under_the_state_directories(pierce, tmp_path: Path) -> None:
    """Server and client restarted on a full disk that holds their state keep serving (they only read it
    then); a client meeting a new server on it serves too, saying the pin could not be saved."""
    with small_disk(tmp_path / "state") as disk:
        await full_disk_scenario(pierce, tmp_path, disk)


async def full_disk_scenario(pierce: StartPierce, tmp_path: Path, disk: Path) -> None:
    async with tcp_server(echo_service) as local:
        r = Rig(pierce, tmp_path, local)
        r.client_state = disk / "client"
        await r.start_server()
        client = await r.start_client(state_dir=str(r.client_state))
        await client.wait_event("proxy.ready")
        before = r.state()
        fill(disk)
        for proc in (r.server, client):
            proc.proc.send_signal(signal.SIGKILL)
            await proc.wait_exit()
        await r.start_server()
        client = await r.start_client(state_dir=str(r.client_state))
        await client.wait_event("proxy.ready")
        await verified_echo(r.public, MiB + 1, 41)
        assert r.state() == before

        # A client that meets this server for the first time cannot record its certificate: it says so
        # and serves (as ssh does), instead of refusing to log in until the disk has room.
        public = free_port()
        newcomer = await start_client(
            pierce,
            tmp_path,
            r.port,
            [tcp_proxy("svc2", local, remote_port=public)],
            name="newcomer",
            token=r.token(),
            state_dir=str(disk / "newcomer"),
        )
        (unsaved,) = await newcomer.wait_event("tls.pin_unsaved")
        assert "No space left on device" in unsaved["error"], unsaved
        await newcomer.wait_event("proxy.ready")
        await verified_echo(public, MiB + 2, 42)

        # A server that has to create its identity on the full disk cannot start: it says why and exits
        # (it cannot serve without a certificate); with room again, the same command starts.
        conf = write_toml(tmp_path / "fresh.toml", {"bind_addr": "127.0.0.1", "bind_port": 0, "token": TOKEN})
        fresh = await pierce("server", "-c", str(conf), "--state-dir", str(disk / "fresh"))
        assert await fresh.wait_exit() == 1  # a status its systemd unit does not restart on
        assert [e["msg"] for e in fresh.events if e["level"] == "error"] == [
            f"cannot write {disk / 'fresh' / 'server.key'}: No space left on device"
        ]
        (disk / "filler").unlink()
        fresh = await pierce("server", "-c", str(conf), "--state-dir", str(disk / "fresh"))
        await fresh.wait_event("server.listening")


async def test_certificate_garbage_or_gone_at_reload_and_restart(pierce, tmp_path: Path) -> None:
    """The server reads its certificate when it starts. Replaced with garbage while it runs, a SIGHUP
    (which would end an unprepared process) says nothing was reloaded and the server serves on with the
    certificate it has, to pinned clients old and new; a restart then refuses to start, naming the file,
    with a status its systemd unit does not restart on (no crash loop)."""
    async with tcp_server(echo_service) as local:
        r = Rig(pierce, tmp_path, local)
        server = await r.start_server()
        (first,) = server.matching("server.listening")
        await r.start_client()
        await r.client.wait_event("proxy.ready")
        cert = r.server_state / "server.crt"
        cert.write_bytes(b"garbage\n" * 64)
        server.proc.send_signal(signal.SIGHUP)
        await server.wait_event("server.sighup")
        public = free_port()
        pinned = await start_client(
            pierce,
            tmp_path,
            r.port,
            [tcp_proxy("svc2", local, remote_port=public)],
            name="pinned",
            token=r.token(),
            server_fingerprint=first["fingerprint"],
        )
        await pinned.wait_event("proxy.ready")
        await verified_echo(public, MiB + 4, 43)
        await verified_echo(r.public, MiB + 5, 44)
        assert server.proc.returncode is None

        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0
        restarted, rc = await start_server_expecting_exit(r)
        assert rc == 1
        assert [e["msg"] for e in restarted.events if e["level"] == "error"] == [
            f"TLS certificate {cert} is not a PEM certificate: no BEGIN CERTIFICATE block"
        ]
        # Certificate and key gone: a new identity is generated (as on a first start), and a client that
        # pinned the old one refuses it, saying so.
        cert.unlink()
        (r.server_state / "server.key").unlink()
        restarted = await r.start_server()
        (again,) = restarted.matching("server.listening")
        assert again["generated"] is True and again["fingerprint"] != first["fingerprint"]
        await pinned.wait_event("client.login_failed", lambda e: "fingerprint mismatch" in e["error"])


async def start_server_expecting_exit(r: Rig) -> tuple[PierceProcess, int]:
    conf = write_toml(
        r.tmp_path / "server.toml", {"bind_addr": "127.0.0.1", "bind_port": r.port, "token": ""}
    )
    proc = await r.pierce("server", "-c", str(conf), env={"PIERCE_STATE_DIR": str(r.tmp_path / "state")})
    return proc, await proc.wait_exit()
