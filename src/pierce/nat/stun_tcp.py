"""STUN over TCP (RFC 8489 section 6.2.2): Binding requests on a TCP connection, for TCP reflexive addresses.

A P2P direct TCP path needs the public address a NAT gives a *TCP* connection from a fixed local port
(`pierce.p2p.tcp_direct.tcp_reflexive`); UDP mappings say nothing about it. The messages are the UDP
ones, one after another on the stream, each delimited by the length in its 20-byte header.

A TCP connection costs the server a descriptor and a task for as long as the peer keeps it open, so:

- one deadline per connection (`CONNECTION_DEADLINE`), whatever is sent, then it is closed;
- at most `MAX_REQUESTS` requests per connection, each at most `MAX_MESSAGE` bytes;
- the header is checked byte by byte as it arrives (a Binding request with the magic cookie, a length
  that fits): the connection is closed at the first byte that cannot start one;
- at most `MAX_CONNECTIONS` open at once and `MAX_PER_SOURCE` from one source (an IPv4 address or an
  IPv6 /64); a connection over either cap is reset at once, unread;
- every answer takes a token of the UDP responder's per-source and global rate limit (the same
  buckets): a source over it has its connection closed.

Only plain Binding requests are answered (XOR-MAPPED-ADDRESS and RESPONSE-ORIGIN): CHANGE-REQUEST and
RESPONSE-PORT are UDP behaviour-discovery tools and get 400 (RFC 5780 section 7 runs them on UDP only).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable

import msgspec

from pierce.addr import source_of
from pierce.errors import LocalError
from pierce.listeners import LISTEN_BACKLOG, drop
from pierce.nat import stun
from pierce.nat.stun import HEADER_SIZE, MAGIC_COOKIE, Attr, Class, Endpoint, Method, StunParseError
from pierce.ratelimit import KeyedLimiter, Verdict

log = logging.getLogger("pierce.stun")

#: Seconds a connection may stay open, from accept to close, whatever it sends.
CONNECTION_DEADLINE = 5.0
#: Requests answered on one connection; then it is closed.
MAX_REQUESTS = 4
#: Largest request (header included). A Binding request with SOFTWARE and PADDING is far below.
MAX_MESSAGE = 512
#: TCP STUN connections open at once, in total and from one source.
MAX_CONNECTIONS = 256
MAX_PER_SOURCE = 8
#: Connections accepted per wake-up before yielding to the loop.
ACCEPT_BATCH = 64

#: Attributes a TCP request may carry (CHANGE-REQUEST only with no flag set).
_KNOWN = frozenset({Attr.CHANGE_REQUEST, Attr.PADDING, Attr.USERNAME, Attr.MESSAGE_INTEGRITY})
_BINDING_REQUEST = struct.pack("!H", stun.message_type(Method.BINDING, Class.REQUEST))
_COOKIE = struct.pack("!I", MAGIC_COOKIE)


def check_header(prefix: bytes) -> int | None:
    """Check the first bytes of a request as they arrive; raise StunParseError at the first bad one.

    Returns the message length (header included) once the length field is in, else None.
    """
    for i, byte in enumerate(prefix[:HEADER_SIZE]):
        if i < 2 and byte != _BINDING_REQUEST[i]:
            raise StunParseError("not a STUN Binding request")
        if 4 <= i < 8 and byte != _COOKIE[i - 4]:
            raise StunParseError("no STUN magic cookie")
    if len(prefix) < 4:
        return None
    (length,) = struct.unpack_from("!H", prefix, 2)
    if length % 4 or HEADER_SIZE + length > MAX_MESSAGE:
        raise StunParseError(f"length field {length}: not a multiple of 4 up to {MAX_MESSAGE - HEADER_SIZE}")
    return HEADER_SIZE + int(length)


def answer_tcp(data: bytes, peer: Endpoint, local: Endpoint) -> bytes:
    """The response to one complete request that arrived on a TCP connection from ``peer`` to ``local``."""
    request = stun.decode(data)
    unknown = request.unknown_required(_KNOWN)
    if unknown:
        reply = stun.binding_error(request, 420, "Unknown Attribute", unknown=unknown)
    elif request.change_request != (False, False) or request.get(Attr.RESPONSE_PORT) is not None:
        reply = stun.binding_error(request, 400, "Bad Request: behaviour discovery is UDP only")
    else:
        reply = stun.binding_success(request, peer, origin=local)
    return stun.encode(reply, fingerprint=False)


class StunTcpStats(msgspec.Struct):
    """Counters of the TCP listener since start."""

    tcp_connections: int = 0
    tcp_answered: int = 0
    #: Connections reset unread: over `MAX_CONNECTIONS` or `MAX_PER_SOURCE`.
    tcp_refused: int = 0
    tcp_malformed: int = 0
    tcp_timed_out: int = 0
    tcp_rate_limited: int = 0


class StunTcpListener:
    """Answers STUN on TCP connections to a bound socket; see the module docstring for the limits.

    ``close()`` stops accepting and cancels every connection task (each closes its own socket).
    """

    def __init__(
        self, sock: socket.socket, limiter: KeyedLimiter, clock: Callable[[], float], stats: StunTcpStats
    ) -> None:
        self.sock: socket.socket | None = sock
        self.address = Endpoint.of(sock.getsockname())
        self.stats = stats
        self._limiter = limiter
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_source: Counter[str] = Counter()
        self._loop = asyncio.get_running_loop()

    @classmethod
    def open(
        cls,
        address: tuple[str, int],
        family: socket.AddressFamily,
        limiter: KeyedLimiter,
        clock: Callable[[], float],
        stats: StunTcpStats,
    ) -> StunTcpListener:
        """Bind, listen and start accepting; LocalError naming the address when it cannot."""
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = Endpoint.of(address) if address[0] else address
            raise LocalError(f"cannot listen for STUN on TCP {where}: {exc.strerror or exc}") from exc
        listener = cls(sock, limiter, clock, stats)
        listener._loop.add_reader(sock.fileno(), listener._on_acceptable)
        return listener

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for task in list(self._tasks):
            task.cancel()

    def _on_acceptable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self.sock is None:
                return
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, aborted connection: the next wake-up retries
                return
            self.stats.tcp_connections += 1
            peer = Endpoint.of(addr)
            source = source_of(str(peer.ip))
            if len(self._tasks) >= MAX_CONNECTIONS or self._per_source[source] >= MAX_PER_SOURCE:
                self.stats.tcp_refused += 1
                drop(conn)
                continue
            conn.setblocking(False)
            self._per_source[source] += 1
            task = self._loop.create_task(self._serve(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, source))

    def _done(self, source: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._per_source[source] -= 1
        if self._per_source[source] <= 0:
            del self._per_source[source]

    async def _serve(self, conn: socket.socket, peer: Endpoint) -> None:
        try:
            local = Endpoint.of(conn.getsockname())
            async with asyncio.timeout(CONNECTION_DEADLINE):
                for _ in range(MAX_REQUESTS):
                    request = await self._read_request(conn)
                    if request is None:
                        return
                    if self._limiter.check(source_of(str(peer.ip)), self._clock()) is not Verdict.ALLOWED:
                        self.stats.tcp_rate_limited += 1
                        return
                    await self._loop.sock_sendall(conn, answer_tcp(request, peer, local))
                    self.stats.tcp_answered += 1
        except TimeoutError:
            self.stats.tcp_timed_out += 1
        except StunParseError:
            self.stats.tcp_malformed += 1
        except OSError:
            pass  # reset or gone: nothing to answer
        finally:
            conn.close()

    async def _read_request(self, conn: socket.socket) -> bytes | None:
        """One request, or None at a clean EOF before its first byte."""
        buf = bytearray()
        size: int | None = None
        while len(buf) < HEADER_SIZE:
            chunk = await self._loop.sock_recv(conn, HEADER_SIZE - len(buf))
            if not chunk:
                if buf:
                    raise StunParseError("connection closed inside a request")
                return None
            buf += chunk
            size = check_header(bytes(buf))
        assert size is not None
        while len(buf) < size:
            chunk = await self._loop.sock_recv(conn, size - len(buf))
            if not chunk:
                raise StunParseError("connection closed inside a request")
            buf += chunk
        return bytes(buf)
