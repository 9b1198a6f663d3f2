"""Tunnel connections on asyncio streams: framed messages, and the data framing used over TLS.

`MessageChannel` carries control messages (`pierce.protocol`): length-prefixed frames read exactly,
with a frame-size limit that starts small and is raised after authentication; `StreamChannel` runs it
over asyncio streams (TLS), `SocketChannel` over a raw socket (plain data connections).

`FramedEnd` is a relay end for data that flows over TLS. asyncio's TLS transport cannot half-close
(no ``write_eof``), so after `StartWork` the bytes travel in chunks ``[u32 length][bytes]`` and an empty
chunk means "no more data this way". That keeps half-close working through encrypted tunnels at the
cost of 4 bytes per chunk of up to 256 KiB. Plain (unencrypted) data connections skip this and are
relayed as raw sockets, so both hops can splice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable

from pierce.addr import format_sockaddr
from pierce.errors import RemoteError
from pierce.protocol import (
    HEADER_SIZE,
    PRE_AUTH_MAX_FRAME_SIZE,
    FrameDecoder,
    Message,
    ProtocolError,
    encode_frame,
)
from pierce.relay import End, wait_fd

_CHUNK_HEADER = struct.Struct(">I")
#: The largest data chunk a peer may announce on a framed data connection.
MAX_DATA_CHUNK = 1024 * 1024


class ConnectionClosed(RemoteError):
    """The peer closed the connection (possibly between two messages)."""


class MessageChannel(ABC):
    """Framed protocol messages over a connection.

    Frames are read exactly (header, then payload), never past the end of a message, so after the
    last message the same connection can carry raw data (`StartWork` is followed by the visitor's bytes).
    """

    def __init__(self, *, max_frame_size: int = PRE_AUTH_MAX_FRAME_SIZE) -> None:
        self._decoder = FrameDecoder(max_frame_size)

    @property
    def max_frame_size(self) -> int:
        return self._decoder.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self._decoder.max_frame_size = value

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
        header = await self._read_exactly(HEADER_SIZE, first=True)
        if msgs := self._decoder.feed(header):  # pragma: no cover - a header alone is never a message
            return msgs[0]
        (length,) = struct.unpack(">I", header)
        msgs = self._decoder.feed(await self._read_exactly(length, first=False))
        assert len(msgs) == 1
        return msgs[0]


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

    def abort(self) -> None:
        # writer.close() on TLS waits for the peer's close_notify (ssl_shutdown_timeout, 30 s) before the
        # reader sees the end; abort() drops the connection now.
        self.writer.transport.abort()


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
                await wait_fd(self._loop, self.sock.fileno(), writable=False)
                continue
            except (ConnectionError, OSError) as exc:
                raise ConnectionClosed(f"connection lost: {exc}") from exc
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


#: Data up to this size is written with its chunk header in one piece (fits one 16 KiB TLS record).
_ONE_RECORD = 16 * 1024 - 4


class FramedEnd(End):
    """Relay end for data over TLS: ``[u32 length][bytes]`` chunks, an empty chunk is EOF."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_reuse: Callable[[], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._left = 0  # bytes of the current chunk not yet read
        self._eof = False  # the peer's end-of-data marker arrived
        self._sent_eof = False  # ours went out
        #: Called by ``close()`` instead of closing when the connection is clean (both markers
        #: crossed, nothing half-read): the owner then serves the next visitor on it, no new handshake.
        self._on_reuse = on_reuse
        self._released = False

    def peer_done(self) -> bool:
        if self._eof or self._reader.at_eof():
            return True
        # An end-of-data marker already buffered (an idle keep-alive connection the far side closed).
        buffered: bytearray = getattr(self._reader, "_buffer", bytearray())
        return not self._left and buffered[: _CHUNK_HEADER.size] == b"\0\0\0\0"

    @property
    def reusable(self) -> bool:
        return self._eof and self._sent_eof and not self._left and not self._writer.is_closing()

    async def read(self, max_bytes: int) -> bytes:
        if self._eof:
            return b""
        try:
            if not self._left:
                header = await self._reader.readexactly(_CHUNK_HEADER.size)
                (self._left,) = _CHUNK_HEADER.unpack(header)
                if self._left == 0:
                    self._eof = True
                    return b""
                if self._left > MAX_DATA_CHUNK:
                    raise ProtocolError(f"data chunk of {self._left} bytes exceeds {MAX_DATA_CHUNK}")
            data = await self._reader.read(min(max_bytes, self._left))
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("tunnel closed without end-of-data marker") from exc
        if not data:
            raise ConnectionResetError("tunnel closed in the middle of a data chunk")
        self._left -= len(data)
        return data

    async def write(self, data: bytes | memoryview) -> None:
        if not data:
            return  # an empty chunk would mean EOF
        if len(data) > MAX_DATA_CHUNK:
            view = memoryview(data)
            for i in range(0, len(view), MAX_DATA_CHUNK):
                piece = view[i : i + MAX_DATA_CHUNK]
                self._writer.write(_CHUNK_HEADER.pack(len(piece)))
                self._writer.write(piece)
        elif len(data) <= _ONE_RECORD:
            # Header and data in one write: one TLS record instead of two (requests, keystrokes).
            self._writer.write(_CHUNK_HEADER.pack(len(data)) + data)
        else:
            self._writer.write(_CHUNK_HEADER.pack(len(data)))
            self._writer.write(data)
        await self._writer.drain()

    def write_eof(self) -> None:
        if self._sent_eof or self._writer.is_closing():
            return
        try:
            self._writer.write(_CHUNK_HEADER.pack(0))
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
