"""One direct UDP path, end to end: punch the hole, then run QUIC in it.

`punch_udp` drives `pierce.nat.punch.PunchAgent` on a socket that already gathered its candidates
(`pierce.p2p.gather`); the visitor is the controlling agent and the QUIC client, the owner the
controlled agent and the QUIC server. `DirectPath` is what a locked hole becomes: the QUIC connection,
the path it took (`pierce.snapshot.ConnectionPath`), its RTT, and how long the punch took.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

import msgspec

from pierce.config import P2pOptions
from pierce.errors import PierceError
from pierce.nat.candidates import Candidate, CandidateKind, on_lan
from pierce.nat.classify import Behaviour
from pierce.nat.punch import PunchAgent, PunchSettings, Role
from pierce.nat.punch_io import run_punch
from pierce.p2p.gather import Gathered, offered
from pierce.p2p.settings import PathSettings
from pierce.protocol.p2p import Offer
from pierce.snapshot import ConnectionPath

if TYPE_CHECKING:
    from pierce.p2p.quic import QuicPath

#: Mapping behaviours that give each destination its own public port (symmetric NATs).
HARD = frozenset({Behaviour.ADDRESS_DEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT})


class DirectPath(msgspec.Struct):
    """A live direct path: QUIC in a punched hole."""

    quic: QuicPath
    path: ConnectionPath
    #: Seconds from the start of the punch to the lock.
    punch_s: float
    #: The proxy it reaches.
    proxy: str = ""

    @property
    def rtt_ms(self) -> float:
        return self.quic.rtt * 1000

    @property
    def alive(self) -> bool:
        return not self.quic.closed.is_set()

    def close(self) -> None:
        self.quic.close()


def behaviour(text: str) -> Behaviour | None:
    """A peer's mapping behaviour from its offer (None: unknown or not one we know)."""
    try:
        return Behaviour(text) if text else None
    except ValueError:
        return None


def path_kind(
    remote: tuple[str, int],
    remote_candidates: list[Candidate],
    remote_mapping: Behaviour | None,
    *,
    spray_socket: bool,
    mapped_here: bool = False,
) -> ConnectionPath:
    """What kind of direct path a hole to ``remote`` is: the peer's address on a shared private network
    ("direct lan"), a port the peer's router maps to it ("direct mapped": ``remote`` is the peer's mapped
    candidate; or, ``mapped_here``, our router maps our locked socket's port: which of our addresses the
    peer's packets were sent to is not visible here, the router hands them all to the same socket), a port
    found by prediction ("direct predicted": our locked socket is one of the sockets a prediction opened,
    or the peer is symmetric and answered from a port it never offered), or a plain punched hole ("direct
    udp", also to a peer with a public address and no NAT)."""
    offered = {c.address: c.kind for c in remote_candidates}
    if offered.get(remote) is CandidateKind.HOST and on_lan(remote[0]):
        return ConnectionPath.DIRECT_LAN
    if offered.get(remote) is CandidateKind.MAPPED or (mapped_here and not spray_socket):
        return ConnectionPath.DIRECT_MAPPED
    if spray_socket or (remote not in offered and remote_mapping in HARD):
        return ConnectionPath.DIRECT_PREDICTED
    return ConnectionPath.DIRECT_UDP


class Hole(msgspec.Struct):
    """A locked hole: the socket that holds it (a prediction socket may have won), the peer's address,
    the kind of path, how long the punch took, and the agent that keeps answering the peer."""

    sock: socket.socket
    peer: tuple[str, int]
    kind: ConnectionPath
    elapsed: float
    after: AfterLock


class NoHole(PierceError):
    """The punch found no path (the reason names why)."""


#: Seconds a punch tries when only a LAN path is possible (a LAN answers within milliseconds).
LAN_BUDGET_S = 1.5


def lan_only(local: Gathered, remote: list[Candidate], stun_asked: bool) -> str | None:
    """Why only a path over a shared LAN can work (None when a path across NATs may): a side with no
    address outside its LAN. Both sides reach the same verdict from the same two offers."""
    if stun_asked and local.reflexive is None:
        return "no STUN answer here: outgoing UDP looks blocked"
    if all(on_lan(c.host) for c in local.candidates):
        return "no UDP address outside the LAN here"
    if all(on_lan(c.host) for c in remote):
        return "the peer has no public UDP address (its UDP looks blocked)"
    return None


