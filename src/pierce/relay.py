"""The byte mover: one bidirectional relay used by the mapper, the tunnel, the visitor and P2P.

Theory of operation
-------------------
A relay joins two *ends*. Each direction is pumped independently until its source reports EOF; the
EOF is then passed on as a half-close (``shutdown(SHUT_WR)``) to the other end, so a client that
shuts down its write side still receives the whole reply. The relay finishes when both directions
have finished, or at once when either direction fails; then both ends are closed. Cancelling
:func:`relay` closes both ends too, so no file descriptor outlives it.

Fast paths, for two plain sockets (the mapper, unencrypted tunnel data):

- ``splice`` (Linux): bytes go socket -> pipe -> socket inside the kernel, a megabyte at a time, and
  Python only issues the two splice calls. Used when either socket leaves the machine.
- ``copy``: non-blocking ``recv_into``/``send`` through one buffer that grows from 64 KiB to 1 MiB while
  a transfer keeps filling it and shrinks back when the connection goes quiet. Used between two
  loopback sockets, where the kernel's 64 KiB-MTU loopback makes a large-buffer copy measurably faster
  than splice (bench/bench_map.py measures both; PIERCE_RELAY=splice|copy forces one).

TLS streams and event loops without ``add_reader`` (Windows) use the stream copy loop.

Taps: a relay may be given a callable per direction that sees every piece of bytes just before it is
written on (the client's request inspector, `pierce.inspect`), so a request is always seen before the
other side can answer it. A tapped direction never splices (the bytes must pass through Python); it uses
the copy loops. A tap must not raise, block or keep the memoryview it gets past its call. Without taps
nothing changes.

Cancel safety: :func:`relay` may be cancelled or wrapped in a timeout at any point once it has
started; it owns both ends from its first step (a task cancelled before it ever ran leaves the ends
to its creator).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import mmap
import os
import socket
import struct
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import msgspec

from pierce.bandwidth import Throttle

#: Sees the bytes of one direction of a relay just before they are written on (see "Taps" above).
Tap = Callable[[bytes | memoryview], None]

#: Bytes moved per copy-loop read: a connection starts small and grows while transfers fill the buffer.
COPY_BUFFER_MIN = 64 * 1024
COPY_BUFFER_SIZE = 4 * 1024 * 1024
#: Read size of the stream (TLS) copy loop.
STREAM_BUFFER_SIZE = 256 * 1024
STREAM_BUFFER_MIN = 16 * 1024
#: Seconds without a full buffer after which a grown copy buffer is given back.
COPY_BUFFER_SHRINK_AFTER = 2.0
#: Pipe capacity asked for on the splice path (the default pipe is 64 KiB).
PIPE_SIZE = 1024 * 1024

HAVE_SPLICE = sys.platform == "linux" and hasattr(os, "splice")
#: The loop can wait for a socket's readiness itself (``add_reader``): not the Windows loops.
_HAVE_FD_WAITS = sys.platform != "win32"
#: Operator override of the socket fast path: "splice", "copy" or "" (choose per connection).
FORCED_MODE = os.environ.get("PIERCE_RELAY", "").strip().lower()
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ on Linux
_F_GETPIPE_SZ = 1032

# Errors that mean "the peer went away"; they end the relay quietly rather than as a failure.
_GONE_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN, errno.ETIMEDOUT}


class RelayMode(enum.Enum):
    """How a relay moved the bytes (see the module docstring); logged as ``mode`` when it closes."""

    SPLICE = "splice"
    COPY = "copy"
    STREAM = "stream"


class End(ABC):
    """One side of a relay: something that reads, writes, half-closes and closes."""

    __slots__ = ()

    @property
    def socket(self) -> socket.socket | None:
        """The plain socket underneath, when bytes may bypass Python (splice); else None."""
        return None

    @abstractmethod
    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes as they arrive; ``b""`` at EOF."""

    @abstractmethod
    async def write(self, data: bytes | memoryview) -> None:
        """Write all of ``data``."""

    @abstractmethod
    def write_eof(self) -> None:
        """Half-close: no more data will be written. Errors from a vanished peer are ignored."""

    @abstractmethod
    def close(self) -> None:
        """Release the end. Idempotent."""

    def abort(self) -> None:
        """Release the end so that its peer sees a failure, not an orderly end (a TCP reset): for a
        relay that broke off, whose peer must not take a truncated stream for a complete one."""
        self.close()

    def peer_done(self) -> bool:
        """True when the peer has already ended its side (seen without consuming data); False if unknown."""
        return False

    def max_write(self) -> int:
        """The most bytes one write should carry now: the stream copy loop reads no more than this
        before writing here. An end that shares its capacity among many streams (a QUIC path) asks for
        small turns when many share it, so that each stream's source is read often (see `QuicPath`)."""
        return STREAM_BUFFER_SIZE


