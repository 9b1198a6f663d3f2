"""Direct TCP connections kept ready for an xtcp visitor: what both sides share.

A direct TCP connection carries one visitor connection (kernel TCP, TLS 1.3 or spliced when plain: the
tunnel-class path). Making one takes a rendezvous and a simultaneous open, so the visitor keeps a small
pool ready (`pierce.p2p.visitor`) and refills it in the background; a visitor connection takes one
without waiting. A pooled connection sits idle until a visitor connection takes it (the handoff,
`pierce.p2p.handoff`), and only then does the owner connect its local service (so a service with a
login timer, like SSH, never sees an idle pooled connection); unused ones are closed after
`POOL_IDLE_MAX` seconds.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from pierce.addr import HostPort
from pierce.errors import PierceError
from pierce.nat.candidates import Candidate, CandidateKind
from pierce.nat.gather import host_addresses
from pierce.p2p.tcp_direct import bind_reusable, tcp_reflexive

#: Seconds a pooled connection may wait to be taken.
POOL_IDLE_MAX = 300.0
#: Direct TCP connections an xtcp visitor keeps ready.
POOL_SIZE = 2
#: Seconds for the TCP reflexive address.
REFLEXIVE_TIMEOUT = 2.0


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A local TCP port for one attempt, held (bound, SO_REUSEPORT) until the attempt is over."""
    sock = bind_reusable("0.0.0.0", 0)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


async def tcp_candidates(port: int, stun: HostPort | None) -> list[Candidate]:
    """Host candidates on ``port`` (every interface's IPv4 address) and, with the server's STUN, the
    TCP reflexive address of ``port`` (none when STUN over TCP does not answer)."""
    found = [Candidate(CandidateKind.HOST, ip, port) for ip in host_addresses(socket.AF_INET)]
    if stun is not None:
        with contextlib.suppress(PierceError):
            host, mapped = await tcp_reflexive(stun, port, REFLEXIVE_TIMEOUT)
            if not any(c.address == (host, mapped) for c in found):
                found.append(Candidate(CandidateKind.SRFLX, host, mapped))
    return found
