"""Recording HTTP exchanges from the bytes of a relayed connection, sans-I/O.

Theory of operation
-------------------
A :class:`ConnectionRecorder` watches one tunnelled connection of an http proxy: the relay hands it
every piece of bytes just before writing it on (:meth:`ConnectionRecorder.request` for visitor -> service,
:meth:`ConnectionRecorder.response` for service -> visitor), and :meth:`ConnectionRecorder.close` when
the connection ends. It never holds the relay up and never changes a byte, and only bounded copies are
kept.

Each request head starts an :class:`Exchange`, put at once in the proxy's :class:`RequestLog` (a ring of
the last N); responses are matched to requests in order (kept-alive and pipelined requests alike).
Interim ``1xx`` answers are skipped; a ``101`` is recorded and ends parsing for the connection (the bytes
after it are another protocol). While an upgrade request waits for its answer the visitor's bytes are
held (bounded) and parsed as HTTP again only if the upgrade was refused.

Two ways to read a message. The fast path takes most of them: at a message boundary, when the piece of
bytes holds the whole head and the head is plain (`pierce.inspect.heads` says which), the head is checked
and its framing read by two compiled regexes, kept raw (its fields are split only when shown), and its
body is counted by its ``Content-Length`` and previewed by slicing; a piece that is one such message and
nothing else (a kept-alive connection's usual request, or answer with its whole body) takes a shorter way
still, straight from the relay's call, and a response piece is kept as it came. Any other message (a head
split over pieces, chunked framing, an upgrade, a close-delimited body, interim answers, anything unusual
or malformed) goes from its first byte to llhttp (one :class:`pierce.vhost.http_parse.MessageParser` per
direction), which reads it as it reads every message with the fast path off; the direction returns to the
fast path once llhttp stands between two messages of a kept-alive connection. Both ways record the same
exchanges (tests/unit/test_inspect_record.py feeds both the same streams and compares).

A response to ``HEAD`` has no body whatever its head says. The fast path knows the request; llhttp
must know before it reads the head: such a head is collected (bounded) and fed on its own with
``skip_body``. When a ``HEAD`` is pipelined behind a response llhttp reads, that response is fed a byte at
a time so that its end is found exactly; a small budget per connection bounds this (past it the
connection is no longer recorded). ``204`` and ``304`` have no body either, on both ways.

Anything the recorder cannot follow (bytes that are not HTTP, limits passed) stops the recording of
that connection only: the exchanges so far stay in the log, marked, and the relay goes on untouched.

Bounds: per head at most :data:`MAX_STORED_HEAD` bytes and :data:`MAX_STORED_FIELDS` fields are kept
(more is marked ``headers_truncated``; the fast path takes only heads within both); per body the first
``body_limit`` bytes (chunked framing removed) with the total size; per connection at most
:data:`MAX_PENDING` requests awaiting an answer.
"""

from __future__ import annotations

import base64
import enum
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

from pierce.inspect import heads
from pierce.vhost.http_parse import EndOfMessage, Head, MessageParser

#: Bytes of header fields kept per head (name, value and 4 for ": " and CRLF each), and fields.
MAX_STORED_HEAD = 16 * 1024
MAX_STORED_FIELDS = 100
#: Requests of one connection that may await their answers (pipelining); more stops the recording.
MAX_PENDING = 64
#: Bytes held while a response head to HEAD is collected, or while an upgrade awaits its answer.
MAX_HELD = 64 * 1024
#: Bytes of one connection that may be fed a byte at a time (a HEAD pipelined behind a response).
BYTEWISE_BUDGET = 64 * 1024
#: Limits of the heads parsed (as the server's HTTP engine holds responses to).
PARSE_MAX_HEAD = 256 * 1024
PARSE_MAX_FIELDS = 1000


class State(enum.Enum):
    """Where an exchange is."""

    #: The request is on its way or awaits its answer.
    PENDING = "pending"
    #: The response ended (by its length, its last chunk or the connection's end when it has neither).
    COMPLETE = "complete"
    #: The connection ended, or stopped being recorded, before the response did.
    INCOMPLETE = "incomplete"
    #: Answered ``101 Switching Protocols``: what follows is not HTTP and is not recorded.
    UPGRADED = "upgraded"


