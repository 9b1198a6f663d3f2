"""The PCP codec (RFC 6887): layouts, options, IPv4-mapped addresses and the properties, without a network."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pierce.portmap import pcp
from pierce.portmap.pcp import (
    AnnounceRequest,
    AnnounceResponse,
    ErrorResponse,
    MapRequest,
    MapResponse,
    Opcode,
    Option,
    OptionCode,
    PcpParseError,
    Protocol,
    Result,
)

CLIENT = ipaddress.IPv4Address("192.168.1.20")
NONCE = bytes(range(12))


def test_map_request_layout() -> None:
    request = MapRequest(CLIENT, NONCE, Protocol.TCP, 22, 7200, 2222)
    data = pcp.encode_request(request)
    assert len(data) == 60
    assert data[:8] == bytes.fromhex("0201 0000 00001c20".replace(" ", ""))
    assert data[8:24] == b"\x00" * 10 + b"\xff\xff" + CLIENT.packed  # IPv4-mapped
    assert data[24:36] == NONCE
    assert data[36:40] == bytes.fromhex("06000000")
    assert data[40:44] == bytes.fromhex("0016 08ae".replace(" ", ""))
    assert data[44:60] == b"\x00" * 10 + b"\xff\xff" + b"\x00" * 4  # ::ffff:0.0.0.0, no preference
    assert pcp.decode_request(data) == request


def test_announce_request_is_a_bare_header() -> None:
    data = pcp.encode_request(AnnounceRequest(ipaddress.IPv6Address("2001:db8::5")))
    assert data == bytes.fromhex("02000000 00000000") + ipaddress.IPv6Address("2001:db8::5").packed
    assert pcp.decode_request(data) == AnnounceRequest(ipaddress.IPv6Address("2001:db8::5"))


def miniupnpd_answer(request: bytes, result: int, lifetime: int, epoch: int, port: int, ip: bytes) -> bytes:
    """What miniupnpd's pcpserver.c does: rewrite the request buffer in place (its options stay)."""
    out = bytearray(request)
    out[1] |= 0x80
    out[2], out[3] = 0, result
    out[4:8] = lifetime.to_bytes(4, "big")
    out[8:12] = epoch.to_bytes(4, "big")
    out[12:24] = b"\x00" * 12
    out[42:44] = port.to_bytes(2, "big")
    out[44:60] = ip
    return bytes(out)


def test_miniupnpd_style_map_answer() -> None:
    request = pcp.encode_request(
        MapRequest(CLIENT, NONCE, Protocol.UDP, 5000, 120, options=(Option(OptionCode.PREFER_FAILURE),))
    )
    answer = pcp.decode_response(
        miniupnpd_answer(request, 0, 120, 42, 5000, pcp.encode_address(ipaddress.IPv4Address("198.51.100.9")))
    )
    assert answer == MapResponse(
        Result.SUCCESS,
        120,
        42,
        NONCE,
        Protocol.UDP,
        5000,
        5000,
        ipaddress.IPv4Address("198.51.100.9"),
        (Option(OptionCode.PREFER_FAILURE),),
    )


def test_short_error_answer_and_other_versions() -> None:
    # miniupnpd answers a request shorter than 24 bytes with a bare 24-byte header.
    head = bytes.fromhex("02810003 00000000 00000009") + b"\x00" * 12
    assert pcp.decode_response(head) == ErrorResponse(Opcode.MAP, Result.MALFORMED_REQUEST, 0, 9)
    # A server of another version says which it speaks.
    v1 = bytes.fromhex("01810001 00000000 00000009") + b"\x00" * 12
    assert pcp.decode_response(v1) == ErrorResponse(Opcode.MAP, Result.UNSUPP_VERSION, 0, 9, version=1)
    # NAT-PMP's answers are not PCP's.
    with pytest.raises(PcpParseError, match="version 0"):
        pcp.decode_response(bytes.fromhex("00810001 00000007") + b"\x00" * 16)


def test_result_texts_and_transient_errors() -> None:
    assert all(pcp.result_text(code) for code in Result)
    assert "mismatch" in pcp.result_text(Result.ADDRESS_MISMATCH)
    assert pcp.result_text(200) == "unknown result code 200"
    assert Result.NO_RESOURCES in pcp.TRANSIENT and Result.NOT_AUTHORIZED not in pcp.TRANSIENT


