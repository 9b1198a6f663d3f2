"""UDP flows: one peer's datagrams to one target, through a socket of the peer's own.

Wherever many peers share one UDP port and replies must go back to the right one, pierce keeps a flow
per peer, as a NAT does: the port mapper (a flow per client address) and the client side of a UDP proxy
(a flow per visitor). Each flow has its own socket connected to the target, so the target sees one source
port per peer and its replies arrive on the flow they belong to. A flow ends after ``idle_timeout``
seconds without traffic either way. Datagram boundaries are kept; datagrams are dropped, never
buffered without limit, when a socket or the tunnel cannot keep up (UDP may lose packets, memory may
not grow).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pierce.addr import HostPort, format_sockaddr
from pierce.bandwidth import DATAGRAM_BURST_S, limits_for, parse_rate
from pierce.dial import TargetUnreachable, resolve
from pierce.listeners import SEND_BACKLOG_LIMIT, grow_udp_buffers
from pierce.logs import event, human_bytes

#: Datagrams queued for a flow whose socket is still being set up.
PENDING_LIMIT = 256
#: Concurrent flows per port; datagrams of new peers beyond it are dropped with a warning.
MAX_FLOWS = 16384


def send_backlog(transport: asyncio.BaseTransport) -> int:
    """Bytes queued in ``transport`` that the socket has not taken yet (datagram transports have the
    method on both asyncio and uvloop; typeshed only declares it on stream transports)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if size is not None else 0


class DropCounter:
    """Counts dropped datagrams and says so in a warning: at the first drop, then at most every
    ``interval`` seconds with the count so far, so a flood cannot flood the log too."""

    def __init__(
        self, logger: logging.Logger, name: str, what: str, *, interval: float = 10.0, **fields: Any
    ) -> None:
        self.logger = logger
        self.fields = fields
        self.name = name
        self.what = what
        self.interval = interval
        self.count = 0
        self._logged_at: float | None = None
        self._logged_count = 0

    def drop(self, reason: str, **fields: Any) -> None:
        self.count += 1
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < self.interval:
            return
        new = self.count - self._logged_count
        self._logged_at, self._logged_count = now, self.count
        event(
            self.logger,
            logging.WARNING,
            self.name,
            f"{self.what}: dropped {new} datagram(s) ({reason}); {self.count} in all",
            reason=reason,
            dropped=self.count,
            **fields,
            **self.fields,
        )


class DatagramLimit:
    """A datagram proxy's own ``bandwidth_limit`` (udp, sudp, xudp), applied by its client: each
    direction admits a datagram or drops it (`pierce.bandwidth.Throttle.admit`, counted and logged as
    ``udp.dropped`` with its ``direction``), for all the proxy's flows together."""

    REASON = "over the proxy's bandwidth_limit"

    def __init__(self, logger: logging.Logger, proxy: str, bandwidth_limit: str) -> None:
        rate = parse_rate(bandwidth_limit) if bandwidth_limit else 0
        self.limits = limits_for(proxy, rate, burst_s=DATAGRAM_BURST_S)
        what = f"proxy {proxy}"
        self.dropped_in = DropCounter(
            logger, "udp.dropped", f"{what}: datagrams to the service", proxy=proxy, direction="in"
        )
        self.dropped_out = DropCounter(
            logger, "udp.dropped", f"{what}: datagrams to the visitors", proxy=proxy, direction="out"
        )

    def inbound(self, data: bytes, host: str, port: int) -> bool:
        """Whether a visitor's datagram may go on to the service."""
        if self.limits is None or self.limits.inbound.admit(len(data)):
            return True
        self.dropped_in.drop(self.REASON, visitor=format_sockaddr((host, port)))
        return False

    def outbound(self, data: bytes, host: str, port: int) -> bool:
        """Whether the service's datagram may go back towards the visitor."""
        if self.limits is None or self.limits.outbound.admit(len(data)):
            return True
        self.dropped_out.drop(self.REASON, visitor=format_sockaddr((host, port)))
        return False


class DatagramProtocol(asyncio.DatagramProtocol):
    """The one datagram endpoint protocol: every datagram goes to ``received(data, addr)``.

    Socket errors (ICMP port unreachable and friends) are logged at debug level under ``label``: UDP has
    no connection to drop, so the endpoint carries on.
    """

    def __init__(self, received: Callable[[bytes, Any], None], logger: logging.Logger, label: str) -> None:
        self.received = received
        self.logger = logger
        self.label = label

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.logger.debug("%s: socket error: %s", self.label, exc)


