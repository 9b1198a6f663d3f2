"""The direct TCP path on loopback (`pierce.p2p.tcp_direct`): both sides race connects to each other's host
candidates from fixed ports, agree on one socket, authenticate it (TLS pinned by fingerprint, or plain
with proofs both ways) and carry data both ways with half-close; wrong certificates and keys are refused
by name."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from pierce.nat.candidates import Candidate, CandidateKind
from pierce.p2p.identity import Identity
from pierce.p2p.tcp_direct import (
    DirectPathError,
    FingerprintMismatch,
    NoDirectPath,
    ProofMismatch,
    bind_reusable,
    connect_direct,
    secure_owner,
    secure_visitor,
)
from pierce.relay import End, SocketEnd
from pierce.transport import FramedEnd

KEY = bytes(range(32))
IDENTITY = Identity.generate()


def free_port() -> int:
    with bind_reusable("0.0.0.0") as sock:
        return int(sock.getsockname()[1])


def host(ip: str, port: int) -> Candidate:
    return Candidate(CandidateKind.HOST, ip, port)


async def connect_pair(
    visitor_candidates: list[Candidate], owner_candidates: list[Candidate], ports: tuple[int, int]
) -> tuple[socket.socket, socket.socket]:
    loop = asyncio.get_running_loop()
    start, deadline = loop.time() + 0.05, loop.time() + 10
    (v_sock, _, v_kind), (o_sock, _, o_kind) = await asyncio.gather(
        connect_direct("visitor", ports[0], visitor_candidates, start_at=start, deadline=deadline),
        connect_direct("owner", ports[1], owner_candidates, start_at=start, deadline=deadline),
    )
    assert v_kind == o_kind == "lan"
    return v_sock, o_sock


async def pair_on_loopback() -> tuple[socket.socket, socket.socket]:
    pa, pb = free_port(), free_port()
    return await connect_pair([host("127.0.0.1", pb)], [host("127.0.0.1", pa)], (pa, pb))


async def send_all_and_read_back(end: End, payload: bytes) -> bytes:
    """Write ``payload``, half-close, and read what the other side sends until its EOF."""

    async def write() -> None:
        for i in range(0, len(payload), 65536):
            await end.write(payload[i : i + 65536])
        end.write_eof()

    async def read() -> bytes:
        got = bytearray()
        while chunk := await end.read(65536):
            got += chunk
        return bytes(got)

    _, received = await asyncio.gather(write(), read())
    return received


async def exchange(visitor: End, owner: End) -> None:
    up, down = os.urandom(3 * 2**20 + 7), os.urandom(2 * 2**20 + 3)
    try:
        async with asyncio.timeout(30):
            at_owner, at_visitor = await asyncio.gather(
                send_all_and_read_back(owner, down), send_all_and_read_back(visitor, up)
            )
    finally:
        visitor.close()
        owner.close()
    assert hashlib.sha256(at_owner).digest() == hashlib.sha256(up).digest(), len(at_owner)
    assert hashlib.sha256(at_visitor).digest() == hashlib.sha256(down).digest(), len(at_visitor)


async def test_tls_direct_path_on_loopback_carries_data_both_ways_with_half_close() -> None:
    v_sock, o_sock = await pair_on_loopback()
    assert v_sock.getsockname() == o_sock.getpeername()
    visitor, owner = await asyncio.gather(
        secure_visitor(v_sock, IDENTITY.fingerprint, KEY), secure_owner(o_sock, IDENTITY, KEY)
    )
    assert isinstance(visitor, FramedEnd) and isinstance(owner, FramedEnd)
    assert visitor.socket is None  # TLS: bytes go through Python
    await exchange(visitor, owner)


async def test_both_sides_keep_the_same_connection_when_several_connect() -> None:
    """Each side's first candidate is an address only it dials (127.0.0.2 / 127.0.0.3 reach the other's
    listener): three TCP connections form, and both sides keep the same one (its two ends), every time."""
    for _ in range(5):
        pa, pb = free_port(), free_port()
        v_sock, o_sock = await connect_pair(
            [host("127.0.0.2", pb), host("127.0.0.1", pb)],
            [host("127.0.0.3", pa), host("127.0.0.1", pa)],
            (pa, pb),
        )
        try:
            assert v_sock.getsockname() == o_sock.getpeername()
            assert v_sock.getpeername() == o_sock.getsockname()
        finally:
            v_sock.close()
            o_sock.close()


async def test_plain_direct_path_gives_socket_ends_for_splice_and_carries_data() -> None:
    v_sock, o_sock = await pair_on_loopback()
    visitor, owner = await asyncio.gather(
        secure_visitor(v_sock, IDENTITY.fingerprint, KEY, encrypt=False),
        secure_owner(o_sock, IDENTITY, KEY, encrypt=False),
    )
    assert isinstance(visitor, SocketEnd) and isinstance(owner, SocketEnd)
    assert visitor.socket is v_sock and owner.socket is o_sock
    await exchange(visitor, owner)


async def test_a_wrong_fingerprint_is_refused_by_name_before_the_visitor_sends_its_proof() -> None:
    v_sock, o_sock = await pair_on_loopback()
    other = Identity.generate()
    visitor, owner = await asyncio.gather(
        secure_visitor(v_sock, other.fingerprint, KEY),
        secure_owner(o_sock, IDENTITY, KEY),
        return_exceptions=True,
    )
    assert isinstance(visitor, FingerprintMismatch), visitor
    assert other.fingerprint.hex()[:16] in str(visitor) and IDENTITY.fingerprint.hex()[:16] in str(visitor)
    # The owner got no proof at all (not a wrong one): the visitor sent nothing after the handshake.
    assert isinstance(owner, DirectPathError) and not isinstance(owner, ProofMismatch), owner
    assert v_sock.fileno() == -1 and o_sock.fileno() == -1


@pytest.mark.parametrize("encrypt", [True, False])
async def test_a_wrong_key_is_refused_by_the_owner(encrypt: bool) -> None:
    v_sock, o_sock = await pair_on_loopback()
    visitor, owner = await asyncio.gather(
        secure_visitor(v_sock, IDENTITY.fingerprint, bytes(32), encrypt=encrypt),
        secure_owner(o_sock, IDENTITY, KEY, encrypt=encrypt),
        return_exceptions=True,
    )
    assert isinstance(owner, ProofMismatch), owner
    assert "visitor's proof" in str(owner)
    # The owner sent nothing back: the visitor learns it was refused, not a forged owner proof.
    assert isinstance(visitor, DirectPathError) and not isinstance(visitor, ProofMismatch), visitor
    assert v_sock.fileno() == -1 and o_sock.fileno() == -1


async def test_no_listener_means_no_direct_path_within_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    nobody = free_port()
    began = loop.time()
    with pytest.raises(NoDirectPath) as caught:
        await connect_direct(
            "visitor",
            free_port(),
            [host("127.0.0.1", nobody)],
            start_at=began,
            deadline=began + 1.0,
        )
    assert loop.time() - began < 1.0 + 0.5  # the deadline plus slack
    assert f"127.0.0.1:{nobody} (host): connection refused" in str(caught.value)


async def test_refused_attempts_are_retried_until_the_late_peer_listens() -> None:
    """The owner starts half a second late and cannot reach the visitor (its candidate is a dead port):
    until it listens the visitor's SYNs are refused, and the visitor keeps trying."""
    loop = asyncio.get_running_loop()
    pa, pb, dead = free_port(), free_port(), free_port()
    start, deadline = loop.time(), loop.time() + 10

    async def late_owner() -> tuple[socket.socket, Candidate, str]:
        await asyncio.sleep(0.5)
        return await connect_direct(
            "owner", pb, [host("127.0.0.1", dead)], start_at=loop.time(), deadline=deadline
        )

    (v_sock, _, _), (o_sock, _, _) = await asyncio.gather(
        connect_direct("visitor", pa, [host("127.0.0.1", pb)], start_at=start, deadline=deadline),
        late_owner(),
    )
    with v_sock, o_sock:
        assert v_sock.getsockname() == o_sock.getpeername()


