"""Reverse tunnels with real `pierce server` and `pierce client` processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.streams import (
    CHUNK,
    MiB,
    duplex_service,
    duplex_visit,
    echo,
    free_port,
    payload,
    send_all,
    tcp_server,
)
from support.tunnel import TOKEN, start_client, start_server, write_toml

from pierce.client.app import TRIM_AFTER
from pierce.protocol import (
    PROTOCOL_VERSION,
    Challenge,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    Role,
    encode_frame,
)
from pierce.protocol.pake import PakeClient


def tcp_proxy(name: str, local: str, remote_port: int = 0) -> dict[str, object]:
    host, _, port = local.rpartition(":")
    return {
        "type": "tcp",
        "name": name,
        "local_ip": host,
        "local_port": int(port),
        "remote_port": remote_port,
    }


async def proxy_port(client, name: str) -> int:
    (ready,) = await client.wait_event("proxy.ready", lambda e: e.get("proxy") == name)
    return int(ready["remote_port"])


@pytest.mark.parametrize("encrypt", [True, False], ids=["tls-data", "plain-data"])
async def test_64mib_both_ways_with_half_close(pierce, tmp_path: Path, encrypt: bool) -> None:
    size = 64 * MiB
    down, up = payload(size, 11), payload(size, 12)
    service, server_got = duplex_service(down)
    async with tcp_server(service) as local:
        transport = {"encrypt_data": encrypt}
        server, port = await start_server(pierce, tmp_path, transport=transport)
        client = await start_client(pierce, tmp_path, port, [tcp_proxy("svc", local)], transport=transport)
        public = await proxy_port(client, "svc")
        got_down = await duplex_visit("127.0.0.1", public, up)
        got_up = await server_got
    assert got_up == (hashlib.sha256(up).hexdigest(), size)
    assert got_down == (hashlib.sha256(down).hexdigest(), size)
    (closed,) = await server.wait_event("proxy.conn_close")
    assert (closed["up_bytes"], closed["down_bytes"]) == (size, size)


async def test_a_multiplexed_connection_outlives_the_login_deadline(pierce, tmp_path: Path) -> None:
    """The login deadline bounds strangers only: once the multiplexed connection logged in, its streams
    serve visitors long after ``login_timeout_s``."""
    async with tcp_server(echo) as local:
        server, port = await start_server(pierce, tmp_path, login_timeout_s=1)
        client = await start_client(pierce, tmp_path, port, [tcp_proxy("echo", local)])
        public = await proxy_port(client, "echo")
        (joined,) = await server.wait_event("work.mux_joined")
        await asyncio.sleep(2.5)  # the time itself is the point: past the deadline of that connection
        for i in range(3):
            data = payload(200_000 + i, 40 + i)
            reader, writer = await asyncio.open_connection("127.0.0.1", public)
            await send_all(writer, data)
            writer.write_eof()
            back = await reader.read(-1)
            writer.close()
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert server.matching("work.mux_joined") == [joined]  # the same connection carried them


async def test_a_failed_pool_dial_is_tried_again_before_any_visitor_asks(pierce, tmp_path: Path) -> None:
    """The client reaches the server through a forwarder that resets the second connection, the
    multiplexed one that fills the pool, as its TLS starts: the client dials again after a short wait, so
    the pool fills without a visitor having to find it empty first."""
    server, port = await start_server(pierce, tmp_path)
    arrived = 0

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(CHUNK):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async with tcp_server(forward) as front, tcp_server(echo) as local:
        front_port = int(front.rpartition(":")[2])
        client = await start_client(pierce, tmp_path, front_port, [tcp_proxy("echo", local)])
        await proxy_port(client, "echo")
        await server.wait_event("work.mux_joined")
        assert arrived == 3  # control, the reset dial, the dial again (no visitor came)


@pytest.mark.parametrize("encrypt", [True, False], ids=["tls-data", "plain-data"])
async def test_a_service_reset_reaches_the_visitor_as_a_reset(pierce, tmp_path: Path, encrypt: bool) -> None:
    """The service sends 1 MiB and then resets: the visitor reads what came and then an error, never an
    orderly end (which would make a truncated download look complete)."""
    sent = payload(MiB, 21)

    async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await send_all(writer, sent)
        await reader.read(1)  # the visitor's byte: what was sent before it has been read by the tunnel
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with tcp_server(resetting) as local:
        transport = {"encrypt_data": encrypt}
        _, port = await start_server(pierce, tmp_path, transport=transport)
        client = await start_client(pierce, tmp_path, port, [tcp_proxy("svc", local)], transport=transport)
        public = await proxy_port(client, "svc")
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        got = await reader.readexactly(len(sent))
        writer.write(b"!")
        with pytest.raises(ConnectionResetError):
            while await reader.read(65536):
                pass
        writer.close()
    assert got == sent


async def test_100_concurrent_visitors_and_server_picked_port(pierce, tmp_path: Path) -> None:
    async with tcp_server(echo) as local:
        _, port = await start_server(pierce, tmp_path)
        client = await start_client(pierce, tmp_path, port, [tcp_proxy("echo", local, remote_port=0)])
        public = await proxy_port(client, "echo")
        assert public > 0

        async def visit(i: int) -> bool:
            data = payload(32 * 1024 + i, 500 + i)
            reader, writer = await asyncio.open_connection("127.0.0.1", public)
            await send_all(writer, data)
            writer.write_eof()
            back = await reader.read(-1)
            writer.close()
            return back == data

        results = await asyncio.gather(*(visit(i) for i in range(100)))
    assert results.count(True) == 100


@pytest.mark.parametrize(
    ("client_mux", "server_mux"),
    [(False, True), (True, True), (True, False)],
    ids=["client-off", "multiplexed", "server-off"],
)
async def test_tls_work_connections_are_reused_after_clean_visits(
    pierce, tmp_path: Path, client_mux: bool, server_mux: bool
) -> None:
    """Sequential visitors share a few TLS work connections (no handshake each), or, when both ends have
    tcp_mux on, each gets a stream of one multiplexed TLS connection; bytes intact; a visitor that
    resets mid-transfer poisons nothing: its connection (stream) is dropped, the next visitors verify."""
    mux = client_mux and server_mux
    async with tcp_server(echo) as local:
        server, port = await start_server(pierce, tmp_path, transport={"tcp_mux": server_mux})
        client = await start_client(
            pierce, tmp_path, port, [tcp_proxy("echo", local)], transport={"tcp_mux": client_mux}
        )
        public = await proxy_port(client, "echo")

        async def visit(i: int) -> None:
            data = payload(64 * 1024 + i, 900 + i)
            reader, writer = await asyncio.open_connection("127.0.0.1", public)
            await send_all(writer, data)
            writer.write_eof()
            back = await reader.read(-1)
            writer.close()
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest(), f"visit {i}"

        async def reset_midway() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", public)
            await send_all(writer, payload(CHUNK, 77))
            await reader.readexactly(1024)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()

        for i in range(10):
            await visit(i)
        await reset_midway()
        for i in range(10, 20):
            await visit(i)
        opened = await server.wait_event("proxy.conn_open", count=21)
        closed = await server.wait_event("proxy.conn_close", count=21)
        joined = server.matching("work.mux_joined")
    serials = [e["work_conn"] for e in opened]
    if mux:
        assert len(joined) == 1  # one TLS connection carried every visitor
        assert len(set(serials)) == 21  # a fresh stream each
    else:
        assert not joined
        assert len(set(serials)) <= 8, serials  # pool_count 4 (+ refills), not one per visitor
    assert sum(1 for e in closed if e.get("error")) == 1


async def test_port_outside_allow_ports_is_refused_with_reason(pierce, tmp_path: Path) -> None:
    free = free_port()
    allowed = f"{free}-{free}"
    _, port = await start_server(pierce, tmp_path, allow_ports=[allowed])
    outside = free - 1 if free > 1024 else free + 1
    client = await start_client(
        pierce,
        tmp_path,
        port,
        [tcp_proxy("bad", "127.0.0.1:9", outside), tcp_proxy("good", "127.0.0.1:9", 0)],
    )
    (refused,) = await client.wait_event("proxy.refused", lambda e: e.get("proxy") == "bad")
    assert f"port {outside} is not allowed (allow_ports: {free})" in refused["error"]
    assert await proxy_port(client, "good") == free  # 0 = the server picks from allow_ports


async def test_wrong_token_is_refused_on_both_ends(pierce, tmp_path: Path) -> None:
    server, port = await start_server(pierce, tmp_path)
    client = await start_client(
        pierce, tmp_path, port, [tcp_proxy("x", "127.0.0.1:9")], token="not-the-token"
    )
    (failed,) = await client.wait_event("client.login_failed")
    assert "authentication failed" in failed["msg"]
    (logged,) = await server.wait_event("auth.failed")
    assert logged["peer"].startswith("127.0.0.1:")
    assert server.matching("proxy.ready") == []


async def test_duplicate_proxy_name_from_another_client(pierce, tmp_path: Path) -> None:
    _, port = await start_server(pierce, tmp_path)
    first = await start_client(pierce, tmp_path, port, [tcp_proxy("web", "127.0.0.1:9")], name="one")
    await proxy_port(first, "web")
    second = await start_client(pierce, tmp_path, port, [tcp_proxy("web", "127.0.0.1:9")], name="two")
    (refused,) = await second.wait_event("proxy.refused")
    # Refusals never name who holds a thing, not even another client of the same user.
    assert "is used by another client" in refused["error"] and "one" not in refused["error"]


async def test_encrypt_data_mismatch_is_named_on_both_ends(pierce, tmp_path: Path) -> None:
    server, port = await start_server(pierce, tmp_path)  # encrypt_data = true (default)
    client = await start_client(pierce, tmp_path, port, [], transport={"encrypt_data": False})
    (failed,) = await client.wait_event("client.login_failed")
    assert "transport.encrypt_data differs" in failed["error"]
    (refused,) = await server.wait_event("login.refused")
    assert "transport.encrypt_data differs" in refused["error"]


async def test_local_service_refused_keeps_proxy_up(pierce, tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    _, port = await start_server(pierce, tmp_path)
    client = await start_client(pierce, tmp_path, port, [tcp_proxy("dead", f"127.0.0.1:{dead}")])
    public = await proxy_port(client, "dead")
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        with contextlib.suppress(ConnectionError):
            assert await reader.read(-1) == b""
        writer.close()
    failures = await client.wait_event("proxy.local_failed", count=2)
    assert all("refused" in f["error"].lower() for f in failures)
    assert client.proc.returncode is None


async def raw_login(port: int, hello: Hello) -> list[object]:
    """Speak the protocol by hand over TLS; return what the server answers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.write(encode_frame(hello))
    await writer.drain()
    decoder = FrameDecoder()
    out: list[object] = []
    while chunk := await reader.read(CHUNK):
        out.extend(decoder.feed(chunk))
        if out:
            break
    writer.close()
    return out


