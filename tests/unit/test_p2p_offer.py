"""The sealed P2P offer, the rendezvous key, the owner's record of accepted visits, path kinds and the
``[p2p]`` config: the sans-I/O parts of the rendezvous."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

from pierce.config import P2pOptions
from pierce.errors import InvalidValue
from pierce.nat.candidates import Candidate, CandidateKind
from pierce.nat.classify import Behaviour
from pierce.p2p.direct import lan_only, path_kind, punch_settings
from pierce.p2p.gather import Gathered, from_wire, mapped_to_wire, offered, to_wire
from pierce.protocol.auth import p2p_client_proof, p2p_key, p2p_offer_mac
from pierce.protocol.p2p import MAX_CANDIDATES, BadOffer, Offer, WireCandidate, open_offer, seal
from pierce.proxies.visitor_auth import VISIT_TTL, OwnerExchanges
from pierce.snapshot import ConnectionPath

KEY = p2p_key(b"k" * 32, proxy="game", visit_id="ab" * 32)
CANDIDATES = [
    Candidate(CandidateKind.HOST, "192.168.1.20", 40000),
    Candidate(CandidateKind.SRFLX, "203.0.113.5", 40000),
]


def test_the_peer_opens_what_was_sealed() -> None:
    offer = Offer(candidates=to_wire(CANDIDATES), mapping="endpoint-independent", fingerprint=b"f" * 32)
    data, tag = seal(offer, KEY, owner=True)
    opened = open_offer(data, tag, KEY, owner=True)
    assert opened == offer
    assert from_wire(opened.candidates) == CANDIDATES


@pytest.mark.parametrize("what", ["flipped byte", "other key", "other direction", "other visit"])
def test_a_tampered_or_misdirected_offer_does_not_open(what: str) -> None:
    data, tag = seal(Offer(candidates=to_wire(CANDIDATES), fingerprint=b"f" * 32), KEY, owner=True)
    key, owner = KEY, True
    if what == "flipped byte":
        data = data[:-1] + bytes([data[-1] ^ 1])
    elif what == "other key":
        key = p2p_key(b"x" * 32, proxy="game", visit_id="ab" * 32)
    elif what == "other direction":
        owner = False  # a visitor's offer replayed as the owner's, or the reverse
    else:
        key = p2p_key(b"k" * 32, proxy="game", visit_id="cd" * 32)
    with pytest.raises(BadOffer, match="MAC"):
        open_offer(data, tag, key, owner=owner)


def test_an_oversized_or_malformed_offer_is_refused() -> None:
    with pytest.raises(BadOffer, match="over"):
        open_offer(b"x" * 5000, b"", KEY, owner=False)
    too_many = msgspec.msgpack.encode(
        {"candidates": [["host", "udp", "10.0.0.1", 1, 1]] * (MAX_CANDIDATES + 1)}
    )
    with pytest.raises(BadOffer, match="malformed"):
        open_offer(too_many, p2p_offer_mac(KEY, owner=False, offer=too_many), KEY, owner=False)


def test_unknown_or_bad_wire_candidates_are_skipped() -> None:
    wire = [
        WireCandidate("host", "udp", "not-an-ip", 5),
        WireCandidate("srflx", "tcp", "203.0.113.5", 5),
        WireCandidate("srflx", "udp", "203.0.113.5", 5),
    ]
    assert from_wire(wire) == [Candidate(CandidateKind.SRFLX, "203.0.113.5", 5)]


def test_the_client_proof_binds_the_certificate_and_nonce() -> None:
    proof = p2p_client_proof(KEY, server_fingerprint=b"f" * 32, nonce=b"n" * 32)
    assert proof != p2p_client_proof(KEY, server_fingerprint=b"g" * 32, nonce=b"n" * 32)
    assert proof != p2p_client_proof(KEY, server_fingerprint=b"f" * 32, nonce=b"m" * 32)


def test_the_owner_gives_a_visit_key_only_for_an_accepted_visit_of_that_proxy() -> None:
    clock = [100.0]
    exchanges = OwnerExchanges(clock=lambda: clock[0])
    exchanges._accepted("visit-1", "game", b"t" * 32)
    assert exchanges.visit_key("visit-1", "game") == b"t" * 32
    assert exchanges.visit_key("visit-1", "other") is None
    assert exchanges.visit_key("visit-2", "game") is None
    clock[0] += VISIT_TTL
    assert exchanges.visit_key("visit-1", "game") is None
    exchanges._accepted("visit-3", "game", b"t" * 32)
    exchanges.forget("game")
    assert exchanges.visit_key("visit-3", "game") is None


@pytest.mark.parametrize(
    ("remote", "remote_map", "spray", "want"),
    [
        (("192.168.1.20", 40000), None, False, ConnectionPath.DIRECT_LAN),
        (("203.0.113.5", 40000), None, False, ConnectionPath.DIRECT_UDP),
        (("203.0.113.5", 40001), None, False, ConnectionPath.DIRECT_UDP),  # peer-reflexive, cone peer
        (("203.0.113.5", 40000), Behaviour.ADDRESS_AND_PORT_DEPENDENT, True, ConnectionPath.DIRECT_PREDICTED),
        (("203.0.113.5", 41234), Behaviour.ADDRESS_DEPENDENT, False, ConnectionPath.DIRECT_PREDICTED),
        (("8.8.8.8", 53), None, False, ConnectionPath.DIRECT_UDP),  # a host candidate, but public: no LAN
        (("100.64.3.3", 9), None, False, ConnectionPath.DIRECT_UDP),  # a carrier's shared space: no LAN
        (("198.51.100.7", 9), None, False, ConnectionPath.DIRECT_UDP),  # documentation range: public
        (("fd00::7", 9), None, False, ConnectionPath.DIRECT_LAN),
    ],
)
def test_path_kind(
    remote: tuple[str, int], remote_map: Behaviour | None, spray: bool, want: ConnectionPath
) -> None:
    candidates = [*CANDIDATES, Candidate(CandidateKind.HOST, "8.8.8.8", 53)]
    candidates.append(Candidate(CandidateKind.HOST, "100.64.3.3", 9))
    candidates.append(Candidate(CandidateKind.HOST, "198.51.100.7", 9))
    candidates.append(Candidate(CandidateKind.HOST, "fd00::7", 9))
    assert path_kind(remote, candidates, remote_map, spray_socket=spray) is want


def test_p2p_options_bound_everything_and_reach_the_agent() -> None:
    settings = punch_settings(P2pOptions(prediction_probes=2048, prediction_rate=100, opening_ttl=0))
    assert (settings.spray_probes, settings.spray_rate, settings.opening_ttl) == (2048, 100, None)
    assert settings.max_probes >= 2 * 2048
    for key, bad in [
        ("punch_budget_s", 0.5),
        ("opening_ttl", 65),
        ("keepalive_s", 0),
        ("prediction_sockets", 5000),
        ("prediction_probes", 0),
        ("prediction_rate", 10_000),
    ]:
        with pytest.raises(InvalidValue, match=f"^{key}: expected"):
            P2pOptions(**{key: bad})


def test_a_side_without_a_public_udp_address_makes_a_short_lan_only_punch() -> None:
    lan = Candidate(CandidateKind.HOST, "192.168.1.20", 4000)
    public = Candidate(CandidateKind.SRFLX, "198.51.100.9", 4000)
    natted = Gathered([lan, public], Behaviour.ENDPOINT_INDEPENDENT, public.address)
    blocked = Gathered([lan], None, None)
    assert lan_only(natted, [lan, public], stun_asked=True) is None
    assert lan_only(natted, [Candidate(CandidateKind.HOST, "198.51.100.7", 9)], stun_asked=False) is None
    assert "outgoing UDP looks blocked" in (lan_only(blocked, [lan, public], stun_asked=True) or "")
    assert "outside the LAN here" in (lan_only(blocked, [lan, public], stun_asked=False) or "")
    assert "the peer has no public UDP address" in (lan_only(natted, [lan], stun_asked=True) or "")


MAPPED = Candidate(CandidateKind.MAPPED, "203.0.113.5", 50000)


class _OldWireCandidate(msgspec.Struct, frozen=True, array_like=True):
    """`WireCandidate` as peers before the "mapped" kind decode it: any other kind refuses the offer."""

    kind: Annotated[str, msgspec.Meta(pattern="^(host|srflx|prflx|predicted)$")]
    proto: Annotated[str, msgspec.Meta(pattern="^(udp|tcp)$")]
    host: str
    port: int
    local_preference: int = 65535


class _OldOffer(msgspec.Struct, frozen=True, kw_only=True):
    candidates: list[_OldWireCandidate]
    mapping: str = ""
    fingerprint: bytes = b""
    encrypt: bool = True
    want: str = "udp"


def test_a_mapped_candidate_travels_apart_and_as_srflx_for_older_peers() -> None:
    ours = [*CANDIDATES, MAPPED]
    offer = Offer(candidates=to_wire(ours), mapped=mapped_to_wire(ours), fingerprint=b"f" * 32)
    assert WireCandidate("srflx", "udp", "203.0.113.5", 50000) in offer.candidates
    assert offer.mapped == [WireCandidate("mapped", "udp", "203.0.113.5", 50000)]
    data, tag = seal(offer, KEY, owner=True)
    # A peer of this version: the mapped address once, as mapped.
    assert offered(open_offer(data, tag, KEY, owner=True)) == ours
    # An older peer ignores the new field and tries the address as srflx.
    old = msgspec.msgpack.decode(data, type=_OldOffer)
    assert [(c.kind, c.port) for c in old.candidates] == [("host", 40000), ("srflx", 40000), ("srflx", 50000)]
    # ...which is why the kind stays out of `candidates`: there it would refuse the whole offer.
    inline = msgspec.msgpack.encode(
        msgspec.structs.replace(offer, candidates=[*offer.candidates, *offer.mapped])
    )
    with pytest.raises(msgspec.ValidationError, match="matching regex"):
        msgspec.msgpack.decode(inline, type=_OldOffer)


def test_a_mapping_on_the_srflx_address_is_offered_once() -> None:
    """A port-preserving router maps the port STUN saw: one srflx entry for older peers, one mapped."""
    same = Candidate(CandidateKind.MAPPED, "203.0.113.5", 40000)
    ours = [*CANDIDATES, same]
    offer = Offer(candidates=to_wire(ours), mapped=mapped_to_wire(ours))
    assert [c.kind for c in offer.candidates] == ["host", "srflx"]
    assert offered(offer) == [CANDIDATES[0], same]


def test_a_kind_this_side_does_not_know_is_skipped_not_refused() -> None:
    data = msgspec.msgpack.encode(
        {"candidates": [["relayed", "udp", "198.51.100.1", 9], ["host", "udp", "10.0.0.1", 9]]}
    )
    opened = open_offer(data, p2p_offer_mac(KEY, owner=False, offer=data), KEY, owner=False)
    assert offered(opened) == [Candidate(CandidateKind.HOST, "10.0.0.1", 9)]


@pytest.mark.parametrize(
    ("remote", "spray", "mapped_here", "want"),
    [
        (MAPPED.address, False, False, ConnectionPath.DIRECT_MAPPED),  # the visitor reached the mapping
        (MAPPED.address, True, False, ConnectionPath.DIRECT_MAPPED),  # from a prediction socket, still
        (("203.0.113.5", 40000), False, False, ConnectionPath.DIRECT_UDP),  # the owner's srflx
        (("198.51.100.9", 7), False, True, ConnectionPath.DIRECT_MAPPED),  # the owner, its port mapped
        (("198.51.100.9", 7), True, True, ConnectionPath.DIRECT_PREDICTED),  # ...but a spray socket won
        (("192.168.1.20", 40000), False, True, ConnectionPath.DIRECT_LAN),
    ],
)
def test_path_kind_of_a_mapped_port(
    remote: tuple[str, int], spray: bool, mapped_here: bool, want: ConnectionPath
) -> None:
    assert path_kind(remote, [*CANDIDATES, MAPPED], None, spray_socket=spray, mapped_here=mapped_here) is want
