"""The STUN codec, the responder's answers and the NAT classifier, without a network (one loopback test)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pierce import config
from pierce.addr import source_of
from pierce.cli import build_parser, nat_server_from_args
from pierce.errors import ConfigError, LocalError
from pierce.nat import stun
from pierce.nat.classify import P2P, Behaviour, Observations, Outcome, classify
from pierce.nat.discover import stun_server
from pierce.nat.stun import Attr, Class, Endpoint, StunParseError
from pierce.nat.stun_server import (
    MAX_AMPLIFICATION,
    Layout,
    Reply,
    StunPolicy,
    StunServer,
    answer,
)

# -- RFC 5769 test vectors ------------------------------------------------------------------------------

PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
TRANSACTION = bytes.fromhex("b7e7a701bc34d686fa87dfae")
REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e20746573742063 6c69656e74"
    "002400046e0001ff80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf".replace(" ", "")
)
RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)


def test_rfc5769_request() -> None:
    msg = stun.decode(REQUEST)
    assert (msg.method, msg.cls, msg.transaction_id, msg.classic) == (1, Class.REQUEST, TRANSACTION, False)
    assert msg.is_binding_request
    assert msg.software == "STUN test client"
    assert msg.get(Attr.USERNAME) == b"evtj:h6vY"
    assert msg.get(0x0024) == bytes.fromhex("6e0001ff")  # PRIORITY, kept raw
    assert stun.check_integrity(REQUEST, PASSWORD)
    assert not stun.check_integrity(REQUEST, b"wrong password")
    # Re-encoding reproduces the vector byte for byte (its padding bytes are spaces).
    body = tuple(a for a in msg.attributes if a[0] != Attr.FINGERPRINT)
    again = stun.Message(msg.method, msg.cls, msg.transaction_id, body)
    assert stun.encode(again, pad_byte=b" ") == REQUEST


@pytest.mark.parametrize(
    ("data", "mapped"),
    [
        (RESPONSE_V4, Endpoint(ipaddress.ip_address("192.0.2.1"), 32853)),
        (RESPONSE_V6, Endpoint(ipaddress.ip_address("2001:db8:1234:5678:11:2233:4455:6677"), 32853)),
    ],
)
def test_rfc5769_responses(data: bytes, mapped: Endpoint) -> None:
    msg = stun.decode(data)
    assert (msg.cls, msg.transaction_id, msg.software) == (Class.SUCCESS, TRANSACTION, "test vector")
    assert msg.xor_mapped_address == mapped == msg.reflexive_address
    assert msg.mapped_address is None
    assert stun.check_integrity(data, PASSWORD)
    assert str(mapped).endswith(":32853")


@pytest.mark.parametrize("at", [0, 3, 21, 40, len(RESPONSE_V4) - 1])
def test_a_flipped_bit_fails_the_fingerprint(at: int) -> None:
    broken = bytearray(RESPONSE_V4)
    broken[at] ^= 0x01
    with pytest.raises(StunParseError):
        stun.decode(bytes(broken))


def test_message_type_interleaving() -> None:
    assert [stun.message_type(1, c) for c in Class] == [0x0001, 0x0011, 0x0101, 0x0111]
    assert stun.message_type(0xFFF, Class.ERROR) == 0x3FFF


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x00\x00" + b"\x00" * 15,  # short header
        b"\xc0\x01\x00\x00" + b"\x00" * 16,  # top bits set
        b"\x00\x01\x00\x04" + b"\x00" * 16,  # length beyond the datagram
        b"\x00\x01\x00\x03" + b"\x00" * 19,  # length not a multiple of 4
        b"\x00\x01\x00\x04" + b"\x00" * 16 + b"\x00\x01\x00\x08",  # attribute past the end
        b"\x00\x01\x00\x08" + b"\x00" * 16 + b"\x80\x28\x00\x04\x00\x00\x00\x00",  # bad FINGERPRINT
    ],
)
def test_malformed_messages(data: bytes) -> None:
    with pytest.raises(StunParseError):
        stun.decode(data)


def _poke(msg: stun.Message) -> None:
    """Every accessor, as the responder and the client use them."""
    for name in ("xor_mapped_address", "reflexive_address", "response_origin", "other_address"):
        getattr(msg, name)
    _ = (msg.change_request, msg.response_port, msg.error_code, msg.software, msg.classic)
    msg.unknown_required(())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_the_codec_error(data: bytes) -> None:
    with contextlib.suppress(StunParseError):
        _poke(stun.decode(data))


attribute = st.tuples(st.sampled_from([*list(Attr), 0x0024, 0x7FFF, 0xC001]), st.binary(max_size=24))


@settings(max_examples=300, deadline=None)
@given(st.lists(attribute, max_size=6), st.binary(min_size=12, max_size=12), st.booleans())
def test_random_attributes_raise_only_the_codec_error(
    attrs: list[tuple[int, bytes]], tid: bytes, classic: bool
) -> None:
    """Well-framed messages with arbitrary attribute values: decoding gets past the header."""
    msg = stun.Message(1, Class.REQUEST, tid, tuple(attrs), 0x01020304 if classic else stun.MAGIC_COOKIE)
    data = stun.encode(msg, fingerprint=not classic)
    try:
        decoded = stun.decode(data)
        _poke(decoded)
    except StunParseError:
        return
    assert decoded.transaction_id == tid and decoded.classic == classic


endpoints = st.one_of(
    st.builds(Endpoint, st.ip_addresses(v=4), st.integers(0, 65535)),
    st.builds(Endpoint, st.ip_addresses(v=6), st.integers(0, 65535)),
)


@given(endpoints, endpoints, endpoints, st.binary(min_size=12, max_size=12))
def test_binding_success_round_trip(mapped: Endpoint, origin: Endpoint, other: Endpoint, tid: bytes) -> None:
    request = stun.binding_request(tid, change_ip=True, change_port=True, response_port=4000, software="x")
    parsed_request = stun.decode(stun.encode(request))
    assert parsed_request.change_request == (True, True) and parsed_request.response_port == 4000
    reply = stun.decode(
        stun.encode(
            stun.binding_success(parsed_request, mapped, origin=origin, other=other, software="pierce")
        )
    )
    assert (reply.cls, reply.transaction_id) == (Class.SUCCESS, tid)
    assert reply.xor_mapped_address == mapped == reply.mapped_address
    assert (reply.response_origin, reply.other_address, reply.software) == (origin, other, "pierce")


def test_classic_request_gets_rfc3489_attributes() -> None:
    """No magic cookie: the 16-byte id comes back whole, no XOR-MAPPED-ADDRESS, strings padded to 4."""
    tid16 = bytes(range(1, 17))
    data = struct.pack("!HH", 0x0001, 8) + tid16 + struct.pack("!HHI", Attr.CHANGE_REQUEST, 4, 0)
    request = stun.decode(data)
    assert request.classic and request.cookie == 0x01020304
    mapped = Endpoint(ipaddress.ip_address("198.51.100.7"), 5000)
    origin = Endpoint(ipaddress.ip_address("203.0.113.10"), 3478)
    other = Endpoint(ipaddress.ip_address("203.0.113.11"), 3479)
    response = stun.binding_success(request, mapped, origin=origin, other=other, software="pierce")
    raw = stun.encode(response, fingerprint=False)
    assert raw[4:20] == tid16
    decoded = stun.decode(raw)
    assert [a for a, _ in decoded.attributes] == [
        Attr.MAPPED_ADDRESS, Attr.SOURCE_ADDRESS, Attr.CHANGED_ADDRESS, Attr.SOFTWARE
    ]  # fmt: skip
    assert all(len(value) % 4 == 0 for _, value in decoded.attributes)
    assert (decoded.mapped_address, decoded.response_origin, decoded.other_address) == (mapped, origin, other)


def test_error_response() -> None:
    request = stun.binding_request()
    error = stun.decode(stun.encode(stun.binding_error(request, 420, "Unknown Attribute", unknown=[0x7777])))
    assert error.cls is Class.ERROR and error.error_code == stun.ErrorCode(420, "Unknown Attribute")
    assert error.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x77\x77"


# -- the responder's answers -------------------------------------------------------------------------------

P = 3478
PRIMARY, ALT = ipaddress.ip_address("203.0.113.10"), ipaddress.ip_address("203.0.113.11")
CLIENT = Endpoint(ipaddress.ip_address("198.51.100.7"), 40000)
TWO = Layout(PRIMARY, P, ALT)
ONE = Layout(PRIMARY, P)


def ask(
    layout: Layout, request: bytes, arrived: tuple[int, int] = (0, 0), *, allow_response_port: bool = False
) -> tuple[stun.Message, Reply]:
    local = layout.alternate if arrived[0] and layout.alternate else layout.primary
    reply = answer(
        request, CLIENT, arrived, local, layout, lambda: PRIMARY, allow_response_port=allow_response_port
    )
    assert reply is not None
    return stun.decode(reply.data), reply


@pytest.mark.parametrize(
    ("arrived", "change_ip", "change_port", "via", "origin"),
    [
        ((0, 0), False, False, (0, 0), (PRIMARY, P)),
        ((0, 0), True, True, (1, 1), (ALT, P + 1)),
        ((0, 0), False, True, (0, 1), (PRIMARY, P + 1)),
        ((0, 0), True, False, (1, 0), (ALT, P)),
        ((1, 1), True, True, (0, 0), (PRIMARY, P)),
        ((1, 0), False, True, (1, 1), (ALT, P + 1)),
    ],
)
def test_answers_from_the_socket_asked_for(
    arrived: tuple[int, int],
    change_ip: bool,
    change_port: bool,
    via: tuple[int, int],
    origin: tuple[object, int],
) -> None:
    request = stun.binding_request(change_ip=change_ip, change_port=change_port)
    msg, reply = ask(TWO, stun.encode(request), arrived)
    assert reply.via == via and reply.to == CLIENT
    assert msg.transaction_id == request.transaction_id and msg.xor_mapped_address == CLIENT
    assert msg.response_origin == Endpoint(*origin)  # type: ignore[arg-type]
    assert msg.other_address == Endpoint(ALT, P + 1)  # one fixed OTHER-ADDRESS, whatever the socket


def test_one_address_server() -> None:
    msg, reply = ask(ONE, stun.encode(stun.binding_request(change_port=True)))
    assert reply.via == (0, 1) and msg.other_address == Endpoint(PRIMARY, P + 1)
    refused, _ = ask(ONE, stun.encode(stun.binding_request(change_ip=True, change_port=True)))
    assert refused.cls is Class.ERROR and refused.error_code is not None and refused.error_code.code == 420
    # An RFC 3489 client would count any answer as "the change worked": it gets none.
    classic = struct.pack("!HH", 1, 8) + bytes(16) + struct.pack("!HHI", Attr.CHANGE_REQUEST, 4, 4)
    assert answer(classic, CLIENT, (0, 0), PRIMARY, ONE, lambda: PRIMARY) is None


def test_response_port_is_an_unknown_attribute_unless_allowed() -> None:
    """RFC 5780 section 5: a server without RESPONSE-PORT answers 420, to the request's own address."""
    request = stun.encode(stun.binding_request(response_port=5555))
    refused, reply = ask(TWO, request)
    assert reply.to == CLIENT and reply.error
    assert refused.error_code is not None and refused.error_code.code == 420
    assert refused.get(Attr.UNKNOWN_ATTRIBUTES) == struct.pack("!H", Attr.RESPONSE_PORT)
    allowed, reply = ask(TWO, request, allow_response_port=True)
    assert reply.to == Endpoint(CLIENT.ip, 5555) and allowed.cls is Class.SUCCESS
    # RFC 5780 section 6.1: RESPONSE-PORT with PADDING gets 400, to the request's own address.
    padded = stun.Message(
        1,
        Class.REQUEST,
        bytes(12),
        ((Attr.RESPONSE_PORT, struct.pack("!HH", 5555, 0)), (Attr.PADDING, bytes(8))),
    )
    bad, reply = ask(TWO, stun.encode(padded), allow_response_port=True)
    assert bad.error_code is not None and bad.error_code.code == 400 and reply.to == CLIENT


