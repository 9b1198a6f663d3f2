"""Hole punching on real UDP sockets (`pierce.nat.punch_io`): two agents on loopback lock a path, both
ends agree on it, a datagram crosses it, and a stranger's forged and replayed packets change nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from pierce.nat.candidates import Candidate, CandidateKind
from pierce.nat.punch import PunchAgent, PunchSettings, Role
from pierce.nat.punch_io import run_punch
from pierce.nat.punch_wire import is_punch_packet

SID = b"loopback-session"
KEY = bytes(range(32))


@contextmanager
def udp_sockets(count: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def host(sock: socket.socket) -> Candidate:
    return Candidate(CandidateKind.HOST, "127.0.0.1", sock.getsockname()[1], socket_id=0)


async def test_two_agents_lock_a_path_on_real_sockets_despite_a_forger() -> None:
    loop = asyncio.get_running_loop()
    with udp_sockets(3) as (a_sock, b_sock, forger):
        now = loop.time()
        settings = PunchSettings(budget_s=5.0)
        start = now + 0.05
        a = PunchAgent(Role.CONTROLLING, SID, KEY, [host(a_sock)], [host(b_sock)], now, start_at=start,
                       settings=settings)  # fmt: skip
        b = PunchAgent(Role.CONTROLLED, SID, KEY, [host(b_sock)], [host(a_sock)], now, start_at=start,
                       settings=settings)  # fmt: skip
        # A stranger who knows both addresses but not the key: garbage, a look-alike with a bad MAC, and
        # whatever it captured of B's probes replayed to A (here: forged with another key).
        stranger = PunchAgent(Role.CONTROLLED, SID, bytes(32), [host(forger)], [host(a_sock)], now,
                              start_at=now, settings=settings)  # fmt: skip
        for out in stranger.datagrams_to_send(now + 1):
            assert is_punch_packet(out.data)
            forger.sendto(out.data, a_sock.getsockname())
        forger.sendto(b"\x0cpun" + bytes(60), a_sock.getsockname())
        forger.sendto(b"not a punch packet at all", b_sock.getsockname())

        got_a, got_b = await asyncio.wait_for(
            asyncio.gather(run_punch(a, {0: a_sock}), run_punch(b, {0: b_sock})), 10
        )
        assert got_a.locked is not None and got_b.locked is not None, (got_a, got_b)
        assert got_a.locked.path.remote == b_sock.getsockname()
        assert got_b.locked.path.remote == a_sock.getsockname()
        assert got_a.sock is a_sock and got_b.sock is b_sock
        assert sum(a.dropped.values()) >= 1  # the forgeries were seen and ignored

        # The hole carries data both ways.
        a_sock.setblocking(True)
        b_sock.setblocking(True)
        a_sock.settimeout(5)
        b_sock.settimeout(5)
        a_sock.sendto(b"hello through the hole", got_a.locked.path.remote)
        data, source = b_sock.recvfrom(2048)
        while is_punch_packet(data):  # late probes or keepalives may still be in flight
            data, source = b_sock.recvfrom(2048)
        assert (data, source) == (b"hello through the hole", a_sock.getsockname())


async def test_an_unanswered_attempt_fails_at_its_budget() -> None:
    loop = asyncio.get_running_loop()
    with udp_sockets(2) as (a_sock, silent):
        now = loop.time()
        agent = PunchAgent(Role.CONTROLLING, SID, KEY, [host(a_sock)], [host(silent)], now,
                           settings=PunchSettings(budget_s=0.5))  # fmt: skip
        got = await asyncio.wait_for(run_punch(agent, {0: a_sock}), 10)
        assert got.locked is None and got.failed is not None and got.sock is None
        assert loop.time() - now >= 0.5
