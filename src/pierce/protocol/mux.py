"""Many streams over one connection, sans-I/O: the framing and flow control of a multiplexed tunnel.

Theory of operation
-------------------
One TLS connection per tunnelled connection costs each end OpenSSL's per-connection state, about 18 KiB
(36 KiB a pair, measured with ``ssl.MemoryBIO`` pairs and glibc's ``mallinfo2``) before any Python object
or asyncio buffer, and a handshake per visitor. A multiplexed connection carries any number of
*streams*, each a byte stream in both directions with its own half-close, over one connection whose
TLS state is paid once. A stream costs its few counters here and what its reader has not taken yet.

Frames: a 10-byte header, then ``length`` bytes::

    type (u8) | flags (u8) | stream id (u32) | length (u32)      big-endian

========  ==============================================================================================
DATA      payload = stream bytes; flag FIN: the sender's last (the payload may be empty then).
OPEN      a new stream (no payload). Ids are chosen by the opener: odd by the side that dialled
          the connection (``initiator``), even by the other; each new id is above the opener's last.
WINDOW    payload = u32 increment (> 0): the receiver took that many bytes; the sender may send them.
RESET     payload = u32 code: the stream ends at once both ways; data in flight is dropped.
PING      payload = 8 opaque bytes; flag ACK on the answer, which carries the same 8 bytes.
GOAWAY    payload = u32 code + a reason (UTF-8, at most :data:`MAX_REASON` bytes); the sender closes.
========  ==============================================================================================

Flow control is per stream, as in HTTP/2 and yamux: each direction of a stream starts with
:data:`INITIAL_WINDOW` bytes of credit; DATA uses it up, WINDOW gives it back once the receiving
application has *taken* the bytes (:meth:`MuxState.consumed`), so a stream whose reader is slow holds
at most its window in memory and never stalls the other streams. Credit is returned when half the window
has been taken, so a bulk transfer keeps half a window in flight without an update per frame.

What a peer may do is bounded and checked on every frame: frame size (:data:`MAX_FRAME`), stream count
(:attr:`MuxState.max_streams`, extra OPENs are refused with RESET ``REFUSED``, not fatal), data beyond the
window, data after FIN, ids out of order or of the wrong parity, unknown types, lengths that do not fit
the type. Any violation raises `ProtocolError`: the connection (all its streams) ends, after a GOAWAY
saying why (:meth:`MuxState.goaway_frame`). Ids only grow, so a frame for a stream that is not open but
whose id was used already is one that was in flight when the stream ended here: it is dropped.

Nothing here does I/O: :meth:`MuxState.receive` takes whole frames (the header, then exactly its
``length`` bytes, which is how `pierce.mux` reads them) and returns events; the ``*_frame`` methods
return the bytes to write.
"""

from __future__ import annotations

import enum
import struct

import msgspec

from pierce.protocol.errors import ProtocolError

#: The frame header: type, flags, stream id, payload length.
HEADER = struct.Struct(">BBII")
HEADER_SIZE = HEADER.size
#: Largest payload of any frame (a DATA frame's bytes).
MAX_FRAME = 256 * 1024
#: Credit each direction of a new stream starts with; the most a stream's reader may have waiting.
INITIAL_WINDOW = 1024 * 1024
#: Largest window a WINDOW may grow a stream's credit to (2^31 - 1, as HTTP/2).
MAX_WINDOW = 2**31 - 1
#: Streams one side may have open that the other side opened, by default.
DEFAULT_MAX_STREAMS = 65536
#: Bytes of a GOAWAY's reason.
MAX_REASON = 256
PING_SIZE = 8


class FrameType(enum.IntEnum):
    DATA = 0
    OPEN = 1
    WINDOW = 2
    RESET = 3
    PING = 4
    GOAWAY = 5


FLAG_FIN = 1
FLAG_ACK = 2


class ResetCode(enum.IntEnum):
    """Why a stream was reset (RESET) or a connection is going away (GOAWAY)."""

    #: An orderly end (GOAWAY) or an application that stopped early (RESET).
    CLOSED = 0
    #: The receiver has too many streams open.
    REFUSED = 1
    #: The peer broke the protocol.
    PROTOCOL = 2
    #: A local failure (the service behind the stream went away, an internal error).
    INTERNAL = 3


# -- events -------------------------------------------------------------------------------------------


class StreamOpened(msgspec.Struct, frozen=True):
    stream: int


class StreamData(msgspec.Struct, frozen=True):
    """Bytes of a stream, and whether they are its last this way (``fin``)."""

    stream: int
    data: bytes
    fin: bool


class WindowOpened(msgspec.Struct, frozen=True):
    """The stream may send ``increment`` more bytes."""

    stream: int
    increment: int


class StreamReset(msgspec.Struct, frozen=True):
    stream: int
    code: int


class PingReceived(msgspec.Struct, frozen=True):
    """A ping to answer (``ack`` False: with :meth:`MuxState.ping_frame`) or an answer to ours."""

    payload: bytes
    ack: bool


