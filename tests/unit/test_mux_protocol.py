"""The multiplexing protocol, sans-I/O: two `MuxState`s exchanging frames, checked against what each
stream sent; every rule a peer may break, broken once."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pierce.protocol.errors import ProtocolError
from pierce.protocol.mux import (
    HEADER,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_FRAME,
    FrameType,
    GoAway,
    MuxState,
    PingReceived,
    ResetCode,
    StreamData,
    StreamOpened,
    StreamReset,
    WindowOpened,
)


def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split bytes written by one side into (header, payload) pairs, as a reader reads them."""
    out = []
    pos = 0
    while pos < len(data):
        header = data[pos : pos + HEADER_SIZE]
        length = HEADER.unpack(header)[3]
        out.append((header, data[pos + HEADER_SIZE : pos + HEADER_SIZE + length]))
        pos += HEADER_SIZE + length
    return out


def deliver(state: MuxState, data: bytes) -> list[object]:
    events: list[object] = []
    for header, payload in frames(data):
        events += state.receive(header, payload)
    return events


def test_a_stream_carries_bytes_and_half_closes_both_ways() -> None:
    client, server = MuxState(initiator=True), MuxState(initiator=False)
    sid, wire = client.open_frame()
    assert sid == 1
    wire += client.data_frame(sid, b"hello") + client.data_header(sid, 0, fin=True)
    assert deliver(server, wire) == [
        StreamOpened(1),
        StreamData(1, b"hello", False),
        StreamData(1, b"", True),
    ]
    assert server.consumed(1, 5) == b""  # far below half a window: no update yet
    back = server.data_frame(1, b"world", fin=True)
    assert not server.is_open(1)  # both FINs crossed and everything taken: gone on this side
    assert deliver(client, back) == [StreamData(1, b"world", True)]
    assert client.is_open(1)  # until its reader takes the bytes
    client.consumed(1, 5)
    assert not client.is_open(1) and len(client) == 0


def test_ids_alternate_by_side_and_only_grow() -> None:
    client, server = MuxState(initiator=True), MuxState(initiator=False)
    assert [client.open_frame()[0] for _ in range(3)] == [1, 3, 5]
    assert [server.open_frame()[0] for _ in range(2)] == [2, 4]
    fresh = MuxState(initiator=False)
    deliver(fresh, HEADER.pack(FrameType.OPEN, 0, 5, 0))
    with pytest.raises(ProtocolError, match="out of order"):
        deliver(fresh, HEADER.pack(FrameType.OPEN, 0, 3, 0))
    with pytest.raises(ProtocolError, match="wrong side"):
        deliver(fresh, HEADER.pack(FrameType.OPEN, 0, 8, 0))