def test_unknown_attributes() -> None:
    unknown = stun.Message(1, Class.REQUEST, bytes(12), ((0x0999, b"abcd"), (0xC999, b"")))
    error, _ = ask(TWO, stun.encode(unknown))
    assert error.error_code is not None and error.error_code.code == 420
    assert error.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x09\x99"
    optional = stun.Message(1, Class.REQUEST, bytes(12), ((0xC999, b""),))
    assert ask(TWO, stun.encode(optional))[0].cls is Class.SUCCESS


def test_answers_carry_only_the_attributes_the_request_needs() -> None:
    """No SOFTWARE, no FINGERPRINT; MAPPED-ADDRESS for RFC 5780 requests and RFC 3489 clients only."""
    plain, _ = ask(TWO, stun.encode(stun.binding_request(software="client")))
    assert [a for a, _ in plain.attributes] == [
        Attr.XOR_MAPPED_ADDRESS,
        Attr.RESPONSE_ORIGIN,
        Attr.OTHER_ADDRESS,
    ]
    discovery, _ = ask(TWO, stun.encode(stun.binding_request(change_port=True)))
    assert [a for a, _ in discovery.attributes] == [
        Attr.XOR_MAPPED_ADDRESS, Attr.MAPPED_ADDRESS, Attr.RESPONSE_ORIGIN, Attr.OTHER_ADDRESS
    ]  # fmt: skip
    assert discovery.mapped_address == discovery.xor_mapped_address == CLIENT
    classic, _ = ask(TWO, struct.pack("!HH", 1, 0) + bytes(16))
    assert [a for a, _ in classic.attributes] == [
        Attr.MAPPED_ADDRESS,
        Attr.SOURCE_ADDRESS,
        Attr.CHANGED_ADDRESS,
    ]
    error, _ = ask(ONE, stun.encode(stun.binding_request(change_ip=True)))
    assert [a for a, _ in error.attributes] == [Attr.ERROR_CODE]


