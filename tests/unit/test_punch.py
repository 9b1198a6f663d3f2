"""The hole-punch state machine against simulated NATs (tests/support/natsim.py), with a fake clock."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.natsim import (
    BlockUdp,
    FullCone,
    LinuxMasquerade,
    MappedSymmetric,
    Nat,
    Network,
    NoNat,
    RestrictedCone,
    SimPeer,
    Symmetric,
    run,
)

from pierce.nat import punch_wire
from pierce.nat.candidates import MAX_PAIRS, Candidate, CandidateKind, form_pairs, pair_priority
from pierce.nat.punch import (
    FailReason,
    PathDead,
    PathLocked,
    PeerReflexiveFound,
    PunchAgent,
    PunchFailed,
    PunchSettings,
    Role,
    SocketsRequested,
    State,
)
from pierce.nat.punch_wire import Drop, Kind, PunchPacket, is_punch_packet

SID = b"session-0123456"
KEY = bytes(range(32))
START = 1.0
PUB_A, PUB_B = "198.51.100.1", "203.0.113.1"

NatKind = Callable[[str, random.Random], Nat]


@dataclass
class Outcome:
    a: SimPeer
    b: SimPeer
    net: Network

    @property
    def agents(self) -> tuple[PunchAgent, PunchAgent]:
        assert self.a.agent is not None and self.b.agent is not None
        return self.a.agent, self.b.agent

    @property
    def locked(self) -> bool:
        a, b = self.agents
        return a.state is State.LOCKED and b.state is State.LOCKED

    def lock_time(self) -> float:
        """Seconds from the start until both sides had locked."""
        times = [e.elapsed for p in (self.a, self.b) for e in p.events if isinstance(e, PathLocked)]
        assert len(times) == 2
        return max(times)


def addr_restricted(ip: str, rng: random.Random) -> Nat:
    return RestrictedCone(ip, rng, port_restricted=False)


def setup(
    kind_a: NatKind,
    kind_b: NatKind,
    *,
    seed: int = 0,
    loss: float = 0.0,
    delay: float = 0.01,
    settings: PunchSettings | None = None,
    skew_b: float = 0.0,
    same_site: bool = False,
    roles: tuple[Role, Role] = (Role.CONTROLLING, Role.CONTROLLED),
) -> Outcome:
    net = Network(seed=seed, loss=loss, delay=delay)
    rng = random.Random(seed + 1000)
    site_a = net.site(kind_a(PUB_A, rng))
    if same_site:
        site_b, ip_a, ip_b = site_a, "10.0.0.2", "10.0.0.3"
    else:
        site_b, ip_a, ip_b = net.site(kind_b(PUB_B, rng)), "10.0.0.2", "192.168.1.2"
    if isinstance(site_a.nat, NoNat):
        ip_a = PUB_A
    if isinstance(site_b.nat, NoNat):
        ip_b = PUB_B
    net.host(site_a, ip_a)
    net.host(site_b, ip_b)
    a, b = SimPeer(net, ip_a), SimPeer(net, ip_b)
    cand_a, cand_b = a.candidates(), b.candidates()
    s = settings or PunchSettings()
    a.attach(
        PunchAgent(
            roles[0], SID, KEY, cand_a, cand_b, 0.0, start_at=START, settings=s,
            local_mapping=site_a.nat.mapping, remote_mapping=site_b.nat.mapping, rng=random.Random(seed),
        )
    )  # fmt: skip
    b.attach(
        PunchAgent(
            roles[1], SID, KEY, cand_b, cand_a, 0.0, start_at=START + skew_b, settings=s,
            local_mapping=site_b.nat.mapping, remote_mapping=site_a.nat.mapping, rng=random.Random(~seed),
        )
    )  # fmt: skip
    return Outcome(a, b, net)


def punch(kind_a: NatKind, kind_b: NatKind, *, until: float = 30.0, **kw: object) -> Outcome:
    out = setup(kind_a, kind_b, **kw)  # type: ignore[arg-type]

    def settled() -> bool:
        a, b = out.agents
        return out.locked or State.FAILED in (a.state, b.state)

    run(out.net, [out.a, out.b], until=until, stop=settled)
    return out


# ----- candidates


def test_candidate_priorities_follow_rfc_8445() -> None:
    host = Candidate(CandidateKind.HOST, "10.0.0.2", 1)
    srflx = Candidate(CandidateKind.SRFLX, "198.51.100.1", 1)
    prflx = Candidate(CandidateKind.PRFLX, "198.51.100.1", 2)
    predicted = Candidate(CandidateKind.PREDICTED, "198.51.100.1", 3)
    mapped = Candidate(CandidateKind.MAPPED, "198.51.100.1", 4)
    assert host.priority == (126 << 24) + (65535 << 8) + 255
    assert host.priority > mapped.priority > prflx.priority > srflx.priority > predicted.priority
    assert pair_priority(5, 3) == (3 << 32) + 10 + 1
    assert pair_priority(3, 5) == (3 << 32) + 10
    with pytest.raises(ValueError, match="IP address"):
        Candidate(CandidateKind.HOST, "example.com", 1)


def test_pairs_same_family_deduplicated_ordered_and_capped() -> None:
    local = [
        Candidate(CandidateKind.HOST, "10.0.0.2", 5000),
        Candidate(CandidateKind.SRFLX, "198.51.100.1", 6000),  # same socket 0: pruned to the host pair
        Candidate(CandidateKind.HOST, "2001:db8::2", 5001, socket_id=1),
    ]
    remote = [
        Candidate(CandidateKind.SRFLX, "203.0.113.1", 7000),
        Candidate(CandidateKind.HOST, "192.168.1.2", 7000),
        Candidate(CandidateKind.HOST, "2001:db8::3", 7000),
    ]
    pairs = form_pairs(local, remote, controlling=True)
    assert [(p.socket_id, p.remote) for p in pairs] == [
        (0, ("192.168.1.2", 7000)),
        (1, ("2001:db8::3", 7000)),
        (0, ("203.0.113.1", 7000)),
    ]
    assert all(p.local is not None and p.local.kind is CandidateKind.HOST for p in pairs)
    many = [Candidate(CandidateKind.HOST, f"10.1.{i // 250}.{i % 250 + 1}", 9000) for i in range(300)]
    assert len(form_pairs(local, many, controlling=False)) == MAX_PAIRS


# ----- the codec


@given(
    kind=st.sampled_from(list(Kind)),
    controlling=st.booleans(),
    sid=st.binary(min_size=1, max_size=32),
    txid=st.integers(0, 2**64 - 1),
)
def test_codec_round_trips(kind: Kind, controlling: bool, sid: bytes, txid: int) -> None:
    packet = PunchPacket(kind, controlling, sid, txid)
    data = punch_wire.encode(packet, KEY)
    assert is_punch_packet(data)
    assert punch_wire.decode(data, KEY, sid) == packet


@given(
    kind=st.sampled_from(list(Kind)),
    sid=st.binary(min_size=1, max_size=32),
    txid=st.integers(0, 2**64 - 1),
    bit=st.integers(0, 10_000),
)
def test_codec_rejects_any_bit_flip(kind: Kind, sid: bytes, txid: int, bit: int) -> None:
    data = bytearray(punch_wire.encode(PunchPacket(kind, True, sid, txid), KEY))
    bit %= len(data) * 8
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(punch_wire.PunchWireError):
        punch_wire.decode(bytes(data), KEY)


def test_codec_names_the_failed_check() -> None:
    data = punch_wire.encode(PunchPacket(Kind.PROBE, True, SID, 7), KEY)
    with pytest.raises(punch_wire.PunchWireError) as err:
        punch_wire.decode(data, KEY, b"other")
    assert err.value.reason is Drop.SESSION
    with pytest.raises(punch_wire.PunchWireError) as err:
        punch_wire.decode(data, bytes(32), SID)
    assert err.value.reason is Drop.MAC
    with pytest.raises(punch_wire.PunchWireError) as err:
        punch_wire.decode(data + b"x", KEY, SID)
    assert err.value.reason is Drop.MALFORMED
    with pytest.raises(punch_wire.PunchWireError) as err:
        punch_wire.decode(data[:4] + b"\x02" + data[5:], KEY, SID)
    assert err.value.reason is Drop.VERSION


def test_demux_never_confuses_quic_or_stun() -> None:
    from pierce.nat import stun

    probe = punch_wire.encode(PunchPacket(Kind.PROBE, False, SID, 1), KEY)
    assert probe[0] < 0x40 and probe[0] > 0x03  # not QUIC (0x40..0xFF), not STUN (0x00..0x03)
    assert probe[4:8] != (0x2112A442).to_bytes(4, "big")
    request = stun.encode(stun.Message(stun.Method.BINDING, stun.Class.REQUEST, b"t" * 12))
    for first in (0xC0, 0x40, 0x4F, 0xFF, 0x80):  # QUIC long and short headers
        assert not is_punch_packet(bytes([first]) + probe[1:])
    assert not is_punch_packet(request)
    assert not is_punch_packet(b"\x0cpun")


# ----- NAT pairs


def test_cone_x_cone_locks() -> None:
    out = punch(RestrictedCone, RestrictedCone)
    assert out.locked
    a, b = out.agents
    assert a.locked is not None and a.locked.socket_id == 0 and a.locked.remote == (PUB_B, 40000)
    assert b.locked is not None and b.locked.remote == (PUB_A, 40000)
    # the first probe to the peer's server-reflexive address opens our mapping with a low TTL
    first = next(s for s in out.a.sent if s[2] == (PUB_B, 40000))
    assert first[3] == 2


def test_conntrack_trap_cone_x_cone_locks_with_opening_probes() -> None:
    # B starts 150 ms after A: A's probes reach B's router first, which is the trap, unless B opened first
    out = punch(LinuxMasquerade, LinuxMasquerade, skew_b=0.15)
    assert out.locked
    a, b = out.agents
    assert a.locked is not None and a.locked.remote == (PUB_B, 40000)
    assert b.locked is not None and b.locked.remote == (PUB_A, 40000)


def test_conntrack_trap_fails_without_opening_probes() -> None:
    out = punch(LinuxMasquerade, LinuxMasquerade, skew_b=0.15, settings=PunchSettings(opening_ttl=None))
    a, b = out.agents
    assert a.state is State.FAILED and a.failure is FailReason.TIME_BUDGET
    assert b.state is not State.LOCKED
    nat_b = out.net.sites[PUB_B].nat
    assert isinstance(nat_b, LinuxMasquerade) and nat_b.port_changes > 0  # the trap sprang


def test_conntrack_trap_with_start_skew_beyond_lead_fails() -> None:
    # The documented limit: the rendezvous must keep the start-time skew below lead_s (+ one-way delay).
    out = punch(LinuxMasquerade, LinuxMasquerade, skew_b=0.5)
    assert not out.locked


@pytest.mark.parametrize("other", [NoNat, FullCone, RestrictedCone, Symmetric, LinuxMasquerade])
@pytest.mark.parametrize("controlling_full_cone", [True, False])
def test_full_cone_x_anything_locks(other: NatKind, controlling_full_cone: bool) -> None:
    roles = (
        (Role.CONTROLLING, Role.CONTROLLED) if controlling_full_cone else (Role.CONTROLLED, Role.CONTROLLING)
    )
    out = punch(FullCone, other, roles=roles)
    assert out.locked
    assert out.lock_time() < 2.0


def test_cone_x_full_cone_locks() -> None:
    out = punch(RestrictedCone, FullCone)
    assert out.locked


def test_cone_x_masquerade_and_address_restricted_lock() -> None:
    assert punch(RestrictedCone, LinuxMasquerade).locked
    assert punch(addr_restricted, RestrictedCone).locked


def test_same_nat_locks_on_host_candidates_without_hairpin() -> None:
    out = punch(RestrictedCone, RestrictedCone, same_site=True)
    assert out.locked
    a, b = out.agents
    assert a.locked is not None and a.locked.remote == ("10.0.0.3", 40000)
    assert b.locked is not None and b.locked.remote == ("10.0.0.2", 40000)
    assert a.locked.local is not None and a.locked.local.kind is CandidateKind.HOST


def test_no_nat_x_cone_locks() -> None:
    assert punch(NoNat, RestrictedCone).locked
    assert punch(RestrictedCone, NoNat).locked


def cone_x_symmetric(seed: int, roles: tuple[Role, Role]) -> Outcome:
    return punch(RestrictedCone, Symmetric, seed=seed, roles=roles, until=START + 11)


@pytest.mark.parametrize("easy_controls", [True, False])
def test_cone_x_symmetric_locks_by_port_prediction(easy_controls: bool) -> None:
    roles = (Role.CONTROLLING, Role.CONTROLLED) if easy_controls else (Role.CONTROLLED, Role.CONTROLLING)
    outcomes = [cone_x_symmetric(seed, roles) for seed in range(20)]
    locked = [o for o in outcomes if o.locked]
    print(f"cone x symmetric: {len(locked)} of 20 locked")
    assert len(locked) >= 19
    for o in locked:
        a, b = o.agents
        assert a.probes_sent <= 1024 + 200 + 10  # spray budget, checks at 20/s for 10 s, opening burst
        assert b.locked is not None and b.locked.socket_id != 0  # one of the spray sockets
        assert o.lock_time() <= a.settings.budget_s
    print(f"cone x symmetric: median time to lock {statistics.median(o.lock_time() for o in locked):.2f} s")


def test_conntrack_cone_x_symmetric_locks_with_loss_and_delay() -> None:
    # The spray sockets' opening TTL matters here: spray probes that reached the masquerading router would
    # leave unreplied entries on exactly the ports the easy side must then reach.
    outcomes = [
        punch(LinuxMasquerade, Symmetric, seed=seed, loss=0.05, delay=0.05, until=START + 11)
        for seed in range(20)
    ]
    assert sum(o.locked for o in outcomes) >= 19


def test_symmetric_x_symmetric_fails_at_once() -> None:
    out = setup(Symmetric, Symmetric)
    for peer in (out.a, out.b):
        assert peer.agent is not None and peer.agent.state is State.FAILED
        assert peer.agent.failure is FailReason.BOTH_SYMMETRIC
        assert any(
            isinstance(e, PunchFailed) and e.reason.value == "both sides symmetric" for e in peer.events
        )
        assert peer.agent.next_deadline() is None
        assert peer.agent.datagrams_to_send(START) == []


def mapped_x_symmetric(*, offer_mapping: bool) -> Outcome:
    """A visitor (controlling) behind a symmetric NAT, an owner behind a symmetric NAT whose router maps
    public port 50000 to the owner's socket; the owner offers it (as mapped) or not."""
    net = Network(seed=3)
    rng = random.Random(7)
    site_a, site_b = net.site(Symmetric(PUB_A, rng)), net.site(MappedSymmetric(PUB_B, rng))
    net.host(site_a, "10.0.0.2")
    net.host(site_b, "192.168.1.2")
    a, b = SimPeer(net, "10.0.0.2"), SimPeer(net, "192.168.1.2")
    assert isinstance(site_b.nat, MappedSymmetric)
    site_b.nat.forwards[50000] = b.sockets[0]
    cand_a, cand_b = a.candidates(), b.candidates()
    if offer_mapping:
        cand_b.append(Candidate(CandidateKind.MAPPED, PUB_B, 50000))
    hard = Symmetric.mapping
    for peer, role, local, remote in (
        (a, Role.CONTROLLING, cand_a, cand_b),
        (b, Role.CONTROLLED, cand_b, cand_a),
    ):
        agent = PunchAgent(
            role, SID, KEY, local, remote, 0.0, start_at=START, local_mapping=hard, remote_mapping=hard
        )
        peer.attach(agent)
    out = Outcome(a, b, net)
    run(net, [a, b], until=30.0, stop=lambda: out.locked or State.FAILED in {p.state for p in out.agents})
    return out


