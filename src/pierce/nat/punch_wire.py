"""The hole-punch probe format: bytes in, bytes out, authenticated with a per-attempt key.

Layout (network byte order), 32 bytes plus the session id::

    0       4 magic b"\\x0cpun"
    4       1 version (1)
    5       1 kind: 1 probe, 2 answer, 3 nominate, 4 keepalive
    6       1 flags: bit 0 set when the sender is the controlling agent; other bits zero
    7       1 session id length n (1..32)
    8       n session id (from the rendezvous)
    8+n     8 transaction id
    16+n   16 HMAC-SHA256(key, bytes 0 .. 16+n), first 16 bytes

An answer carries the transaction id of the probe, nomination or keepalive it answers. A datagram with
trailing bytes is malformed. Decoding checks structure, then version, then the session id, then the MAC
(constant time), and says which check failed (`Drop`), so the agent can count what it ignores.

Demultiplexing, when QUIC and STUN share the socket (RFC 7983 and RFC 9443 first-byte ranges): a first
byte 0x40..0xFF is QUIC (the long header sets bit 0x80, the short header the fixed bit 0x40, which QUIC
must then not grease, RFC 9287); 0x00..0x03 with the magic cookie 0x2112A442 at offset 4 is STUN; a first
byte of 0x0C (in the 4..15 range no protocol there uses) followed by ``pun`` is a punch packet:
`is_punch_packet`. The three rules never overlap, whichever order they run in.
"""

from __future__ import annotations

import enum
import hmac
import struct

import msgspec

from pierce.errors import RemoteError

MAGIC = b"\x0cpun"
VERSION = 1
MAC_SIZE = 16
MAX_SESSION_ID = 32
MIN_KEY = 16
_HEAD = struct.Struct("!4sBBBB")  # magic, version, kind, flags, session id length
_TXID = struct.Struct("!Q")
OVERHEAD = _HEAD.size + _TXID.size + MAC_SIZE
_FLAG_CONTROLLING = 0x01


class Kind(enum.IntEnum):
    PROBE = 1
    ANSWER = 2
    NOMINATE = 3
    KEEPALIVE = 4


class Drop(enum.Enum):
    """Why a datagram was ignored; the agent counts each (`PunchAgent.dropped`)."""

    MALFORMED = "malformed"
    VERSION = "unknown version"
    SESSION = "other session"
    MAC = "bad MAC"
    ROLE = "sender has our role"  # our own packet reflected back, or two agents with one role
    REPLAY = "replayed transaction"
    UNKNOWN_TRANSACTION = "answer to no transaction of ours"
    WRONG_SOCKET = "answer on another socket than the request"
    NOT_LOCKED_PATH = "keepalive or nomination off the locked path"
    OVERFLOW = "answer queue full"


class PunchWireError(RemoteError):
    def __init__(self, reason: Drop) -> None:
        super().__init__(reason.value)
        self.reason = reason


class PunchPacket(msgspec.Struct, frozen=True):
    kind: Kind
    controlling: bool
    session_id: bytes
    txid: int


def is_punch_packet(data: bytes) -> bool:
    """The demux rule: could this datagram be ours (rather than QUIC or STUN)? Cheap, no key needed."""
    return len(data) > OVERHEAD and data[:4] == MAGIC


def encode(packet: PunchPacket, key: bytes) -> bytes:
    sid = packet.session_id
    if not 0 < len(sid) <= MAX_SESSION_ID:
        raise ValueError(f"session id must be 1..{MAX_SESSION_ID} bytes, not {len(sid)}")
    flags = _FLAG_CONTROLLING if packet.controlling else 0
    body = _HEAD.pack(MAGIC, VERSION, packet.kind, flags, len(sid)) + sid + _TXID.pack(packet.txid)
    return body + hmac.digest(key, body, "sha256")[:MAC_SIZE]


def decode(data: bytes, key: bytes, session_id: bytes | None = None) -> PunchPacket:
    """Parse and authenticate; raises `PunchWireError` naming the first check that failed."""
    if len(data) <= OVERHEAD or data[:4] != MAGIC:
        raise PunchWireError(Drop.MALFORMED)
    _, version, kind, flags, n = _HEAD.unpack_from(data)
    if version != VERSION:
        raise PunchWireError(Drop.VERSION)
    if not 0 < n <= MAX_SESSION_ID or len(data) != OVERHEAD + n or flags & ~_FLAG_CONTROLLING:
        raise PunchWireError(Drop.MALFORMED)
    if kind not in _KINDS:
        raise PunchWireError(Drop.MALFORMED)
    sid = data[_HEAD.size : _HEAD.size + n]
    if session_id is not None and sid != session_id:
        raise PunchWireError(Drop.SESSION)
    end = len(data) - MAC_SIZE
    mac = hmac.digest(key, memoryview(data)[:end], "sha256")[:MAC_SIZE]
    if not hmac.compare_digest(mac, data[end:]):
        raise PunchWireError(Drop.MAC)
    (txid,) = _TXID.unpack_from(data, _HEAD.size + n)
    return PunchPacket(Kind(kind), bool(flags & _FLAG_CONTROLLING), sid, txid)


_KINDS = frozenset(int(k) for k in Kind)