async def test_version_mismatch_is_named(pierce, tmp_path: Path) -> None:
    server, port = await start_server(pierce, tmp_path)
    answer = await raw_login(
        port, Hello(version=PROTOCOL_VERSION + 1, features=frozenset(), client_id="future", role=Role.CONTROL)
    )
    assert isinstance(answer[0], Error)
    assert answer[0].code is ErrorCode.VERSION_MISMATCH
    assert f"client speaks pierce protocol {PROTOCOL_VERSION + 1}" in answer[0].reason
    await server.wait_event("login.refused", lambda e: "protocol" in e["error"])
    ok = await raw_login(
        port,
        Hello(
            version=PROTOCOL_VERSION,
            features=frozenset({"encrypt_data"}),
            client_id="c",
            role=Role.CONTROL,
            pake=PakeClient("default", TOKEN).public,
        ),
    )
    assert isinstance(ok[0], Challenge)


async def test_garbage_and_oversized_frames_do_not_hurt_the_server(pierce, tmp_path: Path) -> None:
    server, port = await start_server(pierce, tmp_path)
    for junk in (b"\x00\x00\x00\x05hello", b"\xff\xff\xff\xff" + b"x" * 100, b"GET / HTTP/1.1\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(junk)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read(-1)
        writer.close()
    await server.wait_event("login.failed", count=3)
    async with tcp_server(echo) as local:
        client = await start_client(pierce, tmp_path, port, [tcp_proxy("echo", local)])
        public = await proxy_port(client, "echo")
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"still fine")
        writer.write_eof()
        assert await reader.read(-1) == b"still fine"
        writer.close()