def test_credit_comes_back_when_half_a_window_was_taken() -> None:
    client, server = MuxState(initiator=True), MuxState(initiator=False)
    sid, wire = client.open_frame()
    deliver(server, wire)
    sent = 0
    while client.send_window(sid):
        n = min(MAX_FRAME, client.send_window(sid))
        deliver(server, client.data_frame(sid, bytes(n)))
        sent += n
    assert sent == INITIAL_WINDOW
    with pytest.raises(ValueError, match="window"):
        client.data_frame(sid, b"x")
    assert server.consumed(sid, INITIAL_WINDOW // 2 - 1) == b""
    update = server.consumed(sid, 1)
    assert deliver(client, update) == [WindowOpened(sid, INITIAL_WINDOW // 2)]
    assert client.send_window(sid) == INITIAL_WINDOW // 2


@pytest.mark.parametrize("seed", range(5))
def test_a_bulk_transfer_never_outruns_the_window(seed: int) -> None:
    """8 MiB through one stream, the receiver taking what arrived in random bites: the sender always
    has credit again, never more than the receiver allows (it would raise), every byte arrives."""
    rng = random.Random(seed)
    client, server = MuxState(initiator=True), MuxState(initiator=False)
    sid, wire = client.open_frame()
    deliver(server, wire)
    payload = rng.randbytes(8 * 1024 * 1024)
    sent = taken = 0
    received = bytearray()
    while taken < len(payload):
        progress = (sent, taken)
        while sent < len(payload) and client.send_window(sid):
            n = min(client.send_window(sid), rng.choice([1000, 65536, MAX_FRAME]), len(payload) - sent)
            for ev in deliver(server, client.data_frame(sid, payload[sent : sent + n])):
                assert isinstance(ev, StreamData)
                received += ev.data
            sent += n
        bite = min(len(received) - taken, rng.choice([1, 4096, 100_000, INITIAL_WINDOW]))
        taken += bite
        for ev in deliver(client, server.consumed(sid, bite)):
            assert isinstance(ev, WindowOpened)
        assert (sent, taken) != progress, f"stalled: {sent} sent, {taken} taken, no credit left"
    assert bytes(received) == payload


def test_data_beyond_the_window_is_a_protocol_error() -> None:
    server = MuxState(initiator=False)
    deliver(server, HEADER.pack(FrameType.OPEN, 0, 1, 0))
    chunk = HEADER.pack(FrameType.DATA, 0, 1, MAX_FRAME) + bytes(MAX_FRAME)
    for _ in range(INITIAL_WINDOW // MAX_FRAME):
        deliver(server, chunk)
    with pytest.raises(ProtocolError, match="beyond its window"):
        deliver(server, HEADER.pack(FrameType.DATA, 0, 1, 1) + b"x")


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (HEADER.pack(9, 0, 1, 0), "unknown mux frame type"),
        (HEADER.pack(FrameType.DATA, 0, 1, MAX_FRAME + 1), "exceeds"),
        (HEADER.pack(FrameType.OPEN, 0, 3, 1) + b"x", "OPEN frame with a payload"),
        (HEADER.pack(FrameType.WINDOW, 0, 1, 3) + b"xyz", "4 expected"),
        (HEADER.pack(FrameType.WINDOW, 0, 1, 4) + struct.pack(">I", 0), "WINDOW of 0"),
        (HEADER.pack(FrameType.WINDOW, 0, 1, 4) + struct.pack(">I", 2**31), "WINDOW of"),
        (HEADER.pack(FrameType.PING, 0, 0, 7) + bytes(7), "PING frame"),
        (HEADER.pack(FrameType.GOAWAY, 0, 0, 3) + bytes(3), "GOAWAY frame"),
        (HEADER.pack(FrameType.DATA, 0, 7, 1) + b"x", "never opened"),
        (HEADER.pack(FrameType.DATA, 0, 0, 1) + b"x", "never opened"),
        (HEADER.pack(FrameType.DATA, 0, 1, 0), "empty mux DATA"),
    ],
)
def test_each_broken_rule_is_a_protocol_error(frame: bytes, error: str) -> None:
    server = MuxState(initiator=False)
    deliver(server, HEADER.pack(FrameType.OPEN, 0, 1, 0))
    with pytest.raises(ProtocolError, match=error):
        deliver(server, frame)


def test_data_after_fin_is_a_protocol_error() -> None:
    server = MuxState(initiator=False)
    deliver(server, HEADER.pack(FrameType.OPEN, 0, 1, 0) + HEADER.pack(FrameType.DATA, FLAG_FIN := 1, 1, 0))
    with pytest.raises(ProtocolError, match="after its FIN"):
        deliver(server, HEADER.pack(FrameType.DATA, FLAG_FIN, 1, 1) + b"x")


def test_frames_for_a_stream_that_ended_here_are_dropped() -> None:
    client, server = MuxState(initiator=True), MuxState(initiator=False)
    sid, wire = client.open_frame()
    deliver(server, wire)
    reset = server.reset_frame(sid, ResetCode.INTERNAL)
    late = client.data_frame(sid, b"in flight")  # sent before the RESET arrived
    assert deliver(server, late) == []
    assert deliver(client, reset) == [StreamReset(sid, ResetCode.INTERNAL)]
    assert not client.is_open(sid) and not server.is_open(sid)
    assert server.reset_frame(sid) == b""  # resetting twice sends nothing


def test_opens_over_the_limit_are_refused_not_fatal() -> None:
    client, server = MuxState(initiator=True), MuxState(initiator=False, max_streams=2)
    wire = b"".join(client.open_frame()[1] for _ in range(3))
    assert deliver(server, wire) == [StreamOpened(1), StreamOpened(3)]
    refusals = server.take_refusals()
    assert server.take_refusals() == b""
    assert deliver(client, refusals) == [StreamReset(5, ResetCode.REFUSED)]
    assert deliver(server, client.data_frame(1, b"ok")) == [StreamData(1, b"ok", False)]
    # A place freed is a place for the next stream.
    deliver(client, server.reset_frame(3))
    sid, wire = client.open_frame()
    assert deliver(server, wire) == [StreamOpened(sid)]


def test_ping_and_goaway() -> None:
    client, server = MuxState(initiator=True), MuxState(initiator=False)
    assert deliver(server, client.ping_frame(b"12345678")) == [PingReceived(b"12345678", False)]
    assert deliver(client, server.ping_frame(b"12345678", ack=True)) == [PingReceived(b"12345678", True)]
    goodbye = server.goaway_frame(ResetCode.PROTOCOL, "bad frame" + "!" * 1000)
    (event,) = deliver(client, goodbye)
    assert (
        isinstance(event, GoAway)
        and event.code == ResetCode.PROTOCOL
        and event.reason.startswith("bad frame")
    )
    assert client.going_away and server.going_away
    with pytest.raises(ProtocolError, match="going away"):
        client.open_frame()


# -- a model: random operations on several streams, both directions ----------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["open", "send", "fin", "take", "reset", "flush"]),
        st.integers(0, 7),
        st.sampled_from([1, 1000, 65536, MAX_FRAME, INITIAL_WINDOW]),
        st.booleans(),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops)
def test_random_operations_deliver_exactly_what_was_sent(ops: list[tuple[str, int, int, bool]]) -> None:
    """Whatever the order of opens, writes (within the window), FINs, reads, resets and deliveries,
    each stream's receiver gets exactly the bytes its sender wrote, in order, and a FIN only after
    them; no side ever raises a protocol error for the other's legal frames."""
    sides = {True: MuxState(initiator=True), False: MuxState(initiator=False)}
    wires: dict[bool, bytearray] = {True: bytearray(), False: bytearray()}  # frames on their way from side
    sent: dict[tuple[bool, int], bytearray] = {}
    got: dict[tuple[bool, int], bytearray] = {}  # (receiving side, stream)
    unread: dict[tuple[bool, int], int] = {}
    fins: dict[tuple[bool, int], bool] = {}
    reset: set[int] = set()
    streams: list[int] = []
    counter = 0

    def flush(frm: bool) -> None:
        data = bytes(wires[frm])
        wires[frm].clear()
        for ev in deliver(sides[not frm], data):
            if isinstance(ev, StreamData):
                key = (not frm, ev.stream)
                assert not fins.get(key), "data after FIN"
                got.setdefault(key, bytearray()).extend(ev.data)
                unread[key] = unread.get(key, 0) + len(ev.data)
                fins[key] = ev.fin
            elif isinstance(ev, StreamReset):
                reset.add(ev.stream)

    for op, pick, size, side in ops:
        state = sides[side]
        if op == "open":
            sid, frame = state.open_frame()
            wires[side] += frame
            streams.append(sid)
            continue
        if op == "flush" or not streams:
            flush(side)
            continue
        sid = streams[pick % len(streams)]
        if sid in reset or not state.is_open(sid):
            continue
        if op == "send":
            room = min(state.send_window(sid), MAX_FRAME, size)
            if room:
                counter += 1
                data = (counter.to_bytes(4, "big") * (room // 4 + 1))[:room]
                wires[side] += state.data_frame(sid, data)
                sent.setdefault((side, sid), bytearray()).extend(data)
        elif op == "fin":
            with contextlib.suppress(ValueError):  # FIN sent already
                wires[side] += state.data_header(sid, 0, fin=True)
        elif op == "take":
            key = (side, sid)
            n = min(unread.get(key, 0), size)
            if n:
                unread[key] -= n
                wires[side] += state.consumed(sid, n)
        elif op == "reset":
            frame = state.reset_frame(sid, ResetCode.CLOSED)
            wires[side] += frame
            reset.add(sid)
    flush(True)
    flush(False)
    for (frm, sid), data in sent.items():
        if sid in reset:
            assert bytes(got.get((not frm, sid), b"")) == bytes(data)[: len(got.get((not frm, sid), b""))]
        else:
            assert bytes(got.get((not frm, sid), b"")) == bytes(data)
