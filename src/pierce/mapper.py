"""``pierce map``: forward local TCP and UDP ports to other hosts, the classic port mapper.

TCP: each accepted connection gets a fresh connection to the target (a DNS name is resolved every
time, so DNS changes are followed) and the two are joined by :func:`pierce.relay.relay`.

UDP: a session table keyed by the client's address, like a NAT: each client gets its own upstream
socket connected to the target, so replies go back to the client that caused them; a session ends
after ``idle_timeout`` seconds without traffic either way. Datagram boundaries are kept.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import Any

from pierce.addr import allowed, format_sockaddr
from pierce.config import MapConfig, MapRule, Transport
from pierce.dial import TargetUnreachable, connect_tcp, resolve
from pierce.listeners import TcpListener, bind_socket, grow_udp_buffers, set_nodelay
from pierce.logs import event, human_bytes, log_relay_closed
from pierce.relay import RelayStats, SocketEnd, relay

log = logging.getLogger("pierce.map")

#: Datagrams queued for a UDP session whose upstream socket is still being set up.
UDP_PENDING_LIMIT = 256
#: Concurrent UDP sessions per rule; new clients beyond it are dropped with a warning.
UDP_MAX_SESSIONS = 16384


class TcpForwarder:
    """Accepts on one address and relays every connection to the rule's target."""

    def __init__(self, rule: MapRule) -> None:
        self.rule = rule
        self.bound = ""
        self._listener: TcpListener | None = None

    async def start(self) -> str:
        self._listener = TcpListener.open(self.rule.listen, self._serve, name=self.rule.name)
        self.bound = self._listener.address
        return self.bound

    async def _serve(self, conn: socket.socket, addr: Any) -> None:
        rule = self.rule
        client = format_sockaddr(addr)
        if not allowed(addr[0], rule.allow):
            conn.close()
            event(
                log,
                logging.WARNING,
                "tcp.denied",
                f"{rule.name}: {client} not in allow list, closed",
                rule=rule.name,
                client=client,
            )
            return
        started = time.monotonic()
        try:
            upstream = await connect_tcp(rule.target, rule.connect_timeout)
        except TargetUnreachable as exc:
            conn.close()
            event(
                log,
                logging.WARNING,
                "tcp.target_failed",
                f"{rule.name}: {client}: {exc}",
                rule=rule.name,
                client=client,
                target=str(rule.target),
                error=str(exc),
            )
            return
        except BaseException:
            conn.close()
            raise
        set_nodelay(conn)
        target = format_sockaddr(upstream.getpeername())
        event(
            log,
            logging.INFO,
            "tcp.open",
            f"{rule.name}: {client} -> {target}",
            rule=rule.name,
            client=client,
            target=target,
        )
        stats = RelayStats(started=started)
        await relay(SocketEnd(conn), SocketEnd(upstream), stats)
        log_relay_closed(log, "tcp.close", rule.name, client, target, stats)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None


class _UdpListenProtocol(asyncio.DatagramProtocol):
    def __init__(self, forwarder: UdpForwarder) -> None:
        self.forwarder = forwarder

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.forwarder.from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: listener error: %s", self.forwarder.rule.name, exc)


