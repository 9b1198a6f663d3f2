"""Streams multiplexed over one real TLS connection on loopback (`pierce.mux`): bytes verified both
ways with half-close, a stalled reader that holds up no other stream, resets, a lost connection, a peer
that breaks the protocol, pings, and messages before data."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pierce.mux import MuxChannel, MuxConnection, MuxStream
from pierce.protocol import StartWork
from pierce.protocol.errors import ProtocolError
from pierce.protocol.mux import FLAG_ACK, FLAG_FIN, HEADER, HEADER_SIZE, INITIAL_WINDOW, FrameType, ResetCode
from pierce.relay import relay

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def tls_pair(
    tmp_path: Path,
) -> AsyncIterator[tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], ...]]:
    """Both ends of one TLS connection over loopback: (dialler's streams, acceptor's streams)."""
    from support.certs import self_signed

    crt, key = self_signed(tmp_path, "mux.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(crt, key)
    client_ctx = ssl.create_default_context(cafile=str(crt))
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future()
    )

    async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await asyncio.start_server(on_accept, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    dialled = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="mux.test")
    far = await accepted
    try:
        yield dialled, far
    finally:
        for _, writer in (dialled, far):
            writer.transport.abort()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def mux_pair(
    tmp_path: Path,
) -> AsyncIterator[tuple[MuxConnection, MuxConnection, asyncio.Queue[MuxStream]]]:
    """A dialling and an accepting `MuxConnection`, both running; the acceptor's new streams queue up."""
    incoming: asyncio.Queue[MuxStream] = asyncio.Queue()
    async with tls_pair(tmp_path) as (near, far):
        client = MuxConnection(*near, initiator=True)
        server = MuxConnection(*far, initiator=False, on_stream=incoming.put_nowait)
        tasks = [asyncio.ensure_future(client.run()), asyncio.ensure_future(server.run())]
        try:
            yield client, server, incoming
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def read_all(stream: MuxStream, size: int = 65536) -> bytes:
    out = bytearray()
    while data := await stream.read(size):
        out += data
    return bytes(out)


async def exchange(stream: MuxStream, payload: bytes) -> bytes:
    """Send ``payload`` in random pieces, half-close, and read everything the other side sends."""
    rng = random.Random(len(payload))

    async def send() -> None:
        view = memoryview(payload)
        while view:
            n = rng.choice([1, 700, 16 * 1024, 300_000])
            await stream.write(view[:n])
            view = view[n:]
        stream.write_eof()

    sender = asyncio.ensure_future(send())
    got = await read_all(stream, rng.choice([1024, 65536]))
    await sender
    return got


async def test_many_streams_carry_their_bytes_both_ways_with_half_close(tmp_path: Path) -> None:
    async with mux_pair(tmp_path) as (client, server, incoming):
        rng = random.Random(7)
        up_sizes, down_sizes = [0, 1, 5000, 300_000, 2 * INITIAL_WINDOW], [0, 9, 70_000, 3 * INITIAL_WINDOW]
        payloads = {
            i: (rng.randbytes(rng.choice(up_sizes)), rng.randbytes(rng.choice(down_sizes))) for i in range(40)
        }
        opened = [client.open() for _ in payloads]

        async def serve() -> dict[int, bytes]:
            got = {}

            async def one(stream: MuxStream) -> None:
                # The far side learns which payload to answer with from the stream id.
                index = (stream.id - 1) // 2
                got[index] = await exchange(stream, payloads[index][1])
                stream.close()

            async with asyncio.TaskGroup() as tg:
                for _ in payloads:
                    tg.create_task(one(await incoming.get()))
            return got

        served = asyncio.ensure_future(serve())
        answers = await asyncio.gather(*(exchange(s, payloads[i][0]) for i, s in enumerate(opened)))
        for stream in opened:
            stream.close()
        received = await served
        for i, (up, down) in payloads.items():
            assert hashlib.sha256(received[i]).digest() == hashlib.sha256(up).digest(), f"stream {i} up"
            assert hashlib.sha256(answers[i]).digest() == hashlib.sha256(down).digest(), f"stream {i} down"
        await asyncio.sleep(0)  # (the last FINs' bookkeeping runs as their frames arrive)
        assert len(client) == 0 and len(client.state) == 0
        assert len(server) == 0 and len(server.state) == 0


