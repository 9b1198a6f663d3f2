"""The NAT-PMP codec (RFC 6886), the epoch check and the gateway lookup, without a network."""

from __future__ import annotations

import contextlib
import ipaddress
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pierce.portmap import natpmp
from pierce.portmap.epoch import EpochTracker
from pierce.portmap.gateway import NoGateway, default_gateway, parse_proc_net_route
from pierce.portmap.natpmp import (
    ErrorResponse,
    ExternalAddressRequest,
    ExternalAddressResponse,
    MapRequest,
    MapResponse,
    NatPmpParseError,
    Opcode,
    Result,
)

# -- the layouts of RFC 6886 section 3, byte for byte ---------------------------------------------------


def test_external_address_request_is_two_bytes() -> None:
    assert natpmp.encode_request(ExternalAddressRequest()) == b"\x00\x00"
    assert natpmp.decode_request(b"\x00\x00") == ExternalAddressRequest()


def test_map_request_layout() -> None:
    # TCP, internal 22, suggested external 2222, two hours (the lifetime RFC 6886 section 3.3 recommends).
    data = natpmp.encode_request(MapRequest(Opcode.MAP_TCP, 22, 2222, 7200))
    assert data == bytes.fromhex("0002 0000 0016 08ae 00001c20".replace(" ", ""))
    assert natpmp.decode_request(data) == MapRequest(Opcode.MAP_TCP, 22, 2222, 7200)


def test_external_address_response_layout() -> None:
    data = bytes.fromhex("0080 0000 00000e10 c6336407".replace(" ", ""))
    assert natpmp.decode_response(data) == ExternalAddressResponse(
        Result.SUCCESS, 3600, ipaddress.IPv4Address("198.51.100.7")
    )


def test_map_response_layout() -> None:
    data = bytes.fromhex("0081 0000 0000003c 1f90 c350 00000e10".replace(" ", ""))
    assert natpmp.decode_response(data) == MapResponse(Opcode.MAP_UDP, Result.SUCCESS, 60, 8080, 50000, 3600)


def test_unsupported_version_answer_to_a_pcp_request() -> None:
    # What miniupnpd (natpmp.c) sends back to a PCP (version 2) MAP request: 8 bytes, opcode 1 + 128.
    answer = natpmp.decode_response(bytes.fromhex("00810001 00000007"))
    assert answer == ErrorResponse(1, Result.UNSUPPORTED_VERSION, 7)


def test_map_error_keeps_its_fields() -> None:
    # A refused mapping is still a 16-byte answer (miniupnpd: result 2 with the ports).
    data = natpmp.encode_response(MapResponse(Opcode.MAP_TCP, Result.NOT_AUTHORIZED, 5, 22, 0, 0))
    answer = natpmp.decode_response(data)
    assert isinstance(answer, MapResponse) and answer.result is Result.NOT_AUTHORIZED


def test_result_texts() -> None:
    assert all(natpmp.result_text(code) for code in Result)
    assert "refused" in natpmp.result_text(2)
    assert natpmp.result_text(77) == "unknown result code 77"
    answer = natpmp.decode_response(bytes.fromhex("0080004d 00000001"))
    assert answer == ErrorResponse(0, 77, 1)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "shorter"),
        (b"\x00\x80\x00", "shorter"),
        (bytes.fromhex("01800000 00000001 01020304"), "version 1"),
        (bytes.fromhex("00000000 00000001 01020304"), "a request"),
        (bytes.fromhex("00800000 00000001"), "result success"),
        (bytes.fromhex("00800000 00000001 01020304 00"), "12 bytes"),
        (bytes.fromhex("00810000 00000001 00160016 000000"), "16 bytes"),
        (bytes.fromhex("00830000 00000001 00000000"), "does not define"),
    ],
)
def test_bad_responses_say_what_is_wrong(data: bytes, why: str) -> None:
    with pytest.raises(NatPmpParseError, match=why):
        natpmp.decode_response(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",
        b"\x01\x00",
        b"\x00\x00\x00",
        b"\x00\x80",
        b"\x00\x03",
        bytes.fromhex("000100010016001600000001"),
    ],
)
def test_bad_requests(data: bytes) -> None:
    with pytest.raises(NatPmpParseError):
        natpmp.decode_request(data)


def test_encoder_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="internal port"):
        natpmp.encode_request(MapRequest(Opcode.MAP_UDP, 70000, 0, 1))
    with pytest.raises(ValueError, match="MAP_UDP or MAP_TCP"):
        natpmp.encode_request(MapRequest(Opcode.EXTERNAL_ADDRESS, 1, 0, 1))