class Body:
    """The first ``limit`` bytes of a body and its whole size."""

    __slots__ = ("complete", "data", "limit", "size")

    def __init__(self, limit: int, complete: bool = False, data: bytes = b"") -> None:
        self.limit = limit
        #: The bytes kept (the fast path stores a whole body's preview as it is, ``add`` makes a
        #: bytearray of it when more comes).
        self.data: bytes | bytearray = data
        self.size = len(data)
        #: The body's end was seen.
        self.complete = complete

    def add(self, piece: bytes | memoryview) -> None:
        self.size += len(piece)
        room = self.limit - len(self.data)
        if room > 0:
            if not isinstance(self.data, bytearray):
                self.data = bytearray(self.data)
            self.data += piece[:room]

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)

    @property
    def whole(self) -> bool:
        """The body ended and every byte of it is kept."""
        return self.complete and not self.truncated

    def to_json(self) -> dict[str, Any]:
        data = bytes(self.data)
        text = _as_text(data, self.truncated)
        return {
            "size": self.size,
            "captured": len(data),
            "truncated": self.truncated,
            "complete": self.complete,
            "binary": text is None,
            "encoding": "base64" if text is None else "text",
            "data": base64.b64encode(data).decode() if text is None else text,
        }


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _as_text(data: bytes, truncated: bool) -> str | None:
    """``data`` as text when it is UTF-8 without control characters but tab, CR and LF; else None.

    A preview cut inside a multi-byte character still counts as text (the partial character is left out).
    """
    for cut in range(4 if truncated else 1):
        try:
            text = data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if _CONTROL.search(text):
            return None
        return text
    return None


