"""Has the gateway lost its mappings? Read from the epoch every NAT-PMP and PCP answer carries.

The epoch is the gateway's seconds since its mapping state began. RFC 6887 section 8.5 (RFC 6886
section 3.6 says the same): between two answers, the gateway's epoch must advance about as much as the
client's clock, allowing 2 seconds and 1/16 (6.25 %) of drift either way. An epoch that goes back by
more than 1 second, or that advances too little or too much, means the gateway restarted (or its
state was reset) and every mapping must be requested again. Sans-I/O: the caller passes ``now``.
"""

from __future__ import annotations


class EpochTracker:
    """The last (epoch, client time) seen from one gateway."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[int, float] | None = None

    def observe(self, epoch: int, now: float) -> bool:
        """Record an answer's epoch, received at client time ``now`` (seconds); True when it shows the
        gateway lost its state since the previous answer. The first answer never does."""
        last, self._last = self._last, (epoch, now)
        if last is None:
            return False
        prev_epoch, prev_now = last
        if epoch + 1 < prev_epoch:
            return True
        client_delta = now - prev_now
        server_delta = epoch - prev_epoch
        return (
            client_delta + 2 < server_delta - server_delta / 16
            or server_delta + 2 < client_delta - client_delta / 16
        )
