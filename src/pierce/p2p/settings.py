"""Tunables of a direct QUIC path, without QUIC itself: a client reads them from ``[p2p]`` at start, and
aioquic (`pierce.p2p.quic_core`) loads only when a path is set up."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration

    from pierce.p2p.identity import Identity

#: Largest UDP payload QUIC may build (1200 is the protocol minimum and the safe default for an unknown
#: punched path; 1452 fits a 1500-byte MTU with IPv6 and PPPoE headers).
DEFAULT_DATAGRAM_SIZE = 1200
IDLE_TIMEOUT = 30.0
KEEPALIVE = 15.0
#: `pierce.p2p.bbr` (aioquic's "cubic" and "reno" cut their window at every loss, random or not).
CONGESTION_CONTROL = "bbr"
#: Streams the peer may have open at once on a path (RFC 9000 MAX_STREAMS; aioquic's own default is 128):
#: each is one visitor connection. Beyond it a visitor's new connection waits in line for one to end
#: (`pierce.p2p.quic.QuicPath.open_stream`).
MAX_STREAMS = 4096


class PathSettings(msgspec.Struct, frozen=True):
    """Tunables of one path (the defaults suit an unknown Internet path)."""

    keepalive_s: float = KEEPALIVE
    idle_timeout: float = IDLE_TIMEOUT
    max_datagram_size: int = DEFAULT_DATAGRAM_SIZE
    congestion_control: str = CONGESTION_CONTROL
    max_streams: int = MAX_STREAMS

    def configuration(self, *, is_client: bool, identity: Identity | None = None) -> QuicConfiguration:
        from pierce.p2p import quic_core  # aioquic: loaded with the first direct path, not at start

        return quic_core.configuration(
            is_client=is_client,
            identity=identity,
            max_datagram_size=self.max_datagram_size,
            idle_timeout=self.idle_timeout,
            congestion_control=self.congestion_control,
        )
