"""Listening sockets: bind with clear errors, and a TCP accept loop that hands each connection to a task.

Used by every role that accepts TCP: the port mapper, the server's control port and its public proxy
ports. Accepting happens in a reader callback (no future per connection) in batches, with a pause
when the process runs out of descriptors instead of spinning on a readable socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from pierce.addr import HostPort, format_sockaddr
from pierce.errors import LocalError
from pierce.logs import event

log = logging.getLogger("pierce.listen")

LISTEN_BACKLOG = 1024
#: Connections accepted per wake-up before yielding to the loop, so one busy port cannot starve others.
ACCEPT_BATCH = 64
#: Seconds accepting pauses when the process is out of descriptors or memory (`_OUT_OF_RESOURCES`).
ACCEPT_RETRY_S = 0.1
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: Socket buffer size asked for on UDP sockets (capped by net.core.rmem_max / wmem_max).
UDP_SOCKET_BUFFER = 4 * 1024 * 1024
#: Bytes waiting in a socket's or a tunnel's send buffer beyond which new datagrams are dropped (every
#: path that carries datagrams: `pierce.udpflow`, the udp and sudp proxies).
SEND_BACKLOG_LIMIT = 4 * 1024 * 1024


class PortInUse(LocalError):
    """The address is already taken by another socket."""


def bind_socket(listen: HostPort, kind: socket.SocketKind) -> socket.socket:
    """A bound, non-blocking socket for ``listen``; ``[::]`` also accepts IPv4. Errors name the address."""
    try:
        sock = socket.socket(listen.family, kind)
    except OSError as exc:  # out of descriptors or memory
        what = exc.strerror or str(exc)
        if exc.errno == errno.EMFILE:
            what += f" (this process may open {open_file_limit()}: raise LimitNOFILE= or ulimit -n)"
        raise LocalError(f"cannot listen on {listen} ({kind_name(kind)}): {what}") from exc
    try:
        if kind == socket.SOCK_STREAM and hasattr(socket, "SO_REUSEADDR"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if listen.family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((listen.host, listen.port))
    except OSError as exc:
        sock.close()
        what = {
            errno.EADDRINUSE: "address already in use",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "no such local address",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        cls = PortInUse if exc.errno == errno.EADDRINUSE else LocalError
        raise cls(f"cannot listen on {listen} ({kind_name(kind)}): {what}") from exc
    sock.setblocking(False)
    if kind == socket.SOCK_DGRAM:
        grow_udp_buffers(sock)
    return sock


def grow_udp_buffers(sock: socket.socket) -> None:
    """Ask for large UDP buffers so bursts of big datagrams are not dropped."""
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, UDP_SOCKET_BUFFER)


def open_file_limit() -> str:
    """This process's open-file limit, as text ("?" where there is none to read)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return "?"
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


def kind_name(kind: socket.SocketKind) -> str:
    return "udp" if kind == socket.SOCK_DGRAM else "tcp"


#: TCP keepalive on every connection pierce accepts or dials (`tune_tcp`): after this many idle seconds
#: a probe goes out, then one every `KEEPALIVE_INTERVAL_S`; `KEEPALIVE_PROBES` unanswered ones (or a
#: reset in answer) end the connection with an error. A peer that vanished without a FIN or a reset (a
#: host that lost power, a link cut, a closed socket the kernel gave up on) would otherwise hold an idle
#: or half-closed relay, and its visitor, for ever.
#: ``PIERCE_TCP_KEEPALIVE=IDLE,INTERVAL,PROBES`` (whole seconds, a count) overrides the three.
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 15
KEEPALIVE_PROBES = 4


def _keepalive_settings() -> tuple[int, int, int]:
    raw = os.environ.get("PIERCE_TCP_KEEPALIVE", "").strip()
    defaults = (KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES)
    if not raw:
        return defaults
    try:
        idle, interval, probes = (int(part) for part in raw.split(","))
    except ValueError:
        return defaults
    return (idle, interval, probes) if min(idle, interval, probes) >= 1 else defaults


_KEEPALIVE = _keepalive_settings()

# Option names differ: Linux and Windows have TCP_KEEPIDLE, macOS TCP_KEEPALIVE for the same thing.
_KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
_KEEPINTVL = getattr(socket, "TCP_KEEPINTVL", None)
_KEEPCNT = getattr(socket, "TCP_KEEPCNT", None)


