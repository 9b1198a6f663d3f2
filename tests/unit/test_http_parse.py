"""vhost/http_parse: every message is parsed whole, one byte at a time and split at random points,
and each way gives the same heads, body bytes and ends (or the same error class)."""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pierce.errors import RemoteError
from pierce.vhost.http import (
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADER_COUNT,
    MAX_RESPONSE_HEAD_SIZE,
    MAX_RESPONSE_HEADER_COUNT,
)
from pierce.vhost.http_parse import (
    END_OF_MESSAGE,
    EndOfMessage,
    Event,
    Head,
    HeadTooLarge,
    Malformed,
    MessageParser,
    declares_body,
    field_line,
    split_absolute_form,
    take_body,
)

END = "END"


@dataclass(frozen=True)
class H:
    """A head as compared here: every attribute of :class:`Head`."""

    method: bytes = b""
    target: bytes = b""
    status: int = 0
    reason: bytes = b""
    version: str = "1.1"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    keep_alive: bool = True
    upgrade: bool = False
    host: bytes | None = None
    host_count: int = 0
    authorization: bytes | None = None

    @classmethod
    def of(cls, head: Head) -> H:
        return cls(
            head.method,
            head.target,
            head.status,
            head.reason,
            head.version,
            tuple(head.headers),
            head.keep_alive,
            head.upgrade,
            head.host,
            head.host_count,
            head.authorization,
        )


Item = H | bytes | str


@dataclass(frozen=True)
class Parsed:
    events: tuple[Item, ...]
    #: The bytes after an upgrade: ``rest`` plus whatever was not fed after it.
    after_upgrade: bytes
    in_head: bool


def normalise(events: Iterable[Event]) -> list[Item]:
    """Heads as `H`, neighbouring body pieces joined (how a body is cut depends on the feeds), END."""
    out: list[Item] = []
    for item in events:
        if isinstance(item, Head):
            out.append(H.of(item))
        elif isinstance(item, EndOfMessage):
            assert item is END_OF_MESSAGE
            out.append(END)
        else:
            assert isinstance(item, bytes) and item
            if out and isinstance(out[-1], bytes):
                out[-1] += item
            else:
                out.append(item)
    return out


def new_parser(request: bool, max_size: int | None = None, max_count: int | None = None) -> MessageParser:
    if request:
        size, count = DEFAULT_MAX_HEAD_SIZE, DEFAULT_MAX_HEADER_COUNT
    else:
        size, count = MAX_RESPONSE_HEAD_SIZE, MAX_RESPONSE_HEADER_COUNT
    return MessageParser(
        request=request,
        max_size=size if max_size is None else max_size,
        max_count=count if max_count is None else max_count,
    )