def test_symmetric_x_symmetric_locks_on_a_mapped_port() -> None:
    """A router-mapped address takes the checks that no symmetric NAT would: the visitor locks on it,
    within the first round of checks (no port prediction runs), and the owner on the visitor's address
    its NAT gave that flow."""
    out = mapped_x_symmetric(offer_mapping=True)
    assert out.locked
    a, b = out.agents
    assert a.locked is not None and a.locked.remote == (PUB_B, 50000)
    assert b.locked is not None and b.locked.remote[0] == PUB_A
    assert not any(isinstance(e, SocketsRequested) for p in (out.a, out.b) for e in p.events)
    assert out.lock_time() < PunchSettings().lead_s + 4 * PunchSettings().pacing


def test_symmetric_x_symmetric_without_the_mapped_port_fails_at_once() -> None:
    out = mapped_x_symmetric(offer_mapping=False)
    assert all(agent.failure is FailReason.BOTH_SYMMETRIC for agent in out.agents)


def test_unknown_mapping_runs_plain_checks() -> None:
    out = setup(RestrictedCone, Symmetric)
    a = PunchAgent(
        Role.CONTROLLING, SID, KEY, out.a.candidates(), out.b.candidates(), 0.0, remote_mapping=None
    )
    assert a.state is State.PROBING and a.pop_events() == []


