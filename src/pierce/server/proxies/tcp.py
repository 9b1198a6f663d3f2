"""The server side of tcp proxies (`pierce.proxies.tcp`): a public port each, or one per group."""

from __future__ import annotations

import socket
from collections.abc import Coroutine
from typing import Any, ClassVar

from pierce.addr import HostPort
from pierce.listeners import TcpListener
from pierce.protocol import ErrorCode, Refused, StartWork
from pierce.proxies.base import ProxyOwner, ProxySite, ProxyType
from pierce.proxies.tcp import TcpSpec
from pierce.server.proxies.bridge import LiveConnections, SocketVisitor, bridge
from pierce.server.proxies.group import ProxyGroup, ProxyGroups
from pierce.snapshot import ProxyStats


class TcpProxyServer:
    """One TCP proxy on the server: its public listener, or its place in a group's turns."""

    type: ClassVar[ProxyType] = ProxyType.TCP

    def __init__(
        self, name: str, owner: ProxyOwner, listen: HostPort | None = None, *, group: TcpGroup | None = None
    ) -> None:
        self.name = name
        self.owner = owner
        self.live = LiveConnections()
        self.group = group
        self.listener: TcpListener | None = None
        if group is not None:
            self.port = group.port
        else:
            assert listen is not None
            self.listener = TcpListener.open(listen, self.serve, name=f"proxy {name}")
            self.port = self.listener.port
        self.urls: list[str] = []
        self.domains: list[str] = []

    @classmethod
    def create(cls, name: str, spec: TcpSpec, site: ProxySite) -> TcpProxyServer:
        if not spec.group:
            return site.bind_public(name, spec.remote_port, lambda addr: cls(name, site.owner, addr))
        user = site.owner.user
        group = site.groups.find(TcpGroup, user, name, spec)
        if group is None:
            group = site.bind_public(
                name, spec.remote_port, lambda addr: TcpGroup(site.groups, user, spec, addr)
            )
            site.groups.add(group)
        elif spec.remote_port not in (0, group.port):
            raise Refused(
                ErrorCode.NOT_ALLOWED,
                f"proxy {name!r}: group {spec.group!r} is on port {group.port}, not {spec.remote_port}",
            )
        else:  # the port rules and max_ports_per_client count each member's hold on the port
            site.bind_public(name, group.port, lambda addr: addr)
        member = cls(name, site.owner, group=group)
        group.add(member)
        return member

    def serve(self, conn: socket.socket, addr: Any) -> Coroutine[Any, Any, None]:
        """A visitor accepted on the public port: the bridge that serves it (returned, not awaited here,
        so a held connection keeps no frame of this function)."""
        here = conn.getsockname()
        start = StartWork(
            proxy=self.name,
            visitor_host=addr[0],
            visitor_port=addr[1],
            server_host=here[0],
            server_port=here[1],
        )
        return bridge(self.name, self.owner, self.live, SocketVisitor(conn, (addr[0], addr[1])), start)

    def stats(self) -> ProxyStats:
        return self.live.stats()

    async def close(self) -> None:
        if self.group is not None:
            await self.group.leave(self)
        if self.listener is not None:
            await self.listener.close()
        await self.live.close()


class TcpGroup(ProxyGroup[TcpProxyServer]):
    """The public port of a group of tcp proxies: each visitor goes to the next member."""

    kind = ProxyType.TCP
    checked_apart = frozenset({"remote_port"})

    def __init__(self, groups: ProxyGroups, user: str, spec: TcpSpec, listen: HostPort) -> None:
        super().__init__(groups, user, spec)
        self.listener = TcpListener.open(listen, self._visitor, name=f"group {spec.group}")
        self.port = self.listener.port

    async def _visitor(self, conn: socket.socket, addr: Any) -> None:
        member = self.pick()
        if member is None:
            conn.close()
            return
        await member.serve(conn, addr)

    async def release(self) -> None:
        await self.listener.close()
