"""The server side of http proxies (`pierce.proxies.http`): routes of the `VhostFront`, alone or in groups.

`WebProxy` is what http and https proxies share: domains on a shared front instead of a port of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pierce.addr import HostPort
from pierce.errors import InvalidValue, PierceError
from pierce.protocol import ErrorCode, Refused, StartWork
from pierce.proxies.base import ProxyOwner, ProxySite, ProxyType
from pierce.proxies.http import HttpSpec, check_head_settings
from pierce.relay import End
from pierce.server.proxies.bridge import LiveConnections, open_work, user_throttled
from pierce.server.proxies.group import ProxyGroup, ProxyGroups
from pierce.snapshot import ProxyStats
from pierce.vhost.front import VhostFront
from pierce.vhost.router import RouteError, RouteTaken, proxy_domains


class WebProxy:
    """A proxy reached by domain on a shared front (http, https) rather than on a port of its own."""

    type: ClassVar[ProxyType]
    #: The URL scheme, and the default port left out of URLs.
    scheme: ClassVar[str]
    default_port: ClassVar[int]

    def __init__(
        self, name: str, owner: ProxyOwner, domains: list[str], front: HostPort, group: ProxyGroup[Any] | None
    ) -> None:
        self.name = name
        self.owner = owner
        self.domains = domains
        #: The public address visitors connect to (the destination of PROXY protocol headers).
        self.front_address = front
        self.port = front.port
        self.live = LiveConnections()
        #: Its group, which holds the route (None: it holds its own).
        self.group = group

    def __str__(self) -> str:
        return f"proxy {self.name!r}"

    @property
    def urls(self) -> list[str]:
        suffix = "" if self.port == self.default_port else f":{self.port}"
        return [f"{self.scheme}://{d}{suffix}/" for d in self.domains]

    def start_work(self, visitor: tuple[str, int]) -> StartWork:
        return StartWork(
            proxy=self.name,
            visitor_host=visitor[0],
            visitor_port=visitor[1],
            server_host=self.front_address.host,
            server_port=self.front_address.port,
        )

    def stats(self) -> ProxyStats:
        return self.live.stats()


def route_refusal(exc: RouteError) -> Refused:
    code = ErrorCode.DOMAIN_TAKEN if isinstance(exc, RouteTaken) else ErrorCode.NOT_AVAILABLE
    return Refused(code, str(exc))


class HttpOptions:
    """What the server does to the requests of a route (an http proxy, or a group of them): the
    settings of `pierce.vhost.http.HttpRoute`."""

    def __init__(self, spec: HttpSpec) -> None:
        self.locations = spec.locations
        self.http_user = spec.http_user or None
        self.http_password = spec.http_password or None
        self.host_header_rewrite = spec.host_header_rewrite or None
        self.request_headers: Mapping[str, str] = dict(spec.request_headers)
        self.response_headers: Mapping[str, str] = dict(spec.response_headers)
        self.https_auto = spec.https_auto


class HttpProxyServer(WebProxy, HttpOptions):
    """An http proxy: requests whose Host and path it claims, with its options applied by the server."""

    type = ProxyType.HTTP
    scheme = "http"
    default_port = 80

    def __init__(
        self,
        name: str,
        owner: ProxyOwner,
        front: VhostFront,
        domains: list[str],
        spec: HttpSpec,
        group: HttpGroup | None = None,
    ):
        WebProxy.__init__(self, name, owner, domains, front.http_address, group)
        HttpOptions.__init__(self, spec)
        self._front = front

    @classmethod
    def create(cls, name: str, spec: HttpSpec, site: ProxySite) -> HttpProxyServer:
        try:
            # A client's config was checked where it was read; a peer's message is checked again here.
            check_head_settings(
                spec.host_header_rewrite,
                {"request_headers": spec.request_headers, "response_headers": spec.response_headers},
            )
        except InvalidValue as exc:
            raise Refused(ErrorCode.BAD_MESSAGE, f"proxy {name!r}: {exc}") from exc
        front = site.front(VhostFront)
        try:
            domains = proxy_domains(spec.custom_domains, spec.subdomain, front.config.subdomain_host)
            if spec.group:
                user = site.owner.user
                group = site.groups.join(
                    HttpGroup, user, name, spec, lambda: HttpGroup(site.groups, user, spec, front, domains)
                )
                member = cls(name, site.owner, front, domains, spec, group)
                group.add(member)
                return member
            proxy = cls(name, site.owner, front, domains, spec)
            front.add_http(proxy, proxy.domains, proxy.locations, https_auto=proxy.https_auto)
        except RouteError as exc:
            raise route_refusal(exc) from exc
        return proxy

    def admits(self, host: str) -> bool:
        return self.live.admits(host)

    async def open(self, visitor: tuple[str, int]) -> End:
        """A new stream to the client's local service for this visitor (the HTTP engine's backend)."""
        try:
            end, _ = await open_work(self.owner, self.start_work(visitor))
        except (TimeoutError, PierceError, OSError):
            self.live.failed()
            raise
        return self.live.counted(user_throttled(self.owner, end))

    async def close(self) -> None:
        if self.group is not None:
            await self.group.leave(self)
        else:
            self._front.remove_http(self, self.domains, https_auto=self.https_auto)
        await self.live.close()


class HttpGroup(ProxyGroup[HttpProxyServer], HttpOptions):
    """The route of a group of http proxies: each new connection to a service goes to the next member."""

    kind = ProxyType.HTTP

    def __init__(
        self, groups: ProxyGroups, user: str, spec: HttpSpec, front: VhostFront, domains: list[str]
    ) -> None:
        ProxyGroup.__init__(self, groups, user, spec)
        HttpOptions.__init__(self, spec)
        self._front = front
        self.domains = domains
        front.add_http(self, domains, self.locations, https_auto=self.https_auto)

    def admits(self, host: str) -> bool:
        # Every member has the same allow_ips / deny_ips; the first one counts the refusals.
        return bool(self.members) and self.members[0].admits(host)

    async def open(self, visitor: tuple[str, int]) -> End:
        member = self.pick()
        if member is None:
            raise ConnectionRefusedError(f"group {self.name!r} has no member left")
        return await member.open(visitor)

    async def release(self) -> None:
        self._front.remove_http(self, self.domains, https_auto=self.https_auto)