def test_udp_blocked_fails_at_budget() -> None:
    out = punch(BlockUdp, RestrictedCone, until=60.0)
    a, b = out.agents
    assert a.state is State.FAILED and a.failure is FailReason.TIME_BUDGET
    assert START + a.settings.budget_s <= out.net.now <= START + a.settings.budget_s + 0.1
    run(out.net, [out.a, out.b], until=60.0)
    assert b.state is State.FAILED
    assert out.net.delivered == 0


# ----- loss and delay


@pytest.mark.parametrize("seed", range(5))
def test_locks_with_loss_and_delay(seed: int) -> None:
    for kinds in ((RestrictedCone, RestrictedCone), (LinuxMasquerade, LinuxMasquerade)):
        out = punch(*kinds, seed=seed, loss=0.05, delay=0.05)
        assert out.locked, kinds


def test_time_to_lock_cone_x_cone() -> None:
    times = [punch(RestrictedCone, RestrictedCone, seed=s, delay=0.02).lock_time() for s in range(10)]
    traps = [punch(LinuxMasquerade, LinuxMasquerade, seed=s, delay=0.02).lock_time() for s in range(10)]
    print(
        f"cone x cone: median {statistics.median(times):.3f} s; conntrack: {statistics.median(traps):.3f} s"
    )
    assert max(times) < 1.0