PRIMARY6, ALT6 = ipaddress.ip_address("2001:db8::10"), ipaddress.ip_address("2001:db8::11")
CLIENT6 = Endpoint(ipaddress.ip_address("2001:db8:1:2::7"), 40000)
request_attributes = st.sampled_from(
    [
        (Attr.CHANGE_REQUEST, struct.pack("!I", 0)),
        (Attr.CHANGE_REQUEST, struct.pack("!I", 2)),
        (Attr.CHANGE_REQUEST, struct.pack("!I", 4)),
        (Attr.CHANGE_REQUEST, struct.pack("!I", 6)),
        (Attr.PADDING, b""),
        (Attr.PADDING, bytes(4)),
        (Attr.RESPONSE_PORT, struct.pack("!HH", 5555, 0)),
        (Attr.USERNAME, b"u"),
        (0x0999, b""),
        (0xC999, b""),
    ]
)


@settings(max_examples=300)
@given(
    version=st.sampled_from([4, 6]),
    two=st.booleans(),
    classic=st.booleans(),
    allow_response_port=st.booleans(),
    attributes=st.lists(request_attributes, max_size=3),
    fingerprint=st.booleans(),
)
def test_no_answer_is_more_than_max_amplification_times_its_request(
    version: int,
    two: bool,
    classic: bool,
    allow_response_port: bool,
    attributes: list[tuple[int, bytes]],
    fingerprint: bool,
) -> None:
    primary, alt, client = (PRIMARY, ALT, CLIENT) if version == 4 else (PRIMARY6, ALT6, CLIENT6)
    layout = Layout(primary, P, alt if two else None)
    message = stun.Message(
        1, Class.REQUEST, bytes(12), tuple(attributes), 0x01020304 if classic else stun.MAGIC_COOKIE
    )
    data = stun.encode(message, fingerprint=fingerprint and not classic)
    reply = answer(
        data, client, (0, 0), primary, layout, lambda: primary, allow_response_port=allow_response_port
    )
    if reply is not None:
        assert len(reply.data) / len(data) <= MAX_AMPLIFICATION[version]


