"""Restarts in the middle of a transfer, one process at a time: the server (``SIGTERM`` and ``kill -9``),
the client (both), the local service, the visitor (a `pierce visit` and a plain TCP one).

Every interrupted transfer ends visibly (EOF or reset, well short of its length) with an exact prefix of
what was sent; then everything serves again without a manual step, checked with a fresh transfer verified
by SHA-256, and the state directories are byte for byte what they were (`state_files`).

The client pins the server's certificate fingerprint, so its return also proves that the restarted server
kept its identity (same state directory, same generated certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.procs import PierceProcess
from support.streams import CHUNK, MiB, echo, free_port, payload, read_digest, send_all, tcp_server
from support.tunnel import StartPierce, start_client, start_server
from test_secret_proxies import SECRET, secret_proxy, visitor_port
from test_tunnel_tcp import tcp_proxy

#: The interrupted download: this block, this many times (generated lazily, never held in memory).
BLOCK = payload(MiB, 21)
STREAM_BLOCKS = 256
#: The client's backoff is 1 s doubling to 20 s plus 20% jitter; it must be back within this.
RECONNECT_WITHIN_S = 25.0


async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``stream\\n``: send BLOCK x STREAM_BLOCKS then EOF. ``echo\\n``: echo until EOF, then half-close."""
    try:
        command = await reader.readline()
        if command == b"stream\n":
            for _ in range(STREAM_BLOCKS):
                writer.write(BLOCK)
                await writer.drain()
        elif command == b"echo\n":
            await echo(reader, writer)
            return
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def read_until_end(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    """Everything until EOF or a reset, and which of the two ended it."""
    got = bytearray()
    try:
        while chunk := await reader.read(CHUNK):
            got += chunk
    except ConnectionResetError:
        return bytes(got), "reset"
    return bytes(got), "eof"


def stream_prefix_ok(data: bytes) -> bool:
    """``data`` is exactly the start of BLOCK repeated: nothing lost, reordered or invented before the cut."""
    view = memoryview(data)
    return all(view[i : i + MiB] == BLOCK[: len(view[i : i + MiB])] for i in range(0, len(data), MiB))


def state_files(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path: a state directory to compare before and
    after a fault (certificate and key, generated token, admin token, pinned fingerprints)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


class Rig:
    """A server with a generated token, a client that pins it on first use and runs its admin API, and a
    tcp proxy to ``service`` on a fixed public port; the state directories of both."""

    def __init__(
        self, pierce: StartPierce, tmp_path: Path, local: str, extra: list[dict[str, Any]] | None = None
    ) -> None:
        self.pierce = pierce
        self.tmp_path = tmp_path
        self.local = local
        self.extra = extra or []
        self.public = free_port()
        self.admin_port = free_port()
        self.server_state = tmp_path / "state" / "server"
        self.client_state = tmp_path / "client-state" / "client"
        self.server: PierceProcess
        self.client: PierceProcess
        self.port = 0

    async def start_server(self) -> PierceProcess:
        self.server, self.port = await start_server(
            self.pierce, self.tmp_path, token="", **({"bind_port": self.port} if self.port else {})
        )
        return self.server

    def token(self) -> str:
        """The token the server generated."""
        return (self.server_state / "token").read_text().strip()

    async def start_client(self, **settings: Any) -> PierceProcess:
        token = self.token()
        self.client = await start_client(
            self.pierce,
            self.tmp_path,
            self.port,
            [tcp_proxy("svc", self.local, remote_port=self.public), *self.extra],
            token=token,
            admin_port=self.admin_port,
            **settings,
        )
        return self.client

    async def visit(self, name: str) -> PierceProcess:
        """A `pierce visit` of the secret proxy ``name`` (with the server's generated token)."""
        token = (self.server_state / "token").read_text().strip()
        server = f"127.0.0.1:{self.port}"
        return await self.pierce(
            "visit", "--server", server, "--token", token, "--name", name, "--secret", SECRET
        )

    def state(self) -> dict[str, dict[str, str]]:
        return {"server": state_files(self.server_state), "client": state_files(self.client_state)}


@contextlib.asynccontextmanager
async def rig(
    pierce: StartPierce, tmp_path: Path, local: str, extra: list[dict[str, Any]] | None = None
) -> AsyncIterator[Rig]:
    """A `Rig` whose proxies are ready on both sides; its state directories hold everything they will."""
    r = Rig(pierce, tmp_path, local, extra)
    await r.start_server()
    client = await r.start_client()
    await client.wait_event("tls.pinned")
    await client.wait_event("admin.listening")
    (ready,) = await client.wait_event("proxy.ready", lambda e: e.get("proxy") == "svc")
    assert ready["remote_port"] == r.public
    for proxy in r.extra:
        await client.wait_event("proxy.ready", lambda e, n=proxy["name"]: e.get("proxy") == n)
    assert set(r.state()["server"]) == {"token", "server.crt", "server.key"}
    assert set(r.state()["client"]) == {"known_hosts", "admin.token"}
    yield r


@contextlib.asynccontextmanager
async def within(what: str, r: Rig, seconds: float = 30) -> AsyncIterator[None]:
    """A step of a test that must end within ``seconds``; if it does not, the failure names the step and
    shows the last events of both processes (instead of a bare timeout of the whole test)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise AssertionError(
            f"{what}: not done after {seconds} s; server events {r.server.events[-12:]}; "
            f"client events {r.client.events[-12:]}"
        ) from None


async def start_download(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Ask the service through the tunnel for its stream and read the first MiB: a transfer under way
    (the rest waits in buffers, since nothing reads it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"stream\n")
    return reader, writer, await reader.readexactly(MiB)


async def finish_download(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> str:
    """Read the interrupted download to its end: it must end short, and every byte that came must be the
    right one. Returns how it ended (eof or reset)."""
    rest, ending = await read_until_end(reader)
    writer.close()
    received = head + rest
    assert len(received) < STREAM_BLOCKS * MiB, (len(received), ending)
    assert stream_prefix_ok(received), f"corrupted bytes in the first {len(received)} ({ending})"
    return ending


async def verified_echo(port: int, size: int, seed: int) -> None:
    """A fresh transfer both ways through ``port``, half-closed, checked by SHA-256."""
    data = payload(size, seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"echo\n")

    async def upload() -> None:
        await send_all(writer, data)
        writer.write_eof()

    sending = asyncio.create_task(upload())
    got = await read_digest(reader)
    await sending
    writer.close()
    assert got == (hashlib.sha256(data).hexdigest(), len(data))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_server_restarted_mid_transfer_client_returns_by_itself(
    pierce, tmp_path: Path, sig: signal.Signals
) -> None:
    async with tcp_server(service) as local, rig(pierce, tmp_path, local) as r:
        (first_start,) = r.server.matching("server.listening")
        assert first_start["generated"] is True
        before = r.state()

        # A download through the tunnel is under way (the first MiB arrived) when the server stops.
        reader, writer, head = await start_download(r.public)
        await r.server.wait_event("proxy.conn_open")
        r.server.proc.send_signal(sig)
        assert await r.server.wait_exit() == (0 if sig == signal.SIGTERM else -sig)
        # It fails visibly: the stream ends (EOF or reset) well short of its length, and what did arrive is
        # an exact prefix of what was sent.
        await finish_download(reader, writer, head)

        (gone,) = await r.client.wait_event("client.disconnected")
        # The client's side of the cut transfer says what ended it.
        (cut,) = await r.client.wait_event("proxy.conn_close")
        assert cut["error"] and cut["down_bytes"] < STREAM_BLOCKS * MiB, cut
        if sig == signal.SIGTERM:  # the server said why before it went
            assert "server shutting down" in gone["error"], gone
        # At least one attempt fails while the server is down; then it comes back on the same port.
        await r.client.wait_event("client.login_failed")
        await r.client.wait_event("client.retry", count=2)
        restarted = await r.start_server()
        (second_start,) = restarted.matching("server.listening")
        assert second_start["fingerprint"] == first_start["fingerprint"]
        assert second_start["generated"] is False

        connected = await r.client.wait_event("client.connected", count=2, timeout=RECONNECT_WITHIN_S + 5)
        assert connected[1]["ts"] - second_start["ts"] <= RECONNECT_WITHIN_S, (connected, second_start)
        ready_again = await r.client.wait_event("proxy.ready", count=2)
        assert ready_again[1]["remote_port"] == r.public
        (server_ready,) = await restarted.wait_event("proxy.ready")
        assert server_ready["remote_port"] == r.public

        # A fresh transfer on the same public port: both ways, half-closed, verified.
        size = 8 * MiB + 5
        await verified_echo(r.public, size, 22)
        (closed,) = await restarted.wait_event("proxy.conn_close")
        assert (closed["up_bytes"], closed["down_bytes"]) == (size + len(b"echo\n"), size)
        assert r.client.proc.returncode is None
        # The pinned certificate was accepted as it was: nothing in either state directory changed.
        assert r.state() == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_client_restarted_mid_transfer_serves_again_with_its_pins(
    pierce, tmp_path: Path, sig: signal.Signals
) -> None:
    async with tcp_server(service) as local, rig(pierce, tmp_path, local) as r:
        before = r.state()
        reader, writer, head = await start_download(r.public)
        await r.server.wait_event("proxy.conn_open")
        r.client.proc.send_signal(sig)
        assert await r.client.wait_exit() == (0 if sig == signal.SIGTERM else -sig)
        await finish_download(reader, writer, head)
        # The server sees the client go and frees its proxy (the port stays claimed for its user).
        await r.server.wait_event("client.gone")
        (closed,) = await r.server.wait_event("proxy.closed")
        assert closed["proxy"] == "svc"
        (cut,) = await r.server.wait_event("proxy.conn_close")
        assert cut["down_bytes"] < STREAM_BLOCKS * MiB
        assert cut["error"], cut  # "proxy 'svc' closed", "multiplexed connection ended: ..."

        # The same client, started again with the same state directory: it trusts the server it pinned
        # (no new pin), keeps its admin token, and gets its public port back.
        client = await r.start_client()
        (ready,) = await client.wait_event("proxy.ready")
        assert ready["remote_port"] == r.public
        await client.wait_event("admin.listening")
        assert client.matching("tls.pinned") == []
        await verified_echo(r.public, 4 * MiB + 3, 23)
        assert r.state() == before
        assert r.server.proc.returncode is None


class Service:
    """The local service of `service`'s protocol on a fixed port, which a test stops (every connection
    reset) and starts again; each connection's end (``done`` / the error) goes to `ended`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.ended: asyncio.Queue[str] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            command = await reader.readline()
            if command == b"stream\n":
                for _ in range(STREAM_BLOCKS):
                    writer.write(BLOCK)
                    await writer.drain()
            elif command == b"echo\n":
                while data := await reader.read(CHUNK):
                    writer.write(data)
                    await writer.drain()
            writer.write_eof()
            await writer.drain()
            self.ended.put_nowait("done")
        except ConnectionError as exc:
            self.ended.put_nowait(type(exc).__name__)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        """Crash: stop listening and reset every connection."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None


@contextlib.asynccontextmanager
async def restartable_service(svc: Service | None = None) -> AsyncIterator[Service]:
    svc = svc or Service()
    await svc.start()
    try:
        yield svc
    finally:
        if svc._server is not None:
            await svc.stop()


async def test_local_service_restarted_mid_transfer_serves_again_without_pierce_restarts(
    pierce, tmp_path: Path
) -> None:
    async with restartable_service() as svc, rig(pierce, tmp_path, f"127.0.0.1:{svc.port}") as r:
        before = r.state()
        reader, writer, head = await start_download(r.public)
        await r.server.wait_event("proxy.conn_open")
        await svc.stop()
        async with within("the service's end of the cut download", r):
            assert await svc.ended.get() == "ConnectionResetError"
        async with within("the visitor's end of the cut download", r):
            await finish_download(reader, writer, head)
        (cut,) = await r.server.wait_event("proxy.conn_close")
        assert cut["down_bytes"] < STREAM_BLOCKS * MiB
        (ccut,) = await r.client.wait_event("proxy.conn_close")
        assert cut["error"] and "reset" in ccut["error"], (cut, ccut)  # each side says why it ended

        # While the service is down a visitor is turned away at once (the client says why), and the
        # tunnel stays up.
        async with within("a visitor turned away while the service is down", r):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", r.public)
            except ConnectionResetError:  # reset before the connect completed here: turned away too
                pass
            else:
                writer.write(b"echo\n")
                got, _ = await read_until_end(reader)
                writer.close()
                assert got == b""
        (failed,) = await r.client.wait_event("proxy.local_failed")
        assert failed["proxy"] == "svc" and failed["error"], failed

        await svc.start()
        async with within("a verified transfer after the service's restart", r):
            await verified_echo(r.public, 4 * MiB + 1, 24)
            assert await svc.ended.get() == "done"
        assert len(r.client.matching("client.connected")) == 1  # never reconnected
        assert r.state() == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_visitors_killed_mid_transfer_leave_the_service_and_tunnel_serving(
    pierce, tmp_path: Path, sig: signal.Signals
) -> None:
    """A plain TCP visitor that resets its connection, and a `pierce visit` stopped (``SIGTERM``) or
    killed (``kill -9``): the service's connection ends each time, and the next visitor is served,
    verified."""
    svc = Service()
    secret = secret_proxy("stcp", "files", f"127.0.0.1:{svc.port}")
    async with restartable_service(svc), rig(pierce, tmp_path, f"127.0.0.1:{svc.port}", [secret]) as r:
        before = r.state()
        reader, writer, _ = await start_download(r.public)
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.transport.abort()
        assert await svc.ended.get() in ("ConnectionResetError", "BrokenPipeError")
        (cut,) = await r.server.wait_event("proxy.conn_close")
        assert cut["down_bytes"] < STREAM_BLOCKS * MiB
        (ccut,) = await r.client.wait_event("proxy.conn_close")
        assert "reset" in cut["error"] and ccut["error"], (cut, ccut)
        await verified_echo(r.public, 2 * MiB + 7, 25)
        assert await svc.ended.get() == "done"

        # The secret proxy of the same client, visited through `pierce visit`.
        visitor = await r.visit("files")
        port = await visitor_port(visitor)
        reader, writer, head = await start_download(port)
        await r.client.wait_event("proxy.conn_open", lambda e: e.get("proxy") == "files")
        visitor.proc.send_signal(sig)
        assert await visitor.wait_exit() == (0 if sig == signal.SIGTERM else -sig)
        await finish_download(reader, writer, head)
        assert await svc.ended.get() in ("ConnectionResetError", "BrokenPipeError")
        (cut,) = await r.client.wait_event("proxy.conn_close", lambda e: e.get("proxy") == "files")
        assert cut["down_bytes"] < STREAM_BLOCKS * MiB
        scut = await r.server.wait_event("proxy.conn_close", lambda e: e.get("proxy") == "files")
        assert cut["error"] and all(c["error"] for c in scut), (cut, scut)

        again = await r.visit("files")
        await verified_echo(await visitor_port(again), 4 * MiB + 9, 26)
        assert await svc.ended.get() == "done"
        assert len(r.client.matching("client.connected")) == 1
        assert r.state() == before
