"""HTTP proxies: requests for some domains (and path prefixes) on the server's shared HTTP port.

Server side (`pierce.server.proxies.http`): an `HttpProxyServer` is a route of the `VhostFront`
(`pierce.vhost.front`): the HTTP engine (`pierce.vhost.http`) hands it each request it claims, and it
opens streams to the client's local service through work connections, with its options (basic auth, header
rewrites) applied by the server. With ``https_auto`` the server also obtains certificates for its domains
and serves them on the HTTPS port. The members of a group (`HttpGroup`) share one route and take turns
with new service connections. Client side: to the client an http proxy is a TCP stream
(`pierce.proxies.tcp.serve_tcp_work`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated

import msgspec

from pierce.addr import HostPort
from pierce.domains import InvalidDomain, normalize_domain, normalize_label
from pierce.errors import InvalidValue, KeyPath
from pierce.protocol import StartWork
from pierce.protocol.messages import MAX_DOMAINS, MAX_HEADERS, DomainName, HeaderText, PathPrefix
from pierce.proxies.base import (
    GroupedProxyConfig,
    GroupedSpec,
    ProxyProtocolVersion,
    check_proxy,
    masked_repr,
)
from pierce.proxies.tcp import proxy_protocol_header, serve_tcp_work
from pierce.relay import End

if TYPE_CHECKING:
    from pierce.inspect.record import ConnectionRecorder

_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
#: Control characters a header value must not hold (a tab is allowed): CR and LF would end the field
#: and start another (header injection), NUL and the rest are refused by servers or read differently.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HOST = re.compile(r"[A-Za-z0-9._~:\[\]-]+")


def check_header_name(key: str | KeyPath, name: str) -> None:
    """A header name set by config: letters, digits and "-" (so never a "_" spelling of another)."""
    if not _HEADER_NAME.fullmatch(name):
        raise InvalidValue(key, f'expected header names of letters, digits and "-", got {name!r}')


def check_header_value(key: str | KeyPath, value: str) -> None:
    """A header value set by config: no CR, LF, NUL or other control character."""
    if _CONTROL.search(value):
        raise InvalidValue(
            key, f"expected a header value without control characters (CR, LF, NUL ...), got {value!r}"
        )


def check_host_header(value: str) -> None:
    """``host_header_rewrite``: empty, or a host with an optional port such as ``nas.internal:8080``."""
    if value and not _HOST.fullmatch(value):
        raise InvalidValue(
            "host_header_rewrite",
            f'expected a host such as "nas.internal" or "10.0.0.5:8080" (no spaces or control characters), '
            f"got {value!r}",
        )


def check_head_settings(host_header_rewrite: str, headers: Mapping[str, Mapping[str, str]]) -> None:
    """Everything of an http proxy that ends up in a head; ``headers`` maps a key such as
    ``"request_headers"`` to the fields it sets. Raises InvalidValue naming the key."""
    check_host_header(host_header_rewrite)
    for key, fields in headers.items():
        for name, value in fields.items():
            check_header_name(key, name)
            check_header_value((key, name), value)


class HeaderOps(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``request_headers`` / ``response_headers`` of an http proxy."""

    #: Headers set (replaced) on every message.
    set: dict[str, str] = {}

    def __post_init__(self) -> None:
        for name, value in self.set.items():
            check_header_name("set", name)
            check_header_value(("set", name), value)


def check_credentials(user: str, password: str) -> None:
    """``http_user`` / ``http_password`` (basic or proxy authentication): both or neither."""
    if bool(user) != bool(password):
        raise InvalidValue("http_password", "expected http_user and http_password together")
    if ":" in user:
        raise InvalidValue("http_user", 'expected a user name without ":"')


def check_domains(domains: list[str], subdomain: str) -> None:
    """``custom_domains`` / ``subdomain`` of a web proxy: at least one, each a domain name (normalised)."""
    if not domains and not subdomain:
        raise InvalidValue("custom_domains", 'expected custom_domains = ["..."] or subdomain = "..."')
    for i, domain in enumerate(domains):
        try:
            domains[i] = normalize_domain(domain)
        except InvalidDomain as exc:
            raise InvalidValue(("custom_domains", i), str(exc)) from None
    if subdomain:
        try:
            normalize_label(subdomain)
        except InvalidDomain as exc:
            raise InvalidValue("subdomain", str(exc)) from None


