"""UDP hole punching through two real Linux MASQUERADE NATs, each behind its own "ISP" router.

The shape of the internet, not a flat lab: A's LAN -> NAT A -> ISP A -> core -> ISP B -> NAT B -> B's LAN.
Both NATs are cone-type for mapping (MASQUERADE keeps the source port) and filter by address and port, and
both are Linux conntrack, which traps naive punching (an early probe from the peer leaves an unreplied
entry that moves our own mapping to another port). The agents' low-TTL opening probes (TTL 2: through our
NAT, dead at our ISP) open each side's mapping first; then the probes cross and both sides lock the path
through the two public addresses, and data crosses it both ways.
"""

from __future__ import annotations

import time

from .lab import A_IP, B_IP, NAT_A_WAN, NAT_B_WAN, Host, Lab, NatMode, NatRouter, Proc, internet

PORT = 40000


def build(lab: Lab, mode_b: NatMode = "masquerade") -> tuple[Host, Host, NatRouter, NatRouter]:
    net = internet(lab, mode_b)
    return net.a, net.b, net.nat_a, net.nat_b


def punch(
    lab: Lab, mode_b: NatMode = "masquerade", extra_a: tuple[str, ...] = (), extra_b: tuple[str, ...] = ()
) -> tuple[Proc, Proc]:
    a, b, _, _ = build(lab, mode_b)
    return attempt(a, b, PORT, extra_a, extra_b)


def attempt(
    a: Host, b: Host, port: int, extra_a: tuple[str, ...], extra_b: tuple[str, ...]
) -> tuple[Proc, Proc]:
    start = time.time() + 1.0  # both processes are up by then; both start probing at that instant
    side_a = a.helper("udp_punch.py", "controlling", A_IP, port, NAT_A_WAN, B_IP, NAT_B_WAN, start, *extra_a)
    side_b = b.helper("udp_punch.py", "controlled", B_IP, port, NAT_B_WAN, A_IP, NAT_A_WAN, start, *extra_b)
    return side_a, side_b


def test_cone_x_cone_through_two_linux_nats_locks_and_carries_data(lab: Lab) -> None:
    side_a, side_b = punch(lab)
    got_a = side_a.expect_json(timeout=20)
    got_b = side_b.expect_json(timeout=20)
    assert got_a["result"] == got_b["result"] == "locked", (got_a, got_b, side_a.dump(), side_b.dump())
    # Each locked the address its peer's packets came from: the other's public address, so the path
    # goes through both NATs, and not through any server.
    assert got_a["peer"] == f"{NAT_B_WAN}:{PORT}" and got_b["peer"] == f"{NAT_A_WAN}:{PORT}", (got_a, got_b)
    assert got_a["received"] == "data from controlled" and got_b["received"] == "data from controlling"
    assert got_a["elapsed"] < 2.0, got_a


def test_cone_x_symmetric_locks_by_port_prediction(lab: Lab) -> None:
    """B's NAT picks a random public port per destination (MASQUERADE --random-fully): B opens 256
    mappings toward A's public address, A probes 1024 random ports of B's public address until one
    hits. One attempt succeeds with about 98 % probability (19 of 20 here); like a client, the test
    tries a second, fresh attempt (new ports) when the first misses."""
    a, b, _, _ = build(lab, "random-fully")
    results = []
    for port in (PORT, PORT + 1):
        side_a, side_b = attempt(
            a,
            b,
            port,
            ("--mapping", "easy:hard", "--budget", "10"),
            ("--mapping", "hard:easy", "--budget", "10"),
        )
        got_a, got_b = side_a.expect_json(timeout=30), side_b.expect_json(timeout=30)
        results.append((got_a, got_b))
        if got_a["result"] == got_b["result"] == "locked":
            break
    assert got_a["result"] == got_b["result"] == "locked", results
    host, _, peer_port = str(got_a["peer"]).rpartition(":")
    assert host == NAT_B_WAN and int(peer_port) != port  # a predicted port of B's NAT, not B's own
    assert got_b["peer"] == f"{NAT_A_WAN}:{port}"
    assert got_a["received"] == "data from controlled" and got_b["received"] == "data from controlling"
