"""Secret TCP proxies (stcp): a TCP service with no public port, for visitors that know its secret.

The owner registers it; a visitor (``pierce visit`` or ``[[visitors]] type = "stcp"``) logs in on the
server's control port and proves it knows the secret; the server asks the owner and then bridges the
visitor's connection to a work connection (`pierce.proxies.secret`). Client side: an accepted visitor's
stream goes to the local service like any TCP stream (`pierce.proxies.tcp.serve_tcp_work`).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, ClassVar

from pierce.addr import HostPort
from pierce.protocol import SecretKind, StartWork
from pierce.proxies.secret import SecretProxyConfig, SecretSpec
from pierce.proxies.tcp import serve_tcp_work
from pierce.relay import End


class StcpProxyConfig(SecretProxyConfig, tag="stcp", tag_field="type"):
    """``[[proxies]] type = "stcp"``: a secret TCP service. No public port: visitors that know
    ``secret_key`` reach it through the server (``pierce visit`` or ``[[visitors]]``)."""

    secret_kind: ClassVar[SecretKind] = SecretKind.STCP


class StcpSpec(SecretSpec, frozen=True, kw_only=True, tag="stcp"):
    """Register a secret TCP proxy."""


def stcp_spec(config: StcpProxyConfig) -> StcpSpec:
    return StcpSpec()


def serve_stcp_work(config: StcpProxyConfig, start: StartWork, tunnel: End) -> Coroutine[Any, Any, None]:
    """`pierce.proxies.tcp.serve_tcp_work` for one visitor (its coroutine: no frame of this one is held)."""
    local = HostPort(config.local_ip, config.local_port)
    return serve_tcp_work(config.name, local, start, tunnel, bandwidth_limit=config.bandwidth_limit)
