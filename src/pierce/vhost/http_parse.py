"""HTTP/1.1 messages, sans-I/O: bytes in, heads and body pieces out; no sockets, no event loop.

The HTTP engine (:mod:`pierce.vhost.http`) keeps one :class:`MessageParser` per direction of each
connection: requests from a browser, responses from a backend. The caller feeds whatever it read
(:meth:`MessageParser.feed`) and takes the events that are complete from :attr:`MessageParser.events`:

- a :class:`Head` (request line or status line and header fields, names and values as sent),
- ``bytes``: a piece of the message's body, chunked framing already removed,
- :data:`END_OF_MESSAGE` when the body is over.

Messages follow one another on a connection (pipelined requests, kept-alive responses, interim ``1xx``
responses before the final one); a response whose body ends with the connection gets no end event (the
caller knows by the head and ends it at EOF). Parsing is done by ``httptools`` (llhttp); its callbacks
only queue events, nothing is parsed twice.

Upgrades: a head with ``upgrade`` set (an upgrade request, a ``101`` answer) is followed by its end
event at once, and the bytes after it in the same feed are left in :attr:`MessageParser.rest`. They
belong to the new protocol; bytes fed after that are parsed as HTTP again (a refused upgrade).

Limits: each head is held to a byte size and a field count. The callbacks check both as each field
arrives (the size is the target's length plus, per field, its name, value and 4 bytes for ``": "`` and
CRLF); so that an endless line cannot grow unseen, the bytes of every feed that leaves the head still
incomplete are counted too (from the feed after the one the head began in). Where exactly an oversized
head is refused thus depends on how its bytes came in; a head with fields well over a limit is refused
however it is split, but a request line without fields that arrives within one feed is not measured.
Trailer fields are not passed on and not counted.

Errors: :class:`Malformed` (not HTTP/1.1 as llhttp reads it) and its subclass :class:`HeadTooLarge`.

Also here: the helpers the engine applies to parsed messages (:func:`take_body` frames the queued body
again for the other side, :func:`declares_body`, :func:`split_absolute_form`) and :func:`field_line`,
which encodes a configured header field. Request paths are :mod:`pierce.vhost.paths`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections import deque
from typing import Final

import httptools

from pierce.errors import RemoteError

__all__ = [
    "END_OF_MESSAGE",
    "EndOfMessage",
    "Event",
    "Head",
    "HeadTooLarge",
    "Malformed",
    "MessageParser",
    "basic_auth_matches",
    "declares_body",
    "field_line",
    "split_absolute_form",
    "take_body",
]


class Malformed(RemoteError):
    """The peer sent bytes that are not HTTP/1.1."""


class HeadTooLarge(Malformed):
    """A head is longer, or has more fields, than its limits."""


class _BodySkipped(Exception):
    """Raised inside the response parser to end a response to HEAD at its head."""


class Head:
    """A request or response head as parsed; names and values as sent.

    Requests have ``method`` and ``target`` (``status`` 0), responses ``status`` and ``reason``.
    ``version`` is as llhttp gives it (``"1.1"``, ``"1.0"``); ``keep_alive`` and ``upgrade`` are its verdicts
    (``Connection``, version, ``Upgrade`` on a request or a 101 answer). ``host`` is the last ``Host``
    field and ``host_count`` how many there were; ``authorization`` the last ``Authorization`` field.
    """

    __slots__ = (
        "authorization",
        "headers",
        "host",
        "host_count",
        "keep_alive",
        "method",
        "reason",
        "status",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.status = 0
        self.reason = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.upgrade = False
        self.host: bytes | None = None
        self.host_count = 0
        self.authorization: bytes | None = None

    def __repr__(self) -> str:
        first = f"{self.status} {self.reason!r}" if self.status else f"{self.method!r} {self.target!r}"
        return f"<Head {first} HTTP/{self.version} {len(self.headers)} fields>"


class EndOfMessage:
    """The end of a message's body (one instance: :data:`END_OF_MESSAGE`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_MESSAGE"


END_OF_MESSAGE: Final = EndOfMessage()

#: What :attr:`MessageParser.events` holds.
Event = Head | bytes | EndOfMessage