def test_ipv4_mapped_addresses() -> None:
    v4 = ipaddress.IPv4Address("203.0.113.5")
    assert pcp.encode_address(v4) == bytes.fromhex("00000000000000000000ffffcb007105")
    assert pcp.decode_address(pcp.encode_address(v4)) == v4
    v6 = ipaddress.IPv6Address("2001:db8::1")
    assert pcp.decode_address(v6.packed) == v6
    with pytest.raises(PcpParseError):
        pcp.decode_address(b"\x00" * 4)


# -- options -------------------------------------------------------------------------------------------


def map_response_with(options: bytes) -> bytes:
    base = pcp.encode_response(MapResponse(0, 60, 1, NONCE, Protocol.TCP, 80, 8080, CLIENT))
    return base + options


def test_unknown_optional_option_is_skipped() -> None:
    answer = pcp.decode_response(map_response_with(bytes.fromhex("c8000003 aabbcc00")))
    assert isinstance(answer, MapResponse) and answer.options == ()


def test_unknown_mandatory_option_is_refused() -> None:
    with pytest.raises(PcpParseError) as caught:
        pcp.decode_response(map_response_with(bytes.fromhex("7f000000")))
    assert caught.value.result is Result.UNSUPP_OPTION


def test_an_option_the_opcode_may_not_carry_is_refused() -> None:
    data = pcp.encode_request(AnnounceRequest(CLIENT, (Option(OptionCode.PREFER_FAILURE),)))
    with pytest.raises(PcpParseError) as caught:
        pcp.decode_request(data)
    assert caught.value.result is Result.UNSUPP_OPTION


@pytest.mark.parametrize(
    "options",
    [
        bytes.fromhex("01000010") + b"\x00" * 12,  # THIRD_PARTY running past the end
        bytes.fromhex("01000004 00000000"),  # THIRD_PARTY of 4 bytes, not 16
        bytes.fromhex("02000004 00000000"),  # PREFER_FAILURE with data
        bytes.fromhex("c8000005 00000000"),  # optional, but its padding runs past the end
    ],
)
def test_malformed_options(options: bytes) -> None:
    with pytest.raises(PcpParseError) as caught:
        pcp.decode_response(map_response_with(options))
    assert caught.value.result is Result.MALFORMED_OPTION


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x02\x81", "shorter than a PCP header"),
        (b"\x02\x81" + b"\x00" * 23, "multiple of 4"),
        (b"\x02\x81" + b"\x00" * 1102, "multiple of 4"),
        (b"\x02\x01" + b"\x00" * 58, "a request"),
        (b"\x02\x81" + b"\x00" * 26, "at least 60"),
        (b"\x02\x82" + b"\x00" * 22, "does not parse"),
    ],
)
def test_bad_responses(data: bytes, why: str) -> None:
    with pytest.raises(PcpParseError, match=why):
        pcp.decode_response(data)


def test_bad_requests() -> None:
    with pytest.raises(PcpParseError) as caught:
        pcp.decode_request(b"\x03\x01" + b"\x00" * 58)
    assert caught.value.result is Result.UNSUPP_VERSION
    with pytest.raises(PcpParseError, match="all protocols"):
        pcp.decode_request(pcp.encode_request(MapRequest(CLIENT, NONCE, 0, 80, 10)))
    with pytest.raises(PcpParseError, match="lifetime 0"):
        pcp.decode_request(b"\x02\x00\x00\x00\x00\x00\x00\x01" + b"\x00" * 16)
    with pytest.raises(PcpParseError) as caught:
        pcp.decode_request(b"\x02\x05" + b"\x00" * 22)
    assert caught.value.result is Result.UNSUPP_OPCODE


def test_encoder_refuses_bad_fields() -> None:
    with pytest.raises(ValueError, match="nonce"):
        pcp.encode_request(MapRequest(CLIENT, b"short", Protocol.TCP, 80, 10))
    with pytest.raises(ValueError, match="at most 1100"):
        pcp.encode_request(AnnounceRequest(CLIENT, tuple(Option(200, b"x" * 100) for _ in range(11))))