async def test_man_in_the_middle_is_detected_without_pinning(pierce, tmp_path: Path) -> None:
    """A TLS-terminating relay with its own certificate: the right token still cannot log in through it."""
    from pierce.tls import ensure_server_certificate, server_context

    _, port = await start_server(pierce, tmp_path)
    mitm_cert = ensure_server_certificate(tmp_path / "mitm")
    upstream_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    upstream_ctx.check_hostname = False
    upstream_ctx.verify_mode = ssl.CERT_NONE

    async def mitm(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port, ssl=upstream_ctx)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(CHUNK):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    relay = await asyncio.start_server(mitm, "127.0.0.1", 0, ssl=server_context(mitm_cert))
    try:
        mitm_port = relay.sockets[0].getsockname()[1]
        client = await start_client(pierce, tmp_path, mitm_port, [tcp_proxy("x", "127.0.0.1:9")], token=TOKEN)
        (failed,) = await client.wait_event("client.login_failed")
        assert "man in the middle" in failed["error"]
        assert client.matching("client.connected") == []
    finally:
        relay.close()


async def test_the_client_hands_freed_memory_back_after_a_run_of_visitors(pierce, tmp_path: Path) -> None:
    """After every 32 visitor connections that ended, the client gives its heap's free pages back to the
    system (`pierce.client.app.TRIM_AFTER`): the allocator keeps freed blocks for speed, and a client
    under steady churn would otherwise creep up to its heap's high-water mark (bench/soak.py)."""
    async with tcp_server(echo) as local:
        _server, port = await start_server(pierce, tmp_path)
        conf = write_toml(
            tmp_path / "client.toml",
            {
                "server_addr": "127.0.0.1",
                "server_port": port,
                "token": TOKEN,
                "client_id": "churn",
                "proxies": [tcp_proxy("echo", local)],
            },
        )
        client = await pierce(
            "--log-level", "debug", "client", "-c", str(conf), env={"PIERCE_STATE_DIR": str(tmp_path / "c")}
        )
        public = await proxy_port(client, "echo")
        for i in range(TRIM_AFTER):
            reader, writer = await asyncio.open_connection("127.0.0.1", public)
            writer.write(b"visitor %d" % i)
            writer.write_eof()
            assert await reader.read() == b"visitor %d" % i
            writer.close()
            await writer.wait_closed()
        (released,) = await client.wait_event("client.memory_released")
        assert released["ended"] >= TRIM_AFTER
        # And it serves on.
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"after")
        writer.write_eof()
        assert await reader.read() == b"after"
        writer.close()


