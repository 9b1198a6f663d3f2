"""The server's table of proxy kinds: opening a proxy from its wire spec, and the shared fronts.

The client's half of the table (configs, specs, work handlers) is `pierce.proxies.registry`; adding a
kind means an arm here too (every table ends with `assert_never`).
"""

from __future__ import annotations

from typing import assert_never

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
from pierce.server.proxies.http import HttpProxyServer, WebProxy
from pierce.server.proxies.https import HttpsProxyServer
from pierce.server.proxies.secret import (
    SecretProxyServer,
    StcpProxyServer,
    SudpProxyServer,
    XtcpProxyServer,
    XudpProxyServer,
)
from pierce.server.proxies.tcp import TcpProxyServer
from pierce.server.proxies.tcpmux import TcpMuxFront, TcpMuxProxyServer
from pierce.server.proxies.udp import UdpProxyServer
from pierce.vhost.front import VhostFront

#: Listeners the server shares between proxies, started when their config keys are set.
FRONTS: tuple[FrontType, ...] = (VhostFront, TcpMuxFront)


def open_proxy(name: str, spec: ProxySpecs, site: ProxySite) -> ServerProxy:
    """Open a proxy on the server; raises `pierce.proxies.base.Refused`."""
    try:
        access = IpAccess.of(name, spec.allow_ips, spec.deny_ips)
    except InvalidValue as exc:
        raise Refused(ErrorCode.BAD_MESSAGE, str(exc)) from None
    proxy = _open_kind(name, spec, site)
    if isinstance(proxy, UdpProxyServer):
        proxy.access = access
    elif isinstance(proxy, TcpProxyServer | WebProxy | TcpMuxProxyServer | SecretProxyServer):
        proxy.live.access = access
    return proxy


def _open_kind(name: str, spec: ProxySpecs, site: ProxySite) -> ServerProxy:
    match spec:
        case TcpSpec():
            return TcpProxyServer.create(name, spec, site)
        case UdpSpec():
            return UdpProxyServer.create(name, spec, site)
        case HttpSpec():
            return HttpProxyServer.create(name, spec, site)
        case HttpsSpec():
            return HttpsProxyServer.create(name, spec, site)
        case StcpSpec():
            return StcpProxyServer.create(name, spec, site)
        case SudpSpec():
            return SudpProxyServer.create(name, spec, site)
        case TcpMuxSpec():
            return TcpMuxProxyServer.create(name, spec, site)
        case XtcpSpec():
            return XtcpProxyServer.create(name, spec, site)
        case XudpSpec():
            return XudpProxyServer.create(name, spec, site)
        case _:
            assert_never(spec)