def tune_tcp(sock: socket.socket) -> None:
    """Options for a connection that carries user bytes: no Nagle delay (StartWork, a visitor's first
    bytes and interactive keystrokes go at once) and keepalive (see `KEEPALIVE_IDLE_S`)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in zip((_KEEPIDLE, _KEEPINTVL, _KEEPCNT), _KEEPALIVE, strict=True):
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


_RESET = struct.pack("ii", 1, 0)


def drop(sock: socket.socket) -> None:
    """Close ``sock`` now with a reset (SO_LINGER 0): for a connection nothing was sent on and nothing
    is owed, so the kernel keeps no state for it either (no FIN_WAIT, no TIME_WAIT)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


Handler = Callable[[socket.socket, Any], Awaitable[None]]


class TcpListener:
    """Accepts on a bound socket and runs ``handler(conn, addr)`` as a tracked task per connection.

    ``close()`` stops accepting and cancels every handler still running. The listener closes a
    connection whose handler failed or was cancelled, unless ``handler_owns``: then the handler closes
    it on every path itself (it may have handed the socket to a transport, which alone may close it).
    """

    def __init__(
        self, sock: socket.socket, handler: Handler, *, name: str, handler_owns: bool = False
    ) -> None:
        self.sock: socket.socket | None = sock
        self.name = name
        self.address = format_sockaddr(sock.getsockname())
        self.port = int(sock.getsockname()[1])
        self.tasks: set[asyncio.Task[None]] = set()
        self._handler = handler
        self._handler_owns = handler_owns
        self._accept_task: asyncio.Task[None] | None = None
        self._reader_installed = False
        #: Accepts failed in a row (out of descriptors, ...).
        self._failures = 0

    @classmethod
    def open(
        cls, listen: HostPort, handler: Handler, *, name: str, handler_owns: bool = False
    ) -> TcpListener:
        sock = bind_socket(listen, socket.SOCK_STREAM)
        try:
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:  # pragma: no cover - bind succeeded, listen failing is exotic
            sock.close()
            raise LocalError(f"cannot listen on {listen}: {exc.strerror}") from exc
        listener = cls(sock, handler, name=name, handler_owns=handler_owns)
        listener.start()
        return listener

    def start(self) -> None:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        try:
            loop.add_reader(self.sock.fileno(), self._on_acceptable)
            self._reader_installed = True
        except NotImplementedError:  # pragma: no cover - Windows proactor loop
            self._accept_task = loop.create_task(self._accept_loop())

    def _on_acceptable(self) -> None:
        if self.sock is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            if self._failures:
                self._accept_resumed()
            self._spawn(conn, addr)

    async def _accept_loop(self) -> None:  # pragma: no cover - Windows proactor loop
        loop = asyncio.get_running_loop()
        while self.sock is not None:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except OSError as exc:
                self._accept_failed(exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if self._failures:
                self._accept_resumed()
            self._spawn(conn, addr)

    def _accept_failed(self, exc: OSError) -> None:
        # One line per run of failures (the retries of a pause would say the same ten times a second);
        # `_accept_resumed` says when and after how many it ended.
        self._failures += 1
        out_of_resources = exc.errno in _OUT_OF_RESOURCES
        if self._failures == 1:
            what = f"{exc.strerror or exc}"
            if exc.errno == errno.EMFILE:
                what += f" (this process may open {open_file_limit()}: raise LimitNOFILE= or ulimit -n)"
            if out_of_resources:
                what += f"; new connections wait in the backlog, accepting again every {ACCEPT_RETRY_S:g}s"
            event(
                log,
                logging.ERROR,
                "tcp.accept_error",
                f"{self.name}: accept failed: {what}",
                rule=self.name,
                error=str(exc),
            )
        if out_of_resources and self._reader_installed:
            # Out of descriptors: stop accepting for a moment instead of spinning on a readable socket.
            assert self.sock is not None
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.sock.fileno())
            loop.call_later(ACCEPT_RETRY_S, self._resume)

    def _accept_resumed(self) -> None:
        event(
            log,
            logging.WARNING,
            "tcp.accept_resumed",
            f"{self.name}: accepting again after {self._failures} failed attempts",
            rule=self.name,
            failures=self._failures,
        )
        self._failures = 0

    def _resume(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_acceptable)

    def _spawn(self, conn: socket.socket, addr: Any) -> None:
        conn.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._run(conn, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, conn: socket.socket, addr: Any) -> None:
        try:
            await self._handler(conn, addr)
        except asyncio.CancelledError:
            if not self._handler_owns:
                conn.close()
            raise
        except Exception:
            if not self._handler_owns:
                conn.close()
            log.exception("%s: connection from %s failed", self.name, format_sockaddr(addr))

    def stop_accepting(self) -> None:
        """Close the listening socket; the connections' handlers run on until `close`."""
        if self.sock is not None:
            if self._reader_installed:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self._accept_task is not None:
            self._accept_task.cancel()

    async def close(self) -> None:
        self.stop_accepting()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
