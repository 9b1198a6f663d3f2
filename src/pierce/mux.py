"""Streams multiplexed over one connection: the asyncio side of `pierce.protocol.mux`.

Theory of operation
-------------------
A `MuxConnection` owns one connection (asyncio streams, TLS in practice) and a `MuxState`. Its reader
(:meth:`MuxConnection.run`, one task) reads a frame header and then exactly its payload, hands both to
the state and delivers the events: bytes to the stream's buffer, credit to its writers, new streams to
``on_stream``. Writes go straight to the connection's writer from whichever task writes, a frame at a
time, so frames never interleave; the writer's buffer and ``drain`` give the backpressure of the
connection, the stream windows that of each stream.

A `MuxStream` is a relay `End` (read, write, half-close, close, abort), so a multiplexed work connection
is relayed like any other. What its reader has not taken stays in its buffer, at most one window
(`pierce.protocol.mux.INITIAL_WINDOW`); credit goes back as the reader takes bytes. Closing a stream
before both directions ended resets it (the peer's reads fail, as after a TCP reset); closing it after
both FINs crossed sends nothing.

When the connection ends (EOF, a protocol violation, `close`, cancellation of :meth:`run`), every
open stream ends with it: readers and writers get `ConnectionResetError`, as they would from the TCP
connections the streams stand for.

`MuxChannel` runs the message protocol (`pierce.transport.MessageChannel`) over a stream, so a stream
can carry the few messages a work connection exchanges before its data (`StartWork`, `WorkReady`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from pierce.protocol import Message
from pierce.protocol.errors import ProtocolError
from pierce.protocol.mux import (
    FLAG_FIN,
    HEADER_SIZE,
    MAX_FRAME,
    FrameType,
    GoAway,
    MuxState,
    PingReceived,
    ResetCode,
    StreamOpened,
    StreamReset,
    WindowOpened,
)
from pierce.relay import End
from pierce.transport import ConnectionClosed, MessageChannel

#: Data up to this size goes out with its frame header in one write (one TLS record).
ONE_RECORD = 16 * 1024 - HEADER_SIZE


class MuxConnection:
    """One multiplexed connection; see the module docstring. ``initiator``: this side dialled it.

    ``on_stream`` is called with each stream the peer opens (the caller starts what serves it).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        initiator: bool,
        on_stream: Callable[[MuxStream], None] | None = None,
        max_streams: int | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.state = (
            MuxState(initiator=initiator)
            if max_streams is None
            else MuxState(initiator=initiator, max_streams=max_streams)
        )
        self._streams: dict[int, MuxStream] = {}
        self._on_stream = on_stream
        #: Why the connection ended ("" while it runs).
        self.ended = ""
        #: What the peer's GOAWAY said (it closes once its streams are done).
        self._goaway = ""
        self._pings: dict[bytes, asyncio.Future[None]] = {}

    @property
    def alive(self) -> bool:
        return not self.ended and not self._writer.is_closing()

    @property
    def accepting(self) -> bool:
        """New streams may be opened (alive, and neither side said GOAWAY)."""
        return self.alive and not self.state.going_away

    def drain(self, reason: str = "draining") -> None:
        """No new streams (the peer hears GOAWAY); the connection closes once its last stream ended."""
        if not self.state.going_away and self.alive:
            self._writer.write(self.state.goaway_frame(ResetCode.CLOSED, reason))
        self.state.going_away = True
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.state.going_away and not self._streams and not self.ended:
            self._end("drained")
            self._writer.close()

    def __len__(self) -> int:
        """Streams open."""
        return len(self._streams)

    def open(self) -> MuxStream:
        """A new stream of ours (the peer learns of it with its first frame, sent now)."""
        if not self.accepting:
            raise ConnectionResetError(f"multiplexed connection ended: {self.ended or 'going away'}")
        try:
            stream_id, frame = self.state.open_frame()
        except ProtocolError as exc:
            raise ConnectionResetError(str(exc)) from exc
        stream = self._streams[stream_id] = MuxStream(self, stream_id)
        self._writer.write(frame)
        return stream

    async def run(self) -> None:
        """Read and dispatch frames until the connection ends; raises `ProtocolError` for a peer that
        broke the protocol (after telling it so with GOAWAY). Every stream ends when this returns."""
        reader, receive = self._reader, self._state_receive()
        state, streams = self.state, self._streams
        try:
            while True:
                try:
                    header = await reader.readexactly(HEADER_SIZE)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise ProtocolError("connection closed in the middle of a mux frame") from None
                    self._end(
                        f"peer went away: {self._goaway}" if self._goaway else "connection closed by peer"
                    )
                    return
                kind, flags, stream_id, length = state.header(header)  # checked before its bytes are read
                try:
                    payload = await reader.readexactly(length) if length else b""
                except asyncio.IncompleteReadError:
                    raise ProtocolError("connection closed in the middle of a mux frame") from None
                if kind == FrameType.DATA:  # the hot path, without event objects
                    fin = bool(flags & FLAG_FIN)
                    if state.receive_data(stream_id, payload, fin):
                        stream = streams.get(stream_id)
                        if stream is not None:
                            stream._deliver(payload, fin)
                    continue
                receive(header, payload)
        except ProtocolError as exc:
            with contextlib.suppress(Exception):
                self._writer.write(self.state.goaway_frame(ResetCode.PROTOCOL, str(exc)))
            self._end(f"protocol error: {exc}")
            raise
        except (ConnectionError, OSError) as exc:
            self._end(f"connection lost: {exc}")
        except BaseException:
            self._end("closed")
            raise
        finally:
            self._writer.close()

    def _state_receive(self) -> Callable[[bytes, bytes], None]:
        state, streams = self.state, self._streams

        def receive(header: bytes, payload: bytes) -> None:
            """Every frame but DATA (`run` delivers those itself)."""
            for ev in state.receive(header, payload):
                if isinstance(ev, WindowOpened):
                    stream = streams.get(ev.stream)
                    if stream is not None:
                        stream._wake_writer()
                elif isinstance(ev, StreamOpened):
                    stream = streams[ev.stream] = MuxStream(self, ev.stream)
                    if self._on_stream is None:
                        self.reset(ev.stream, ResetCode.REFUSED)
                    else:
                        self._on_stream(stream)
                elif isinstance(ev, StreamReset):
                    stream = streams.pop(ev.stream, None)
                    if stream is not None:
                        stream._fail(f"stream reset by peer (code {ev.code})")
                    self._close_if_drained()
                elif isinstance(ev, PingReceived):
                    if ev.ack:
                        waiter = self._pings.pop(ev.payload, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
                    else:
                        self._writer.write(state.ping_frame(ev.payload, ack=True))
                elif isinstance(ev, GoAway):
                    self._goaway = ev.reason or f"code {ev.code}"
                    if ev.code != ResetCode.CLOSED:  # a failure: the peer closes at once
                        self._end(f"peer went away: {self._goaway}")
                    self._close_if_drained()
            if state.refused:
                self._writer.write(state.take_refusals())

        return receive

    async def ping(self, timeout: float) -> None:
        """Round trip a PING; TimeoutError or ConnectionResetError when the peer does not answer."""
        payload = os.urandom(8)
        waiter = self._pings[payload] = asyncio.get_running_loop().create_future()
        try:
            self._writer.write(self.state.ping_frame(payload))
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            self._pings.pop(payload, None)

    def reset(self, stream_id: int, code: int) -> None:
        """End one stream at once (both ways); the peer's side fails."""
        stream = self._streams.pop(stream_id, None)
        frame = self.state.reset_frame(stream_id, code)
        if frame and not self._writer.is_closing():
            self._writer.write(frame)
        if stream is not None:
            stream._fail("stream reset")
        self._close_if_drained()

    def _forget(self, stream_id: int) -> None:
        """The stream ended both ways in order."""
        self._streams.pop(stream_id, None)
        self._close_if_drained()

    def close(self, reason: str = "closed") -> None:
        """End the connection and every stream on it, telling the peer (GOAWAY)."""
        if not self.ended and not self._writer.is_closing():
            with contextlib.suppress(Exception):
                self._writer.write(self.state.goaway_frame(ResetCode.CLOSED, reason))
        self._end(reason)
        self._writer.close()

    def _end(self, reason: str) -> None:
        if not self.ended:
            self.ended = reason
        streams = list(self._streams.values())
        self._streams.clear()  # in place: the reader holds this dict
        for stream in streams:
            stream._fail(f"multiplexed connection ended: {self.ended}")
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(ConnectionResetError(self.ended))
        self._pings.clear()


class MuxStream(End):
    """One stream of a `MuxConnection`, as a relay end; see the module docstring."""

    def __init__(self, conn: MuxConnection, stream_id: int) -> None:
        self._conn = conn
        self._id = stream_id
        #: Received bytes not yet read, oldest first (a list: a stream rarely holds more than a few
        #: frames, and an empty list is a tenth of an empty deque).
        self._buffer: list[bytes] = []
        self._eof = False
        self._error = ""
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._released = False

    @property
    def id(self) -> int:
        return self._id

    # -- from the connection's reader ----------------------------------------------------------------

    def _deliver(self, data: bytes, fin: bool) -> None:
        if data:
            self._buffer.append(data)
        if fin:
            self._eof = True
        waiter = self._reader
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._writer
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, reason: str) -> None:
        if not self._error:
            self._error = reason
        for waiter in (self._reader, self._writer):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # -- End --------------------------------------------------------------------------------------

    def peer_done(self) -> bool:
        return self._eof and not self._buffer

    async def read(self, max_bytes: int) -> bytes:
        buffer = self._buffer
        while not buffer:
            if self._eof:
                self._finished_reading()
                return b""
            if self._error:
                raise ConnectionResetError(self._error)
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader
            self._reader = None
        data = buffer[0]
        if len(data) > max_bytes:
            buffer[0] = data[max_bytes:]
            data = data[:max_bytes]
        else:
            del buffer[0]
        conn = self._conn
        frame = conn.state.consumed(self._id, len(data))
        if frame and conn.alive:
            conn._writer.write(frame)
        if self._eof and not buffer:
            self._finished_reading()
        return data

    def _finished_reading(self) -> None:
        """Everything received was taken: the stream ends here once our FIN went out too."""
        if not self._conn.state.is_open(self._id):
            self._conn._forget(self._id)

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes (for messages); `asyncio.IncompleteReadError` at an early EOF."""
        out = bytearray()
        while len(out) < n:
            data = await self.read(n - len(out))
            if not data:
                raise asyncio.IncompleteReadError(bytes(out), n)
            out += data
        return bytes(out)

    async def write(self, data: bytes | memoryview) -> None:
        conn = self._conn
        state, writer = conn.state, conn._writer
        view = memoryview(data)
        while view:
            if self._error:
                raise ConnectionResetError(self._error)
            window = state.send_window(self._id)
            if not window:
                if not state.is_open(self._id):
                    raise ConnectionResetError(self._error or "stream ended")
                self._writer = asyncio.get_running_loop().create_future()
                await self._writer
                self._writer = None
                continue
            n = min(len(view), window, MAX_FRAME)
            header = state.data_header(self._id, n)
            if n <= ONE_RECORD:
                writer.write(header + view[:n])
            else:
                writer.write(header)
                writer.write(view[:n])
            view = view[n:]
            await writer.drain()

    def write_eof(self) -> None:
        conn = self._conn
        if self._error or self._released:
            return
        try:
            frame = conn.state.data_header(self._id, 0, fin=True)
        except ValueError:
            return  # FIN sent already, or the stream ended
        if conn.alive:
            conn._writer.write(frame)
        if not conn.state.is_open(self._id):
            conn._forget(self._id)

    def close(self) -> None:
        self._release(ResetCode.CLOSED)

    def abort(self) -> None:
        self._release(ResetCode.INTERNAL)

    def _release(self, code: int) -> None:
        if self._released:
            return
        self._released = True
        if self._conn.state.is_open(self._id):
            self._conn.reset(self._id, code)  # not ended both ways: the peer must not take it as whole
        else:
            self._conn._forget(self._id)
        self._fail("stream closed")


class MuxChannel(MessageChannel):
    """The message protocol over one stream (the messages before a work connection's data)."""

    def __init__(self, stream: MuxStream, *, peer: str, max_frame_size: int) -> None:
        super().__init__(max_frame_size=max_frame_size)
        self.stream = stream
        self._peer = peer
        self._out = bytearray()

    async def _read_exactly(self, n: int, *, first: bool = False) -> bytes:
        try:
            return await self.stream.read_exactly(n)
        except asyncio.IncompleteReadError as exc:
            if first and not exc.partial:
                raise ConnectionClosed("stream closed by peer") from None
            raise ProtocolError("stream closed in the middle of a frame") from None
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from exc

    def _write(self, data: bytes) -> None:
        self._out += data

    async def _drain(self) -> None:
        data, self._out = bytes(self._out), bytearray()
        try:
            await self.stream.write(data)
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from exc

    def send_nowait(self, msg: Message) -> None:  # pragma: no cover - work streams only send awaited
        raise NotImplementedError("MuxChannel.send_nowait")

    def peer(self) -> str:
        return self._peer

    def close(self) -> None:
        self.stream.close()

    def alive(self) -> bool:
        return not self.stream._error and not self.stream._eof and self.stream._conn.alive

    def backlog(self) -> int:
        return -1 if not self.alive() else len(self._out)

    def into_end(self, *, on_reuse: Callable[[], None] | None = None) -> End:
        return self.stream

    def abort(self) -> None:
        self.stream.abort()
