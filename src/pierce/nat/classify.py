"""From what the STUN tests observed to a verdict: RFC 4787 mapping and filtering, CGNAT, the P2P outlook.

Pure functions over an `Observations` record, so every rule is tested without a network. A value the tests
could not establish stays None, and ``why`` says what was missing.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import textwrap
from typing import TYPE_CHECKING, Any

import msgspec

from pierce.addr import IPAddress
from pierce.nat.stun import Endpoint

#: Ports a NAT that allocates sequentially moves by between two new mappings (within this, predictable).
PREDICTABLE_DELTA = 16
SHARED_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598, for carrier-grade NAT
PRIVATE_SPACE = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
    ipaddress.IPv6Network("fc00::/7"),
)

if TYPE_CHECKING:
    from pierce.portmap.probe import RouterReport


class Behaviour(enum.Enum):
    """RFC 4787 terms, used for both mapping and filtering."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class P2P(enum.Enum):
    DIRECT = "direct likely"
    PORT_PREDICTION = "direct with port prediction"
    RELAY = "relay only"


class Outcome(enum.Enum):
    """What became of one CHANGE-REQUEST test."""

    ANSWERED = "answered"
    SILENT = "no answer"
    REFUSED = "refused"  # the server cannot make that change (error 420)
    WRONG_SOURCE = "answered from the wrong address"  # the server ignored CHANGE-REQUEST
    NOT_RUN = "not run"


class Observations(msgspec.Struct):
    """Everything the discovery tests saw. Fields left at their defaults were not observed."""

    server: Endpoint
    #: This host's address towards the server (the socket's port, the routed source address).
    local: Endpoint | None = None
    #: Test I: the server-reflexive address of the main socket.
    mapped: Endpoint | None = None
    #: OTHER-ADDRESS from test I (None: the server does not do RFC 5780).
    other: Endpoint | None = None
    #: Mapping test II (to the other IP, primary port; with one IP: primary IP, other port).
    mapped_2: Endpoint | None = None
    #: Mapping test III (to the other IP and port; not run with one IP).
    mapped_3: Endpoint | None = None
    #: Filtering: CHANGE-REQUEST IP+port, then port only.
    change_both: Outcome = Outcome.NOT_RUN
    change_port: Outcome = Outcome.NOT_RUN
    #: Hairpinning probe: received (True), not received (False), not run (None).
    hairpin: bool | None = None
    #: Hop addresses by TTL (None where no router answered); None when the probe could not run.
    hops: list[IPAddress | None] | None = None
    #: The trace got an answer from the server itself (so ``hops`` are all the routers on the way).
    hops_reached: bool = False
    hops_note: str = ""
    #: Mapping lifetime lower bound in seconds, and what was learnt measuring it.
    lifetime: float | None = None
    lifetime_note: str = ""
    notes: list[str] = msgspec.field(default_factory=list)

    @property
    def one_address(self) -> bool:
        """The server has one IP: OTHER-ADDRESS differs from it only in the port."""
        return self.other is not None and self.other.ip == self.server.ip


class NatReport(msgspec.Struct):
    """The answer of ``pierce nat``; `as_json` has the documented fields (and a few extras)."""

    server: Endpoint
    public_address: Endpoint | None
    local_address: Endpoint | None
    behind_nat: bool | None
    cgnat: bool
    mapping: Behaviour | None
    filtering: Behaviour | None
    hairpinning: bool | None
    mapping_lifetime_s: float | None
    p2p: P2P
    why: str
    hops: list[IPAddress | None] | None = None
    #: What the router answered of port mapping (`pierce.portmap.probe`), when it was asked.
    port_mapping: RouterReport | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "public_address": _text(self.public_address),
            "local_address": _text(self.local_address),
            "behind_nat": self.behind_nat,
            "cgnat": self.cgnat,
            "mapping": self.mapping.value if self.mapping else None,
            "filtering": self.filtering.value if self.filtering else None,
            "hairpinning": self.hairpinning,
            "mapping_lifetime_s": self.mapping_lifetime_s,
            "p2p": self.p2p.value,
            "why": self.why,
            "server": str(self.server),
            "hops": None if self.hops is None else [None if h is None else str(h) for h in self.hops],
            "port_mapping": None if self.port_mapping is None else self.port_mapping.as_json(),
        }

    def as_text(self) -> str:
        """The report for people: one line per answer, then the reasons."""

        def yes_no(value: bool | None) -> str:
            return "unknown" if value is None else "yes" if value else "no"

        hairpinning = yes_no(self.hairpinning)
        if self.behind_nat is False:
            hairpinning = "does not apply (no NAT)"
        lifetime = "not measured (--lifetime)"
        if self.mapping_lifetime_s is not None:
            lifetime = f"at least {self.mapping_lifetime_s:g} s idle"
        rows = [
            ("STUN server", str(self.server)),
            ("Public address", _text(self.public_address) or "unknown"),
            ("Local address", _text(self.local_address) or "unknown"),
            ("Behind NAT", yes_no(self.behind_nat)),
            ("Carrier-grade NAT", yes_no(self.cgnat)),
            ("Mapping", self.mapping.value if self.mapping else "unknown"),
            ("Filtering", self.filtering.value if self.filtering else "unknown"),
            ("Hairpinning", hairpinning),
            ("Mapping lifetime", lifetime),
            ("Direct (P2P)", self.p2p.value),
        ]
        if self.port_mapping is not None:
            rows.append(("Port mapping", self.port_mapping.as_text()))
        width = max(len(name) for name, _ in rows) + 2
        lines = [f"{name + ':':<{width}}{value}" for name, value in rows]
        return "\n".join([*lines, "", textwrap.fill(self.why, width=100)])


