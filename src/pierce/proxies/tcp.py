"""TCP proxies: a public port on the server whose connections reach a local TCP service of the client.

Server side (`pierce.server.proxies.tcp`): `TcpProxyServer` accepts visitors on its port and bridges each
one to a work connection of the owning client (`pierce.server.proxies.bridge`); the members of a group
(`TcpGroup`) share one port and take turns. Client side, here: `serve_tcp_work` connects the local service
for a started work connection and relays; every stream kind (http, https, stcp, tcpmux) uses it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from pierce.addr import HostPort, format_sockaddr
from pierce.bandwidth import limits_for, parse_rate
from pierce.dial import TargetUnreachable, connect_tcp
from pierce.logs import event, log_conn_closed
from pierce.protocol import StartWork
from pierce.protocol.messages import Port
from pierce.proxies.base import (
    DirectMode,
    GroupedProxyConfig,
    GroupedSpec,
    ProxyProtocolVersion,
    check_proxy,
    masked_repr,
)
from pierce.relay import End, SocketEnd, relay
from pierce.transport import TlsEnd

if TYPE_CHECKING:
    from pierce.inspect.record import ConnectionRecorder

log = logging.getLogger("pierce.proxy")

#: How long the client waits for its local service to accept.
LOCAL_CONNECT_TIMEOUT = 10.0


class TcpProxyConfig(GroupedProxyConfig, kw_only=True, tag="tcp", tag_field="type"):
    """``[[proxies]] type = "tcp"``: a public TCP port on the server -> a local TCP service."""

    name: str
    local_ip: str = "127.0.0.1"
    local_port: int
    #: 0 = the server picks a free allowed port (logged by the client).
    remote_port: int = 0
    #: Send a PROXY protocol header with the visitor's address to the local service.
    proxy_protocol_version: ProxyProtocolVersion | None = None
    #: "auto": also reachable directly through a port mapping on the client's router, when it has one.
    direct: DirectMode = DirectMode.OFF

    def __post_init__(self) -> None:
        check_proxy(self.name, self.local_port, self.remote_port)
        super().__post_init__()

    def __repr__(self) -> str:
        return masked_repr(self)


class TcpSpec(GroupedSpec, frozen=True, kw_only=True, tag="tcp"):
    """Listen on a TCP port and hand its connections to this client."""

    #: 0 lets the server pick a free port from its allowed range (in a group: the group's port).
    remote_port: Port


def tcp_spec(config: TcpProxyConfig) -> TcpSpec:
    return TcpSpec(remote_port=config.remote_port, group=config.group, group_key=config.group_key)


# -- client side ------------------------------------------------------------------------------------


def proxy_protocol_header(version: ProxyProtocolVersion | None, start: StartWork) -> bytes:
    """The PROXY protocol header telling the local service who the visitor is (empty when off)."""
    if version is None:
        return b""
    from pierce.proxy_protocol import build_v1, build_v2  # loads with the first proxy that sends one

    source = (start.visitor_host, start.visitor_port)
    destination = (start.server_host or "0.0.0.0", start.server_port)
    build = build_v1 if version is ProxyProtocolVersion.V1 else build_v2
    return build(source, destination)


async def serve_tcp_work(
    name: str,
    local: HostPort,
    start: StartWork,
    tunnel: End,
    *,
    header: bytes = b"",
    tls: ssl.SSLContext | None = None,
    bandwidth_limit: str = "",
    recorder: ConnectionRecorder | None = None,
) -> None:
    """Client side: connect the local service for one visitor and relay it with the tunnel end.

    ``recorder`` (the request inspector's, http proxies only) sees the bytes both ways as they pass.

    ``bandwidth_limit`` (the proxy's) throttles both directions, shared by the proxy's connections.

    ``header`` (a PROXY protocol header) goes to the local service before the visitor's bytes. With
    ``tls`` the visitor's TLS ends here (the https2http plugin) and the local service gets plain bytes.
    """
    visitor = format_sockaddr((start.visitor_host, start.visitor_port))
    if tls is not None:
        tls_end = TlsEnd(tunnel, tls, server_side=True)
        try:
            await tls_end.handshake(LOCAL_CONNECT_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            tunnel.close()
            event(
                log,
                logging.INFO,
                "proxy.tls_failed",
                f"{name}: visitor {visitor}: TLS handshake failed: {exc or type(exc).__name__}",
                proxy=name,
                visitor=visitor,
                error=str(exc) or type(exc).__name__,
            )
            return
        tunnel = tls_end
    try:
        local_end = SocketEnd(await connect_tcp(local, LOCAL_CONNECT_TIMEOUT))
        if header:
            try:
                await local_end.write(header)
            except OSError as exc:
                local_end.close()
                raise TargetUnreachable(f"closed before the PROXY protocol header went out: {exc}") from exc
    except TargetUnreachable as exc:
        tunnel.close()
        event(
            log,
            logging.WARNING,
            "proxy.local_failed",
            f"{name}: visitor {visitor}: local service {local} unreachable: {exc}",
            proxy=name,
            visitor=visitor,
            target=str(local),
            error=str(exc),
        )
        return
    except asyncio.CancelledError:
        tunnel.close()
        raise
    event(
        log,
        logging.INFO,
        "proxy.conn_open",
        f"{name}: visitor {visitor} -> {local}",
        proxy=name,
        visitor=visitor,
        target=str(local),
    )
    limits = limits_for(name, parse_rate(bandwidth_limit) if bandwidth_limit else 0)
    throttles = (limits.inbound, limits.outbound) if limits is not None else (None, None)
    if recorder is None:
        stats = await relay(tunnel, local_end, throttles=throttles)
    else:
        try:
            stats = await relay(
                tunnel, local_end, throttles=throttles, taps=(recorder.request, recorder.response)
            )
        finally:
            recorder.close()
    log_conn_closed(log, name, visitor, str(local), stats)


def serve_tcp_proxy_work(config: TcpProxyConfig, start: StartWork, tunnel: End) -> Coroutine[Any, Any, None]:
    """`serve_tcp_work` for a tcp proxy (its coroutine, returned: a held connection keeps no frame of this
    function)."""
    local = HostPort(config.local_ip, config.local_port)
    header = proxy_protocol_header(config.proxy_protocol_version, start)
    return serve_tcp_work(
        config.name, local, start, tunnel, header=header, bandwidth_limit=config.bandwidth_limit
    )
