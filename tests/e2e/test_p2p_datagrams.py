"""xudp on a direct path (`pierce.p2p.datagrams.DatagramEnd` over two real `QuicPath`s on loopback):
datagram frames that fit go as QUIC DATAGRAM frames, larger ones on the one stream the visitor opens,
and the owner can answer with large ones before the visitor ever sent one."""

from __future__ import annotations

import asyncio
import random

import pytest
from test_quic_path import quic_pair, udp_sockets

from pierce.p2p.datagrams import EMPTY_FRAME, DatagramEnd, DatagramFrameError, FrameSplitter
from pierce.p2p.quic import QuicStreamEnd
from pierce.protocol import FrameDecoder, UdpPacket, encode_frame


def frame(size: int, port: int = 5000) -> bytes:
    data = random.Random(size).randbytes(size)
    return encode_frame(UdpPacket(proxy="game", peer_host="127.0.0.1", peer_port=port, data=data))


async def read_frames(end: DatagramEnd, count: int) -> list[UdpPacket]:
    decoder = FrameDecoder()
    got: list[UdpPacket] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            data = await end.read(256 * 1024)
            assert data, "the datagram end closed early"
            got += [m for m in decoder.feed(data) if isinstance(m, UdpPacket)]
    return got


async def test_small_ones_as_datagram_frames_large_ones_on_the_stream_both_ways() -> None:
    owner_end: list[DatagramEnd] = []

    async def on_stream(stream: QuicStreamEnd) -> None:
        owner_end[0].attach_stream(stream)
        await owner_end[0].finished.wait()

    def on_owner_datagram(data: bytes) -> None:
        owner_end[0].deliver(data)

    visitor_end: list[DatagramEnd] = []
    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(
            on_stream,
            visitor_sock=v_sock,
            owner_sock=o_sock,
            on_owner_datagram=on_owner_datagram,
            on_visitor_datagram=lambda data: visitor_end[0].deliver(data),
        ) as (visitor, owner):
            owner_end.append(DatagramEnd(owner))
            visitor_end.append(DatagramEnd(visitor))
            await visitor_end[0].open()
            # The owner answers with a large datagram first: the visitor's announced stream carries it.
            await owner_end[0].write(frame(60_000))
            (big,) = await read_frames(visitor_end[0], 1)
            assert big.data == random.Random(60_000).randbytes(60_000)

            sizes = [1, 100, 1000, 9000, 1001, 60_000]
            await visitor_end[0].write(b"".join(frame(n) for n in sizes))  # frames batched in one write
            got = await read_frames(owner_end[0], len(sizes))
            assert sorted(len(p.data) for p in got) == sorted(sizes)
            assert all(p.data == random.Random(len(p.data)).randbytes(len(p.data)) for p in got)
            fits = [n for n in sizes if len(frame(n)) <= visitor.max_datagram_payload]
            assert fits == [1, 100, 1000, 1001]
            assert visitor_end[0].datagrams_sent == len(fits)  # unreliable frames, no head-of-line blocking
            assert visitor_end[0].streamed == len(sizes) - len(fits)
            for end in (*visitor_end, *owner_end):
                end.close()


def test_the_splitter_yields_whole_frames_across_any_cut() -> None:
    data = frame(10) + EMPTY_FRAME + frame(3000)
    for cut in range(len(data) + 1):
        splitter = FrameSplitter()
        assert splitter.feed(data[:cut]) + splitter.feed(data[cut:]) == [frame(10), EMPTY_FRAME, frame(3000)]


def test_the_splitter_refuses_an_oversized_length() -> None:
    splitter = FrameSplitter()
    with pytest.raises(DatagramFrameError, match="over"):  # a ProtocolError: the peer's fault
        splitter.feed(b"\xff\xff\xff\xff")