def feed(parser: MessageParser, chunks: Sequence[bytes]) -> Parsed:
    """Feed ``chunks`` in turn, taking events as they come; stops after an upgrade like the engine does."""
    taken: list[Event] = []
    for i, chunk in enumerate(chunks):
        parser.feed(chunk)
        taken += parser.events
        parser.events.clear()
        heads = [item for item in taken if isinstance(item, Head)]
        if heads and heads[-1].upgrade and isinstance(taken[-1], EndOfMessage):
            rest = parser.rest + b"".join(chunks[i + 1 :])
            return Parsed(tuple(normalise(taken)), rest, parser.in_head)
        assert parser.rest == b""
    return Parsed(tuple(normalise(taken)), b"", parser.in_head)


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def every_way(data: bytes) -> list[list[bytes]]:
    """Whole, one byte at a time, and cut once at every point of the first 200 bytes."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways += [cut(data, [n]) for n in range(1, min(len(data), 200))]
    return ways


def parse(data: bytes, *, request: bool, **limits: int) -> Parsed:
    """The one result of parsing ``data`` every way (asserted to be the same each way)."""
    results = [feed(new_parser(request, **limits), chunks) for chunks in every_way(data)]
    for chunks, result in zip(every_way(data), results, strict=True):
        assert result == results[0], f"fed as {len(chunks)} pieces"
    return results[0]


def refused(data: bytes, *, request: bool, **limits: int) -> type[Exception]:
    """The one error class parsing ``data`` raises every way (asserted to be the same each way)."""
    classes = set()
    for chunks in every_way(data):
        with pytest.raises(Malformed) as info:
            feed(new_parser(request, **limits), chunks)
        classes.add(type(info.value))
    assert len(classes) == 1, classes
    error = classes.pop()
    assert issubclass(error, RemoteError)
    return error


# -- requests ---------------------------------------------------------------------------------------


def test_a_request_head_and_what_it_says() -> None:
    data = (
        b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nAuthorization: Basic dTpw\r\n"
        b"X-Empty:\r\nAccept: */*\r\n\r\n"
    )
    fields = (
        (b"Host", b"example.com:8080"),
        (b"Authorization", b"Basic dTpw"),
        (b"X-Empty", b""),
        (b"Accept", b"*/*"),
    )
    head = H(
        b"GET",
        b"/a/b?c=d",
        headers=fields,
        host=b"example.com:8080",
        host_count=1,
        authorization=b"Basic dTpw",
    )
    assert parse(data, request=True) == Parsed((head, END), b"", False)


def test_http10_keep_alive_and_connection_close() -> None:
    got = parse(b"GET / HTTP/1.0\r\n\r\n", request=True).events
    assert got == (H(b"GET", b"/", version="1.0", keep_alive=False), END)
    got = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", request=True).events
    assert isinstance(got[0], H) and got[0].keep_alive and got[0].version == "1.0"
    got = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", request=True).events
    assert isinstance(got[0], H) and not got[0].keep_alive


def test_host_fields_are_counted_and_the_last_one_kept() -> None:
    (head, _) = parse(b"GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n", request=True).events
    assert isinstance(head, H) and head.host == b"b" and head.host_count == 2


def test_content_length_body() -> None:
    data = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    head, *rest = parse(data, request=True).events
    assert isinstance(head, H) and head.method == b"POST"
    assert rest == [b"hello world", END]


def test_chunked_body_loses_its_framing_extensions_and_trailers() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n0a\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    head, *rest = parse(data, request=True).events
    assert isinstance(head, H)
    assert head.headers == ((b"Host", b"a"), (b"Transfer-Encoding", b"chunked"))
    assert rest == [b"hello 0123456789", END]


def test_pipelined_requests_come_out_in_order() -> None:
    data = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"PUT /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /4 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    events = parse(data, request=True).events
    shape = [(e.method, e.target) if isinstance(e, H) else e for e in events]
    assert shape == [
        (b"GET", b"/1"),
        END,
        (b"POST", b"/2"),
        b"abc",
        END,
        (b"PUT", b"/3"),
        b"de",
        END,
        (b"GET", b"/4"),
        END,
    ]


def test_an_incomplete_request_gives_what_is_complete_and_stays_in_its_head() -> None:
    data = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost:"
    got = parse(data, request=True)
    assert [e.target if isinstance(e, H) else e for e in got.events] == [b"/1", END]
    assert got.in_head
    parser = new_parser(True)
    parser.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    assert not parser.in_head
    assert normalise(parser.events)[1:] == [b"ab"]


def test_an_upgrade_request_ends_at_its_head_and_leaves_the_rest() -> None:
    data = (
        b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Content-Length: 4\r\n\r\n\x81\x02hi"
    )
    got = parse(data, request=True)
    head, end = got.events
    assert isinstance(head, H) and head.upgrade and end == END
    assert got.after_upgrade == b"\x81\x02hi"
    # When the upgrade is refused, the next bytes are HTTP again.
    parser = new_parser(True)
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nGET /next")
    assert parser.rest == b"GET /next"
    parser.events.clear()
    parser.feed(parser.rest + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [e.target if isinstance(e, H) else e for e in normalise(parser.events)] == [b"/next", END]


def test_absolute_form_and_asterisk_targets_pass_as_sent() -> None:
    data = (
        b"GET http://example.com:81/p?q HTTP/1.1\r\nHost: other\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    events = parse(data, request=True).events
    assert [e.target for e in events if isinstance(e, H)] == [b"http://example.com:81/p?q", b"*"]


# -- responses --------------------------------------------------------------------------------------


def test_responses_with_length_chunked_and_no_body_on_one_connection() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
        b"HTTP/1.0 200 Fine\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    )
    events = parse(data, request=False).events
    shape = [(e.status, e.reason, e.version, e.keep_alive) if isinstance(e, H) else e for e in events]
    assert shape == [
        (200, b"OK", "1.1", True),
        b"hi",
        END,
        (404, b"Not Found", "1.1", True),
        b"abc",
        END,
        (204, b"No Content", "1.1", True),
        END,
        (304, b"Not Modified", "1.1", True),
        END,
        (200, b"Fine", "1.0", True),
        END,
    ]


def test_interim_responses_come_before_the_final_one() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"
    )
    events = parse(data, request=False).events
    assert [e.status if isinstance(e, H) else e for e in events] == [100, END, 103, END, 201, b"x", END]


def test_a_close_delimited_response_has_no_end() -> None:
    got = parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", request=False)
    head, body = got.events
    assert isinstance(head, H) and not head.keep_alive and body == b"until the end"


def test_a_response_to_head_ends_at_its_head() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    parser = new_parser(False)
    parser.skip_body = True
    parser.feed(b"HTTP/1.1 100 Continue\r\n\r\n" + data)
    assert [e.status if isinstance(e, H) else e for e in normalise(parser.events)] == [100, END, 200, END]
    assert parser.clean
    # Bytes after the head: the service spoke out of turn.
    parser = new_parser(False)
    parser.skip_body = True
    parser.feed(data + b"junk")
    assert [e.status if isinstance(e, H) else e for e in normalise(parser.events)] == [200, END]
    assert not parser.clean
    # Fed in pieces, the same events; clean only when the last piece ends in CRLF CRLF.
    for chunks in every_way(data)[1:]:
        parser = new_parser(False)
        parser.skip_body = True
        assert feed(parser, chunks).events == (
            H(status=200, reason=b"OK", headers=((b"Content-Length", b"1000"),)),
            END,
        )
        assert parser.clean is chunks[-1].endswith(b"\r\n\r\n")


def test_switching_protocols_leaves_the_rest() -> None:
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"
    got = parse(data, request=False)
    head, end = got.events
    assert isinstance(head, H) and head.status == 101 and head.upgrade and end == END
    assert got.after_upgrade == b"\x81\x02hi"


# -- limits -----------------------------------------------------------------------------------------


def test_field_count_limit() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(10))
    ok = parse(b"GET / HTTP/1.1\r\n" + fields + b"\r\n", request=True, max_count=10).events
    assert isinstance(ok[0], H) and len(ok[0].headers) == 10
    data = b"GET / HTTP/1.1\r\n" + fields + b"X-10: v\r\n\r\n"
    assert refused(data, request=True, max_count=10) is HeadTooLarge
    response = b"HTTP/1.1 200 OK\r\n" + fields + b"X-10: v\r\n\r\n"
    assert refused(response, request=False, max_count=10) is HeadTooLarge


def test_default_limits_refuse_too_many_fields() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(DEFAULT_MAX_HEADER_COUNT + 1))
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    parser = new_parser(True)
    with pytest.raises(HeadTooLarge):
        parser.feed(data)
    parser = new_parser(True)
    with pytest.raises(HeadTooLarge):
        for i in range(len(data)):
            parser.feed(data[i : i + 1])


def test_oversized_heads_are_refused_however_they_are_fed() -> None:
    for data in (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 1500 + b"\r\n\r\n",
        b"GET /" + b"p" * 1500 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Field: value\r\n" * 80 + b"\r\n",
    ):
        assert refused(data, request=True, max_size=1000) is HeadTooLarge
    response = b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 1500 + b"\r\n\r\n"
    assert refused(response, request=False, max_size=1000) is HeadTooLarge


def test_an_endless_line_is_refused_once_the_fed_bytes_pass_the_limit() -> None:
    parser = new_parser(True, max_size=1000)
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 900)  # not measured: the head began here
    assert parser.in_head and not parser.events
    parser.feed(b"v" * 900)
    with pytest.raises(HeadTooLarge):
        parser.feed(b"v" * 200)
    parser = new_parser(True, max_size=1000)
    parser.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(HeadTooLarge):
        for _ in range(2000):
            parser.feed(b"v")


def test_bodies_and_trailers_do_not_count_against_the_head() -> None:
    body = b"b" * 5000
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + body
    assert parse(data, request=True, max_size=100, max_count=2).events[1:] == (body, END)
    trailers = b"".join(b"T-%d: v\r\n" % i for i in range(5))
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
        + trailers
        + b"\r\n"
    )
    assert parse(data, request=True, max_count=2).events[1:] == (b"x", END)


# -- malformed input --------------------------------------------------------------------------------

BAD_REQUESTS = [
    b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/9.1\r\nHost: a\r\n\r\n",
    b"GET / FTP/1.1\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
]
BAD_RESPONSES = [
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 OK\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n",
]


@pytest.mark.parametrize("data", BAD_REQUESTS)
def test_malformed_requests(data: bytes) -> None:
    assert refused(data, request=True) is Malformed


@pytest.mark.parametrize("data", BAD_RESPONSES)
def test_malformed_responses(data: bytes) -> None:
    assert refused(data, request=False) is Malformed


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), request=st.booleans())
def test_random_bytes_raise_nothing_but_malformed(data: bytes, request: bool) -> None:
    parser = new_parser(request, max_size=200, max_count=5)
    with contextlib.suppress(Malformed):  # anything else fails the test
        parser.feed(data)


# -- any message, split anywhere ---------------------------------------------------------------------

TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=12
)
VALUE = st.binary(max_size=30).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80))
FIELDS = st.lists(
    st.tuples(TOKEN.map(str.encode), VALUE).filter(
        lambda f: f[0].lower() not in (b"content-length", b"transfer-encoding", b"connection", b"upgrade")
    ),
    max_size=6,
)
BODY = st.binary(max_size=200)
FRAMING = st.sampled_from(["none", "length", "chunked"])


@st.composite
def messages(draw: st.DrawFn, request: bool) -> tuple[bytes, list[Item]]:
    """One message and the events expected from it."""
    fields = draw(FIELDS)
    framing = draw(FRAMING)
    body = draw(BODY) if framing != "none" else b""
    if request:
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
        target = b"/" + draw(TOKEN).encode()
        first = method + b" " + target + b" HTTP/1.1\r\n"
        fields = [(b"Host", b"h"), *fields]
        head = H(method, target)
    else:
        status = draw(st.sampled_from([200, 201, 400, 404, 500]))
        reason = draw(st.sampled_from([b"OK", b"Whatever It Is", b""]))
        first = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        head = H(status=status, reason=reason)
    if framing == "length":
        fields.append((b"Content-Length", b"%d" % len(body)))
        framed = body
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        cuts = draw(st.lists(st.integers(0, len(body)), max_size=4))
        framed = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in cut(body, cuts))
        framed += b"0\r\n\r\n"
    else:
        fields.append((b"Content-Length", b"0"))
        framed = b""
    data = first + b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\n" + framed
    hosts = [v for n, v in fields if n.lower() == b"host"]
    auths = [v for n, v in fields if n.lower() == b"authorization"]
    head = H(
        head.method,
        head.target,
        head.status,
        head.reason,
        headers=tuple(fields),
        host=hosts[-1] if hosts else None,
        host_count=len(hosts),
        authorization=auths[-1] if auths else None,
    )
    return data, [head, *([body] if body else []), END]


@settings(max_examples=200, deadline=None)
@given(request=st.booleans(), data=st.data())
def test_pipelined_messages_split_at_random_points_parse_as_written(
    request: bool, data: st.DataObject
) -> None:
    written = data.draw(st.lists(messages(request), min_size=1, max_size=4))
    wire = b"".join(message for message, _ in written)
    expected = tuple(item for _, events in written for item in events)
    points = data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=12))
    for chunks in ([wire], cut(wire, points), [wire[i : i + 1] for i in range(len(wire))]):
        assert feed(new_parser(request), chunks) == Parsed(expected, b"", False)


@settings(max_examples=100, deadline=None)
@given(
    request=st.booleans(),
    data=st.data(),
)
def test_rechunked_bodies_parse_back_to_the_same_bytes(request: bool, data: st.DataObject) -> None:
    message, events = data.draw(messages(request))
    parser = new_parser(request)
    parser.feed(message)
    head = parser.events.popleft()
    assert isinstance(head, Head)
    pieces: list[bytes] = []
    assert take_body(parser.events, pieces, chunked=True)
    again = new_parser(request)
    first = b"GET / HTTP/1.1\r\n" if request else b"HTTP/1.1 200 OK\r\n"
    again.feed(first + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(pieces))
    assert normalise(again.events)[1:] == events[1:]


# -- helpers ------------------------------------------------------------------------------------------


def test_take_body_moves_one_message_and_frames_it_when_asked() -> None:
    head = Head()
    events: deque[Event] = deque([b"ab", b"c", END_OF_MESSAGE, head, b"x"])
    pieces: list[bytes] = []
    assert take_body(events, pieces, chunked=True)
    assert b"".join(pieces) == b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
    assert list(events) == [head, b"x"]
    pieces.clear()
    assert not take_body(events, pieces, chunked=False)  # stops at the next head
    assert pieces == [] and list(events) == [head, b"x"]
    events.popleft()
    assert not take_body(events, pieces, chunked=False)  # no end yet
    assert pieces == [b"x"] and not events


def test_declares_body() -> None:
    def head(*fields: tuple[bytes, bytes]) -> Head:
        h = Head()
        h.headers = list(fields)
        return h

    assert not declares_body(head())
    assert not declares_body(head((b"Content-Length", b" 0 ")))
    assert declares_body(head((b"content-length", b"3")))
    assert declares_body(head((b"Transfer-Encoding", b"chunked")))


def test_split_absolute_form() -> None:
    assert split_absolute_form(b"http://example.com/p?q=1") == (b"example.com", b"/p?q=1")
    assert split_absolute_form(b"https://example.com:8443") == (b"example.com:8443", b"/")
    assert split_absolute_form(b"http://a?q") == (b"a", b"/?q")
    assert split_absolute_form(b"http://a/p#frag") == (b"a", b"/p")
    assert split_absolute_form(b"ftp://a/p") is None
    assert split_absolute_form(b"http:///p") is None
    assert split_absolute_form(b"a/p") is None


def test_field_line() -> None:
    assert field_line("X-A", "b c") == b"X-A: b c\r\n"
    assert field_line("X-A", "") == b"X-A: \r\n"
    for name, value in (("X A", "b"), ("X:A", "b"), ("X\r\nA", "b"), ("X-A", "b\r\nEvil: 1"), ("X-A", "\0")):
        assert field_line(name, value) == b""