@pytest.mark.parametrize(("version", "size"), [(4, 56), (6, 92)])
def test_a_plain_request_gets_the_documented_answer_size(version: int, size: int) -> None:
    """README, "STUN responder": 2.8 times a plain 20-byte request over IPv4, 4.6 over IPv6; the worst
    case, 2.83 and 4.83, is a request with an empty PADDING."""
    primary, alt, client = (PRIMARY, ALT, CLIENT) if version == 4 else (PRIMARY6, ALT6, CLIENT6)
    request = stun.encode(stun.binding_request(), fingerprint=False)
    reply = answer(request, client, (0, 0), primary, Layout(primary, P, alt), lambda: primary)
    assert reply is not None and (len(request), len(reply.data)) == (20, size)
    padded = stun.encode(stun.Message(1, Class.REQUEST, bytes(12), ((Attr.PADDING, b""),)), fingerprint=False)
    worst = answer(padded, client, (0, 0), primary, Layout(primary, P, alt), lambda: primary)
    assert worst is not None and len(worst.data) / len(padded) == MAX_AMPLIFICATION[version]
    assert round(MAX_AMPLIFICATION[version], 2) == {4: 2.83, 6: 4.83}[version]


def test_rate_limit_buckets_are_per_ipv4_address_and_per_ipv6_slash_64() -> None:
    a, b = ipaddress.ip_address("198.51.100.7"), ipaddress.ip_address("198.51.100.8")
    assert source_of(str(a)) != source_of(str(b))
    same_64 = [ipaddress.ip_address(f"2001:db8:1:2::{i:x}") for i in (1, 0xFFFF)]
    assert source_of(str(same_64[0])) == source_of(str(same_64[1]))
    assert source_of(str(ipaddress.ip_address("2001:db8:1:3::1"))) != source_of(str(same_64[0]))


