"""NAT-PMP messages (RFC 6886): bytes in, typed messages out, and back. No sockets here.

Every message starts with a version byte (0) and an opcode byte; a response's opcode is the request's plus
128, and carries a 16-bit result code and the gateway's *seconds since start of epoch* (the age of its
mapping table: a value that goes backwards, or grows slower than time, means the gateway lost its
mappings, `pierce.portmap.epoch`). Layouts (network byte order)::

    external address request   0 vers | 1 op=0                                                    2 bytes
    map request                0 vers | 1 op=1 UDP, 2 TCP | 2 reserved(16) | 4 internal port
                               6 suggested external port | 8 requested lifetime(32)              12 bytes
    external address response  0 vers | 1 op=128 | 2 result(16) | 4 epoch(32) | 8 IPv4 address    12 bytes
    map response               0 vers | 1 op=129/130 | 2 result | 4 epoch | 8 internal port
                               10 mapped external port | 12 lifetime(32)                          16 bytes

A gateway that refuses a request's version or opcode answers with the first 8 bytes only (result 1 or 5):
that is an `ErrorResponse`. A PCP gateway (RFC 6887) answers a version-0 request it does not speak with a
PCP UNSUPP_VERSION; the client tells the two apart by the first byte.

`decode_response` / `decode_request` raise `NatPmpParseError` for anything else, and only that: a wrong
length (truncated or extended), an unknown version, a request's opcode in a response and so on.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import msgspec

from pierce.errors import RemoteError

#: The gateway listens on this UDP port (RFC 6886 section 3.1), PCP too (RFC 6887 section 19.1).
PORT = 5351
VERSION = 0
#: Requests are retransmitted from 250 ms, doubling (RFC 6886 section 3.1).
INITIAL_RTO = 0.25
RESPONSE_BIT = 0x80

_HEAD = struct.Struct("!BB")
_RESULT_HEAD = struct.Struct("!BBHI")  # version, opcode, result code, epoch
_MAP_REQUEST = struct.Struct("!BBHHHI")  # version, opcode, reserved, internal, suggested external, lifetime
_ADDRESS_RESPONSE = struct.Struct("!BBHI4s")
_MAP_RESPONSE = struct.Struct("!BBHIHHI")
_U16, _U32 = 0xFFFF, 0xFFFFFFFF


class NatPmpParseError(RemoteError):
    """The bytes are not a well-formed NAT-PMP message."""


class Opcode(enum.IntEnum):
    EXTERNAL_ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


class Result(enum.IntEnum):
    """Result codes (RFC 6886 section 3.5)."""

    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


RESULT_TEXT: dict[int, str] = {
    Result.SUCCESS: "success",
    Result.UNSUPPORTED_VERSION: "unsupported version",
    Result.NOT_AUTHORIZED: "not authorized / refused (the gateway supports mapping but it is turned off)",
    Result.NETWORK_FAILURE: "network failure (the gateway has no external address yet)",
    Result.OUT_OF_RESOURCES: "out of resources (the gateway cannot create more mappings)",
    Result.UNSUPPORTED_OPCODE: "unsupported opcode",
}


def result_text(code: int) -> str:
    """What a result code means, for messages; unknown codes are said to be unknown."""
    return RESULT_TEXT.get(code, f"unknown result code {code}")


def _result(code: int) -> Result | int:
    try:
        return Result(code)
    except ValueError:
        return code


# -- requests ----------------------------------------------------------------------------------------


class ExternalAddressRequest(msgspec.Struct, frozen=True):
    """Ask for the gateway's external IPv4 address."""


class MapRequest(msgspec.Struct, frozen=True):
    """Ask for (``lifetime`` > 0), renew, or delete (``lifetime`` 0) a UDP or TCP mapping."""

    opcode: Opcode  # MAP_UDP or MAP_TCP
    internal_port: int
    #: 0: no preference (and, per the RFC, 0 when deleting).
    external_port: int
    lifetime: int


NatPmpRequest = ExternalAddressRequest | MapRequest


# -- responses ---------------------------------------------------------------------------------------


class ExternalAddressResponse(msgspec.Struct, frozen=True):
    result: Result | int
    epoch: int
    #: 0.0.0.0 when ``result`` is not SUCCESS (the RFC says to ignore it then).
    address: ipaddress.IPv4Address


class MapResponse(msgspec.Struct, frozen=True):
    opcode: Opcode  # of the request: MAP_UDP or MAP_TCP
    result: Result | int
    epoch: int
    internal_port: int
    external_port: int
    #: Seconds granted; may differ from the request's.
    lifetime: int


class ErrorResponse(msgspec.Struct, frozen=True):
    """The 8-byte answer to a request the gateway refused outright (unsupported version or opcode)."""

    opcode: int  # of the request
    result: Result | int
    epoch: int


NatPmpResponse = ExternalAddressResponse | MapResponse | ErrorResponse


