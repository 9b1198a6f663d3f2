"""The table of proxy kinds: both sessions dispatch through it, and nothing else names a kind.

Adding a kind means a new module in `pierce.proxies` and an arm in each table below (the type checker
insists: every table ends with `assert_never`), plus its `ProxyType` member and, when it needs a
listener the server shares between proxies, its front in `FRONTS`.
"""

from __future__ import annotations

import ssl
from collections.abc import Coroutine
from typing import Any, TypeAlias, assert_never

import msgspec

from pierce.errors import InvalidValue
from pierce.inspect.record import ConnectionRecorder
from pierce.protocol import ErrorCode, ProtocolError, Refused, StartWork
from pierce.proxies.access import IpAccess
from pierce.proxies.base import FrontType, ProxySite, ServerProxy
from pierce.proxies.http import (
    HttpProxyConfig,
    HttpProxyServer,
    HttpSpec,
    WebProxy,
    http_spec,
    serve_http_work,
)
from pierce.proxies.https import HttpsProxyConfig, HttpsProxyServer, HttpsSpec, https_spec, serve_https_work
from pierce.proxies.secret import SecretProxyServer
from pierce.proxies.stcp import StcpProxyConfig, StcpProxyServer, StcpSpec, serve_stcp_work, stcp_spec
from pierce.proxies.sudp import SudpProxyConfig, SudpProxyServer, SudpSpec, serve_sudp_work, sudp_spec
from pierce.proxies.tcp import TcpProxyConfig, TcpProxyServer, TcpSpec, serve_tcp_proxy_work, tcp_spec
from pierce.proxies.tcpmux import (
    TcpMuxFront,
    TcpMuxProxyConfig,
    TcpMuxProxyServer,
    TcpMuxSpec,
    serve_tcpmux_work,
    tcpmux_spec,
)
from pierce.proxies.udp import UdpProxies, UdpProxyConfig, UdpProxyServer, UdpSpec, udp_spec
from pierce.proxies.xtcp import XtcpProxyConfig, XtcpProxyServer, XtcpSpec, serve_xtcp_work, xtcp_spec
from pierce.proxies.xudp import XudpProxyConfig, XudpProxyServer, XudpSpec, serve_xudp_work, xudp_spec
from pierce.relay import End
from pierce.vhost.front import VhostFront

#: ``[[proxies]]`` tables, tagged by ``type``.
ProxyConfig: TypeAlias = (
    TcpProxyConfig
    | UdpProxyConfig
    | HttpProxyConfig
    | HttpsProxyConfig
    | StcpProxyConfig
    | SudpProxyConfig
    | TcpMuxProxyConfig
    | XtcpProxyConfig
    | XudpProxyConfig
)
#: What a client sends the server to open a proxy (inside `NewProxy`), tagged by ``type``.
ProxySpecs: TypeAlias = (
    TcpSpec | UdpSpec | HttpSpec | HttpsSpec | StcpSpec | SudpSpec | TcpMuxSpec | XtcpSpec | XudpSpec
)

#: Listeners the server shares between proxies, started when their config keys are set.
FRONTS: tuple[FrontType, ...] = (VhostFront, TcpMuxFront)

_spec_decoder = msgspec.msgpack.Decoder(ProxySpecs)
_spec_encoder = msgspec.msgpack.Encoder()


def encode_spec(spec: ProxySpecs) -> msgspec.Raw:
    return msgspec.Raw(_spec_encoder.encode(spec))


def decode_spec(raw: msgspec.Raw) -> ProxySpecs:
    """The spec inside a `NewProxy`; ProtocolError when it is no spec of a known kind."""
    try:
        return _spec_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"invalid proxy spec: {exc}") from exc


# -- client side ------------------------------------------------------------------------------------


async def client_spec(config: ProxyConfig, udp: UdpProxies) -> ProxySpecs:
    """The spec to send for ``config``, after the client-side set-up its kind needs, with the proxy's
    ``allow_ips`` / ``deny_ips`` for the server to check."""
    spec = await _kind_spec(config, udp)
    allow, deny = getattr(config, "allow_ips", []), getattr(config, "deny_ips", [])
    return msgspec.structs.replace(spec, allow_ips=allow, deny_ips=deny) if allow or deny else spec


async def _kind_spec(config: ProxyConfig, udp: UdpProxies) -> ProxySpecs:
    match config:
        case TcpProxyConfig():
            return tcp_spec(config)
        case UdpProxyConfig():
            await udp.register(config)
            return udp_spec(config)
        case HttpProxyConfig():
            return http_spec(config)
        case HttpsProxyConfig():
            return https_spec(config)
        case StcpProxyConfig():
            return stcp_spec(config)
        case XudpProxyConfig():  # before sudp, which it extends
            return xudp_spec(config)
        case SudpProxyConfig():
            return sudp_spec(config)
        case TcpMuxProxyConfig():
            return tcpmux_spec(config)
        case XtcpProxyConfig():
            return xtcp_spec(config)
        case _:
            assert_never(config)


def work_handler(
    config: ProxyConfig,
    start: StartWork,
    tunnel: End,
    tls_cache: dict[tuple[str, str], ssl.SSLContext],
    recorder: ConnectionRecorder | None = None,
) -> Coroutine[Any, Any, None] | None:
    """What serves a started work connection of ``config`` (None: its kind takes no work connections).

    ``recorder``: the request inspector's for this connection (http, and https with https2http).
    """
    match config:
        case TcpProxyConfig():
            return serve_tcp_proxy_work(config, start, tunnel)
        case UdpProxyConfig():
            return None  # datagrams travel on the control channel
        case HttpProxyConfig():
            return serve_http_work(config, start, tunnel, recorder)
        case HttpsProxyConfig():
            return serve_https_work(config, start, tunnel, tls_cache, recorder)
        case StcpProxyConfig():
            return serve_stcp_work(config, start, tunnel)
        case XudpProxyConfig():  # before sudp, which it extends
            return serve_xudp_work(config, start, tunnel)
        case SudpProxyConfig():
            return serve_sudp_work(config, start, tunnel)
        case TcpMuxProxyConfig():
            return serve_tcpmux_work(config, start, tunnel)
        case XtcpProxyConfig():
            return serve_xtcp_work(config, start, tunnel)
        case _:
            assert_never(config)


# -- server side ------------------------------------------------------------------------------------


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
