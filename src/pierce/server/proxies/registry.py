"""The server's table of proxy kinds: opening a proxy from its wire spec, and the shared fronts.

The client's half of the table (configs, specs, work handlers) is `pierce.proxies.registry`; adding a
kind means an arm here too (every table ends with `assert_never`).

A kind's server side is imported with the first proxy of that kind, a shared front when its port is
configured: a server whose clients have tcp proxies only never loads the HTTP engine, the vhost router
or the tcpmux front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_never

from pierce.errors import InvalidValue
from pierce.protocol import ErrorCode, Refused
from pierce.proxies.access import IpAccess
from pierce.proxies.base import FrontType, ProxySite, ServerProxy
from pierce.proxies.http import HttpSpec
from pierce.proxies.https import HttpsSpec
from pierce.proxies.registry import ProxySpecs
from pierce.proxies.stcp import StcpSpec
from pierce.proxies.sudp import SudpSpec
from pierce.proxies.tcp import TcpSpec
from pierce.proxies.tcpmux import TcpMuxSpec
from pierce.proxies.udp import UdpSpec
from pierce.proxies.xtcp import XtcpSpec
from pierce.proxies.xudp import XudpSpec
from pierce.server.proxies.bridge import LiveConnections
from pierce.server.proxies.secret import (
    StcpProxyServer,
    SudpProxyServer,
    XtcpProxyServer,
    XudpProxyServer,
)
from pierce.server.proxies.tcp import TcpProxyServer
from pierce.server.proxies.udp import UdpProxyServer

if TYPE_CHECKING:
    from pierce.config import ServerConfig


def configured_fronts(config: ServerConfig) -> list[FrontType]:
    """The listeners the server shares between proxies that ``config`` asks for (each loads only then)."""
    fronts: list[FrontType] = []
    if config.vhost_http_port or config.vhost_https_port:
        from pierce.vhost.front import VhostFront

        fronts.append(VhostFront)
    if config.tcpmux_httpconnect_port:
        from pierce.server.proxies.tcpmux import TcpMuxFront

        fronts.append(TcpMuxFront)
    return fronts


def open_proxy(name: str, spec: ProxySpecs, site: ProxySite) -> ServerProxy:
    """Open a proxy on the server; raises `pierce.proxies.base.Refused`."""
    try:
        access = IpAccess.of(name, spec.allow_ips, spec.deny_ips)
    except InvalidValue as exc:
        raise Refused(ErrorCode.BAD_MESSAGE, str(exc)) from None
    proxy = _open_kind(name, spec, site)
    if isinstance(proxy, UdpProxyServer):
        proxy.access = access
    else:  # every other kind bridges visitors, each checked by its live connections
        live = getattr(proxy, "live", None)
        assert isinstance(live, LiveConnections), f"{type(proxy).__name__} keeps no live connections"
        live.access = access
    return proxy


def _open_kind(name: str, spec: ProxySpecs, site: ProxySite) -> ServerProxy:
    # http, https and tcpmux import their server side (and the HTTP engine) with their first proxy
    match spec:
        case TcpSpec():
            return TcpProxyServer.create(name, spec, site)
        case UdpSpec():
            return UdpProxyServer.create(name, spec, site)
        case HttpSpec():
            from pierce.server.proxies.http import HttpProxyServer

            return HttpProxyServer.create(name, spec, site)
        case HttpsSpec():
            from pierce.server.proxies.https import HttpsProxyServer

            return HttpsProxyServer.create(name, spec, site)
        case StcpSpec():
            return StcpProxyServer.create(name, spec, site)
        case SudpSpec():
            return SudpProxyServer.create(name, spec, site)
        case TcpMuxSpec():
            from pierce.server.proxies.tcpmux import TcpMuxProxyServer

            return TcpMuxProxyServer.create(name, spec, site)
        case XtcpSpec():
            return XtcpProxyServer.create(name, spec, site)
        case XudpSpec():
            return XudpProxyServer.create(name, spec, site)
        case _:
            assert_never(spec)
