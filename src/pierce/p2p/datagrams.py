"""An xudp visitor's datagrams on a direct path: QUIC DATAGRAM frames, and one stream for what is too
large for them.

`DatagramEnd` is the relay `End` an xudp tunnel runs on (`pierce.proxies.sudp.DatagramTunnel` on the
visitor, `serve_sudp_work` on the owner), so both keep their `UdpPacket` framing: each frame written
goes out as one DATAGRAM frame when it fits the path (unreliable and unordered, like UDP: no head-of-line
blocking behind a lost packet), else on the path's one datagram stream (a 9,000-byte game packet or a
60 KB DNS answer still arrives). What arrives either way is read back as whole frames. Bounded: a full
read queue drops datagrams (counted), as a full UDP socket buffer would.

A DATAGRAM frame must hold exactly one frame (`frame_of`): the tunnel reads what is queued as one byte
stream, so a cut or padded one would make it take the next datagram as the rest of this one. Such a
datagram is dropped and counted (`DatagramEnd.malformed`), as UDP drops a packet with a bad checksum; on
the stream, a length over `MAX_FRAME_SIZE` ends the stream (`DatagramFrameError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from typing import TYPE_CHECKING

from pierce.protocol.errors import ProtocolError
from pierce.protocol.frames import HEADER_SIZE, MAX_FRAME_SIZE
from pierce.relay import End

if TYPE_CHECKING:
    from pierce.p2p.quic import QuicPath

#: Frames waiting to be read before arriving datagrams are dropped.
MAX_QUEUED = 1024
_LENGTH = struct.Struct(">I")
#: Opens the datagram stream; never delivered.
EMPTY_FRAME = _LENGTH.pack(0)
#: Seconds the owner waits for the visitor's datagram stream before dropping a large datagram.
STREAM_WAIT = 5.0


class DatagramFrameError(ProtocolError):
    """A datagram frame from the peer announced more than `MAX_FRAME_SIZE` bytes, or a DATAGRAM frame did
    not hold exactly one whole frame."""


def frame_of(datagram: bytes) -> bytes:
    """``datagram`` (a DATAGRAM frame's payload) when it holds exactly one non-empty frame; else
    `DatagramFrameError` saying what it holds."""
    if len(datagram) < HEADER_SIZE:
        raise DatagramFrameError(f"a datagram of {len(datagram)} bytes, shorter than a frame header")
    (length,) = _LENGTH.unpack_from(datagram)
    if length > MAX_FRAME_SIZE:
        raise DatagramFrameError(f"a datagram frame of {length} bytes is over {MAX_FRAME_SIZE}")
    if len(datagram) != HEADER_SIZE + length:
        raise DatagramFrameError(
            f"a datagram of {len(datagram)} bytes holding a frame of {HEADER_SIZE + length} (not one frame)"
        )
    if not length:
        raise DatagramFrameError("an empty frame in a datagram")
    return datagram


class FrameSplitter:
    """Cuts a byte stream into whole length-prefixed frames (the payload is not decoded here).

    `feed` raises `DatagramFrameError` at a header that announces more than `MAX_FRAME_SIZE` bytes.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER_SIZE:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME_SIZE:
                raise DatagramFrameError(f"a datagram frame of {length} bytes is over {MAX_FRAME_SIZE}")
            end = HEADER_SIZE + length
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[:end]))
            del self._buffer[:end]
        return frames


class DatagramEnd(End):
    def __init__(self, quic: QuicPath) -> None:
        self.quic = quic
        self._stream: End | None = None
        self._stream_ready = asyncio.Event()
        self._stream_reader: asyncio.Task[None] | None = None
        self._out = FrameSplitter()
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._eof = False
        #: Set when this end is closed (the owner's stream handler waits for it).
        self.finished = asyncio.Event()
        self.dropped = 0
        #: DATAGRAM frames dropped because they did not hold exactly one frame (`frame_of`).
        self.malformed = 0
        self.datagrams_sent = 0
        self.streamed = 0

    # -- arriving --

    def deliver(self, datagram: bytes) -> None:
        """A DATAGRAM frame arrived: queued when it holds exactly one frame, else dropped and counted."""
        if self._eof:
            return
        try:
            frame = frame_of(datagram)
        except DatagramFrameError:
            self.malformed += 1
            return
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.append(frame)
        self._wake.set()

    def attach_stream(self, stream: End) -> None:
        """The stream that carries the large ones (the owner gets it from the visitor)."""
        if self._stream is not None:
            stream.close()
            return
        self._stream = stream
        self._stream_ready.set()
        self._stream_reader = asyncio.get_running_loop().create_task(self._read_stream(stream))

    async def open(self) -> None:
        """The visitor's side: open the stream now and announce it (an empty frame, which the owner
        skips), so the owner can send large datagrams before the visitor has sent one."""
        stream = await self.quic.open_stream()
        self.attach_stream(stream)
        await stream.write(EMPTY_FRAME)

    async def _read_stream(self, stream: End) -> None:
        splitter = FrameSplitter()
        try:
            while data := await stream.read(256 * 1024):
                for frame in splitter.feed(data):
                    if frame != EMPTY_FRAME:
                        self.deliver(frame)
        except (OSError, DatagramFrameError):
            pass
        finally:
            self._eof = True
            self._wake.set()

    async def read(self, max_bytes: int) -> bytes:
        while not self._queue:
            if self._eof or self.quic.closed.is_set():
                return b""
            self._wake.clear()
            waits = {
                asyncio.ensure_future(self.quic.closed.wait()),
                asyncio.ensure_future(self._wake.wait()),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
        out = [self._queue.popleft()]
        size = len(out[0])
        while self._queue and size + len(self._queue[0]) <= max_bytes:
            frame = self._queue.popleft()
            out.append(frame)
            size += len(frame)
        return b"".join(out)

    # -- leaving --

    async def write(self, data: bytes | memoryview) -> None:
        for frame in self._out.feed(bytes(data)):
            if frame == EMPTY_FRAME:  # carries nothing, and the other end would drop it
                continue
            if len(frame) <= self.quic.max_datagram_payload and self.quic.send_datagram(frame):
                self.datagrams_sent += 1
                continue
            if len(frame) <= self.quic.max_datagram_payload:
                self.dropped += 1  # the DATAGRAM queue is full: dropped, as UDP would
                continue
            stream = await self._large_stream()
            await stream.write(frame)
            self.streamed += 1

    async def _large_stream(self) -> End:
        if self._stream is None:
            try:
                async with asyncio.timeout(STREAM_WAIT):
                    await self._stream_ready.wait()
            except TimeoutError:
                raise ConnectionResetError("the visitor did not open the datagram stream") from None
        assert self._stream is not None
        return self._stream

    def write_eof(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.write_eof()

    def close(self) -> None:
        self._eof = True
        self._wake.set()
        self.finished.set()
        if self._stream is not None:
            self._stream.close()
        if self._stream_reader is not None:
            self._stream_reader.cancel()
