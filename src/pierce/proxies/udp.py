"""UDP proxies: a public UDP port on the server whose datagrams reach a local UDP service of the client.

Datagrams travel on the control channel as `UdpPacket` messages, each carrying the visitor's address,
so a datagram stays one datagram end to end (any size a UDP socket takes, up to 65,507 bytes over IPv4:
`MAX_FRAME_SIZE` leaves room for it).

Server side (`pierce.server.proxies.udp`): `UdpProxyServer` binds the public port, wraps each datagram in
a `UdpPacket` for the owning client, and sends the client's packets back to their visitors. Replies go
only to addresses that have sent to the port (the last `MAX_VISITORS` of them), so a client cannot make
the server send datagrams to anyone else.

Client side: `UdpProxyClient` keeps a flow per visitor (`pierce.udpflow`): a socket of its own connected
to ``local_ip:local_port``, ended after the proxy's ``idle_timeout`` without traffic, so the local service
sees one source port per visitor and each reply goes back to the visitor that caused it. `UdpProxies`
holds a client's UDP proxies across control sessions: after a reconnect it sends on the new channel and
the flows of unchanged proxies carry on.

Neither side queues without limit: a datagram that finds the control channel's send buffer over
`SEND_BACKLOG_LIMIT` is dropped and counted, as a congested network would drop it.

Bandwidth limits drop datagrams too, never queue them (`pierce.bandwidth.Throttle.admit`): the owner's
user's ``bandwidth_limit`` on the server, as a visitor's datagram arrives and as a reply leaves, and the
proxy's own ``bandwidth_limit`` on the client, before a datagram reaches the local service and before a
reply goes back to the server. Each direction is counted and logged (``udp.dropped``, ``direction``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from pierce.addr import HostPort, format_sockaddr
from pierce.listeners import SEND_BACKLOG_LIMIT
from pierce.protocol import UdpPacket
from pierce.protocol.messages import Port
from pierce.proxies.base import (
    DEFAULT_UDP_IDLE_TIMEOUT,
    DirectMode,
    ProxySpec,
    PublicProxyConfig,
    check_idle_timeout,
    check_proxy,
)
from pierce.transport import MessageChannel

if TYPE_CHECKING:  # the flows load with the client's first UDP proxy: a server never needs them
    from pierce.udpflow import DropCounter, UdpFlow

log = logging.getLogger("pierce.proxy")

#: Visitor addresses a server-side UDP proxy remembers as allowed destinations for replies.
MAX_VISITORS = 65536
#: Why a datagram over the owner's user's bandwidth limit was dropped, as logged.
USER_LIMIT = "over the user's bandwidth_limit"


def send_packet(channel: MessageChannel, packet: UdpPacket) -> bool:
    """Queue ``packet`` on a control channel; False (not sent) when the channel is closing or its send
    buffer is over `SEND_BACKLOG_LIMIT`."""
    backlog = channel.backlog()
    if backlog < 0 or backlog > SEND_BACKLOG_LIMIT:
        return False
    channel.send_nowait(packet)
    return True


class UdpProxyConfig(PublicProxyConfig, kw_only=True, tag="udp", tag_field="type"):
    """``[[proxies]] type = "udp"``: a public UDP port on the server -> a local UDP service; its
    ``bandwidth_limit`` drops the datagrams over it (on the client)."""

    name: str
    local_ip: str = "127.0.0.1"
    local_port: int
    remote_port: int = 0
    #: Seconds a visitor's UDP session lives without traffic.
    idle_timeout: float = DEFAULT_UDP_IDLE_TIMEOUT
    #: "auto": also reachable directly through a port mapping on the client's router, when it has one.
    direct: DirectMode = DirectMode.OFF

    def __post_init__(self) -> None:
        check_proxy(self.name, self.local_port, self.remote_port)
        check_idle_timeout(self.idle_timeout)
        super().__post_init__()


class UdpSpec(ProxySpec, frozen=True, kw_only=True, tag="udp"):
    """Listen on a UDP port and relay its datagrams as `UdpPacket` messages on the control channel."""

    #: 0 lets the server pick a free port from its allowed range.
    remote_port: Port


def udp_spec(config: UdpProxyConfig) -> UdpSpec:
    return UdpSpec(remote_port=config.remote_port)


# -- client side ------------------------------------------------------------------------------------


class UdpProxyClient:
    """The client side of one UDP proxy: a flow to the local service per visitor."""

    def __init__(self, config: UdpProxyConfig, proxies: UdpProxies) -> None:
        from pierce.udpflow import DatagramLimit, UdpFlows

        self.config = config
        self.proxies = proxies
        self.local = HostPort(config.local_ip, config.local_port)
        self.flows = UdpFlows(config.name, log)
        self.limit = DatagramLimit(log, config.name, config.bandwidth_limit)

    def deliver(self, packet: UdpPacket) -> None:
        """A visitor's datagram from the server, for the local service."""
        if not self.limit.inbound(packet.data, packet.peer_host, packet.peer_port):
            return
        visitor = (packet.peer_host, packet.peer_port)
        flow = self.flows.get(visitor) or self.flows.open(visitor, lambda ended: self._flow(visitor, ended))
        if flow is not None:
            flow.send(packet.data)

    def _flow(self, visitor: tuple[str, int], ended: Callable[[], None]) -> UdpFlow:
        from pierce.udpflow import UdpFlow

        name = self.config.name
        host, port = visitor

        def reply(data: bytes) -> None:
            if self.limit.outbound(data, host, port):
                self.proxies.send(UdpPacket(proxy=name, peer_host=host, peer_port=port, data=data))

        return UdpFlow(
            label=name,
            peer=format_sockaddr(visitor),
            target=self.local,
            idle_timeout=self.config.idle_timeout,
            reply=reply,
            ended=ended,
            logger=log,
            fields={"proxy": name},
        )

    async def close(self, reason: str) -> None:
        await self.flows.close(reason)