def _text(value: Endpoint | None) -> str | None:
    return None if value is None else str(value)


def mapping_behaviour(obs: Observations, why: list[str]) -> Behaviour | None:
    """RFC 5780 section 4.3: compare the mappings towards different server addresses."""
    if obs.mapped is None:
        return None
    if obs.local is not None and obs.mapped == obs.local:
        return Behaviour.ENDPOINT_INDEPENDENT
    if obs.other is None:
        why.append("The server gave no OTHER-ADDRESS (no RFC 5780 support), so mapping was not tested.")
        return None
    if obs.mapped_2 is None:
        why.append("The mapping test to the server's other address got no answer.")
        return None
    if obs.mapped_2 == obs.mapped:
        if obs.one_address:
            why.append(
                "The server has one address: the same public port towards both of its ports rules out "
                "port-dependent mapping, not address-dependent mapping."
            )
        return Behaviour.ENDPOINT_INDEPENDENT
    if obs.one_address:
        return Behaviour.ADDRESS_AND_PORT_DEPENDENT
    if obs.mapped_3 is None:
        why.append("The third mapping test got no answer: address- or address-and-port-dependent.")
        return None
    if obs.mapped_3 == obs.mapped_2:
        return Behaviour.ADDRESS_DEPENDENT
    return Behaviour.ADDRESS_AND_PORT_DEPENDENT


def filtering_behaviour(obs: Observations, why: list[str]) -> Behaviour | None:
    """RFC 5780 section 4.4: which CHANGE-REQUEST answers got through."""
    if obs.mapped is None:
        return None
    if Outcome.WRONG_SOURCE in (obs.change_both, obs.change_port):
        why.append("The server answered CHANGE-REQUEST from the address asked to; filtering not tested.")
        return None
    if obs.change_both is Outcome.ANSWERED:
        return Behaviour.ENDPOINT_INDEPENDENT
    if obs.change_port is Outcome.SILENT:
        return Behaviour.ADDRESS_AND_PORT_DEPENDENT
    if obs.change_port is Outcome.ANSWERED:
        if obs.change_both is Outcome.SILENT:
            return Behaviour.ADDRESS_DEPENDENT
        why.append(
            "An answer from the server's other port got in, so filtering is endpoint-independent or "
            "address-dependent; telling them apart needs a server with a second address (stun_alt_addr)."
        )
        return None
    if obs.other is None:
        why.append("Without RFC 5780 support on the server, filtering was not tested.")
    else:
        why.append("The server refused the filtering tests.")
    return None


def port_predictable(obs: Observations) -> bool:
    """New mappings of one socket move by a small step: a peer can guess the next port."""
    ports = [e.port for e in (obs.mapped, obs.mapped_2, obs.mapped_3) if e is not None]
    steps = [b - a for a, b in itertools.pairwise(ports) if a != b]
    return bool(steps) and all(0 < abs(step) <= PREDICTABLE_DELTA for step in steps)


