"""Visitor sessions: a visitor logs in with SRP once, and its later connections prove a derived key.

A `pierce visit` (or a client's ``[[visitors]]``) opens one TLS connection per application connection.
The first one runs the full login; the server then remembers the user and a visitor key under a fresh
session id, and the visitor's later connections prove that key with one HMAC each way (as work
connections do), never the token. The table is bounded in size and entries expire when unused.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

#: Visitor sessions the server remembers (the least recently used are forgotten first).
MAX_VISITOR_SESSIONS = 10_000
#: Seconds an unused visitor session lives; a visitor then logs in again.
VISITOR_SESSION_TTL = 24 * 3600.0


class VisitorSession(msgspec.Struct):
    user: str
    key: bytes
    last_used: float


class VisitorSessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._sessions: OrderedDict[str, VisitorSession] = OrderedDict()

    def add(self, run_id: str, user: str, key: bytes) -> None:
        self._sessions[run_id] = VisitorSession(user, key, self.clock())
        while len(self._sessions) > MAX_VISITOR_SESSIONS:
            self._sessions.popitem(last=False)

    def get(self, run_id: str) -> VisitorSession | None:
        found = self._sessions.get(run_id)
        now = self.clock()
        if found is None or now - found.last_used > VISITOR_SESSION_TTL:
            self._sessions.pop(run_id, None)
            return None
        found.last_used = now
        self._sessions.move_to_end(run_id)
        return found

    def __len__(self) -> int:
        return len(self._sessions)
