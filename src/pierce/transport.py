"""Tunnel connections: framed messages, and the one seam where a connection starts carrying data.

`MessageChannel` carries control messages (`pierce.protocol`): length-prefixed frames read exactly,
with a frame-size limit that starts small and is raised after authentication. `StreamChannel` runs it
over asyncio streams (TLS), `SocketChannel` over a raw socket (plain data connections),
`MemoryChannel` over an in-memory pipe (tests of the handshake and the sessions, no sockets).

Before login a channel is a stranger's: `accept_tls` keeps every buffer small and a failure aborts the
connection at once; raising the frame limit after authentication (the handshake does it) lifts those
limits and calls the `MessageChannel.on_login` callbacks.

Whether a connection is TLS or plain is decided once, when it is made; after its last message
(`StartWork`, `VisitReady`) `MessageChannel.into_end` turns it into the relay `End` that fits: chunked
data (`pierce.protocol.chunks`) in a `FramedEnd` over TLS, the raw socket for plain connections, so
both hops can splice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable

from pierce.addr import format_sockaddr
from pierce.errors import RemoteError
from pierce.protocol import (
    PRE_AUTH_MAX_FRAME_SIZE,
    FrameDecoder,
    Message,
    ProtocolError,
    encode_frame,
)
from pierce.protocol.chunks import (
    CHUNK_HEADER,
    CHUNK_HEADER_SIZE,
    END_OF_DATA,
    ONE_RECORD,
    ChunkDecoder,
    chunk,
)
from pierce.relay import End, SocketEnd, abort_transport, wait_fd

#: Read buffer of a logged-in TLS stream (asyncio stops reading from the socket past twice this).
STREAM_LIMIT = 2**20
#: The same before login: a stranger's bytes wait in at most 2 x 8 KiB decrypted ...
PRE_LOGIN_STREAM_LIMIT = 8 * 1024
#: ... and 16 KiB of TLS records not yet decrypted.
PRE_LOGIN_TLS_BUFFER = 16 * 1024


class ConnectionClosed(RemoteError):
    """The peer closed the connection (possibly between two messages)."""


class MessageChannel(ABC):
    """Framed protocol messages over a connection.

    Frames are read exactly (header, then payload), never past the end of a message, so after the
    last message the same connection can carry raw data (`StartWork` is followed by the visitor's bytes).
    """

    def __init__(self, *, max_frame_size: int = PRE_AUTH_MAX_FRAME_SIZE) -> None:
        self._decoder = FrameDecoder(max_frame_size)
        self._login_callbacks: list[Callable[[], None]] | None = []

    @property
    def max_frame_size(self) -> int:
        return self._decoder.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        """Raising it past `PRE_AUTH_MAX_FRAME_SIZE` marks the peer as logged in (see `on_login`)."""
        self._decoder.max_frame_size = value
        if value > PRE_AUTH_MAX_FRAME_SIZE and self._login_callbacks is not None:
            self._logged_in()

    def _logged_in(self) -> None:
        callbacks, self._login_callbacks = self._login_callbacks or [], None
        for callback in callbacks:
            callback()

    def on_login(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the peer has authenticated (at once if it has already)."""
        if self._login_callbacks is None:
            callback()
        else:
            self._login_callbacks.append(callback)

    @abstractmethod
    async def _read_exactly(self, n: int, *, first: bool = False) -> bytes: ...

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abstractmethod
    async def _drain(self) -> None: ...

    @abstractmethod
    def peer(self) -> str: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def alive(self) -> bool:
        """False once the peer has closed or the connection is closing (checked without reading)."""

    @abstractmethod
    def backlog(self) -> int:
        """Bytes written but not yet handed to the kernel; -1 when the connection is closing."""

    @abstractmethod
    def into_end(self, *, on_reuse: Callable[[], None] | None = None) -> End:
        """From now on the connection carries data: the relay end for it.

        ``on_reuse`` is called instead of closing when the data ended cleanly both ways and the
        connection can carry another visitor (TLS only: a plain socket's end is a real shutdown).
        """

    def abort(self) -> None:
        """Close at once, without a goodbye: for a peer that is gone (a dead link never answers one)."""
        self.close()

    async def send(self, msg: Message) -> None:
        self._write(encode_frame(msg))
        await self._drain()

    def send_nowait(self, msg: Message) -> None:
        """Queue a message without waiting for the socket buffer (for callbacks)."""
        self._write(encode_frame(msg))

    async def recv(self) -> Message:
        """The next message; raises ConnectionClosed at EOF and ProtocolError on garbage."""
        first = True
        while True:
            msgs = self._decoder.feed(await self._read_exactly(self._decoder.wanted, first=first))
            if msgs:
                return msgs[0]  # exact reads: one frame's bytes never hold a second message
            first = False


class StreamChannel(MessageChannel):
    """Messages over asyncio streams (TLS connections)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame_size: int = PRE_AUTH_MAX_FRAME_SIZE,
    ) -> None:
        super().__init__(max_frame_size=max_frame_size)
        self.reader = reader
        self.writer = writer

    async def _read_exactly(self, n: int, *, first: bool = False) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            if first and not exc.partial:
                raise ConnectionClosed("connection closed by peer") from None
            raise ProtocolError("connection closed in the middle of a frame") from None
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from exc

    def _write(self, data: bytes) -> None:
        self.writer.write(data)

    async def _drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from exc

    def peer(self) -> str:
        return format_sockaddr(self.writer.get_extra_info("peername"))

    def close(self) -> None:
        self.writer.close()

    def alive(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def backlog(self) -> int:
        transport = self.writer.transport
        return -1 if transport.is_closing() else transport.get_write_buffer_size()

    def into_end(self, *, on_reuse: Callable[[], None] | None = None) -> End:
        return FramedEnd(self.reader, self.writer, on_reuse=on_reuse)

    def abort(self) -> None:
        # writer.close() on TLS waits for the peer's close_notify (ssl_shutdown_timeout, 30 s) before the
        # reader sees the end; abort() drops the connection now.
        self.writer.transport.abort()

    def _logged_in(self) -> None:
        # A logged-in peer gets the buffers a tunnel needs.
        if isinstance(self.reader, _LoginReader):
            self.reader.set_limit(STREAM_LIMIT)
        _tls_read_buffer(self.writer.transport, None)  # the loop's default
        super()._logged_in()


def _tls_read_buffer(transport: asyncio.BaseTransport, high: int | None) -> None:
    """Bound the TLS records buffered before decryption (``None``: the loop's default); the TLS
    transports of asyncio and uvloop both have this knob."""
    setter = getattr(transport, "set_read_buffer_limits", None)
    if setter is not None and not transport.is_closing():
        setter(high=high)


class _LoginReader(asyncio.StreamReader):
    """A stream reader whose buffer limit can be raised after login."""

    def set_limit(self, limit: int) -> None:
        self._limit = limit


async def accept_tls(
    sock: socket.socket, context: ssl.SSLContext, *, handshake_timeout: float
) -> StreamChannel:
    """The server side of TLS on an accepted socket, with the small buffers of a stranger.

    Takes ``sock`` over for good: from this call on only the TLS transport closes it, also when the
    handshake fails, times out or is cancelled (asyncio and uvloop both close their transport then).
    """
    loop = asyncio.get_running_loop()
    reader = _LoginReader(limit=PRE_LOGIN_STREAM_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, sock, ssl=context, ssl_handshake_timeout=handshake_timeout
    )
    _tls_read_buffer(transport, PRE_LOGIN_TLS_BUFFER)
    return StreamChannel(reader, asyncio.StreamWriter(transport, protocol, reader, loop))


class SocketChannel(MessageChannel):
    """Messages over a raw non-blocking socket (plain data connections, so the relay can splice)."""

    def __init__(self, sock: socket.socket, *, max_frame_size: int = PRE_AUTH_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size=max_frame_size)
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._out = bytearray()

    async def _read_exactly(self, n: int, *, first: bool = False) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            # Plain recv + our own readiness wait (as the relay does), not loop.sock_recv_into: the
            # socket goes on to the relay's add_reader-based pumps, and some loops (uvloop) keep
            # internal state for sockets used through their sock_* methods.
            try:
                k = self.sock.recv_into(view[got:])
            except (BlockingIOError, InterruptedError):
                k = -1  # waited for outside the except clause, which would hold the exception meanwhile
            except (ConnectionError, OSError) as exc:
                raise ConnectionClosed(f"connection lost: {exc}") from exc
            if k < 0:
                await wait_fd(self._loop, self.sock.fileno(), writable=False)
                continue
            if not k:
                if first and got == 0:
                    raise ConnectionClosed("connection closed by peer")
                raise ProtocolError("connection closed in the middle of a frame")
            got += k
        return bytes(buf)

    def _write(self, data: bytes) -> None:
        self._out += data

    async def _drain(self) -> None:
        data, self._out = bytes(self._out), bytearray()
        try:
            await self._loop.sock_sendall(self.sock, data)
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from exc

    def send_nowait(self, msg: Message) -> None:  # pragma: no cover - plain channels only send awaited
        raise NotImplementedError("SocketChannel.send_nowait")

    def peer(self) -> str:
        try:
            return format_sockaddr(self.sock.getpeername())
        except OSError:
            return "?"

    def close(self) -> None:
        self.sock.close()

    def alive(self) -> bool:
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return bool(data)  # b"" = EOF; data before StartWork would be a protocol error anyway

    def backlog(self) -> int:
        return -1 if self.sock.fileno() < 0 else len(self._out)

    def into_end(self, *, on_reuse: Callable[[], None] | None = None) -> End:
        return SocketEnd(self.sock)


class FramedEnd(End):
    """Relay end for data in chunks (`pierce.protocol.chunks`) over a TLS stream; half-close included."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_reuse: Callable[[], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._chunks = ChunkDecoder()
        self._sent_eof = False  # our end-of-data marker went out
        #: Called by ``close()`` instead of closing when the connection is clean (both markers
        #: crossed, nothing half-read): the owner then serves the next visitor on it, no new handshake.
        self._on_reuse = on_reuse
        self._released = False

    def peer_done(self) -> bool:
        if self._chunks.ended or self._reader.at_eof():
            return True
        # An end-of-data marker already buffered (an idle keep-alive connection the far side closed).
        buffered: bytearray = getattr(self._reader, "_buffer", bytearray())
        return self._chunks.at_boundary and buffered[: len(END_OF_DATA)] == END_OF_DATA

    @property
    def reusable(self) -> bool:
        return self._chunks.ended and self._sent_eof and not self._writer.is_closing()

    async def read(self, max_bytes: int) -> bytes:
        # The hot path of encrypted tunnels: plain attribute reads, one feed per chunk header.
        chunks = self._chunks
        try:
            while not chunks.left:
                if chunks.ended:
                    return b""
                chunks.header(await self._reader.readexactly(CHUNK_HEADER_SIZE))
            data = await self._reader.read(min(max_bytes, chunks.left))
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("tunnel closed without end-of-data marker") from exc
        if not data:
            raise ConnectionResetError("tunnel closed in the middle of a data chunk")
        chunks.left -= len(data)  # all payload (what `feed` would do, without the call)
        return data

    async def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        if not n:
            return  # an empty chunk would mean EOF
        if n <= ONE_RECORD:  # requests, keystrokes: header and data as one TLS record, no list
            self._writer.write(CHUNK_HEADER.pack(n) + data)
        else:
            for piece in chunk(data):
                self._writer.write(piece)
        await self._writer.drain()

    def write_eof(self) -> None:
        if self._sent_eof or self._writer.is_closing():
            return
        try:
            self._writer.write(END_OF_DATA)
        except Exception:
            return
        self._sent_eof = True

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        if self._on_reuse is not None and self.reusable:
            self._on_reuse()
        else:
            self._writer.close()

    def abort(self) -> None:
        if self._released:
            return
        self._released = True
        abort_transport(self._writer.transport)


class TlsEnd(End):
    """TLS spoken over another end (a work connection), e.g. the client terminating a visitor's HTTPS.

    The record layer runs in memory (`ssl.MemoryBIO`), so any `End` can carry it: a framed TLS work
    connection or a plain socket. Half-close sends ``close_notify`` and then passes EOF down.
    """

    def __init__(self, inner: End, context: ssl.SSLContext, *, server_side: bool) -> None:
        self._inner = inner
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._closing: asyncio.Task[None] | None = None

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            await self._inner.write(data)

    async def _fill(self) -> bool:
        """Feed more ciphertext from the inner end; False at its EOF."""
        data = await self._inner.read(256 * 1024)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def handshake(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    self._tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush()
                    if not await self._fill():
                        raise ConnectionResetError("connection closed during the TLS handshake") from None
            await self._flush()

    async def read(self, max_bytes: int) -> bytes:
        while True:
            try:
                return self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._flush()  # post-handshake messages (tickets, key updates)
                if not await self._fill():
                    try:
                        return self._tls.read(max_bytes)
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLWantReadError):
                        return b""
            except ssl.SSLZeroReturnError:  # close_notify: the peer's half-close
                return b""

    async def write(self, data: bytes | memoryview) -> None:
        self._tls.write(data)
        await self._flush()

    def write_eof(self) -> None:
        if self._closing is not None:
            return
        with contextlib.suppress(ssl.SSLError):  # close_notify is queued; the peer's may come later
            self._tls.unwrap()
        data = self._outgoing.read()

        async def finish() -> None:
            if data:
                await self._inner.write(data)
            self._inner.write_eof()

        self._closing = asyncio.ensure_future(finish())

    def close(self) -> None:
        closing = self._closing
        if closing is not None and not closing.done():
            closing.add_done_callback(lambda _: self._inner.close())
        else:
            self._inner.close()

    def abort(self) -> None:
        if self._closing is not None:
            self._closing.cancel()
        self._inner.abort()


class MemoryEnd(End):
    """One end of an in-memory byte pipe pair (`MemoryChannel.into_end`); half-close included."""

    def __init__(self, inbox: asyncio.StreamReader, outbox: asyncio.StreamReader) -> None:
        self._inbox = inbox
        self._outbox = outbox

    async def read(self, max_bytes: int) -> bytes:
        return await self._inbox.read(max_bytes)

    def write_nowait(self, data: bytes | memoryview) -> None:
        if getattr(self._outbox, "_eof", False):
            raise ConnectionResetError("in-memory pipe closed")
        self._outbox.feed_data(bytes(data))

    async def write(self, data: bytes | memoryview) -> None:
        self.write_nowait(data)

    def write_eof(self) -> None:
        if not getattr(self._outbox, "_eof", False):
            self._outbox.feed_eof()

    def close(self) -> None:
        self.write_eof()
        if not getattr(self._inbox, "_eof", False):
            self._inbox.feed_eof()


class MemoryChannel(MessageChannel):
    """Messages over an in-memory pipe; `memory_pair` makes two connected ones (no sockets, for tests)."""

    def __init__(
        self,
        inbox: asyncio.StreamReader,
        outbox: asyncio.StreamReader,
        *,
        name: str,
        max_frame_size: int = PRE_AUTH_MAX_FRAME_SIZE,
    ) -> None:
        super().__init__(max_frame_size=max_frame_size)
        self._end = MemoryEnd(inbox, outbox)
        self._inbox = inbox
        self._outbox = outbox
        self._name = name
        self._closed = False

    async def _read_exactly(self, n: int, *, first: bool = False) -> bytes:
        try:
            return await self._inbox.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            if first and not exc.partial:
                raise ConnectionClosed("connection closed by peer") from None
            raise ProtocolError("connection closed in the middle of a frame") from None

    def _write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionClosed("connection closed")
        try:
            self._end.write_nowait(data)
        except ConnectionResetError as exc:
            raise ConnectionClosed(str(exc)) from None

    async def _drain(self) -> None:
        return None

    def peer(self) -> str:
        return self._name

    def close(self) -> None:
        self._closed = True
        self._end.close()

    def alive(self) -> bool:
        return not (self._closed or self._inbox.at_eof())

    def backlog(self) -> int:
        return -1 if self._closed else 0

    def into_end(self, *, on_reuse: Callable[[], None] | None = None) -> End:
        return self._end


def memory_pair(names: tuple[str, str] = ("memory-a", "memory-b")) -> tuple[MemoryChannel, MemoryChannel]:
    """Two message channels joined in memory: what one sends, the other receives."""
    a_to_b = asyncio.StreamReader()
    b_to_a = asyncio.StreamReader()
    return (
        MemoryChannel(b_to_a, a_to_b, name=names[1]),
        MemoryChannel(a_to_b, b_to_a, name=names[0]),
    )
