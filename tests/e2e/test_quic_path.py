"""QUIC in a punched hole (`pierce.p2p.quic`): two `QuicPath`s on real loopback UDP sockets.

Streams carry data both ways with half-closes, backpressure and resets; the visitor refuses a
certificate it did not pin before sending anything, the owner refuses a wrong proof; punch packets on
the same socket reach ``on_other``; DATAGRAM frames cross; a close, an idle timeout and a NAT rebinding
(a tiny UDP relay on loopback that changes its source port mid-stream) behave as the module says. On
Linux, bursts go out in UDP_SEGMENT sends and come in as UDP_GRO runs, and a socket on which the kernel
refuses segmentation falls back to one datagram per send.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import pytest
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from pierce.errors import PierceError
from pierce.nat.punch_wire import Kind, PunchPacket, encode
from pierce.p2p import quic, quic_core
from pierce.p2p.handoff import GO, READY, hand_over
from pierce.p2p.identity import Identity
from pierce.p2p.quic import (
    UDP_GRO,
    UDP_SEGMENT,
    FingerprintMismatch,
    PathSettings,
    ProofRejected,
    QuicPath,
    QuicPathError,
    QuicStreamEnd,
)
from pierce.relay import SocketEnd, relay

KEY = bytes(range(32))
IDENTITY = Identity.generate()
Address = tuple[str, int]
OnStream = Callable[[QuicStreamEnd], Awaitable[None]]


@contextmanager
def udp_sockets(count: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def addr_of(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


@dataclass
class Pair:
    visitor: QuicPath
    owner: QuicPath
    other: list[tuple[bytes, Address]] = field(default_factory=list)
    datagrams: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def quic_pair(
    on_stream: OnStream,
    *,
    visitor_sock: socket.socket,
    owner_sock: socket.socket,
    visitor_target: Address | None = None,
    owner_peer: Address | None = None,
    settings: PathSettings | None = None,
    on_other: Callable[[bytes, Address], None] | None = None,
    on_owner_datagram: Callable[[bytes], None] | None = None,
    on_visitor_datagram: Callable[[bytes], None] | None = None,
) -> AsyncIterator[tuple[QuicPath, QuicPath]]:
    owner_task = asyncio.ensure_future(
        QuicPath.accept(
            owner_sock,
            owner_peer or addr_of(visitor_sock),
            identity=IDENTITY,
            key=KEY,
            on_stream=on_stream,
            on_other=on_other,
            on_datagram=on_owner_datagram,
            settings=settings,
        )
    )
    visitor = await QuicPath.connect(
        visitor_sock,
        visitor_target or addr_of(owner_sock),
        fingerprint=IDENTITY.fingerprint,
        key=KEY,
        on_other=on_other,
        on_datagram=on_visitor_datagram,
        settings=settings,
    )
    owner = await asyncio.wait_for(owner_task, 5)
    try:
        yield visitor, owner
    finally:
        visitor.close()
        owner.close()
        await asyncio.wait_for(asyncio.gather(visitor.wait_closed(), owner.wait_closed()), 5)


async def read_all(end: QuicStreamEnd, size: int = 256 * 1024) -> bytes:
    parts = []
    while data := await end.read(size):
        parts.append(data)
    return b"".join(parts)


async def write_all(end: QuicStreamEnd, data: bytes, chunk: int = 256 * 1024) -> None:
    view = memoryview(data)
    for i in range(0, len(data), chunk):
        await end.write(view[i : i + chunk])
    end.write_eof()


async def echo(end: QuicStreamEnd) -> None:
    while data := await end.read(256 * 1024):
        await end.write(data)
    end.write_eof()


async def test_concurrent_streams_carry_data_both_ways_intact() -> None:
    payloads = [os.urandom(2 * 1024 * 1024 + i * 1000) for i in range(4)]  # 8 MiB each way in all
    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(echo, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, owner):

            async def one(payload: bytes) -> bytes:
                end = await visitor.open_stream()
                writer = asyncio.ensure_future(write_all(end, payload))
                got = await read_all(end)
                await writer
                end.close()
                return got

            results = await asyncio.wait_for(asyncio.gather(*(one(p) for p in payloads)), 60)
            for sent, got in zip(payloads, results, strict=True):
                assert len(got) == len(sent)
                assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
            assert visitor.rtt > 0 and owner.rtt > 0
            assert owner.peer == addr_of(v_sock) and visitor.peer == addr_of(o_sock)


async def echo_once(visitor: QuicPath, payload: bytes) -> bytes:
    end = await visitor.open_stream()
    writer = asyncio.ensure_future(write_all(end, payload))
    got = await asyncio.wait_for(read_all(end), 60)
    await writer
    end.close()
    return got


linux_only = pytest.mark.skipif(sys.platform != "linux", reason="UDP_SEGMENT and UDP_GRO are Linux's")


@linux_only
async def test_bursts_go_out_segmented_and_come_in_coalesced_intact() -> None:
    payload = os.urandom(4 * 1024 * 1024)
    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(echo, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, owner):
            got = await echo_once(visitor, payload)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            assert v_sock.getsockopt(socket.SOL_UDP, UDP_GRO) == 1
            # Both directions carried bulk data: each side sent runs and read them whole at the other.
            assert visitor.gso and owner.gso
            assert visitor.gso_sends > 0 and owner.gro_reads > 0, (visitor.gso_sends, owner.gro_reads)
            assert owner.gso_sends > 0 and visitor.gro_reads > 0, (owner.gso_sends, visitor.gro_reads)
            assert visitor.send_drops == owner.send_drops == 0
        # The sockets go back to their owner reading one datagram at a time.
        assert v_sock.getsockopt(socket.SOL_UDP, UDP_GRO) == 0
        assert o_sock.getsockopt(socket.SOL_UDP, UDP_GRO) == 0


@linux_only
async def test_a_coalesced_run_is_split_into_its_datagrams() -> None:
    others: list[tuple[bytes, Address]] = []
    punches = [encode(PunchPacket(Kind.KEEPALIVE, True, b"session", txid), KEY) for txid in range(20)]
    assert len({len(p) for p in punches}) == 1
    with udp_sockets(3) as (v_sock, o_sock, agent_sock):
        async with quic_pair(
            echo, visitor_sock=v_sock, owner_sock=o_sock, on_other=lambda d, a: others.append((d, a))
        ) as (visitor, owner):
            reads = owner.gro_reads
            segment = struct.pack("@H", len(punches[0]))
            agent_sock.sendmsg(
                [b"".join(punches)], [(socket.SOL_UDP, UDP_SEGMENT, segment)], 0, addr_of(o_sock)
            )
            # A stream round trip after the run was sent: loopback keeps their order.
            assert await echo_once(visitor, b"ping") == b"ping"
            assert owner.gro_reads == reads + 1
        assert others == [(p, addr_of(agent_sock)) for p in punches]


SO_NO_CHECK = 11  # Linux: UDP without checksums, on which the kernel refuses UDP_SEGMENT (EINVAL)


@linux_only
async def test_a_socket_that_cannot_segment_sends_datagram_by_datagram() -> None:
    payload = os.urandom(2 * 1024 * 1024)
    with udp_sockets(2) as (v_sock, o_sock):
        v_sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        async with quic_pair(echo, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, owner):
            got = await echo_once(visitor, payload)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            assert not visitor.gso and visitor.gso_sends == 0
            assert owner.gso and owner.gso_sends > 0


async def test_half_close_both_ways() -> None:
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def owner_side(end: QuicStreamEnd) -> None:
        first = await end.read(100)
        if first == b"request":  # visitor half-closes first: we still answer after its EOF
            assert await end.read(100) == b""
            assert end.peer_done()
            await end.write(b"reply after your EOF")
            end.write_eof()
        else:  # we half-close first and keep reading
            await end.write(b"goodbye, keep talking")
            end.write_eof()
            await seen.put(first + await read_all(end))

    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(owner_side, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, _owner):
            end = await visitor.open_stream()
            await end.write(b"request")
            end.write_eof()
            assert await asyncio.wait_for(read_all(end), 5) == b"reply after your EOF"
            end.close()

            end = await visitor.open_stream()
            await end.write(b"hello ")
            assert await asyncio.wait_for(read_all(end), 5) == b"goodbye, keep talking"
            await end.write(b"and more after your EOF")
            end.write_eof()
            assert await asyncio.wait_for(seen.get(), 5) == b"hello and more after your EOF"
            end.close()


async def test_the_relay_joins_a_stream_to_a_tcp_service_with_half_closes() -> None:
    """The owner's ``on_stream`` hands the stream to `pierce.relay.relay` with a TCP connection to a
    service that answers only after its request's EOF: the visitor's FIN must reach the service as a
    TCP half-close, and the service's close come back as the stream's EOF."""

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # to EOF
        writer.write(hashlib.sha256(request).digest() + request[::-1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(service, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def owner_side(end: QuicStreamEnd) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        stats = await relay(end, SocketEnd(sock))
        assert stats.error is None, stats.error

    request = os.urandom(3 * 1024 * 1024)
    try:
        with udp_sockets(2) as (v_sock, o_sock):
            async with quic_pair(owner_side, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, _owner):
                end = await visitor.open_stream()
                await write_all(end, request)
                reply = await asyncio.wait_for(read_all(end), 30)
                assert reply == hashlib.sha256(request).digest() + request[::-1]
                end.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_visitor_that_resets_makes_the_owner_read_fail() -> None:
    outcome: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()
    started = asyncio.Event()

    async def owner_side(end: QuicStreamEnd) -> None:
        try:
            first = await end.read(100)
            started.set()
            outcome.set_result(first + await read_all(end))
        except ConnectionResetError as exc:
            outcome.set_result(exc)

    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(owner_side, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, _owner):
            end = await visitor.open_stream()
            await end.write(b"half a message")
            await asyncio.wait_for(started.wait(), 5)
            end.close()  # without write_eof: an abort
            got = await asyncio.wait_for(outcome, 5)
            assert isinstance(got, ConnectionResetError), got


async def test_an_unread_stream_stalls_its_writer_at_the_window() -> None:
    """Flow control follows consumption: the owner buffers at most one stream window, and the visitor's
    writer waits instead of piling bytes up in memory; reading releases it."""
    owner_end: asyncio.Future[QuicStreamEnd] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def owner_side(end: QuicStreamEnd) -> None:
        owner_end.set_result(end)
        await release.wait()

    total = quic_core.STREAM_WINDOW + quic_core.STREAM_SEND_BUFFER + 8 * 1024 * 1024
    payload = os.urandom(total)
    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(owner_side, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, _owner):
            end = await visitor.open_stream()
            writer = asyncio.ensure_future(write_all(end, payload))
            o_end = await asyncio.wait_for(owner_end, 5)
            done, _ = await asyncio.wait({writer}, timeout=2.0)
            assert not done, "the writer finished although nobody read"
            buffered = sum(len(c) for c in o_end._chunks)
            assert 0 < buffered <= quic_core.STREAM_WINDOW
            got = await asyncio.wait_for(read_all(o_end), 30)
            await asyncio.wait_for(writer, 5)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            release.set()
            end.close()


async def test_a_wrong_fingerprint_fails_connect_before_anything_is_sent() -> None:
    called = []

    async def owner_side(end: QuicStreamEnd) -> None:
        called.append(end)

    with udp_sockets(2) as (v_sock, o_sock):
        owner_task = asyncio.ensure_future(
            QuicPath.accept(o_sock, addr_of(v_sock), identity=IDENTITY, key=KEY, on_stream=owner_side)
        )
        with pytest.raises(FingerprintMismatch, match="fingerprint mismatch") as info:
            await QuicPath.connect(
                v_sock, addr_of(o_sock), fingerprint=Identity.generate().fingerprint, key=KEY
            )
        assert isinstance(info.value, PierceError)
        assert IDENTITY.fingerprint.hex()[:16] in str(info.value)
        # Had the visitor sent its proof (made for the certificate it pinned), the owner would have judged
        # it and raised ProofRejected; it only saw the visitor close.
        with pytest.raises(QuicPathError) as owner_error:
            await asyncio.wait_for(owner_task, 10)
        assert not isinstance(owner_error.value, ProofRejected), owner_error.value
        assert "the peer closed the connection" in str(owner_error.value)
        assert not called


async def test_a_wrong_key_is_refused_by_the_owner() -> None:
    called = []

    async def owner_side(end: QuicStreamEnd) -> None:
        called.append(end)

    with udp_sockets(2) as (v_sock, o_sock):
        owner_task = asyncio.ensure_future(
            QuicPath.accept(o_sock, addr_of(v_sock), identity=IDENTITY, key=KEY, on_stream=owner_side)
        )
        with pytest.raises(ProofRejected, match="refused our proof"):
            await QuicPath.connect(v_sock, addr_of(o_sock), fingerprint=IDENTITY.fingerprint, key=bytes(32))
        with pytest.raises(ProofRejected, match="does not match the rendezvous key"):
            await asyncio.wait_for(owner_task, 10)
        assert not called


async def test_streams_opened_before_the_proof_are_refused() -> None:
    """A client that completes the handshake but opens an application stream instead of proving the key
    gets that stream reset, and the owner gives up at its deadline without calling ``on_stream``."""
    called = []

    async def owner_side(end: QuicStreamEnd) -> None:
        called.append(end)

    loop = asyncio.get_running_loop()
    with udp_sockets(2) as (v_sock, o_sock):
        owner_task = asyncio.ensure_future(
            QuicPath.accept(
                o_sock, addr_of(v_sock), identity=IDENTITY, key=KEY, on_stream=owner_side, timeout=2.0
            )
        )
        conn = QuicConnection(configuration=quic_core.configuration(is_client=True))
        conn.connect(addr_of(o_sock), loop.time())
        reset = asyncio.Event()
        skipped_proof = False

        def pump() -> None:
            nonlocal skipped_proof
            while True:
                try:
                    data, source = v_sock.recvfrom(2048)
                except BlockingIOError:
                    break
                conn.receive_datagram(data, source, loop.time())
            while (event := conn.next_event()) is not None:
                if isinstance(event, events.HandshakeCompleted) and not skipped_proof:
                    skipped_proof = True
                    conn.send_stream_data(0, b"", end_stream=False)  # stream 0 open, no proof
                    conn.send_stream_data(4, b"let me in without a proof")
                if isinstance(event, events.StreamReset) and event.stream_id == 4:
                    reset.set()
            for data, dest in conn.datagrams_to_send(loop.time()):
                v_sock.sendto(data, dest)

        loop.add_reader(v_sock.fileno(), pump)
        try:
            pump()
            await asyncio.wait_for(reset.wait(), 5)
            with pytest.raises(QuicPathError, match="within 2 s"):
                await asyncio.wait_for(owner_task, 5)
        finally:
            loop.remove_reader(v_sock.fileno())
        assert not called


async def test_punch_packets_on_the_shared_socket_reach_on_other() -> None:
    others: list[tuple[bytes, Address]] = []
    with udp_sockets(3) as (v_sock, o_sock, agent_sock):
        punch = encode(PunchPacket(Kind.KEEPALIVE, True, b"session", 7), KEY)
        agent_sock.sendto(punch, addr_of(o_sock))  # before the owner's QUIC connection exists
        async with quic_pair(
            echo, visitor_sock=v_sock, owner_sock=o_sock, on_other=lambda d, a: others.append((d, a))
        ) as (
            visitor,
            _owner,
        ):
            agent_sock.sendto(punch, addr_of(v_sock))
            agent_sock.sendto(punch, addr_of(o_sock))
            # A stream round trip after the datagrams were sent: loopback keeps their order.
            end = await visitor.open_stream()
            await end.write(b"ping")
            end.write_eof()
            assert await asyncio.wait_for(read_all(end), 5) == b"ping"
            end.close()
            agent_sock.sendto(b"\x0cpun" + bytes(60), addr_of(v_sock))
            visitor.send_raw(punch, addr_of(agent_sock))
            loop = asyncio.get_running_loop()
            assert await asyncio.wait_for(loop.sock_recv(agent_sock, 2048), 5) == punch
        assert others.count((punch, addr_of(agent_sock))) == 3


async def test_datagrams_cross_both_ways() -> None:
    to_owner: asyncio.Queue[bytes] = asyncio.Queue()
    to_visitor: asyncio.Queue[bytes] = asyncio.Queue()
    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(
            echo,
            visitor_sock=v_sock,
            owner_sock=o_sock,
            on_owner_datagram=to_owner.put_nowait,
            on_visitor_datagram=to_visitor.put_nowait,
        ) as (visitor, owner):
            big = os.urandom(visitor.max_datagram_payload)
            assert visitor.send_datagram(b"up")
            assert visitor.send_datagram(big)
            assert owner.send_datagram(b"down")
            assert not owner.send_datagram(big + b"x")  # one byte too large: refused, not queued
            assert await asyncio.wait_for(to_owner.get(), 5) == b"up"
            assert await asyncio.wait_for(to_owner.get(), 5) == big
            assert await asyncio.wait_for(to_visitor.get(), 5) == b"down"


async def test_a_close_by_the_peer_sets_closed_with_a_reason() -> None:
    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(echo, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, owner):
            end = await visitor.open_stream()
            await end.write(b"x")
            assert await asyncio.wait_for(end.read(10), 5) == b"x"
            visitor.close()
            await asyncio.wait_for(owner.wait_closed(), 5)
            assert "peer closed" in owner.reason
            await asyncio.wait_for(visitor.wait_closed(), 5)
            assert visitor.reason == "closed locally"
            with pytest.raises(ConnectionResetError):
                await end.read(10)


class Rebinder:
    """A UDP relay on loopback standing in for the visitor's NAT: the visitor sends to ``front``; the
    relay forwards from ``back`` to the owner, and `rebind` moves ``back`` to a new port mid-flow (the
    NAT's mapping changed: the old port is closed)."""

    def __init__(self, owner: Address) -> None:
        self.loop = asyncio.get_running_loop()
        self.owner = owner
        self.front = self._socket()
        self.backs: list[socket.socket] = []
        self.visitor: Address | None = None
        self.paused = False
        self.loop.add_reader(self.front.fileno(), self._from_visitor)
        self.rebind()

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        return sock

    @property
    def back_address(self) -> Address:
        return addr_of(self.backs[-1])

    def rebind(self) -> None:
        """A new mapping; the old one is gone (what reaches its port now is lost)."""
        if self.backs:
            old = self.backs.pop()
            self.loop.remove_reader(old.fileno())
            old.close()
        back = self._socket()
        self.backs.append(back)
        self.loop.add_reader(back.fileno(), self._from_owner, back)

    def _from_visitor(self) -> None:
        for _ in range(256):
            try:
                data, source = self.front.recvfrom(2048)
            except BlockingIOError:
                return
            self.visitor = (str(source[0]), int(source[1]))
            if not self.paused:
                self.backs[-1].sendto(data, self.owner)

    def _from_owner(self, back: socket.socket) -> None:
        for _ in range(256):
            try:
                data, _source = back.recvfrom(2048)
            except BlockingIOError:
                return
            if self.visitor is not None and not self.paused:
                self.front.sendto(data, self.visitor)

    def close(self) -> None:
        for sock in (self.front, *self.backs):
            self.loop.remove_reader(sock.fileno())
            sock.close()


async def test_a_nat_rebinding_mid_stream_keeps_the_stream_intact() -> None:
    payload = os.urandom(12 * 1024 * 1024)
    halfway = asyncio.Event()

    async def owner_side(end: QuicStreamEnd) -> None:
        got = 0
        while data := await end.read(256 * 1024):
            got += len(data)
            if got >= len(payload) // 3:
                halfway.set()
            await end.write(data)
        end.write_eof()

    with udp_sockets(2) as (v_sock, o_sock):
        nat = Rebinder(addr_of(o_sock))
        try:
            async with quic_pair(
                owner_side,
                visitor_sock=v_sock,
                owner_sock=o_sock,
                visitor_target=addr_of(nat.front),
                owner_peer=nat.back_address,
            ) as (visitor, owner):
                first_back = nat.back_address
                assert owner.peer == first_back
                end = await visitor.open_stream()
                writer = asyncio.ensure_future(write_all(end, payload))
                reader = asyncio.ensure_future(read_all(end))
                await asyncio.wait_for(halfway.wait(), 30)
                nat.rebind()
                got = await asyncio.wait_for(reader, 60)
                await writer
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
                assert owner.peer == nat.back_address != first_back
                end.close()
        finally:
            nat.close()


async def test_keepalives_hold_an_idle_path_and_a_silent_peer_times_out() -> None:
    settings = PathSettings(keepalive_s=0.2, idle_timeout=1.0)
    with udp_sockets(2) as (v_sock, o_sock):
        nat = Rebinder(addr_of(o_sock))
        try:
            async with quic_pair(
                echo,
                visitor_sock=v_sock,
                owner_sock=o_sock,
                visitor_target=addr_of(nat.front),
                owner_peer=nat.back_address,
                settings=settings,
            ) as (visitor, owner):
                # Three idle timeouts without application data: the PINGs keep it open.
                done, _ = await asyncio.wait(
                    {
                        asyncio.ensure_future(owner.wait_closed()),
                        asyncio.ensure_future(visitor.wait_closed()),
                    },
                    timeout=3.0,
                )
                assert not done, (owner.reason, visitor.reason)
                nat.paused = True  # the path goes silent
                start = asyncio.get_running_loop().time()
                await asyncio.wait_for(asyncio.gather(owner.wait_closed(), visitor.wait_closed()), 5)
                assert asyncio.get_running_loop().time() - start <= 1.0 + 2.0
                assert owner.reason == visitor.reason == "idle timeout"
        finally:
            nat.close()


async def test_streams_beyond_the_owners_allowance_wait_in_line_and_the_path_survives() -> None:
    """The owner allows `PathSettings.max_streams` streams open at once. Further `open_stream` calls wait
    in line (no stream exists for them yet); cancelling them leaves the path up (ending a stream beyond
    the peer's allowance would name one it may not have, and it would close the connection), and once
    the held streams end, new ones carry data intact."""
    settings = PathSettings(max_streams=4)
    active, peak = 0, 0

    async def owner_side(end: QuicStreamEnd) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await echo(end)
        finally:
            active -= 1

    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(owner_side, visitor_sock=v_sock, owner_sock=o_sock, settings=settings) as (
            visitor,
            owner,
        ):
            release = asyncio.Event()
            echoed: list[int] = []
            three = asyncio.Event()
            payload = os.urandom(64 * 1024)

            async def held(i: int) -> bytes:
                end = await visitor.open_stream()
                try:
                    await end.write(b"x")
                    assert await end.read(1) == b"x"
                    echoed.append(i)
                    if len(echoed) >= 3:  # the proof stream may still count: at least three fit
                        three.set()
                    await release.wait()
                    writer = asyncio.ensure_future(write_all(end, payload))
                    got = await read_all(end)
                    await writer
                    return got
                finally:
                    end.close()

            tasks = [asyncio.ensure_future(held(i)) for i in range(10)]
            await asyncio.wait_for(three.wait(), 10)
            waiting = [t for i, t in enumerate(tasks) if i not in echoed]
            assert len(waiting) >= 10 - 5  # four open at once, five once the proof stream is gone
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            release.set()
            kept = [t for i, t in enumerate(tasks) if i in echoed]
            for got in await asyncio.wait_for(asyncio.gather(*kept), 30):
                assert got == payload
            assert not visitor.closed.is_set() and not owner.closed.is_set()
            for _ in range(3):  # the allowance came back: new streams open and carry data
                assert await echo_once(visitor, payload) == payload
            assert peak <= 4


async def test_a_handoff_on_a_busy_path_waits_for_ready_while_the_path_delivers() -> None:
    """`READY` that queues behind a bulk transfer comes after many handoff timeouts: while packets keep
    arriving the visitor waits for it, and only a silent path counts as dead."""
    bulk = os.urandom(8 * 1024 * 1024)
    halfway = asyncio.Event()

    async def owner_side(end: QuicStreamEnd) -> None:
        first = await end.read(1)
        if first == GO:  # the handoff stream: READY only once the bulk stream is half echoed
            await halfway.wait()
            await end.write(READY)
            with contextlib.suppress(ConnectionResetError):  # the visitor closes it
                await end.read(1)
            return
        await end.write(first)
        sent = len(first)
        while data := await end.read(256 * 1024):
            await end.write(data)
            sent += len(data)
            if sent >= len(bulk) // 2:
                halfway.set()
        end.write_eof()

    with udp_sockets(2) as (v_sock, o_sock):
        async with quic_pair(owner_side, visitor_sock=v_sock, owner_sock=o_sock) as (visitor, _owner):
            busy = asyncio.ensure_future(echo_once(visitor, bulk))
            end = await visitor.open_stream()
            rtt = await hand_over(end, 0.005, progress=lambda: visitor.datagrams_received)
            assert rtt is not None
            end.close()
            assert await asyncio.wait_for(busy, 60) == bulk

            halfway.clear()
            silent = await visitor.open_stream()  # progress that never moves: given up at the timeout
            assert await hand_over(silent, 0.05, progress=lambda: 0) is None
            halfway.set()


async def test_many_bulk_streams_take_small_turns_in_order() -> None:
    """With hundreds of streams sending at once, each writer's turn is small and turns go in the order
    the writers queued: between two writes of one stream the others move at most about one turn each
    plus the connection's send room, so a relay reads every stream's source often (a source unread
    for long loses a closed service's reply, see the module docstring). Bytes verified per stream."""
    streams, writes = 600, 3
    got: dict[int, bytes] = {}
    all_read = asyncio.Event()

    async def owner_side(end: QuicStreamEnd) -> None:
        h = hashlib.sha256()
        while data := await end.read(256 * 1024):
            h.update(data)
        got[end.stream_id] = h.digest()
        if len(got) == streams:
            all_read.set()

    total = 0
    marks: dict[int, list[int]] = {i: [] for i in range(streams)}
    sent: dict[int, bytes] = {}

    with udp_sockets(2) as (v_sock, o_sock):
        settings = PathSettings(max_streams=streams + 8)
        async with quic_pair(owner_side, visitor_sock=v_sock, owner_sock=o_sock, settings=settings) as (
            visitor,
            _owner,
        ):
            ends = [await visitor.open_stream() for _ in range(streams)]
            turn = visitor.fair_write()
            assert turn == quic.FAIR_WRITE_MIN == ends[0].max_write()

            async def writer(i: int, end: QuicStreamEnd) -> None:
                nonlocal total
                h = hashlib.sha256()
                for n in range(writes):
                    await asyncio.sleep(0)  # as a relay's read of its source would
                    chunk = bytes([i % 251, n]) * (end.max_write() // 2)
                    marks[i].append(total)
                    await end.write(chunk)
                    total += len(chunk)
                    h.update(chunk)
                end.write_eof()
                sent[end.stream_id] = h.digest()

            await asyncio.wait_for(asyncio.gather(*(writer(i, e) for i, e in enumerate(ends))), 120)
            await asyncio.wait_for(all_read.wait(), 60)
            for end in ends:
                end.close()
    bound = quic_core.CONNECTION_SEND_BUFFER + streams * turn
    gaps = [b - a for m in marks.values() for a, b in itertools.pairwise(m)]
    assert max(gaps) <= bound, f"a stream waited while the others wrote {max(gaps)} bytes (bound {bound})"
    assert total == streams * writes * turn
    assert got == sent
