"""PCP messages (RFC 6887): bytes in, typed messages out, and back. No sockets here.

Only what a client asking for port mappings needs: the common request and response headers, the
ANNOUNCE and MAP opcodes, and options. Layouts (network byte order; addresses are 16 bytes, an IPv4
address written IPv4-mapped, ``::ffff:a.b.c.d``)::

    request header   0 version=2 | 1 R=0, opcode(7) | 2 reserved(16) | 4 requested lifetime(32)
                     8 PCP client's IP address(128)                                              24 bytes
    response header  0 version=2 | 1 R=1, opcode(7) | 2 reserved(8) | 3 result code(8)
                     4 lifetime(32) | 8 epoch time(32) | 12 reserved(96)                         24 bytes
    MAP data         0 nonce(96) | 12 protocol(8) | 13 reserved(24) | 16 internal port(16)
                     18 suggested (request) / assigned (response) external port(16)
                     20 suggested / assigned external IP address(128)                            36 bytes
    option           0 code(8) | 1 reserved(8) | 2 length(16) | 4 data, padded to 4 bytes

A message is 24..1100 bytes, a multiple of 4 (section 7). Option codes below 128 are mandatory to
process: an unknown one makes the message unusable (a server answers UNSUPP_OPTION); unknown optional
ones (128..255) are skipped (section 7.3). The epoch time of a response is the server's seconds since its
mapping state began (section 8.5; `pierce.portmap.epoch` reads it).

`decode_request` / `decode_response` raise `PcpParseError` for malformed input, and only that; its
``result`` is the code a server would answer with (MALFORMED_REQUEST, UNSUPP_OPTION, ...). A version-0
answer is NAT-PMP's (RFC 6886): the client reads it with `pierce.portmap.natpmp` instead.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
import struct

import msgspec

from pierce.addr import IPAddress
from pierce.errors import RemoteError

VERSION = 2
HEADER_SIZE = 24
MAX_SIZE = 1100
NONCE_SIZE = 12
RESPONSE_BIT = 0x80

_REQUEST = struct.Struct("!BBHI16s")  # version, R|opcode, reserved, requested lifetime, client IP
_RESPONSE = struct.Struct("!BBBBII12s")  # version, R|opcode, reserved, result, lifetime, epoch, reserved
_MAP = struct.Struct("!12sB3sHH16s")  # nonce, protocol, reserved, internal port, external port, external IP
_OPTION = struct.Struct("!BBH")
_U16, _U32 = 0xFFFF, 0xFFFFFFFF
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


class Opcode(enum.IntEnum):
    ANNOUNCE = 0
    MAP = 1
    PEER = 2


class Protocol(enum.IntEnum):
    """The IANA protocol numbers a MAP carries for the two protocols pierce maps."""

    TCP = 6
    UDP = 17


class Result(enum.IntEnum):
    """Result codes (RFC 6887 section 7.4)."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


RESULT_TEXT: dict[int, str] = {
    Result.SUCCESS: "success",
    Result.UNSUPP_VERSION: "unsupported version",
    Result.NOT_AUTHORIZED: "not authorized (mapping is turned off, or the mapping belongs to another nonce)",
    Result.MALFORMED_REQUEST: "malformed request",
    Result.UNSUPP_OPCODE: "unsupported opcode",
    Result.UNSUPP_OPTION: "unsupported mandatory option",
    Result.MALFORMED_OPTION: "malformed option",
    Result.NETWORK_FAILURE: "network failure (the server has no external address now)",
    Result.NO_RESOURCES: "no resources (the server cannot create more mappings now)",
    Result.UNSUPP_PROTOCOL: "unsupported protocol",
    Result.USER_EX_QUOTA: "user exceeded quota (no more mappings for this host)",
    Result.CANNOT_PROVIDE_EXTERNAL: "cannot provide the suggested external address or port",
    Result.ADDRESS_MISMATCH: "address mismatch (a NAT between this host and the server rewrote the source)",
    Result.EXCESSIVE_REMOTE_PEERS: "excessive remote peers",
}

