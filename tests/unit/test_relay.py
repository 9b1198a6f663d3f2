"""The relay on its own: every mode moves the exact bytes both ways, passes half-close on, and closes."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import random
import socket
import struct

import pytest
import uvloop

from pierce import relay as relay_mod
from pierce.relay import RelayMode, RelayStats, SocketEnd, StreamEnd, relay


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets on loopback."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    accept = asyncio.ensure_future(loop.sock_accept(listener))
    await loop.sock_connect(client, listener.getsockname())
    server, _ = await accept
    listener.close()
    server.setblocking(False)
    return client, server


async def exchange(
    outer_a: socket.socket, outer_b: socket.socket, a_data: bytes, b_data: bytes
) -> tuple[bytes, bytes]:
    """Send a_data from outer_a and b_data from outer_b at once, half-close each, read both to EOF."""
    loop = asyncio.get_running_loop()

    async def send_then_eof(sock: socket.socket, data: bytes) -> None:
        await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)

    async def read_all(sock: socket.socket) -> bytes:
        chunks = []
        while chunk := await loop.sock_recv(sock, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    _, _, got_at_b, got_at_a = await asyncio.gather(
        send_then_eof(outer_a, a_data), send_then_eof(outer_b, b_data), read_all(outer_b), read_all(outer_a)
    )
    return got_at_a, got_at_b


@pytest.fixture(params=["splice", "copy"])
def socket_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force each socket fast path of the relay in turn."""
    mode = str(request.param)
    if mode == "splice" and not relay_mod.HAVE_SPLICE:
        pytest.skip("no splice on this platform")
    monkeypatch.setattr(relay_mod, "FORCED_MODE", mode)
    return mode


async def test_socket_modes_move_exact_bytes_with_half_close(socket_mode: str) -> None:
    outer_a, inner_a = await tcp_pair()
    inner_b, outer_b = await tcp_pair()
    a_data = random.Random(1).randbytes(5_000_003)
    b_data = random.Random(2).randbytes(3_000_017)
    stats = RelayStats()
    task = asyncio.create_task(relay(SocketEnd(inner_a), SocketEnd(inner_b), stats))
    got_at_a, got_at_b = await exchange(outer_a, outer_b, a_data, b_data)
    await task
    assert hashlib.sha256(got_at_b).digest() == hashlib.sha256(a_data).digest()
    assert hashlib.sha256(got_at_a).digest() == hashlib.sha256(b_data).digest()
    assert (stats.a_to_b, stats.b_to_a) == (len(a_data), len(b_data))
    assert stats.error is None
    assert stats.mode is RelayMode(socket_mode)
    assert inner_a.fileno() == -1 and inner_b.fileno() == -1  # both ends closed
    outer_a.close()
    outer_b.close()


async def test_stream_ends_move_exact_bytes_with_half_close() -> None:
    outer_a, inner_a = await tcp_pair()
    inner_b, outer_b = await tcp_pair()
    ra, wa = await asyncio.open_connection(sock=inner_a)
    rb, wb = await asyncio.open_connection(sock=inner_b)
    a_data = random.Random(3).randbytes(2_000_000)
    b_data = random.Random(4).randbytes(1_000_000)
    task = asyncio.create_task(relay(StreamEnd(ra, wa), StreamEnd(rb, wb)))
    got_at_a, got_at_b = await exchange(outer_a, outer_b, a_data, b_data)
    stats = await task
    assert got_at_b == a_data
    assert got_at_a == b_data
    assert (stats.a_to_b, stats.b_to_a) == (len(a_data), len(b_data))
    assert stats.mode is RelayMode.STREAM
    outer_a.close()
    outer_b.close()


async def test_reset_ends_relay_with_error_and_closes_both(socket_mode: str) -> None:
    outer_a, inner_a = await tcp_pair()
    inner_b, outer_b = await tcp_pair()
    task = asyncio.create_task(relay(SocketEnd(inner_a), SocketEnd(inner_b)))
    await asyncio.get_running_loop().sock_sendall(outer_a, b"x" * 1000)
    outer_b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    outer_b.close()  # RST
    stats = await asyncio.wait_for(task, 10)
    assert stats.error is not None
    assert stats.mode is RelayMode(socket_mode)
    assert inner_a.fileno() == -1 and inner_b.fileno() == -1
    # The reset reaches the other side as a reset: an EOF would pass a broken transfer off as complete.
    with pytest.raises(ConnectionResetError):
        while await asyncio.get_running_loop().sock_recv(outer_a, 65536):
            pass
    outer_a.close()


async def test_a_reset_reaches_a_stream_end_peer_as_a_reset() -> None:
    outer_a, inner_a = await tcp_pair()
    inner_b, outer_b = await tcp_pair()
    reader, writer = await asyncio.open_connection(sock=inner_b)
    task = asyncio.create_task(relay(SocketEnd(inner_a), StreamEnd(reader, writer)))
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(outer_b, b"y" * 1000)
    assert await loop.sock_recv(outer_a, 1000)
    outer_a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    outer_a.close()  # RST on the socket side
    stats = await asyncio.wait_for(task, 10)
    assert stats.error is not None
    with pytest.raises(ConnectionResetError):
        while await loop.sock_recv(outer_b, 65536):
            pass
    outer_b.close()


