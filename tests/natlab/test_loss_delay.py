"""Loss and delay on the owner's NAT router: every path to a service keeps its bytes intact.

`faults_lab` builds the owner (a TCP echo behind a cone NAT, a client with tcp, stcp and xtcp proxies for
it) and a visitor behind another NAT, once for the module, with four paths up: the server's public port
(``tunnel``), an stcp visitor (``stcp``), and an xtcp visitor's direct TCP connection (``direct-tcp``) and
QUIC stream (``quic``). Each test then sets one impairment on the owner's router (which all four paths
cross once each way) and sends 256 KiB of random bytes through each path to the echo and back (sent,
half-closed, read to EOF): they come back whole, byte for byte. The time each took is printed, never
asserted (``bench/bench_faults.py`` reports throughput against OpenSSH's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .faults_lab import PATHS, FaultsLab
from .lab import Lab, missing_prerequisites

pytestmark = pytest.mark.natlab

SIZE = 256 * 1024
#: A bound on one transfer (its socket timeout; the helper gets 30 s more): generous even at 20 % loss.
TRANSFER_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultsLab]:
    reason = missing_prerequisites()
    if reason is not None:
        pytest.skip(reason)
    with Lab() as lab:
        yield FaultsLab(lab, tmp_path_factory.mktemp("faults"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("loss", "delay_ms"),
    [(0.01, 0), (0.05, 0), (0.20, 0), (0.0, 50), (0.05, 50)],
    ids=["loss-1", "loss-5", "loss-20", "delay-50ms", "loss-5-delay-50ms"],
)
def test_paths_keep_bytes_intact(faults: FaultsLab, tmp_path: Path, loss: float, delay_ms: float) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(SIZE))
    faults.impair(loss=loss, delay_ms=delay_ms)
    try:
        for path in PATHS:
            result = faults.transfer(path, payload, TRANSFER_TIMEOUT_S)
            print(f"loss {loss:.0%} delay {delay_ms} ms {path}: {result}")
            assert result["verified"], (path, result)
            if path in ("direct-tcp", "quic"):  # the direct paths stayed direct through the impairment
                assert str(result["conn_path"]).startswith("direct"), (path, result)
    finally:
        faults.clear()