#: Short-lifetime errors: retry after the response's lifetime; the others are long-lived (section 7.4).
TRANSIENT = frozenset({Result.NETWORK_FAILURE, Result.NO_RESOURCES, Result.USER_EX_QUOTA})


def result_text(code: int) -> str:
    return RESULT_TEXT.get(code, f"unknown result code {code}")


def _result(code: int) -> Result | int:
    try:
        return Result(code)
    except ValueError:
        return code


class PcpParseError(RemoteError):
    """The bytes are not a well-formed PCP message. ``result`` is what a server would answer."""

    def __init__(self, message: str, result: Result = Result.MALFORMED_REQUEST) -> None:
        super().__init__(message)
        self.result = result


class OptionCode(enum.IntEnum):
    """Options of RFC 6887 section 13, with their data sizes in `OPTION_SIZES`."""

    THIRD_PARTY = 1
    PREFER_FAILURE = 2
    FILTER = 3


OPTION_SIZES: dict[int, int] = {
    OptionCode.THIRD_PARTY: 16,
    OptionCode.PREFER_FAILURE: 0,
    OptionCode.FILTER: 20,
}
#: Which options each opcode may carry (section 13: THIRD_PARTY for MAP and PEER, the others MAP only).
OPTIONS_FOR: dict[int, frozenset[int]] = {
    Opcode.ANNOUNCE: frozenset(),
    Opcode.MAP: frozenset(OPTION_SIZES),
    Opcode.PEER: frozenset({OptionCode.THIRD_PARTY}),
}


class Option(msgspec.Struct, frozen=True):
    code: int
    data: bytes = b""

    @property
    def mandatory(self) -> bool:
        """Codes 0..127 must be understood by the receiver (section 7.3)."""
        return self.code < 128


# -- addresses -----------------------------------------------------------------------------------------


def encode_address(ip: IPAddress) -> bytes:
    """16 bytes; IPv4 as an IPv4-mapped IPv6 address (section 5)."""
    return _V4_MAPPED + ip.packed if ip.version == 4 else ip.packed


def decode_address(raw: bytes) -> IPAddress:
    """Inverse of `encode_address`: an IPv4-mapped address comes back as IPv4."""
    if len(raw) != 16:
        raise PcpParseError(f"an address is 16 bytes, not {len(raw)}")
    if raw[:12] == _V4_MAPPED:
        return ipaddress.IPv4Address(raw[12:])
    return ipaddress.IPv6Address(raw)


#: The "any address" a MAP suggests when it has no preference: all zeros, IPv4-mapped for an IPv4 mapping.
ANY_V4: IPAddress = ipaddress.IPv4Address(0)
ANY_V6: IPAddress = ipaddress.IPv6Address(0)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


# -- messages ------------------------------------------------------------------------------------------


class AnnounceRequest(msgspec.Struct, frozen=True):
    """Is there a PCP server, and what is its epoch? (Section 14.1; lifetime always 0.)"""

    client_ip: IPAddress
    options: tuple[Option, ...] = ()


class MapRequest(msgspec.Struct, frozen=True):
    """Create or renew (``lifetime`` > 0) or delete (0) the mapping named by nonce, protocol, port."""

    client_ip: IPAddress
    nonce: bytes
    protocol: int  # a `Protocol`, or another IANA number; 0 means all protocols
    internal_port: int
    lifetime: int
    external_port: int = 0  # suggested; 0: no preference
    external_ip: IPAddress = ANY_V4  # suggested; all zeros: no preference
    options: tuple[Option, ...] = ()


PcpRequest = AnnounceRequest | MapRequest


class AnnounceResponse(msgspec.Struct, frozen=True):
    result: Result | int
    lifetime: int
    epoch: int
    options: tuple[Option, ...] = ()


class MapResponse(msgspec.Struct, frozen=True):
    result: Result | int
    #: Seconds granted; after an error, for how long the error holds (section 7.4).
    lifetime: int
    epoch: int
    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int  # assigned
    external_ip: IPAddress  # assigned
    options: tuple[Option, ...] = ()


