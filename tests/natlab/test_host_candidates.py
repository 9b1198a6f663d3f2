"""Host candidates read off a real multi-homed host: a namespace on two segments (and nothing else)."""

from __future__ import annotations

import json
import sys

from .lab import Lab

GATHER = (
    "import json, socket; from pierce.nat.gather import host_addresses, host_candidates; "
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 0)); "
    "print(json.dumps({'addresses': host_addresses(), "
    "'candidates': [[c.kind.value, c.host, c.port, c.socket_id] for c in host_candidates({7: s})], "
    "'port': s.getsockname()[1]}))"
)


def test_every_interface_of_a_multi_homed_host_is_a_candidate(lab: Lab) -> None:
    lan = lab.segment("lan", "10.66.0.0/24")
    wan = lab.segment("wan", "203.0.113.0/24")
    box = lab.host("box")
    lab.attach(box, lan, "10.66.0.5")
    lab.attach(box, wan, "203.0.113.5")
    got = json.loads(box.run(sys.executable, "-c", GATHER).stdout)
    # Both interfaces, loopback never (no default route here, so only the interfaces themselves count).
    assert sorted(got["addresses"]) == ["10.66.0.5", "203.0.113.5"]
    assert sorted(got["candidates"]) == [
        ["host", "10.66.0.5", got["port"], 7],
        ["host", "203.0.113.5", got["port"], 7],
    ]
