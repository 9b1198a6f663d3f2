"""PROXY protocol v1/v2: the spec's examples byte for byte, round trips, incomplete and hostile input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pierce.addr import HostPort
from pierce.errors import RemoteError
from pierce.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Address,
    Command,
    Family,
    ProxyHeader,
    ProxyProtocolError,
    TlvType,
    Transport,
    build_v1,
    build_v2,
    parse,
)

FFFF6 = ":".join(["ffff"] * 8)
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"


def tcp(
    version: int, src: tuple[str, int], dst: tuple[str, int], tlvs: tuple[tuple[int, bytes], ...] = ()
) -> ProxyHeader:
    family = Family.INET if ipaddress.ip_address(src[0]).version == 4 else Family.INET6
    return ProxyHeader(version, Command.PROXY, family, Transport.STREAM, HostPort(*src), HostPort(*dst), tlvs)


# The spec's version 1 examples (section 2.1).


def test_v1_spec_examples_are_built_byte_for_byte() -> None:
    line = build_v1(("255.255.255.255", 65535), ("255.255.255.255", 65535))
    assert line == b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(line) == 56
    line = build_v1((FFFF6, 65535), (FFFF6, 65535))
    assert line == f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(line) == 104
    assert build_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )


def test_v1_spec_example_before_an_http_request() -> None:
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + HTTP_REQUEST
    parsed = parse(data)
    assert parsed is not None
    header, used = parsed
    assert header == tcp(1, ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert data[used:] == HTTP_REQUEST


def test_v1_unknown_examples() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == (
        ProxyHeader(1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None),
        15,
    )
    worst = f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(worst) == V1_MAX_LENGTH == 107
    parsed = parse(worst + b"rest")
    assert parsed is not None
    assert parsed[0].family == Family.UNSPEC
    assert parsed[1] == 107


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        (None, ("192.0.2.1", 80)),
        (("192.0.2.1", 80), None),
        (HostPort("visitor.example.com", 80), HostPort("192.0.2.1", 80)),
        (("not an address", 1), ("192.0.2.1", 80)),
        (("192.0.2.1", 70000), ("192.0.2.1", 80)),
    ],
)
def test_non_ip_addresses_give_unknown_and_local(source: Address | None, destination: Address | None) -> None:
    assert build_v1(source, destination) == b"PROXY UNKNOWN\r\n"
    assert build_v2(source, destination) == V2_SIGNATURE + b"\x20\x00\x00\x00"


# Version 2 (section 2.2), laid out by hand from the spec's field table.


def test_v2_ipv4_bytes_follow_the_spec_layout() -> None:
    header = build_v2(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header == (
        V2_SIGNATURE
        + b"\x21"  # version 2, PROXY
        + b"\x11"  # AF_INET, STREAM
        + b"\x00\x0c"  # 12 bytes of addresses
        + bytes([192, 168, 0, 1, 192, 168, 0, 11])
        + (56324).to_bytes(2, "big")
        + (443).to_bytes(2, "big")
    )
    assert parse(header + HTTP_REQUEST) == (tcp(2, ("192.168.0.1", 56324), ("192.168.0.11", 443)), 28)


def test_v2_ipv6_bytes_follow_the_spec_layout() -> None:
    header = build_v2(("2001:db8::7", 4711, 0, 0), ("2001:db8::1", 443, 0, 0))
    assert header == (
        V2_SIGNATURE
        + b"\x21\x21\x00\x24"
        + ipaddress.IPv6Address("2001:db8::7").packed
        + ipaddress.IPv6Address("2001:db8::1").packed
        + b"\x12\x67\x01\xbb"
    )
    assert parse(header) == (tcp(2, ("2001:db8::7", 4711), ("2001:db8::1", 443)), 52)


def test_v2_local_is_discarded_by_the_parser() -> None:
    header = V2_SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12)
    assert parse(header) == (ProxyHeader(2, Command.LOCAL, Family.INET, Transport.STREAM, None, None), 28)


def test_v2_tlvs_round_trip() -> None:
    tlvs = ((int(TlvType.AUTHORITY), b"nas.example.com"), (int(TlvType.ALPN), b"h2"), (0xE0, b""))
    header = build_v2(("198.51.100.7", 4711), ("192.0.2.1", 443), tlvs=tlvs)
    assert parse(header) == (tcp(2, ("198.51.100.7", 4711), ("192.0.2.1", 443), tlvs), len(header))
    with pytest.raises(ValueError):
        build_v2(("198.51.100.7", 4711), ("192.0.2.1", 443), tlvs=[(256, b"")])


def test_v2_unix_and_unspec_families_carry_no_address() -> None:
    unix = V2_SIGNATURE + b"\x21\x31" + (216).to_bytes(2, "big") + bytes(216)
    assert parse(unix) == (ProxyHeader(2, Command.PROXY, Family.UNIX, Transport.STREAM, None, None), 232)
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x04\x04\x00\x01x"
    assert parse(unspec) == (
        ProxyHeader(2, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, ((4, b"x"),)),
        20,
    )


def test_dual_stack_addresses() -> None:
    mapped_src, mapped_dst = ("::ffff:198.51.100.7", 4711, 0, 0), ("::ffff:192.0.2.1", 80, 0, 0)
    assert build_v1(mapped_src, mapped_dst) == b"PROXY TCP4 198.51.100.7 192.0.2.1 4711 80\r\n"
    mapped = ipaddress.IPv6Address("::ffff:198.51.100.7")
    assert build_v1(("198.51.100.7", 4711), ("2001:db8::1", 80)) == (
        f"PROXY TCP6 {mapped} 2001:db8::1 4711 80\r\n".encode()
    )
    assert build_v2(("198.51.100.7", 4711), ("2001:db8::1", 80))[13] == 0x21
    assert (
        build_v1(("fe80::1%eth0", 1, 0, 2), ("fe80::2%eth0", 2, 0, 2))
        == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"
    )
    assert build_v1(HostPort("198.51.100.7", 4711), HostPort("192.0.2.1", 80)) == (
        b"PROXY TCP4 198.51.100.7 192.0.2.1 4711 80\r\n"
    )


# Incomplete and invalid input.


@pytest.mark.parametrize(
    "header",
    [
        build_v1(("192.0.2.1", 1), ("192.0.2.2", 2)),
        build_v1(None, None),
        build_v2(("192.0.2.1", 1), ("192.0.2.2", 2)),
        build_v2(("2001:db8::1", 1), ("2001:db8::2", 2), tlvs=[(1, b"h2")]),
        build_v2(None, None),
    ],
)
def test_every_prefix_is_incomplete(header: bytes) -> None:
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, cut
    parsed = parse(header + b"more")
    assert parsed is not None
    assert parsed[1] == len(header)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01",
        b"\r\n\r\n\x00\r\nQUIX\n",
        b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
        b"PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n",
        b"PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 example.com 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 \xd9\xa1 2\r\n",
        b"PROXY UNKNOWN\n",
        b"PROXY " + b"x" * 101 + b"\r\n",
        b"proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
        V2_SIGNATURE + b"\x11\x11\x00\x00",
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),
        V2_SIGNATURE + b"\x21\x41\x00\x00",
        V2_SIGNATURE + b"\x21\x13\x00\x00",
        V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8),
        V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),
        V2_SIGNATURE + b"\x21\x11\x00\x0e" + bytes(12) + b"\x01\x00",
        V2_SIGNATURE + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x05x",
    ],
)
def test_invalid_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


def test_errors_are_the_peers_fault() -> None:
    assert issubclass(ProxyProtocolError, RemoteError)


# Properties.

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str).filter(lambda ip: not ip.startswith("::ffff:"))
ports = st.integers(0, 65535)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
    st.booleans(),
    st.binary(max_size=64),
)
def test_build_then_parse_round_trips(
    hosts: tuple[str, str], src_port: int, dst_port: int, version_2: bool, after: bytes
) -> None:
    src, dst = (hosts[0], src_port), (hosts[1], dst_port)
    header = build_v2(src, dst) if version_2 else build_v1(src, dst)
    assert len(header) <= V1_MAX_LENGTH
    assert parse(header + after) == (tcp(2 if version_2 else 1, src, dst), len(header))


@given(st.binary(max_size=300))
def test_random_bytes_raise_nothing_but_proxy_protocol_errors(data: bytes) -> None:
    for candidate in (data, V2_SIGNATURE + data, b"PROXY " + data, b"PROXY TCP4 " + data):
        try:
            result = parse(candidate)
        except ProxyProtocolError:
            continue
        if result is not None:
            assert 0 < result[1] <= len(candidate)
