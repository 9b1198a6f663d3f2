"""What the STUN responder (`pierce.nat.stun_server`) agrees to do, and its defaults: the server's config
reads them here without loading the responder, which a client never runs."""

from __future__ import annotations

import msgspec

#: Answers per second to one source (an IPv4 address, an IPv6 /64) once its burst is used. RFC 5780
#: section 5 asks clients for at most ten new transactions a second.
DEFAULT_RATE = 10.0
#: Answers one source may get at once. A `pierce nat` run sends about 15 requests in its first second and
#: 30 at most with retransmissions; the Debian ``stun`` client about 10, coturn's natdiscovery 5.
DEFAULT_BURST = 50
#: Answers per second to all sources together.
DEFAULT_GLOBAL_RATE = 1000.0


class StunPolicy(msgspec.Struct, frozen=True):
    """What the responder agrees to do: answer rates and RESPONSE-PORT."""

    #: Answers per second to one source, after its burst.
    rate: float = DEFAULT_RATE
    #: Answers one source may get at once.
    burst: int = DEFAULT_BURST
    #: Answers per second to all sources together.
    global_rate: float = DEFAULT_GLOBAL_RATE
    #: Honour RESPONSE-PORT (RFC 5780 section 7.5); off, such requests get 420 Unknown Attribute.
    allow_response_port: bool = False
