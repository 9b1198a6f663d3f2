"""QUIC inside a punched UDP hole: the owner is the QUIC server, the visitor the client.

`QuicPath.connect` (visitor) and `QuicPath.accept` (owner) run aioquic's sans-I/O `QuicConnection`
(`pierce.p2p.quic_core.PathConnection`) on the socket the punch locked, shared with the punch agent:
datagrams that `is_punch_packet` recognises go to ``on_other`` (the agent keeps answering late probes
and keepalives), everything else to QUIC with its source address, so aioquic's server-side migration
follows a visitor whose NAT rebinds (each datagram goes to the address aioquic names).

Authentication: the owner presents its `Identity`; the visitor compares the certificate's SHA-256 with
the fingerprint it pinned through the rendezvous as soon as the TLS Certificate message arrives, before
it sends anything of its own, then proves it holds the rendezvous key on stream 0 (`quic_core`). The
owner refuses every other stream until the proof checks out, and closes the connection when it does
not, or when it has not arrived within the deadline.

Streams are `pierce.relay.End`s (`QuicStreamEnd`): FIN is the half-close both ways, a peer's reset
raises `ConnectionResetError` from ``read``. Each end allows `PathSettings.max_streams` streams open at
once (aioquic's default would be 128); `open_stream` waits in line beyond it rather than creating a
stream aioquic would hold blocked (ending one of those would name a stream the peer may not have yet,
which closes the connection). ``write`` waits while the stream holds more than
`quic_core.STREAM_SEND_BUFFER` unsent bytes (or the connection `CONNECTION_SEND_BUFFER`); received bytes
are bounded by the receive windows, which only move as the application reads (`quic_core`).

Fair turns: writers that wait for the connection's room queue in the order they came, and each one woken
takes one turn; a writer that arrives while others wait queues behind them. A turn is small when many
streams share the path (`QuicStreamEnd.max_write`: the connection's room shared among its streams, at
least `FAIR_WRITE_MIN`), so the relay reads each stream's source often: with a thousand streams of bulk
data and 256 KiB turns, a stream's source went unread for a minute at a time, and a service that had
written its reply and closed could lose it (the kernel gives up on a closed socket's retransmissions
after fewer tries than an open one's: ``tcp_orphan_retries``). Only as many writers are woken as the
room that came free may take, not all of them on every flush.

I/O: one ``add_reader`` callback reads bursts of datagrams, then the connection's events are handled
and whatever QUIC wants to send goes out at once (acknowledgements must not wait); application writes
only schedule one flush per event-loop turn. A send that would block is dropped (QUIC recovers it as a
loss). aioquic's timer runs on ``loop.call_later`` against `time.monotonic` (see `_clock`); a PING
goes out when nothing was sent for ``keepalive_s`` so the NAT mappings stay. On Linux a burst goes to
the kernel in runs of equal-size datagrams, one ``sendmsg`` with ``UDP_SEGMENT`` each (`gso_runs`), and
reads take whole runs with ``UDP_GRO`` (split by the segment size): in a bulk transfer one ``sendto``
and one ``recvfrom`` per datagram were about 18 % of each side's CPU. GSO is off for the path after
the kernel refuses it once; UDP_GRO is cleared when the path ends.

Throughput is bound by aioquic's per-packet Python work (bench/bench_quic.py: loopback, one CPU for
both ends, about 240 Mbit/s with 1200-byte datagrams, ~0.95x bare aioquic driven with the same pacer,
~2x bare aioquic with its own; its docstring has the profile). Larger datagrams help (1350: about +12 %
on loopback), but a punched path's MTU is unknown and aioquic does no path-MTU discovery, so 1200 stays
the default (`PathSettings.max_datagram_size`). Congestion control is BBR (`pierce.p2p.bbr`), not
aioquic's CUBIC or Reno, which cut their window at every lost packet: at 1 % random loss and 100 ms RTT
QUIC moved 0.06x of an ``ssh -R`` on the kernel's BBR, and 0.96x with its own (bench/bench_faults.py).

The socket: QuicPath takes over its reader (``add_reader`` replaces the punch driver's, which has
returned by then) and never closes it; the caller does, after `closed`. Cancel safety: ``connect`` and
``accept`` may be cancelled or wrapped in a timeout; the half-made connection is closed then.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from pierce.errors import RemoteError
from pierce.nat.punch_wire import is_punch_packet
from pierce.p2p import quic_core
from pierce.p2p.identity import Identity, fingerprint_of
from pierce.p2p.quic_core import CloseCode, PathConnection, StreamCode
from pierce.p2p.settings import PathSettings
from pierce.protocol import auth
from pierce.relay import STREAM_BUFFER_SIZE, End

Address = tuple[str, int]
OnOther = Callable[[bytes, Address], None]
OnDatagram = Callable[[bytes], None]
OnStream = Callable[["QuicStreamEnd"], Awaitable[None]]

#: Datagrams read per wake-up before the event loop gets its turn.
READ_BURST = 256
#: Largest datagram read (`quic_core.MAX_DATAGRAM_SIZE` fits; punch packets are far smaller).
RECV_SIZE = 2048
#: Socket buffers asked for (the kernel caps them at net.core.[rw]mem_max).
SOCKET_BUFFER = 4 * 1024 * 1024
#: The smallest turn of a writer waiting for the connection's room (`QuicPath.fair_write`).
FAIR_WRITE_MIN = 16 * 1024
#: QUIC's clock. Not ``loop.time()``: uvloop's advances in whole milliseconds, and aioquic's pacer and RTT
#: estimate on a fast path need finer time (on uvloop, loop.time() held loopback transfers to a fifth).
_clock = time.monotonic
#: Shortest wait for a timer that is not due yet: a pacing wait of microseconds would otherwise spin the
#: loop (uvloop runs sub-millisecond timers at once); the pacer's burst credit covers the millisecond.
MIN_TIMER = 0.001
#: Linux UDP segmentation offload (``UDP_SEGMENT``, linux/udp.h): equal-size datagrams to one address go
#: to the kernel in one ``sendmsg`` and are cut there (or on the NIC). A run holds at most
#: `GSO_MAX_SEGMENTS` datagrams and `GSO_MAX_BYTES` in all (one IP packet's worth, the kernel's limits).
UDP_SEGMENT = 103
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
#: What a ``sendmsg`` with ``UDP_SEGMENT`` fails with where the kernel, the socket or the device cannot
#: segment: GSO is then off for the path and the run goes out datagram by datagram.
GSO_UNSUPPORTED = frozenset({errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
#: Linux UDP receive offload (``UDP_GRO``): a run of equal-size datagrams of one flow arrives in one read,
#: with its segment size in a control message; read with room for one whole run.
UDP_GRO = 104
GRO_RECV_SIZE = 65535
GRO_CMSG_SIZE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
#: Streams a peer may open that we refuse (before the proof, or of a kind we do not serve) before the
#: connection is closed.
MAX_REFUSED_STREAMS = 64


class QuicPathError(RemoteError):
    """A direct QUIC path could not be set up, or broke."""


class FingerprintMismatch(QuicPathError):
    """The owner presented another certificate than the one pinned through the rendezvous."""


class ProofRejected(QuicPathError):
    """The visitor's proof of the rendezvous key was wrong or missing."""