class UdpProxies:
    """Every UDP proxy of one client, kept across control sessions.

    A session calls `attach` with its channel when it starts and `detach` when it ends; replies that
    come while no channel is attached are dropped (and counted).
    """

    def __init__(self) -> None:
        self.proxies: dict[str, UdpProxyClient] = {}
        self.channel: MessageChannel | None = None
        #: Drop counters, by event: made with the first drop (a client without udp proxies never loads
        #: `pierce.udpflow`).
        self._drops: dict[str, DropCounter] = {}

    def _drop(self, event_name: str, reason: str, proxy: str) -> None:
        counter = self._drops.get(event_name)
        if counter is None:
            from pierce.udpflow import DropCounter

            what = (
                "UDP packets from the server"
                if event_name == "udp.unknown_proxy"
                else "UDP replies to the server"
            )
            counter = self._drops[event_name] = DropCounter(log, event_name, what)
        counter.drop(reason, proxy=proxy)

    def attach(self, channel: MessageChannel) -> None:
        self.channel = channel

    def detach(self, channel: MessageChannel) -> None:
        if self.channel is channel:
            self.channel = None

    async def register(self, config: UdpProxyConfig) -> None:
        """Serve ``config``; the flows of a proxy registered again unchanged (a reconnect) carry on."""
        old = self.proxies.get(config.name)
        if old is not None:
            if old.config == config:
                return
            await self.unregister(config.name, reason="proxy changed")
        self.proxies[config.name] = UdpProxyClient(config, self)

    async def unregister(self, name: str, *, reason: str = "proxy removed") -> None:
        proxy = self.proxies.pop(name, None)
        if proxy is not None:
            await proxy.close(reason)

    async def retain(self, names: Collection[str]) -> None:
        """Close the proxies not in ``names`` (removed by a reload while disconnected)."""
        for name in [n for n in self.proxies if n not in names]:
            await self.unregister(name)

    def deliver(self, packet: UdpPacket) -> None:
        proxy = self.proxies.get(packet.proxy)
        if proxy is None:
            self._drop("udp.unknown_proxy", f"unknown proxy {packet.proxy!r}", packet.proxy)
        else:
            proxy.deliver(packet)

    def send(self, packet: UdpPacket) -> None:
        if self.channel is None:
            self._drop("udp.dropped", "not connected to the server", packet.proxy)
        elif not send_packet(self.channel, packet):
            self._drop("udp.dropped", "tunnel send buffer full", packet.proxy)

    async def close(self) -> None:
        for name in list(self.proxies):
            await self.unregister(name, reason="shutdown")
        self.channel = None