# ----- authentication


def controlled_agent(**kw: object) -> PunchAgent:
    local = [Candidate(CandidateKind.HOST, "10.0.0.2", 4000)]
    remote = [Candidate(CandidateKind.SRFLX, "203.0.113.1", 5000)]
    return PunchAgent(Role.CONTROLLED, SID, KEY, local, remote, 0.0, **kw)  # type: ignore[arg-type]


def packet(kind: Kind, txid: int, *, key: bytes = KEY, sid: bytes = SID, controlling: bool = True) -> bytes:
    return punch_wire.encode(PunchPacket(kind, controlling, sid, txid), key)


def test_forged_packets_never_lock() -> None:
    agent = controlled_agent()
    attacker = ("192.0.2.66", 666)
    agent.datagrams_to_send(0.5)
    for txid in range(50):
        agent.receive(packet(Kind.NOMINATE, txid, key=bytes(32)), attacker, 0.5)  # wrong key
        agent.receive(packet(Kind.NOMINATE, txid, sid=b"other-session"), attacker, 0.5)
        agent.receive(packet(Kind.NOMINATE, txid, controlling=False), attacker, 0.5)  # our own role
        agent.receive(packet(Kind.ANSWER, txid), attacker, 0.5)  # answers nothing we asked
        agent.receive(b"\x0cpun\x01\x01\x00\x00" + bytes(40), attacker, 0.5)  # no session id
    assert agent.state is State.PROBING and agent.locked is None
    assert agent.dropped[Drop.MAC] == 50
    assert agent.dropped[Drop.SESSION] == 50
    assert agent.dropped[Drop.ROLE] == 50
    assert agent.dropped[Drop.UNKNOWN_TRANSACTION] == 50
    assert agent.dropped[Drop.MALFORMED] == 50
    assert all(o.dest != attacker for o in agent.datagrams_to_send(0.6))