class HttpProxyConfig(GroupedProxyConfig, kw_only=True, tag="http", tag_field="type"):
    """``[[proxies]] type = "http"``: requests for some domains (and paths) on vhost_http_port."""

    name: str
    local_ip: str = "127.0.0.1"
    local_port: int
    custom_domains: list[str] = msgspec.field(default_factory=list)
    #: ``"nas"`` => nas.<subdomain_host of the server>.
    subdomain: str = ""
    #: Path prefixes this proxy serves; the longest match wins across proxies of one domain.
    locations: list[str] = msgspec.field(default_factory=lambda: ["/"])
    #: Basic authentication, answered by the server before anything reaches this client.
    http_user: str = ""
    http_password: str = ""
    #: Replace the Host header the local service sees.
    host_header_rewrite: str = ""
    request_headers: HeaderOps = msgspec.field(default_factory=HeaderOps)
    response_headers: HeaderOps = msgspec.field(default_factory=HeaderOps)
    #: The server obtains certificates for these domains (ACME) and serves them on vhost_https_port too.
    https_auto: bool = False
    proxy_protocol_version: ProxyProtocolVersion | None = None
    #: Record requests for the inspector on the admin port; unset: on when ``admin_port`` is set.
    inspect: bool | None = None

    def __post_init__(self) -> None:
        check_proxy(self.name, self.local_port)
        super().__post_init__()
        check_domains(self.custom_domains, self.subdomain)
        for i, loc in enumerate(self.locations):
            if not loc.startswith("/") or any(c in loc for c in " ?#\r\n"):
                raise InvalidValue(("locations", i), f'expected a path starting with "/", got "{loc}"')
        if not self.locations:
            raise InvalidValue("locations", 'expected at least one path, e.g. ["/"]')
        check_credentials(self.http_user, self.http_password)
        check_host_header(self.host_header_rewrite)
        if self.https_auto and any(d.startswith("*.") for d in self.custom_domains):
            raise InvalidValue("https_auto", "wildcard domains cannot get certificates by HTTP-01 validation")

    def __repr__(self) -> str:
        return masked_repr(self)


class HttpSpec(GroupedSpec, frozen=True, kw_only=True, tag="http"):
    """Route HTTP requests for these domains and path prefixes on the server's vhost port to this client."""

    custom_domains: Annotated[list[DomainName], msgspec.Meta(max_length=MAX_DOMAINS)] = msgspec.field(
        default_factory=list
    )
    #: One label; the server appends its ``subdomain_host``.
    subdomain: Annotated[str, msgspec.Meta(max_length=63)] = ""
    locations: Annotated[list[PathPrefix], msgspec.Meta(min_length=1, max_length=MAX_DOMAINS)] = (
        msgspec.field(default_factory=lambda: ["/"])
    )
    http_user: HeaderText = ""
    http_password: HeaderText = ""
    host_header_rewrite: HeaderText = ""
    request_headers: Annotated[dict[HeaderText, HeaderText], msgspec.Meta(max_length=MAX_HEADERS)] = (
        msgspec.field(default_factory=dict)
    )
    response_headers: Annotated[dict[HeaderText, HeaderText], msgspec.Meta(max_length=MAX_HEADERS)] = (
        msgspec.field(default_factory=dict)
    )
    #: Obtain certificates for the domains and serve them over HTTPS too (server needs ``[acme]``).
    https_auto: bool = False


def http_spec(config: HttpProxyConfig) -> HttpSpec:
    return HttpSpec(
        custom_domains=config.custom_domains,
        subdomain=config.subdomain,
        locations=config.locations,
        http_user=config.http_user,
        http_password=config.http_password,
        host_header_rewrite=config.host_header_rewrite,
        request_headers=config.request_headers.set,
        response_headers=config.response_headers.set,
        https_auto=config.https_auto,
        group=config.group,
        group_key=config.group_key,
    )


# -- client side ------------------------------------------------------------------------------------


async def serve_http_work(
    config: HttpProxyConfig, start: StartWork, tunnel: End, recorder: ConnectionRecorder | None = None
) -> None:
    local = HostPort(config.local_ip, config.local_port)
    header = proxy_protocol_header(config.proxy_protocol_version, start)
    await serve_tcp_work(
        config.name,
        local,
        start,
        tunnel,
        header=header,
        bandwidth_limit=config.bandwidth_limit,
        recorder=recorder,
    )
