"""P2P TCP proxies (xtcp): a secret TCP service whose visitors connect peer to peer where they can.

Configured like stcp (``secret_key``, ``allow_users``), with visitors of ``type = "xtcp"`` (or
``pierce visit --p2p``). A visitor reaches the service through the server exactly as an stcp visitor
does (`pierce.proxies.secret`: the SRP exchange with the owner, then a work connection) whenever no
direct path is up, which in this version is always: the visitor logs the path it used (``relay``) and
``fallback = false`` refuses to go through the server. Client side: an accepted visitor's stream goes to
the local service like any TCP stream.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, ClassVar

from pierce.addr import HostPort
from pierce.protocol import SecretKind, StartWork
from pierce.proxies.base import DirectMode
from pierce.proxies.secret import SecretProxyConfig, SecretSpec
from pierce.proxies.tcp import serve_tcp_work
from pierce.relay import End


class XtcpProxyConfig(SecretProxyConfig, tag="xtcp", tag_field="type"):
    """``[[proxies]] type = "xtcp"``: a secret TCP service for P2P visitors (relayed when not direct)."""

    secret_kind: ClassVar[SecretKind] = SecretKind.XTCP
    #: "auto": the client also asks its router for a port mapping of each direct path's socket and offers
    #: the mapped address to the visitor as one more candidate (`pierce.p2p.owner`).
    direct: DirectMode = DirectMode.OFF


class XtcpSpec(SecretSpec, frozen=True, kw_only=True, tag="xtcp"):
    """Register a P2P TCP proxy."""


def xtcp_spec(config: XtcpProxyConfig) -> XtcpSpec:
    return XtcpSpec()


def serve_xtcp_work(config: XtcpProxyConfig, start: StartWork, tunnel: End) -> Coroutine[Any, Any, None]:
    """`pierce.proxies.tcp.serve_tcp_work` for one visitor (its coroutine: no frame of this one is held)."""
    local = HostPort(config.local_ip, config.local_port)
    return serve_tcp_work(config.name, local, start, tunnel, bandwidth_limit=config.bandwidth_limit)
