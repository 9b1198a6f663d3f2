"""The in-memory channel pair: the login handshake and data ends, with no sockets."""

from __future__ import annotations

import asyncio

import pytest

from pierce.handshake import AuthenticationFailed, client_login, server_login
from pierce.protocol import MAX_FRAME_SIZE, Feature, Hello, Ping, Pong, Role, StartWork
from pierce.protocol.pake import make_verifier
from pierce.relay import relay
from pierce.transport import ConnectionClosed, memory_pair

TOKEN = "in-memory token"
BINDING = b"b" * 32


async def login(client_token: str) -> tuple[str | BaseException, BaseException | None]:
    client, server = memory_pair()

    async def serve() -> None:
        hello = await server.recv()
        assert isinstance(hello, Hello)
        await server_login(
            server,
            hello,
            verifier={"default": make_verifier("default", TOKEN)}.get,
            features=frozenset({Feature.ENCRYPT_DATA}),
            binding=BINDING,
            run_id="r1",
        )

    served = asyncio.ensure_future(serve())
    try:
        got: str | BaseException
        got, _, _, _ = await client_login(
            client,
            user="",
            token=client_token,
            features=frozenset({Feature.ENCRYPT_DATA}),
            client_id="c1",
            role=Role.CONTROL,
            binding=BINDING,
        )
    except AuthenticationFailed as exc:
        got = exc
    server_error = None
    try:
        await served
    except AuthenticationFailed as exc:
        server_error = exc
    assert client.max_frame_size == (MAX_FRAME_SIZE if isinstance(got, str) else client.max_frame_size)
    return got, server_error


async def test_handshake_over_memory() -> None:
    run_id, server_error = await login(TOKEN)
    assert run_id == "r1" and server_error is None


async def test_wrong_token_fails_on_both_sides() -> None:
    got, server_error = await login("wrong")
    assert isinstance(got, AuthenticationFailed) and "wrong token" in str(got)
    assert isinstance(server_error, AuthenticationFailed)


async def test_messages_then_data_then_half_close() -> None:
    a, b = memory_pair()
    await a.send(Ping(seq=1))
    await a.send(StartWork(proxy="p", visitor_host="203.0.113.5", visitor_port=4000))
    assert await b.recv() == Ping(seq=1)
    await b.send(Pong(seq=1))
    assert await a.recv() == Pong(seq=1)
    assert isinstance(await b.recv(), StartWork)
    end_a, end_b = a.into_end(), b.into_end()
    await end_a.write(b"raw bytes after the last message")
    end_a.write_eof()
    assert await end_b.read(1 << 16) == b"raw bytes after the last message"
    assert await end_b.read(1 << 16) == b""
    await end_b.write(b"reply still flows")  # half-closed the other way only
    assert await end_a.read(1 << 16) == b"reply still flows"


async def test_relay_between_memory_ends() -> None:
    (a1, b1), (a2, b2) = memory_pair(), memory_pair()
    task = asyncio.ensure_future(relay(b1.into_end(), a2.into_end()))
    left, right = a1.into_end(), b2.into_end()
    payload = bytes(range(256)) * 400
    await left.write(payload)
    left.write_eof()
    got = bytearray()
    while data := await right.read(1 << 16):
        got += data
    assert bytes(got) == payload
    right.write_eof()
    assert await left.read(10) == b""
    stats = await task
    assert stats.a_to_b == len(payload) and stats.b_to_a == 0


async def test_closed_peer_is_noticed() -> None:
    a, b = memory_pair()
    assert a.alive() and b.alive()
    a.close()
    assert not a.alive()
    with pytest.raises(ConnectionClosed):
        await b.recv()
    assert not b.alive()
    with pytest.raises(ConnectionClosed):
        await a.send(Ping(seq=2))