async def punch_hole(
    role: Role,
    sock: socket.socket,
    *,
    visit_id: str,
    key: bytes,
    local: Gathered,
    remote: Offer,
    settings: PunchSettings,
    stun_asked: bool,
    delay: float = 0.0,
) -> Hole:
    """Punch from ``sock`` (which gathered ``local``) toward the peer's offer, starting after ``delay``
    seconds. On a lock, ``sock`` is closed if another socket won, and the agent keeps answering on the
    winner (`Hole.after`, started). Raises `NoHole` with the reason otherwise. When only a LAN path can
    work (`lan_only`), the punch gives up after `LAN_BUDGET_S` and says why."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    candidates = offered(remote)
    mapping = behaviour(remote.mapping)
    lan = lan_only(local, candidates, stun_asked)
    if lan is not None:
        settings = msgspec.structs.replace(settings, budget_s=min(settings.budget_s, LAN_BUDGET_S))
    agent = PunchAgent(
        role,
        visit_id.encode()[:32],
        key,
        local.candidates,
        candidates,
        now,
        start_at=now + delay,
        local_mapping=local.mapping,
        remote_mapping=mapping,
        settings=settings,
    )
    result = await run_punch(agent, {0: sock})
    if result.locked is None or result.sock is None:
        if lan is not None:
            raise NoHole(f"{lan}; no LAN path answered")
        raise NoHole(result.failed.reason.value if result.failed else "no lock")
    if result.sock is not sock:
        sock.close()
    path = result.locked.path
    after = AfterLock(agent, result.sock, path.socket_id)
    after.start()
    mapped_here = any(c.kind is CandidateKind.MAPPED for c in local.candidates)
    kind = path_kind(
        path.remote, candidates, mapping, spray_socket=path.socket_id != 0, mapped_here=mapped_here
    )
    return Hole(result.sock, path.remote, kind, result.locked.elapsed, after)


class AfterLock:
    """Keeps an agent answering on its locked socket once QUIC owns the socket: the peer may lock after
    us and still needs our answers (and the controlling side's NOMINATE until it is answered).

    `QuicPath` hands it every punch packet (``on_other``); a timer sends what the agent wants sent.
    Events after the lock are ignored: QUIC's own keepalive and idle timeout judge the path.
    """

    def __init__(self, agent: PunchAgent, sock: socket.socket, socket_id: int) -> None:
        self.agent = agent
        self.sock = sock
        self.socket_id = socket_id
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self._flush()

    def on_other(self, data: bytes, source: tuple[str, int]) -> None:
        if self._closed:
            return
        self.agent.receive(data, (str(source[0]), int(source[1])), self.loop.time(), self.socket_id)
        self._flush()

    def _flush(self) -> None:
        if self._closed:
            return
        now = self.loop.time()
        for out in self.agent.datagrams_to_send(now):
            if out.socket_id == self.socket_id and out.ttl is None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(out.data, out.dest)
        self.agent.pop_events()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.agent.next_deadline()
        if deadline is not None:
            self._timer = self.loop.call_at(max(deadline, now + 0.01), self._flush)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()


def punch_settings(options: P2pOptions) -> PunchSettings:
    """The punch agent's settings from ``[p2p]``."""
    return PunchSettings(
        budget_s=options.punch_budget_s,
        opening_ttl=options.opening_ttl or None,
        keepalive_s=options.keepalive_s,
        dead_after_s=max(30.0, 2 * options.keepalive_s),
        spray_sockets=options.prediction_sockets,
        spray_probes=options.prediction_probes,
        spray_rate=options.prediction_rate,
        max_probes=max(4096, options.prediction_probes * 2),
    )


def path_settings(options: P2pOptions) -> PathSettings:
    """QUIC's settings from ``[p2p]``: its keepalive is the punch's, its idle timeout three of them."""
    return PathSettings(keepalive_s=options.keepalive_s, idle_timeout=max(30.0, 3 * options.keepalive_s))
