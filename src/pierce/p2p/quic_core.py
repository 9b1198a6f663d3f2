"""The sans-I/O half of a direct QUIC path: configuration, flow control by consumption, the proof format.

Flow control
------------
aioquic raises a stream's receive window (MAX_STREAM_DATA) and the connection's (MAX_DATA) whenever the
peer has *sent* more than half of it, doubling it each time, whether or not the application has read
anything: a visitor that stops reading would let the owner buffer without bound. `PathConnection`
replaces those two steps so that a window only moves when the application consumes: it is advertised
as ``consumed + window`` once half a window has been read since the last update. What a peer may have
in flight to us is then bounded by one window per stream and one connection window overall; a peer
sending past it is a FLOW_CONTROL_ERROR in aioquic's own checks.

This overrides private methods of `aioquic.quic.connection.QuicConnection` (``_write_stream_limits``,
``_write_connection_limits``, and ``_write_application`` and ``_on_max_stream_data_delivery`` so that
only streams whose window may move are looked at per packet, not every stream: with a thousand streams
that loop was most of the CPU), and reads and sets a few private attributes (the streams the peer may
open at once: `PathSettings.max_streams`; the congestion controller, the pacer and the pacing time,
for `CoarsePacer` and BBR's application-limited mark in `PathConnection.datagrams_to_send`), all in
this module and nowhere else; tests/e2e/test_quic_path.py checks that an unread stream stalls its
sender at the window.

The proof
---------
The visitor opens the first bidirectional stream (id 0) and sends ``nonce (32) || proof (32)`` and FIN,
where ``proof = p2p_client_proof(key, server_fingerprint, nonce)``. The owner answers `PROOF_ACCEPTED`
and FIN, or closes the connection with `CloseCode.PROOF_REJECTED`. Application streams start at id 4.
"""

from __future__ import annotations

import enum
import math
import ssl
from collections.abc import Iterator
from typing import Any

from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import QuicCongestionControl
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
)
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketSpace
from aioquic.quic.stream import QuicStream
from cryptography.hazmat.primitives import serialization

from pierce.p2p import bbr
from pierce.p2p.identity import Identity
from pierce.p2p.settings import CONGESTION_CONTROL, DEFAULT_DATAGRAM_SIZE, IDLE_TIMEOUT, MAX_STREAMS
from pierce.protocol.auth import NONCE_SIZE, PROOF_SIZE

ALPN = "pierce-p2p/1"
#: The stream the proof travels on (the client's first bidirectional stream).
PROOF_STREAM = 0
PROOF_MESSAGE_SIZE = NONCE_SIZE + PROOF_SIZE
#: The owner's answer on the proof stream.
PROOF_ACCEPTED = b"\x01"

MIN_DATAGRAM_SIZE = 1200
MAX_DATAGRAM_SIZE = 1452
#: Room taken in a packet by the short header (up to a 20-byte connection id), the AEAD tag and a
#: DATAGRAM frame's own header: what is left is the largest `QuicPath.send_datagram` payload.
DATAGRAM_OVERHEAD = 1 + 20 + 4 + 16 + 1 + 4
#: Receive windows: what a peer may have in flight to us per stream and per connection.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
#: Unsent bytes a stream may hold in aioquic before its writer waits (and the whole connection).
STREAM_SEND_BUFFER = 2 * 1024 * 1024
CONNECTION_SEND_BUFFER = 8 * 1024 * 1024
#: Writes this small wait only for their own stream's room, not the connection's: a handoff's one byte
#: must not queue behind the bulk of a thousand other streams (the owner gives up on a stream whose `GO`
#: does not come).
SMALL_WRITE = 64
#: QUIC DATAGRAM frames queued for sending before more are dropped.
MAX_PENDING_DATAGRAMS = 256
#: Room a packet must have left for a STREAM frame to be tried in it: the largest frame header (type,
#: 8-byte stream id, 8-byte offset, length) and a byte (a frame that does not fit goes in the next one).
MIN_STREAM_FRAME_ROOM = 1 + 8 + 8 + 2 + 1
#: Length of the connection ids we issue (aioquic's default; the owner parses the first Initial with it).
CONNECTION_ID_LENGTH = 8


