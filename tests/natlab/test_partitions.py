"""The client's uplink cut during a transfer for 5 s and 40 s (and, with ``PIERCE_SLOW=1``, 5 minutes),
by an iptables DROP on its router and by its link going down: the scenario of `partition_lab`. The
client comes back by itself, the transfer is verified or reset on both sides, and no connection is left
over on the server or the client. ``PIERCE_SLOW=1`` adds the 5-minute cuts (6 minutes each).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .lab import Lab
from .partition_lab import Cut, transfer_through_cut

pytestmark = pytest.mark.natlab


@pytest.mark.timeout(400)
@pytest.mark.parametrize("how", ["drop", "link-down"])
@pytest.mark.parametrize("seconds", [5, 40])
def test_cut_uplink_during_a_transfer(lab: Lab, tmp_path: Path, how: Cut, seconds: float) -> None:
    transfer_through_cut(lab, tmp_path, how, seconds)


if os.environ.get("PIERCE_SLOW", "") not in ("", "0"):
    # Collected only on request (not skipped: CI's PIERCE_TEST_NO_SKIP=1 fails a skip): two 5-minute cuts.

    @pytest.mark.timeout(900)
    @pytest.mark.parametrize("how", ["drop", "link-down"])
    def test_cut_uplink_for_five_minutes(lab: Lab, tmp_path: Path, how: Cut) -> None:
        transfer_through_cut(lab, tmp_path, how, 300)
