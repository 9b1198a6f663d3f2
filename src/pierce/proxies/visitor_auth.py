"""How a visitor and the owner of a secret service (stcp, sudp) prove the secret to each other.

The first visit runs SRP-6a (`pierce.protocol.pake`) with the service's ``secret_key`` as the password,
the owner as the verifier and the server only relaying (`VisitorCheck` / `VisitChallenge` /
`VisitAnswer` / `VisitorAnswer` / `VisitorVerdict`). Each side proves the secret to the other; the
server, or an impostor on either side, sees nothing to test a guess against. The exchange ends with a
*ticket*: a name for a key both sides derived, which later visits prove in both directions with one
HMAC each (`visit_proof`, `owner_proof`), so only the first visit pays the extra round trip.

Owner side: `OwnerExchanges` (verifiers, exchanges in flight, tickets; all bounded). Visitor side:
`VisitorTickets`.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from pierce.protocol import ErrorCode, VisitorCheck, VisitorVerdict
from pierce.protocol.auth import derive_key, owner_proof, verify, visit_proof
from pierce.protocol.messages import TICKET_SIZE, VisitorAnswer
from pierce.protocol.pake import PakeFailed, PakeServer, Verifier, make_verifier

#: Exchanges one owner has in flight at once; the oldest are dropped beyond it.
MAX_PENDING = 256
#: Seconds an exchange may wait for the visitor's answer.
PENDING_TTL = 30.0
#: Tickets an owner remembers (the least recently used go first) and how long each lives.
MAX_TICKETS = 4096
TICKET_TTL = 3600.0
#: Accepted visits whose key a P2P rendezvous may still ask for (`OwnerExchanges.visit_key`), and for
#: how long after the verdict.
MAX_VISITS = 1024
VISIT_TTL = 60.0


def ticket_key(session_key: bytes, proxy: str) -> bytes:
    """The key a ticket names, derived from the exchange's session key."""
    return derive_key(session_key, "visit ticket", proxy)


class _Ticket(msgspec.Struct):
    key: bytes
    proxy: str
    user: str
    expires: float


class _Pending(msgspec.Struct):
    pake: PakeServer
    proxy: str
    user: str
    started: float
    #: Who is visiting, for the owner's log line of the final verdict.
    who: Who
    visit_id: str


class Who(msgspec.Struct, frozen=True):
    """A visitor as the owner's log names it."""

    host: str
    port: int
    user: str
    visitor_id: str

    @classmethod
    def of(cls, msg: VisitorCheck) -> Who:
        return cls(msg.visitor_host, msg.visitor_port, msg.visitor_user, msg.visitor_id)


UNKNOWN = Who("0.0.0.0", 0, "", "")