class CloseCode(enum.IntEnum):
    """Application error codes of CONNECTION_CLOSE on a direct path."""

    NO_ERROR = 0
    PROOF_REJECTED = 1
    PROOF_TIMEOUT = 2
    FINGERPRINT_MISMATCH = 3


class StreamCode(enum.IntEnum):
    """Application error codes of RESET_STREAM / STOP_SENDING."""

    REFUSED = 0x10
    CANCELLED = 0x11


def configuration(
    *,
    is_client: bool,
    identity: Identity | None = None,
    max_datagram_size: int = DEFAULT_DATAGRAM_SIZE,
    idle_timeout: float = IDLE_TIMEOUT,
    congestion_control: str = CONGESTION_CONTROL,
    stream_window: int = STREAM_WINDOW,
    connection_window: int = CONNECTION_WINDOW,
) -> QuicConfiguration:
    """The QUIC settings of either end. The client checks nothing in TLS: it compares the certificate's
    fingerprint itself (`PathConnection.peer_certificate_der`) before it sends anything of its own."""
    if not MIN_DATAGRAM_SIZE <= max_datagram_size <= MAX_DATAGRAM_SIZE:
        raise ValueError(f"max_datagram_size must be {MIN_DATAGRAM_SIZE}..{MAX_DATAGRAM_SIZE}")
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        congestion_control_algorithm=congestion_control,
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
        max_data=connection_window,
        max_stream_data=stream_window,
        max_datagram_frame_size=65535,
        connection_id_length=CONNECTION_ID_LENGTH,
    )
    if is_client:
        config.verify_mode = ssl.CERT_NONE
    else:
        if identity is None:
            raise ValueError("the server end needs an identity")
        config.certificate = identity.certificate
        config.private_key = identity.private_key
    return config


#: Pacing: what aioquic paces at is cwnd / srtt; this sends a little faster (RFC 9002 section 7.7's N).
#: A controller with a pacing rate of its own (`bbr.BbrCongestionControl`) is paced at that instead.
PACING_GAIN = 1.25
#: Burst credit the pacer may gather, at least, and the shortest wait it asks for: every wake-up costs the
#: same Python work (a packet builder, a timer, a read on the other end) however little it sends, so a
#: paced sender goes in bursts of a few milliseconds' worth (50 KB at 100 Mbit/s, about one Linux TSO
#: burst). With 2 ms of credit and waits of a timer tick (uvloop's are whole milliseconds), BBR on
#: loopback woke ten times as often as an unpaced CUBIC and moved 0.8-0.9x of it for 1.1x the CPU per
#: byte (paired runs of the QuicPath of bench/bench_quic.py); with these, 1.03-1.1x for 1.0x.
PACING_QUANTUM = 0.004
PACING_WAKE = 0.002


