"""The data-chunk codec of TLS data connections: any split, one byte at a time, bounds, end of data."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pierce.protocol import ProtocolError
from pierce.protocol.chunks import (
    CHUNK_HEADER_SIZE,
    END_OF_DATA,
    MAX_DATA_CHUNK,
    ONE_RECORD,
    ChunkDecoder,
    chunk,
)


def wire(*payloads: bytes, end: bool = True) -> bytes:
    out = b"".join(b"".join(bytes(p) for p in chunk(data)) for data in payloads)
    return out + (END_OF_DATA if end else b"")


def decode_all(dec: ChunkDecoder, data: bytes, splits: list[int]) -> bytes:
    got = bytearray()
    pos = 0
    for cut in [*sorted(splits), len(data)]:
        for piece in dec.feed(data[pos:cut]):
            got += piece
        pos = max(pos, cut)
    return bytes(got)


@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=6), st.data())
def test_any_split_yields_the_same_bytes(payloads: list[bytes], data: st.DataObject) -> None:
    stream = wire(*payloads)
    splits = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    dec = ChunkDecoder()
    assert decode_all(dec, stream, splits) == b"".join(payloads)
    assert dec.ended and dec.wanted == 0


def test_one_byte_at_a_time() -> None:
    payloads = [b"hello", b"x" * (ONE_RECORD + 1), b"!"]
    stream = wire(*payloads)
    dec = ChunkDecoder()
    got = bytearray()
    for i in range(len(stream)):
        assert not dec.ended
        for piece in dec.feed(stream[i : i + 1]):
            got += piece
    assert bytes(got) == b"".join(payloads)
    assert dec.ended


def test_small_data_is_one_piece_with_its_header() -> None:
    [piece] = chunk(b"abc")
    assert piece == b"\0\0\0\3abc"
    header, body = chunk(b"y" * (ONE_RECORD + 1))
    assert header == (ONE_RECORD + 1).to_bytes(4, "big") and len(body) == ONE_RECORD + 1


def test_large_writes_are_split_at_the_chunk_limit() -> None:
    data = bytes(range(256)) * ((2 * MAX_DATA_CHUNK + 10) // 256 + 1)
    pieces = chunk(data)
    headers = [int.from_bytes(bytes(p), "big") for p in pieces[::2]]
    assert max(headers) == MAX_DATA_CHUNK and sum(headers) == len(data)
    dec = ChunkDecoder()
    assert decode_all(dec, wire(data), []) == data


def test_empty_data_is_not_a_chunk() -> None:
    with pytest.raises(ValueError, match="end-of-data"):
        chunk(b"")


def test_exact_reads_return_the_input_uncopied() -> None:
    dec = ChunkDecoder()
    assert dec.wanted == CHUNK_HEADER_SIZE and dec.in_header
    assert dec.feed((1000).to_bytes(4, "big")) == []
    assert dec.wanted == 1000 and not dec.in_header
    payload = b"p" * 600
    [out] = dec.feed(payload)
    assert out is payload
    assert dec.wanted == 400 and not dec.at_boundary


def test_oversized_chunk_is_refused_at_its_header() -> None:
    dec = ChunkDecoder(max_chunk=100)
    with pytest.raises(ProtocolError, match="101 bytes exceeds 100"):
        dec.feed((101).to_bytes(4, "big"))


def test_data_after_the_end_marker_is_refused() -> None:
    dec = ChunkDecoder()
    with pytest.raises(ProtocolError, match="after the end-of-data marker"):
        dec.feed(END_OF_DATA + b"\0")
    dec = ChunkDecoder()
    dec.feed(END_OF_DATA)
    assert dec.ended and dec.wanted == 0 and dec.feed(b"") == []
    with pytest.raises(ProtocolError):
        dec.feed(b"x")


def test_boundary_tracking() -> None:
    dec = ChunkDecoder()
    assert dec.at_boundary
    dec.feed(b"\0\0")
    assert not dec.at_boundary and dec.in_header and dec.wanted == 2
    dec.feed(b"\0\2a")
    assert not dec.at_boundary and dec.wanted == 1
    dec.feed(b"b")
    assert dec.at_boundary and dec.in_header


def test_header_fast_path_matches_feed() -> None:
    fast, slow = ChunkDecoder(), ChunkDecoder()
    fast.header((300).to_bytes(4, "big"))
    slow.feed((300).to_bytes(4, "big"))
    assert (fast.left, fast.ended) == (slow.left, slow.ended) == (300, False)
    fast.left = 0
    fast.header(END_OF_DATA)
    assert fast.ended and fast.wanted == 0
    with pytest.raises(ProtocolError, match="exceeds"):
        ChunkDecoder(max_chunk=10).header((11).to_bytes(4, "big"))
    # Not at a boundary (payload still due): the general path decides, here treating it as payload.
    mid = ChunkDecoder()
    mid.header((2).to_bytes(4, "big"))
    mid.header(b"ab\0\0")
    assert mid.left == 0 and not mid.ended and mid.wanted == 2
