"""The server side of udp proxies (`pierce.proxies.udp`): the public UDP port and its visitors."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from typing import Any, ClassVar

from pierce.addr import HostPort, format_sockaddr
from pierce.listeners import SEND_BACKLOG_LIMIT, bind_socket
from pierce.protocol import MAX_HOST_LENGTH, UdpPacket
from pierce.proxies.access import IpAccess
from pierce.proxies.base import ProxyOwner, ProxySite, ProxyType
from pierce.proxies.udp import MAX_VISITORS, USER_LIMIT, UdpSpec, send_packet
from pierce.snapshot import ProxyStats
from pierce.udpflow import DatagramProtocol, DropCounter, send_backlog

log = logging.getLogger("pierce.proxy")


class UdpProxyServer:
    """The public UDP port of one proxy on the server.

    The port is bound in the constructor (so a taken port fails right away, like a TCP proxy's); the
    datagram endpoint is set up in the background, while the kernel queues early datagrams.
    """

    type: ClassVar[ProxyType] = ProxyType.UDP

    def __init__(self, name: str, owner: ProxyOwner, listen: HostPort) -> None:
        self.name = name
        self.owner = owner
        sock = bind_socket(listen, socket.SOCK_DGRAM)
        self.port = int(sock.getsockname()[1])
        self.urls: list[str] = []
        #: UDP proxies form no groups.
        self.group: None = None
        self.domains: list[str] = []
        self.visitors: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._seen = 0
        #: allow_ips / deny_ips (set by `pierce.proxies.registry.open_proxy`; None: every visitor).
        self.access: IpAccess | None = None
        self.up_packets = self.up_bytes = self.down_packets = self.down_bytes = 0
        self._transport: asyncio.DatagramTransport | None = None
        what = f"proxy {name} (client {owner.client_id})"
        self._dropped_in = DropCounter(
            log, "udp.dropped", f"{what}, to the client", proxy=name, direction="in"
        )
        self._dropped_out = DropCounter(
            log, "udp.dropped", f"{what}, to the visitors", proxy=name, direction="out"
        )
        self._starting = asyncio.get_running_loop().create_task(self._start(sock))

    @classmethod
    def create(cls, name: str, spec: UdpSpec, site: ProxySite) -> UdpProxyServer:
        return site.bind_public(name, spec.remote_port, lambda addr: cls(name, site.owner, addr))

    async def _start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: DatagramProtocol(self.from_visitor, log, self.name), sock=sock
            )
        except BaseException:
            sock.close()
            raise

    def stats(self) -> ProxyStats:
        """``connections``: the visitor addresses it remembers as allowed reply destinations."""
        return ProxyStats(
            connections=len(self.visitors),
            total_connections=self._seen,
            bytes_in=self.up_bytes,
            bytes_out=self.down_bytes,
            refused_connections=self.access.refused if self.access is not None else 0,
            dropped_datagrams_in=self._dropped_in.count,
            dropped_datagrams_out=self._dropped_out.count,
        )

    def from_visitor(self, data: bytes, addr: Any) -> None:
        visitor = (str(addr[0]), int(addr[1]))
        if len(visitor[0]) > MAX_HOST_LENGTH:  # cannot be encoded for the client; no real address is
            return
        if self.access is not None and not self.access.admit(visitor[0]):
            return  # allow_ips / deny_ips: dropped here, counted and logged
        if visitor in self.visitors:
            self.visitors.move_to_end(visitor)
        else:
            self.visitors[visitor] = None
            self._seen += 1
            if len(self.visitors) > MAX_VISITORS:
                self.visitors.popitem(last=False)
        limits = self.owner.bandwidth
        if limits is not None and not limits.inbound.admit(len(data)):
            self._dropped_in.drop(USER_LIMIT, visitor=format_sockaddr(visitor))
            return
        packet = UdpPacket(proxy=self.name, peer_host=visitor[0], peer_port=visitor[1], data=data)
        if send_packet(self.owner.channel, packet):
            self.up_packets += 1
            self.up_bytes += len(data)
        else:
            self._dropped_in.drop("tunnel send buffer full", visitor=format_sockaddr(visitor))

    def deliver(self, packet: UdpPacket) -> None:
        """A datagram from the client, for the visitor it names."""
        visitor = (packet.peer_host, packet.peer_port)
        shown = format_sockaddr(visitor)
        if visitor not in self.visitors:
            self._dropped_out.drop("reply to an address that never sent here", visitor=shown)
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            self._dropped_out.drop("public port not open", visitor=shown)
            return
        if send_backlog(transport) > SEND_BACKLOG_LIMIT:
            self._dropped_out.drop("socket send buffer full", visitor=shown)
            return
        limits = self.owner.bandwidth
        if limits is not None and not limits.outbound.admit(len(packet.data)):
            self._dropped_out.drop(USER_LIMIT, visitor=shown)
            return
        transport.sendto(packet.data, visitor)
        self.down_packets += 1
        self.down_bytes += len(packet.data)

    async def close(self) -> None:
        self._starting.cancel()
        await asyncio.gather(self._starting, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
