"""Caps on the connections of the web ports, sans-I/O: how many per source, how many not yet spoken.

A visitor who opens connections and sends nothing (or a byte now and then) costs a socket and a task
each until a deadline ends them. Two caps keep that bounded (`ConnectionLimits`):

- per source: connections open at once from one address (an IPv6 source counts per /64, which one
  host usually holds whole; an IPv4-mapped IPv6 address counts as its IPv4 address);
- pending: connections, from anywhere, that have not yet sent a complete first request head or
  ClientHello.

Over a cap the new connection is turned away at once. The counts live in dictionaries that hold only
sources with connections open, so they are bounded by the connections themselves. Refusals are
counted; `RefusalLog` says when one is worth a log line, so a flood cannot flood the log.

The one piece with I/O, `admit_or_reset`, is what each public front (the web ports, the tcpmux port)
calls on accept: count the connection in, or reset it and log the refusal.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, Final

from pierce.addr import format_sockaddr, source_of
from pierce.listeners import drop
from pierce.logs import log_front_refused

__all__ = ["Admission", "ConnectionLimits", "RefusalLog", "admit_or_reset"]

TOO_MANY_CONNS: Final = "too_many_conns"
TOO_MANY_PENDING: Final = "too_many_pending"


class Admission:
    """One admitted connection: `settle` once its first head or ClientHello is in, `release` at its end
    (both may be called more than once)."""

    __slots__ = ("_key", "_limits", "_pending")

    def __init__(self, limits: ConnectionLimits, key: str) -> None:
        self._limits = limits
        self._key: str | None = key
        self._pending = True

    def settle(self) -> None:
        if self._pending:
            self._pending = False
            self._limits.pending -= 1

    def release(self) -> None:
        self.settle()
        key, self._key = self._key, None
        if key is None:
            return
        per_source = self._limits.per_source
        count = per_source[key] - 1
        if count:
            per_source[key] = count
        else:
            del per_source[key]


class ConnectionLimits:
    """The caps of the web ports (shared by both); 0 = no cap."""

    def __init__(self, *, per_source: int, pending: int) -> None:
        self.max_per_source = per_source
        self.max_pending = pending
        #: Connections open per source (only sources with at least one).
        self.per_source: dict[str, int] = {}
        #: Connections admitted whose first head or ClientHello is not complete.
        self.pending = 0
        #: Connections turned away so far, by refusal code.
        self.refused = {TOO_MANY_CONNS: 0, TOO_MANY_PENDING: 0}

    def admit(self, ip: str) -> Admission | str:
        """An `Admission` for a new connection from ``ip``, or the code of the cap it is over."""
        key = source_of(ip)
        count = self.per_source.get(key, 0)
        if self.max_per_source and count >= self.max_per_source:
            code = TOO_MANY_CONNS
        elif self.max_pending and self.pending >= self.max_pending:
            code = TOO_MANY_PENDING
        else:
            self.per_source[key] = count + 1
            self.pending += 1
            return Admission(self, key)
        self.refused[code] += 1
        return code


class RefusalLog:
    """When to log a refusal: the first one at once, then at most one per ``interval`` seconds per
    code; each logged line carries how many refusals it stands for."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def note(self, code: str, now: float) -> int:
        """Count one refusal; the number to log now (this one and those held back), or 0 for none."""
        unlogged = self._unlogged.get(code, 0) + 1
        if now < self._next.get(code, now):
            self._unlogged[code] = unlogged
            return 0
        self._next[code] = now + self.interval
        self._unlogged[code] = 0
        return unlogged


def admit_or_reset(
    limits: ConnectionLimits,
    refusals: RefusalLog,
    conn: socket.socket,
    addr: Any,
    front: str,
    log: logging.Logger,
) -> Admission | None:
    """Count a new connection of ``front`` in; None when it is over a cap (it is reset, and the refusal
    logged unless one was logged moments ago)."""
    admitted = limits.admit(addr[0])
    if isinstance(admitted, Admission):
        return admitted
    drop(conn)
    count = refusals.note(admitted, time.monotonic())
    if count:
        if admitted == TOO_MANY_CONNS:
            cap = f"{limits.max_per_source} connections from one address (vhost_max_conns_per_ip)"
        else:
            cap = f"{limits.max_pending} connections without a first request (vhost_max_pending_conns)"
        also = f"; {count} reset since the last such line" if count > 1 else ""
        reason = f"over {cap}, reset{also}"
        log_front_refused(log, front, format_sockaddr(addr), admitted, reason, refused=count)
    return None
