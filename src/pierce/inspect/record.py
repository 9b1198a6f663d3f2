"""Recording HTTP exchanges from the bytes of a relayed connection, sans-I/O.

Theory of operation
-------------------
A :class:`ConnectionRecorder` watches one tunnelled connection of an http proxy: the relay hands it
every piece of bytes just before writing it on (:meth:`ConnectionRecorder.request` for visitor -> service,
:meth:`ConnectionRecorder.response` for service -> visitor), and :meth:`ConnectionRecorder.close` when
the connection ends. It never holds the relay up and never changes a byte: heads are parsed as the bytes
pass (one :class:`pierce.vhost.http_parse.MessageParser` per direction) and only bounded copies are kept.

Each request head starts an :class:`Exchange`, put at once in the proxy's :class:`RequestLog` (a ring of
the last N); responses are matched to requests in order (kept-alive and pipelined requests alike).
Interim ``1xx`` answers are skipped; a ``101`` is recorded and ends parsing for the connection (the bytes
after it are another protocol). While an upgrade request waits for its answer the visitor's bytes are
held (bounded) and parsed as HTTP again only if the upgrade was refused.

A response to ``HEAD`` has no body whatever its head says, and the parser must know before it reads
the head: such a head is collected (bounded) and fed on its own with ``skip_body``. When a ``HEAD``
is pipelined behind a response still in progress, that response is fed a byte at a time so that its
end is found exactly; a small budget per connection bounds this (past it the connection is no longer
recorded). ``204`` and ``304`` need nothing: llhttp knows they have no body.

Anything the recorder cannot follow (bytes that are not HTTP, limits passed) stops the recording of
that connection only: the exchanges so far stay in the log, marked, and the relay goes on untouched.

Bounds: per head at most :data:`MAX_STORED_HEAD` bytes and :data:`MAX_STORED_FIELDS` fields are kept
(more is marked ``headers_truncated``); per body the first ``body_limit`` bytes (chunked framing
removed) with the total size; per connection at most :data:`MAX_PENDING` requests awaiting an answer.
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

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.size = 0
        #: The body's end was seen.
        self.complete = False

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        room = self.limit - len(self.data)
        if room > 0:
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
    """One side of an exchange: its header fields (bounded) and a preview of its body."""

    __slots__ = ("_fields", "body", "headers_truncated")

    def __init__(self, head: Head, body_limit: int) -> None:
        # The parser made this list for this head alone: it is kept as it is (decoded when shown), cut
        # to the bounds when it is over them.
        fields = head.headers
        self.headers_truncated = False
        size = sum(map(len, chain.from_iterable(fields))) + 4 * len(fields)
        if len(fields) > MAX_STORED_FIELDS or size > MAX_STORED_HEAD:
            kept: list[tuple[bytes, bytes]] = []
            size = 0
            for name, value in fields:
                size += len(name) + len(value) + 4
                if size > MAX_STORED_HEAD or len(kept) >= MAX_STORED_FIELDS:
                    break
                kept.append((name, value))
            fields = kept
            self.headers_truncated = True
        self._fields = fields
        self.body = Body(body_limit)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The header fields kept, in order, as text (ISO 8859-1, so every byte maps to a character)."""
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self._fields]

    def to_json(self) -> dict[str, Any]:
        return {
            "headers": [list(pair) for pair in self.headers],
            "headers_truncated": self.headers_truncated,
            "body": self.body.to_json(),
        }


class Exchange:
    """One request and its response as recorded; mutable while its connection is recorded."""

    __slots__ = (
        "_host",
        "_method",
        "_started_mono",
        "_target",
        "context",
        "duration_ms",
        "id",
        "is_head",
        "note",
        "reason",
        "remote",
        "replay_of",
        "request",
        "response",
        "state",
        "status",
        "time",
        "upgrade",
        "version",
    )

    def __init__(
        self, head: Head, *, remote: str, body_limit: int, wall: float, mono: float, context: object
    ) -> None:
        self.id = 0  # given by the log
        self.time = wall
        self._started_mono = mono
        self.remote = remote
        self._method = head.method
        self._target = head.target[:MAX_STORED_HEAD]
        self._host = (head.host or b"")[:MAX_STORED_HEAD]
        self.is_head = head.method == b"HEAD"
        self.version = head.version
        self.upgrade = head.upgrade
        self.request = Message(head, body_limit)
        if len(head.target) > MAX_STORED_HEAD:
            self.request.headers_truncated = True  # the head was not all recorded: not replayed
        self.response: Message | None = None
        self.status: int | None = None
        self.reason = ""
        self.duration_ms: float | None = None
        self.state = State.PENDING
        self.note = ""
        self.replay_of: int | None = None
        #: What the recorder's owner attached (the work connection's start, for a replay).
        self.context = context

    @property
    def method(self) -> str:
        return self._method.decode("latin-1")

    @property
    def target(self) -> str:
        return self._target.decode("latin-1")

    @property
    def host(self) -> str:
        return self._host.decode("latin-1")

    def finish(self, state: State, mono: float, note: str = "") -> None:
        self.state = state
        self.duration_ms = round((mono - self._started_mono) * 1000, 3)
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


