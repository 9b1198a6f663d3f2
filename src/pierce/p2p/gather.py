"""One side's UDP candidates for a rendezvous: host addresses, the server-reflexive address the
server's STUN sees, and whether the NAT maps per destination (which decides port prediction).

Both STUN requests go out from the socket that will punch, to the server's two STUN ports (``stun_port``
and ``stun_port + 1``, `pierce.nat.stun_server`): the same mapped port for both means an endpoint-
independent mapping (a cone NAT, or none), different ports an address-and-port-dependent one (symmetric).
Requests are retransmitted every `RTO` seconds until `GATHER_TIMEOUT`; a server without STUN leaves
only host candidates (then only a LAN path can be direct).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import msgspec

from pierce.nat import stun
from pierce.nat.candidates import Candidate, CandidateKind
from pierce.nat.classify import Behaviour
from pierce.nat.gather import host_candidates
from pierce.nat.stun import Endpoint, StunParseError
from pierce.protocol.p2p import MAX_CANDIDATES, MAX_MAPPED, Offer, WireCandidate

#: Seconds for the STUN answers (a server that does not answer in time is treated as having no STUN).
GATHER_TIMEOUT = 1.5
RTO = 0.25


class Gathered(msgspec.Struct, frozen=True):
    candidates: list[Candidate]
    mapping: Behaviour | None
    #: The server-reflexive address, when STUN answered.
    reflexive: tuple[str, int] | None


async def gather_udp(sock: socket.socket, stun_server: tuple[str, int] | None) -> Gathered:
    """``sock``'s candidates (socket id 0): host ones, and with ``stun_server`` (host, port) the
    server-reflexive one and the mapping behaviour."""
    local = host_candidates({0: sock})
    if stun_server is None:
        return Gathered(local, None, None)
    host, port = stun_server
    first, second = await _ask(sock, [(host, port), (host, port + 1)])
    mapped = first or second
    if mapped is None:
        return Gathered(local, None, None)
    address = (str(mapped.ip), mapped.port)
    mapping: Behaviour | None = None
    if first is not None and second is not None:
        mapping = Behaviour.ENDPOINT_INDEPENDENT if first == second else Behaviour.ADDRESS_AND_PORT_DEPENDENT
    if not any(c.address == address for c in local):
        local.append(Candidate(CandidateKind.SRFLX, address[0], address[1]))
    return Gathered(local, mapping, address)


async def _ask(sock: socket.socket, dests: list[tuple[str, int]]) -> list[Endpoint | None]:
    """A Binding request to each destination from ``sock``; the mapped addresses (None: no answer)."""
    loop = asyncio.get_running_loop()
    requests = [stun.binding_request(software="pierce") for _ in dests]
    ids = {r.transaction_id: i for i, r in enumerate(requests)}
    answers: list[Endpoint | None] = [None] * len(dests)
    done = asyncio.Event()

    def readable() -> None:
        for _ in range(16):
            try:
                data, _ = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            try:
                message = stun.decode(data)
                index = ids.get(message.transaction_id)
                if index is not None and message.cls is stun.Class.SUCCESS:
                    answers[index] = message.reflexive_address
            except StunParseError:
                continue
            if all(a is not None for a in answers):
                done.set()

    sock.setblocking(False)
    loop.add_reader(sock.fileno(), readable)
    try:
        deadline = loop.time() + GATHER_TIMEOUT
        while not done.is_set() and loop.time() < deadline:
            for request, dest in zip(requests, dests, strict=True):
                if answers[ids[request.transaction_id]] is None:
                    with contextlib.suppress(OSError):
                        sock.sendto(stun.encode(request), dest)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(RTO, max(0.0, deadline - loop.time()))):
                    await done.wait()
    finally:
        loop.remove_reader(sock.fileno())
    return answers


def to_wire(candidates: list[Candidate], proto: str = "udp") -> list[WireCandidate]:
    """`Offer.candidates`: every candidate but peer-reflexive ones, a mapped one as srflx (what a peer that
    predates the "mapped" kind understands; `mapped_to_wire` gives it with its kind) unless that address
    is there already."""
    found: list[WireCandidate] = []
    seen: set[tuple[str, int]] = set()
    for c in sorted(candidates, key=lambda c: c.kind is CandidateKind.MAPPED):
        if c.kind is CandidateKind.PRFLX or (c.kind is CandidateKind.MAPPED and c.address in seen):
            continue
        kind = CandidateKind.SRFLX if c.kind is CandidateKind.MAPPED else c.kind
        found.append(WireCandidate(kind.value, proto, c.host, c.port, c.local_preference))
        seen.add(c.address)
    return found[:MAX_CANDIDATES]


def mapped_to_wire(candidates: list[Candidate], proto: str = "udp") -> list[WireCandidate]:
    """`Offer.mapped`: the router-mapped candidates."""
    mapped = [c for c in candidates if c.kind is CandidateKind.MAPPED][:MAX_MAPPED]
    return [WireCandidate(c.kind.value, proto, c.host, c.port, c.local_preference) for c in mapped]


def offered(offer: Offer, proto: str = "udp") -> list[Candidate]:
    """The peer's candidates of one protocol in its offer: `Offer.candidates` and `Offer.mapped`, an
    address that is both (the srflx copy for older peers) kept once, as mapped."""
    mapped = [c for c in from_wire(offer.mapped, proto) if c.kind is CandidateKind.MAPPED]
    addresses = {c.address for c in mapped}
    return [c for c in from_wire(offer.candidates, proto) if c.address not in addresses] + mapped


def from_wire(candidates: list[WireCandidate], proto: str = "udp") -> list[Candidate]:
    """The peer's candidates of one protocol (malformed ones are skipped)."""
    found = []
    for c in candidates:
        if c.proto != proto:
            continue
        with contextlib.suppress(ValueError):
            found.append(
                Candidate(CandidateKind(c.kind), c.host, c.port, local_preference=c.local_preference)
            )
    return found
