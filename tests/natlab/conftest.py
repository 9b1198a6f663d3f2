"""Fixtures for the namespace lab: prerequisite check, stale-namespace sweep, and a ``lab`` per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import Lab, missing_prerequisites, sweep_stale


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
