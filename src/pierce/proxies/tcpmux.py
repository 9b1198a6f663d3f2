"""tcpmux proxies: many TCP services behind one public port, chosen by the host of an HTTP CONNECT.

A visitor connects to the server's ``tcpmux_httpconnect_port`` and asks ``CONNECT name:port HTTP/1.1``
(``ssh -o ProxyCommand="socat - PROXY:server:%h:%p,proxyport=PORT"``, ``curl -p -x server:PORT``);
the name picks the proxy (its ``custom_domains`` / ``subdomain``, wildcards as for http proxies). The
server answers ``200 Connection established`` and bridges the connection to a work connection of the
owner, whose client reaches its local service like any TCP stream. With ``tcpmux_passthrough = true``
on the server the CONNECT request itself goes on to the service instead of being answered.

Refusals are HTTP answers, so a CONNECT client can say why: 404 for a name no proxy serves, 407 when the
proxy has ``http_user``/``http_password`` and the ``Proxy-Authorization`` does not match, 400/405 for
a request that is not a CONNECT, 502/504 when the owner's side fails. Before the answer every byte is
bounded: the request head by size, field count and time.

Here: the config and the wire spec; the client side is `pierce.proxies.tcp.serve_tcp_work`. The server
side (the shared listener `TcpMuxFront`, the proxy and its groups) is `pierce.server.proxies.tcpmux`.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from pierce.addr import HostPort
from pierce.protocol import StartWork
from pierce.protocol.messages import MAX_DOMAINS, DomainName, HeaderText
from pierce.proxies.base import (
    GroupedProxyConfig,
    GroupedSpec,
    ProxyProtocolVersion,
    check_proxy,
    masked_repr,
)
from pierce.proxies.http import check_credentials, check_domains
from pierce.proxies.tcp import proxy_protocol_header, serve_tcp_work
from pierce.relay import End


class Multiplexer(enum.Enum):
    """How a tcpmux port tells its proxies apart."""

    HTTPCONNECT = "httpconnect"


class TcpMuxProxyConfig(GroupedProxyConfig, kw_only=True, tag="tcpmux", tag_field="type"):
    """``[[proxies]] type = "tcpmux"``: a local TCP service reached through the server's tcpmux port by
    the name a visitor puts in its HTTP CONNECT request."""

    name: str
    local_ip: str = "127.0.0.1"
    local_port: int
    multiplexer: Multiplexer = Multiplexer.HTTPCONNECT
    custom_domains: list[str] = msgspec.field(default_factory=list)
    #: ``"ssh"`` => ssh.<subdomain_host of the server>.
    subdomain: str = ""
    #: Proxy authentication (``Proxy-Authorization: Basic``), checked by the server.
    http_user: str = ""
    http_password: str = ""
    proxy_protocol_version: ProxyProtocolVersion | None = None

    def __post_init__(self) -> None:
        check_proxy(self.name, self.local_port)
        super().__post_init__()
        check_domains(self.custom_domains, self.subdomain)
        check_credentials(self.http_user, self.http_password)

    def __repr__(self) -> str:
        return masked_repr(self)


class TcpMuxSpec(GroupedSpec, frozen=True, kw_only=True, tag="tcpmux"):
    """Route HTTP CONNECT requests for these names on the server's tcpmux port to this client."""

    multiplexer: Multiplexer = Multiplexer.HTTPCONNECT
    custom_domains: Annotated[list[DomainName], msgspec.Meta(max_length=MAX_DOMAINS)] = msgspec.field(
        default_factory=list
    )
    subdomain: Annotated[str, msgspec.Meta(max_length=63)] = ""
    http_user: HeaderText = ""
    http_password: HeaderText = ""


def tcpmux_spec(config: TcpMuxProxyConfig) -> TcpMuxSpec:
    return TcpMuxSpec(
        multiplexer=config.multiplexer,
        custom_domains=config.custom_domains,
        subdomain=config.subdomain,
        http_user=config.http_user,
        http_password=config.http_password,
        group=config.group,
        group_key=config.group_key,
    )


# -- client side ------------------------------------------------------------------------------------


async def serve_tcpmux_work(config: TcpMuxProxyConfig, start: StartWork, tunnel: End) -> None:
    local = HostPort(config.local_ip, config.local_port)
    header = proxy_protocol_header(config.proxy_protocol_version, start)
    await serve_tcp_work(
        config.name, local, start, tunnel, header=header, bandwidth_limit=config.bandwidth_limit
    )
