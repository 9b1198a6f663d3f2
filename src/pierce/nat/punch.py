"""UDP hole punching, sans-I/O: bytes and `now` in, datagrams, events and the next deadline out.

`PunchAgent` runs one punch attempt between two peers that met through the server. The server gave both
the same session id, a per-attempt key and a start time, and each side the other's candidates
(`pierce.nat.candidates`) and NAT mapping behaviour (from ``pierce nat``-style classification; None when
unknown). The driver owns the sockets, each named by an integer id, and a single timer:

    agent = PunchAgent(Role.CONTROLLING, sid, key, local, remote, now, start_at=t0, ...)
    for event in agent.pop_events(): ...        # SocketsRequested: bind that many more sockets
    agent.add_sockets(ids, now)                 # (only the hard side of a port prediction is asked)
    on a datagram:   agent.receive(data, source, now, socket_id); then send datagrams_to_send(now)
    on the timer:    send agent.datagrams_to_send(now); re-arm at agent.next_deadline() (None: stop)

`Outgoing.ttl` is None for the system default, or the IP TTL / hop limit to set for that datagram.

Theory of operation
-------------------
*Opening, then crossing.* A Linux MASQUERADE router keeps the source port unless a conntrack entry
clashes with it, and a peer's probe that arrives before we sent anything towards that peer leaves exactly
such an entry (unreplied, refreshed by every later probe): our next outbound packet to the peer then gets
another public port, which the peer's NAT filters out, so two cone NATs that probe naively never meet.
So at `start_at` each agent first sends one *opening* probe per pair with a small TTL (`opening_ttl`,
default 2: it leaves our NAT, creating our mapping towards the peer, and dies at the next router, before
the peer's NAT). Normal probes start `lead_s` later (default 0.2 s), so each NAT has sent outbound before
the other side's first probe can reach it, provided the two clocks' idea of `start_at` differs by less
than `lead_s` plus the one-way delay: the rendezvous must hand out a start time with that margin. Set
`opening_ttl` to the number of NAT routers on our side plus one (``pierce nat`` hops show them); a TTL
that dies inside a double NAT opens only the inner mapping. Opening probes go to every candidate but a
peer-reflexive one; on a shared LAN nothing decrements the TTL and they arrive like normal probes.

*Checks.* Pairs are checked round robin in priority order, one check every `pacing` seconds (RFC 8445's
Ta of 50 ms), until a lock or `budget_s` after `start_at`. A check is a PROBE with a fresh transaction
id; the peer answers it to the *source address the probe came from*, from the socket it arrived on, so
an answer also crosses a NAT that mapped the peer's side differently (peer-reflexive). A probe from an
address we had no pair for adds one (capped) and reports `PeerReflexiveFound`; any probe queues a
*triggered* check back on its pair, sent at the next pacing slot ahead of the round robin.

*Nomination.* The controlling agent locks the pair (our socket, answer source) of the first
authenticated answer to its probes, stops probing and sends NOMINATE there, repeated every
`nominate_interval_s` until answered (or until the peer's first keepalive). The controlled agent locks
on the first authenticated NOMINATE and answers it; answers to its own probes only mark pairs valid.

*Port prediction (birthday technique).* With one side's mapping address-dependent or address-and-port-
dependent ("hard") and the other's endpoint-independent ("easy"), the hard side's agent asks for
`spray_sockets` extra sockets (default 256, `SocketsRequested`) and sends from each, round robin at
`spray_rate` per second from `start_at` on, an opening-TTL probe to the easy side's server-reflexive
address: each opens one mapping in the hard NAT, and none reaches the easy NAT (where it could only be
filtered, or spring the trap above on the very ports the easy side must reach). The easy side sends
`spray_probes` probes (default 1024) to distinct random ports of the hard side's server-reflexive IP,
at `spray_rate` (default 200/s). A probe that hits one of the 256 mappings is let in (the mapping was
made towards our address), answered and re-checked through it. P(hit) = 1 - (1 - 256/64512)^1024,
about 98 % (Tailscale's numbers). Both sides hard: `FAILED` at once (`FailReason.BOTH_SYMMETRIC`), so
the caller goes to the relay without waiting, unless either side offers a *mapped* candidate (a port its
router forwards because it asked, `pierce.nat.candidates`): that address takes the other side's checks
whatever either NAT does, so plain checks run. An unknown mapping on either side means plain checks only.

*Keepalive.* Once locked, each side sends a KEEPALIVE every `keepalive_s` (15 s, below the 30 s of a
Linux unreplied UDP entry and RFC 4787's 2 min) and answers the peer's. With nothing authenticated
heard on the locked path for `dead_after_s` (30 s, RFC 7675's consent timeout), `PathDead` is
reported and the agent is `FAILED`.

Security: every packet carries the session id and an HMAC keyed by the per-attempt key
(`pierce.nat.punch_wire`); the sender's role bit stops our own packets reflected back at us, a peer's
transaction id is accepted once (a sliding window of `max_transactions`), and an answer must match a
transaction of ours on the socket that sent it. Everything else is counted in `dropped` and ignored, so a
stray or forged packet cannot take the hole. An on-path attacker who can rewrite addresses is not kept
out (a NAT does the same); what runs inside the hole (QUIC with TLS) authenticates the peer again.

Bounds: pairs (`max_pairs` formed plus as many discovered), remembered transactions both ways
(`max_transactions`), send rate (one check per `pacing` plus `spray_rate`, plus one opening burst of at
most `max_pairs` datagrams; answers only one per authenticated request, queued up to `max_answers`),
datagrams originated while probing (`max_probes`), time (`budget_s`).
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import random
import secrets
from collections import deque
from collections.abc import Iterable

import msgspec

from pierce.nat.candidates import (
    MAX_PAIRS,
    TYPE_PREFERENCE,
    Address,
    Candidate,
    CandidateKind,
    Pair,
    form_pairs,
    pair_priority,
)
from pierce.nat.classify import Behaviour
from pierce.nat.punch_wire import (
    MIN_KEY,
    Drop,
    Kind,
    PunchPacket,
    PunchWireError,
    decode,
    encode,
)

_HARD = frozenset({Behaviour.ADDRESS_DEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT})


class Role(enum.Enum):
    CONTROLLING = "controlling"
    CONTROLLED = "controlled"


class State(enum.Enum):
    PROBING = "probing"
    LOCKED = "locked"
    FAILED = "failed"


class FailReason(enum.Enum):
    BOTH_SYMMETRIC = "both sides symmetric"
    NO_PAIRS = "no candidate pairs"
    TIME_BUDGET = "no answer within the time budget"
    PATH_DEAD = "path dead"


class PunchSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Knobs of one attempt; the defaults are the documented ones (module docstring)."""

    #: Seconds between two checks (RFC 8445 Ta).
    pacing: float = 0.05
    #: Seconds after `start_at` before giving up.
    budget_s: float = 10.0
    #: Seconds between the opening burst and the first normal probe.
    lead_s: float = 0.2
    #: TTL of the opening probes; None sends no opening probes.
    opening_ttl: int | None = 2
    keepalive_s: float = 15.0
    dead_after_s: float = 30.0
    nominate_interval_s: float = 0.2
    max_pairs: int = MAX_PAIRS
    #: Datagrams the agent originates while probing (checks, opening and spray probes).
    max_probes: int = 4096
    #: Our outstanding transactions, and the peer's transaction ids remembered against replay.
    max_transactions: int = 4096
    #: Answers waiting for `datagrams_to_send`.
    max_answers: int = 256
    spray_sockets: int = 256
    spray_probes: int = 1024
    #: Spray datagrams per second (both sides of a port prediction).
    spray_rate: float = 200.0
    #: Ports the easy side guesses from (inclusive).
    spray_ports: tuple[int, int] = (1024, 65535)

    def __post_init__(self) -> None:
        positive = ("pacing", "budget_s", "keepalive_s", "dead_after_s", "nominate_interval_s", "spray_rate")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.lead_s < 0:
            raise ValueError("lead_s must not be negative")
        if self.opening_ttl is not None and not 1 <= self.opening_ttl <= 255:
            raise ValueError("opening_ttl must be 1..255 or None")
        counts = ("max_pairs", "max_probes", "max_transactions", "max_answers", "spray_sockets")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        lo, hi = self.spray_ports
        if not 1 <= lo <= hi <= 65535:
            raise ValueError("spray_ports must be a range within 1..65535")
        if not 0 <= self.spray_probes <= (hi - lo + 1) // 2:
            raise ValueError("spray_probes must be at most half the spray port range")


