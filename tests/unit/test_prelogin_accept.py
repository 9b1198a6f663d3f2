"""The server's accept path for strangers, in process over loopback: every socket is closed once, by its
one owner, after the loop has stopped watching it; a stranger's TLS bytes wait in small buffers that
grow only after login."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from pierce.config import ServerConfig
from pierce.protocol import MAX_FRAME_SIZE, FrameDecoder
from pierce.server.admission import Ticket
from pierce.server.app import Server
from pierce.tls import ensure_server_certificate, server_context
from pierce.transport import (
    PRE_LOGIN_STREAM_LIMIT,
    PRE_LOGIN_TLS_BUFFER,
    STREAM_LIMIT,
    MessageChannel,
    accept_tls,
)

ANY_CERT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ANY_CERT.check_hostname = False
ANY_CERT.verify_mode = ssl.CERT_NONE
LOGIN_TIMEOUT = 0.3


#: Both loops the server runs on (uvloop when installed): they take sockets over differently.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run(loop: str, main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main)


class WatchedSocket(socket.socket):
    """Notes every close of the descriptor by Python code after the event loop took it over: asyncio
    still watching it (its transport would act on a number the next connection may get), or uvloop
    holding it (libuv closes it itself, later: a second close)."""

    def __init__(self, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self.under_the_loop: list[str] = []

    def close(self) -> None:
        fd = self.fileno()
        try:
            selector = getattr(asyncio.get_running_loop(), "_selector", None)
        except RuntimeError:  # closed by a finalizer, after the loop: the test has failed already
            selector = None
        if fd >= 0 and selector is not None and fd in selector.get_map():
            self.under_the_loop.append("asyncio still watches it")
        if fd >= 0 and self._io_refs > 0:  # type: ignore[attr-defined]
            self.under_the_loop.append("uvloop owns it")
        super().close()


@contextlib.contextmanager
def listening() -> Iterator[socket.socket]:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        lsock.setblocking(False)
        yield lsock


async def accepted(lsock: socket.socket) -> tuple[WatchedSocket, Any]:
    conn, addr = await asyncio.get_running_loop().sock_accept(lsock)
    sock = WatchedSocket(conn.detach())
    sock.setblocking(False)
    return sock, addr


def make_server(tmp_path: Path) -> Server:
    srv = Server(
        ServerConfig(
            token="t",
            allow_weak_token=True,
            login_timeout_s=LOGIN_TIMEOUT,
            stun_port=0,
            state_dir=str(tmp_path),
        )
    )
    srv.certificate = ensure_server_certificate(tmp_path)
    srv._ssl = server_context(srv.certificate)
    return srv


async def stranger(port: int, kind: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    tls = kind.startswith("tls-") and kind != "tls-stall"
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ANY_CERT if tls else None, server_hostname="" if tls else None
    )
    writer.write(
        {
            "tls-giant": b"\xff\xff\xff\xff" + bytes(8192),
            "tls-stall": b"\x16",
            "plain-garbage": b"GET / HTTP/1.1\r\n\r\n",
        }.get(kind, b"")
    )
    return reader, writer


async def closed(sock: WatchedSocket) -> None:
    """Wait for the close (a transport closes, or uvloop detaches the socket, on a later loop
    iteration), a few at most."""
    for _ in range(20):
        if sock.fileno() < 0:
            return
        await asyncio.sleep(0)
    raise AssertionError("still open")


KINDS = ["tls-silent", "tls-giant", "tls-stall", "plain-silent", "plain-garbage", "plain-gone"]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_stranger_is_closed_once_by_its_owner(tmp_path: Path, loop: str, kind: str) -> None:
    with listening() as lsock:
        run(loop, failed_stranger(make_server(tmp_path), lsock, kind))


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_stranger_leaves_no_reference_cycle(tmp_path: Path, kind: str) -> None:
    """Its objects go when it does: a cycle would keep its buffers until a full collection, and a
    storm of strangers would pile them up."""
    server = make_server(tmp_path)
    gc.collect()
    gc.disable()
    try:
        with listening() as lsock:
            run("uvloop", failed_stranger(server, lsock, kind))
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kept = [type(o).__name__ for o in gc.garbage if isinstance(o, Ticket | MessageChannel | FrameDecoder)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert kept == []


async def failed_stranger(server: Server, lsock: socket.socket, kind: str) -> None:
    peer = asyncio.create_task(stranger(lsock.getsockname()[1], kind))
    sock, addr = await accepted(lsock)
    if kind == "plain-gone":
        (await peer)[1].close()
    async with asyncio.timeout(LOGIN_TIMEOUT + 2):
        await server._accept(sock, addr)
    _, writer = await peer
    await closed(sock)
    assert sock.under_the_loop == []  # closed by its owner alone
    assert server.admission.pending == 0
    writer.transport.abort()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stranger_cut_off_by_shutdown_is_closed_once_by_its_owner(tmp_path: Path, loop: str) -> None:
    with listening() as lsock:
        run(loop, stranger_cut_off(make_server(tmp_path), lsock))


async def stranger_cut_off(server: Server, lsock: socket.socket) -> None:
    peer = asyncio.create_task(stranger(lsock.getsockname()[1], "tls-silent"))
    sock, addr = await accepted(lsock)
    task = asyncio.create_task(server._accept(sock, addr))
    _, writer = await peer  # TLS is up: the login has started
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await closed(sock)
    assert sock.under_the_loop == []
    assert server.admission.pending == 0
    writer.transport.abort()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_strangers_tls_bytes_wait_in_small_buffers_until_login(tmp_path: Path, loop: str) -> None:
    with listening() as lsock:
        run(loop, small_buffers(make_server(tmp_path), lsock))


async def small_buffers(server: Server, lsock: socket.socket) -> None:
    peer = asyncio.create_task(stranger(lsock.getsockname()[1], "tls-silent"))
    sock, _ = await accepted(lsock)
    assert server._ssl is not None
    channel = await accept_tls(sock, server._ssl, handshake_timeout=5)
    _, writer = await peer
    writer.write(bytes(4 * 1024 * 1024))  # far more than any buffer may take; nobody reads it
    sending = asyncio.create_task(writer.drain())
    held = 0
    for _ in range(50):  # until the flood has filled what it can
        await asyncio.sleep(0.01)
        decrypted = len(channel.reader._buffer)  # type: ignore[attr-defined]
        held = decrypted + channel.writer.transport.get_read_buffer_size()  # type: ignore[attr-defined]
    # The reader stops the TLS layer past twice its limit, the TLS layer stops reading the socket past
    # its own; each may overshoot by what one socket read brought (at most 256 KiB).
    one_read = 256 * 1024
    assert held <= 2 * PRE_LOGIN_STREAM_LIMIT + PRE_LOGIN_TLS_BUFFER + 2 * one_read, held

    logged_in: list[str] = []
    channel.on_login(lambda: logged_in.append("first"))
    channel.max_frame_size = MAX_FRAME_SIZE  # what the handshake does once the proof checks out
    channel.on_login(lambda: logged_in.append("late"))
    assert logged_in == ["first", "late"]
    assert channel.reader._limit == STREAM_LIMIT  # type: ignore[attr-defined]
    assert channel.writer.transport.get_read_buffer_limits()[1] > PRE_LOGIN_TLS_BUFFER  # type: ignore[attr-defined]
    channel.abort()
    sending.cancel()
    writer.transport.abort()
    await closed(sock)
    assert sock.under_the_loop == []
