"""STUN messages (RFC 8489, RFC 5389, RFC 5780 attributes, RFC 3489 classic requests): bytes in, bytes out.

No sockets here. `decode` turns a datagram into a `Message` or raises `StunParseError`; the typed
accessors (`Message.xor_mapped_address` ...) decode one attribute on demand and raise the same error for
a malformed value. `encode` writes a message back, optionally ending with FINGERPRINT.

A request without the magic cookie comes from an RFC 3489 client: its 16-byte transaction id is kept
whole (the first 4 bytes in `Message.cookie`), so a response echoes it back unchanged.
"""

from __future__ import annotations

import binascii
import enum
import hmac
import ipaddress
import secrets
import struct
from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from pierce.addr import IPAddress
from pierce.errors import RemoteError

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
FINGERPRINT_XOR = 0x5354554E
#: Longest SOFTWARE / ERROR-CODE reason text allowed on the wire (RFC 8489: 763 bytes).
MAX_TEXT = 763

_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")
_FAMILY_V4, _FAMILY_V6 = 0x01, 0x02
CHANGE_IP, CHANGE_PORT = 0x04, 0x02


class StunParseError(RemoteError):
    """The bytes are not a well-formed STUN message (or attribute value)."""


class Method(enum.IntEnum):
    BINDING = 0x001


class Class(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Attr(enum.IntEnum):
    """Attribute types pierce reads or writes. Below 0x8000: comprehension-required."""

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003
    SOURCE_ADDRESS = 0x0004  # RFC 3489
    CHANGED_ADDRESS = 0x0005  # RFC 3489
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    XOR_MAPPED_ADDRESS = 0x0020
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    SOFTWARE = 0x8022
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


_DISCOVERY_ATTRIBUTES = frozenset({Attr.CHANGE_REQUEST, Attr.PADDING, Attr.RESPONSE_PORT})


class Endpoint(NamedTuple):
    """An IP address and a port, as STUN address attributes carry them."""

    ip: IPAddress
    port: int

    @classmethod
    def of(cls, sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
        """From a socket-module address; IPv4-mapped IPv6 addresses become IPv4."""
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return cls(ip, int(sockaddr[1]))

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


class ErrorCode(msgspec.Struct, frozen=True):
    code: int
    reason: str


class Message(msgspec.Struct, frozen=True):
    """One STUN message: type, transaction id and its attributes (raw values, in wire order)."""

    method: int
    cls: Class
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...] = ()
    #: MAGIC_COOKIE, or the first 4 bytes of an RFC 3489 transaction id.
    cookie: int = MAGIC_COOKIE

    @property
    def classic(self) -> bool:
        """Sent by an RFC 3489 client (no magic cookie): it knows no XOR-MAPPED-ADDRESS."""
        return self.cookie != MAGIC_COOKIE

    @property
    def is_binding_request(self) -> bool:
        return self.method == Method.BINDING and self.cls is Class.REQUEST

    @property
    def behaviour_discovery(self) -> bool:
        """Carries an RFC 5780 request attribute (CHANGE-REQUEST, PADDING or RESPONSE-PORT)."""
        return any(kind in _DISCOVERY_ATTRIBUTES for kind, _ in self.attributes)

    def get(self, attr: int) -> bytes | None:
        """The value of the first ``attr`` attribute, or None."""
        for kind, value in self.attributes:
            if kind == attr:
                return value
        return None

    def _address(self, attr: Attr, xor: bool = False) -> Endpoint | None:
        value = self.get(attr)
        return None if value is None else decode_address(value, self._xor_pad() if xor else None, attr)

    def _xor_pad(self) -> bytes:
        return struct.pack("!I", self.cookie) + self.transaction_id

    @property
    def xor_mapped_address(self) -> Endpoint | None:
        return self._address(Attr.XOR_MAPPED_ADDRESS, xor=True)

    @property
    def mapped_address(self) -> Endpoint | None:
        return self._address(Attr.MAPPED_ADDRESS)

    @property
    def reflexive_address(self) -> Endpoint | None:
        """XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS: where the server saw the request come from."""
        return self.xor_mapped_address or self.mapped_address

    @property
    def response_origin(self) -> Endpoint | None:
        return self._address(Attr.RESPONSE_ORIGIN) or self._address(Attr.SOURCE_ADDRESS)

    @property
    def other_address(self) -> Endpoint | None:
        return self._address(Attr.OTHER_ADDRESS) or self._address(Attr.CHANGED_ADDRESS)

    @property
    def change_request(self) -> tuple[bool, bool]:
        """(change IP, change port) asked for by CHANGE-REQUEST; (False, False) when absent."""
        value = self.get(Attr.CHANGE_REQUEST)
        if value is None:
            return False, False
        if len(value) != 4:
            raise StunParseError(f"CHANGE-REQUEST: expected 4 bytes, got {len(value)}")
        (flags,) = struct.unpack("!I", value)
        return bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT)

    @property
    def response_port(self) -> int | None:
        value = self.get(Attr.RESPONSE_PORT)
        if value is None:
            return None
        if len(value) != 4:
            raise StunParseError(f"RESPONSE-PORT: expected 4 bytes, got {len(value)}")
        port = int(struct.unpack("!H", value[:2])[0])
        if port == 0:
            raise StunParseError("RESPONSE-PORT: port 0")
        return port

    @property
    def error_code(self) -> ErrorCode | None:
        value = self.get(Attr.ERROR_CODE)
        if value is None:
            return None
        if len(value) < 4:
            raise StunParseError(f"ERROR-CODE: expected at least 4 bytes, got {len(value)}")
        klass, number = value[2] & 0x07, value[3]
        if not 3 <= klass <= 6 or number > 99:
            raise StunParseError(f"ERROR-CODE: invalid code {klass}{number:02d}")
        return ErrorCode(klass * 100 + number, value[4:].decode("utf-8", "replace"))

    @property
    def software(self) -> str | None:
        value = self.get(Attr.SOFTWARE)
        return None if value is None else value.decode("utf-8", "replace").rstrip("\x00 ")

    def unknown_required(self, known: Iterable[int]) -> list[int]:
        """Comprehension-required attribute types (< 0x8000) not in ``known`` (RFC 8489 section 6.3.1)."""
        known_set = set(known)
        seen: list[int] = []
        for kind, _ in self.attributes:
            if kind < 0x8000 and kind not in known_set and kind not in seen:
                seen.append(kind)
        return seen