def test_no_answer_to_anything_but_binding_requests() -> None:
    request = stun.binding_request()
    for cls in (Class.INDICATION, Class.SUCCESS, Class.ERROR):
        data = stun.encode(stun.Message(1, cls, request.transaction_id))
        assert answer(data, CLIENT, (0, 0), PRIMARY, TWO, lambda: PRIMARY) is None
    other_method = stun.encode(stun.Message(3, Class.REQUEST, request.transaction_id))
    assert answer(other_method, CLIENT, (0, 0), PRIMARY, TWO, lambda: PRIMARY) is None
    with pytest.raises(StunParseError):
        answer(b"GET / HTTP/1.1\r\n\r\n", CLIENT, (0, 0), PRIMARY, TWO, lambda: PRIMARY)


def test_padding_is_not_echoed() -> None:
    """No amplification: a 1500-byte padded request gets the same small answer as a bare one."""
    tid = stun.new_transaction_id()
    empty = stun.Message(1, Class.REQUEST, tid, ((Attr.PADDING, b""),))
    padded = stun.Message(1, Class.REQUEST, tid, ((Attr.PADDING, bytes(1500)),))
    bare = answer(stun.encode(empty), CLIENT, (0, 0), PRIMARY, TWO, lambda: PRIMARY)
    big = answer(stun.encode(padded), CLIENT, (0, 0), PRIMARY, TWO, lambda: PRIMARY)
    assert bare is not None and big is not None
    assert len(big.data) == len(bare.data) <= 68


