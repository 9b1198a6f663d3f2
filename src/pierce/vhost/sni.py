"""TLS ClientHello: the server name (SNI) and ALPN a client asks for, read before any TLS is done.

:func:`parse_client_hello` is pure: it takes the first bytes a client sent and says "need more",
gives the hello, or raises. :func:`peek_client_hello` reads those bytes from a socket with
``MSG_PEEK`` and consumes nothing, so the caller can afterwards splice the socket to a backend as it
is, or start TLS on it (``loop.connect_accepted_socket(..., ssl=...)``).

Waiting without polling: nothing is read out of the socket, so it stays readable as long as any byte
is queued. Before each wait the socket's ``SO_RCVLOWAT`` is set to the number of bytes the parser
needs next (the end of the next record header or record), which keeps it unreadable until they are
all there, or the peer closes. The option is restored before returning.

A hello may span several TLS records (RFC 8446 section 5.1), and post-quantum key shares make hellos
of 1.5–2 KB common, so the limit on what is peeked (16 KiB by default) is well above that.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket

import msgspec

from pierce.errors import RemoteError
from pierce.relay import wait_fd

#: Bytes peeked at most by default; a larger hello is refused with HelloTooLarge.
DEFAULT_PEEK_LIMIT = 16 * 1024

RECORD_HEADER_SIZE = 5
#: Content type of TLS handshake records (RFC 8446 section 5.1).
HANDSHAKE_RECORD = 0x16
#: Largest plaintext record payload (RFC 8446 section 5.1).
MAX_RECORD_PAYLOAD = 2**14
HANDSHAKE_HEADER_SIZE = 4
CLIENT_HELLO = 1
#: Smallest ClientHello body: version, random, three empty-or-minimal vectors.
MIN_HELLO_BODY = 2 + 32 + 1 + 2 + 2 + 1 + 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
NAME_TYPE_HOST_NAME = 0

# Wake-ups with no new bytes and no hang-up are rare (memory pressure); back off instead of spinning.
_IDLE_BACKOFF_START = 0.001
_IDLE_BACKOFF_MAX = 0.05
_PEEK_FLAGS = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


class SniError(RemoteError):
    """The first bytes of a connection are not a usable TLS ClientHello."""


class NotTls(SniError):
    """The connection does not start with a TLS handshake record (plain HTTP, SSH, noise ...)."""


class MalformedHello(SniError):
    """The bytes start like TLS but the ClientHello in them is invalid."""


class HelloTooLarge(SniError):
    """The ClientHello needs more bytes than the peek limit."""


class HelloIncomplete(SniError):
    """The peer closed or reset the connection before its ClientHello was complete."""


class HelloTimeout(SniError):
    """The ClientHello was not complete within the time allowed."""


class ClientHello(msgspec.Struct, frozen=True):
    """What routing needs from a ClientHello."""

    #: The host_name of the server_name extension, as sent (ASCII); None without SNI.
    server_name: str | None
    #: ALPN protocol names in the client's order (decoded as Latin-1, so any byte survives).
    alpn: tuple[str, ...]
    #: Bytes of the TLS records that carry the hello, from the start of the connection.
    length: int


def parse_client_hello(data: bytes | bytearray | memoryview) -> ClientHello | None:
    """Parse the ClientHello at the start of ``data``; None when more bytes are needed.

    Raises NotTls when ``data`` does not start a TLS handshake, MalformedHello when it does but
    the hello is invalid. Bytes after the records that carry the hello are ignored.
    """
    body, end = collect_hello(bytes(data))
    if body is None:
        return None
    return _parse_body(body, end)


def collect_hello(data: bytes, limit: int | None = None) -> tuple[bytes | None, int]:
    """Join the handshake records at the start of ``data``.

    Returns ``(ClientHello body, end of its last record)`` when complete, otherwise ``(None, n)``
    where ``n`` is the total length ``data`` must reach before anything more can be decided.
    With ``limit``, raises HelloTooLarge as soon as the hello is known to need more bytes than that.
    """
    fragments = bytearray()
    pos = 0
    while True:
        header = data[pos : pos + RECORD_HEADER_SIZE]
        _check_record_header(header, first=pos == 0)
        if len(header) < RECORD_HEADER_SIZE:
            return None, pos + RECORD_HEADER_SIZE
        size = int.from_bytes(header[3:5], "big")
        if size == 0 or size > MAX_RECORD_PAYLOAD:
            raise MalformedHello(f"handshake record of {size} bytes (expected 1 to {MAX_RECORD_PAYLOAD})")
        end = pos + RECORD_HEADER_SIZE + size
        _check_limit(end, limit)
        if len(data) < end:
            return None, end
        fragments += data[pos + RECORD_HEADER_SIZE : end]
        pos = end
        if fragments[0] != CLIENT_HELLO:
            raise MalformedHello(f"first handshake message is of type {fragments[0]}, not a ClientHello")
        if len(fragments) < HANDSHAKE_HEADER_SIZE:
            continue
        length = int.from_bytes(fragments[1:4], "big")
        if length < MIN_HELLO_BODY:
            raise MalformedHello(f"ClientHello of {length} bytes is shorter than the smallest possible")
        missing = HANDSHAKE_HEADER_SIZE + length - len(fragments)
        if missing <= 0:
            return bytes(fragments[HANDSHAKE_HEADER_SIZE : HANDSHAKE_HEADER_SIZE + length]), pos
        _check_limit(pos + RECORD_HEADER_SIZE + missing, limit)


def _check_limit(needed: int, limit: int | None) -> None:
    if limit is not None and needed > limit:
        raise HelloTooLarge(f"ClientHello needs at least {needed} bytes, more than the limit of {limit}")


def _check_record_header(header: bytes, *, first: bool) -> None:
    """Refuse a record header as soon as its first bytes show it is not a TLS handshake record."""
    error = NotTls if first else MalformedHello
    if header and header[0] != HANDSHAKE_RECORD:
        where = "connection" if first else "record after the first"
        raise error(f"{where} starts with byte 0x{header[0]:02x}, not a TLS handshake record (0x16)")
    if len(header) >= 2 and header[1] != 3:
        raise error(f"record version {header[1]}.x is not TLS (3.x)")


class _Reader:
    """Bounds-checked reads of TLS vectors; running past the end is MalformedHello."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MalformedHello(f"ClientHello ends inside {what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, length_size: int, what: str) -> bytes:
        return self.take(self.number(length_size, what), what)


