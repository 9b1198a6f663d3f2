"""The recorder's fast path and its llhttp fallback record the same: random valid HTTP/1.1 streams (kept
alive, pipelined, sized and chunked bodies, HEAD, 1xx, 204/304, odd spellings and whitespace, heads over
the bounds, upgrades), split at random points, and the same streams with bytes changed, fed to a recorder
with the fast path on and one with it off."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pierce.inspect import heads
from pierce.inspect.record import ConnectionRecorder, Exchange, RequestLog, State
from pierce.vhost.http_parse import MessageParser

TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Values: visible ASCII, space, tab and obs-text; leading and trailing whitespace too.
VCHAR = bytes(range(0x21, 0x7F)) + b" \t" + bytes(range(0x80, 0x100))
TARGET = bytes(range(0x21, 0x7F))

names = st.one_of(
    st.sampled_from([b"Host", b"host", b"User-Agent", b"Accept", b"X-Forwarded-For", b"Cookie",
                     b"Content-Type", b"content-type", b"Cache-Control", b"Connection-X", b"Upgrade-Insecure",
                     b"Transfer-Encodings", b"Content-Lengths", b"TE", b"Proxy-Authorization"]),
    st.binary(min_size=1, max_size=12).map(lambda b: bytes(TCHAR[c % len(TCHAR)] for c in b)),
)  # fmt: skip
values = st.binary(max_size=24).map(lambda b: bytes(VCHAR[c % len(VCHAR)] for c in b))
fields = st.lists(st.tuples(names, values), max_size=6)
ows = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t"])
keep_alive = st.sampled_from([b"keep-alive", b"Keep-Alive", b"KEEP-ALIVE"])


@st.composite
def framing_fields(draw: st.DrawFn, size: int, chunked: bool) -> bytes:
    """The fields that frame a message of ``size`` body bytes, with the spellings llhttp takes."""
    if chunked:
        name = draw(st.sampled_from([b"Transfer-Encoding", b"transfer-encoding"]))
        return name + b":" + draw(ows) + b"chunked\r\n"  # llhttp refuses whitespace after it
    name = draw(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]))
    digits = draw(st.sampled_from([b"", b"0", b"00"])) + b"%d" % size
    return name + b":" + draw(ows) + digits + draw(ows) + b"\r\n"


@st.composite
def head_fields(draw: st.DrawFn) -> bytes:
    out = b"".join(name + b":" + draw(ows) + value + b"\r\n" for name, value in draw(fields))
    if draw(st.booleans()):
        name = draw(st.sampled_from([b"Connection", b"connection", b"Proxy-Connection"]))
        out += name + b":" + draw(ows) + draw(keep_alive) + draw(ows) + b"\r\n"
    if not draw(st.integers(0, 20)):  # over the fast path's field count (and the stored bound)
        out += b"".join(b"X-Many-%d: v\r\n" % i for i in range(draw(st.integers(95, 130))))
    return out


def body_bytes(size: int, chunked: bool, cut: int) -> bytes:
    body = bytes(range(256))[:size] if size <= 256 else b"b" * size
    if not chunked:
        return body
    parts = [body[i : i + cut] for i in range(0, len(body), max(cut, 1))]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@st.composite
def exchange(draw: st.DrawFn, last: bool) -> tuple[bytes, bytes]:
    """One request and everything answered to it, as bytes."""
    method = draw(st.sampled_from([*heads.METHODS, b"HEAD", b"GET", b"PROPFIND", b"PURGE"]))
    target = b"/" + draw(st.binary(max_size=16).map(lambda b: bytes(TARGET[c % len(TARGET)] for c in b)))
    if not draw(st.integers(0, 15)):
        target = b"http://example.com" + target
    version = b"HTTP/1.1" if draw(st.integers(0, 6)) else b"HTTP/1.0"
    size = draw(st.sampled_from([0, 0, 1, 7, 300]))
    chunked = version == b"HTTP/1.1" and draw(st.integers(0, 3)) == 0
    head = method + b" " + target + b" " + version + b"\r\n" + draw(head_fields())
    if version == b"HTTP/1.0":
        head += b"Connection: keep-alive\r\n"
    if size or chunked or draw(st.booleans()):
        head += draw(framing_fields(size, chunked))
    cut = draw(st.integers(1, 8))
    request = draw(st.sampled_from([b"", b"", b"\r\n"])) + head + b"\r\n" + body_bytes(size, chunked, cut)

    response = b""
    for interim in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
        response += b"HTTP/1.1 %d Interim\r\n" % interim + draw(head_fields()) + b"\r\n"
    status = draw(st.sampled_from([200, 200, 201, 204, 301, 304, 404, 500, 599]))
    reason = draw(st.sampled_from([b"OK", b"", b"Not Found", b"a\tb", b"\x80\xff", b" x "]))
    size = draw(st.sampled_from([0, 3, 300, 5000]))
    close_delimited = last and draw(st.integers(0, 3)) == 0
    rversion = b"HTTP/1.1" if draw(st.integers(0, 8)) else b"HTTP/1.0"
    chunked = rversion == b"HTTP/1.1" and draw(st.integers(0, 3)) == 0
    head = rversion + b" %d " % status + reason + b"\r\n" + draw(head_fields())
    if rversion == b"HTTP/1.0":
        head += b"Connection: keep-alive\r\n"
    if not close_delimited:
        head += draw(framing_fields(size, chunked))
    no_body = method == b"HEAD" or status in (204, 304)
    body = b"" if no_body else body_bytes(size, chunked and not close_delimited, cut)
    response += head + b"\r\n" + body
    return request, response


GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nxx"
REFUSED = b"HTTP/1.1 400 No\r\nContent-Length: 2\r\n\r\nno"


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, bytes]:
    n = draw(st.integers(1, 5))
    pairs = [draw(exchange(last=i == n - 1)) for i in range(n)]
    requests = b"".join(r for r, _ in pairs)
    responses = b"".join(r for _, r in pairs)
    if draw(st.integers(0, 6)) == 0:  # ends in a websocket upgrade, answered or refused
        requests += UPGRADE + GET
        responses += SWITCHED if draw(st.booleans()) else REFUSED + OK
    return requests, responses


def record(
    requests: bytes,
    responses: bytes,
    req_cuts: list[int],
    resp_cuts: list[int],
    *,
    fast: bool,
    interleave: bool = False,
) -> Any:
    """What a recorder makes of the streams cut at those points (requests first, or taking turns)."""
    split = []
    for data, cuts in ((requests, req_cuts), (responses, resp_cuts)):
        bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
        # As the socket copy loop hands them over: views of its buffer.
        split.append([memoryview(data)[lo:hi] for lo, hi in itertools.pairwise(bounds) if hi > lo])
    return record_pieces(split[0], split[1], fast=fast, interleave=interleave)


def record_pieces(
    requests: list[bytes] | list[memoryview],
    responses: list[bytes] | list[memoryview],
    *,
    fast: bool,
    interleave: bool = False,
) -> Any:
    """What a recorder makes of these pieces of each direction (requests first, or taking turns)."""
    log = RequestLog(1000)
    rec = ConnectionRecorder(log, remote="203.0.113.7:5555", body_limit=100, fast_path=fast)
    pieces = [[(rec.request, p) for p in requests], [(rec.response, p) for p in responses]]
    order = itertools.chain(*itertools.zip_longest(*pieces)) if interleave else itertools.chain(*pieces)
    for piece in order:
        if piece is not None:
            piece[0](piece[1])
    rec.close()
    return [described(e) for e in log], rec.stopped, rec.stop_reason


def described(e: Exchange) -> tuple[Any, ...]:
    messages = [e.request] if e.response is None else [e.request, e.response]
    bodies = [
        (m.headers, m.headers_truncated, bytes(m.body.data), m.body.size, m.body.complete) for m in messages
    ]
    return (
        e.id, e.method, e.target, e.host, e.version, e.status, e.reason, e.state, e.note, e.upgrade,
        e.duration_ms is None, e.replay_refusal(), e.summary()["replayable"], bodies,
    )  # fmt: skip


cuts = st.lists(st.integers(0, 1 << 16), max_size=12)


@settings(max_examples=400, deadline=None)
@given(stream=streams(), req_cuts=cuts, resp_cuts=cuts, interleave=st.booleans())
def test_fast_path_records_what_llhttp_records(
    stream: tuple[bytes, bytes], req_cuts: list[int], resp_cuts: list[int], interleave: bool
) -> None:
    requests, responses = stream
    fast = record(requests, responses, req_cuts, resp_cuts, fast=True, interleave=interleave)
    assert fast == record(requests, responses, req_cuts, resp_cuts, fast=False, interleave=interleave)
    if not interleave:  # (taking turns, an answer may come before its request is whole: both stop)
        assert fast[0], "a valid stream records its exchanges"


@settings(max_examples=400, deadline=None)
@given(
    stream=streams(),
    changes=st.lists(
        st.tuples(st.integers(0, 1 << 16), st.binary(max_size=3), st.integers(0, 3)), min_size=1, max_size=3
    ),
    side=st.booleans(),
    req_cuts=cuts,
    resp_cuts=cuts,
    interleave=st.booleans(),
)
def test_fast_path_stops_where_llhttp_stops(
    stream: tuple[bytes, bytes],
    changes: list[tuple[int, bytes, int]],
    side: bool,
    req_cuts: list[int],
    resp_cuts: list[int],
    interleave: bool,
) -> None:
    """Bytes replaced, inserted or removed anywhere in one direction: malformed or not, the same record."""
    data = bytearray(stream[side])
    for at, new, drop in changes:
        at %= len(data) + 1
        data[at : at + drop] = new
    requests, responses = (stream[0], bytes(data)) if side else (bytes(data), stream[1])
    fast = record(requests, responses, req_cuts, resp_cuts, fast=True, interleave=interleave)
    assert fast == record(requests, responses, req_cuts, resp_cuts, fast=False, interleave=interleave)


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(1, 5),
    data=st.data(),
    change=st.none() | st.tuples(st.integers(0, 1 << 16), st.binary(max_size=3), st.integers(0, 3)),
    interleave=st.booleans(),
    views=st.booleans(),
)
def test_message_pieces_record_what_llhttp_records(
    n: int,
    data: st.DataObject,
    change: tuple[int, bytes, int] | None,
    interleave: bool,
    views: bool,
) -> None:
    """Each request and each answer in a piece of its own, as a kept-alive connection brings them most
    (the recorder's shortest way takes those), as bytes (a TLS stream) or views (the socket copy loop);
    sometimes one piece has bytes changed: the same record as llhttp's."""
    pairs = [data.draw(exchange(last=i == n - 1)) for i in range(n)]
    requests, responses = [r for r, _ in pairs], [r for _, r in pairs]
    if change is not None:
        at, new, drop = change
        side = requests if data.draw(st.booleans()) else responses
        i = at % len(side)
        piece = bytearray(side[i])
        at %= len(piece) + 1
        piece[at : at + drop] = new
        side[i] = bytes(piece)
    if views:
        requests = [memoryview(bytearray(r)) for r in requests]  # type: ignore[misc]
        responses = [memoryview(bytearray(r)) for r in responses]  # type: ignore[misc]
    fast = record_pieces(requests, responses, fast=True, interleave=interleave)
    assert fast == record_pieces(requests, responses, fast=False, interleave=interleave)
    if change is None and not interleave:
        assert fast[0], "a valid stream records its exchanges"


def test_plain_messages_never_reach_llhttp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept-alive GETs and sized answers (and a HEAD) are read by the fast path alone; a chunked answer
    goes to llhttp, and the connection comes back to the fast path after it."""
    fed: list[bytes] = []
    feed = MessageParser.feed

    def counted(parser: MessageParser, data: bytes) -> None:
        fed.append(data)
        feed(parser, data)

    monkeypatch.setattr(MessageParser, "feed", counted)
    log = RequestLog(10)
    rec = ConnectionRecorder(log, remote="203.0.113.7:5555", body_limit=100)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    for i, answer in enumerate([b"Content-Length: 2\r\n\r\nok", b"Content-Length: 0\r\n\r\n"]):
        rec.request(b"GET /%d HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n" % i)
        rec.response(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n" + answer)
    rec.request(
        b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\nGET /e HTTP/1.1\r\n\r\n"
    )
    rec.response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n" + chunked)
    assert fed == [chunked]
    rec.response(b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n!")
    rec.close()
    assert fed == [chunked]
    assert [(e.target, e.status, e.state, e.response and bytes(e.response.body.data)) for e in log] == [
        ("/0", 200, State.COMPLETE, b"ok"),
        ("/1", 200, State.COMPLETE, b""),
        ("/h", 200, State.COMPLETE, b""),
        ("/c", 200, State.COMPLETE, b"abc"),
        ("/e", 201, State.COMPLETE, b"!"),
    ]


# Streams the fast path must leave to llhttp (malformed, or framed or ended otherwise), with more after.
def head(*lines: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


A1 = b"HTTP/1.1"
TRICKY = {
    "data after Connection: close": (head(b"GET / HTTP/1.1", b"Connection: close") + GET, OK + OK),
    "an answer with Connection: close, then more": (
        GET + GET,
        head(A1 + b" 200 OK", b"Connection: close", b"Content-Length: 2") + b"ok" + OK,
    ),
    "Proxy-Connection: close": (head(b"GET / HTTP/1.1", b"Proxy-Connection: close") + GET, OK + OK),
    "HTTP/1.0 without keep-alive": (head(b"GET / HTTP/1.0") + GET, OK + OK),
    "Content-Length twice": (
        head(b"POST / HTTP/1.1", b"Content-Length: 1", b"content-length: 1") + b"x" + GET,
        OK + OK,
    ),
    "Content-Length and chunked": (
        head(b"POST / HTTP/1.1", b"Content-Length: 1", b"Transfer-Encoding: chunked")
        + b"1\r\nx\r\n0\r\n\r\n"
        + GET,
        OK + OK,
    ),
    "Content-Length with a sign": (head(b"POST / HTTP/1.1", b"Content-Length: +1") + b"x" + GET, OK + OK),
    "an answer without a length": (GET + GET, head(A1 + b" 200 OK") + b"all of it" + OK),
    "obs-fold": (head(b"GET / HTTP/1.1", b"X: a", b" b") + GET, OK + OK),
    "space before the colon": (head(b"GET / HTTP/1.1", b"X : a") + GET, OK + OK),
    "bare LF": (head(b"GET / HTTP/1.1", b"X: a\nY: b") + GET, OK + OK),
    "NUL in a value": (head(b"GET / HTTP/1.1", b"X: a\x00b") + GET, OK + OK),
    "DEL in a value": (GET + GET, head(A1 + b" 200 OK", b"X: \x7f", b"Content-Length: 2") + b"ok" + OK),
    "empty field name": (head(b"GET / HTTP/1.1", b": a") + GET, OK + OK),
    "CONNECT": (head(b"CONNECT h:443 HTTP/1.1", b"Host: h:443") + GET, head(A1 + b" 200 OK") + b"xx"),
    "Upgrade without Connection": (head(b"GET / HTTP/1.1", b"Upgrade: h2c") + GET, OK + OK),
    "status 099 and 600": (
        GET + GET,
        head(A1 + b" 099 X", b"Content-Length: 2")
        + b"ok"
        + head(A1 + b" 600 X", b"Content-Length: 2")
        + b"ok",
    ),
    "status without a reason": (GET + GET, head(A1 + b" 200", b"Content-Length: 2") + b"ok" + OK),
    "CRLF between messages": (GET + b"\r\n" + GET, OK + b"\r\n" + OK),
    "a HEAD answered by a chunked head": (
        head(b"HEAD / HTTP/1.1") + GET,
        head(A1 + b" 200 OK", b"Transfer-Encoding: chunked") + OK,
    ),
    "204 and 304 with a length": (
        head(b"DELETE / HTTP/1.1") + GET + GET,
        head(A1 + b" 204 No", b"Content-Length: 9") + head(A1 + b" 304 Same", b"Content-Length: 9") + OK,
    ),
    "not HTTP": (GET, b"\x16\x03\x01 this is not HTTP\r\n\r\n"),
    "a response before any request": (b"", OK),
}


@pytest.mark.parametrize("stream", TRICKY.values(), ids=TRICKY.keys())
def test_streams_the_fast_path_leaves_to_llhttp_record_the_same(stream: tuple[bytes, bytes]) -> None:
    requests, responses = stream
    for req_cuts, resp_cuts in [([], []), (list(range(len(requests))), list(range(len(responses))))]:
        fast = record(requests, responses, req_cuts, resp_cuts, fast=True)
        assert fast == record(requests, responses, req_cuts, resp_cuts, fast=False)