class _StopRecording(Exception):
    """This connection can no longer be followed; the reason is the message."""


class ConnectionRecorder:
    """Records the exchanges of one connection into ``log``; see the module docstring.

    ``remote`` is the visitor's address; ``context`` is attached to each exchange; ``replay_of`` marks
    the exchanges as a replay of that id. ``mono`` and ``wall`` are the clocks (tests pass their own).
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
    ) -> None:
        self._log = log
        self._remote = remote
        self._body_limit = body_limit
        self._context = context
        self._replay_of = replay_of
        self._mono = mono
        self._wall = wall
        self._requests = MessageParser(request=True, max_size=PARSE_MAX_HEAD, max_count=PARSE_MAX_FIELDS)
        self._responses = MessageParser(request=False, max_size=PARSE_MAX_HEAD, max_count=PARSE_MAX_FIELDS)
        #: Requests whose response has not begun, oldest first.
        self._pending: deque[Exchange] = deque()
        #: The request whose body is being read, and the exchange whose response body is.
        self._sending: Exchange | None = None
        self._answering: Exchange | None = None
        #: A response message (final or interim) has begun and not ended.
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
        try:
            if self._held is not None:
                if len(self._held) + len(data) > MAX_HELD:
                    raise _StopRecording("too many bytes sent while an upgrade awaited its answer")
                self._held += data
                return
            self._requests.feed(bytes(data))
            self._take_requests()
        except Exception as exc:  # never let the relay see a failure of the recorder
            self._stop(str(exc) or type(exc).__name__)

    def response(self, data: bytes | memoryview) -> None:
        """Bytes the service answered, on their way to the visitor."""
        if self.stopped:
            return
        try:
            if self._heads_pending or self._head_bytes:
                self._feed_responses(bytes(data))
            else:  # no HEAD awaits its answer: the parser reads the bytes as they come
                self._responses.feed(bytes(data))
                self._take_responses()
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

    def _take_requests(self) -> None:
        events = self._requests.events
        while events:
            item = events.popleft()
            if isinstance(item, Head):
                if len(self._pending) >= MAX_PENDING:
                    raise _StopRecording(f"more than {MAX_PENDING} requests awaiting their answers")
                exchange = Exchange(
                    item,
                    remote=self._remote,
                    body_limit=self._body_limit,
                    wall=self._wall(),
                    mono=self._mono(),
                    context=self._context,
                )
                exchange.replay_of = self._replay_of
                self._log.add(exchange)
                self.last = exchange
                self._pending.append(exchange)
                self._heads_pending += exchange.is_head
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

    def _feed_responses(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.stopped:
            next_is_head = not self._in_response and bool(self._pending) and self._pending[0].is_head
            if next_is_head:
                view = self._feed_head_response(view)
            elif self._heads_pending:
                # A HEAD waits behind the next response: find that one's end exactly, a byte at a time.
                if self._bytewise_left <= 0:
                    raise _StopRecording("a HEAD request pipelined behind a long response")
                self._bytewise_left -= 1
                self._responses.feed(bytes(view[:1]))
                view = view[1:]
                self._take_responses()
            else:
                self._responses.feed(bytes(view))
                view = view[len(view) :]
                self._take_responses()

    def _feed_head_response(self, view: memoryview) -> memoryview:
        """Collect the next response head (to HEAD) and feed it alone; the bytes after it are returned."""
        buf = self._head_bytes + bytes(view)
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HELD:
                raise _StopRecording(f"a response head over {MAX_HELD} bytes")
            self._head_bytes = buf
            return view[len(view) :]
        self._head_bytes = b""
        self._responses.skip_body = True
        try:
            self._responses.feed(buf[: end + 4])
        finally:
            self._responses.skip_body = False
        self._take_responses()
        return memoryview(buf)[end + 4 :]

    def _take_responses(self) -> None:
        events = self._responses.events
        while events:
            item = events.popleft()
            if isinstance(item, Head):
                self._in_response = True
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
        exchange.reason = head.reason.decode("latin-1")
        exchange.response = Message(head, self._body_limit)
        self._answering = exchange
        if head.status == 101:
            exchange.response.body.complete = True
            exchange.finish(State.UPGRADED, self._mono())
            self._answering = None
            self._stop("", upgraded=True)
            return
        if exchange.upgrade and self._held is not None:
            # The upgrade was refused: what the visitor sent meanwhile is HTTP again.
            held, self._held = bytes(self._held), None
            if held:
                self._requests.feed(held)
                self._take_requests()

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
        self._held = None
        self.stopped = True
        self.stop_reason = reason


def _ends_by_close(exchange: Exchange) -> bool:
    """The response has neither a length nor chunked framing: its body ends with the connection."""
    assert exchange.response is not None
    for name, _ in exchange.response.headers:
        if name.lower() in ("content-length", "transfer-encoding"):
            return False
    return not exchange.response.headers_truncated