class MessageParser:
    """One direction of a connection: requests (``request=True``) or responses, as events.

    ``max_size`` and ``max_count`` bound every head (see the module's docstring). The httptools
    callbacks (``on_*``) are called by llhttp only; callers use :meth:`feed` and the attributes.
    """

    __slots__ = (
        "_begun",
        "_fed",
        "_head",
        "_in_head",
        "_max_count",
        "_max_size",
        "_parser",
        "_request",
        "_size",
        "clean",
        "events",
        "rest",
        "skip_body",
    )

    def __init__(self, *, request: bool, max_size: int, max_count: int) -> None:
        self._request = request
        self._max_size = max_size
        self._max_count = max_count
        #: Complete events in order; the caller takes them (``popleft``) as it acts on them.
        self.events: deque[Event] = deque()
        self._parser = self._new_parser()
        self._head = Head()
        self._in_head = False
        self._begun = False
        self._size = 0
        self._fed = 0
        #: Bytes after an upgrade head (already the other protocol), not parsed. Set by the feed in
        #: which the head ended; the caller takes it (and sets it back to b"").
        self.rest = b""
        #: Set for a response to HEAD: the response ends at its head (the caller sets and clears it).
        self.skip_body = False
        #: After a response to HEAD: False unless the feed that ended its head ended in CRLF CRLF (so
        #: bytes after the head, or a last piece shorter than 4 bytes, make it False); the caller then
        #: does not reuse the connection.
        self.clean = True

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        if self._request:
            return httptools.HttpRequestParser(self)
        return httptools.HttpResponseParser(self)

    @property
    def in_head(self) -> bool:
        """True while a head has begun and is not complete."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        """Parse ``data`` into :attr:`events`; raises :class:`Malformed` or :class:`HeadTooLarge`."""
        self._begun = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.rest = data[int(exc.args[0]) :]
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _BodySkipped):
                self._parser = self._new_parser()
                self.clean = data.endswith(b"\r\n\r\n")
                return
            if isinstance(cause, HeadTooLarge):
                raise cause from None
            raise Malformed(str(exc)) from exc
        except httptools.HttpParserError as exc:
            raise Malformed(str(exc) or type(exc).__name__) from exc
        if self._in_head and not self._begun:
            self._fed += len(data)
            if self._fed > self._max_size:
                raise HeadTooLarge(f"head larger than {self._max_size} bytes")

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._head = Head()
        self._in_head = self._begun = True
        self._size = self._fed = 0

    def on_url(self, url: bytes) -> None:
        self._head.target += url
        self._size += len(url)

    def on_status(self, reason: bytes) -> None:
        self._head.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailer fields are not passed on
        head = self._head
        head.headers.append((name, value))
        self._size += len(name) + len(value) + 4
        if self._size > self._max_size or len(head.headers) > self._max_count:
            raise HeadTooLarge(f"head over {self._max_size} bytes or {self._max_count} fields")
        n = len(name)
        if n == 4 and name.lower() == b"host":
            head.host = value
            head.host_count += 1
        elif n == 13 and name.lower() == b"authorization":
            head.authorization = value

    def on_headers_complete(self) -> None:
        parser = self._parser
        head = self._head
        self._in_head = False
        head.version = parser.get_http_version()
        head.keep_alive = parser.should_keep_alive()
        head.upgrade = parser.should_upgrade()
        if isinstance(parser, httptools.HttpRequestParser):
            head.method = parser.get_method()
        else:
            head.status = parser.get_status_code()
        self.events.append(head)
        if self.skip_body and head.status >= 200:
            self.events.append(END_OF_MESSAGE)
            raise _BodySkipped

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(END_OF_MESSAGE)


def take_body(events: deque[Event], pieces: list[bytes], chunked: bool) -> bool:
    """Move the queued body pieces of the current message to ``pieces``; True once its end was taken.

    Stops at the next head. ``chunked``: each piece is framed as a chunk and the end as the last chunk.
    """
    while events:
        item = events[0]
        if isinstance(item, bytes):
            events.popleft()
            if chunked:
                pieces += (b"%x\r\n" % len(item), item, b"\r\n")
            else:
                pieces.append(item)
        elif isinstance(item, EndOfMessage):
            events.popleft()
            if chunked:
                pieces.append(b"0\r\n\r\n")
            return True
        else:
            return False
    return False


def declares_body(head: Head) -> bool:
    """True when a head has ``Transfer-Encoding`` or a ``Content-Length`` other than 0."""
    for name, value in head.headers:
        key = name.lower()
        if key == b"transfer-encoding" or (key == b"content-length" and value.strip() != b"0"):
            return True
    return False


def split_absolute_form(target: bytes) -> tuple[bytes, bytes] | None:
    """``(host, origin-form target)`` of an absolute-form request target such as ``http://a:81/p?q``.

    The host keeps a port other than 0 (``a:81``); the target is the path (``/`` when there is none)
    and the query, without the fragment. None when ``target`` is not an http or https URL llhttp accepts.
    """
    if not target.startswith((b"http://", b"https://")):
        return None
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return None
    host = url.host + (b":%d" % url.port if url.port else b"")
    return host, (url.path or b"/") + (b"?" + url.query if url.query else b"")


def basic_auth_matches(value: bytes | None, user: bytes, password: bytes) -> bool:
    """True when ``value`` (an ``Authorization`` or ``Proxy-Authorization`` field) is ``Basic`` with
    exactly ``user`` and ``password``; compared in constant time."""
    if value is None or value[:6].lower() != b"basic ":
        return False
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    got_user, sep, got_password = decoded.partition(b":")
    ok_user = hmac.compare_digest(got_user, user)
    ok_password = hmac.compare_digest(got_password, password)
    return bool(sep) and ok_user and ok_password


def field_line(name: str, value: str) -> bytes:
    """``name: value`` and CRLF; b"" for a field that would break the head.

    That is a name with CR, LF, NUL, colon or space, or a value with CR, LF or NUL.
    """
    if any(c in name for c in "\r\n\0: ") or any(c in value for c in "\r\n\0"):
        return b""
    return f"{name}: {value}\r\n".encode()