@contextlib.contextmanager
def dropped(port: int) -> Iterator[None]:
    """Loopback TCP packets to ``port`` vanish (as to a host that lost power) while the block runs."""
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
    subprocess.run(["iptables", "-w", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=False)


needs_iptables = pytest.mark.skipif(
    shutil.which("iptables") is None or os.geteuid() != 0, reason="needs iptables and root"
)


@needs_iptables
async def test_a_service_or_visitor_that_vanishes_silently_is_dropped_by_keepalive(
    pierce, tmp_path: Path
) -> None:
    """A peer that vanishes without a FIN or a reset (its packets dropped, as a host that lost power)
    does not hold its relay for ever: keepalive probes go unanswered and the connection ends with an
    error. The service vanishes: the client ends the connection and the visitor reads a reset. The
    visitor vanishes: the server ends its connection. (Keepalive shortened by PIERCE_TCP_KEEPALIVE.)"""
    fast = {"PIERCE_TCP_KEEPALIVE": "1,1,2"}
    async with tcp_server(echo) as local:
        server, port = await start_server(pierce, tmp_path, env=fast)
        client = await start_client(pierce, tmp_path, port, [tcp_proxy("svc", local)], env=fast)
        public = await proxy_port(client, "svc")

        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        with dropped(int(local.rpartition(":")[2])):
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(30):
                    await reader.read(1)
            (closed,) = await client.wait_event("proxy.conn_close", timeout=30)
        writer.close()
        assert "error" in closed and (closed["up_bytes"], closed["down_bytes"]) == (5, 5)

        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"again")
        assert await reader.readexactly(5) == b"again"
        visitor_port = writer.get_extra_info("sockname")[1]
        with dropped(visitor_port):
            (gone,) = await server.wait_event(
                "proxy.conn_close", lambda e: e["visitor"].endswith(f":{visitor_port}"), timeout=30
            )
        writer.close()
        assert "error" in gone and (gone["up_bytes"], gone["down_bytes"]) == (5, 5)