def test_replayed_packets_are_ignored() -> None:
    agent = controlled_agent()
    peer = ("203.0.113.1", 5000)
    nominate = packet(Kind.NOMINATE, 1000)
    agent.receive(nominate, peer, 1.0)
    assert agent.locked is not None and agent.locked.remote == peer
    agent.receive(nominate, ("192.0.2.66", 666), 1.1)  # replayed from elsewhere
    assert agent.dropped[Drop.REPLAY] == 1
    assert agent.locked.remote == peer
    # a replayed answer: our keepalive's answer is accepted once
    keepalive = agent.datagrams_to_send(20.0)
    sent = [o for o in keepalive if punch_wire.decode(o.data, KEY).kind is Kind.KEEPALIVE]
    assert len(sent) == 1
    answer = packet(Kind.ANSWER, punch_wire.decode(sent[0].data, KEY).txid)
    agent.receive(answer, peer, 20.1)
    agent.receive(answer, peer, 20.2)
    assert agent.dropped[Drop.UNKNOWN_TRANSACTION] == 1
    # ids below the window's floor are replays too, once the window has moved on
    small = controlled_agent(settings=PunchSettings(max_transactions=4))
    for txid in range(10, 20):
        small.receive(packet(Kind.PROBE, txid), peer, 1.0)
    small.receive(packet(Kind.PROBE, 11), peer, 1.0)
    assert small.dropped[Drop.REPLAY] == 1