def _check(name: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be 0..{limit}, not {value}")


def encode_request(request: NatPmpRequest) -> bytes:
    if isinstance(request, ExternalAddressRequest):
        return _HEAD.pack(VERSION, Opcode.EXTERNAL_ADDRESS)
    if request.opcode not in (Opcode.MAP_UDP, Opcode.MAP_TCP):
        raise ValueError(f"a map request's opcode is MAP_UDP or MAP_TCP, not {request.opcode!r}")
    _check("internal port", request.internal_port, _U16)
    _check("external port", request.external_port, _U16)
    _check("lifetime", request.lifetime, _U32)
    return _MAP_REQUEST.pack(
        VERSION, request.opcode, 0, request.internal_port, request.external_port, request.lifetime
    )


def decode_request(data: bytes) -> NatPmpRequest:
    """Parse a request (what a gateway receives). Raises NatPmpParseError."""
    if len(data) < 2:
        raise NatPmpParseError(f"shorter than a NAT-PMP header ({len(data)} bytes)")
    version, opcode = _HEAD.unpack_from(data)
    if version != VERSION:
        raise NatPmpParseError(f"version {version}, not {VERSION}")
    if opcode == Opcode.EXTERNAL_ADDRESS:
        if len(data) != 2:
            raise NatPmpParseError(f"an external address request is 2 bytes, not {len(data)}")
        return ExternalAddressRequest()
    if opcode in (Opcode.MAP_UDP, Opcode.MAP_TCP):
        if len(data) != _MAP_REQUEST.size:
            raise NatPmpParseError(f"a map request is {_MAP_REQUEST.size} bytes, not {len(data)}")
        _, _, reserved, internal, external, lifetime = _MAP_REQUEST.unpack(data)
        if reserved:
            raise NatPmpParseError("reserved field of a map request is not zero")
        return MapRequest(Opcode(opcode), internal, external, lifetime)
    raise NatPmpParseError(f"opcode {opcode} is not a request NAT-PMP knows")


def encode_response(response: NatPmpResponse) -> bytes:
    _check("result code", response.result, _U16)
    _check("epoch", response.epoch, _U32)
    if isinstance(response, ErrorResponse):
        _check("opcode", response.opcode, 0x7F)
        return _RESULT_HEAD.pack(VERSION, response.opcode | RESPONSE_BIT, response.result, response.epoch)
    if isinstance(response, ExternalAddressResponse):
        return _ADDRESS_RESPONSE.pack(
            VERSION,
            Opcode.EXTERNAL_ADDRESS | RESPONSE_BIT,
            response.result,
            response.epoch,
            response.address.packed,
        )
    if response.opcode not in (Opcode.MAP_UDP, Opcode.MAP_TCP):
        raise ValueError(f"a map response's opcode is MAP_UDP or MAP_TCP, not {response.opcode!r}")
    _check("internal port", response.internal_port, _U16)
    _check("external port", response.external_port, _U16)
    _check("lifetime", response.lifetime, _U32)
    return _MAP_RESPONSE.pack(
        VERSION,
        response.opcode | RESPONSE_BIT,
        response.result,
        response.epoch,
        response.internal_port,
        response.external_port,
        response.lifetime,
    )


def decode_response(data: bytes) -> NatPmpResponse:
    """Parse a gateway's answer. Raises NatPmpParseError for anything malformed."""
    if len(data) < _RESULT_HEAD.size:
        raise NatPmpParseError(f"shorter than a NAT-PMP response ({len(data)} bytes)")
    version, op, result, epoch = _RESULT_HEAD.unpack_from(data)
    if version != VERSION:
        raise NatPmpParseError(f"version {version}, not {VERSION}")
    if not op & RESPONSE_BIT:
        raise NatPmpParseError(f"opcode {op} is a request, not a response")
    opcode = op & ~RESPONSE_BIT
    if len(data) == _RESULT_HEAD.size:
        if result == Result.SUCCESS:
            raise NatPmpParseError(f"an 8-byte response to opcode {opcode} with result success")
        return ErrorResponse(opcode, _result(result), epoch)
    if opcode == Opcode.EXTERNAL_ADDRESS:
        if len(data) != _ADDRESS_RESPONSE.size:
            raise NatPmpParseError(f"an external address response is 12 bytes, not {len(data)}")
        address = ipaddress.IPv4Address(data[8:12])
        return ExternalAddressResponse(_result(result), epoch, address)
    if opcode in (Opcode.MAP_UDP, Opcode.MAP_TCP):
        if len(data) != _MAP_RESPONSE.size:
            raise NatPmpParseError(f"a map response is 16 bytes, not {len(data)}")
        _, _, _, _, internal, external, lifetime = _MAP_RESPONSE.unpack(data)
        return MapResponse(Opcode(opcode), _result(result), epoch, internal, external, lifetime)
    raise NatPmpParseError(f"a {len(data)}-byte response to opcode {opcode}, which NAT-PMP does not define")