class ErrorResponse(msgspec.Struct, frozen=True):
    """A bare-header error: an unsupported version (``version`` is the server's), an opcode this codec
    does not parse, or an error answer too short to carry the opcode's data."""

    opcode: int
    result: Result | int
    lifetime: int
    epoch: int
    version: int = VERSION


PcpResponse = AnnounceResponse | MapResponse | ErrorResponse


# -- encoding ------------------------------------------------------------------------------------------


def _check(name: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be 0..{limit}, not {value}")


def _encode_map(nonce: bytes, protocol: int, internal: int, external: int, ip: IPAddress) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
    _check("protocol", protocol, 0xFF)
    _check("internal port", internal, _U16)
    _check("external port", external, _U16)
    return _MAP.pack(nonce, protocol, b"\x00" * 3, internal, external, encode_address(ip))


def encode_options(options: tuple[Option, ...]) -> bytes:
    out = bytearray()
    for option in options:
        _check("option code", option.code, 0xFF)
        _check("option length", len(option.data), _U16)
        out += (
            _OPTION.pack(option.code, 0, len(option.data)) + option.data + b"\x00" * (-len(option.data) % 4)
        )
    return bytes(out)


def _finish(data: bytes) -> bytes:
    if len(data) > MAX_SIZE:
        raise ValueError(f"a PCP message is at most {MAX_SIZE} bytes, not {len(data)}")
    return data


def encode_request(request: PcpRequest) -> bytes:
    ip = encode_address(request.client_ip)
    if isinstance(request, AnnounceRequest):
        head = _REQUEST.pack(VERSION, Opcode.ANNOUNCE, 0, 0, ip)
        return _finish(head + encode_options(request.options))
    _check("lifetime", request.lifetime, _U32)
    head = _REQUEST.pack(VERSION, Opcode.MAP, 0, request.lifetime, ip)
    body = _encode_map(
        request.nonce, request.protocol, request.internal_port, request.external_port, request.external_ip
    )
    return _finish(head + body + encode_options(request.options))


def encode_response(response: PcpResponse) -> bytes:
    _check("result code", response.result, 0xFF)
    _check("lifetime", response.lifetime, _U32)
    _check("epoch", response.epoch, _U32)
    if isinstance(response, ErrorResponse):
        _check("opcode", response.opcode, 0x7F)
        _check("version", response.version, 0xFF)
        return _RESPONSE.pack(
            response.version,
            response.opcode | RESPONSE_BIT,
            0,
            response.result,
            response.lifetime,
            response.epoch,
            b"\x00" * 12,
        )
    opcode = Opcode.ANNOUNCE if isinstance(response, AnnounceResponse) else Opcode.MAP
    head = _RESPONSE.pack(
        VERSION, opcode | RESPONSE_BIT, 0, response.result, response.lifetime, response.epoch, b"\x00" * 12
    )
    if isinstance(response, AnnounceResponse):
        return _finish(head + encode_options(response.options))
    body = _encode_map(
        response.nonce,
        response.protocol,
        response.internal_port,
        response.external_port,
        response.external_ip,
    )
    return _finish(head + body + encode_options(response.options))


# -- decoding ------------------------------------------------------------------------------------------


def _check_size(data: bytes) -> None:
    if len(data) < HEADER_SIZE:
        raise PcpParseError(f"shorter than a PCP header ({len(data)} bytes)")
    if len(data) > MAX_SIZE or len(data) % 4:
        raise PcpParseError(f"a PCP message is a multiple of 4 bytes up to {MAX_SIZE}, not {len(data)}")


def decode_options(data: bytes, pos: int, opcode: int) -> tuple[Option, ...]:
    """The options from ``pos`` to the end: bounds checked, known ones size checked, unknown optional
    ones skipped, unknown mandatory ones (or known ones the opcode may not carry) refused."""
    allowed = OPTIONS_FOR.get(opcode, frozenset())
    options: list[Option] = []
    while pos < len(data):
        if pos + _OPTION.size > len(data):
            raise PcpParseError("truncated option header", Result.MALFORMED_OPTION)
        code, _, length = _OPTION.unpack_from(data, pos)
        start = pos + _OPTION.size
        end = start + length
        padded = end + (-length % 4)
        if padded > len(data):
            raise PcpParseError(f"option {code} runs past the end of the message", Result.MALFORMED_OPTION)
        pos = padded
        if code in allowed:
            if length != OPTION_SIZES[code]:
                raise PcpParseError(
                    f"option {OptionCode(code).name} is {OPTION_SIZES[code]} bytes, not {length}",
                    Result.MALFORMED_OPTION,
                )
            options.append(Option(code, data[start:end]))
        elif code < 128:
            raise PcpParseError(f"mandatory option {code} is not understood", Result.UNSUPP_OPTION)
    return tuple(options)


def decode_request(data: bytes) -> PcpRequest:
    """Parse a request (what a PCP server receives). Raises PcpParseError."""
    _check_size(data)
    version, op, _, lifetime, ip = _REQUEST.unpack_from(data)
    if version != VERSION:
        raise PcpParseError(f"version {version}, not {VERSION}", Result.UNSUPP_VERSION)
    if op & RESPONSE_BIT:
        raise PcpParseError("a response, not a request")
    client_ip = decode_address(ip)
    if op == Opcode.ANNOUNCE:
        if lifetime:
            raise PcpParseError("an ANNOUNCE request has lifetime 0")
        return AnnounceRequest(client_ip, decode_options(data, HEADER_SIZE, op))
    if op == Opcode.MAP:
        if len(data) < HEADER_SIZE + _MAP.size:
            raise PcpParseError(f"a MAP request is at least {HEADER_SIZE + _MAP.size} bytes, not {len(data)}")
        nonce, protocol, _, internal, external, ext_ip = _MAP.unpack_from(data, HEADER_SIZE)
        if protocol == 0 and internal != 0:
            raise PcpParseError("a MAP for all protocols has internal port 0")
        options = decode_options(data, HEADER_SIZE + _MAP.size, op)
        return MapRequest(
            client_ip, nonce, protocol, internal, lifetime, external, decode_address(ext_ip), options
        )
    raise PcpParseError(f"opcode {op} is not one this codec parses", Result.UNSUPP_OPCODE)


def decode_response(data: bytes) -> PcpResponse:
    """Parse a server's answer. Raises PcpParseError for anything malformed, a version-0 (NAT-PMP)
    answer included: the caller looks at the first byte to choose the codec."""
    _check_size(data)
    version, op, _, result, lifetime, epoch, _ = _RESPONSE.unpack_from(data)
    if not op & RESPONSE_BIT:
        raise PcpParseError("a request, not a response")
    opcode = op & ~RESPONSE_BIT
    if version != VERSION:
        if version == 0 or result != Result.UNSUPP_VERSION or len(data) != HEADER_SIZE:
            raise PcpParseError(f"version {version}, not {VERSION}", Result.UNSUPP_VERSION)
        return ErrorResponse(opcode, _result(result), lifetime, epoch, version)
    if opcode == Opcode.ANNOUNCE:
        return AnnounceResponse(_result(result), lifetime, epoch, decode_options(data, HEADER_SIZE, opcode))
    if opcode != Opcode.MAP:
        if result == Result.SUCCESS:
            raise PcpParseError(f"a success response to opcode {opcode}, which this codec does not parse")
        # An error answer to an opcode we never send: whatever follows the header is opaque here.
        return ErrorResponse(opcode, _result(result), lifetime, epoch)
    if result != Result.SUCCESS and len(data) == HEADER_SIZE:
        return ErrorResponse(opcode, _result(result), lifetime, epoch)
    if len(data) < HEADER_SIZE + _MAP.size:
        raise PcpParseError(f"a MAP response is at least {HEADER_SIZE + _MAP.size} bytes, not {len(data)}")
    nonce, protocol, _, internal, external, ext_ip = _MAP.unpack_from(data, HEADER_SIZE)
    options = decode_options(data, HEADER_SIZE + _MAP.size, opcode)
    return MapResponse(
        _result(result), lifetime, epoch, nonce, protocol, internal, external, decode_address(ext_ip), options
    )
