"""The handoff of a direct connection to a visitor connection (`pierce.p2p.handoff`) on real QUIC
streams: an answering owner takes the stream over; a silent one (a path that died without a sign) makes
the visitor give the stream up within the deadline, so its connection can take the relay instead."""

from __future__ import annotations

import asyncio
import time

from test_quic_path import quic_pair, udp_sockets

from pierce.p2p.handoff import hand_over, ready_timeout, take_over
from pierce.p2p.quic import QuicStreamEnd


async def test_an_answering_owner_takes_the_stream_and_data_follows() -> None:
    async def owner(end: QuicStreamEnd) -> None:
        assert await take_over(end, 5)
        while data := await end.read(65536):
            await end.write(data.upper())
        end.write_eof()

    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(owner, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, _):
            end = await visitor.open_stream()
            rtt = await hand_over(end, ready_timeout(visitor.rtt))
            assert rtt is not None and rtt > 0  # the round trip, as the snapshot shows it for direct TCP
            await end.write(b"hello")
            end.write_eof()
            assert await end.read(100) == b"HELLO"


async def test_a_silent_owner_is_given_up_within_the_deadline() -> None:
    silent = asyncio.Event()

    async def owner(end: QuicStreamEnd) -> None:
        await silent.wait()  # reads nothing, answers nothing: as if the path had died

    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(owner, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, _):
            end = await visitor.open_stream()
            started = time.monotonic()
            assert await hand_over(end, 0.5) is None
            assert time.monotonic() - started < 0.5 + 1.0  # the deadline plus slack for a busy machine
            silent.set()


async def test_a_wrong_first_byte_is_refused_by_the_owner() -> None:
    taken: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def owner(end: QuicStreamEnd) -> None:
        taken.set_result(await take_over(end, 5))

    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(owner, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, _):
            end = await visitor.open_stream()
            await end.write(b"GET / HTTP/1.1\r\n")
            assert await asyncio.wait_for(taken, 5) is False