class QuicPath:
    """One QUIC connection on a punched socket. Build it with `connect` or `accept`."""

    def __init__(
        self,
        sock: socket.socket,
        peer: Address,
        *,
        is_client: bool,
        key: bytes,
        settings: PathSettings,
        on_other: OnOther | None = None,
        on_datagram: OnDatagram | None = None,
        on_stream: OnStream | None = None,
        fingerprint: bytes = b"",
        identity: Identity | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._initial_peer = peer
        self._is_client = is_client
        self._key = key
        self._settings = settings
        self._on_other = on_other
        self._on_datagram = on_datagram
        self._on_stream = on_stream
        self._pinned = fingerprint
        self._identity = identity
        self._conn: PathConnection | None = None
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._proven = False
        self._proof = bytearray()
        self._certificate_checked = not is_client
        self._ends: dict[int, QuicStreamEnd] = {}
        #: Per type of stream the peer opens (id % 4): the lowest id of that type it has not opened yet.
        self._peer_next = {0: 0, 1: 1, 2: 2, 3: 3}
        self._refused = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._last_sent = _clock()
        #: Writers waiting for room, in the order they came (given turns in that order: none starves).
        self._send_waiters: dict[QuicStreamEnd, None] = {}
        #: Small writes (`quic_core.SMALL_WRITE`) waiting for their own stream's room.
        self._small_waiters: dict[QuicStreamEnd, None] = {}
        #: `_unsent_total` as last computed (None: to compute again), kept up to date by writes.
        self._unsent: int | None = None
        #: `open_stream` calls waiting, in order, for the peer to allow one more stream (MAX_STREAMS).
        self._stream_waiters: deque[asyncio.Future[QuicStreamEnd]] = deque()
        self._reading = False
        self._close_reason = ""
        #: Set once the connection has ended, whatever the cause (`reason` says which).
        self.closed = asyncio.Event()
        #: Why the path closed: "" while open.
        self.reason = ""
        #: QUIC datagrams received from the peer (a path that still delivers is alive, however busy).
        self.datagrams_received = 0
        #: Datagrams not sent because the socket's buffer was full or the network refused them.
        self.send_drops = 0
        #: Whether runs of datagrams go out with UDP_SEGMENT (Linux; off after the kernel refuses one).
        self.gso = sys.platform == "linux"
        #: ``sendmsg`` calls that carried more than one datagram.
        self.gso_sends = 0
        #: Whether reads may return runs of datagrams (UDP_GRO, set on the socket while the path runs).
        self._gro = False
        #: Reads that returned more than one datagram.
        self.gro_reads = 0
        #: Largest payload `send_datagram` takes.
        self.max_datagram_payload = settings.max_datagram_size - quic_core.DATAGRAM_OVERHEAD

    # -- construction ------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        sock: socket.socket,
        peer: Address,
        *,
        fingerprint: bytes,
        key: bytes,
        timeout: float = 5.0,
        on_other: OnOther | None = None,
        on_datagram: OnDatagram | None = None,
        settings: PathSettings | None = None,
    ) -> QuicPath:
        """The visitor's end: handshake with ``peer``, check its certificate against ``fingerprint``,
        prove ``key``, all within ``timeout`` seconds. Raises `FingerprintMismatch`, `ProofRejected` or
        `QuicPathError`."""
        settings = settings or PathSettings()
        path = cls(sock, peer, is_client=True, key=key, settings=settings, on_other=on_other,
                   on_datagram=on_datagram, fingerprint=fingerprint)  # fmt: skip
        path._conn = PathConnection(
            configuration=settings.configuration(is_client=True), max_streams=settings.max_streams
        )
        path._conn.connect(peer, _clock())
        await path._establish(timeout, "the owner")
        return path

    @classmethod
    async def accept(
        cls,
        sock: socket.socket,
        peer: Address,
        *,
        identity: Identity,
        key: bytes,
        on_stream: OnStream,
        timeout: float = 5.0,
        on_other: OnOther | None = None,
        on_datagram: OnDatagram | None = None,
        settings: PathSettings | None = None,
    ) -> QuicPath:
        """The owner's end: wait for the visitor's handshake from ``peer`` and its proof of ``key``, all
        within ``timeout`` seconds. Each stream the visitor opens afterwards goes to ``on_stream`` in a
        task of its own (the stream is closed when it returns). Raises `ProofRejected` or
        `QuicPathError`; ``on_stream`` is never called then."""
        settings = settings or PathSettings()
        settings.configuration(is_client=False, identity=identity)  # invalid settings fail here, not later
        path = cls(sock, peer, is_client=False, key=key, settings=settings, on_other=on_other,
                   on_datagram=on_datagram, on_stream=on_stream, identity=identity)  # fmt: skip
        await path._establish(timeout, "the visitor")
        return path

    async def _establish(self, timeout: float, who: str) -> None:
        self._start()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._ready)
        except TimeoutError:
            self._abort(CloseCode.PROOF_TIMEOUT, "no handshake and proof in time")
            host, port = self._initial_peer
            raise QuicPathError(
                f"no QUIC handshake and proof with {who} at {host}:{port} within {timeout:g} s"
            ) from None
        except BaseException:
            self._abort(CloseCode.NO_ERROR, "set-up abandoned")
            raise

    def _start(self) -> None:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                if self._sock.getsockopt(socket.SOL_SOCKET, option) < SOCKET_BUFFER:
                    self._sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        self._sock.setblocking(False)
        if sys.platform == "linux" and GRO_CMSG_SIZE:
            try:
                self._sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
                self._gro = True
            except OSError:  # an older kernel: one datagram per read
                pass
        self._loop.add_reader(self._sock.fileno(), self._readable)
        self._reading = True
        self._keepalive = self._loop.call_later(self._keepalive_s, self._on_keepalive)
        self._transmit()

    @property
    def _keepalive_s(self) -> float:
        return self._settings.keepalive_s

    @property
    def keepalive_s(self) -> float:
        """Seconds between keepalives when the path is idle."""
        return self._settings.keepalive_s

    # -- public surface ------------------------------------------------------------------------

    @property
    def peer(self) -> Address:
        """Where datagrams go now (changes when the visitor's address migrates)."""
        addr = self._conn.get_peer_address() if self._conn is not None else None
        return (str(addr[0]), int(addr[1])) if addr is not None else self._initial_peer

    @property
    def rtt(self) -> float:
        """Smoothed round-trip time in seconds (0.0 before the first sample)."""
        return self._conn.smoothed_rtt if self._conn is not None else 0.0

    async def open_stream(self) -> QuicStreamEnd:
        """A new bidirectional stream (the visitor opens them; the owner's `on_stream` gets it). When the
        owner's allowance of streams open at once is used up, the call waits, in line with any others,
        until one ends; ConnectionResetError when the path closes meanwhile."""
        conn = self._conn
        if conn is None or self.closed.is_set() or not self._is_client:
            raise ConnectionResetError(
                f"no stream can be opened on this QUIC path ({self.reason or 'owner side'})"
            )
        if not self._stream_waiters and conn.may_open_stream():
            return self._new_stream(conn)
        # The owner allows `PathSettings.max_streams` open at once: wait in line for one to end (its
        # MAX_STREAMS frame), however long that takes while the path lives (cancellable).
        waiter: asyncio.Future[QuicStreamEnd] = self._loop.create_future()
        self._stream_waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                waiter.result().close()  # granted as this call was cancelled
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._stream_waiters.remove(waiter)

    def _new_stream(self, conn: PathConnection) -> QuicStreamEnd:
        stream_id = conn.get_next_available_stream_id()
        conn.send_stream_data(stream_id, b"")  # creates it (the peer learns of it with its first byte)
        end = self._ends[stream_id] = QuicStreamEnd(self, stream_id)
        return end

    def _grant_streams(self) -> None:
        """Open a stream for each waiting `open_stream` the peer's MAX_STREAMS now allows, in order."""
        conn = self._conn
        while conn is not None and self._stream_waiters and conn.may_open_stream():
            waiter = self._stream_waiters.popleft()
            if not waiter.done():
                waiter.set_result(self._new_stream(conn))

    def send_datagram(self, data: bytes) -> bool:
        """Send ``data`` in a QUIC DATAGRAM frame (unreliable, unordered). False when it was dropped: too
        large (`max_datagram_payload`), too many queued, or the path is not open."""
        conn = self._conn
        if conn is None or self.closed.is_set() or not self._proven or len(data) > self.max_datagram_payload:
            return False
        if conn.pending_datagrams() >= quic_core.MAX_PENDING_DATAGRAMS:
            return False
        conn.send_datagram_frame(data)
        self._flush_soon()
        return True

    def send_raw(self, data: bytes, addr: Address) -> None:
        """Send a non-QUIC datagram (punch answers, keepalives) on the same socket; dropped if it would
        block."""
        try:
            self._sock.sendto(data, addr)
        except OSError:
            self.send_drops += 1

    def close(self) -> None:
        """Close the connection (CONNECTION_CLOSE, no error). Unsent stream data is discarded: end the
        streams with ``write_eof`` and wait for them first for a graceful close. `closed` is set once the
        closing period (three probe timeouts) is over; the socket stays the caller's."""
        if self._close_reason or self.closed.is_set():
            return
        self._close_reason = "closed locally"
        if self._conn is None:
            self._teardown(self._close_reason)
            return
        self._conn.close(error_code=CloseCode.NO_ERROR, reason_phrase="closed")
        self._fail_ends(ConnectionResetError("the QUIC path was closed"))
        self._transmit()

    def close_now(self, why: str) -> None:
        """Give the path up at once (it stopped answering): one CONNECTION_CLOSE goes out, `closed` is
        set now with ``why`` as the reason, and every stream fails."""
        self._abort(CloseCode.NO_ERROR, why)

    async def wait_closed(self) -> None:
        await self.closed.wait()

    # -- reading ----------------------------------------------------------------------------

    def _readable(self) -> None:
        now = _clock()
        got = False
        read = 0
        while read < READ_BURST:
            try:
                datagrams, source = self._recv()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error queued on the socket: nothing to read
                read += 1
                continue
            read += len(datagrams)
            addr = (str(source[0]), int(source[1]))
            for data in datagrams:
                if is_punch_packet(data):
                    if self._on_other is not None:
                        self._call(self._on_other, data, addr)
                    continue
                conn = self._conn or self._first_packet(data, addr)
                if conn is None:
                    continue
                conn.receive_datagram(data, addr, now)
                self.datagrams_received += 1
                got = True
        if got and not self.closed.is_set():
            self._handle_events()
            if self._stream_waiters and not self.closed.is_set():
                self._grant_streams()
            self._transmit()

    def _recv(self) -> tuple[list[bytes], Address]:
        """The next datagram, or run of datagrams of one sender (UDP_GRO), and where it came from."""
        if not self._gro:
            data, source = self._sock.recvfrom(RECV_SIZE)
            return [data], source
        data, ancillary, _flags, source = self._sock.recvmsg(GRO_RECV_SIZE, GRO_CMSG_SIZE)
        size = next(
            (
                int.from_bytes(cdata[:4], sys.byteorder)
                for level, kind, cdata in ancillary
                if level == socket.SOL_UDP and kind == UDP_GRO and len(cdata) >= 4
            ),
            0,
        )
        if not 0 < size < len(data):
            return [data], source
        self.gro_reads += 1
        return [data[i : i + size] for i in range(0, len(data), size)], source

    def _first_packet(self, data: bytes, addr: Address) -> PathConnection | None:
        """Server side: a connection for the visitor's first Initial; anything else is dropped."""
        if self._is_client or addr != self._initial_peer or len(data) < quic_core.MIN_DATAGRAM_SIZE:
            return None
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=quic_core.CONNECTION_ID_LENGTH)
        except ValueError:
            return None
        if header.packet_type != QuicPacketType.INITIAL:
            return None
        config = self._settings.configuration(is_client=False, identity=self._identity)
        if header.version not in config.supported_versions:
            return None
        self._conn = PathConnection(
            configuration=config,
            original_destination_connection_id=header.destination_cid,
            max_streams=self._settings.max_streams,
        )
        return self._conn

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception as exc:
            self._loop.call_exception_handler({"message": "QuicPath callback failed", "exception": exc})

    # -- events ---------------------------------------------------------------------------------

    def _handle_events(self) -> None:
        conn = self._conn
        assert conn is not None
        if not self._certificate_checked:
            self._check_certificate(conn)
        while not self.closed.is_set() and (event := conn.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self._on_stream_data(event)
            elif isinstance(event, events.DatagramFrameReceived):
                if self._on_datagram is not None and self._proven:
                    self._call(self._on_datagram, event.data)
            elif isinstance(event, events.StreamReset):
                end = self._ends.get(event.stream_id) or self._peer_opened(event.stream_id, reset=True)
                if end is not None:
                    end._peer_reset(event.error_code)
            elif isinstance(event, events.StopSendingReceived):
                if (end := self._ends.get(event.stream_id)) is not None:
                    end._peer_stopped(event.error_code)
            elif isinstance(event, events.HandshakeCompleted):
                if self._is_client:
                    self._send_proof(conn)
            elif isinstance(event, events.ConnectionTerminated):
                self._terminated(event)
        if conn.peer_close is not None and not self.closed.is_set():
            # The peer closed: nothing more will be sent or delivered (draining), so end here.
            self._terminated(conn.peer_close)

    def _check_certificate(self, conn: PathConnection) -> None:
        der = conn.peer_certificate_der()
        if der is None:
            return
        self._certificate_checked = True
        got = fingerprint_of(der)
        if not auth.verify(self._pinned, got):
            host, port = self._initial_peer
            self._fail_ready(
                FingerprintMismatch(
                    f"the owner at {host}:{port} presented certificate {got.hex()[:16]}..., not the pinned "
                    f"fingerprint {self._pinned.hex()[:16]}... (certificate fingerprint mismatch)"
                )
            )
            self._abort(CloseCode.FINGERPRINT_MISMATCH, "certificate fingerprint mismatch")

    def _send_proof(self, conn: PathConnection) -> None:
        if self._ready.done() or not self._certificate_checked:
            return
        nonce = auth.new_nonce()
        proof = auth.p2p_client_proof(self._key, server_fingerprint=self._pinned, nonce=nonce)
        stream_id = conn.get_next_available_stream_id()
        assert stream_id == quic_core.PROOF_STREAM
        end = self._ends[stream_id] = QuicStreamEnd(self, stream_id)
        end._eof_sent = True
        conn.send_stream_data(stream_id, nonce + proof, end_stream=True)

    def _peer_opened(self, stream_id: int, *, reset: bool = False) -> QuicStreamEnd | None:
        """The end of ``stream_id`` when the peer just opened it (and every lower stream of its type, RFC
        9000 section 2.1); None for a stream we are done with, refused, or one reset before its first byte
        (no application ever sees that one)."""
        kind = stream_id % 4
        ours = (kind % 2 == 0) == self._is_client  # bit 0 clear: opened by the client
        if ours or stream_id < self._peer_next[kind]:
            return None
        for new_id in range(self._peer_next[kind], stream_id + (0 if reset else 4), 4):
            self._open_peer_stream(new_id)
        self._peer_next[kind] = stream_id + 4
        return self._ends.get(stream_id)

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        stream_id = event.stream_id
        end = self._ends.get(stream_id) or self._peer_opened(stream_id)
        if end is None:
            return
        if stream_id == quic_core.PROOF_STREAM and not self._proven:
            self._proof_data(end, event.data, event.end_stream)
        else:
            end._received(event.data, event.end_stream)

    def _open_peer_stream(self, stream_id: int) -> None:
        """The peer opened ``stream_id``: the proof stream, an application stream, or one we refuse."""
        if (
            not self._is_client
            and stream_id % 4 == 0
            and (self._proven or stream_id == quic_core.PROOF_STREAM)
        ):
            end = self._ends[stream_id] = QuicStreamEnd(self, stream_id)
            if self._proven and self._on_stream is not None:
                task = self._loop.create_task(self._serve(end))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        self._refuse(stream_id)

    async def _serve(self, end: QuicStreamEnd) -> None:
        assert self._on_stream is not None
        try:
            await self._on_stream(end)
        finally:
            end.close()

    def _refuse(self, stream_id: int) -> None:
        conn = self._conn
        assert conn is not None
        self._refused += 1
        if self._refused > MAX_REFUSED_STREAMS:
            self._close_reason = "the peer opened too many streams it may not open"
            conn.close(error_code=CloseCode.NO_ERROR, reason_phrase="too many refused streams")
            return
        with contextlib.suppress(ValueError):
            conn.stop_stream(stream_id, StreamCode.REFUSED)
        if stream_id % 4 < 2:  # bidirectional: reset our sending side too
            with contextlib.suppress(ValueError):
                conn.reset_stream(stream_id, StreamCode.REFUSED)

    def _proof_data(self, end: QuicStreamEnd, data: bytes, fin: bool) -> None:
        self._proof += data
        self._consume(end.stream_id, len(data))
        end._eof = fin
        if self._is_client:  # the owner's answer
            if bytes(self._proof) == quic_core.PROOF_ACCEPTED:
                self._proven = True
                end.close()
                self._ready.set_result(None)
            elif len(self._proof) > len(quic_core.PROOF_ACCEPTED) or fin:
                self._fail_ready(QuicPathError("the owner answered the proof with something unexpected"))
                self._abort(CloseCode.NO_ERROR, "unexpected proof answer")
            return
        if len(self._proof) < quic_core.PROOF_MESSAGE_SIZE:
            if fin:
                self._reject_proof("the visitor's proof was cut short")
            return
        if len(self._proof) > quic_core.PROOF_MESSAGE_SIZE:
            self._reject_proof("the visitor's proof was too long")
            return
        assert self._identity is not None and self._conn is not None
        nonce, proof = bytes(self._proof[: auth.NONCE_SIZE]), bytes(self._proof[auth.NONCE_SIZE :])
        expected = auth.p2p_client_proof(
            self._key, server_fingerprint=self._identity.fingerprint, nonce=nonce
        )
        if not auth.verify(expected, proof):
            self._reject_proof("the visitor's proof does not match the rendezvous key")
            return
        self._conn.send_stream_data(end.stream_id, quic_core.PROOF_ACCEPTED, end_stream=True)
        end._eof_sent = True
        self._proven = True
        end.close()
        self._ready.set_result(None)

    def _reject_proof(self, why: str) -> None:
        self._fail_ready(ProofRejected(why))
        self._abort(CloseCode.PROOF_REJECTED, "proof rejected")

    def _fail_ready(self, exc: BaseException) -> None:
        if not self._ready.done():
            self._ready.set_exception(exc)
            self._ready.exception()  # marked retrieved: nobody may be waiting any more

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        if self._close_reason:
            reason = self._close_reason
        elif event.reason_phrase == "Idle timeout":
            reason = "idle timeout"
        else:
            code = f"code {event.error_code:#x}"
            detail = f": {event.reason_phrase}" if event.reason_phrase else ""
            who = "the peer closed the connection" if self._conn and self._conn.peer_close else "closed"
            if event.error_code == CloseCode.PROOF_REJECTED and self._is_client:
                self._fail_ready(
                    ProofRejected(f"the owner refused our proof of the rendezvous key ({code}){detail}")
                )
            reason = f"{who} ({code}){detail}"
        self._teardown(reason)

    # -- writing --------------------------------------------------------------------------------

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._transmit()

    def _transmit(self) -> None:
        conn = self._conn
        if conn is None or self.closed.is_set():
            return
        now = _clock()
        datagrams = conn.datagrams_to_send(now)
        self._unsent = None
        if self.gso and len(datagrams) > 1:
            for addr, size, run in gso_runs(datagrams):
                self._send_run(addr, size, run)
        else:
            self._send_each(datagrams)
        if datagrams:
            self._last_sent = now
        self._arm_timer(conn)
        if self._send_waiters or self._small_waiters:
            self._wake_writers()

    def _send_each(self, datagrams: list[tuple[bytes, Address]]) -> None:
        sendto = self._sock.sendto
        for data, addr in datagrams:
            try:
                sendto(data, addr)
            except OSError:  # full buffer, unreachable for now: a loss, as on the wire
                self.send_drops += 1

    def _send_run(self, addr: Address, size: int, run: list[bytes]) -> None:
        """``run``: datagrams of ``size`` bytes (the last may be shorter) to ``addr``, in one ``sendmsg``."""
        if len(run) == 1:
            self._send_each([(run[0], addr)])
            return
        try:
            self._sock.sendmsg(
                [b"".join(run)], [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("@H", size))], 0, addr
            )
            self.gso_sends += 1
        except OSError as exc:
            if exc.errno not in GSO_UNSUPPORTED:
                self.send_drops += len(run)  # full buffer...: a loss, as on the wire
                return
            self.gso = False
            self._send_each([(data, addr) for data in run])

    def _arm_timer(self, conn: PathConnection) -> None:
        when = conn.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            delay = when - _clock()
            if 0 < delay < MIN_TIMER:
                delay = MIN_TIMER
            self._timer = self._loop.call_later(max(0.0, delay), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        conn = self._conn
        if conn is None or self.closed.is_set():
            return
        conn.handle_timer(_clock())
        self._handle_events()
        self._transmit()

    def _on_keepalive(self) -> None:
        self._keepalive = None
        if self.closed.is_set():
            return
        now = _clock()
        if self._conn is not None and self._ready.done() and now - self._last_sent >= self._keepalive_s * 0.9:
            self._conn.send_ping(0)
            self._transmit()
        delay = max(self._last_sent + self._keepalive_s - _clock(), self._keepalive_s / 10)
        self._keepalive = self._loop.call_later(delay, self._on_keepalive)

    def _unsent_total(self) -> int:
        """Bytes given to every stream and not sent once: summed once per transmit and kept up to date
        by writes (a sum over every stream on every write adds up with a thousand streams)."""
        conn = self._conn
        if conn is None:
            return 0
        if self._unsent is None:
            ends = self._ends.values()
            self._unsent = sum(conn.unsent(end.stream_id, end._written) for end in ends if end._written)
        return self._unsent

    def fair_write(self) -> int:
        """One writer's turn: the connection's send room shared among the open streams, within
        [`FAIR_WRITE_MIN`, `relay.STREAM_BUFFER_SIZE`]."""
        share = quic_core.CONNECTION_SEND_BUFFER // max(1, len(self._ends))
        return max(FAIR_WRITE_MIN, min(STREAM_BUFFER_SIZE, share))

    def _wake_writers(self) -> None:
        """Give turns, in the order the writers came, while the room that came free lasts (a writer
        whose own stream is full keeps its place without a turn); small writes go when their stream has
        room."""
        conn = self._conn
        if conn is None:
            return
        for end in list(self._small_waiters):
            if conn.unsent(end.stream_id, end._written) < quic_core.STREAM_SEND_BUFFER:
                end._wake_writer()
        if not self._send_waiters:
            return
        room = quic_core.CONNECTION_SEND_BUFFER - self._unsent_total()
        if room <= 0:
            return
        turn = self.fair_write()
        for end in self._send_waiters:
            if not end._turn:
                if conn.unsent(end.stream_id, end._written) >= quic_core.STREAM_SEND_BUFFER:
                    continue
                end._turn = True
                end._wake_writer()
            room -= turn
            if room <= 0:
                break

    def _consume(self, stream_id: int, n: int) -> None:
        conn = self._conn
        if conn is not None and conn.consume(stream_id, n):
            self._flush_soon()

    # -- closing --------------------------------------------------------------------------------

    def _abort(self, code: int, why: str) -> None:
        """Close at once (set-up failures): CONNECTION_CLOSE goes out once, then the socket is released."""
        if self.closed.is_set():
            return
        self._close_reason = self._close_reason or why
        if self._conn is not None:
            self._conn.close(error_code=code, reason_phrase=why)
            self._transmit()
        self._teardown(self._close_reason)

    def _fail_ends(self, exc: BaseException) -> None:
        for end in list(self._ends.values()):
            end._fail(exc)

    def _teardown(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.reason = reason
        if self._reading:
            self._reading = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._sock.fileno())
        if self._gro:  # the socket goes back to its owner as it came: one datagram per read
            self._gro = False
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_UDP, UDP_GRO, 0)
        for handle in (self._timer, self._keepalive):
            if handle is not None:
                handle.cancel()
        self._timer = self._keepalive = None
        self._fail_ends(ConnectionResetError(f"the QUIC path closed: {reason}"))
        while self._stream_waiters:
            waiter = self._stream_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionResetError(f"the QUIC path closed: {reason}"))
        self._fail_ready(QuicPathError(f"the QUIC path closed during set-up: {reason}"))
        for task in list(self._tasks):
            task.cancel()
        self.closed.set()


