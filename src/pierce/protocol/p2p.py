"""What each side of a P2P rendezvous tells the other, sans-I/O: its candidates, its NAT's mapping
behaviour and (the owner) the fingerprint of the certificate its direct paths present.

An `Offer` travels as MessagePack bytes with a MAC under the rendezvous key (`pierce.protocol.auth.p2p_key`)
that only the visitor and the owner hold, so the server that relays it cannot alter a candidate or swap
the certificate. Every count and length is bounded by the types: a decoded offer is safe to act on.

Compatibility: a peer decodes an offer with unknown fields ignored, and a candidate of an unknown kind is
skipped (`pierce.p2p.gather.from_wire`) rather than refusing the offer. Peers before the "mapped" kind
refused any kind but host, srflx, prflx and predicted in `Offer.candidates`, and with it the whole
offer: so a mapped candidate travels in `Offer.mapped`, which they ignore, and again as srflx in
`Offer.candidates`, which they try as any public address.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from pierce.protocol.auth import p2p_offer_mac, verify

#: Candidates one side may offer (interfaces times protocols, plus reflexive ones).
MAX_CANDIDATES = 32
#: Router-mapped candidates one side may offer (one per socket and router).
MAX_MAPPED = 4
#: Largest encoded offer accepted.
MAX_OFFER_SIZE = 4096
FINGERPRINT_SIZE = 32


class WireCandidate(msgspec.Struct, frozen=True, array_like=True):
    """One candidate: ``kind`` is host, srflx, predicted or mapped (a kind this side does not know is
    skipped, not refused); ``proto`` is udp or tcp."""

    kind: Annotated[str, msgspec.Meta(pattern="^[a-z]{1,16}$")]
    proto: Annotated[str, msgspec.Meta(pattern="^(udp|tcp)$")]
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    local_preference: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 65535


class Offer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    candidates: Annotated[list[WireCandidate], msgspec.Meta(max_length=MAX_CANDIDATES)]
    #: The UDP mapping behaviour this side measured (`pierce.nat.classify.Behaviour` value), "" unknown.
    mapping: Annotated[str, msgspec.Meta(max_length=64)] = ""
    #: The owner's certificate fingerprint (SHA-256 of DER); empty from a visitor.
    fingerprint: Annotated[bytes, msgspec.Meta(max_length=FINGERPRINT_SIZE)] = b""
    #: Whether this side carries data encrypted on a direct TCP path (the owner's ``encrypt_data``).
    encrypt: bool = True
    #: What the visitor asks for (the owner answers in kind): "udp", a punched hole with QUIC for all
    #: of its connections; "tcp", one direct TCP connection (TCP simultaneous open or a LAN connect).
    want: Annotated[str, msgspec.Meta(pattern="^(udp|tcp)$")] = "udp"
    #: Addresses the router in front of this side forwards to its socket (kind "mapped",
    #: `pierce.nat.candidates`); each is in `candidates` too, as srflx, for peers that predate this field.
    mapped: Annotated[list[WireCandidate], msgspec.Meta(max_length=MAX_MAPPED)] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Offer)


class BadOffer(ValueError):
    """An offer that does not verify or decode."""


def seal(offer: Offer, key: bytes, *, owner: bool) -> tuple[bytes, bytes]:
    """The encoded offer and its MAC."""
    data = _encoder.encode(offer)
    return data, p2p_offer_mac(key, owner=owner, offer=data)


def open_offer(data: bytes, tag: bytes, key: bytes, *, owner: bool) -> Offer:
    """The peer's offer, after checking its MAC (``owner``: whether the owner sealed it)."""
    if len(data) > MAX_OFFER_SIZE:
        raise BadOffer(f"offer of {len(data)} bytes is over {MAX_OFFER_SIZE}")
    if not verify(p2p_offer_mac(key, owner=owner, offer=data), tag):
        raise BadOffer("the offer's MAC does not verify: it was not made by the peer holding the secret")
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise BadOffer(f"malformed offer: {exc}") from None
