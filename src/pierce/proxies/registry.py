"""The table of proxy kinds: the config and spec unions, the spec codec, and the client's dispatch.

Adding a kind means a new module in `pierce.proxies` and an arm in each table below (the type checker
insists: every table ends with `assert_never`), plus its `ProxyType` member, its server side in
`pierce.server.proxies` and an arm in `pierce.server.proxies.registry` (and, when it needs a listener the
server shares between proxies, its front in `configured_fronts` there).
"""

from __future__ import annotations

import ssl
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeAlias, assert_never

import msgspec

from pierce.protocol import ProtocolError, StartWork
from pierce.proxies.http import HttpProxyConfig, HttpSpec, http_spec, serve_http_work
from pierce.proxies.https import HttpsProxyConfig, HttpsSpec, https_spec, serve_https_work
from pierce.proxies.stcp import StcpProxyConfig, StcpSpec, serve_stcp_work, stcp_spec
from pierce.proxies.sudp import SudpProxyConfig, SudpSpec, serve_sudp_work, sudp_spec
from pierce.proxies.tcp import TcpProxyConfig, TcpSpec, serve_tcp_proxy_work, tcp_spec
from pierce.proxies.tcpmux import TcpMuxProxyConfig, TcpMuxSpec, serve_tcpmux_work, tcpmux_spec
from pierce.proxies.udp import UdpProxies, UdpProxyConfig, UdpSpec, udp_spec
from pierce.proxies.xtcp import XtcpProxyConfig, XtcpSpec, serve_xtcp_work, xtcp_spec
from pierce.proxies.xudp import XudpProxyConfig, XudpSpec, serve_xudp_work, xudp_spec
from pierce.relay import End

if TYPE_CHECKING:
    from pierce.inspect.record import ConnectionRecorder

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