async def test_a_stalled_reader_holds_up_no_other_stream(tmp_path: Path) -> None:
    async with mux_pair(tmp_path) as (client, _server, incoming):
        stalled, busy = client.open(), client.open()
        stalled_far, busy_far = await incoming.get(), await incoming.get()
        big = random.Random(1).randbytes(3 * INITIAL_WINDOW)
        blocked = asyncio.ensure_future(stalled.write(big))  # more than a window: waits for credit
        payload = random.Random(2).randbytes(8 * 1024 * 1024)

        async def send_busy() -> None:
            await busy.write(payload)
            busy.write_eof()

        sending = asyncio.ensure_future(send_busy())
        assert await read_all(busy_far) == payload
        await sending
        assert not blocked.done()  # still waiting for the stalled reader's credit
        assert len(stalled_far._buffer) and sum(map(len, stalled_far._buffer)) <= INITIAL_WINDOW
        got = bytearray()
        while len(got) < len(big):
            got += await stalled_far.read(65536)
        await blocked
        assert bytes(got) == big


async def test_closing_a_stream_early_resets_it_on_the_other_side(tmp_path: Path) -> None:
    async with mux_pair(tmp_path) as (client, server, incoming):
        stream = client.open()
        await stream.write(b"partial")
        far = await incoming.get()
        assert await far.read(100) == b"partial"
        stream.abort()  # the visitor's side broke off: the far side must not see an orderly end
        with pytest.raises(ConnectionResetError, match="reset by peer"):
            await far.read(100)
        with pytest.raises(ConnectionResetError):
            await far.write(b"too late")
        with pytest.raises(ConnectionResetError):
            await stream.read(10)
        assert client.alive and server.alive  # one stream's end is not the connection's
        again = client.open()
        await again.write(b"next")
        assert await (await incoming.get()).read(10) == b"next"


async def test_a_lost_connection_ends_every_stream(tmp_path: Path) -> None:
    async with mux_pair(tmp_path) as (client, _server, incoming):
        streams = [client.open() for _ in range(3)]
        for stream in streams:
            await stream.write(b"x")
        far = [await incoming.get() for _ in streams]
        client._transport.abort()
        for stream in far:
            assert await stream.read(10) == b"x"
            with pytest.raises(ConnectionResetError, match="multiplexed connection ended"):
                await stream.read(10)
        with pytest.raises(ConnectionResetError):
            client.open()


async def test_a_peer_that_breaks_the_protocol_hears_why(tmp_path: Path) -> None:
    async with tls_pair(tmp_path) as ((reader, writer), far):
        server = MuxConnection(*far, initiator=False, on_stream=lambda stream: None)
        running = asyncio.ensure_future(server.run())
        writer.write(HEADER.pack(FrameType.OPEN, 0, 1, 0) + HEADER.pack(FrameType.DATA, 0, 9, 1) + b"x")
        with pytest.raises(ProtocolError, match="never opened"):
            await running
        header = await reader.readexactly(HEADER_SIZE)
        kind, _, _, length = HEADER.unpack(header)
        payload = await reader.readexactly(length)
        assert kind == FrameType.GOAWAY and int.from_bytes(payload[:4], "big") == ResetCode.PROTOCOL
        assert b"stream 9, which was never opened" in payload
        assert "protocol error" in server.ended


async def test_ping_and_an_orderly_close(tmp_path: Path) -> None:
    async with mux_pair(tmp_path) as (client, server, incoming):
        await client.ping(5)
        await server.ping(5)
        stream = client.open()
        far_task = asyncio.ensure_future(incoming.get())
        far = await far_task
        server.close("server stopping")
        with pytest.raises(ConnectionResetError):
            await far.read(1)
        with pytest.raises(ConnectionResetError, match="server stopping"):
            await stream.read(1)


