"""Streams multiplexed over one connection: the asyncio side of `pierce.protocol.mux`.

Theory of operation
-------------------
A `MuxConnection` owns one connection (TLS in practice) and a `MuxState`. It is handed the asyncio
streams of the login and, in :meth:`MuxConnection.run`, becomes the transport's protocol itself
(taking over what the stream reader already held), so frames are handled in ``data_received`` as the
bytes arrive, with no reader task and no copy into a stream buffer: bytes go to their stream's buffer,
credit to its writers, new streams to ``on_stream``. A DATA frame is never held whole: its bytes go to
the stream as they arrive (a large frame spans many reads); only a frame header or a small control frame
split between reads is kept until it is complete.

Frames to send are queued and written together at the end of the loop's turn (or at once past
`FLUSH_SIZE`): the small frames of many streams answering in the same turn leave as one TLS record and
one send instead of one each. Large DATA frames go without a copy. The transport's write buffer gives
the backpressure of the connection (writers wait while it is paused), the stream windows that of each
stream.

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
from typing import cast

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
from pierce.relay import End, abort_transport
from pierce.transport import ConnectionClosed, MessageChannel

#: Data up to this size goes out with its frame header in one write (one TLS record).
ONE_RECORD = 16 * 1024 - HEADER_SIZE
#: Frames queued past this many bytes are written at once instead of at the end of the loop's turn.
FLUSH_SIZE = 64 * 1024


class MuxConnection(asyncio.Protocol):
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
        self._loop = asyncio.get_running_loop()
        #: The stream reader of the connection until :meth:`run` takes the transport over.
        self._reader: asyncio.StreamReader | None = reader
        self._transport = cast(asyncio.Transport, writer.transport)
        # Held for as long as the connection: a StreamWriter that is collected closes its transport.
        self._writer = writer
        self.state = (
            MuxState(initiator=initiator)
            if max_streams is None
            else MuxState(initiator=initiator, max_streams=max_streams)
        )
        self._streams: dict[int, MuxStream] = {}
        self._on_stream = on_stream
        self._receive = self._state_receive()
        #: Why the connection ended ("" while it runs).
        self.ended = ""
        #: What the peer's GOAWAY said (it closes once its streams are done).
        self._goaway = ""
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        #: Resolved when the connection ends (with the `ProtocolError` of a peer that broke the rules).
        self._done: asyncio.Future[None] = self._loop.create_future()
        # Receiving: the start of a frame not whole yet (a header, or a frame other than DATA, so it is
        # small), or where we are inside a DATA frame's payload, which goes to its stream as it comes.
        self._pending = b""
        self._data_left = 0
        self._data_stream = 0
        self._data_fin = False
        # Sending: frames queued in this turn of the loop, written together at its end.
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        self._flush_due = False
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    @property
    def alive(self) -> bool:
        return not self.ended and not self._transport.is_closing()

    @property
    def accepting(self) -> bool:
        """New streams may be opened (alive, and neither side said GOAWAY)."""
        return self.alive and not self.state.going_away

    def drain(self, reason: str = "draining") -> None:
        """No new streams (the peer hears GOAWAY); the connection closes once its last stream ended."""
        if not self.state.going_away and self.alive:
            self._send(self.state.goaway_frame(ResetCode.CLOSED, reason))
        self.state.going_away = True
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.state.going_away and not self._streams and not self.ended:
            self._end("drained")
            self._close_transport()

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
        self._send(frame)
        return stream

    async def run(self) -> None:
        """Take the connection over and serve it until it ends; raises `ProtocolError` for a peer that
        broke the protocol (after telling it so with GOAWAY). Every stream ends when this returns."""
        try:
            self._take_over()
            await self._done
        except BaseException:
            self._end("closed")
            raise
        finally:
            self._close_transport()

    def _take_over(self) -> None:
        """From the stream reader of the login to this protocol: frames arrive in `data_received`."""
        reader, self._reader = self._reader, None
        if reader is None or self.ended:
            return
        # What the reader holds came in with the login's last read: the first frames (the login is
        # read in exact pieces, so this starts at a frame). StreamReader keeps it in ``_buffer``.
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
        held = bytes(buffer)
        buffer.clear()
        eof: bool = reader._eof  # type: ignore[attr-defined]
        failure = reader.exception()
        transport = self._transport
        transport.set_protocol(self)
        if not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()  # the reader may have paused it at its limit
        if held:
            self.data_received(held)
        if failure is not None:
            self.connection_lost(failure)
        elif eof:
            self.eof_received()

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        if self._pending:
            data, self._pending = self._pending + data, b""
        try:
            self._frames(data)
        except ProtocolError as exc:
            with contextlib.suppress(Exception):
                self._send(self.state.goaway_frame(ResetCode.PROTOCOL, str(exc)))
            self._end(f"protocol error: {exc}", exc)
            self._close_transport()

    def _frames(self, data: bytes) -> None:
        """Dispatch the frames of ``data``: whole ones, then the start of the next (kept)."""
        n = len(data)
        pos = 0
        if self._data_left:  # the rest of a DATA frame
            pos = min(self._data_left, n)
            self._data_left -= pos
            self._data(
                self._data_stream, data[:pos] if pos < n else data, self._data_fin and not self._data_left
            )
        state, receive = self.state, self._receive
        while pos < n and not self.ended:
            if n - pos < HEADER_SIZE:
                self._pending = data[pos:]
                return
            header = data[pos : pos + HEADER_SIZE]
            kind, flags, stream_id, length = state.header(header)  # checked before its bytes come
            start = pos + HEADER_SIZE
            pos = start + length
            if kind == FrameType.DATA:  # the hot path, without event objects
                fin = bool(flags & FLAG_FIN)
                if pos <= n:
                    self._data(stream_id, data[start:pos], fin)
                    continue
                # Part of its bytes now, the rest as they come: a DATA frame is never held whole.
                self._data_left, self._data_stream, self._data_fin = pos - n, stream_id, fin
                if start < n:
                    self._data(stream_id, data[start:], False)
                return
            if pos > n:
                self._pending = data[pos - length - HEADER_SIZE :]
                return
            receive(header, data[start:pos])

    def _data(self, stream_id: int, payload: bytes, fin: bool) -> None:
        if self.state.receive_data(stream_id, payload, fin):
            stream = self._streams.get(stream_id)
            if stream is not None:
                stream._deliver(payload, fin)

    def eof_received(self) -> bool:
        if self._pending or self._data_left:
            self._end(
                "protocol error: connection closed in the middle of a mux frame",
                ProtocolError("connection closed in the middle of a mux frame"),
            )
        else:
            self._end(f"peer went away: {self._goaway}" if self._goaway else "connection closed by peer")
        self._close_transport()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._end(f"connection lost: {exc}")
        elif not self.ended:
            self.eof_received()
        self._wake_drainers()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers()

    # -- sending -----------------------------------------------------------------------------------------

    def _send(self, frame: bytes | memoryview) -> None:
        """Queue a frame: what is queued in one turn of the loop goes out as one write (one TLS record
        for the small frames of many streams), or at once past `FLUSH_SIZE`."""
        self._out.append(frame)
        self._out_size += len(frame)
        if self._out_size >= FLUSH_SIZE:
            self._flush()
        elif not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _send_large(self, header: bytes, payload: memoryview) -> None:
        """A DATA frame too large to join with others: what is queued and its header go as one piece,
        its bytes as they are (no copy)."""
        self._out.append(header)
        small = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        if not self._transport.is_closing():
            self._transport.writelines([small, payload])

    def _flush(self) -> None:
        self._flush_due = False
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    async def _drained(self) -> None:
        """Return when the connection takes more (its transport's buffer below its high mark)."""
        while self._paused and not self.ended:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _close_transport(self) -> None:
        self._flush()
        if not self._transport.is_closing():
            self._transport.close()

    def _state_receive(self) -> Callable[[bytes, bytes], None]:
        state, streams = self.state, self._streams

        def receive(header: bytes, payload: bytes) -> None:
            """Every frame but DATA (`_frames` delivers those itself)."""
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
                        self._send(state.ping_frame(ev.payload, ack=True))
                elif isinstance(ev, GoAway):
                    self._goaway = ev.reason or f"code {ev.code}"
                    if ev.code != ResetCode.CLOSED:  # a failure: the peer closes at once
                        self._end(f"peer went away: {self._goaway}")
                        self._close_transport()
                    self._close_if_drained()
            if state.refused:
                self._send(state.take_refusals())

        return receive

    async def ping(self, timeout: float) -> None:
        """Round trip a PING; TimeoutError or ConnectionResetError when the peer does not answer."""
        payload = os.urandom(8)
        waiter = self._pings[payload] = self._loop.create_future()
        try:
            self._send(self.state.ping_frame(payload))
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            self._pings.pop(payload, None)

    def reset(self, stream_id: int, code: int) -> None:
        """End one stream at once (both ways); the peer's side fails."""
        stream = self._streams.pop(stream_id, None)
        frame = self.state.reset_frame(stream_id, code)
        if frame and self.alive:
            self._send(frame)
        if stream is not None:
            stream._fail("stream reset")
        self._close_if_drained()

    def _forget(self, stream_id: int) -> None:
        """The stream ended both ways in order."""
        self._streams.pop(stream_id, None)
        self._close_if_drained()

    def abort(self, reason: str) -> None:
        """End the connection and every stream on it at once, with a reset: for a dead link, where a
        GOAWAY would only wait in the send buffer (and a close with it)."""
        self._end(reason)
        abort_transport(self._transport)

    def close(self, reason: str = "closed") -> None:
        """End the connection and every stream on it, telling the peer (GOAWAY)."""
        if self.alive:
            with contextlib.suppress(Exception):
                self._send(self.state.goaway_frame(ResetCode.CLOSED, reason))
        self._end(reason)
        self._close_transport()

    def _end(self, reason: str, failure: ProtocolError | None = None) -> None:
        if not self.ended:
            self.ended = reason
            if not self._done.done():
                if failure is None:
                    self._done.set_result(None)
                else:
                    self._done.set_exception(failure)
        streams = list(self._streams.values())
        self._streams.clear()  # in place: the receiver holds this dict
        for stream in streams:
            stream._fail(f"multiplexed connection ended: {self.ended}")
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(ConnectionResetError(self.ended))
        self._pings.clear()
        self._wake_drainers()


class MuxStream(End):
    """One stream of a `MuxConnection`, as a relay end; see the module docstring."""

    __slots__ = ("_buffer", "_conn", "_eof", "_error", "_id", "_reader", "_released", "_writer")

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
            # The connection's loop: asyncio.get_running_loop() costs a getpid() system call on 3.11.
            self._reader = self._conn._loop.create_future()
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
            conn._send(frame)
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
        state = conn.state
        view = memoryview(data)
        while view:
            if self._error:
                raise ConnectionResetError(self._error)
            window = state.send_window(self._id)
            if not window:
                if not state.is_open(self._id):
                    raise ConnectionResetError(self._error or "stream ended")
                self._writer = conn._loop.create_future()
                await self._writer
                self._writer = None
                continue
            n = min(len(view), window, MAX_FRAME)
            header = state.data_header(self._id, n)
            if n <= ONE_RECORD:
                conn._send(header + view[:n])
            else:
                conn._send_large(header, view[:n])
            view = view[n:]
            if conn._paused:
                await conn._drained()

    def write_eof(self) -> None:
        conn = self._conn
        if self._error or self._released:
            return
        try:
            frame = conn.state.data_header(self._id, 0, fin=True)
        except ValueError:
            return  # FIN sent already, or the stream ended
        if conn.alive:
            conn._send(frame)
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
