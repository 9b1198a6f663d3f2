"""The I/O side of hole punching: a `PunchAgent` driven with real UDP sockets on the event loop.

`run_punch` owns nothing it was not given but the extra sockets a port prediction asks for: it reads
every socket (`loop.add_reader`, no per-socket task), hands each datagram to the agent, sends what the
agent wants sent (setting the IP TTL / hop limit for opening probes, then restoring it), binds the
sockets a `SocketsRequested` asks for, and sleeps until the agent's next deadline. It returns when the
agent locks a path or fails; the locked socket goes back to the caller, the extra ones are closed.
What runs in the hole afterwards (keepalives, QUIC) is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import msgspec

from pierce.nat.punch import (
    FailReason,
    Outgoing,
    PathLocked,
    PunchAgent,
    PunchFailed,
    SocketsRequested,
    State,
)

#: Datagrams read from one socket per wake-up before the others get their turn.
READ_BURST = 64
#: Largest datagram read (a punch packet is far smaller; anything else is handed over and dropped).
MAX_DATAGRAM = 2048


class PunchResult(msgspec.Struct, frozen=True):
    """How an attempt ended: ``locked`` (and the socket it locked on) or ``failed``."""

    locked: PathLocked | None
    failed: PunchFailed | None
    sock: socket.socket | None


class _Driver:
    def __init__(self, agent: PunchAgent, sockets: dict[int, socket.socket]) -> None:
        self.agent = agent
        self.sockets = dict(sockets)
        self.given = set(sockets)
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.result: PathLocked | PunchFailed | None = None
        self._default_ttl: dict[int, int] = {}

    def start(self) -> None:
        for socket_id, sock in self.sockets.items():
            self._watch(socket_id, sock)

    def done(self) -> bool:
        return self.result is not None

    def _watch(self, socket_id: int, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable, socket_id)

    def stop(self) -> None:
        for sock in self.sockets.values():
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())

    def _readable(self, socket_id: int) -> None:
        sock = self.sockets[socket_id]
        now = self.loop.time()
        for _ in range(READ_BURST):
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error queued on the socket (port unreachable): not for us
                continue
            self.agent.receive(data, (str(source[0]), int(source[1])), now, socket_id)
            if self.agent.state is not State.PROBING:
                break  # what follows a lock (the peer's QUIC handshake) stays queued for the caller
        self.wake.set()

    def flush(self) -> None:
        """Send what is due and act on the agent's events."""
        now = self.loop.time()
        for out in self.agent.datagrams_to_send(now):
            self._send(out)
        for event in self.agent.pop_events():
            if isinstance(event, SocketsRequested):
                self._bind(event.count, now)
            elif isinstance(event, PathLocked | PunchFailed):
                self.result = event
        if self.result is None and self.agent.state is State.FAILED:  # failed without saying so
            self.result = PunchFailed(self.agent.failure or FailReason.TIME_BUDGET, "")

    def _send(self, out: Outgoing) -> None:
        sock = self.sockets.get(out.socket_id)
        if sock is None:
            return
        try:
            if out.ttl is None:
                sock.sendto(out.data, out.dest)
                return
            level, option = _ttl_option(sock)
            default = self._default_ttl.get(out.socket_id)
            if default is None:
                default = self._default_ttl[out.socket_id] = sock.getsockopt(level, option)
            sock.setsockopt(level, option, out.ttl)
            try:
                sock.sendto(out.data, out.dest)
            finally:
                sock.setsockopt(level, option, default)
        except OSError:
            pass  # unreachable, full buffer: a lost probe, as on the wire

    def _bind(self, count: int, now: float) -> None:
        family = next(iter(self.sockets.values())).family
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
        first = max(self.sockets) + 1
        ids = []
        for socket_id in range(first, first + count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, 0))
            except OSError:
                sock.close()
                break
            self.sockets[socket_id] = sock
            self._watch(socket_id, sock)
            ids.append(socket_id)
        self.agent.add_sockets(ids, now)


def _ttl_option(sock: socket.socket) -> tuple[int, int]:
    if sock.family == socket.AF_INET6:
        return socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS
    return socket.IPPROTO_IP, socket.IP_TTL


async def run_punch(agent: PunchAgent, sockets: dict[int, socket.socket]) -> PunchResult:
    """Drive ``agent`` over ``sockets`` (by the ids its candidates name) until it locks or fails.

    The agent's clock is the event loop's (`loop.time()`): build it with that ``now``. On a lock the
    locked socket is returned (and stays the caller's, as do all given sockets); sockets bound for a
    port prediction are closed unless one of them is the locked one.
    """
    driver = _Driver(agent, sockets)
    driver.start()
    try:
        while not driver.done():
            driver.flush()
            if driver.done():
                break
            deadline = agent.next_deadline()
            driver.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):  # None: only a datagram can move it on
                    await driver.wake.wait()
    finally:
        driver.stop()
    locked = driver.result if isinstance(driver.result, PathLocked) else None
    failed = driver.result if isinstance(driver.result, PunchFailed) else None
    kept = driver.sockets.get(locked.path.socket_id) if locked is not None else None
    for socket_id, sock in driver.sockets.items():
        if socket_id not in driver.given and sock is not kept:
            sock.close()
    return PunchResult(locked=locked, failed=failed, sock=kept)
