"""P2P UDP proxies (xudp): a secret UDP service whose visitors connect peer to peer where they can.

Configured like sudp, with visitors of ``type = "xudp"`` (or ``pierce visit --p2p --udp``). Without a
direct path (in this version: always) a visitor's datagrams travel through the server as an sudp
visitor's do (`pierce.proxies.sudp`), the visitor logs the path it used (``relay``), and
``fallback = false`` refuses to go through the server.
"""

from __future__ import annotations

from typing import ClassVar

from pierce.protocol import SecretKind, StartWork
from pierce.proxies.base import DirectMode
from pierce.proxies.secret import SecretSpec
from pierce.proxies.sudp import SudpProxyConfig, serve_sudp_work
from pierce.relay import End


class XudpProxyConfig(SudpProxyConfig, tag="xudp", tag_field="type"):
    """``[[proxies]] type = "xudp"``: a secret UDP service for P2P visitors (relayed when not direct)."""

    secret_kind: ClassVar[SecretKind] = SecretKind.XUDP
    #: "auto": the client also asks its router for a port mapping of each direct path's socket and offers
    #: the mapped address to the visitor as one more candidate (`pierce.p2p.owner`).
    direct: DirectMode = DirectMode.OFF


class XudpSpec(SecretSpec, frozen=True, kw_only=True, tag="xudp"):
    """Register a P2P UDP proxy."""


def xudp_spec(config: XudpProxyConfig) -> XudpSpec:
    return XudpSpec()


async def serve_xudp_work(config: XudpProxyConfig, start: StartWork, tunnel: End) -> None:
    await serve_sudp_work(config, start, tunnel)