def test_reflected_own_probe_is_ignored() -> None:
    agent = controlled_agent(start_at=1.0)
    own = agent.datagrams_to_send(1.0)
    assert own and own[0].ttl == 2  # the opening probe
    agent.receive(own[0].data, own[0].dest, 1.01)
    assert agent.dropped[Drop.ROLE] == 1
    assert agent.datagrams_to_send(1.01) == []  # no answer to ourselves


def test_probe_from_unknown_source_is_peer_reflexive_and_answered_there() -> None:
    agent = controlled_agent(start_at=0.0)
    agent.datagrams_to_send(0.0)
    source = ("203.0.113.1", 5999)  # the peer's NAT mapped its socket to another port towards us
    agent.receive(packet(Kind.PROBE, 77), source, 0.1)
    assert PeerReflexiveFound(0, source) in agent.pop_events()
    out = agent.datagrams_to_send(0.3)
    answer = [o for o in out if punch_wire.decode(o.data, KEY).kind is Kind.ANSWER]
    assert [(o.dest, punch_wire.decode(o.data, KEY).txid) for o in answer] == [(source, 77)]
    triggered = [o for o in out if punch_wire.decode(o.data, KEY).kind is Kind.PROBE]
    assert [o.dest for o in triggered] == [source]  # the triggered check goes ahead of the round robin


# ----- keepalive


def test_keepalives_keep_the_path_and_a_silent_peer_is_reported_dead() -> None:
    out = punch(RestrictedCone, RestrictedCone)
    assert out.locked
    run(out.net, [out.a, out.b], until=200.0)
    a, b = out.agents
    assert a.state is State.LOCKED and b.state is State.LOCKED
    keepalives = [s for s in out.a.sent if punch_wire.decode(s[4], KEY).kind is Kind.KEEPALIVE]
    assert len(keepalives) == 13  # every 15 s from the lock at 1.3 s to 200 s
    out.b.silent = True
    run(out.net, [out.a, out.b], until=300.0, stop=lambda: a.state is State.FAILED)
    assert a.state is State.FAILED and a.failure is FailReason.PATH_DEAD
    dead = [e for e in out.a.events if isinstance(e, PathDead)]
    assert len(dead) == 1 and dead[0].path == a.locked
    assert 200.0 < out.net.now <= 200.0 + a.settings.dead_after_s + a.settings.keepalive_s


def test_nomination_is_repeated_until_answered() -> None:
    out = punch(RestrictedCone, RestrictedCone, loss=0.3, seed=3)
    run(out.net, [out.a, out.b], until=START + 10)
    a, b = out.agents
    assert a.state is State.LOCKED and b.state is State.LOCKED
    nominations = [s for s in out.a.sent if punch_wire.decode(s[4], KEY).kind is Kind.NOMINATE]
    assert len(nominations) >= 2  # with 30 % loss some were lost, and repeated
    # the controlled side answered one, and the controlling side stopped repeating it
    assert a.next_deadline() == pytest.approx(min(s[0] for s in nominations) + a.settings.keepalive_s)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="pacing"):
        PunchSettings(pacing=0)
    with pytest.raises(ValueError, match="opening_ttl"):
        PunchSettings(opening_ttl=0)
    with pytest.raises(ValueError, match="spray_probes"):
        PunchSettings(spray_ports=(1000, 1100))
    with pytest.raises(ValueError, match="key"):
        PunchAgent(Role.CONTROLLING, SID, b"short", [], [], 0.0)


def test_no_pairs_fails_at_once() -> None:
    local = [Candidate(CandidateKind.HOST, "2001:db8::1", 4000)]
    remote = [Candidate(CandidateKind.HOST, "10.0.0.1", 4000)]
    agent = PunchAgent(Role.CONTROLLING, SID, KEY, local, remote, 0.0)
    assert agent.failure is FailReason.NO_PAIRS


def test_host_candidates_skip_what_a_peer_cannot_reach() -> None:
    from pierce.nat.gather import usable

    for address in ("127.0.0.1", "::1", "169.254.1.2", "fe80::1%eth0", "224.0.0.1", "0.0.0.0", "not-an-ip"):
        assert not usable(address), address
    for address in ("10.0.0.5", "192.168.1.20", "203.0.113.7", "2001:db8::5", "fd00::2"):
        assert usable(address), address
