"""Fixtures for the namespace lab: prerequisite check, stale-namespace sweep, and a ``lab`` per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import Lab, missing_prerequisites, sweep_stale
from .portmap_lab import HomeNet, home_router, missing_miniupnpd


@pytest.fixture(scope="session")
def natlab_ready() -> None:
    """Skip (with the reason) unless namespaces + iptables + nft work here; sweep stale lab namespaces."""
    reason = missing_prerequisites()
    if reason is not None:
        pytest.skip(reason)
    sweep_stale()


@pytest.fixture
def lab(natlab_ready: None) -> Iterator[Lab]:
    """A fresh :class:`Lab`; torn down after the test whatever happened in it."""
    with Lab() as lab:
        yield lab


@pytest.fixture
def home_net(lab: Lab, tmp_path: Path) -> HomeNet:
    """A home LAN behind a NAPT router running miniupnpd (UPnP-IGD, NAT-PMP, PCP); see portmap_lab."""
    reason = missing_miniupnpd()
    if reason is not None:
        pytest.skip(reason)
    return home_router(lab, tmp_path)


@pytest.fixture
def home_net_upnp_only(lab: Lab, tmp_path: Path) -> HomeNet:
    """The same home network, its miniupnpd answering UPnP-IGD only (NAT-PMP and PCP turned off)."""
    reason = missing_miniupnpd()
    if reason is not None:
        pytest.skip(reason)
    return home_router(lab, tmp_path, natpmp=False)


@pytest.fixture
def home_net_no_daemon(lab: Lab, tmp_path: Path) -> HomeNet:
    """The same home network, its router answering no port mapping protocol (no miniupnpd)."""
    return home_router(lab, tmp_path, daemon=False)


@pytest.fixture
def home_net_double_nat(lab: Lab, tmp_path: Path) -> HomeNet:
    """The same home network behind a second NAT (its router's outside address is shared, RFC 6598):
    miniupnpd runs there and refuses every mapping."""
    reason = missing_miniupnpd()
    if reason is not None:
        pytest.skip(reason)
    return home_router(lab, tmp_path, behind_nat=True)
