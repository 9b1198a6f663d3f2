"""Length-prefixed framing of control-channel messages, sans-I/O.

A frame is a 4-byte big-endian unsigned payload length followed by the payload: the MessagePack
encoding of one `Message`. `encode_frame` turns a message into bytes to write; `FrameDecoder` takes
bytes as they arrive, in any split, and returns the complete messages.

The peer controls the length prefix, so the decoder checks it against `max_frame_size` as soon as the
4 header bytes are in, before buffering any payload. Use `PRE_AUTH_MAX_FRAME_SIZE` until the peer has
authenticated and raise the limit to `MAX_FRAME_SIZE` after: an unauthenticated peer can then make us
buffer at most 4 KiB per connection.
"""

from __future__ import annotations

import struct

import msgspec

from pierce.protocol.errors import FrameTooLarge, MalformedFrame, ProtocolError
from pierce.protocol.messages import Message

#: The largest payload accepted once authenticated: room for a 65,507-byte UDP datagram and its header.
MAX_FRAME_SIZE = 128 * 1024
#: The largest payload accepted before authentication (`Hello`, `AuthResponse`, `Error` are tiny).
PRE_AUTH_MAX_FRAME_SIZE = 4096
#: Bytes in the length prefix.
HEADER_SIZE = 4

_HEADER = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def encode_frame(msg: Message) -> bytes:
    """The frame for `msg`, ready to write.

    Raises ValueError if the payload exceeds `MAX_FRAME_SIZE`, which no peer would accept.
    """
    payload = _encoder.encode(msg)
    if len(payload) > MAX_FRAME_SIZE:
        raise ValueError(
            f"{type(msg).__name__} encodes to {len(payload)} bytes,"
            f" over the {MAX_FRAME_SIZE}-byte frame limit"
        )
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Turns a byte stream into messages. One instance per connection direction.

    `feed` raises only `ProtocolError`. After it has raised once the stream is out of sync for good, so
    every later `feed` raises the same error again. Messages that arrived in the same `feed` call before
    the bad frame are dropped with it; the connection is closing anyway.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._error: ProtocolError | None = None
        self._wanted = HEADER_SIZE

    @property
    def max_frame_size(self) -> int:
        """The largest payload accepted; may be changed between `feed` calls (e.g. after auth)."""
        return self._max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        if not 1 <= value <= 0xFFFFFFFF:
            raise ValueError(f"max_frame_size must be between 1 and {0xFFFFFFFF}, got {value}")
        self._max_frame_size = value

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back; nonzero at EOF means the peer stopped mid-frame."""
        return len(self._buffer)

    @property
    def wanted(self) -> int:
        """Bytes that complete the current frame's header or payload.

        A reader that asks for exactly this many bytes reads no further than the frame's end, so the
        connection can carry raw data right after the last message (`StartWork`).
        """
        return self._wanted

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add received bytes; return every message completed by them, in order (possibly none)."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        pos = 0
        end = len(buffer)
        try:
            with memoryview(buffer) as view:
                wanted = HEADER_SIZE - (end - pos)
                while end - pos >= HEADER_SIZE:
                    (length,) = _HEADER.unpack_from(buffer, pos)
                    if length > self._max_frame_size:
                        raise FrameTooLarge(
                            f"frame of {length} bytes exceeds the {self._max_frame_size}-byte limit"
                        )
                    if length == 0:
                        raise MalformedFrame("frame with a length of 0 (every frame holds one message)")
                    start = pos + HEADER_SIZE
                    if end - start < length:
                        wanted = length - (end - start)
                        break
                    pos = start + length
                    wanted = HEADER_SIZE - (end - pos)
                    # A copy: a decoded message may keep its bytes (NewProxy's raw spec), and this
                    # buffer is reused.
                    messages.append(_decode(view[start:pos].tobytes(), length))
        except ProtocolError as exc:
            # Kept without its traceback, whose frames hold this decoder (a cycle only the GC frees).
            self._error = type(exc)(*exc.args)
            buffer.clear()
            raise
        del buffer[:pos]
        self._wanted = max(wanted, 1)
        return messages


def _decode(payload: bytes, length: int) -> Message:
    try:
        return _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise MalformedFrame(f"invalid message in a {length}-byte frame: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise MalformedFrame(f"undecodable MessagePack in a {length}-byte frame: {exc}") from exc
    except RecursionError as exc:
        raise MalformedFrame(f"MessagePack nested too deeply in a {length}-byte frame") from exc
