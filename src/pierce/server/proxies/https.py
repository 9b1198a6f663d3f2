"""The server side of https proxies (`pierce.proxies.https`): SNI routes of the `VhostFront`."""

from __future__ import annotations

import socket

from pierce.proxies.base import ProxyOwner, ProxySite, ProxyType
from pierce.proxies.https import HttpsSpec
from pierce.server.proxies.bridge import SocketVisitor, bridge
from pierce.server.proxies.group import ProxyGroup, ProxyGroups
from pierce.server.proxies.http import WebProxy, route_refusal
from pierce.vhost.front import VhostFront
from pierce.vhost.router import RouteError, proxy_domains


class HttpsProxyServer(WebProxy):
    """An https proxy: TLS connections whose SNI it claims, relayed without being decrypted."""

    type = ProxyType.HTTPS
    scheme = "https"
    default_port = 443

    def __init__(
        self,
        name: str,
        owner: ProxyOwner,
        front: VhostFront,
        domains: list[str],
        group: HttpsGroup | None = None,
    ) -> None:
        super().__init__(name, owner, domains, front.https_address, group)
        self._front = front

    @classmethod
    def create(cls, name: str, spec: HttpsSpec, site: ProxySite) -> HttpsProxyServer:
        front = site.front(VhostFront)
        try:
            domains = proxy_domains(spec.custom_domains, spec.subdomain, front.config.subdomain_host)
            if spec.group:
                user = site.owner.user
                group = site.groups.join(
                    HttpsGroup, user, name, spec, lambda: HttpsGroup(site.groups, user, spec, front, domains)
                )
                member = cls(name, site.owner, front, domains, group)
                group.add(member)
                return member
            proxy = cls(name, site.owner, front, domains)
            front.add_https(proxy, domains)
        except RouteError as exc:
            raise route_refusal(exc) from exc
        return proxy

    async def serve(self, conn: socket.socket, addr: tuple[str, int], server_name: str) -> None:
        """A visitor's TLS connection whose ClientHello (peeked, not consumed) names ``server_name``."""
        visitor = SocketVisitor(conn, addr)
        await bridge(
            self.name, self.owner, self.live, visitor, self.start_work(addr), server_name=server_name
        )

    async def close(self) -> None:
        if self.group is not None:
            await self.group.leave(self)
        else:
            self._front.remove_https(self)
        await self.live.close()


class HttpsGroup(ProxyGroup[HttpsProxyServer]):
    """The SNI route of a group of https proxies: each connection goes to the next member."""

    kind = ProxyType.HTTPS

    def __init__(
        self, groups: ProxyGroups, user: str, spec: HttpsSpec, front: VhostFront, domains: list[str]
    ) -> None:
        super().__init__(groups, user, spec)
        self._front = front
        front.add_https(self, domains)

    async def serve(self, conn: socket.socket, addr: tuple[str, int], server_name: str) -> None:
        member = self.pick()
        if member is None:
            conn.close()
            return
        await member.serve(conn, addr, server_name)

    async def release(self) -> None:
        self._front.remove_https(self)