class SocketEnd(End):
    """A connected, non-blocking socket owned by the relay.

    Reads and writes try the socket first and wait for readiness only when it would block (as the
    copy loops do), except a read after a short one (a request or an answer that has ended), which
    waits first: the next bytes are rarely there yet, and a ``recv`` that fails costs a system call.
    On uvloop a read that finds the watch already in place tries the socket first all the same: libuv
    reports a socket error (a reset) to a watch once and then stops watching the socket, so that report
    may have been the wake-up of the last read, which found bytes before the error; waiting on that
    watch would never end. A ``recv`` sees an error the kernel holds; a fresh watch reports it again.
    Between reads the socket stays watched (one reader callback, kept while reads follow each other),
    so a connection that takes turns, as HTTP keep-alive does, registers its socket with the loop once
    instead of once per message; the watch ends when readiness comes with no read waiting (level-
    triggered readiness would repeat), and with `close`, `abort` or `unwatch` (reads taken over).
    A waiting connection holds one future and that callback, about half of what the loop's
    ``sock_recv`` keeps per waiting read (uvloop). Loops without ``add_reader`` (Windows) use
    ``sock_recv`` / ``sock_sendall``.
    """

    __slots__ = ("_errors_once", "_fd", "_fd_waits", "_loop", "_short", "_sock", "_waiter", "_watching")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._fd_waits = _HAVE_FD_WAITS and hasattr(self._loop, "add_reader")
        self._fd = sock.fileno()
        #: The read waiting for readiness, if any.
        self._waiter: asyncio.Future[None] | None = None
        #: A reader callback is registered for ``_fd``.
        self._watching = False
        #: The last read returned less than it asked for.
        self._short = False
        #: The loop reports a socket error to a watch once, then stops watching (uvloop).
        self._errors_once = _reports_errors_once(self._loop)

    @property
    def socket(self) -> socket.socket:
        return self._sock

    async def read(self, max_bytes: int) -> bytes:
        if not self._fd_waits:
            return await self._loop.sock_recv(self._sock, max_bytes)
        sock = self._sock
        wait = self._short and not (self._watching and self._errors_once)
        while True:
            if wait:
                # The wait is here, not in a coroutine of its own nor in the except clause below: an idle
                # connection waits for its whole life, and would hold a frame more, or the exception
                # with its traceback (an except clause keeps it while it runs), all the while.
                waiter = self._waiter = self._loop.create_future()
                if not self._watching:
                    self._loop.add_reader(self._fd, self._on_readable)
                    self._watching = True
                try:
                    await waiter
                finally:
                    self._waiter = None
            try:
                data = sock.recv(max_bytes)
            except (BlockingIOError, InterruptedError):
                wait = True
                continue
            self._short = 0 < len(data) < max_bytes
            return data

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self.unwatch()
        elif not waiter.done():
            waiter.set_result(None)

    def unwatch(self) -> None:
        """Stop watching the socket for reads (its reads go on another way, e.g. a socket pump)."""
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._fd)

    async def write(self, data: bytes | memoryview) -> None:
        if not self._fd_waits:
            await self._loop.sock_sendall(self._sock, data)
            return
        sock = self._sock
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = -1  # waited for outside the except clause, which would hold the exception meanwhile
            if sent < 0:
                await wait_fd(self._loop, sock.fileno(), writable=True)
            else:
                view = view[sent:]

    def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.unwatch()
        self._sock.close()

    def abort(self) -> None:
        self.unwatch()
        abort_socket(self._sock)