def start_stun_on_free_ports(attempts: int = 20, **kwargs: Any) -> tuple[StunServer, int]:
    """A started StunServer on 127.0.0.1, ports P and P + 1 both free. Another process may take either
    between the probe and the bind, so an address in use means: try other ports, a bounded number of
    times. Any other failure is a failure."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port >= 65535:
            continue
        server = StunServer("127.0.0.1", port, **kwargs)
        try:
            server.start()
        except LocalError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                continue
            raise
        return server, port
    pytest.fail(f"no two free consecutive UDP ports on 127.0.0.1 after {attempts} attempts")


async def test_server_counts_garbage_and_keeps_answering() -> None:
    server, port = start_stun_on_free_ports()
    loop = asyncio.get_running_loop()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("127.0.0.1", port))
            for garbage in (b"", b"\x00" * 19, b"hello, is this stun?", bytes(range(256)) * 4):
                sock.send(garbage)
            request = stun.binding_request()
            sock.send(stun.encode(request))
            async with asyncio.timeout(5):
                reply = stun.decode(await loop.sock_recv(sock, 2048))
            assert reply.xor_mapped_address == Endpoint.of(sock.getsockname())
        assert reply.transaction_id == request.transaction_id
        assert (server.stats.malformed, server.stats.answered) == (4, 1)
    finally:
        server.close()


async def test_server_drops_and_counts_requests_over_the_rate_limit() -> None:
    """Frozen time: a source gets its burst and no more; another source is not affected."""
    server, port = start_stun_on_free_ports(policy=StunPolicy(rate=1.0, burst=3), clock=lambda: 0.0)
    loop = asyncio.get_running_loop()
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other,
        ):
            flood.bind(("127.0.0.1", 0))
            other.bind(("127.0.0.3", 0))
            other.setblocking(False)
            for _ in range(10):
                flood.sendto(stun.encode(stun.binding_request()), ("127.0.0.1", port))
            # Datagrams on one socket are read in order: once the other source's is answered, the
            # flood's have all been handled.
            other.sendto(stun.encode(stun.binding_request()), ("127.0.0.1", port))
            async with asyncio.timeout(5):
                await loop.sock_recv(other, 2048)
        assert (server.stats.answered, server.stats.dropped_rate_limited) == (4, 7)
        assert server.stats.dropped_global_limit == 0
    finally:
        server.close()


# -- classification ----------------------------------------------------------------------------------------


def ep(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(ipaddress.ip_address(host), int(port))


SERVER, OTHER = ep("203.0.113.10:3478"), ep("203.0.113.11:3479")


def observed(**kw: object) -> Observations:
    base: dict[str, object] = {
        "server": SERVER,
        "local": ep("192.168.1.10:5000"),
        "mapped": ep("203.0.113.1:5000"),
        "other": OTHER,
        "mapped_2": ep("203.0.113.1:5000"),
        "change_both": Outcome.SILENT,
        "change_port": Outcome.SILENT,
        "hairpin": False,
        "hops": [ipaddress.ip_address("192.168.1.1")],
        "hops_reached": True,
    }
    return Observations(**(base | kw))  # type: ignore[arg-type]


def test_classify_masquerade() -> None:
    report = classify(observed())
    assert (report.behind_nat, report.cgnat, report.hairpinning) == (True, False, False)
    assert (report.mapping, report.filtering) == (
        Behaviour.ENDPOINT_INDEPENDENT,
        Behaviour.ADDRESS_AND_PORT_DEPENDENT,
    )
    assert report.p2p is P2P.DIRECT
    assert report.as_json()["public_address"] == "203.0.113.1:5000"


def test_classify_symmetric_nat() -> None:
    random = classify(observed(mapped_2=ep("203.0.113.1:31000"), mapped_3=ep("203.0.113.1:9000")))
    assert random.mapping is Behaviour.ADDRESS_AND_PORT_DEPENDENT and random.p2p is P2P.RELAY
    assert random.hairpinning is None  # per-destination mapping and filtering: the probe proves nothing
    sequential = classify(observed(mapped_2=ep("203.0.113.1:5001"), mapped_3=ep("203.0.113.1:5002")))
    assert sequential.p2p is P2P.PORT_PREDICTION
    address_dependent = classify(observed(mapped_2=ep("203.0.113.1:5001"), mapped_3=ep("203.0.113.1:5001")))
    assert address_dependent.mapping is Behaviour.ADDRESS_DEPENDENT


def test_classify_filtering() -> None:
    assert classify(observed(change_both=Outcome.ANSWERED)).filtering is Behaviour.ENDPOINT_INDEPENDENT
    assert classify(observed(change_port=Outcome.ANSWERED)).filtering is Behaviour.ADDRESS_DEPENDENT
    ignored = classify(observed(change_both=Outcome.WRONG_SOURCE))
    assert ignored.filtering is None and "CHANGE-REQUEST" in ignored.why


def test_classify_one_address_server() -> None:
    one = ep("203.0.113.10:3479")
    same = classify(observed(other=one, change_both=Outcome.NOT_RUN, change_port=Outcome.ANSWERED))
    assert same.mapping is Behaviour.ENDPOINT_INDEPENDENT and "address-dependent" in same.why
    assert same.filtering is None and "stun_alt_addr" in same.why
    moved = classify(observed(other=one, mapped_2=ep("203.0.113.1:7000"), change_port=Outcome.SILENT))
    assert moved.mapping is Behaviour.ADDRESS_AND_PORT_DEPENDENT
    assert moved.filtering is Behaviour.ADDRESS_AND_PORT_DEPENDENT


def test_classify_cgnat() -> None:
    shared = classify(observed(mapped=ep("100.72.1.2:5000"), mapped_2=ep("100.72.1.2:5000")))
    assert shared.cgnat and "100.64.0.0/10" in shared.why
    hops = [ipaddress.ip_address(a) for a in ("192.168.1.1", "100.64.0.1", "198.51.100.1")]
    assert classify(observed(hops=hops)).cgnat
    private = classify(observed(hops=[hops[0], ipaddress.ip_address("10.0.0.1")]))
    assert private.cgnat and "private address 10.0.0.1" in private.why
    public = classify(observed(hops=[hops[0], hops[2]], hops_reached=False))
    assert not public.cgnat and "not ruled out" not in public.why
    untraced = classify(observed(hops=None, hops_note="no router answered"))
    assert not untraced.cgnat and "not ruled out" in untraced.why


def test_classify_no_answer_and_no_nat() -> None:
    silent = classify(Observations(server=SERVER, local=ep("192.168.1.10:5000")))
    assert silent.public_address is None and silent.behind_nat is None and silent.p2p is P2P.RELAY
    assert silent.mapping is None and silent.filtering is None and "No STUN answer" in silent.why
    local = ep("198.51.100.7:5000")
    open_path = classify(observed(local=local, mapped=local, change_both=Outcome.ANSWERED, hops=None))
    assert (open_path.behind_nat, open_path.hairpinning, open_path.p2p) == (False, None, P2P.DIRECT)
    assert set(open_path.as_json()) >= {
        "public_address", "local_address", "behind_nat", "cgnat", "mapping", "filtering", "hairpinning",
        "mapping_lifetime_s", "p2p", "why",
    }  # fmt: skip
    assert "Public address:    198.51.100.7:5000" in open_path.as_text()


# -- configuration -----------------------------------------------------------------------------------------


def test_server_stun_keys() -> None:
    cfg = config.convert({"token": "Kq7vB2mN9pL4sR8tW3zY6c"}, config.ServerConfig, "server.toml")
    assert (cfg.stun_port, cfg.stun_alt_addr) == (3478, "")
    assert (cfg.stun_rate, cfg.stun_burst, cfg.stun_global_rate) == (10.0, 50, 1000.0)
    assert cfg.stun_allow_response_port is False
    off = config.convert(
        {"token": "Kq7vB2mN9pL4sR8tW3zY6c", "stun_port": 0}, config.ServerConfig, "server.toml"
    )
    assert off.stun_port == 0
    custom = {"stun_rate": 2, "stun_burst": 5, "stun_global_rate": 100, "stun_allow_response_port": True}
    cfg = config.convert({"token": "Kq7vB2mN9pL4sR8tW3zY6c", **custom}, config.ServerConfig, "server.toml")
    assert (cfg.stun_rate, cfg.stun_burst, cfg.stun_global_rate, cfg.stun_allow_response_port) == (
        2.0, 5, 100.0, True
    )  # fmt: skip
    for bad in (
        {"stun_port": 65535},
        {"stun_alt_addr": "not-an-ip"},
        {"stun_rate": 0},
        {"stun_burst": 0},
        {"stun_global_rate": -1},
        {"stun_allow_response_port": "yes"},
    ):
        with pytest.raises(ConfigError, match="stun_"):
            config.convert({"token": "Kq7vB2mN9pL4sR8tW3zY6c", **bad}, config.ServerConfig, "server.toml")


def test_stun_server_argument() -> None:
    assert str(stun_server("example.net", default_port=3478)) == "example.net:3478"
    assert stun_server("192.0.2.1:3000", default_port=3478).port == 3000
    assert stun_server("2001:db8::1", default_port=3478).host == "2001:db8::1"
    assert stun_server("[2001:db8::1]", default_port=9).port == 9
    with pytest.raises(ValueError, match="port number"):
        stun_server("host:stun", default_port=3478)


def test_discovery_does_not_read_config_files() -> None:
    code = "import sys, pierce.nat.discover; print('pierce.config' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def nat_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["nat", *argv])


def test_nat_server_comes_from_the_flag_or_the_users_client_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert str(nat_server_from_args(nat_args("--server", "example.net"))) == "example.net:3478"
    with pytest.raises(ConfigError, match=r"pass --server HOST\[:PORT\], or set server_addr in"):
        nat_server_from_args(nat_args())
    client_toml = tmp_path / "pierce" / "client.toml"
    client_toml.parent.mkdir()
    # Only server_addr is read: the proxies being wrong does not stop `pierce nat`.
    client_toml.write_text('server_addr = "relay.example.net"\n[[proxies]]\ntype = "nope"\n')
    assert str(nat_server_from_args(nat_args())) == "relay.example.net:3478"
    assert str(nat_server_from_args(nat_args("--server", "[::1]:5000"))) == "[::1]:5000"
    client_toml.write_text("server_addr = 5\n")
    with pytest.raises(ConfigError) as info:
        nat_server_from_args(nat_args())
    assert info.value.problems == [f"{client_toml}: server_addr: expected a string, got an integer"]
    client_toml.write_text('server_addr = "relay.example.net:x"\n')
    with pytest.raises(ConfigError, match=re.escape(f"{client_toml}: server_addr: expected a port number")):
        nat_server_from_args(nat_args())
    with pytest.raises(ConfigError, match="--server: expected a port number"):
        nat_server_from_args(nat_args("--server", "relay.example.net:x"))
