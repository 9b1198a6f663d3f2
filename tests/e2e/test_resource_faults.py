"""Resource faults: the process runs out of file descriptors, the disk under the state directory is full,
a certificate file is gone or garbage at reload. Each is a clear log line and a process that keeps
serving what it can: no exit, no crash loop; once the resource is back, verified transfers again.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from support.streams import MiB, echo, free_port, tcp_server
from support.tunnel import start_client, start_server
from test_tunnel_restart import verified_echo
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
    public, public2 = free_port(), free_port()
    async with tcp_server(echo_service) as local:
        server, port = await start_server(
            pierce, tmp_path, prefix=("prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--")
        )
        client = await start_client(pierce, tmp_path, port, [tcp_proxy("svc", local, remote_port=public)])
        await client.wait_event("proxy.ready")
        # Visitors hold more connections than the server may have descriptors: it accepts what it can,
        # then says once why it stops accepting on that port.
        hogs = await hold_connections(public, HOGS)
        (failed,) = await server.wait_event("tcp.accept_error", lambda e: e["rule"] == "proxy svc")
        assert "Too many open files" in failed["msg"] and f"may open {FD_LIMIT}" in failed["msg"], failed
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
        await verified_echo(public, MiB + 3, 31)
        await verified_echo(public2, MiB + 5, 32)
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