async def test_an_idle_relay_keeps_no_exception_while_it_waits() -> None:
    """A held connection waits for its whole life, so what its waits keep is paid per connection: a
    wait inside ``except BlockingIOError`` would keep the exception and its traceback all the while."""
    outer_a, inner_a = await tcp_pair()
    inner_b, outer_b = await tcp_pair()
    reader, writer = await asyncio.open_connection(sock=inner_b)
    task = asyncio.create_task(relay(SocketEnd(inner_a), StreamEnd(reader, writer)))
    loop = asyncio.get_running_loop()
    for sender, receiver in ((outer_a, outer_b), (outer_b, outer_a)):
        await loop.sock_sendall(sender, b"x")
        assert await loop.sock_recv(receiver, 1) == b"x"
    # Each direction went back to waiting for its next bytes in the step that passed this one on.
    gc.collect()
    assert [e for e in gc.get_objects() if isinstance(e, BlockingIOError)] == []
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    outer_a.close()
    outer_b.close()


async def test_cancel_closes_both_ends() -> None:
    outer_a, inner_a = await tcp_pair()
    inner_b, outer_b = await tcp_pair()
    task = asyncio.create_task(relay(SocketEnd(inner_a), SocketEnd(inner_b)))
    await asyncio.sleep(0)  # one loop turn (no timing): relay() starts and owns the ends
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert inner_a.fileno() == -1 and inner_b.fileno() == -1
    outer_a.close()
    outer_b.close()


async def test_a_socket_end_taking_turns_registers_its_socket_once_then_hands_it_to_a_pump(
    socket_mode: str,
) -> None:
    """Requests and answers in turn over a SocketEnd: the socket is registered with the loop once for
    the whole exchange, not once per message; then the end goes to a relay whose socket pump waits on
    the socket its own way (the upgrade case): exact bytes both ways, and nothing left registered."""
    loop = asyncio.get_running_loop()
    outer_a, inner_a = await tcp_pair()
    inner_b, outer_b = await tcp_pair()
    end = SocketEnd(inner_a)
    fd = inner_a.fileno()
    registrations = 0
    real_add_reader = loop.add_reader

    def counting_add_reader(fd: int, callback: object, *args: object) -> None:
        nonlocal registrations
        registrations += 1
        real_add_reader(fd, callback, *args)  # type: ignore[arg-type]

    loop.add_reader = counting_add_reader  # type: ignore[method-assign]
    try:
        for i in range(20):
            request = b"GET /%d HTTP/1.1\r\n\r\n" % i
            await loop.sock_sendall(outer_a, request)
            assert await end.read(65536) == request
            await end.write(b"answer %d" % i)
            assert await loop.sock_recv(outer_a, 100) == b"answer %d" % i
    finally:
        loop.add_reader = real_add_reader  # type: ignore[method-assign]
    assert registrations == 1
    a_data = random.Random(1).randbytes(3_000_000)
    b_data = random.Random(2).randbytes(2_000_000)
    task = asyncio.ensure_future(relay(end, SocketEnd(inner_b)))
    got_at_a, got_at_b = await exchange(outer_a, outer_b, a_data, b_data)
    stats = await task
    assert stats.mode is RelayMode(socket_mode)
    assert hashlib.sha256(got_at_b).digest() == hashlib.sha256(a_data).digest()
    assert hashlib.sha256(got_at_a).digest() == hashlib.sha256(b_data).digest()
    assert inner_a.fileno() == -1 and not loop.remove_reader(fd)
    outer_a.close()
    outer_b.close()


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_reset_that_comes_with_the_last_bytes_ends_the_next_read(loop_name: str) -> None:
    """The peer's last bytes and its reset arrive in one go while a read waits: the read gets the bytes,
    the next one the reset. uvloop reports a socket error once and then stops watching the socket
    (libuv's poll handle does, on POLLERR); a SocketEnd that kept its watch and waited on it again never
    woke (a local service that crashed mid-transfer held its tunnelled connection for ever)."""
    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(last_bytes_then_reset())


async def last_bytes_then_reset() -> None:
    mine, peer = await tcp_pair()
    end = SocketEnd(mine)
    try:
        reading = asyncio.ensure_future(end.read(65536))
        await asyncio.sleep(0)  # the read waits for the socket
        peer.send(b"first")
        assert await asyncio.wait_for(reading, 5) == b"first"  # a short read: the next one waits first
        reading = asyncio.ensure_future(end.read(65536))
        await asyncio.sleep(0)
        peer.send(b"last")
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # the reset follows the bytes before the loop looks at the socket again
        got = b""
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                while True:
                    got += await reading
                    reading = asyncio.ensure_future(end.read(65536))
        assert got in (b"", b"last")  # the kernel may drop unread bytes at a reset
    finally:
        end.close()
