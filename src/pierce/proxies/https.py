"""HTTPS proxies: TLS connections for some domains on the server's shared HTTPS port, chosen by SNI.

Server side (`pierce.server.proxies.https`): an `HttpsProxyServer` is an SNI route of the `VhostFront`;
each connection whose ClientHello names one of its domains is bridged to a work connection untouched (TLS
is not terminated on the server). Client side: the local service keeps its own certificate, unless
``plugin = "https2http"``: then the client ends TLS with ``plugin_crt_path``/``plugin_key_path`` and the
local service speaks plain HTTP. The members of a group (`HttpsGroup`) share one SNI route and take turns
with the connections.
"""

from __future__ import annotations

import enum
import logging
import ssl
from typing import TYPE_CHECKING, Annotated

import msgspec

from pierce.addr import HostPort
from pierce.errors import InvalidValue
from pierce.logs import event
from pierce.protocol import StartWork
from pierce.protocol.messages import MAX_DOMAINS, DomainName
from pierce.proxies.base import (
    GroupedProxyConfig,
    GroupedSpec,
    ProxyProtocolVersion,
    check_proxy,
    masked_repr,
)
from pierce.proxies.http import check_domains
from pierce.proxies.tcp import proxy_protocol_header, serve_tcp_work
from pierce.relay import End

if TYPE_CHECKING:
    from pierce.inspect.record import ConnectionRecorder

log = logging.getLogger("pierce.proxy")


class Https2HttpPlugin(enum.Enum):
    HTTPS2HTTP = "https2http"


class HttpsProxyConfig(GroupedProxyConfig, kw_only=True, tag="https", tag_field="type"):
    """``[[proxies]] type = "https"``: TLS connections for some domains on vhost_https_port, by SNI.

    TLS is not terminated on the server; the local service keeps its own certificate, unless
    ``plugin = "https2http"``: then this client terminates TLS with ``plugin_crt_path``/``plugin_key_path``
    and the local service speaks plain HTTP.
    """

    name: str
    local_ip: str = "127.0.0.1"
    local_port: int
    custom_domains: list[str] = msgspec.field(default_factory=list)
    subdomain: str = ""
    proxy_protocol_version: ProxyProtocolVersion | None = None
    plugin: Https2HttpPlugin | None = None
    plugin_crt_path: str = ""
    plugin_key_path: str = ""
    #: With the https2http plugin (this client sees plain HTTP): record requests for the inspector on
    #: the admin port; unset: on when ``admin_port`` is set.
    inspect: bool | None = None

    def __post_init__(self) -> None:
        check_proxy(self.name, self.local_port)
        super().__post_init__()
        check_domains(self.custom_domains, self.subdomain)
        if self.plugin is not None and not (self.plugin_crt_path and self.plugin_key_path):
            raise InvalidValue(
                "plugin_crt_path", "expected plugin_crt_path and plugin_key_path for https2http"
            )
        if self.inspect and self.plugin is None:
            raise InvalidValue(
                "inspect",
                'expected plugin = "https2http" with inspect = true (without it this client relays TLS '
                "it cannot read)",
            )

    def __repr__(self) -> str:
        return masked_repr(self)


class HttpsSpec(GroupedSpec, frozen=True, kw_only=True, tag="https"):
    """Route TLS connections whose SNI names these domains on the server's vhost HTTPS port to this client."""

    custom_domains: Annotated[list[DomainName], msgspec.Meta(max_length=MAX_DOMAINS)] = msgspec.field(
        default_factory=list
    )
    subdomain: Annotated[str, msgspec.Meta(max_length=63)] = ""


def https_spec(config: HttpsProxyConfig) -> HttpsSpec:
    return HttpsSpec(
        custom_domains=config.custom_domains,
        subdomain=config.subdomain,
        group=config.group,
        group_key=config.group_key,
    )


# -- client side ------------------------------------------------------------------------------------


def plugin_context(
    config: HttpsProxyConfig, cache: dict[tuple[str, str], ssl.SSLContext]
) -> ssl.SSLContext | None:
    """The https2http plugin's TLS server context, loaded once per certificate/key pair (in ``cache``)."""
    key = (config.plugin_crt_path, config.plugin_key_path)
    ctx = cache.get(key)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        try:
            ctx.load_cert_chain(config.plugin_crt_path, config.plugin_key_path)
        except (OSError, ssl.SSLError) as exc:
            event(
                log,
                logging.ERROR,
                "proxy.plugin_failed",
                f"proxy {config.name}: cannot load plugin_crt_path/plugin_key_path: {exc}",
                proxy=config.name,
                error=str(exc),
            )
            return None
        cache[key] = ctx
    return ctx


async def serve_https_work(
    config: HttpsProxyConfig,
    start: StartWork,
    tunnel: End,
    tls_cache: dict[tuple[str, str], ssl.SSLContext],
    recorder: ConnectionRecorder | None = None,
) -> None:
    """``recorder``: the inspector's, with the https2http plugin only (else this client sees only TLS)."""
    tls = None
    if config.plugin is not None:
        tls = plugin_context(config, tls_cache)
        if tls is None:
            tunnel.close()
            return
    local = HostPort(config.local_ip, config.local_port)
    header = proxy_protocol_header(config.proxy_protocol_version, start)
    await serve_tcp_work(
        config.name,
        local,
        start,
        tunnel,
        header=header,
        tls=tls,
        bandwidth_limit=config.bandwidth_limit,
        recorder=recorder if tls is not None else None,
    )