class OwnerExchanges:
    """The owner's half: one SRP verifier per service secret, exchanges in flight, and tickets."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._verifiers: dict[tuple[str, str], Verifier] = {}
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._tickets: OrderedDict[bytes, _Ticket] = OrderedDict()
        #: Accepted visits: visit id -> (proxy, ticket key, expiry).
        self._visits: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()

    def _accepted(self, visit_id: str, proxy: str, key: bytes) -> None:
        now = self.clock()
        self._visits[visit_id] = (proxy, key, now + VISIT_TTL)
        self._visits.move_to_end(visit_id)
        while self._visits and (
            len(self._visits) > MAX_VISITS or next(iter(self._visits.values()))[2] <= now
        ):
            self._visits.popitem(last=False)

    def visit_key(self, visit_id: str, proxy: str) -> bytes | None:
        """The ticket key of a visit to ``proxy`` accepted in the last `VISIT_TTL` seconds (a P2P
        rendezvous derives its key from it); None for any other visit."""
        found = self._visits.get(visit_id)
        if found is None or found[0] != proxy or found[2] <= self.clock():
            return None
        return found[1]

    def _verifier(self, proxy: str, secret: str) -> Verifier:
        found = self._verifiers.get((proxy, secret))
        if found is None:
            if len(self._verifiers) >= MAX_TICKETS:
                self._verifiers.clear()
            found = self._verifiers[(proxy, secret)] = make_verifier(proxy, secret)
        return found

    def start(self, msg: VisitorCheck, secret: str) -> VisitorVerdict:
        """Answer a `VisitorCheck` whose kind and ``allow_users`` passed: a challenge or a verdict."""
        if msg.ticket:
            return self._ticket_visit(msg)
        try:
            pake = PakeServer(msg.proxy, self._verifier(msg.proxy, secret), msg.pake)
        except PakeFailed:
            return _refuse(msg.proxy, msg.check_id, ErrorCode.BAD_MESSAGE, "invalid exchange value")
        now = self.clock()
        self._pending[msg.check_id] = _Pending(
            pake, msg.proxy, msg.visitor_user, now, Who.of(msg), msg.visit_id
        )
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if len(self._pending) <= MAX_PENDING and now - oldest.started < PENDING_TTL:
                break
            self._pending.popitem(last=False)
        return VisitorVerdict(proxy=msg.proxy, check_id=msg.check_id, salt=pake.salt, pake=pake.public)

    def finish(self, msg: VisitorAnswer) -> tuple[VisitorVerdict, Who]:
        """The visitor's proof arrived: accept it (with a new ticket) or refuse it. Also returns who
        the visitor is, for the log."""
        pending = self._pending.pop(msg.check_id, None)
        if pending is None or pending.proxy != msg.proxy:
            expired = _refuse(msg.proxy, msg.check_id, ErrorCode.TIMEOUT, "the exchange expired; visit again")
            return expired, UNKNOWN
        try:
            hamk, key = pending.pake.verify(msg.proof)
        except PakeFailed:
            wrong = _refuse(
                msg.proxy, msg.check_id, ErrorCode.AUTH_FAILED, f"wrong secret for proxy {msg.proxy!r}"
            )
            return wrong, pending.who
        ticket = secrets.token_bytes(TICKET_SIZE)
        shared = ticket_key(key, msg.proxy)
        self._tickets[ticket] = _Ticket(shared, msg.proxy, pending.user, self.clock() + TICKET_TTL)
        self._accepted(pending.visit_id, msg.proxy, shared)
        while len(self._tickets) > MAX_TICKETS:
            self._tickets.popitem(last=False)
        accepted = VisitorVerdict(proxy=msg.proxy, check_id=msg.check_id, proof=hamk, ticket=ticket)
        return accepted, pending.who

    def _ticket_visit(self, msg: VisitorCheck) -> VisitorVerdict:
        found = self._tickets.get(msg.ticket)
        if (
            found is None
            or found.proxy != msg.proxy
            or found.user != msg.visitor_user
            or found.expires <= self.clock()
        ):
            self._tickets.pop(msg.ticket, None)
            return _refuse(
                msg.proxy, msg.check_id, ErrorCode.UNKNOWN_TICKET, "unknown ticket; exchange again"
            )
        self._tickets.move_to_end(msg.ticket)
        proxy, visit_id, nonce = msg.proxy, msg.visit_id, msg.nonce
        if not verify(visit_proof(found.key, proxy=proxy, visit_id=visit_id, nonce=nonce), msg.proof):
            return _refuse(
                msg.proxy, msg.check_id, ErrorCode.AUTH_FAILED, f"wrong secret for proxy {msg.proxy!r}"
            )
        answer = owner_proof(found.key, proxy=proxy, visit_id=visit_id, nonce=nonce)
        self._accepted(visit_id, proxy, found.key)
        return VisitorVerdict(proxy=proxy, check_id=msg.check_id, proof=answer)

    def forget(self, proxy: str) -> None:
        """The service closed or its secret changed: its tickets and verifiers go."""
        for ticket in [t for t, v in self._tickets.items() if v.proxy == proxy]:
            del self._tickets[ticket]
        for key in [k for k in self._verifiers if k[0] == proxy]:
            del self._verifiers[key]
        for visit in [v for v, (p, _, _) in self._visits.items() if p == proxy]:
            del self._visits[visit]


def _refuse(proxy: str, check_id: int, code: ErrorCode, reason: str) -> VisitorVerdict:
    return VisitorVerdict(proxy=proxy, check_id=check_id, code=code, reason=reason)


class VisitorTickets:
    """The visitor's half: a ticket and its key per service, from the last exchange."""

    def __init__(self) -> None:
        self._tickets: dict[str, tuple[bytes, bytes]] = {}

    def get(self, proxy: str) -> tuple[bytes, bytes] | None:
        return self._tickets.get(proxy)

    def keep(self, proxy: str, ticket: bytes, session_key: bytes) -> None:
        if ticket:
            self._tickets[proxy] = (ticket, ticket_key(session_key, proxy))

    def drop(self, proxy: str) -> None:
        self._tickets.pop(proxy, None)