# -- properties ----------------------------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
results = st.one_of(st.sampled_from(list(Result)), st.integers(6, 0xFFFF))
map_opcodes = st.sampled_from([Opcode.MAP_UDP, Opcode.MAP_TCP])
requests = st.one_of(st.just(ExternalAddressRequest()), st.builds(MapRequest, map_opcodes, ports, ports, u32))
responses = st.one_of(
    st.builds(ExternalAddressResponse, results, u32, st.builds(ipaddress.IPv4Address, u32)),
    st.builds(MapResponse, map_opcodes, results, u32, ports, ports, u32),
    st.builds(ErrorResponse, st.integers(0, 127), results.filter(lambda r: r != 0), u32),
)


@given(requests)
def test_requests_round_trip(request: natpmp.NatPmpRequest) -> None:
    assert natpmp.decode_request(natpmp.encode_request(request)) == request


@given(responses)
def test_responses_round_trip(response: natpmp.NatPmpResponse) -> None:
    assert natpmp.decode_response(natpmp.encode_response(response)) == response


@settings(max_examples=500)
@given(st.binary(max_size=40))
def test_any_bytes_decode_or_raise_the_codec_error(data: bytes) -> None:
    for decode in (natpmp.decode_request, natpmp.decode_response):
        with contextlib.suppress(NatPmpParseError):
            decode(data)


@given(responses, st.data())
def test_truncated_or_extended_responses_are_rejected(
    response: natpmp.NatPmpResponse, data: st.DataObject
) -> None:
    wire = natpmp.encode_response(response)
    cut = data.draw(st.integers(0, len(wire) - 1))
    if not (cut == 8 and response.result != Result.SUCCESS):  # an 8-byte error answer is a message of its own
        with pytest.raises(NatPmpParseError):
            natpmp.decode_response(wire[:cut])
    longer = wire + data.draw(st.binary(min_size=1, max_size=8))
    if isinstance(response, ErrorResponse) and len(longer) in (12, 16):
        # The 8-byte error form grown to the length of a full answer: that full answer, or an error.
        with contextlib.suppress(NatPmpParseError):
            assert natpmp.decode_response(longer) != response
        return
    with pytest.raises(NatPmpParseError):
        natpmp.decode_response(longer)


@given(requests, st.data())
def test_truncated_or_extended_requests_are_rejected(
    request: natpmp.NatPmpRequest, data: st.DataObject
) -> None:
    wire = natpmp.encode_request(request)
    with pytest.raises(NatPmpParseError):
        natpmp.decode_request(wire[: data.draw(st.integers(0, len(wire) - 1))])
    with pytest.raises(NatPmpParseError):
        natpmp.decode_request(wire + data.draw(st.binary(min_size=1, max_size=8)))


# -- the epoch (RFC 6887 section 8.5, RFC 6886 section 3.6) ---------------------------------------------


def test_epoch_that_keeps_time_is_no_restart() -> None:
    epochs = EpochTracker()
    assert not epochs.observe(1000, 50.0)
    assert not epochs.observe(1060, 110.0)
    assert not epochs.observe(1061, 110.5)  # rounding: the gateway counts whole seconds
    assert not epochs.observe(4000, 3050.0)


def test_epoch_that_went_back_is_a_restart() -> None:
    epochs = EpochTracker()
    epochs.observe(1000, 50.0)
    assert epochs.observe(3, 51.0)
    assert not epochs.observe(4, 52.0)  # measured from the new epoch on


def test_epoch_that_grew_less_than_elapsed_time_is_a_restart() -> None:
    # The gateway restarted 100 s ago, after our last answer 1000 s ago: its epoch says 1100 now.
    epochs = EpochTracker()
    epochs.observe(1000, 0.0)
    assert epochs.observe(1100, 1000.0)


# -- the gateway ---------------------------------------------------------------------------------------

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
tun0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0
broken line
"""


def test_default_route_with_the_lowest_metric(tmp_path: Path) -> None:
    routes = parse_proc_net_route(ROUTES)
    assert [(metric, iface) for metric, iface, _ in routes] == [(100, "eth0"), (600, "wlan0")]
    path = tmp_path / "route"
    path.write_text(ROUTES)
    expected = "192.0.2.1" if sys.byteorder == "little" else "1.2.0.192"
    assert str(default_gateway(path)) == expected


def test_no_gateway_is_a_clear_local_error(tmp_path: Path) -> None:
    with pytest.raises(NoGateway, match="does not exist"):
        default_gateway(tmp_path / "missing")
    path = tmp_path / "route"
    path.write_text(ROUTES.splitlines()[0] + "\n")
    with pytest.raises(NoGateway, match="no default IPv4 route"):
        default_gateway(path)
