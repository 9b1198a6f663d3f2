"""When a client pings the server and when it gives up on it, sans-I/O: every call takes ``now``.

The client sends `Ping` every ``interval`` seconds and counts the server as gone ``timeout`` seconds
after its last `Pong` (not up to an interval later): `Heartbeat.deadline` is the next moment anything
is due, `Heartbeat.due` says what is due then. The session sleeps until the deadline and acts; tests
drive the same object with explicit times.
"""

from __future__ import annotations

import enum


class Due(enum.Enum):
    """What `Heartbeat.due` asks the session to do."""

    NOTHING = "nothing"
    PING = "ping"
    #: No answer for ``timeout`` seconds: drop the connection.
    DEAD = "dead"


class Heartbeat:
    def __init__(self, interval: float, timeout: float, now: float) -> None:
        if not 0 < interval < timeout:
            raise ValueError(f"expected 0 < interval < timeout, got {interval:g} and {timeout:g}")
        self.interval = interval
        self.timeout = timeout
        self.last_pong = now
        self.next_ping = now + interval
        #: Sequence number of the last ping sent.
        self.seq = 0

    def pong(self, now: float) -> None:
        """The server answered (any `Pong`)."""
        self.last_pong = now

    def deadline(self) -> float:
        """The next moment something is due: a ping, or the server counting as gone."""
        return min(self.next_ping, self.last_pong + self.timeout)

    def due(self, now: float) -> Due:
        """What to do at ``now``; a `Due.PING` also takes the next sequence number (`seq`)."""
        if now - self.last_pong >= self.timeout:
            return Due.DEAD
        if now >= self.next_ping:
            self.next_ping = now + self.interval
            self.seq += 1
            return Due.PING
        return Due.NOTHING