def _parse_body(body: bytes, end: int) -> ClientHello:
    hello = _Reader(body)
    if hello.number(2, "legacy_version") >> 8 != 3:
        raise MalformedHello("ClientHello version is not TLS (3.x)")
    hello.take(32, "random")
    if len(hello.vector(1, "legacy_session_id")) > 32:
        raise MalformedHello("session id longer than 32 bytes")
    suites = hello.vector(2, "cipher_suites")
    if not suites or len(suites) % 2:
        raise MalformedHello(f"cipher_suites of {len(suites)} bytes (expected a non-empty even number)")
    if not hello.vector(1, "legacy_compression_methods"):
        raise MalformedHello("no compression methods")
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if hello.done():
        return ClientHello(server_name, alpn, end)
    extensions = _Reader(hello.vector(2, "extensions"))
    if not hello.done():
        raise MalformedHello("bytes after the extensions")
    seen: set[int] = set()
    while not extensions.done():
        kind = extensions.number(2, "extension type")
        data = extensions.vector(2, f"extension {kind}")
        if kind in seen:
            raise MalformedHello(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            server_name = _parse_server_name(data)
        elif kind == EXT_ALPN:
            alpn = _parse_alpn(data)
    return ClientHello(server_name, alpn, end)


def _parse_server_name(data: bytes) -> str | None:
    """RFC 6066 section 3: a non-empty list of (name_type, name); at most one host_name."""
    outer = _Reader(data)
    names = _Reader(outer.vector(2, "server_name list"))
    if not outer.done() or names.done():
        raise MalformedHello("server_name extension is not one non-empty list")
    host: str | None = None
    while not names.done():
        kind = names.number(1, "server_name type")
        name = names.vector(2, "server_name")
        if kind != NAME_TYPE_HOST_NAME:
            continue
        if host is not None:
            raise MalformedHello("two host names in server_name")
        if not name or not name.isascii() or not name.decode("ascii").isprintable():
            raise MalformedHello(f"server_name {name!r} is not a printable ASCII host name")
        host = name.decode("ascii")
    return host


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    """RFC 7301 section 3.1: a non-empty list of non-empty protocol names."""
    outer = _Reader(data)
    names = _Reader(outer.vector(2, "ALPN list"))
    if not outer.done() or names.done():
        raise MalformedHello("ALPN extension is not one non-empty list")
    protocols = []
    while not names.done():
        name = names.vector(1, "ALPN protocol name")
        if not name:
            raise MalformedHello("empty ALPN protocol name")
        protocols.append(name.decode("latin-1"))
    return tuple(protocols)


async def peek_client_hello(
    sock: socket.socket, timeout: float, limit: int = DEFAULT_PEEK_LIMIT
) -> ClientHello:
    """Wait for the ClientHello on a connected TCP socket and parse it, consuming nothing.

    Raises NotTls, MalformedHello, HelloTooLarge (more than ``limit`` bytes), HelloIncomplete (the
    peer closed first) or HelloTimeout (not complete within ``timeout`` seconds); all are SniError.
    Works on blocking and non-blocking sockets alike; the socket must not be registered with the
    event loop by anyone else while this runs. Cancellation is safe: the socket is left as it was.
    """
    loop = asyncio.get_running_loop()
    buffer = bytearray(limit)
    saved_lowat = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)
    seen = 0
    backoff = _IDLE_BACKOFF_START
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    got = sock.recv_into(buffer, limit, _PEEK_FLAGS)
                except (BlockingIOError, InterruptedError):
                    await wait_fd(loop, sock.fileno(), writable=False)
                    continue
                except OSError as exc:
                    raise HelloIncomplete(
                        f"connection failed before the ClientHello was complete: {exc}"
                    ) from exc
                if got == 0:
                    raise HelloIncomplete("connection closed before sending anything")
                body, needed = collect_hello(bytes(buffer[:got]), limit)
                if body is not None:
                    return _parse_body(body, needed)
                if got == seen:
                    if _peer_hung_up(sock):
                        raise HelloIncomplete(
                            f"connection closed after {got} bytes of an incomplete ClientHello"
                        )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _IDLE_BACKOFF_MAX)
                    continue
                seen = got
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, needed)
                await wait_fd(loop, sock.fileno(), writable=False)
    except TimeoutError:
        raise HelloTimeout(f"no complete ClientHello within {timeout:g} s ({seen} bytes arrived)") from None
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, saved_lowat)


def _peer_hung_up(sock: socket.socket) -> bool:
    """True when the peer shut down its side or the connection failed.

    Without POLLRDHUP (outside Linux) this cannot be told apart from a spurious wake-up, and a wake-up
    without new bytes is taken as a hang-up.
    """
    rdhup = getattr(select, "POLLRDHUP", 0)
    if not rdhup or not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | rdhup)
    return any(events & (rdhup | select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))
