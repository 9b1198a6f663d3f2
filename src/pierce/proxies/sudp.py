"""Secret UDP proxies (sudp): a visitor's datagrams reach a local UDP service of the proxy's owner.

The server treats an sudp visitor as any secret proxy's (`pierce.proxies.secret`): the visitor's connection
is paired with a work connection of the owner and relayed as a byte stream. Over that stream both ends
exchange `UdpPacket` frames (`pierce.protocol.frames`, as a UDP proxy's datagrams travel on the control
channel), so a datagram stays one datagram end to end. ``peer_host:peer_port`` is the address of the
application on the visitor's side that sent it; replies carry the same address back.

`DatagramTunnel` sends and receives those frames over one relay end; both sides use it. `serve_sudp_work`
is the owner's side: a flow per visiting application (`pierce.udpflow`) to the local service, ended after
the proxy's ``idle_timeout``. The visitor's side is `pierce.client.visitor.SudpVisitor`.

Neither side queues without limit: a datagram that finds more than `SEND_BACKLOG_LIMIT` bytes waiting for
the stream is dropped and counted, as a congested network would drop it. The proxy's ``bandwidth_limit``
drops datagrams on the owner's side (`pierce.udpflow.DatagramLimit`); the owner's user's limit on the
server holds the stream to its rate like any relay's, so the queues above fill and drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pierce.addr import HostPort, format_sockaddr
from pierce.errors import PierceError
from pierce.listeners import SEND_BACKLOG_LIMIT
from pierce.logs import event, human_bytes
from pierce.protocol import FrameDecoder, ProtocolError, SecretKind, StartWork, UdpPacket, encode_frame
from pierce.proxies.base import DEFAULT_UDP_IDLE_TIMEOUT, check_idle_timeout
from pierce.proxies.secret import SecretProxyConfig, SecretSpec
from pierce.relay import End

if TYPE_CHECKING:  # the flows load with the first datagram stream: a server never needs them
    from pierce.udpflow import DropCounter, UdpFlow

log = logging.getLogger("pierce.proxy")

#: Bytes asked for per read of the stream.
READ_SIZE = 256 * 1024


class SudpProxyConfig(SecretProxyConfig, tag="sudp", tag_field="type"):
    """``[[proxies]] type = "sudp"``: a secret UDP service, reached like an stcp proxy."""

    secret_kind: ClassVar[SecretKind] = SecretKind.SUDP

    #: Seconds a visiting application's UDP flow lives without traffic.
    idle_timeout: float = DEFAULT_UDP_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        super().__post_init__()
        check_idle_timeout(self.idle_timeout)


class SudpSpec(SecretSpec, frozen=True, kw_only=True, tag="sudp"):
    """Register a secret UDP proxy."""


def sudp_spec(config: SudpProxyConfig) -> SudpSpec:
    return SudpSpec()


class DatagramTunnel:
    """`UdpPacket` frames over one relay end: ``send`` queues a datagram, ``run`` moves them both ways.

    ``on_packet`` is called for every datagram from the other side. `run` returns when the other side
    ends the stream (then this side ends it too) and raises when the stream breaks; either way the end
    is closed afterwards.
    """

    def __init__(
        self, end: End, proxy: str, on_packet: Callable[[UdpPacket], None], dropped: DropCounter
    ) -> None:
        self.end = end
        self.proxy = proxy
        self.on_packet = on_packet
        self.dropped = dropped
        self.sent_packets = self.sent_bytes = self.received_packets = self.received_bytes = 0
        self._queue: list[bytes] = []
        self._queued = 0
        self._wake = asyncio.Event()
        self._closed = False

    def send(self, host: str, port: int, data: bytes) -> None:
        """Queue one datagram for the other side (dropped when the stream is backed up or closed)."""
        if self._closed:
            self.dropped.drop("tunnel closed")
            return
        if self._queued > SEND_BACKLOG_LIMIT:
            self.dropped.drop("tunnel send buffer full")
            return
        frame = encode_frame(UdpPacket(proxy=self.proxy, peer_host=host, peer_port=port, data=data))
        self._queue.append(frame)
        self._queued += len(frame)
        self.sent_packets += 1
        self.sent_bytes += len(data)
        self._wake.set()

    async def run(self) -> None:
        writer = asyncio.get_running_loop().create_task(self._write_loop())
        try:
            await self._read_loop()
            self._closed = True
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self.end.write_eof()
        finally:
            self._closed = True
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, PierceError, OSError):
                await writer
            self.end.close()

    async def _read_loop(self) -> None:
        decoder = FrameDecoder()
        while data := await self.end.read(READ_SIZE):
            for msg in decoder.feed(data):
                if not isinstance(msg, UdpPacket):
                    raise ProtocolError(f"unexpected {type(msg).__name__} in a datagram stream")
                self.received_packets += 1
                self.received_bytes += len(msg.data)
                self.on_packet(msg)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            frames, self._queue, self._queued = self._queue, [], 0
            if frames:
                await self.end.write(b"".join(frames))

    def close(self) -> None:
        """Stop at once: queued datagrams are dropped and the end is closed (``run`` then ends)."""
        self._closed = True
        self.end.close()


async def serve_sudp_work(config: SudpProxyConfig, start: StartWork, tunnel: End) -> None:
    """Owner side: one sudp visitor's datagram stream, a flow per visiting application to the service."""
    from pierce.udpflow import DatagramLimit, DropCounter, UdpFlow, UdpFlows

    name = config.name
    local = HostPort(config.local_ip, config.local_port)
    visitor = format_sockaddr((start.visitor_host, start.visitor_port))
    flows = UdpFlows(name, log)
    dropped = DropCounter(log, "udp.dropped", f"proxy {name}: datagrams to visitor {visitor}", proxy=name)
    limit = DatagramLimit(log, name, config.bandwidth_limit)

    def on_packet(packet: UdpPacket) -> None:
        if not limit.inbound(packet.data, packet.peer_host, packet.peer_port):
            return
        app = (packet.peer_host, packet.peer_port)
        flow = flows.get(app) or flows.open(app, lambda ended: open_flow(app, ended))
        if flow is not None:
            flow.send(packet.data)

    def reply(app: tuple[str, int], data: bytes) -> None:
        if limit.outbound(data, *app):
            datagrams.send(app[0], app[1], data)

    def open_flow(app: tuple[str, int], ended: Callable[[], None]) -> UdpFlow:
        return UdpFlow(
            label=name,
            peer=format_sockaddr(app),
            target=local,
            idle_timeout=config.idle_timeout,
            reply=lambda data: reply(app, data),
            ended=ended,
            logger=log,
            fields={"proxy": name, "visitor": visitor},
        )

    datagrams = DatagramTunnel(tunnel, name, on_packet, dropped)
    event(
        log,
        logging.INFO,
        "proxy.conn_open",
        f"{name}: visitor {visitor} (datagrams) -> {local}",
        proxy=name,
        visitor=visitor,
        target=str(local),
    )
    started = time.monotonic()
    error = ""
    try:
        await datagrams.run()
    except (PierceError, OSError) as exc:
        error = str(exc) or type(exc).__name__
    finally:
        await flows.close("visitor gone")
    duration = time.monotonic() - started
    event(
        log,
        logging.INFO,
        "proxy.conn_close",
        f"{name}: visitor {visitor} (datagrams) closed after {duration:.2f}s, "
        f"up {datagrams.received_packets} pkts/{human_bytes(datagrams.received_bytes)}, "
        f"down {datagrams.sent_packets} pkts/{human_bytes(datagrams.sent_bytes)}"
        + (f" ({error})" if error else ""),
        proxy=name,
        visitor=visitor,
        target=str(local),
        up_packets=datagrams.received_packets,
        up_bytes=datagrams.received_bytes,
        down_packets=datagrams.sent_packets,
        down_bytes=datagrams.sent_bytes,
        duration_s=round(duration, 6),
        **({"error": error} if error else {}),
    )
