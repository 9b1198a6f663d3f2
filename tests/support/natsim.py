"""A small UDP NAT simulator for driving `PunchAgent`s in memory, with a deterministic clock.

Shape of the simulated internet (as in the namespace lab, and as the internet is)::

    host -- NAT router -- ISP router ==core (loss, delay)== ISP router -- NAT router -- host

Each router decrements the TTL and drops a datagram whose TTL reaches 0 before forwarding it (a NAT
router does so before translating, so a TTL-1 datagram creates no mapping). Hosts behind one NAT share a
LAN and reach each other directly; no NAT hairpins. NAT kinds (RFC 4787 terms):

- `NoNat`: the host's address is public.
- `FullCone`: endpoint-independent mapping and filtering.
- `RestrictedCone`: endpoint-independent mapping, address-and-port-dependent filtering (or
  address-dependent with ``port_restricted=False``).
- `Symmetric`: address-and-port-dependent mapping with random ports, address-and-port-dependent
  filtering.
- `LinuxMasquerade`: conntrack as Linux keeps it: the source port is kept unless the reply tuple clashes
  with an existing entry, and an inbound datagram that matches no entry leaves an unreplied entry
  (30 s, refreshed by every datagram that reaches it) that makes the next mapping towards that peer
  take another port: the trap of naive hole punching.
- `BlockUdp`: drops all UDP.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pierce.nat.candidates import Address, Candidate, CandidateKind
from pierce.nat.classify import Behaviour
from pierce.nat.punch import PunchAgent, SocketsRequested

DEFAULT_TTL = 64
UNREPLIED_TIMEOUT = 30.0  # nf_conntrack_udp_timeout
PORTS = (1024, 65535)
STUN_SERVER: Address = ("192.0.2.1", 3478)


class Nat:
    """Translation at one router. `outbound` gives the public source (None: dropped); `inbound` the inside
    destination of a datagram to our public address (None: filtered)."""

    mapping: Behaviour | None = Behaviour.ENDPOINT_INDEPENDENT
    is_router = True  # the NAT box decrements the TTL

    def __init__(self, public_ip: str, rng: random.Random) -> None:
        self.public_ip = public_ip
        self.rng = rng
        self.used: set[int] = set()

    def outbound(self, src: Address, dst: Address, now: float) -> Address | None:
        raise NotImplementedError

    def inbound(self, src: Address, dst: Address, now: float) -> Address | None:
        raise NotImplementedError

    def fresh_port(self, wanted: int | None = None, clash: Callable[[int], bool] = lambda _: False) -> int:
        if wanted is not None and wanted not in self.used and not clash(wanted):
            port = wanted
        else:
            port = self.rng.randint(*PORTS)
            while port in self.used or clash(port):
                port = self.rng.randint(*PORTS)
        self.used.add(port)
        return port


class NoNat(Nat):
    is_router = False

    def outbound(self, src: Address, dst: Address, now: float) -> Address | None:
        return src

    def inbound(self, src: Address, dst: Address, now: float) -> Address | None:
        return dst


class FullCone(Nat):
    def __init__(self, public_ip: str, rng: random.Random) -> None:
        super().__init__(public_ip, rng)
        self.ports: dict[Address, int] = {}
        self.inside: dict[int, Address] = {}

    def outbound(self, src: Address, dst: Address, now: float) -> Address | None:
        port = self.ports.get(src)
        if port is None:
            port = self.ports[src] = self.fresh_port(src[1])
            self.inside[port] = src
        return (self.public_ip, port)

    def inbound(self, src: Address, dst: Address, now: float) -> Address | None:
        return self.inside.get(dst[1])


class RestrictedCone(FullCone):
    def __init__(self, public_ip: str, rng: random.Random, *, port_restricted: bool = True) -> None:
        super().__init__(public_ip, rng)
        self.port_restricted = port_restricted
        self.sent: set[tuple[Address, object]] = set()

    def _peer(self, addr: Address) -> object:
        return addr if self.port_restricted else addr[0]

    def outbound(self, src: Address, dst: Address, now: float) -> Address | None:
        self.sent.add((src, self._peer(dst)))
        return super().outbound(src, dst, now)

    def inbound(self, src: Address, dst: Address, now: float) -> Address | None:
        inside = self.inside.get(dst[1])
        if inside is None or (inside, self._peer(src)) not in self.sent:
            return None
        return inside


class Symmetric(Nat):
    mapping = Behaviour.ADDRESS_AND_PORT_DEPENDENT

    def __init__(self, public_ip: str, rng: random.Random) -> None:
        super().__init__(public_ip, rng)
        self.ports: dict[tuple[Address, Address], int] = {}
        self.back: dict[int, tuple[Address, Address]] = {}

    def outbound(self, src: Address, dst: Address, now: float) -> Address | None:
        port = self.ports.get((src, dst))
        if port is None:
            port = self.ports[(src, dst)] = self.fresh_port()
            self.back[port] = (src, dst)
        return (self.public_ip, port)

    def inbound(self, src: Address, dst: Address, now: float) -> Address | None:
        entry = self.back.get(dst[1])
        if entry is None or entry[1] != src:
            return None
        return entry[0]


class MappedSymmetric(Symmetric):
    """A symmetric NAT whose router also forwards ports it was asked to map (PCP, NAT-PMP, UPnP-IGD):
    ``forwards[public port] = inside address``. A datagram to a forwarded port gets in from anyone, and
    the replies to its sender leave from that port (conntrack's entry for the forwarded flow)."""

    def __init__(self, public_ip: str, rng: random.Random) -> None:
        super().__init__(public_ip, rng)
        self.forwards: dict[int, Address] = {}

    def inbound(self, src: Address, dst: Address, now: float) -> Address | None:
        inside = self.forwards.get(dst[1])
        if inside is None:
            return super().inbound(src, dst, now)
        self.ports.setdefault((inside, src), dst[1])
        return inside


class LinuxMasquerade(Nat):
    def __init__(self, public_ip: str, rng: random.Random) -> None:
        super().__init__(public_ip, rng)
        self.by_orig: dict[tuple[Address, Address], int] = {}  # (inside, remote) -> public port
        self.by_reply: dict[tuple[Address, int], Address] = {}  # (remote, public port) -> inside
        self.unreplied: dict[tuple[Address, int], float] = {}  # (remote, public port) -> expiry
        self.port_changes = 0  # mappings that could not keep the source port

    def _clash(self, remote: Address, now: float) -> Callable[[int], bool]:
        def clash(port: int) -> bool:
            key = (remote, port)
            return key in self.by_reply or self.unreplied.get(key, 0.0) > now

        return clash

    def fresh_port(self, wanted: int | None = None, clash: Callable[[int], bool] = lambda _: False) -> int:
        # Conntrack allows one public port for several remotes: only the reply tuple must be unique.
        if wanted is not None and not clash(wanted):
            return wanted
        self.port_changes += 1
        port = self.rng.randint(*PORTS)
        while clash(port):
            port = self.rng.randint(*PORTS)
        return port

    def outbound(self, src: Address, dst: Address, now: float) -> Address | None:
        port = self.by_orig.get((src, dst))
        if port is None:
            port = self.fresh_port(src[1], self._clash(dst, now))
            self.by_orig[(src, dst)] = port
            self.by_reply[(dst, port)] = src
        return (self.public_ip, port)

    def inbound(self, src: Address, dst: Address, now: float) -> Address | None:
        inside = self.by_reply.get((src, dst[1]))
        if inside is None:
            self.unreplied[(src, dst[1])] = now + UNREPLIED_TIMEOUT
        return inside


class BlockUdp(Nat):
    mapping = None

    def outbound(self, src: Address, dst: Address, now: float) -> Address | None:
        return None

    def inbound(self, src: Address, dst: Address, now: float) -> Address | None:
        return None


Receiver = Callable[[bytes, Address, float], None]


@dataclass
class Site:
    nat: Nat
    hosts: set[str] = field(default_factory=set)


@dataclass(order=True)
class _Arrival:
    at: float
    seq: int
    run: Callable[[], None] = field(compare=False)


class Network:
    """Sites joined by a core with optional loss and delay; `run` advances a deterministic clock."""

    def __init__(self, *, seed: int = 0, loss: float = 0.0, delay: float = 0.01, lan_delay: float = 0.001):
        self.rng = random.Random(seed)
        self.loss = loss
        self.delay = delay
        self.lan_delay = lan_delay
        self.now = 0.0
        self.sites: dict[str, Site] = {}  # by public IP
        self.site_of: dict[str, Site] = {}  # by host IP
        self.sockets: dict[Address, Receiver] = {}
        self._heap: list[_Arrival] = []
        self._seq = 0
        self.delivered = 0

    def site(self, nat: Nat) -> Site:
        site = self.sites[nat.public_ip] = Site(nat)
        return site

    def host(self, site: Site, ip: str) -> None:
        site.hosts.add(ip)
        self.site_of[ip] = site

    def bind(self, addr: Address, receiver: Receiver) -> None:
        assert addr not in self.sockets
        self.sockets[addr] = receiver

    def stun(self, src: Address) -> Address | None:
        """The server-reflexive address a STUN server would see for this socket."""
        site = self.site_of[src[0]]
        return site.nat.outbound(src, STUN_SERVER, self.now)

    def _later(self, delay: float, run: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Arrival(self.now + delay, self._seq, run))

    def send(self, src: Address, dst: Address, data: bytes, ttl: int | None) -> None:
        ttl = DEFAULT_TTL if ttl is None else ttl
        site = self.site_of[src[0]]
        if dst[0] in site.hosts:  # same LAN: no router on the way
            self._later(self.lan_delay, lambda: self._deliver(dst, src, data))
            return
        if dst[0] == site.nat.public_ip:
            return  # no hairpinning
        if site.nat.is_router:
            ttl -= 1
            if ttl == 0:
                return
        public = site.nat.outbound(src, dst, self.now)
        if public is None:
            return
        ttl -= 1  # our ISP router
        if ttl == 0 or self.rng.random() < self.loss:
            return
        self._later(self.delay, lambda: self._arrive(public, dst, data, ttl))

    def _arrive(self, src: Address, dst: Address, data: bytes, ttl: int) -> None:
        site = self.sites.get(dst[0])
        ttl -= 1  # their ISP router
        if site is None or ttl == 0:
            return
        inside = site.nat.inbound(src, dst, self.now)
        if inside is None:
            return
        if site.nat.is_router:
            ttl -= 1
            if ttl == 0:
                return
        self._deliver(inside, src, data)

    def _deliver(self, dst: Address, src: Address, data: bytes) -> None:
        receiver = self.sockets.get(dst)
        if receiver is not None:
            self.delivered += 1
            receiver(data, src, self.now)

    def next_time(self) -> float | None:
        return self._heap[0].at if self._heap else None

    def step_until(self, t: float) -> None:
        while self._heap and self._heap[0].at <= t:
            arrival = heapq.heappop(self._heap)
            self.now = max(self.now, arrival.at)
            arrival.run()


class SimPeer:
    """The driver of one agent: its sockets on one host, the send loop, the events it saw."""

    def __init__(self, net: Network, ip: str, port: int = 40000) -> None:
        self.net = net
        self.ip = ip
        self.sockets: dict[int, Address] = {}
        self.agent: PunchAgent | None = None
        self.events: list[object] = []
        self.sent: list[tuple[float, int, Address, int | None, bytes]] = []  # time, socket, dest, ttl, data
        self.silent = False  # stops sending and receiving (a peer that went away)
        self._next_port = port
        self.bind_socket(0)

    def bind_socket(self, socket_id: int) -> Address:
        addr = (self.ip, self._next_port)
        self._next_port += 1
        self.sockets[socket_id] = addr
        self.net.bind(addr, lambda data, src, now: self._receive(socket_id, data, src, now))
        return addr

    def candidates(self) -> list[Candidate]:
        """Host and server-reflexive candidates of socket 0 (the srflx one as the STUN server sees it)."""
        addr = self.sockets[0]
        cands = [Candidate(CandidateKind.HOST, *addr)]
        srflx = self.net.stun(addr)
        if srflx is not None and srflx != addr:
            cands.append(Candidate(CandidateKind.SRFLX, *srflx))
        return cands

    def attach(self, agent: PunchAgent) -> None:
        self.agent = agent
        self._events()

    def _events(self) -> None:
        assert self.agent is not None
        for event in self.agent.pop_events():
            self.events.append(event)
            if isinstance(event, SocketsRequested):
                first = max(self.sockets) + 1
                ids = list(range(first, first + event.count))
                for sid in ids:
                    self.bind_socket(sid)
                self.agent.add_sockets(ids, self.net.now)

    def _receive(self, socket_id: int, data: bytes, src: Address, now: float) -> None:
        if self.silent or self.agent is None:
            return
        self.agent.receive(data, src, now, socket_id)
        self.pump(now)

    def pump(self, now: float) -> None:
        assert self.agent is not None
        if self.silent:
            return
        for out in self.agent.datagrams_to_send(now):
            self.sent.append((now, out.socket_id, out.dest, out.ttl, out.data))
            self.net.send(self.sockets[out.socket_id], out.dest, out.data, out.ttl)
        self._events()

    def deadline(self) -> float | None:
        if self.silent or self.agent is None:
            return None
        return self.agent.next_deadline()


def run(net: Network, peers: list[SimPeer], until: float, stop: Callable[[], bool] = lambda: False) -> None:
    """Advance the clock event by event to `until` (or until `stop()`)."""
    for _ in range(10_000_000):
        times = [t for t in (p.deadline() for p in peers) if t is not None]
        arrival = net.next_time()
        if arrival is not None:
            times.append(arrival)
        if not times:
            return
        t = max(min(times), net.now)
        if t > until:
            net.now = until
            return
        net.now = t
        net.step_until(t)
        for peer in peers:
            deadline = peer.deadline()
            if deadline is not None and deadline <= t:
                peer.pump(t)
        if stop():
            return
    raise AssertionError("simulation did not settle")