async def test_a_stranger_on_a_candidate_address_is_passed_over() -> None:
    """The visitor's first candidate is a LAN address where another service answers (it greets like
    sshd); the owner comes up a little later. The stranger's socket connects first, answers the
    nomination with its banner, and is dropped: both sides end up on their own connection."""
    loop = asyncio.get_running_loop()
    pa, pb = free_port(), free_port()

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-stranger\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    stranger_sock = bind_reusable("127.0.0.2", pb)
    stranger = await asyncio.start_server(greet, sock=stranger_sock)
    try:
        start, deadline = loop.time(), loop.time() + 10

        async def late_owner() -> tuple[socket.socket, Candidate, str]:
            await asyncio.sleep(0.3)
            return await connect_direct(
                "owner", pb, [host("127.0.0.1", pa)], start_at=loop.time(), deadline=deadline
            )

        (v_sock, _, _), (o_sock, _, _) = await asyncio.gather(
            connect_direct(
                "visitor",
                pa,
                [host("127.0.0.2", pb), host("127.0.0.1", pb)],
                start_at=start,
                deadline=deadline,
            ),
            late_owner(),
        )
        with v_sock, o_sock:
            assert v_sock.getsockname() == o_sock.getpeername()
            assert v_sock.getpeername() == o_sock.getsockname()
    finally:
        stranger.close()
        await stranger.wait_closed()


async def test_a_nominated_connection_closed_before_the_answer_is_dialled_again() -> None:
    """Something on the owner's port takes the visitor's first connection and closes it without an
    answer (as when the owner's own SYN crosses the visitor's connection to its listener); the visitor
    connects to that candidate again and the owner, listening from then on, accepts it."""
    loop = asyncio.get_running_loop()
    pa, pb, dead = free_port(), free_port(), free_port()
    start, deadline = loop.time(), loop.time() + 10
    first = bind_reusable("127.0.0.1", pb)
    first.listen(1)
    closed = asyncio.Event()

    async def close_the_first() -> None:
        while True:
            try:
                conn, _ = first.accept()
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            conn.close()
            first.close()
            closed.set()
            return

    async def owner_after_the_first() -> tuple[socket.socket, Candidate, str]:
        await closed.wait()
        return await connect_direct(
            "owner", pb, [host("127.0.0.1", dead)], start_at=loop.time(), deadline=deadline
        )

    closer = asyncio.ensure_future(close_the_first())
    try:
        (v_sock, _, _), (o_sock, _, _) = await asyncio.gather(
            connect_direct("visitor", pa, [host("127.0.0.1", pb)], start_at=start, deadline=deadline),
            owner_after_the_first(),
        )
    finally:
        closer.cancel()
        first.close()
    with v_sock, o_sock:
        assert v_sock.getsockname() == o_sock.getpeername()