def new_transaction_id() -> bytes:
    return secrets.token_bytes(12)


def message_type(method: int, cls: Class) -> int:
    """Interleave the 12 method bits with the 2 class bits (RFC 8489 section 5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


def _split_type(value: int) -> tuple[int, Class]:
    method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2)
    return method, Class(((value >> 4) & 1) | ((value >> 7) & 2))


def decode(data: bytes) -> Message:
    """Parse one datagram. Raises StunParseError for anything that is not a well-formed STUN message."""
    if len(data) < HEADER_SIZE:
        raise StunParseError(f"shorter than a STUN header ({len(data)} bytes)")
    kind, length, cookie, tid = _HEADER.unpack_from(data)
    if kind & 0xC000:
        raise StunParseError("the first two bits of a STUN message are zero")
    if length % 4 or HEADER_SIZE + length != len(data):
        raise StunParseError(f"length field {length} does not match a {len(data)}-byte datagram")
    method, cls = _split_type(kind)
    attributes: list[tuple[int, bytes]] = []
    pos = HEADER_SIZE
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunParseError("truncated attribute header")
        attr, size = _ATTR.unpack_from(data, pos)
        end = pos + 4 + size
        if end > len(data):
            raise StunParseError(f"attribute 0x{attr:04x} runs past the end of the message")
        value = data[pos + 4 : end]
        if attr == Attr.FINGERPRINT:
            if size != 4 or end != len(data):
                raise StunParseError("FINGERPRINT must be the last attribute, 4 bytes long")
            if struct.unpack("!I", value)[0] != _fingerprint(data[:pos], len(data)):
                raise StunParseError("FINGERPRINT does not match")
        attributes.append((attr, value))
        pos = end + (-size % 4)
    if pos != len(data):
        raise StunParseError("attribute padding runs past the end of the message")
    return Message(method, cls, tid, tuple(attributes), cookie)


def _fingerprint(head: bytes, total_length: int) -> int:
    """CRC-32 of the message before FINGERPRINT, its length field counting FINGERPRINT (RFC 8489 14.7)."""
    patched = head[:2] + struct.pack("!H", total_length - HEADER_SIZE) + head[4:]
    return (binascii.crc32(patched) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def encode(msg: Message, *, fingerprint: bool = True, pad_byte: bytes = b"\x00") -> bytes:
    """Serialise ``msg``; append FINGERPRINT unless ``fingerprint`` is false (RFC 3489 peers)."""
    body = bytearray()
    for attr, value in msg.attributes:
        body += _ATTR.pack(attr, len(value)) + value + pad_byte * (-len(value) % 4)
    length = len(body) + (8 if fingerprint else 0)
    head = _HEADER.pack(message_type(msg.method, msg.cls), length, msg.cookie, msg.transaction_id)
    data = head + bytes(body)
    if fingerprint:
        data += _ATTR.pack(Attr.FINGERPRINT, 4) + struct.pack("!I", _fingerprint(data, len(data) + 8))
    return data


def check_integrity(data: bytes, key: bytes) -> bool:
    """Verify MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 14.5) of an encoded message with ``key``."""
    msg = decode(data)
    pos = HEADER_SIZE
    for attr, value in msg.attributes:
        if attr == Attr.MESSAGE_INTEGRITY:
            if len(value) != 20:
                return False
            head = data[:2] + struct.pack("!H", pos - HEADER_SIZE + 24) + data[4:pos]
            return hmac.compare_digest(hmac.new(key, head, "sha1").digest(), value)
        pos += 4 + len(value) + (-len(value) % 4)
    return False


# -- attribute values --------------------------------------------------------------------------------


def encode_address(endpoint: Endpoint, xor_pad: bytes | None = None) -> bytes:
    """MAPPED-ADDRESS style value; XOR-ed with cookie + transaction id when ``xor_pad`` is given."""
    family = _FAMILY_V4 if endpoint.ip.version == 4 else _FAMILY_V6
    raw = struct.pack("!H", endpoint.port) + endpoint.ip.packed
    if xor_pad is not None:
        raw = bytes(b ^ p for b, p in zip(raw, xor_pad[:2] + xor_pad, strict=False))
    return bytes((0, family)) + raw


def decode_address(value: bytes, xor_pad: bytes | None = None, attr: int = 0) -> Endpoint:
    """Inverse of `encode_address`. Raises StunParseError naming ``attr`` for a malformed value."""
    name = _attr_name(attr)
    if len(value) not in (8, 20) or value[1] not in (_FAMILY_V4, _FAMILY_V6):
        raise StunParseError(f"{name}: not an IPv4 or IPv6 address value ({len(value)} bytes)")
    family, raw = value[1], value[2:]
    if (family == _FAMILY_V4) != (len(value) == 8):
        raise StunParseError(f"{name}: address family and length disagree")
    if xor_pad is not None:
        raw = bytes(b ^ p for b, p in zip(raw, xor_pad[:2] + xor_pad, strict=False))
    port = int(struct.unpack("!H", raw[:2])[0])
    ip: IPAddress = ipaddress.IPv4Address(raw[2:]) if family == _FAMILY_V4 else ipaddress.IPv6Address(raw[2:])
    return Endpoint(ip, port)


def _attr_name(attr: int) -> str:
    try:
        return Attr(attr).name.replace("_", "-")
    except ValueError:
        return f"attribute 0x{attr:04x}"


def encode_error(code: int, reason: str) -> bytes:
    text = reason.encode()[:MAX_TEXT]
    return struct.pack("!HBB", 0, code // 100, code % 100) + text


# -- messages pierce sends -----------------------------------------------------------------------------


def binding_request(
    transaction_id: bytes | None = None,
    *,
    change_ip: bool = False,
    change_port: bool = False,
    response_port: int | None = None,
    software: str | None = None,
) -> Message:
    """A Binding request, with RFC 5780 CHANGE-REQUEST / RESPONSE-PORT when asked for."""
    attrs: list[tuple[int, bytes]] = []
    if software:
        attrs.append((Attr.SOFTWARE, software.encode()[:MAX_TEXT]))
    if change_ip or change_port:
        flags = (CHANGE_IP if change_ip else 0) | (CHANGE_PORT if change_port else 0)
        attrs.append((Attr.CHANGE_REQUEST, struct.pack("!I", flags)))
    if response_port is not None:
        attrs.append((Attr.RESPONSE_PORT, struct.pack("!HH", response_port, 0)))
    return Message(Method.BINDING, Class.REQUEST, transaction_id or new_transaction_id(), tuple(attrs))


def binding_success(
    request: Message,
    mapped: Endpoint,
    *,
    origin: Endpoint | None = None,
    other: Endpoint | None = None,
    software: str | None = None,
) -> Message:
    """The success response to ``request``: XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS when known
    (RFC 5780 section 6.1 includes those two even in answers to plain requests: a client learns the other
    address from its first, plain, request).

    MAPPED-ADDRESS only answers a request with an RFC 5780 attribute (``behaviour_discovery``): RFC 5780
    section 6.1 wants both mapped addresses there, which clients compare to detect address-rewriting
    ALGs; RFC 5389 otherwise keeps MAPPED-ADDRESS for RFC 3489 clients only.

    An RFC 3489 client gets MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS instead: it rejects
    comprehension-required attributes it does not know (XOR-MAPPED-ADDRESS 0x0020 among them), and
    reads strings only in multiples of 4 bytes.
    """
    attrs: list[tuple[int, bytes]] = []
    if request.classic:
        attrs.append((Attr.MAPPED_ADDRESS, encode_address(mapped)))
        if origin is not None:
            attrs.append((Attr.SOURCE_ADDRESS, encode_address(origin)))
        if other is not None:
            attrs.append((Attr.CHANGED_ADDRESS, encode_address(other)))
        if software:
            text = software.encode()[:64]
            attrs.append((Attr.SOFTWARE, text + b" " * (-len(text) % 4)))
    else:
        pad = struct.pack("!I", request.cookie) + request.transaction_id
        attrs.append((Attr.XOR_MAPPED_ADDRESS, encode_address(mapped, pad)))
        if request.behaviour_discovery:
            attrs.append((Attr.MAPPED_ADDRESS, encode_address(mapped)))
        if origin is not None:
            attrs.append((Attr.RESPONSE_ORIGIN, encode_address(origin)))
        if other is not None:
            attrs.append((Attr.OTHER_ADDRESS, encode_address(other)))
        if software:
            attrs.append((Attr.SOFTWARE, software.encode()[:MAX_TEXT]))
    return Message(request.method, Class.SUCCESS, request.transaction_id, tuple(attrs), request.cookie)


def binding_error(
    request: Message, code: int, reason: str, *, unknown: Iterable[int] = (), software: str | None = None
) -> Message:
    """An error response (e.g. 400 Bad Request, 420 Unknown Attribute listing ``unknown``)."""
    attrs: list[tuple[int, bytes]] = [(Attr.ERROR_CODE, encode_error(code, reason))]
    types = list(unknown)
    if types:
        attrs.append((Attr.UNKNOWN_ATTRIBUTES, b"".join(struct.pack("!H", t) for t in types)))
    if software:
        attrs.append((Attr.SOFTWARE, software.encode()[:MAX_TEXT]))
    return Message(request.method, Class.ERROR, request.transaction_id, tuple(attrs), request.cookie)