class Outgoing(msgspec.Struct, frozen=True):
    socket_id: int
    dest: Address
    data: bytes
    ttl: int | None = None


class Path(msgspec.Struct, frozen=True):
    """The locked hole: our socket (and its candidate, if it has one) and the peer's address."""

    socket_id: int
    local: Candidate | None
    remote: Address


class SocketsRequested(msgspec.Struct, frozen=True):
    """Bind this many more sockets (same address family as the spray target) and `add_sockets` them."""

    count: int


class PeerReflexiveFound(msgspec.Struct, frozen=True):
    socket_id: int
    address: Address


class PathLocked(msgspec.Struct, frozen=True):
    path: Path
    #: Seconds from `start_at` to the lock.
    elapsed: float


class PunchFailed(msgspec.Struct, frozen=True):
    reason: FailReason
    detail: str


class PathDead(msgspec.Struct, frozen=True):
    path: Path
    silent_s: float


PunchEvent = SocketsRequested | PeerReflexiveFound | PathLocked | PunchFailed | PathDead


class _Spray(enum.Enum):
    EASY = "easy"  # we guess the hard side's ports
    HARD = "hard"  # we open many mappings towards the easy side


class _ReplayWindow:
    """Peer transaction ids seen; ids are a counter per sender, so evicted ids fall below a floor."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: set[int] = set()
        self._heap: list[int] = []
        self._floor = -1

    def fresh(self, txid: int) -> bool:
        if txid <= self._floor or txid in self._seen:
            return False
        self._seen.add(txid)
        heapq.heappush(self._heap, txid)
        if len(self._heap) > self._size:
            self._floor = heapq.heappop(self._heap)
            self._seen.discard(self._floor)
        return True


class PunchAgent:
    """One side of one punch attempt. See the module docstring for the protocol."""

    def __init__(
        self,
        role: Role,
        session_id: bytes,
        key: bytes,
        local_candidates: Iterable[Candidate],
        remote_candidates: Iterable[Candidate],
        now: float,
        *,
        start_at: float | None = None,
        local_mapping: Behaviour | None = None,
        remote_mapping: Behaviour | None = None,
        settings: PunchSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if len(key) < MIN_KEY:
            raise ValueError(f"the punch key must be at least {MIN_KEY} bytes")
        self.role = role
        self.settings = s = settings or PunchSettings()
        self.state = State.PROBING
        self.locked: Path | None = None
        self.failure: FailReason | None = None
        #: Datagrams ignored, by reason.
        self.dropped: dict[Drop, int] = dict.fromkeys(Drop, 0)
        #: Datagrams originated while probing (checks, opening and spray probes).
        self.probes_sent = 0
        self._controlling = role is Role.CONTROLLING
        self._session_id = session_id
        self._key = key
        self._rng = rng or random.Random(secrets.randbits(128))
        self._start = now if start_at is None else start_at
        self._now = now
        self._local = list(local_candidates)
        self._remote = list(remote_candidates)
        self._remote_addresses = {c.address: c.kind for c in self._remote}
        self._socket_candidate = self._best_candidate_per_socket()
        self._pairs = form_pairs(self._local, self._remote, controlling=self._controlling, limit=s.max_pairs)
        self._by_key = {p.key: p for p in self._pairs}
        self._discovered = 0
        self._triggered: deque[Pair] = deque()
        self._rr = 0
        self._opened = False
        self._next_check = self._start + s.lead_s
        self._txid = self._rng.getrandbits(62)
        self._outstanding: dict[int, tuple[int, Kind]] = {}
        self._window = _ReplayWindow(s.max_transactions)
        self._queue: list[Outgoing] = []
        self._events: list[PunchEvent] = []
        # port prediction
        self._spray: _Spray | None = None
        self._spray_targets: list[tuple[int, Address]] = []  # (socket, remote); EASY: remote port unused
        self._spray_sockets: list[int] = []
        self._spray_used: dict[str, set[int]] = {}
        self._spray_sent = 0
        self._spray_i = 0
        self._next_spray = self._start + s.lead_s
        # after the lock
        self._next_keepalive = 0.0
        self._next_nominate: float | None = None
        self._last_heard = 0.0
        self._plan(local_mapping, remote_mapping)

    # ----- the driver's interface

    def pop_events(self) -> list[PunchEvent]:
        events, self._events = self._events, []
        return events

    def add_sockets(self, socket_ids: Iterable[int], now: float) -> None:
        """The sockets asked for by `SocketsRequested` (ids unused by any local candidate)."""
        ids = list(socket_ids)
        taken = {c.socket_id for c in self._local} | set(self._spray_sockets)
        if self._spray is not _Spray.HARD:
            raise ValueError("no sockets were requested")
        if len(ids) + len(self._spray_sockets) > self.settings.spray_sockets:
            raise ValueError(f"at most {self.settings.spray_sockets} spray sockets were requested")
        if taken.intersection(ids) or len(set(ids)) != len(ids):
            raise ValueError("spray socket ids must be new and distinct")
        self._spray_sockets.extend(ids)
        self._now = now

    def receive(self, data: bytes, source: Address, now: float, socket_id: int = 0) -> None:
        """A datagram that `is_punch_packet` claimed, as received on `socket_id` from `source`."""
        self._now = now
        if self.state is State.FAILED:
            return
        try:
            packet = decode(data, self._key, self._session_id)
        except PunchWireError as exc:
            self._drop(exc.reason)
            return
        if packet.controlling == self._controlling:
            self._drop(Drop.ROLE)
            return
        if packet.kind is Kind.ANSWER:
            self._on_answer(packet.txid, socket_id, source, now)
            return
        if not self._window.fresh(packet.txid):
            self._drop(Drop.REPLAY)
            return
        if packet.kind is Kind.PROBE:
            self._on_probe(packet.txid, socket_id, source, now)
        elif packet.kind is Kind.NOMINATE:
            self._on_nominate(packet.txid, socket_id, source, now)
        else:
            self._on_keepalive(packet.txid, socket_id, source, now)

    def datagrams_to_send(self, now: float) -> list[Outgoing]:
        self._now = now
        out, self._queue = self._queue, []
        if self.state is State.FAILED or now < self._start:
            return out
        if not self._opened:
            self._opened = True
            self._open(out)
        if self.state is State.PROBING:
            self._probe(now, out)
        elif self.state is State.LOCKED:
            self._keep(now, out)
        return out

    def next_deadline(self) -> float | None:
        if self._queue:
            return self._now
        if self.state is State.FAILED:
            return None
        if not self._opened:
            return self._start
        s = self.settings
        if self.state is State.LOCKED:
            times = [self._next_keepalive, self._last_heard + s.dead_after_s]
            if self._next_nominate is not None:
                times.append(self._next_nominate)
            return min(times)
        times = [self._start + s.budget_s]
        if self.probes_sent < s.max_probes:
            if self._pairs:
                times.append(self._next_check)
            if self._spray_active():
                times.append(self._next_spray)
        return min(times)

    # ----- planning

    def _best_candidate_per_socket(self) -> dict[int, Candidate]:
        best: dict[int, Candidate] = {}
        for c in self._local:
            old = best.get(c.socket_id)
            if old is None or c.priority > old.priority:
                best[c.socket_id] = c
        return best

    def _plan(self, local: Behaviour | None, remote: Behaviour | None) -> None:
        # A router-mapped address takes the other side's checks whatever either NAT does: plain checks.
        mapped = any(c.kind is CandidateKind.MAPPED for c in (*self._local, *self._remote))
        if local in _HARD and remote in _HARD and not mapped:
            self._fail(FailReason.BOTH_SYMMETRIC, f"mappings: ours {local}, theirs {remote}")
            return
        easy = (Behaviour.ENDPOINT_INDEPENDENT,)
        if local in _HARD and remote in easy:
            targets = [c for c in self._remote if c.kind is CandidateKind.SRFLX]
            if targets:
                self._spray = _Spray.HARD
                self._spray_targets = [(0, c.address) for c in targets]
                if self.settings.opening_ttl is not None:
                    self._next_spray = self._start  # these never reach the peer: no lead needed
                self._events.append(SocketsRequested(self.settings.spray_sockets))
        elif local in easy and remote in _HARD:
            ips = {c.host for c in self._remote if c.kind is CandidateKind.SRFLX}
            mine = [c for c in self._local if c.kind is CandidateKind.SRFLX] or self._local
            sockets = {(c.socket_id, c.version) for c in mine}
            for ip in sorted(ips):
                version = ipaddress.ip_address(ip).version
                for sock in sorted(sid for sid, v in sockets if v == version):
                    self._spray_targets.append((sock, (ip, 0)))
            if self._spray_targets:
                self._spray = _Spray.EASY
        if not self._pairs and self._spray is None:
            self._fail(FailReason.NO_PAIRS, "no local and remote candidates of one address family")

    def _spray_active(self) -> bool:
        if self._spray is _Spray.EASY:
            return self._spray_sent < self.settings.spray_probes
        return self._spray is _Spray.HARD and bool(self._spray_sockets)

    # ----- probing

    def _open(self, out: list[Outgoing]) -> None:
        ttl = self.settings.opening_ttl
        if ttl is None or self.state is not State.PROBING:
            return
        for pair in self._pairs:
            if pair.remote_kind is not CandidateKind.PRFLX and self._budget_left():
                out.append(self._request(Kind.PROBE, pair.socket_id, pair.remote, ttl))

    def _probe(self, now: float, out: list[Outgoing]) -> None:
        s = self.settings
        if now >= self._start + s.budget_s:
            self._fail(FailReason.TIME_BUDGET, f"{s.budget_s:g} s, {self.probes_sent} probes sent")
            return
        if now >= self._next_check and self._pairs and self._budget_left():
            pair = self._next_pair()
            pair.checks_sent += 1
            out.append(self._request(Kind.PROBE, pair.socket_id, pair.remote, None))
            self._next_check = _advance(self._next_check, s.pacing, now)
        if self._spray_active() and now >= self._next_spray and self._budget_left():
            out.append(self._spray_one())
            self._next_spray = _advance(self._next_spray, 1 / s.spray_rate, now)

    def _next_pair(self) -> Pair:
        if self._triggered:
            pair = self._triggered.popleft()
            pair.triggered = False
            return pair
        pair = self._pairs[self._rr % len(self._pairs)]
        self._rr += 1
        return pair

    def _spray_one(self) -> Outgoing:
        if self._spray is _Spray.HARD:
            n = len(self._spray_sockets)
            i = self._spray_i % (n * len(self._spray_targets))
            self._spray_i += 1
            _, dest = self._spray_targets[i // n]
            return self._request(Kind.PROBE, self._spray_sockets[i % n], dest, self.settings.opening_ttl)
        sock, (ip, _) = self._spray_targets[self._spray_i % len(self._spray_targets)]
        self._spray_i += 1
        self._spray_sent += 1
        used = self._spray_used.setdefault(ip, set())
        lo, hi = self.settings.spray_ports
        port = self._rng.randint(lo, hi)
        while port in used:
            port = self._rng.randint(lo, hi)
        used.add(port)
        return self._request(Kind.PROBE, sock, (ip, port), None)

    def _budget_left(self) -> bool:
        return self.probes_sent < self.settings.max_probes

    def _request(self, kind: Kind, socket_id: int, dest: Address, ttl: int | None) -> Outgoing:
        """A probe, nomination or keepalive with a new transaction id, remembered for its answer."""
        if self.state is State.PROBING:
            self.probes_sent += 1
        self._txid += 1
        self._outstanding[self._txid] = (socket_id, kind)
        if len(self._outstanding) > self.settings.max_transactions:
            del self._outstanding[next(iter(self._outstanding))]
        return Outgoing(socket_id, dest, self._encode(kind, self._txid), ttl)

    def _encode(self, kind: Kind, txid: int) -> bytes:
        return encode(PunchPacket(kind, self._controlling, self._session_id, txid), self._key)

    def _answer(self, txid: int, socket_id: int, dest: Address) -> None:
        if len(self._queue) >= self.settings.max_answers:
            self._drop(Drop.OVERFLOW)
            return
        self._queue.append(Outgoing(socket_id, dest, self._encode(Kind.ANSWER, txid)))

    # ----- receiving

    def _on_probe(self, txid: int, socket_id: int, source: Address, now: float) -> None:
        self._answer(txid, socket_id, source)
        if self.state is State.LOCKED:
            self._heard(socket_id, source, now)
            return
        pair = self._by_key.get((socket_id, source))
        if pair is None:
            pair = self._discover(socket_id, source)
        if pair is not None and not pair.answered and not pair.triggered:
            pair.triggered = True
            self._triggered.append(pair)

    def _discover(self, socket_id: int, source: Address) -> Pair | None:
        """A probe from an address we had no pair for on this socket: a new pair (capped)."""
        if self._discovered >= self.settings.max_pairs:
            return None
        kind = self._remote_addresses.get(source)
        if kind is None:
            kind = CandidateKind.PRFLX
            self._events.append(PeerReflexiveFound(socket_id, source))
        local = self._socket_candidate.get(socket_id)
        ours = local.priority if local is not None else TYPE_PREFERENCE[CandidateKind.PRFLX] << 24
        theirs = (TYPE_PREFERENCE[CandidateKind.PRFLX] << 24) + (65535 << 8) + 255
        g, d = (ours, theirs) if self._controlling else (theirs, ours)
        pair = Pair(socket_id, local, source, kind, pair_priority(g, d))
        self._discovered += 1
        self._pairs.append(pair)
        self._by_key[pair.key] = pair
        return pair

    def _on_answer(self, txid: int, socket_id: int, source: Address, now: float) -> None:
        entry = self._outstanding.pop(txid, None)
        if entry is None:
            self._drop(Drop.UNKNOWN_TRANSACTION)
            return
        sent_on, kind = entry
        if sent_on != socket_id:
            self._drop(Drop.WRONG_SOCKET)
            return
        if self.state is State.LOCKED:
            if self._heard(socket_id, source, now) and kind is Kind.NOMINATE:
                self._next_nominate = None
            return
        if self.state is not State.PROBING:
            return
        pair = self._by_key.get((socket_id, source))
        if pair is not None:
            pair.answered = True
        if self._controlling:
            self._lock(socket_id, source, now)
            self._queue.append(self._request(Kind.NOMINATE, socket_id, source, None))

    def _on_nominate(self, txid: int, socket_id: int, source: Address, now: float) -> None:
        if self.state is State.PROBING:
            self._lock(socket_id, source, now)
        elif not self._heard(socket_id, source, now):
            self._drop(Drop.NOT_LOCKED_PATH)
            return
        self._answer(txid, socket_id, source)

    def _on_keepalive(self, txid: int, socket_id: int, source: Address, now: float) -> None:
        if self.state is not State.LOCKED or not self._heard(socket_id, source, now):
            self._drop(Drop.NOT_LOCKED_PATH)
            return
        self._next_nominate = None  # the controlled side keeps alive only once it locked
        self._answer(txid, socket_id, source)

    def _heard(self, socket_id: int, source: Address, now: float) -> bool:
        path = self.locked
        if path is None or path.socket_id != socket_id or path.remote != source:
            return False
        self._last_heard = now
        return True

    # ----- locked

    def _lock(self, socket_id: int, source: Address, now: float) -> None:
        path = Path(socket_id, self._socket_candidate.get(socket_id), source)
        self.state = State.LOCKED
        self.locked = path
        self._last_heard = now
        self._next_keepalive = now + self.settings.keepalive_s
        if self._controlling:
            self._next_nominate = now + self.settings.nominate_interval_s
        self._triggered.clear()
        self._spray_used.clear()
        self._events.append(PathLocked(path, now - self._start))

    def _keep(self, now: float, out: list[Outgoing]) -> None:
        path = self.locked
        assert path is not None
        s = self.settings
        silent = now - self._last_heard
        if silent >= s.dead_after_s:
            self.state = State.FAILED
            self.failure = FailReason.PATH_DEAD
            self._events.append(PathDead(path, silent))
            return
        if self._next_nominate is not None and now >= self._next_nominate:
            out.append(self._request(Kind.NOMINATE, path.socket_id, path.remote, None))
            self._next_nominate = _advance(self._next_nominate, s.nominate_interval_s, now)
        if now >= self._next_keepalive:
            out.append(self._request(Kind.KEEPALIVE, path.socket_id, path.remote, None))
            self._next_keepalive = _advance(self._next_keepalive, s.keepalive_s, now)

    # ----- bookkeeping

    def _fail(self, reason: FailReason, detail: str) -> None:
        self.state = State.FAILED
        self.failure = reason
        self._events.append(PunchFailed(reason, detail))

    def _drop(self, reason: Drop) -> None:
        self.dropped[reason] += 1


def _advance(deadline: float, interval: float, now: float) -> float:
    """The next slot after `deadline`; a driver that woke late does not get a burst to catch up."""
    nxt = deadline + interval
    return nxt if nxt > now else now + interval


__all__ = [
    "Address",
    "Candidate",
    "CandidateKind",
    "FailReason",
    "Outgoing",
    "Path",
    "PathDead",
    "PathLocked",
    "PeerReflexiveFound",
    "PunchAgent",
    "PunchEvent",
    "PunchFailed",
    "PunchSettings",
    "Role",
    "SocketsRequested",
    "State",
]