async def test_messages_then_data_over_a_stream(tmp_path: Path) -> None:
    """A stream carries a work connection's messages first, then is relayed as an `End`."""
    async with mux_pair(tmp_path) as (client, _server, incoming):
        near = MuxChannel(client.open(), peer="server", max_frame_size=64 * 1024)
        start = StartWork(proxy="ssh", visitor_host="203.0.113.9", visitor_port=4000)
        await near.send(start)
        far = MuxChannel(await incoming.get(), peer="client", max_frame_size=64 * 1024)
        assert await far.recv() == start

        # The far end relays to a local echo server through the stream.
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        service = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = service.sockets[0].getsockname()[1]
        import socket

        from pierce.relay import SocketEnd

        sock = socket.create_connection(("127.0.0.1", port))
        relaying = asyncio.ensure_future(relay(far.into_end(), SocketEnd(sock)))
        end = near.into_end()
        payload = random.Random(3).randbytes(5 * INITIAL_WINDOW)
        sender = asyncio.ensure_future(end.write(payload))
        got = bytearray()
        while len(got) < len(payload):
            got += await end.read(65536)
        await sender
        end.write_eof()
        assert await end.read(10) == b""  # the echo's EOF came back through the relay
        await relaying
        assert bytes(got) == payload
        service.close()
        await service.wait_closed()


async def test_frames_split_at_every_byte_and_bytes_read_before_the_takeover(tmp_path: Path) -> None:
    """Frames reach the connection in any pieces: the first ones already read with the login (held by
    the stream reader when `run` takes the connection over), then a DATA frame and the frames after it
    one byte per TLS record; the stream gets every byte in order, and the end."""
    async with tls_pair(tmp_path) as ((_reader, writer), (far_reader, far_writer)):
        incoming: asyncio.Queue[MuxStream] = asyncio.Queue()
        body = bytes(random.Random(7).randbytes(3000))
        first = HEADER.pack(FrameType.OPEN, 0, 1, 0) + HEADER.pack(FrameType.DATA, 0, 1, 5) + body[:5]
        writer.write(b"L" + first)  # the login's last byte, then the first frames in the same record
        assert await far_reader.readexactly(1) == b"L"  # what the login reads; the frames stay held
        server = MuxConnection(far_reader, far_writer, initiator=False, on_stream=incoming.put_nowait)
        running = asyncio.ensure_future(server.run())
        try:
            stream = await asyncio.wait_for(incoming.get(), 10)
            rest = HEADER.pack(FrameType.DATA, 0, 1, len(body) - 5) + body[5:]
            rest += HEADER.pack(FrameType.PING, 0, 0, 8) + b"12345678"
            rest += HEADER.pack(FrameType.DATA, FLAG_FIN, 1, 0)
            for i in range(len(rest)):  # one record per byte: every split of header and payload
                writer.write(rest[i : i + 1])
                await writer.drain()
            assert await read_all(stream) == body
            kind, flags, _, length = HEADER.unpack(await _reader.readexactly(HEADER_SIZE))
            assert (kind, flags) == (FrameType.PING, FLAG_ACK)
            assert await _reader.readexactly(length) == b"12345678"
            assert not server.ended
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


async def test_the_frames_of_one_turn_go_out_in_one_write(tmp_path: Path) -> None:
    """Small frames that many streams send in one turn of the loop leave as one write (one TLS record
    instead of one each), and arrive intact."""
    async with mux_pair(tmp_path) as (client, _server, incoming):
        streams = [client.open() for _ in range(20)]
        writes: list[int] = []
        transport = client._transport
        real_write = transport.write

        def counting_write(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            real_write(data)

        transport.write = counting_write  # type: ignore[method-assign]
        try:
            for i, stream in enumerate(streams):
                await stream.write(b"piece %d" % i)
            await asyncio.sleep(0)  # the end of this turn: the queued frames go out
        finally:
            transport.write = real_write  # type: ignore[method-assign]
        assert len(writes) == 1
        far = {s.id: s for s in [await incoming.get() for _ in streams]}
        for i, stream in enumerate(streams):
            assert await far[stream.id].read(100) == b"piece %d" % i


async def test_a_closed_connection_mid_frame_is_a_protocol_error(tmp_path: Path) -> None:
    async with tls_pair(tmp_path) as ((_reader, writer), far):
        server = MuxConnection(*far, initiator=False, on_stream=lambda stream: None)
        running = asyncio.ensure_future(server.run())
        writer.write(HEADER.pack(FrameType.OPEN, 0, 1, 0) + HEADER.pack(FrameType.DATA, 0, 1, 100) + b"x")
        await writer.drain()
        writer.close()
        with pytest.raises(ProtocolError, match="in the middle of a mux frame"):
            await running