class CoarsePacer(QuicPacketPacer):
    """aioquic's pacer, with the gain above (or ``congestion``'s own pacing rate), a burst credit of at
    least `PACING_QUANTUM` and waits of at least `PACING_WAKE`."""

    def __init__(self, *, max_datagram_size: int, congestion: QuicCongestionControl | None = None) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._bbr = congestion if isinstance(congestion, bbr.BbrCongestionControl) else None

    def next_send_time(self, now: float) -> float | None:  # type: ignore[override]  # aioquic's returns None too
        at: float | None = super().next_send_time(now)
        return None if at is None else max(at, now + PACING_WAKE)

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        rate = self._bbr.pacing_rate() if self._bbr is not None else None
        if rate is None:
            super().update_rate(int(congestion_window * PACING_GAIN), smoothed_rtt)
        else:  # aioquic's arithmetic, from a rate rather than a window over an RTT
            size = self._max_datagram_size
            self.packet_time = max(1e-6, min(size / rate, 1.0))
            self.bucket_max = max(2 * size, min(congestion_window // 4, 16 * size)) / rate
            self.bucket_time = min(self.bucket_time, self.bucket_max)
        self.bucket_max = max(self.bucket_max, PACING_QUANTUM)


class PathConnection(QuicConnection):
    """A `QuicConnection` whose receive windows follow what the application consumed (module docstring),
    with read access to the few internals the I/O layer needs."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        original_destination_connection_id: bytes | None = None,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
        )
        # The peer's allowance of streams open at once, announced in the transport parameters (aioquic
        # has 128 and no setting): as ``sent`` too, so no MAX_STREAMS frame repeats it.
        for limit in (self._local_max_streams_bidi, self._local_max_streams_uni):
            limit.value = limit.sent = max_streams
        self._loss._pacer = CoarsePacer(
            max_datagram_size=configuration.max_datagram_size, congestion=self._loss._cc
        )
        self._bbr = self._loss._cc if isinstance(self._loss._cc, bbr.BbrCongestionControl) else None
        self._stream_window = configuration.max_stream_data
        self._connection_window = configuration.max_data
        self._consumed: dict[int, int] = {}
        #: Streams whose MAX_STREAM_DATA may be due (their reads moved, or the frame was lost): aioquic
        #: looks at every stream for it in every packet, which with a thousand streams was most of the CPU.
        self._limits_due: set[int] = set()
        #: The packet being built holds frames and a stream was offered room in it: once it has too little
        #: room left for a STREAM frame, no other stream is tried in it (never ends an empty packet).
        self._packet_has_stream_data = False
        self._consumed_total = 0
        #: The peer's CONNECTION_CLOSE, as soon as it arrives (aioquic reports it only after draining).
        self.peer_close: ConnectionTerminated | None = None

    # -- what the I/O layer reads --------------------------------------------------------------

    def consume(self, stream_id: int, n: int) -> bool:
        """The application read ``n`` bytes of ``stream_id``; True when a window update is now due."""
        done = self._consumed.get(stream_id, 0) + n
        self._consumed[stream_id] = done
        self._consumed_total += n
        stream = self._streams.get(stream_id)
        half_stream, half_conn = self._stream_window // 2, self._connection_window // 2
        stream_due = (
            stream is not None and done + self._stream_window - stream.max_stream_data_local >= half_stream
        )
        conn_due = self._consumed_total + self._connection_window - self._local_max_data.value >= half_conn
        if stream_due:
            self._limits_due.add(stream_id)
        return stream_due or conn_due

    def forget(self, stream_id: int) -> None:
        """The application is done with ``stream_id``: drop its consumption count."""
        self._consumed.pop(stream_id, None)
        self._limits_due.discard(stream_id)

    def unsent(self, stream_id: int, written: int) -> int:
        """Bytes of ``written`` (all the application gave the stream) that have not been sent once."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else max(0, written - stream.sender.highest_offset)

    def peer_certificate_der(self) -> bytes | None:
        """The server certificate as received (client side), once the TLS Certificate message arrived."""
        cert = self.tls._peer_certificate if self.tls is not None else None
        return None if cert is None else cert.public_bytes(serialization.Encoding.DER)

    @property
    def smoothed_rtt(self) -> float:
        return float(self._loss._rtt_smoothed)

    def pending_datagrams(self) -> int:
        return len(self._datagrams_pending)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def may_open_stream(self) -> bool:
        """Whether a new bidirectional stream is within the peer's MAX_STREAMS now (aioquic would create
        one beyond it and hold it blocked, and a reset of such a stream breaks the peer's limit)."""
        return self._local_next_stream_id_bidi // 4 < self._remote_max_streams_bidi

    # -- aioquic steps replaced ----------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        datagrams = super().datagrams_to_send(now)
        cc = self._bbr
        # Stopped with room in the window and no pacing wait: out of data (or of the peer's flow control
        # credit), not of network capacity; BBR must not take the delivery rates that follow for the path's.
        if (
            cc is not None
            and self._pacing_at is None
            and cc.congestion_window - cc.bytes_in_flight >= self._max_datagram_size
        ):
            cc.on_app_limited()
        return datagrams

    def _close_begin(self, is_initiator: bool, now: float) -> None:
        if not is_initiator and self.peer_close is None:
            self.peer_close = self._close_event
        super()._close_begin(is_initiator, now)

    def _handle_ack_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        super()._handle_ack_frame(context, frame_type, buf)
        # aioquic keeps the smallest RTT ever seen and takes the RTT variance as the distance from it
        # (RFC 9002 takes it from the smoothed RTT): after the path got longer, the variance stays that
        # difference and every probe timeout waits 4 times it (in the lab, 100 ms added to a 2 ms path:
        # 0.5 s instead of 0.13 s, and at 20 % loss a new stream's handoff ran out of time). BBR's minimum
        # follows such a change (`bbr.STALE_MIN_RTT_ROUNDS`, `bbr.MIN_RTT_WINDOW`): aioquic's takes it.
        cc = self._bbr
        if cc is not None and self._loss._rtt_min < cc.min_rtt < math.inf:
            self._loss._rtt_min = cc.min_rtt

    def _write_application(self, builder: QuicPacketBuilder, network_path: Any, now: float) -> None:
        # aioquic's packet loop offers every stream a place in every packet (two loops over all streams
        # per packet: MAX_STREAM_DATA, then STREAM frames, the second going on after the packet is full).
        # Here the first sees only streams whose window may move, and the second ends with the packet:
        # `_PacketFull` leaves aioquic's loop (whose ``finally`` keeps its stream order right) and the
        # loop is entered again for the next packet, as aioquic would have gone on.
        streams = self._streams
        self._streams = _LimitsDue(streams, self._limits_due)  # type: ignore[assignment]
        try:
            while True:
                try:
                    super()._write_application(builder, network_path, now)
                    return
                except _PacketFull:
                    self._loss._pacer.update_after_send(now=now)  # as aioquic does after each packet
        finally:
            self._streams = streams

    def _write_stream_frame(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream, max_offset: int
    ) -> int:
        # aioquic offers every stream a place in every packet, also once the packet is full: with many
        # streams sending, almost every call found no room, and at some length each cost the most CPU.
        if builder.remaining_flight_space < MIN_STREAM_FRAME_ROOM:
            if self._packet_has_stream_data:
                raise _PacketFull
            return 0
        sent = int(super()._write_stream_frame(builder, space, stream, max_offset))
        if not builder.packet_is_empty:
            self._packet_has_stream_data = True
        return sent

    def _on_max_stream_data_delivery(self, delivery: QuicDeliveryState, stream: QuicStream) -> None:
        super()._on_max_stream_data_delivery(delivery, stream)
        if delivery != QuicDeliveryState.ACKED and stream.stream_id is not None:
            self._limits_due.add(stream.stream_id)  # lost: send it again

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        if stream.max_stream_data_local and not stream.receiver.is_finished:
            target = self._consumed.get(stream.stream_id or 0, 0) + self._stream_window
            if target - stream.max_stream_data_local >= self._stream_window // 2:
                stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id or 0)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
        self._limits_due.discard(stream.stream_id or 0)

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        self._packet_has_stream_data = False  # aioquic writes these first in each packet
        max_data = self._local_max_data
        target = self._consumed_total + self._connection_window
        if target - max_data.value >= self._connection_window // 2:
            max_data.value = target
        for limit in (max_data, self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue  # batch MAX_STREAMS, as aioquic does
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(limit,),
                )
                buf.push_uint_var(limit.value)
                limit.sent = limit.value


class _PacketFull(Exception):
    """The packet being built has no room for another STREAM frame (`PathConnection._write_application`)."""


class _LimitsDue:
    """`PathConnection._streams` while aioquic builds packets: ``values()``, which it iterates in every
    packet only to write each stream's MAX_STREAM_DATA, yields just the streams whose limit may be due;
    everything else reaches the real dict."""

    __slots__ = ("_due", "_streams")

    def __init__(self, streams: dict[int, QuicStream], due: set[int]) -> None:
        self._streams = streams
        self._due = due

    def values(self) -> list[QuicStream]:
        streams = self._streams
        return [stream for sid in list(self._due) if (stream := streams.get(sid)) is not None]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._streams, name)

    def __getitem__(self, stream_id: int) -> QuicStream:
        return self._streams[stream_id]

    def __setitem__(self, stream_id: int, stream: QuicStream) -> None:
        self._streams[stream_id] = stream

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[int]:
        return iter(self._streams)