class _UdpUpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, session: UdpSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.session.from_target(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: UDP has no connection to drop, keep the session.
        log.debug("%s: %s: target error: %s", self.session.rule.name, self.session.client, exc)


class UdpSession:
    """One client's flow: its own upstream socket, counters and idle timer."""

    def __init__(self, forwarder: UdpForwarder, client_addr: Any) -> None:
        self.forwarder = forwarder
        self.rule = forwarder.rule
        self.client_addr = client_addr
        self.client = format_sockaddr(client_addr)
        self.target = str(self.rule.target)
        self.upstream: asyncio.DatagramTransport | None = None
        self.pending: deque[bytes] | None = deque()
        self.up_bytes = self.down_bytes = self.up_packets = self.down_packets = 0
        self.started = self.last_seen = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            addrs = await resolve(self.rule.target, socket.SOCK_DGRAM)
            family, addr = addrs[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                grow_udp_buffers(sock)
                sock.connect(addr)
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpUpstreamProtocol(self), sock=sock
                )
            except BaseException:
                sock.close()
                raise
        except (OSError, TargetUnreachable) as exc:
            event(
                log,
                logging.WARNING,
                "udp.target_failed",
                f"{self.rule.name}: {self.client}: {exc}",
                rule=self.rule.name,
                client=self.client,
                target=self.target,
                error=str(exc),
            )
            self.close(reason="target failed")
            return
        if self.closed:
            transport.close()
            return
        self.upstream = transport
        self.target = format_sockaddr(transport.get_extra_info("peername"))
        event(
            log,
            logging.INFO,
            "udp.open",
            f"{self.rule.name}: {self.client} -> {self.target}",
            rule=self.rule.name,
            client=self.client,
            target=self.target,
        )
        pending, self.pending = self.pending, None
        for data in pending or ():
            transport.sendto(data)
        self._arm(self.rule.idle_timeout)

    def from_client(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        self.up_bytes += len(data)
        self.up_packets += 1
        if self.upstream is not None:
            self.upstream.sendto(data)
        elif self.pending is not None and len(self.pending) < UDP_PENDING_LIMIT:
            self.pending.append(data)

    def from_target(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        self.down_bytes += len(data)
        self.down_packets += 1
        self.forwarder.to_client(data, self.client_addr)

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        idle_for = time.monotonic() - self.last_seen
        remaining = self.rule.idle_timeout - idle_for
        if remaining > 0:
            self._arm(remaining)
        else:
            self.close(reason="idle")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.upstream is not None:
            self.upstream.close()
        self.forwarder.sessions.pop(self.client_addr, None)
        duration = time.monotonic() - self.started
        event(
            log,
            logging.INFO,
            "udp.close",
            f"{self.rule.name}: {self.client} -> {self.target} ended ({reason}) after {duration:.2f}s, "
            f"up {self.up_packets} pkts/{human_bytes(self.up_bytes)}, "
            f"down {self.down_packets} pkts/{human_bytes(self.down_bytes)}",
            rule=self.rule.name,
            client=self.client,
            target=self.target,
            reason=reason,
            up_bytes=self.up_bytes,
            down_bytes=self.down_bytes,
            up_packets=self.up_packets,
            down_packets=self.down_packets,
            duration_s=round(duration, 6),
        )


class UdpForwarder:
    """Receives datagrams on one address and keeps a session per client address."""

    def __init__(self, rule: MapRule) -> None:
        self.rule = rule
        self.bound = ""
        self.sessions: dict[Any, UdpSession] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._denied_logged: set[str] = set()

    async def start(self) -> str:
        sock = bind_socket(self.rule.listen, socket.SOCK_DGRAM)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _UdpListenProtocol(self), sock=sock)
        self.bound = format_sockaddr(sock.getsockname())
        return self.bound

    def from_client(self, data: bytes, addr: Any) -> None:
        session = self.sessions.get(addr)
        if session is None:
            if not allowed(addr[0], self.rule.allow):
                client = format_sockaddr(addr)
                if client not in self._denied_logged and len(self._denied_logged) < 1024:
                    self._denied_logged.add(client)
                    event(
                        log,
                        logging.WARNING,
                        "udp.denied",
                        f"{self.rule.name}: {client} not in allow list",
                        rule=self.rule.name,
                        client=client,
                    )
                return
            if len(self.sessions) >= UDP_MAX_SESSIONS:
                log.warning(
                    "%s: %d UDP sessions open, dropping datagram from a new client",
                    self.rule.name,
                    len(self.sessions),
                )
                return
            session = UdpSession(self, addr)
            self.sessions[addr] = session
            task = asyncio.get_running_loop().create_task(session.open())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        session.from_client(data)

    def to_client(self, data: bytes, addr: Any) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in list(self.sessions.values()):
            session.close(reason="shutdown")
        if self._transport is not None:
            self._transport.close()
            self._transport = None


Forwarder = TcpForwarder | UdpForwarder


class Mapper:
    """Owns every rule's forwarder; ``async with Mapper(config)`` binds them all or none."""

    def __init__(self, config: MapConfig) -> None:
        self.config = config
        self.forwarders: list[Forwarder] = []

    async def __aenter__(self) -> Mapper:
        try:
            for rule in self.config.rules:
                fwd: Forwarder = TcpForwarder(rule) if rule.protocol is Transport.TCP else UdpForwarder(rule)
                bound = await fwd.start()
                self.forwarders.append(fwd)
                event(
                    log,
                    logging.INFO,
                    "map.listening",
                    f"{rule.name}: listening on {rule.protocol.value} {bound}, forwarding to {rule.target}",
                    rule=rule.name,
                    protocol=rule.protocol.value,
                    listen=bound,
                    target=str(rule.target),
                )
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        forwarders, self.forwarders = self.forwarders, []
        await asyncio.gather(*(f.close() for f in forwarders), return_exceptions=True)


async def run_map(config: MapConfig) -> None:
    """Run every rule of ``config`` until SIGINT/SIGTERM."""
    from pierce.runtime import wait_for_stop_signal

    async with Mapper(config):
        sig = await wait_for_stop_signal()
        log.info("stopping on %s", sig.name)