def in_space(ip: IPAddress, *spaces: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(ip.version == net.version and ip in net for net in spaces)


def carrier_nat(obs: Observations, behind_nat: bool | None, why: list[str]) -> bool:
    """CGNAT: a shared (100.64.0.0/10) public mapping, or a shared/private router beyond the first hop."""
    mapped = obs.mapped
    if mapped is not None and in_space(mapped.ip, SHARED_SPACE):
        why.append(f"The server sees you as {mapped.ip}, in 100.64.0.0/10, the space carriers use for CGNAT.")
        return True
    if not behind_nat:
        return False
    if obs.hops is None:
        why.append(
            f"Carrier-grade NAT was not detected, but not ruled out: the route could not be traced "
            f"({obs.hops_note or 'no ICMP answers'})."
        )
        return False
    for ttl, hop in enumerate(obs.hops[1:], start=2):
        if hop is not None and in_space(hop, SHARED_SPACE):
            why.append(
                f"The router at hop {ttl}, beyond your own, is {hop}, in 100.64.0.0/10 (shared address "
                "space for carrier-grade NAT): your router's WAN side is not on the Internet, so port "
                "forwarding on it cannot help."
            )
            return True
        if hop is not None and in_space(hop, *PRIVATE_SPACE):
            why.append(
                f"The router at hop {ttl}, beyond your own, has the private address {hop}: another NAT "
                "(carrier-grade or double NAT) is between you and the Internet, so port forwarding on your "
                "router cannot help."
            )
            return True
    silent = [ttl for ttl, hop in enumerate(obs.hops, start=1) if hop is None and ttl > 1]
    if silent or (not obs.hops_reached and len(obs.hops) < 2):
        why.append(
            "Not every router beyond your own answered the route trace, so carrier-grade NAT is not "
            "ruled out."
        )
    return False


def classify(obs: Observations) -> NatReport:
    """Turn observations into the report: every field, and the reasons in plain words."""
    why: list[str] = list(obs.notes)
    mapped = obs.mapped
    behind_nat: bool | None = None
    if mapped is not None and obs.local is not None:
        behind_nat = mapped != obs.local
    mapping = mapping_behaviour(obs, why)
    filtering = filtering_behaviour(obs, why)
    cgnat = carrier_nat(obs, behind_nat, why)
    hairpinning: bool | None = None
    if behind_nat and obs.hairpin is not None:
        if (
            obs.hairpin
            or mapping is Behaviour.ENDPOINT_INDEPENDENT
            or filtering is Behaviour.ENDPOINT_INDEPENDENT
        ):
            hairpinning = obs.hairpin
        else:
            why.append("Hairpinning untested: the NAT maps and filters per destination.")
    elif behind_nat is False:
        why.append("No NAT between you and the server, so hairpinning does not apply.")
    if hairpinning is False:
        why.append(
            "Your NAT does not hairpin: from inside the LAN, your own public address does not lead back "
            "in, so peers on the same LAN must use their LAN addresses."
        )
    if obs.lifetime_note:
        why.append(obs.lifetime_note)
    p2p = verdict(mapped, behind_nat, mapping, filtering, port_predictable(obs), why)
    return NatReport(
        server=obs.server,
        public_address=mapped,
        local_address=obs.local,
        behind_nat=behind_nat,
        cgnat=cgnat,
        mapping=mapping,
        filtering=filtering,
        hairpinning=hairpinning,
        mapping_lifetime_s=obs.lifetime,
        p2p=p2p,
        why=" ".join([*_summary(p2p, mapping, filtering, behind_nat), *why]),
        hops=obs.hops,
    )


def verdict(
    mapped: Endpoint | None,
    behind_nat: bool | None,
    mapping: Behaviour | None,
    filtering: Behaviour | None,
    predictable: bool,
    why: list[str],
) -> P2P:
    if mapped is None:
        return P2P.RELAY
    if behind_nat is False or mapping is Behaviour.ENDPOINT_INDEPENDENT:
        return P2P.DIRECT
    if mapping is None:
        why.append("With the mapping unknown, plan on the relay.")
        return P2P.RELAY
    return P2P.PORT_PREDICTION if predictable else P2P.RELAY


def _summary(
    p2p: P2P, mapping: Behaviour | None, filtering: Behaviour | None, behind_nat: bool | None
) -> list[str]:
    if p2p is P2P.RELAY and mapping is None and behind_nat is None:
        return [
            "No STUN answer: UDP to the server is blocked or it runs no STUN responder, so only a relay "
            "over TCP can work."
        ]
    if behind_nat is False:
        return ["Your address is public (no NAT): peers can reach you directly unless a firewall drops them."]
    if p2p is P2P.DIRECT:
        text = (
            "Your NAT keeps one public port per local socket (endpoint-independent mapping), so the address "
            "the server sees is the one a peer can use: hole punching should work."
        )
        if filtering is not Behaviour.ENDPOINT_INDEPENDENT:
            text += " Both sides must send first, since unsolicited packets are filtered."
        return [text]
    if p2p is P2P.PORT_PREDICTION:
        return [
            "Your NAT gives each destination a new public port, but in small steps: a peer can guess the "
            "next one, so a direct connection may work."
        ]
    return [
        "Your NAT gives each destination a new, unpredictable public port, so a peer cannot know where "
        "to send: expect to use the relay (direct works only against an endpoint-independent NAT, with "
        "many probes)."
    ]
