"""The request inspector's recorder on byte streams: split anywhere, kept alive, chunked, pipelined,
HEAD/204/304, interim answers, upgrades, bounds; and the relay's taps that feed it."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_relay import exchange, tcp_pair

from pierce import relay as relay_mod
from pierce.inspect.inspector import request_bytes
from pierce.inspect.record import (
    BYTEWISE_BUDGET,
    MAX_STORED_FIELDS,
    ConnectionRecorder,
    RequestLog,
    State,
)
from pierce.relay import RelayMode, SocketEnd, StreamEnd, relay

# A kept-alive sequence: a GET with a sized answer, a POST with a sized body answered chunked, a chunked
# upload answered 204, a HEAD answered with a Content-Length but no body, a conditional GET answered 304.
REQUESTS = (
    b"GET /one?x=1 HTTP/1.1\r\nHost: nas.example.com\r\nUser-Agent: t\r\n\r\n"
    b"POST /form HTTP/1.1\r\nHost: nas.example.com\r\nContent-Length: 11\r\n\r\nhello=world"
    b"PUT /up HTTP/1.1\r\nHost: nas.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nabcde\r\n3\r\nfgh\r\n0\r\n\r\n"
    b"HEAD /big HTTP/1.1\r\nHost: nas.example.com\r\n\r\n"
    b'GET /cached HTTP/1.1\r\nHost: nas.example.com\r\nIf-None-Match: "v1"\r\n\r\n'
)
RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfirst"
    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nmade\r\n6\r\n: form\r\n0\r\n\r\n"
    b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\n\r\n"
    b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 99\r\n\r\n'
)
EXPECTED = [
    ("GET", "/one?x=1", 200, b"", b"first"),
    ("POST", "/form", 201, b"hello=world", b"made: form"),
    ("PUT", "/up", 204, b"abcdefgh", b""),
    ("HEAD", "/big", 200, b"", b""),
    ("GET", "/cached", 304, b"", b""),
]


def recorder(size: int = 50, body_limit: int = 4096) -> tuple[ConnectionRecorder, RequestLog]:
    log = RequestLog(size)
    return ConnectionRecorder(log, remote="203.0.113.7:5555", body_limit=body_limit), log


def feed(rec: ConnectionRecorder, direction: str, data: bytes, cuts: list[int]) -> None:
    side = rec.request if direction == "request" else rec.response
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            side(memoryview(data)[lo:hi])  # the socket copy loop hands over views of its buffer


def recorded(log: RequestLog) -> list[tuple[Any, ...]]:
    out = []
    for e in log:
        assert e.response is not None, e.summary()
        assert e.state is State.COMPLETE, e.summary()
        out.append((e.method, e.target, e.status, bytes(e.request.body.data), bytes(e.response.body.data)))
    return out


def check_sequence(log: RequestLog) -> None:
    assert recorded(log) == EXPECTED
    first = next(iter(log))
    assert first.host == "nas.example.com"
    assert first.remote == "203.0.113.7:5555"
    assert ("User-Agent", "t") in first.request.headers
    assert first.response is not None and ("Content-Type", "text/plain") in first.response.headers
    assert [e.id for e in log] == [1, 2, 3, 4, 5]
    assert all(e.duration_ms is not None and e.duration_ms >= 0 for e in log)


def test_keep_alive_sequence_one_exchange_at_a_time() -> None:
    rec, log = recorder()
    req_parts = _split_messages(REQUESTS, [b"GET /one", b"POST ", b"PUT ", b"HEAD ", b"GET /cached"])
    resp_starts = [b"HTTP/1.1 200 OK\r\nContent-Type", b"HTTP/1.1 201", b"HTTP/1.1 204",
                   b"HTTP/1.1 200 OK\r\nContent-Length: 123456", b"HTTP/1.1 304"]  # fmt: skip
    resp_parts = _split_messages(RESPONSES, resp_starts)
    for req, resp in zip(req_parts, resp_parts, strict=True):
        rec.request(req)
        rec.response(resp)
    rec.close()
    check_sequence(log)


def _split_messages(stream: bytes, starts: list[bytes]) -> list[bytes]:
    offsets = [stream.index(s) for s in starts] + [len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(offsets)]


def test_split_in_two_at_every_boundary() -> None:
    """Every request byte stream cut in two at every offset, every response stream likewise (pipelined:
    all requests first), including a HEAD answered within the bytes of the answers before it."""
    for cut in range(len(REQUESTS) + 1):
        rec, log = recorder()
        feed(rec, "request", REQUESTS, [cut])
        feed(rec, "response", RESPONSES, [])
        rec.close()
        check_sequence(log)
    for cut in range(len(RESPONSES) + 1):
        rec, log = recorder()
        feed(rec, "request", REQUESTS, [])
        feed(rec, "response", RESPONSES, [cut])
        rec.close()
        check_sequence(log)


@settings(max_examples=300, deadline=None)
@given(
    req_cuts=st.lists(st.integers(0, len(REQUESTS)), max_size=30),
    resp_cuts=st.lists(st.integers(0, len(RESPONSES)), max_size=30),
)
def test_any_split_records_the_same(req_cuts: list[int], resp_cuts: list[int]) -> None:
    rec, log = recorder()
    feed(rec, "request", REQUESTS, req_cuts)
    feed(rec, "response", RESPONSES, resp_cuts)
    rec.close()
    check_sequence(log)


def test_one_byte_at_a_time() -> None:
    rec, log = recorder()
    feed(rec, "request", REQUESTS, list(range(len(REQUESTS))))
    feed(rec, "response", RESPONSES, list(range(len(RESPONSES))))
    rec.close()
    check_sequence(log)


def test_interim_answers_are_skipped() -> None:
    rec, log = recorder()
    rec.request(b"POST /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    rec.response(b"HTTP/1.1 100 Continue\r\n\r\n")
    rec.request(b"abc")
    rec.response(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    (e,) = log
    assert (e.status, bytes(e.request.body.data), e.state) == (200, b"abc", State.COMPLETE)
    assert e.response is not None and bytes(e.response.body.data) == b"ok"


def test_interim_answer_to_head() -> None:
    rec, log = recorder()
    rec.request(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\n\r\n")
    rec.response(b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
    rec.response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ny")
    assert [(e.method, e.status, e.state) for e in log] == [
        ("HEAD", 200, State.COMPLETE),
        ("GET", 200, State.COMPLETE),
    ]


def test_websocket_upgrade_recorded_then_parsing_stops() -> None:
    rec, log = recorder()
    rec.request(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x85frame"
    )
    rec.response(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"
    )
    rec.request(b"GET /not-http HTTP/1.1\r\n\r\n")  # websocket payload that looks like HTTP: not recorded
    rec.response(b"\x00\xff garbage")
    rec.close()
    (e,) = log
    assert (e.method, e.target, e.status, e.state) == ("GET", "/ws", 101, State.UPGRADED)
    assert e.upgrade and e.replay_refusal()
    assert rec.stopped and rec.stop_reason == ""


def test_refused_upgrade_goes_on_as_http() -> None:
    rec, log = recorder()
    rec.request(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    rec.request(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")  # sent before the answer came
    rec.response(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!"
    )
    rec.close()
    assert [(e.target, e.status, e.state) for e in log] == [
        ("/ws", 400, State.COMPLETE),
        ("/next", 200, State.COMPLETE),
    ]


def test_large_bodies_are_previewed_and_marked_truncated() -> None:
    rec, log = recorder(body_limit=15)
    body = bytes(range(256)) * 40  # binary, 10240 bytes
    rec.request(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    text = ("é" * 20).encode()  # 40 bytes: the preview cuts inside a character
    rec.response(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(text) + text)
    (e,) = log
    req = e.request.to_json()["body"]
    assert (req["size"], req["captured"], req["truncated"], req["complete"]) == (10240, 15, True, True)
    assert req["binary"] and req["encoding"] == "base64"
    assert "larger than the recorded preview" in e.replay_refusal()
    assert e.response is not None
    resp = e.response.to_json()["body"]
    assert resp["truncated"] and not resp["binary"] and resp["data"] == "é" * 7


def test_a_body_never_seen_to_its_end_is_not_replayable() -> None:
    rec, log = recorder()
    rec.request(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    rec.close()
    (e,) = log
    assert e.state is State.INCOMPLETE and "before a response" in e.note
    assert "not seen to the end" in e.replay_refusal()


def test_header_fields_are_bounded() -> None:
    rec, log = recorder()
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(MAX_STORED_FIELDS + 50))
    rec.request(b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n")
    rec.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    (e,) = log
    assert len(e.request.headers) == MAX_STORED_FIELDS and e.request.headers_truncated
    assert "header fields" in e.replay_refusal()


def test_close_delimited_and_cut_responses() -> None:
    rec, log = recorder()
    rec.request(b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n")
    rec.response(b"HTTP/1.0 200 OK\r\n\r\nall of it")
    rec.close()
    (e,) = log
    assert e.state is State.COMPLETE and e.response is not None
    assert bytes(e.response.body.data) == b"all of it"

    rec, log = recorder()
    rec.request(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    rec.response(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
    rec.close()
    (e,) = log
    assert e.state is State.INCOMPLETE and "before the response did" in e.note


def test_garbage_stops_recording_without_raising() -> None:
    rec, log = recorder()
    rec.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rec.response(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    rec.response(b"HTTP/1.1 200 OK\r\n\r\n")  # ignored: the connection is no longer followed
    rec.request(b"\x00\x01\x02")
    rec.close()
    (e,) = log
    assert rec.stopped and rec.stop_reason
    assert e.state is State.INCOMPLETE and e.note.startswith("not recorded further")


def test_head_pipelined_behind_a_long_answer_stops_within_its_budget() -> None:
    """llhttp reads a chunked answer: with a HEAD behind it, a byte at a time, within a budget."""
    rec, log = recorder()
    rec.request(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\nHEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
    size = 2 * BYTEWISE_BUDGET
    rec.response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % size + b"z" * size)
    rec.close()
    assert [e.state for e in log] == [State.INCOMPLETE, State.INCOMPLETE]
    assert "pipelined" in rec.stop_reason


def test_head_pipelined_behind_a_long_sized_answer_is_recorded() -> None:
    """The fast path counts a sized answer: a HEAD behind it costs nothing, however long the answer."""
    rec, log = recorder()
    rec.request(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\nHEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
    size = 2 * BYTEWISE_BUDGET
    rec.response(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size)
    rec.response(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    rec.close()
    assert [(e.method, e.state) for e in log] == [("GET", State.COMPLETE), ("HEAD", State.COMPLETE)]
    assert [e.response.body.size for e in log if e.response is not None] == [size, 0]


def test_ring_keeps_the_last_n() -> None:
    rec, log = recorder(size=5)
    for i in range(12):
        rec.request(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        rec.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [e.id for e in log] == [8, 9, 10, 11, 12]
    assert [e.target for e in log] == ["/7", "/8", "/9", "/10", "/11"]
    assert log.get(3) is None and log.get(12) is not None


def test_too_many_unanswered_requests_stop_recording() -> None:
    rec, log = recorder(size=1000)
    rec.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 100)
    assert rec.stopped and "awaiting" in rec.stop_reason
    assert len(log) == 64


def test_replayed_request_is_framed_again() -> None:
    rec, log = recorder()
    feed(rec, "request", REQUESTS, [])
    feed(rec, "response", RESPONSES, [])
    put = next(e for e in log if e.method == "PUT")
    again = request_bytes(put)
    assert again.endswith(b"\r\n\r\n8\r\nabcdefgh\r\n0\r\n\r\n")
    rec2, log2 = recorder()
    rec2.request(again)
    (e,) = log2
    assert bytes(e.request.body.data) == b"abcdefgh" and e.request.body.complete
    assert e.request.headers == put.request.headers


# -- the relay's taps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["splice", "copy", "stream"])
async def test_taps_see_every_byte_in_order(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if mode == "splice" and not relay_mod.HAVE_SPLICE:
        pytest.skip("no splice on this platform")
    monkeypatch.setattr(relay_mod, "FORCED_MODE", mode if mode != "stream" else "")
    outer_a, inner_a = await tcp_pair()
    inner_b, outer_b = await tcp_pair()
    a_data = random.Random(5).randbytes(3_000_001)
    b_data = random.Random(6).randbytes(1_000_003)
    seen: dict[str, Any] = {"a": hashlib.sha256(), "b": hashlib.sha256()}
    if mode == "stream":
        ra, wa = await asyncio.open_connection(sock=inner_a)
        rb, wb = await asyncio.open_connection(sock=inner_b)
        ends: tuple[relay_mod.End, relay_mod.End] = (StreamEnd(ra, wa), StreamEnd(rb, wb))
    else:
        ends = (SocketEnd(inner_a), SocketEnd(inner_b))
    task = asyncio.create_task(
        relay(*ends, taps=(lambda d: seen["a"].update(bytes(d)), lambda d: seen["b"].update(bytes(d))))
    )
    got_at_a, got_at_b = await exchange(outer_a, outer_b, a_data, b_data)
    stats = await task
    assert got_at_b == a_data and got_at_a == b_data
    assert seen["a"].digest() == hashlib.sha256(a_data).digest()
    assert seen["b"].digest() == hashlib.sha256(b_data).digest()
    # A tapped direction cannot splice: the bytes pass through Python.
    assert stats.mode is (RelayMode.STREAM if mode == "stream" else RelayMode.COPY)
    outer_a.close()
    outer_b.close()