class Message:
    """One side of an exchange: its header fields (bounded) and a preview of its body.

    ``fields`` is the list llhttp made for this head alone, or the raw head the fast path read (split
    when shown); either is kept as it is, within the bounds (see :func:`_bounded_message`).
    """

    __slots__ = ("_fields", "body", "headers_truncated")

    def __init__(self, fields: list[tuple[bytes, bytes]] | bytes, body: Body) -> None:
        self._fields = fields
        self.headers_truncated = False
        self.body = body

    def fields(self) -> list[tuple[bytes, bytes]]:
        """The header fields kept, in order, as sent."""
        fields = self._fields
        return heads.fields(fields) if isinstance(fields, bytes) else fields

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The header fields kept, in order, as text (ISO 8859-1, so every byte maps to a character)."""
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self.fields()]

    def to_json(self) -> dict[str, Any]:
        return {
            "headers": [list(pair) for pair in self.headers],
            "headers_truncated": self.headers_truncated,
            "body": self.body.to_json(),
        }


def _bounded_message(head: Head, body_limit: int) -> Message:
    """The message of a head llhttp read, its fields cut to the bounds when they are over them."""
    fields = head.headers
    size = sum(map(len, chain.from_iterable(fields))) + 4 * len(fields)
    if len(fields) <= MAX_STORED_FIELDS and size <= MAX_STORED_HEAD:
        return Message(fields, Body(body_limit))
    kept: list[tuple[bytes, bytes]] = []
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + 4
        if size > MAX_STORED_HEAD or len(kept) >= MAX_STORED_FIELDS:
            break
        kept.append((name, value))
    message = Message(kept, Body(body_limit))
    message.headers_truncated = True
    return message


#: What a recorder gives each of its exchanges: the visitor's address, the context its owner attached,
#: the id of the exchange it replays, and the body preview's limit.
Origin = tuple[str, object, int | None, int]


class Exchange:
    """One request and its response as recorded; mutable while its connection is recorded.

    Built to be cheap while nobody looks: what the fast path read stays raw until it is shown. The
    request is a `Message`, or the raw head of a request without a body; the response None, a
    `Message`, or ``(raw head and body preview, head size, body size)`` of a whole response. `request`
    and `response` make their messages when first asked for; method, target, host and reason are read
    from the raw heads then too.
    """

    __slots__ = (
        "_ended_mono",
        "_line",
        "_origin",
        "_reason",
        "_request",
        "_response",
        "_started_mono",
        "id",
        "is_head",
        "note",
        "state",
        "status",
        "time",
        "upgrade",
    )

    def __init__(
        self,
        request: Message | bytes,
        line: tuple[bytes, bytes, bytes, str] | None,
        mono: float,
        wall: float,
        origin: Origin,
        is_head: bool,
    ) -> None:
        self.id = 0  # given by the log
        self.time = wall
        self._started_mono = mono
        self._ended_mono: float | None = None
        self._origin = origin
        self._request = request
        #: Method, target, host and version as llhttp read them; None: from the raw head.
        self._line = line
        self._response: Message | tuple[bytes, int, int] | None = None
        #: The reason phrase llhttp read; None: from the raw head.
        self._reason: bytes | None = None
        self.status: int | None = None
        self.state = State.PENDING
        self.note = ""
        self.is_head = is_head
        self.upgrade = False

    @property
    def request(self) -> Message:
        request = self._request
        if isinstance(request, bytes):
            request = self._request = Message(request, Body(self._origin[3], True))
        return request

    @property
    def response(self) -> Message | None:
        response = self._response
        if isinstance(response, tuple):
            raw, head_size, size = response
            body = Body(self._origin[3], True, raw[head_size : head_size + self._origin[3]])
            body.size = size
            response = self._response = Message(raw[:head_size], body)
        return response

    def _request_line(self) -> tuple[bytes, bytes, bytes, str]:
        line = self._line
        if line is None:
            raw = self.request._fields
            assert isinstance(raw, bytes)
            method, target = heads.request_line(raw)
            hosts = [value for name, value in heads.fields(raw) if name.lower() == b"host"]
            line = self._line = (method, target, hosts[-1] if hosts else b"", "1.1")
        return line

    @property
    def remote(self) -> str:
        return self._origin[0]

    @property
    def context(self) -> object:
        """What the recorder's owner attached (the work connection's start, for a replay)."""
        return self._origin[1]

    @property
    def replay_of(self) -> int | None:
        return self._origin[2]

    @property
    def method(self) -> str:
        return self._request_line()[0].decode("latin-1")

    @property
    def target(self) -> str:
        return self._request_line()[1].decode("latin-1")

    @property
    def host(self) -> str:
        """The last ``Host`` field of the request."""
        return self._request_line()[2].decode("latin-1")

    @property
    def version(self) -> str:
        return self._request_line()[3]

    @property
    def reason(self) -> str:
        reason = self._reason
        if reason is None:
            raw = self.response._fields if self.response is not None else b""
            reason = heads.reason(raw) if isinstance(raw, bytes) and raw else b""
        return reason.decode("latin-1")

    @property
    def duration_ms(self) -> float | None:
        """From the request's head to the response's end (or to where recording ended)."""
        if self._ended_mono is None:
            return None
        return round((self._ended_mono - self._started_mono) * 1000, 3)

    def finish(self, state: State, mono: float, note: str = "") -> None:
        self.state = state
        self._ended_mono = mono
        if note and not self.note:
            self.note = note

    def replay_refusal(self) -> str:
        """Why this request cannot be sent again ("" when it can)."""
        if self.upgrade:
            return "an upgrade request (websocket) is not replayed"
        if self.request.headers_truncated:
            return "its header fields were not all recorded"
        if not self.request.body.complete:
            return "its body was not seen to the end"
        if self.request.body.truncated:
            return (
                f"its body ({self.request.body.size} bytes) is larger than the recorded preview "
                f"({self.request.body.limit} bytes)"
            )
        return ""

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "remote": self.remote,
            "method": self.method,
            "path": self.target,
            "host": self.host,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "state": self.state.value,
            "replay_of": self.replay_of,
            "replayable": not self.replay_refusal(),
            "request_size": self.request.body.size,
            "response_size": self.response.body.size if self.response is not None else None,
            "note": self.note,
        }

    def to_json(self) -> dict[str, Any]:
        doc = self.summary()
        doc.update(
            version=self.version,
            reason=self.reason,
            replay_refusal=self.replay_refusal(),
            request=self.request.to_json(),
            response=self.response.to_json() if self.response is not None else None,
        )
        return doc


class RequestLog:
    """The last ``size`` exchanges of one proxy, oldest first; ids count up from 1."""

    def __init__(self, size: int) -> None:
        self._entries: deque[Exchange] = deque(maxlen=size)
        self._next_id = 1

    @property
    def size(self) -> int:
        assert self._entries.maxlen is not None
        return self._entries.maxlen

    def resize(self, size: int) -> None:
        if size != self.size:
            self._entries = deque(self._entries, maxlen=size)

    def add(self, exchange: Exchange) -> None:
        exchange.id = self._next_id
        self._next_id += 1
        self._entries.append(exchange)

    def get(self, exchange_id: int) -> Exchange | None:
        for exchange in self._entries:
            if exchange.id == exchange_id:
                return exchange
        return None

    def __iter__(self) -> Iterator[Exchange]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


_REQUEST_HEAD = heads.REQUEST_HEAD
_RESPONSE_HEAD = heads.RESPONSE_HEAD
_MAX_FAST_HEAD = heads.MAX_FAST_HEAD
# A head the fast path takes is kept whole (see heads.MAX_FAST_FIELDS).
assert (
    _MAX_FAST_HEAD + heads.MAX_FAST_FIELDS <= MAX_STORED_HEAD and heads.MAX_FAST_FIELDS <= MAX_STORED_FIELDS
)


class _StopRecording(Exception):
    """This connection can no longer be followed; the reason is the message."""


class ConnectionRecorder:
    """Records the exchanges of one connection into ``log``; see the module docstring.

    ``remote`` is the visitor's address; ``context`` is attached to each exchange; ``replay_of`` marks
    the exchanges as a replay of that id. ``mono`` and ``wall`` are the clocks (tests pass their own);
    an exchange's wall-clock time is its monotonic start plus their difference when the recorder began.
    ``fast_path`` False sends every message through llhttp (the tests and the benchmark compare).
    """

    def __init__(
        self,
        log: RequestLog,
        *,
        remote: str,
        body_limit: int,
        context: object = None,
        replay_of: int | None = None,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        fast_path: bool = True,
    ) -> None:
        self._log = log
        self._origin: Origin = (remote, context, replay_of, body_limit)
        self._body_limit = body_limit
        self._mono = mono
        self._wall_offset = wall() - mono()
        self._fast_path = fast_path
        self._requests = MessageParser(request=True, max_size=PARSE_MAX_HEAD, max_count=PARSE_MAX_FIELDS)
        self._responses = MessageParser(request=False, max_size=PARSE_MAX_HEAD, max_count=PARSE_MAX_FIELDS)
        #: Each direction's next message goes to the fast path (else to llhttp).
        self._fast_requests = self._fast_responses = fast_path
        #: Body bytes still to come of the request and of the response the fast path reads.
        self._request_left = self._response_left = 0
        #: The last head llhttp read in each direction kept the connection alive.
        self._request_kept = self._response_kept = True
        #: Requests whose response has not begun, oldest first.
        self._pending: deque[Exchange] = deque()
        #: The request whose body is being read, and the exchange whose response body is.
        self._sending: Exchange | None = None
        self._answering: Exchange | None = None
        #: A response message (final or interim) read by llhttp has begun and not ended.
        self._in_response = False
        self._interim = False
        #: Visitor bytes held while an upgrade request awaits its answer (None: not waiting).
        self._held: bytearray | None = None
        #: Bytes of a response head to HEAD being collected.
        self._head_bytes = b""
        self._bytewise_left = BYTEWISE_BUDGET
        #: HEAD requests among ``_pending``.
        self._heads_pending = 0
        self.stopped = False
        #: Why recording stopped early ("" while recording, and after an upgrade: an orderly end of HTTP).
        self.stop_reason = ""
        #: The last exchange this recorder started (a replay reads its one exchange here).
        self.last: Exchange | None = None

    # -- the relay's side ----------------------------------------------------------------------------

    def request(self, data: bytes | memoryview) -> None:
        """Bytes the visitor sent, on their way to the service."""
        if self.stopped:
            return
        if self._fast_requests and not self._request_left and self._held is None:
            # The piece a kept-alive connection brings most: one plain head without a body, alone. What
            # `_feed_requests` and `_open` would do with it, without their generality.
            m = _REQUEST_HEAD.match(data, 0, _MAX_FAST_HEAD)
            if m is not None and m.end() == len(data) and m[3] is None:
                pending = self._pending
                if len(pending) < MAX_PENDING:
                    mono = self._mono()
                    is_head = data[0] == 72  # H: the one method of heads.METHODS that begins so is HEAD
                    self.last = exchange = Exchange(
                        bytes(data), None, mono, mono + self._wall_offset, self._origin, is_head
                    )
                    self._log.add(exchange)
                    pending.append(exchange)
                    if is_head:
                        self._heads_pending += 1
                    return
        try:
            if self._held is None:
                self._feed_requests(data)
            elif len(self._held) + len(data) > MAX_HELD:
                raise _StopRecording("too many bytes sent while an upgrade awaited its answer")
            else:
                self._held += data
        except Exception as exc:  # never let the relay see a failure of the recorder
            self._stop(str(exc) or type(exc).__name__)

    def response(self, data: bytes | memoryview) -> None:
        """Bytes the service answered, on their way to the visitor."""
        if self.stopped:
            return
        pending = self._pending
        if self._fast_responses and not self._response_left and pending:
            # The piece a kept-alive connection brings most: one plain response, head and whole body by
            # its Content-Length, alone. What `_feed_responses` would do with it, without its generality.
            m = _RESPONSE_HEAD.match(data, 0, _MAX_FAST_HEAD)
            if m is not None:
                status, length = m.groups()
                exchange = pending[0]
                if length is not None and not exchange.upgrade and not exchange.is_head:
                    end = m.end()
                    size = int(length)
                    code = int(status)
                    if end + size == len(data) and code != 204 and code != 304:
                        pending.popleft()
                        exchange.status = code
                        # Kept as it came when that is all head and preview (no copy of bytes).
                        kept = end + self._body_limit
                        raw = data if kept >= len(data) else data[:kept]
                        exchange._response = (bytes(raw), end, size)
                        exchange.state = State.COMPLETE
                        exchange._ended_mono = self._mono()
                        return
        try:
            self._feed_responses(data)
        except Exception as exc:
            self._stop(str(exc) or type(exc).__name__)

    def close(self) -> None:
        """The connection ended: what is still open is finished as far as it got."""
        if self.stopped:
            return
        now = self._mono()
        answering = self._answering
        if answering is not None and answering.response is not None:
            if _ends_by_close(answering):
                answering.response.body.complete = True
                answering.finish(State.COMPLETE, now)
            else:
                answering.finish(State.INCOMPLETE, now, "the connection ended before the response did")
        self._answering = None
        for exchange in self._pending:
            exchange.finish(State.INCOMPLETE, now, "the connection ended before a response")
        self._pending.clear()
        self._heads_pending = 0
        self.stopped = True

    # -- requests ------------------------------------------------------------------------------------

    def _feed_requests(self, data: bytes | memoryview) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._request_left:  # the body of a request the fast path read: counted
                take = min(self._request_left, n - pos)
                self._request_left -= take
                sending = self._sending
                assert sending is not None
                body = sending.request.body
                body.add(data[pos : pos + take])
                pos += take
                if not self._request_left:
                    body.complete = True
                    self._sending = None
                continue
            if self._fast_requests:
                m = _REQUEST_HEAD.match(data, pos, pos + _MAX_FAST_HEAD)
                if m is not None:
                    end = m.end()
                    length = m[3]
                    left = int(length) if length is not None else 0
                    head = bytes(data[pos:end])
                    is_head = data[pos] == 72  # H: the one method of METHODS that begins so is HEAD
                    if left:
                        message = Message(head, Body(self._body_limit))
                        self._sending = self._open(message, None, is_head)
                        self._request_left = left
                    else:  # the common case: kept raw, made a message when shown
                        self._open(head, None, is_head)
                    pos = end
                    continue
                self._fast_requests = False  # llhttp reads this message, from its first byte
            try:
                self._requests.feed(bytes(data[pos:]))
            finally:  # what llhttp read before bytes it refuses is recorded, however they were split
                self._take_requests()
            pos = n
            # Back to the fast path between two messages of a kept-alive connection.
            self._fast_requests = (
                self._fast_path
                and self._request_kept
                and self._held is None
                and self._sending is None
                and not self._requests.in_head
            )

    def _open(
        self, request: Message | bytes, line: tuple[bytes, bytes, bytes, str] | None, is_head: bool
    ) -> Exchange:
        """A new exchange in the log, awaiting its answer."""
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            raise _StopRecording(f"more than {MAX_PENDING} requests awaiting their answers")
        mono = self._mono()
        exchange = Exchange(request, line, mono, mono + self._wall_offset, self._origin, is_head)
        self._log.add(exchange)
        self.last = exchange
        pending.append(exchange)
        if is_head:
            self._heads_pending += 1
        return exchange

    def _take_requests(self) -> None:
        events = self._requests.events
        while events:
            item = events.popleft()
            if isinstance(item, Head):
                self._request_kept = item.keep_alive
                message = _bounded_message(item, self._body_limit)
                target = item.target
                if len(target) > MAX_STORED_HEAD:
                    message.headers_truncated = True  # the head was not all recorded: not replayed
                host = (item.host or b"")[:MAX_STORED_HEAD]
                line = (item.method, target[:MAX_STORED_HEAD], host, item.version)
                exchange = self._open(message, line, item.method == b"HEAD")
                exchange.upgrade = item.upgrade
                self._sending = exchange
            elif isinstance(item, bytes):
                if self._sending is not None:
                    self._sending.request.body.add(item)
            else:
                sending, self._sending = self._sending, None
                if sending is None:
                    continue
                sending.request.body.complete = True
                if sending.upgrade:
                    # The bytes after an upgrade request belong to the new protocol, unless it is
                    # refused: hold them until the answer says which.
                    self._held = bytearray(self._requests.rest)
                    self._requests.rest = b""
                    events.clear()
                    return

    # -- responses -----------------------------------------------------------------------------------

    def _feed_responses(self, data: bytes | memoryview) -> None:
        pos, n = 0, len(data)
        while pos < n and not self.stopped:
            if self._response_left:  # the body of a response the fast path read: counted
                take = min(self._response_left, n - pos)
                self._response_left -= take
                answering = self._answering
                assert answering is not None and answering.response is not None
                body = answering.response.body
                body.add(data[pos : pos + take])
                pos += take
                if not self._response_left:
                    self._answering = None
                    body.complete = True
                    answering.state = State.COMPLETE
                    answering._ended_mono = self._mono()
                continue
            if self._fast_responses:
                m = _RESPONSE_HEAD.match(data, pos, pos + _MAX_FAST_HEAD) if self._pending else None
                left = -1 if m is None else self._fast_body_length(m)
                if left >= 0:
                    assert m is not None
                    end = m.end()
                    exchange = self._pending.popleft()
                    if exchange.is_head:
                        self._heads_pending -= 1
                    if left <= n - end:  # the common case: the whole body is here, kept raw
                        start, pos = pos, end + left
                        raw = bytes(data[start : min(pos, end + self._body_limit)])
                        exchange._response = (raw, end - start, left)
                        exchange.state = State.COMPLETE
                        exchange._ended_mono = self._mono()
                    else:
                        exchange._response = Message(bytes(data[pos:end]), Body(self._body_limit))
                        self._response_left = left
                        self._answering = exchange
                        pos = end
                    continue
                self._fast_responses = False  # llhttp reads this message, from its first byte
            pos = self._llhttp_response(data, pos)
            # Back to the fast path between two messages of a kept-alive connection.
            self._fast_responses = (
                self._fast_path
                and self._response_kept
                and not self._in_response
                and not self._head_bytes
                and not self._responses.in_head
            )

    def _fast_body_length(self, m: re.Match[bytes]) -> int:
        """The body length of the response head the fast path matched (its status is set on the exchange
        it answers); -1 when llhttp is to read it: an answer to an upgrade request (llhttp holds the
        visitor's bytes meanwhile) or a body that ends with the connection (no Content-Length)."""
        status, length = m.groups()
        exchange = self._pending[0]
        if exchange.upgrade:
            return -1
        code = int(status)
        if exchange.is_head or code == 204 or code == 304:
            left = 0  # no body whatever the head says
        elif length is not None:
            left = int(length)
        else:
            return -1
        exchange.status = code
        return left

    def _llhttp_response(self, data: bytes | memoryview, pos: int) -> int:
        """Feed llhttp what it reads next of ``data[pos:]``; where the bytes go on."""
        next_is_head = not self._in_response and bool(self._pending) and self._pending[0].is_head
        try:
            if next_is_head:
                rest = self._feed_head_response(data[pos:])
                pos = len(data) - len(rest)
            elif self._heads_pending:
                # A HEAD waits behind the next response: find that one's end exactly, a byte at a time.
                if self._bytewise_left <= 0:
                    raise _StopRecording("a HEAD request pipelined behind a long response")
                self._bytewise_left -= 1
                self._responses.feed(bytes(data[pos : pos + 1]))
                pos += 1
            else:
                self._responses.feed(bytes(data[pos:]))
                pos = len(data)
        finally:  # what llhttp read before bytes it refuses is recorded, however they were split
            self._take_responses()
        return pos

    def _feed_head_response(self, view: bytes | memoryview) -> memoryview:
        """Collect the next response head (to HEAD) and feed it alone; the bytes after it are returned."""
        buf = self._head_bytes + bytes(view)
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HELD:
                raise _StopRecording(f"a response head over {MAX_HELD} bytes")
            self._head_bytes = buf
            return memoryview(b"")
        self._head_bytes = b""
        self._responses.skip_body = True
        try:
            self._responses.feed(buf[: end + 4])
        finally:
            self._responses.skip_body = False
        return memoryview(buf)[end + 4 :]

    def _take_responses(self) -> None:
        events = self._responses.events
        while events:
            item = events.popleft()
            if isinstance(item, Head):
                self._in_response = True
                self._response_kept = item.keep_alive
                if 100 <= item.status < 200 and item.status != 101:
                    self._interim = True
                    continue
                self._answer(item)
                if self.stopped:
                    return
            elif isinstance(item, bytes):
                if self._answering is not None and self._answering.response is not None:
                    self._answering.response.body.add(item)
            elif isinstance(item, EndOfMessage):
                self._in_response = False
                if self._interim:
                    self._interim = False
                    continue
                answering, self._answering = self._answering, None
                if answering is not None and answering.response is not None:
                    answering.response.body.complete = True
                    answering.finish(State.COMPLETE, self._mono())

    def _answer(self, head: Head) -> None:
        if not self._pending:
            raise _StopRecording("a response without a request")
        exchange = self._pending.popleft()
        self._heads_pending -= exchange.is_head
        exchange.status = head.status
        exchange._reason = head.reason
        exchange._response = response = _bounded_message(head, self._body_limit)
        self._answering = exchange
        if head.status == 101:
            response.body.complete = True
            exchange.finish(State.UPGRADED, self._mono())
            self._answering = None
            self._stop("", upgraded=True)
            return
        if exchange.upgrade and self._held is not None:
            # The upgrade was refused: what the visitor sent meanwhile is HTTP again.
            held, self._held = bytes(self._held), None
            if held:
                self._feed_requests(held)

    def _stop(self, reason: str, *, upgraded: bool = False) -> None:
        """Stop recording this connection; open exchanges are marked with ``reason``."""
        if self.stopped:
            return
        if not upgraded:
            now = self._mono()
            note = f"not recorded further: {reason}"
            for exchange in [self._answering, self._sending, *self._pending]:
                if exchange is not None and exchange.state is State.PENDING:
                    exchange.finish(State.INCOMPLETE, now, note)
        self._pending.clear()
        self._heads_pending = 0
        self._answering = self._sending = None
        self._request_left = self._response_left = 0
        self._held = None
        self.stopped = True
        self.stop_reason = reason


def _ends_by_close(exchange: Exchange) -> bool:
    """The response has neither a length nor chunked framing: its body ends with the connection."""
    assert exchange.response is not None
    for name, _ in exchange.response.fields():
        if name.lower() in (b"content-length", b"transfer-encoding"):
            return False
    return not exchange.response.headers_truncated
