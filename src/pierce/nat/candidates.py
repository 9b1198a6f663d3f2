"""ICE candidates and candidate pairs (RFC 8445 vocabulary), for the hole punch in `pierce.nat.punch`.

A *candidate* is an address where a peer may be reached: a *host* candidate is a local interface address
(the socket's own), a *server-reflexive* (srflx) one is the public mapping the server's STUN saw, a
*peer-reflexive* (prflx) one is an address first seen as the source of a peer's probe, and a *predicted*
one is a guess of the next public port of an address-and-port-dependent NAT, and a *mapped* one is a
public address and port the router in front of the peer forwards to its socket because the peer asked it
to (PCP, NAT-PMP or UPnP-IGD, `pierce.portmap`): unlike a server-reflexive address it takes packets from
anyone, so it works whatever the router's mapping and filtering. Relayed candidates do not appear: the
relay is the fallback outside the punch.

Priorities follow RFC 8445 section 5.1.2.1, ``2^24 * type + 2^8 * local + (256 - component)`` with the
type preferences host 126, mapped 120, prflx 110, srflx 100 and predicted 10 (below every kind the RFC
names but relay; a guess is tried last). A mapped address ranks just below the host ones: it is checked
before any address that depends on the router's filtering. There is one component. Pair priorities follow
section 6.1.2.3.

Pairing (section 6.1.2.2 to 6.1.2.5): every local candidate with every remote one of the same address
family. A local candidate says which socket it belongs to (`socket_id`); a server-reflexive local
candidate is sent from its base socket, so pairs that share socket and remote address are duplicates and
only the highest priority one is kept. At most `MAX_PAIRS` (100, the limit RFC 8445 section 6.1.2.5
suggests) pairs are kept, highest priority first.
"""

from __future__ import annotations

import enum
import ipaddress

import msgspec

#: A transport address as the socket module uses it: ``(host, port)`` with the host an IP literal.
Address = tuple[str, int]

#: RFC 8445 section 6.1.2.5: "a limit of 100 candidate pairs" per check list.
MAX_PAIRS = 100
COMPONENT = 1


class CandidateKind(enum.Enum):
    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    PREDICTED = "predicted"
    MAPPED = "mapped"


#: RFC 8445 section 5.1.2.2 recommended type preferences; "mapped" and "predicted" are ours, one below
#: host, the other below srflx.
TYPE_PREFERENCE = {
    CandidateKind.HOST: 126,
    CandidateKind.MAPPED: 120,
    CandidateKind.PRFLX: 110,
    CandidateKind.SRFLX: 100,
    CandidateKind.PREDICTED: 10,
}


class Candidate(msgspec.Struct, frozen=True):
    """One candidate. `host` must be an IP literal (names are resolved before they get here).

    For a local candidate `socket_id` names the socket it was gathered on (a server-reflexive candidate
    names its base socket); for a remote candidate it is unused. `local_preference` (0..65535) orders
    candidates of one kind, for instance the interfaces of a multi-homed host.
    """

    kind: CandidateKind
    host: str
    port: int
    socket_id: int = 0
    local_preference: int = 65535

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"candidate host must be an IP address, not {self.host!r}") from None
        if not 0 < self.port < 65536:
            raise ValueError(f"candidate port must be 1..65535, not {self.port}")
        if not 0 <= self.local_preference <= 65535:
            raise ValueError(f"local_preference must be 0..65535, not {self.local_preference}")

    @property
    def version(self) -> int:
        """4 or 6 (`host` is an IP literal, checked at construction)."""
        return 6 if ":" in self.host else 4

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    @property
    def priority(self) -> int:
        return (TYPE_PREFERENCE[self.kind] << 24) + (self.local_preference << 8) + (256 - COMPONENT)


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 section 6.1.2.3, from the controlling (G) and controlled (D) candidates' priorities."""
    g, d = controlling, controlled
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


class Pair(msgspec.Struct):
    """A local socket and a remote address to check, with the bookkeeping of the checks sent on it."""

    socket_id: int
    local: Candidate | None  # None for a pair found by a probe on a socket with no candidate
    remote: Address
    remote_kind: CandidateKind
    priority: int
    #: Opening (low TTL) probes still to send before the normal ones.
    opening_left: int = 0
    checks_sent: int = 0
    #: A check on this pair got an authenticated answer.
    answered: bool = False
    #: Queued as a triggered check (a probe arrived on it) and not sent yet.
    triggered: bool = False

    @property
    def key(self) -> tuple[int, Address]:
        return (self.socket_id, self.remote)


def form_pairs(
    local: list[Candidate], remote: list[Candidate], *, controlling: bool, limit: int = MAX_PAIRS
) -> list[Pair]:
    """The check list: pairs of the same address family, deduplicated, highest priority first, capped."""
    best: dict[tuple[int, Address], Pair] = {}
    for lc in local:
        for rc in remote:
            if lc.version != rc.version:
                continue
            g, d = (lc.priority, rc.priority) if controlling else (rc.priority, lc.priority)
            pair = Pair(lc.socket_id, lc, rc.address, rc.kind, pair_priority(g, d))
            old = best.get(pair.key)
            if old is None or pair.priority > old.priority:
                best[pair.key] = pair
    pairs = sorted(best.values(), key=lambda p: p.priority, reverse=True)
    return pairs[:limit]


def address_version(address: Address) -> int:
    """4 or 6, for an IP-literal address (raises ValueError otherwise)."""
    return ipaddress.ip_address(address[0]).version


#: Networks a peer can only be reached on from its own site: RFC 1918, link-local, loopback, and IPv6
#: unique-local and link-local. Not the carrier's shared space (RFC 6598), not documentation ranges
#: (those stand for public hosts wherever they appear, as in a test lab).
_LAN_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)


def on_lan(host: str) -> bool:
    """Whether ``host`` is an address of a local network (a path to it is a "direct lan" path)."""
    ip = ipaddress.ip_address(host)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _LAN_NETWORKS)