def _reports_errors_once(loop: asyncio.AbstractEventLoop) -> bool:
    """True for loops whose readiness watch reports a socket error once and then stops watching that
    socket, unlike the selector loops, whose watches go on reporting it (see `SocketEnd`): uvloop.
    Asked once per loop class, not per connection."""
    cls = type(loop)
    known = _ERRORS_ONCE.get(cls)
    if known is None:
        known = _ERRORS_ONCE[cls] = cls.__module__.partition(".")[0] == "uvloop"
    return known


#: `_reports_errors_once` by loop class.
_ERRORS_ONCE: dict[type, bool] = {}


def abort_socket(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (SO_LINGER 0), so its peer reads an error instead of EOF."""
    if sock.fileno() >= 0:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class StreamEnd(End):
    """An asyncio stream pair (TLS or any transport without a usable raw socket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int) -> bytes:
        return await self._reader.read(max_bytes)

    async def write(self, data: bytes | memoryview) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def write_eof(self) -> None:
        if self._writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write_eof()

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        abort_transport(self._writer.transport)


class ThrottledEnd(End):
    """``inner`` with its reads held to ``reads`` and its writes to ``writes`` (either may be None), for
    code that moves bytes through an end itself rather than through `relay` (the HTTP engine)."""

    def __init__(self, inner: End, *, reads: Throttle | None, writes: Throttle | None) -> None:
        self._inner = inner
        self._reads = reads
        self._writes = writes

    async def read(self, max_bytes: int) -> bytes:
        if self._reads is None:
            return await self._inner.read(max_bytes)
        allowed = await self._reads.take(max_bytes)
        data = await self._inner.read(allowed)
        self._reads.refund(allowed - len(data))
        return data

    async def write(self, data: bytes | memoryview) -> None:
        if self._writes is None:
            await self._inner.write(data)
            return
        view = memoryview(data)
        while view:
            allowed = await self._writes.take(len(view))
            await self._inner.write(view[:allowed])
            view = view[allowed:]

    def write_eof(self) -> None:
        self._inner.write_eof()

    def peer_done(self) -> bool:
        return self._inner.peer_done()

    def max_write(self) -> int:
        return self._inner.max_write()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()


def abort_transport(transport: asyncio.BaseTransport) -> None:
    """Close ``transport`` at once with a reset on its TCP socket (see `abort_socket`)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.type == socket.SOCK_STREAM:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


class RelayStats(msgspec.Struct, eq=False):
    """Live byte counters of one relay, readable while it runs."""

    a_to_b: int = 0
    b_to_a: int = 0
    started: float = msgspec.field(default_factory=time.monotonic)
    ended: float | None = None
    #: The error that ended the relay early, or None when both directions reached EOF.
    error: BaseException | None = None
    #: The mode the relay chose for this pair of ends; None until it has started.
    mode: RelayMode | None = None

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started


async def relay(
    a: End,
    b: End,
    stats: RelayStats | None = None,
    *,
    throttles: tuple[Throttle | None, Throttle | None] = (None, None),
    taps: tuple[Tap | None, Tap | None] = (None, None),
) -> RelayStats:
    """Move bytes both ways between ``a`` and ``b`` until both directions end; close both.

    Returns the counters. A peer that resets or vanishes ends the relay with ``stats.error`` set
    instead of an exception; cancellation propagates after both ends are closed. A relay that did not
    see both directions end aborts both ends (`End.abort`): a failure on one side reaches the other as
    a failure, never as an orderly end that would pass a truncated stream off as complete.

    ``taps``: callables that see the bytes of a -> b and b -> a (see "Taps" in the module docstring).
    """
    stats = stats if stats is not None else RelayStats()
    # a -> b is pumped by the calling task itself and b -> a by one task of its own: an idle relay
    # holds one task and one pump less than two tasks and a wait would (it waits for its whole life).
    # When b -> a fails first, the calling task is cancelled to stop a -> b; that cancellation is told
    # from any other (the caller's, a timeout's) by its count (`Task.uncancel`).
    me = asyncio.current_task()
    assert me is not None, "relay() runs in a task"
    backward = asyncio.ensure_future(_pump(b, a, stats, forward=False, throttle=throttles[1], tap=taps[1]))
    state = _RelayState(me)
    backward.add_done_callback(state.backward_done)
    forward_ok = False
    try:
        try:
            await _pump(a, b, stats, forward=True, throttle=throttles[0], tap=taps[0])
            forward_ok = True
        except asyncio.CancelledError:
            if not state.interrupted or me.uncancel() > 0:
                raise
        except Exception as exc:
            if stats.error is None:
                stats.error = exc
        finally:
            state.forward_done = True
        if forward_ok:
            with contextlib.suppress(Exception):
                await backward
        if backward.done() and not backward.cancelled() and backward.exception() is not None:
            stats.error = stats.error or backward.exception()
    finally:
        backward.cancel()
        try:
            # Let a cancelled pump unregister its fd callbacks before the fds are closed.
            await asyncio.shield(asyncio.gather(backward, return_exceptions=True))
        finally:
            complete = (
                forward_ok and backward.done() and not backward.cancelled() and backward.exception() is None
            )
            for end in (a, b):
                if complete:
                    end.close()
                else:
                    end.abort()
            stats.ended = time.monotonic()
    return stats


class _RelayState:
    """What a relay's two directions tell each other (see `relay`); ``task`` pumps a -> b."""

    __slots__ = ("forward_done", "interrupted", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.forward_done = False
        self.interrupted = False
        self.task = task

    def backward_done(self, backward: asyncio.Future[None]) -> None:
        """b -> a ended; when it failed while a -> b still runs, a -> b is stopped (a method, not a
        closure: one bound method per relay instead of a function and its cells)."""
        if not self.forward_done and not backward.cancelled() and backward.exception() is not None:
            self.interrupted = True
            self.task.cancel()


def _is_loopback(sock: socket.socket) -> bool:
    try:
        host = sock.getpeername()[0]
    except (OSError, IndexError):
        return False
    return isinstance(host, str) and (host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1"))


def choose_mode(a: socket.socket | None, b: socket.socket | None) -> RelayMode:
    """`RelayMode.SPLICE`, `RelayMode.COPY` (socket fast paths) or `RelayMode.STREAM` for this pair."""
    if a is None or b is None:
        return RelayMode.STREAM
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "add_reader") or sys.platform == "win32":
        return RelayMode.STREAM
    if FORCED_MODE in ("splice", "copy"):
        return RelayMode.SPLICE if FORCED_MODE == "splice" and HAVE_SPLICE else RelayMode.COPY
    if HAVE_SPLICE and not (_is_loopback(a) and _is_loopback(b)):
        return RelayMode.SPLICE
    return RelayMode.COPY


async def _pump(
    src: End, dst: End, stats: RelayStats, *, forward: bool, throttle: Throttle | None, tap: Tap | None
) -> None:
    src_sock, dst_sock = src.socket, dst.socket
    try:
        mode = stats.mode = choose_mode(src_sock, dst_sock) if throttle is None else RelayMode.STREAM
        if mode is RelayMode.SPLICE and tap is not None:
            mode = stats.mode = RelayMode.COPY  # a tap sees the bytes: they pass through Python
        if mode is RelayMode.SPLICE:
            assert src_sock is not None and dst_sock is not None and isinstance(src, SocketEnd)
            src.unwatch()  # the pump waits for the socket itself
            await _splice_pump(src_sock, dst_sock, stats, forward)
        elif mode is RelayMode.COPY:
            assert src_sock is not None and dst_sock is not None and isinstance(src, SocketEnd)
            src.unwatch()
            await _socket_copy_pump(src_sock, dst_sock, stats, forward, tap)
        else:
            # The stream copy loop is here, not in a coroutine of its own: an idle connection waits in
            # it for its whole life, one frame less per direction. No buffer of our own: stream ends
            # hand over the bytes objects they read. The read size starts small (most tunnelled
            # connections are idle or interactive) and grows while reads come back full.
            size = STREAM_BUFFER_MIN
            while True:
                ask = min(size, dst.max_write())
                if throttle is None:
                    data = await src.read(ask)
                else:
                    allowed = await throttle.take(ask)
                    data = await src.read(allowed)
                    throttle.refund(allowed - len(data))
                if not data:
                    break
                if tap is not None:
                    tap(data)
                await dst.write(data)
                n = len(data)
                del data  # not held while the next read waits: an idle connection keeps none of its burst
                if forward:
                    stats.a_to_b += n
                else:
                    stats.b_to_a += n
                if n == ask and size < STREAM_BUFFER_SIZE:
                    size = min(size * 4, STREAM_BUFFER_SIZE)
    except OSError as exc:
        failure: OSError = (
            PeerGone(str(exc)) if exc.errno in _GONE_ERRNOS or isinstance(exc, ConnectionError) else exc
        )
        if stats.error is None:
            stats.error = failure
        if failure is exc:
            raise
        raise failure from exc
    if stats.error is not None:
        # The other direction failed first. A socket reports a reset once: this direction may have
        # read EOF only because the other one took the error, so no EOF is passed on.
        raise PeerGone(f"the other direction failed: {stats.error}")
    dst.write_eof()


class PeerGone(ConnectionError):
    """One end reset or vanished mid-transfer."""


async def _socket_copy_pump(
    src: socket.socket, dst: socket.socket, stats: RelayStats, forward: bool, tap: Tap | None = None
) -> None:
    """socket -> buffer -> socket with non-blocking calls, waking only when a side would block.

    The buffer exists only while data flows: it is allocated when the source becomes readable, grows
    while reads fill it, and is released when the connection has been quiet for a while, so thousands
    of idle connections cost no buffer memory.
    """
    loop = asyncio.get_running_loop()
    size = COPY_BUFFER_MIN
    buf: bytearray | mmap.mmap | None = None
    view = memoryview(b"")
    last_full = time.monotonic()
    src_fd, dst_fd = src.fileno(), dst.fileno()
    recv_into, send = src.recv_into, dst.send
    while True:
        if buf is None:
            await wait_fd(loop, src_fd, writable=False)
            size = COPY_BUFFER_MIN
            buf = _buffer(size)
            view = memoryview(buf)
        try:
            n = recv_into(buf)
        except (BlockingIOError, InterruptedError):
            n = -1  # waits happen outside the except clause, which would hold the exception meanwhile
        if n < 0:
            # Give the buffer back before waiting unless a bulk transfer is under way (a grown buffer
            # filled recently): idle and interactive connections then hold no buffer at all.
            if size == COPY_BUFFER_MIN or time.monotonic() - last_full > COPY_BUFFER_SHRINK_AFTER:
                view.release()
                _free(buf)
                buf = None
                continue
            await wait_fd(loop, src_fd, writable=False)
            continue
        if not n:
            return
        if forward:
            stats.a_to_b += n
        else:
            stats.b_to_a += n
        if tap is not None:
            tap(view[:n])
        sent = 0
        while sent < n:
            try:
                sent += send(view[sent:n])
                continue
            except (BlockingIOError, InterruptedError):
                pass
            await wait_fd(loop, dst_fd, writable=True)
        if n == size:
            last_full = time.monotonic()
            if size < COPY_BUFFER_SIZE:  # a bulk transfer: read bigger chunks
                view.release()
                _free(buf)
                size = min(size * 4, COPY_BUFFER_SIZE)
                buf = _buffer(size)
                view = memoryview(buf)


def _buffer(size: int) -> bytearray | mmap.mmap:
    """A relay buffer; megabyte ones are mapped directly, so they go back to the system when freed
    whatever the allocator keeps (see `pierce.runtime.tune_allocator`)."""
    return mmap.mmap(-1, size) if size >= _MAPPED_BUFFER else bytearray(size)


def _free(buf: bytearray | mmap.mmap | None) -> None:
    if isinstance(buf, mmap.mmap):
        buf.close()


_MAPPED_BUFFER = 1024 * 1024


def _make_pipe() -> tuple[int, int, int]:
    """A non-blocking pipe pair and its capacity in bytes."""
    import fcntl

    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        capacity = fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        # Unprivileged users past fs.pipe-user-pages-soft keep the default size: slower, still correct.
        capacity = fcntl.fcntl(w, _F_GETPIPE_SZ)
    return r, w, capacity


async def _splice_pump(src: socket.socket, dst: socket.socket, stats: RelayStats, forward: bool) -> None:
    """socket -> pipe -> socket; reading and writing overlap so neither side waits on the other."""
    loop = asyncio.get_running_loop()
    src_fd, dst_fd = src.fileno(), dst.fileno()
    pipe_r, pipe_w, capacity = _make_pipe()
    splice = os.splice
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    pending = 0  # bytes sitting in the pipe
    eof = False
    try:
        while True:
            can_read = can_write = False
            if not eof and pending < capacity:
                try:
                    n = splice(src_fd, pipe_w, capacity - pending, flags=flags)
                except (BlockingIOError, InterruptedError):
                    pass
                else:
                    if n == 0:
                        eof = True
                    else:
                        can_read = True
                        pending += n
                        if forward:
                            stats.a_to_b += n
                        else:
                            stats.b_to_a += n
            if pending:
                try:
                    pending -= splice(pipe_r, dst_fd, pending, flags=flags)
                    can_write = True
                except (BlockingIOError, InterruptedError):
                    pass
            if eof and not pending:
                return
            if can_read or can_write:
                continue
            # Nothing moved: sleep until the side that blocks us is ready.
            if pending and (eof or pending >= capacity):
                await wait_fd(loop, dst_fd, writable=True)
            elif pending:
                await _wait_either(loop, src_fd, dst_fd)
            else:
                await wait_fd(loop, src_fd, writable=False)
    finally:
        os.close(pipe_r)
        os.close(pipe_w)


async def wait_fd(loop: asyncio.AbstractEventLoop, fd: int, *, writable: bool) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    if writable:
        loop.add_writer(fd, _wake, fut)
        try:
            await fut
        finally:
            loop.remove_writer(fd)
    else:
        loop.add_reader(fd, _wake, fut)
        try:
            await fut
        finally:
            loop.remove_reader(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    """A readiness callback (no closure per wait: idle connections wait for their whole life)."""
    if not fut.done():
        fut.set_result(None)


async def _wait_either(loop: asyncio.AbstractEventLoop, read_fd: int, write_fd: int) -> None:
    """Return when ``read_fd`` is readable or ``write_fd`` is writable."""
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(read_fd, wake)
    try:
        loop.add_writer(write_fd, wake)
        try:
            await fut
        finally:
            loop.remove_writer(write_fd)
    finally:
        loop.remove_reader(read_fd)