def gso_runs(datagrams: list[tuple[bytes, Address]]) -> list[tuple[Address, int, list[bytes]]]:
    """``datagrams`` in order, cut into runs that one ``UDP_SEGMENT`` send can carry: (address, segment
    size, datagrams), every datagram of a run that size but the last, which may be shorter and ends it."""
    runs: list[tuple[Address, int, list[bytes]]] = []
    run: list[bytes] = []
    run_addr: Address | None = None
    size = total = 0
    for data, addr in datagrams:
        n = len(data)
        if (
            run
            and addr == run_addr
            and n <= size
            and len(run) < GSO_MAX_SEGMENTS
            and total + n <= GSO_MAX_BYTES
            and len(run[-1]) == size
        ):
            run.append(data)
            total += n
            continue
        if run:
            assert run_addr is not None
            runs.append((run_addr, size, run))
        run, run_addr, size, total = [data], addr, n, n
    if run:
        assert run_addr is not None
        runs.append((run_addr, size, run))
    return runs


class QuicStreamEnd(End):
    """A bidirectional QUIC stream as a relay `End`."""

    def __init__(self, path: QuicPath, stream_id: int) -> None:
        self._path = path
        self.stream_id = stream_id
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._error: BaseException | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._written = 0
        self._write_error: BaseException | None = None
        self._eof_sent = False
        self._closed = False
        #: Given a turn by `QuicPath._wake_writers` and not yet taken.
        self._turn = False

    # -- called by the path --

    def _received(self, data: bytes, fin: bool) -> None:
        if self._closed:
            return
        if data:
            self._chunks.append(data)
        if fin:
            self._eof = True
        self._wake_reader()

    def _peer_reset(self, code: int) -> None:
        self._fail(ConnectionResetError(f"the peer reset QUIC stream {self.stream_id} (code {code:#x})"))

    def _peer_stopped(self, code: int) -> None:
        # aioquic has reset our sending side already; reads may go on.
        self._eof_sent = True
        exc = ConnectionResetError(f"the peer stopped reading QUIC stream {self.stream_id} (code {code:#x})")
        self._write_error = exc
        self._wake_writer()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not (self._eof and self._eof_sent):
            self._error = exc
        self._wake_reader()
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- End --

    async def read(self, max_bytes: int) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof or self._closed:
                return b""
            self._read_waiter = self._path._loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        chunks = self._chunks
        first = chunks[0]
        if len(first) >= max_bytes:
            data = first[:max_bytes]
            if len(first) > max_bytes:
                chunks[0] = first[max_bytes:]
            else:
                chunks.popleft()
        else:
            parts = [chunks.popleft()]
            size = len(first)
            while chunks and size + len(chunks[0]) <= max_bytes:
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        self._path._consume(self.stream_id, len(data))
        return data

    async def write(self, data: bytes | memoryview) -> None:
        path = self._path
        conn = path._conn
        small = len(data) <= quic_core.SMALL_WRITE
        queue = path._small_waiters if small else path._send_waiters
        try:
            while True:
                err = self._error or self._write_error
                if err is not None:
                    raise err
                if self._closed or conn is None or path.closed.is_set():
                    raise ConnectionResetError(f"QUIC stream {self.stream_id} is closed")
                if self._eof_sent:
                    raise RuntimeError("write after write_eof")
                if conn.unsent(self.stream_id, self._written) < quic_core.STREAM_SEND_BUFFER and (
                    small
                    or self._turn
                    or (not path._send_waiters and path._unsent_total() < quic_core.CONNECTION_SEND_BUFFER)
                ):
                    break
                if self not in queue:  # a place in line, kept until this write goes
                    queue[self] = None
                    if not small:
                        path._flush_soon()  # turns are given after a flush: room may be free already
                self._write_waiter = path._loop.create_future()
                try:
                    await self._write_waiter
                finally:
                    self._write_waiter = None
        except BaseException:
            if self._turn:
                path._flush_soon()  # an unused turn goes to the next in line
            raise
        finally:
            queue.pop(self, None)
            self._turn = False
        if not data:
            return
        conn.send_stream_data(self.stream_id, data if isinstance(data, bytes) else bytes(data))
        self._written += len(data)
        if path._unsent is not None:
            path._unsent += len(data)
        path._flush_soon()

    def max_write(self) -> int:
        return self._path.fair_write()

    def write_eof(self) -> None:
        conn = self._path._conn
        if (
            self._eof_sent
            or self._closed
            or self._error is not None
            or conn is None
            or self._path.closed.is_set()
        ):
            return
        self._eof_sent = True
        with contextlib.suppress(ValueError, RuntimeError):
            conn.send_stream_data(self.stream_id, b"", end_stream=True)
        self._path._flush_soon()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        path = self._path
        conn = path._conn
        path._ends.pop(self.stream_id, None)
        path._send_waiters.pop(self, None)
        path._small_waiters.pop(self, None)
        path._unsent = None
        if conn is not None and not path.closed.is_set() and self._error is None:
            if not self._eof:  # we will not read the rest: ask the peer to stop sending
                with contextlib.suppress(ValueError):
                    conn.stop_stream(self.stream_id, StreamCode.CANCELLED)
            if not self._eof_sent:  # our side never ended: the peer must not wait for a FIN
                with contextlib.suppress(ValueError):
                    conn.reset_stream(self.stream_id, StreamCode.CANCELLED)
            path._flush_soon()
        if conn is not None:
            conn.forget(self.stream_id)
        self._chunks.clear()
        self._wake_reader()
        self._wake_writer()

    def peer_done(self) -> bool:
        return self._eof