class UdpFlow:
    """One peer's flow: its own socket connected to ``target``, counters and an idle timer.

    ``reply(data)`` is called for every datagram the target sends back and ``ended()`` once when the
    flow closes (so its owner can forget it). Events ``udp.open``, ``udp.close`` and
    ``udp.target_failed`` carry ``rule`` (= ``label``), ``client`` (= ``peer``), ``target`` and ``fields``.
    """

    def __init__(
        self,
        *,
        label: str,
        peer: str,
        target: HostPort,
        idle_timeout: float,
        reply: Callable[[bytes], None],
        ended: Callable[[], None],
        logger: logging.Logger,
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.label = label
        self.peer = peer
        self.target = target
        self.target_text = str(target)
        self.idle_timeout = idle_timeout
        self.reply = reply
        self.ended = ended
        self.logger = logger
        self.fields = fields or {}
        self.upstream: asyncio.DatagramTransport | None = None
        self.pending: deque[bytes] | None = deque()
        self.up_bytes = self.down_bytes = self.up_packets = self.down_packets = self.dropped = 0
        self.started = self.last_seen = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def _event(self, level: int, name: str, message: str, **fields: Any) -> None:
        event(
            self.logger,
            level,
            name,
            f"{self.label}: {self.peer} -> {self.target_text}{message}",
            rule=self.label,
            client=self.peer,
            target=self.target_text,
            **fields,
            **self.fields,
        )

    async def open(self) -> None:
        """Set up the socket, send what queued meanwhile, start the idle timer (closes itself on failure)."""
        loop = asyncio.get_running_loop()
        try:
            family, addr = (await resolve(self.target, socket.SOCK_DGRAM))[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                grow_udp_buffers(sock)
                sock.connect(addr)
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: DatagramProtocol(
                        lambda data, _: self.received(data), self.logger, f"{self.label}: {self.peer}"
                    ),
                    sock=sock,
                )
            except BaseException:
                sock.close()
                raise
        except (OSError, TargetUnreachable) as exc:
            self._event(logging.WARNING, "udp.target_failed", f": {exc}", error=str(exc))
            self.close(reason="target failed")
            return
        if self.closed:
            transport.close()
            return
        self.upstream = transport
        self.target_text = format_sockaddr(transport.get_extra_info("peername"))
        self._event(logging.INFO, "udp.open", "")
        pending, self.pending = self.pending, None
        for data in pending or ():
            transport.sendto(data)
        self._arm(self.idle_timeout)

    def send(self, data: bytes) -> None:
        """A datagram from the peer, for the target."""
        self.last_seen = time.monotonic()
        self.up_bytes += len(data)
        self.up_packets += 1
        if self.upstream is not None:
            if send_backlog(self.upstream) > SEND_BACKLOG_LIMIT:
                self.dropped += 1
            else:
                self.upstream.sendto(data)
        elif self.pending is not None and len(self.pending) < PENDING_LIMIT:
            self.pending.append(data)

    def received(self, data: bytes) -> None:
        """A datagram from the target, for the peer."""
        self.last_seen = time.monotonic()
        self.down_bytes += len(data)
        self.down_packets += 1
        self.reply(data)

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        remaining = self.idle_timeout - (time.monotonic() - self.last_seen)
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
        self.ended()
        duration = time.monotonic() - self.started
        self._event(
            logging.INFO,
            "udp.close",
            f" ended ({reason}) after {duration:.2f}s, "
            f"up {self.up_packets} pkts/{human_bytes(self.up_bytes)}, "
            f"down {self.down_packets} pkts/{human_bytes(self.down_bytes)}",
            reason=reason,
            up_bytes=self.up_bytes,
            down_bytes=self.down_bytes,
            up_packets=self.up_packets,
            down_packets=self.down_packets,
            dropped=self.dropped,
            duration_s=round(duration, 6),
        )


class UdpFlows:
    """The flows of one shared port, by peer address, and the tasks opening them."""

    def __init__(self, label: str, logger: logging.Logger) -> None:
        self.label = label
        self.logger = logger
        self.flows: dict[Any, UdpFlow] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._full = DropCounter(logger, "udp.too_many_flows", f"{label}: {MAX_FLOWS} UDP flows open")

    def get(self, key: Any) -> UdpFlow | None:
        return self.flows.get(key)

    def open(self, key: Any, make: Callable[[Callable[[], None]], UdpFlow]) -> UdpFlow | None:
        """A new flow for ``key`` from ``make(ended)``, being opened; None when the table is full."""
        if len(self.flows) >= MAX_FLOWS:
            self._full.drop("new peer while the flow table is full")
            return None

        def ended() -> None:
            if self.flows.get(key) is flow:
                del self.flows[key]

        flow = make(ended)
        self.flows[key] = flow
        task = asyncio.get_running_loop().create_task(flow.open())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flow

    async def close(self, reason: str) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for flow in list(self.flows.values()):
            flow.close(reason=reason)
