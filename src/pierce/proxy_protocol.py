"""PROXY protocol headers (HAProxy's spec, versions 1 and 2): the visitor's address for the service.

A tunnel hides the visitor: the local service sees a connection from the pierce client. For a tcp,
http or https proxy with ``proxy_protocol_version``, the client builds a header here (in
:mod:`pierce.client.session`) naming the visitor's address and the address the visitor connected to,
and writes it to the local service before the visitor's first byte; nginx, HAProxy, Traefik and
others read it and log or use that address instead. :func:`parse` reads a header back (pierce itself
receives none; the tests check the builders with it). Everything here is sans-I/O: no sockets.

Addresses are given as the socket module returns them (``("198.51.100.7", 4711)``, IPv6 4-tuples)
or as `HostPort`. IPv4-mapped IPv6 addresses (dual-stack listeners) are written as IPv4; when the
two addresses still differ in family, the IPv4 one is written as IPv4-mapped IPv6. Anything that is
not an IP address gives ``PROXY UNKNOWN`` (v1) or a ``LOCAL`` header (v2): the receiver then uses the
connection's own addresses.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Sequence

import msgspec

from pierce.addr import HostPort, IPAddress, SockAddr, unmap_ipv4
from pierce.errors import RemoteError

#: First bytes of every version 2 header (spec section 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: Longest version 1 line, CRLF included (spec section 2.1).
V1_MAX_LENGTH = 107
V2_HEADER_SIZE = 16
_V2_VERSION = 0x20
_V2_FAMILY_SIZES = {1: 12, 2: 36, 3: 216}

Address = SockAddr | HostPort


class Command(enum.IntEnum):
    """Version 2 command: LOCAL (the sender's own connection, e.g. a health check) or PROXY."""

    LOCAL = 0x0
    PROXY = 0x1


class Family(enum.IntEnum):
    """Version 2 address family (high nibble of byte 13)."""

    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(enum.IntEnum):
    """Version 2 transport protocol (low nibble of byte 13)."""

    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


class TlvType(enum.IntEnum):
    """Some registered version 2 TLV types (spec section 2.2.7)."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05


class ProxyProtocolError(RemoteError):
    """Bytes that should start with a PROXY protocol header do not hold a valid one."""


class ProxyHeader(msgspec.Struct, frozen=True):
    """A parsed header. ``source``/``destination`` are None for UNKNOWN, LOCAL, UNSPEC and UNIX."""

    version: int
    command: Command
    family: Family
    transport: Transport
    source: HostPort | None
    destination: HostPort | None
    #: Version 2 type-length-value extensions, in order.
    tlvs: tuple[tuple[int, bytes], ...] = ()


def _ip_port(address: Address | None) -> tuple[IPAddress, int] | None:
    """``(ip, port)`` for an IP address with a valid port, else None."""
    if address is None:
        return None
    if isinstance(address, HostPort):
        ip, port = address.ip, address.port
    else:
        host, port = address[0], address[1]
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
    if ip is None or not 0 <= port <= 65535:
        return None
    return unmap_ipv4(ip), port


def _pair(source: Address | None, destination: Address | None) -> tuple[tuple[IPAddress, int], ...] | None:
    """Both addresses in one family, or None when either is not an IP address."""
    src, dst = _ip_port(source), _ip_port(destination)
    if src is None or dst is None:
        return None
    if src[0].version != dst[0].version:
        src, dst = (_as_v6(src[0]), src[1]), (_as_v6(dst[0]), dst[1])
    return src, dst


def _as_v6(ip: IPAddress) -> ipaddress.IPv6Address:
    return ip if isinstance(ip, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{ip}")


def build_v1(source: Address | None, destination: Address | None) -> bytes:
    """A version 1 (text) header for a TCP connection from ``source`` to ``destination``."""
    pair = _pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    (src_ip, src_port), (dst_ip, dst_port) = pair
    proto = "TCP4" if src_ip.version == 4 else "TCP6"
    return f"PROXY {proto} {src_ip} {dst_ip} {src_port} {dst_port}\r\n".encode("ascii")


def build_v2(
    source: Address | None, destination: Address | None, *, tlvs: Sequence[tuple[int, bytes]] = ()
) -> bytes:
    """A version 2 (binary) header for a TCP connection from ``source`` to ``destination``.

    ``tlvs`` are appended as type-length-value extensions (e.g. ``(TlvType.AUTHORITY, b"host")``).
    """
    extensions = b"".join(_tlv(kind, value) for kind, value in tlvs)
    pair = _pair(source, destination)
    if pair is None:
        return _v2_header(Command.LOCAL, Family.UNSPEC, Transport.UNSPEC, extensions)
    (src_ip, src_port), (dst_ip, dst_port) = pair
    family = Family.INET if src_ip.version == 4 else Family.INET6
    addresses = src_ip.packed + dst_ip.packed + struct.pack("!HH", src_port, dst_port)
    return _v2_header(Command.PROXY, family, Transport.STREAM, addresses + extensions)


def _tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
        raise ValueError(f"TLV type {kind} with {len(value)} bytes does not fit the PROXY protocol")
    return struct.pack("!BH", kind, len(value)) + value


def _v2_header(command: Command, family: Family, transport: Transport, payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError(f"PROXY protocol v2 payload of {len(payload)} bytes is over 65535")
    return (
        V2_SIGNATURE
        + struct.pack("!BBH", _V2_VERSION | command, family << 4 | transport, len(payload))
        + payload
    )


def parse(data: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """Parse the header at the start of ``data``: ``(header, bytes it takes)``, or None if incomplete.

    Raises ProxyProtocolError when ``data`` does not start with a valid version 1 or 2 header.
    """
    head = bytes(data[: len(V2_SIGNATURE)])
    if not head:
        return None
    if V2_SIGNATURE.startswith(head):
        return _parse_v2(bytes(data))
    if V1_PREFIX.startswith(head[: len(V1_PREFIX)]):
        return _parse_v1(bytes(data[:V1_MAX_LENGTH]))
    raise ProxyProtocolError(f"no PROXY protocol header: data starts with {head[:8]!r}")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n")
    line = data[: end if end >= 0 else len(data)]
    if b"\n" in line:
        # Whether or not its CRLF is in yet: a header is one line (UNKNOWN takes any rest of it).
        raise ProxyProtocolError(f"PROXY v1 line {line[:40]!r}... holds a line feed before its CRLF")
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1 line not ended by CRLF within {V1_MAX_LENGTH} bytes")
        return None
    if not line.startswith(V1_PREFIX) or not line.isascii():
        raise ProxyProtocolError(f"PROXY v1 line {line!r} is not ASCII starting with 'PROXY '")
    parts = line.decode("ascii").split(" ")
    if parts[1] == "UNKNOWN":
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None), end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"PROXY v1 line {line!r} is not 'PROXY TCP4|TCP6 src dst sport dport'")
    version = 4 if parts[1] == "TCP4" else 6
    source = _v1_address(parts[2], parts[4], version)
    destination = _v1_address(parts[3], parts[5], version)
    family = Family.INET if version == 4 else Family.INET6
    return ProxyHeader(1, Command.PROXY, family, Transport.STREAM, source, destination), end + 2


def _v1_address(host: str, port_text: str, version: int) -> HostPort:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 address {host!r} is not an IP address") from None
    if ip.version != version:
        raise ProxyProtocolError(f"PROXY v1 address {host} is not IPv{version}")
    if not (port_text.isdigit() and port_text.isascii() and len(port_text) <= 5 and int(port_text) <= 65535):
        raise ProxyProtocolError(f"PROXY v1 port {port_text!r} is not a number from 0 to 65535")
    if len(port_text) > 1 and port_text.startswith("0"):
        raise ProxyProtocolError(f"PROXY v1 port {port_text!r} has a leading zero")
    return HostPort(str(ip), int(port_text))


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < V2_HEADER_SIZE:
        return None
    version_command, family_transport, length = struct.unpack("!BBH", data[12:V2_HEADER_SIZE])
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header of version {version_command >> 4}")
    try:
        command = Command(version_command & 0xF)
        family = Family(family_transport >> 4)
        transport = Transport(family_transport & 0xF)
    except ValueError:
        raise ProxyProtocolError(
            f"PROXY v2 command/family byte pair 0x{version_command:02x} 0x{family_transport:02x} is unknown"
        ) from None
    total = V2_HEADER_SIZE + length
    if len(data) < total:
        return None
    if command == Command.LOCAL:
        # Spec section 2.2: the receiver discards the block and uses the connection's own addresses.
        return ProxyHeader(2, command, family, transport, None, None), total
    payload = data[V2_HEADER_SIZE:total]
    address_size = _V2_FAMILY_SIZES.get(family, 0)
    if len(payload) < address_size:
        raise ProxyProtocolError(
            f"PROXY v2 {family.name} addresses need {address_size} bytes, got {len(payload)}"
        )
    source = destination = None
    if family in (Family.INET, Family.INET6):
        size = 4 if family == Family.INET else 16
        src = ipaddress.ip_address(payload[:size])
        dst = ipaddress.ip_address(payload[size : 2 * size])
        src_port, dst_port = struct.unpack("!HH", payload[2 * size : 2 * size + 4])
        source, destination = HostPort(str(src), src_port), HostPort(str(dst), dst_port)
    tlvs = _parse_tlvs(payload[address_size:])
    return ProxyHeader(2, command, family, transport, source, destination, tlvs), total


def _parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    pos = 0
    while pos < len(data):
        if pos + 3 > len(data):
            raise ProxyProtocolError("PROXY v2 TLV header cut short")
        kind, size = struct.unpack("!BH", data[pos : pos + 3])
        end = pos + 3 + size
        if end > len(data):
            raise ProxyProtocolError(f"PROXY v2 TLV 0x{kind:02x} of {size} bytes runs past the header")
        tlvs.append((kind, data[pos + 3 : end]))
        pos = end
    return tuple(tlvs)