# -- properties ----------------------------------------------------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
ports = st.integers(0, 0xFFFF)
nonces = st.binary(min_size=12, max_size=12)
addresses = st.one_of(
    st.builds(ipaddress.IPv4Address, u32),
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(lambda ip: ip.ipv4_mapped is None),
)
results = st.one_of(st.sampled_from(list(Result)), st.integers(14, 255))
map_options = st.lists(
    st.one_of(
        st.builds(Option, st.just(OptionCode.THIRD_PARTY), st.binary(min_size=16, max_size=16)),
        st.just(Option(OptionCode.PREFER_FAILURE)),
        st.builds(Option, st.just(OptionCode.FILTER), st.binary(min_size=20, max_size=20)),
    ),
    max_size=3,
).map(tuple)
protocols = st.one_of(st.sampled_from(list(Protocol)), st.integers(1, 255))

requests = st.one_of(
    st.builds(AnnounceRequest, addresses),
    st.builds(MapRequest, addresses, nonces, protocols, ports, u32, ports, addresses, map_options),
)
responses = st.one_of(
    st.builds(AnnounceResponse, results, u32, u32),
    st.builds(
        MapResponse, results, u32, u32, nonces, st.integers(0, 255), ports, ports, addresses, map_options
    ),
    st.builds(ErrorResponse, st.sampled_from([1, 2, 3, 64, 127]), results.filter(lambda r: r != 0), u32, u32),
    st.builds(
        ErrorResponse,
        st.integers(0, 127),
        st.just(Result.UNSUPP_VERSION),
        u32,
        u32,
        st.sampled_from([1, 3, 255]),
    ),
)


@given(requests)
def test_requests_round_trip(request: pcp.PcpRequest) -> None:
    assert pcp.decode_request(pcp.encode_request(request)) == request


@given(responses)
def test_responses_round_trip(response: pcp.PcpResponse) -> None:
    assert pcp.decode_response(pcp.encode_response(response)) == response


@settings(max_examples=500)
@given(
    st.one_of(
        st.binary(max_size=120), st.builds(lambda b: b"\x02\x81" + b, st.binary(min_size=22, max_size=98))
    )
)
def test_any_bytes_decode_or_raise_the_codec_error(data: bytes) -> None:
    for decode in (pcp.decode_request, pcp.decode_response):
        with contextlib.suppress(PcpParseError):
            decode(data)


@given(responses, st.data())
def test_truncated_or_extended_responses_are_rejected(response: pcp.PcpResponse, data: st.DataObject) -> None:
    wire = pcp.encode_response(response)
    cut = data.draw(st.integers(0, len(wire) - 1))
    try:
        shorter = pcp.decode_response(wire[:cut])
    except PcpParseError:
        pass
    else:  # cut at an option boundary, or a MAP error cut to its bare header: a different message
        assert shorter != response
    extra = data.draw(st.binary(min_size=1, max_size=7).filter(lambda b: len(b) % 4))
    with pytest.raises(PcpParseError):
        pcp.decode_response(wire + extra)
    if (
        isinstance(response, ErrorResponse)
        and response.version == pcp.VERSION
        and response.opcode != Opcode.MAP
    ):
        return  # an error answer to an opcode this codec does not parse: what follows the header is opaque
    with pytest.raises(PcpParseError):
        pcp.decode_response(wire + b"\x00" * 4)  # option 0: mandatory, and no option has that code


@given(requests, st.data())
def test_truncated_or_extended_requests_are_rejected(request: pcp.PcpRequest, data: st.DataObject) -> None:
    wire = pcp.encode_request(request)
    cut = data.draw(st.integers(0, len(wire) - 1))
    try:
        shorter = pcp.decode_request(wire[:cut])
    except PcpParseError:
        pass
    else:
        assert shorter != request
    extra = data.draw(st.binary(min_size=1, max_size=7).filter(lambda b: len(b) % 4))
    with pytest.raises(PcpParseError):
        pcp.decode_request(wire + extra)
    with pytest.raises(PcpParseError):
        pcp.decode_request(wire + b"\x00" * 4)
