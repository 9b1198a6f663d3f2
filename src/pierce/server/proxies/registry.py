"""The server's table of proxy kinds: opening a proxy from its wire spec, and the shared fronts.

The client's half of the table (configs, specs, work handlers) is `pierce.proxies.registry`; adding a
kind means an arm here too (every table ends with `assert_never`).

A kind's server side is imported with the first proxy of that kind (tcp's, which most servers serve, at
start), a shared front when its port is configured: a server whose clients have tcp proxies only never
loads the UDP relay, the secret proxies' visits and rendezvous, the HTTP engine, the vhost router or the
tcpmux front. Code that must tell the kinds apart before then asks for the proxy's ``type``
(`secret_proxy`, `udp_proxy`), never `isinstance`, which would need the class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_never, cast

from pierce.errors import InvalidValue
from pierce.protocol import ErrorCode, Refused, SecretKind
from pierce.proxies.access import IpAccess
from pierce.proxies.base import FrontType, ProxySite, ProxyType, ServerProxy
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
from pierce.server.proxies.tcp import TcpProxyServer
from pierce.snapshot import ConnectionPath

if TYPE_CHECKING:
    from pierce.config import ServerConfig
    from pierce.server.proxies.secret import SecretProxyServer
    from pierce.server.proxies.udp import UdpProxyServer

#: The types of the secret kinds, whose server side is `pierce.server.proxies.secret.SecretProxyServer`.
SECRET_TYPES = frozenset(ProxyType(kind.value) for kind in SecretKind)


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
    udp = udp_proxy(proxy)
    if udp is not None:
        udp.access = access
    else:  # every other kind bridges visitors, each checked by its live connections
        live = getattr(proxy, "live", None)
        assert isinstance(live, LiveConnections), f"{type(proxy).__name__} keeps no live connections"
        live.access = access
    return proxy


def secret_proxy(proxy: ServerProxy | None) -> SecretProxyServer | None:
    """``proxy`` when it is of a secret kind (stcp, sudp, xtcp, xudp), else None."""
    return cast("SecretProxyServer", proxy) if proxy is not None and proxy.type in SECRET_TYPES else None


def udp_proxy(proxy: ServerProxy | None) -> UdpProxyServer | None:
    """``proxy`` when it is a udp proxy, else None."""
    return cast("UdpProxyServer", proxy) if proxy is not None and proxy.type is ProxyType.UDP else None


def visitor_path(proxy: ServerProxy) -> ConnectionPath:
    """How the visitors of ``proxy`` reach it, as far as the server knows: the path the latest P2P visitor
    reported (xtcp/xudp), else the relay (every other kind goes through the server)."""
    secret = secret_proxy(proxy)
    return secret.path if secret is not None else ConnectionPath.RELAY


def _open_kind(name: str, spec: ProxySpecs, site: ProxySite) -> ServerProxy:
    # every kind but tcp imports its server side with its first proxy (http, https and tcpmux the HTTP
    # engine with it)
    match spec:
        case TcpSpec():
            return TcpProxyServer.create(name, spec, site)
        case UdpSpec():
            from pierce.server.proxies.udp import UdpProxyServer

            return UdpProxyServer.create(name, spec, site)
        case HttpSpec():
            from pierce.server.proxies.http import HttpProxyServer

            return HttpProxyServer.create(name, spec, site)
        case HttpsSpec():
            from pierce.server.proxies.https import HttpsProxyServer

            return HttpsProxyServer.create(name, spec, site)
        case StcpSpec():
            from pierce.server.proxies.secret import StcpProxyServer

            return StcpProxyServer.create(name, spec, site)
        case SudpSpec():
            from pierce.server.proxies.secret import SudpProxyServer

            return SudpProxyServer.create(name, spec, site)
        case TcpMuxSpec():
            from pierce.server.proxies.tcpmux import TcpMuxProxyServer

            return TcpMuxProxyServer.create(name, spec, site)
        case XtcpSpec():
            from pierce.server.proxies.secret import XtcpProxyServer

            return XtcpProxyServer.create(name, spec, site)
        case XudpSpec():
            from pierce.server.proxies.secret import XudpProxyServer

            return XudpProxyServer.create(name, spec, site)
        case _:
            assert_never(spec)