class GoAway(msgspec.Struct, frozen=True):
    code: int
    reason: str


Event = StreamOpened | StreamData | WindowOpened | StreamReset | PingReceived | GoAway


class _Stream:
    """Flow-control state of one open stream."""

    __slots__ = ("received_fin", "send_window", "sent_fin", "taken", "unread")

    def __init__(self) -> None:
        #: Bytes we may still send.
        self.send_window = INITIAL_WINDOW
        #: Bytes received and not yet taken by the application (never above INITIAL_WINDOW).
        self.unread = 0
        #: Bytes taken since the last WINDOW we sent.
        self.taken = 0
        self.sent_fin = False
        self.received_fin = False


class MuxState:
    """One side of a multiplexed connection. ``initiator``: this side dialled it (its streams are odd)."""

    def __init__(self, *, initiator: bool, max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        self.initiator = initiator
        #: Streams the peer may have open at once; more are refused.
        self.max_streams = max_streams
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if initiator else 2
        self._peer_last = 0
        self._peer_open = 0
        #: Peer streams refused for the stream limit, not yet answered (see `take_refusals`).
        self.refused: list[int] = []
        #: A GOAWAY was received or sent: no new streams.
        self.going_away = False

    # -- streams ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Streams open (either side's)."""
        return len(self._streams)

    def is_open(self, stream: int) -> bool:
        return stream in self._streams

    def _mine(self, stream: int) -> bool:
        return (stream % 2 == 1) == self.initiator

    def open_frame(self) -> tuple[int, bytes]:
        """A new stream of ours: its id and the OPEN frame to send."""
        if self.going_away:
            raise ProtocolError("the connection is going away: no new streams")
        stream = self._next_id
        if stream > 0xFFFFFFFF:
            raise ProtocolError("stream ids used up on this connection")
        self._next_id += 2
        self._streams[stream] = _Stream()
        return stream, HEADER.pack(FrameType.OPEN, 0, stream, 0)

    def send_window(self, stream: int) -> int:
        """Bytes ``stream`` may send now (0 for a stream that is not open or has sent FIN)."""
        state = self._streams.get(stream)
        if state is None or state.sent_fin:
            return 0
        return state.send_window

    def data_header(self, stream: int, n: int, *, fin: bool = False) -> bytes:
        """The header of a DATA frame of ``n`` bytes (at most :meth:`send_window` and :data:`MAX_FRAME`);
        the caller sends the bytes right after it."""
        state = self._streams.get(stream)
        if state is None or state.sent_fin:
            raise ValueError(f"stream {stream} cannot send: {'ended' if state else 'not open'}")
        if n > state.send_window or n > MAX_FRAME:
            raise ValueError(f"{n} bytes exceed stream {stream}'s window or the frame size")
        state.send_window -= n
        if fin:
            state.sent_fin = True
            self._end_if_done(stream, state)
        return HEADER.pack(FrameType.DATA, FLAG_FIN if fin else 0, stream, n)

    def data_frame(self, stream: int, data: bytes | memoryview, *, fin: bool = False) -> bytes:
        """A whole DATA frame of ``data`` (see :meth:`data_header`)."""
        return self.data_header(stream, len(data), fin=fin) + data

    def consumed(self, stream: int, n: int) -> bytes:
        """The application took ``n`` received bytes of ``stream``: a WINDOW frame when one is due
        (half a window taken), else b""."""
        state = self._streams.get(stream)
        if state is None:
            return b""
        state.unread -= n
        if state.received_fin:
            self._end_if_done(stream, state)
            return b""
        state.taken += n
        if state.taken < INITIAL_WINDOW // 2:
            return b""
        increment, state.taken = state.taken, 0
        return HEADER.pack(FrameType.WINDOW, 0, stream, 4) + struct.pack(">I", increment)

    def reset_frame(self, stream: int, code: int = ResetCode.CLOSED) -> bytes:
        """End ``stream`` at once both ways; b"" when it is no longer open."""
        if self._streams.pop(stream, None) is None:
            return b""
        self._closed(stream)
        return HEADER.pack(FrameType.RESET, 0, stream, 4) + struct.pack(">I", code)

    def ping_frame(self, payload: bytes, *, ack: bool = False) -> bytes:
        if len(payload) != PING_SIZE:
            raise ValueError(f"a ping carries {PING_SIZE} bytes")
        return HEADER.pack(FrameType.PING, FLAG_ACK if ack else 0, 0, PING_SIZE) + payload

    def goaway_frame(self, code: int, reason: str) -> bytes:
        self.going_away = True
        text = reason.encode("utf-8", "replace")[:MAX_REASON]
        return HEADER.pack(FrameType.GOAWAY, 0, 0, 4 + len(text)) + struct.pack(">I", code) + text

    def _end_if_done(self, stream: int, state: _Stream) -> None:
        """Both ways ended and nothing left unread: the stream is closed."""
        if state.sent_fin and state.received_fin and state.unread <= 0:
            del self._streams[stream]
            self._closed(stream)

    def _closed(self, stream: int) -> None:
        if not self._mine(stream):
            self._peer_open -= 1

    # -- receiving ----------------------------------------------------------------------------------

    def header(self, header: bytes) -> tuple[int, int, int, int]:
        """Type, flags, stream and length of a frame header; the length is checked against the type."""
        kind, flags, stream, length = HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ProtocolError(f"mux frame of {length} bytes exceeds {MAX_FRAME}")
        if kind == FrameType.DATA or kind == FrameType.GOAWAY:
            pass
        elif kind == FrameType.OPEN:
            if length:
                raise ProtocolError("mux OPEN frame with a payload")
        elif kind == FrameType.WINDOW or kind == FrameType.RESET:
            if length != 4:
                raise ProtocolError(f"mux {FrameType(kind).name} frame of {length} bytes (4 expected)")
        elif kind == FrameType.PING:
            if length != PING_SIZE:
                raise ProtocolError(f"mux PING frame of {length} bytes ({PING_SIZE} expected)")
        else:
            raise ProtocolError(f"unknown mux frame type {kind}")
        if kind == FrameType.GOAWAY and not 4 <= length <= 4 + MAX_REASON:
            raise ProtocolError(f"mux GOAWAY frame of {length} bytes")
        return kind, flags, stream, length

    def receive(self, header: bytes, payload: bytes) -> list[Event]:
        """The events of one whole frame (``payload``: exactly its ``length`` bytes). An OPEN over the
        stream limit gives no event: its RESET is in `take_refusals`."""
        kind, flags, stream, length = self.header(header)
        if len(payload) != length:
            raise ProtocolError(f"mux frame payload of {len(payload)} bytes, header said {length}")
        if kind == FrameType.DATA:
            fin = bool(flags & FLAG_FIN)
            return [StreamData(stream, payload, fin)] if self.receive_data(stream, payload, fin) else []
        if kind == FrameType.OPEN:
            return self._open(stream)
        if kind == FrameType.WINDOW:
            (increment,) = struct.unpack(">I", payload)
            state = self._streams.get(stream)
            if state is None:
                return self._unknown(stream, "WINDOW")
            if increment == 0 or state.send_window + increment > MAX_WINDOW:
                raise ProtocolError(f"mux WINDOW of {increment} for stream {stream}")
            state.send_window += increment
            return [WindowOpened(stream, increment)]
        if kind == FrameType.RESET:
            (code,) = struct.unpack(">I", payload)
            if self._streams.pop(stream, None) is None:
                return self._unknown(stream, "RESET")
            self._closed(stream)
            return [StreamReset(stream, code)]
        if kind == FrameType.PING:
            return [PingReceived(payload, bool(flags & FLAG_ACK))]
        (code,) = struct.unpack(">I", payload[:4])
        self.going_away = True
        return [GoAway(code, payload[4:].decode("utf-8", "replace"))]

    def receive_data(self, stream: int, payload: bytes, fin: bool) -> bool:
        """A DATA frame whose header `header` checked (the hot path: no event objects); True when its
        bytes are for an open stream, False when it is dropped (the stream ended here meanwhile)."""
        state = self._streams.get(stream)
        if state is None:
            self._unknown(stream, "DATA")
            return False
        if state.received_fin:
            raise ProtocolError(f"mux DATA on stream {stream} after its FIN")
        n = len(payload)
        if state.unread + state.taken + n > INITIAL_WINDOW:
            raise ProtocolError(f"mux stream {stream} sent beyond its window")
        state.unread += n
        if fin:
            state.received_fin = True
            self._end_if_done(stream, state)
        elif not n:
            raise ProtocolError(f"empty mux DATA frame without FIN on stream {stream}")
        return True

    def _open(self, stream: int) -> list[Event]:
        if self._mine(stream) or stream <= self._peer_last:
            raise ProtocolError(f"mux OPEN of stream {stream} out of order or of the wrong side")
        self._peer_last = stream
        if self.going_away or self._peer_open >= self.max_streams:
            self.refused.append(stream)
            return []
        self._peer_open += 1
        self._streams[stream] = _Stream()
        return [StreamOpened(stream)]

    def _unknown(self, stream: int, kind: str) -> list[Event]:
        """A frame for a stream not open: dropped when its id was used (it ended, or was refused, while
        the frame was in flight), else fatal."""
        used = stream < self._next_id if self._mine(stream) else stream <= self._peer_last
        if used and stream:
            return []
        raise ProtocolError(f"mux {kind} for stream {stream}, which was never opened")

    def take_refusals(self) -> bytes:
        """RESET REFUSED frames for the OPENs refused since the last call."""
        out = b"".join(
            HEADER.pack(FrameType.RESET, 0, stream, 4) + struct.pack(">I", ResetCode.REFUSED)
            for stream in self.refused
        )
        self.refused.clear()
        return out
