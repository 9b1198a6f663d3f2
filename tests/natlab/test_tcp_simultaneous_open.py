"""The direct TCP path (`pierce.p2p.tcp_direct`) through real Linux NATs in the internet-shaped lab.

Each side learns its TCP server-reflexive address from pierce's STUN over TCP on the core, both run
`connect_direct` at the same wall-clock instant, and the TCP simultaneous open (a TTL-2 opening SYN first,
then normal SYNs and a listener on the same port) goes through both MASQUERADE NATs; the socket is then
secured and carries 1 MiB each way with half-close. Two hosts behind one NAT connect over their LAN
addresses. A NAT that drops the SYNs coming in from the peer makes `connect_direct` fail by its deadline.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from .lab import A_IP, NAT_A_WAN, NAT_B_WAN, Host, Internet, Lab, Proc, internet

STUN_IP, STUN_PORT = "198.51.100.100", 3478
PORT = 41000
#: connect_direct's deadline, seconds after the start.
BUDGET = 6.0


def start_stun(net: Internet) -> str:
    stun = net.core_host("stun", STUN_IP)
    stun.helper("stun_server.py", STUN_IP, STUN_PORT).ready_port()
    return f"{STUN_IP}:{STUN_PORT}"


def lan_ip(host: Host) -> str:
    """The address of a host with one interface (its host candidate)."""
    [(_, ip)] = host.addrs.values()
    return ip


def attempt(
    visitor: Host, owner: Host, port: int, stun: str, *, plain: bool = False
) -> tuple[dict[str, Any], dict[str, Any], Proc, Proc]:
    """Run both sides: candidates from each, then the plan to both, then their results."""
    extra = ("--plain",) if plain else ()
    sides = {
        role: host.helper("tcp_direct_side.py", role, port, stun, lan_ip(host), *extra, stdin=subprocess.PIPE)
        for role, host in (("visitor", visitor), ("owner", owner))
    }
    offers = {role: proc.expect_json(event="candidates", timeout=20) for role, proc in sides.items()}
    start = time.time() + 0.5
    for role, proc in sides.items():
        other = offers["owner" if role == "visitor" else "visitor"]
        plan = {
            "candidates": other["candidates"],
            "start": start,
            "budget": BUDGET,
            "fingerprint": offers["owner"]["fingerprint"],
        }
        assert proc.popen.stdin is not None
        proc.popen.stdin.write(json.dumps(plan) + "\n")
        proc.popen.stdin.flush()
    v = sides["visitor"].expect_json(event="result", timeout=BUDGET + 30)
    o = sides["owner"].expect_json(event="result", timeout=BUDGET + 30)
    return v, o, sides["visitor"], sides["owner"]


def test_simultaneous_open_through_two_masquerade_nats_ten_times(lab: Lab) -> None:
    net = internet(lab)
    stun = start_stun(net)
    results = []
    for i in range(10):
        v, o, vp, op = attempt(net.a, net.b, PORT + i, stun, plain=i % 2 == 1)
        results.append((v, o))
        assert v["result"] == o["result"] == "connected", (i, v, o, vp.dump(), op.dump())
        # Through both NATs: each side's socket is connected to the other's public address.
        assert v["kind"] == o["kind"] == "tcp", (v, o)
        assert v["peer"] == f"{NAT_B_WAN}:{PORT + i}" and o["peer"] == f"{NAT_A_WAN}:{PORT + i}", (v, o)
        assert v["data_ok"] and o["data_ok"], (v, o)
    times = [(v["connected_s"], o["connected_s"], v["secured_s"]) for v, o in results]
    print("connected_s (visitor, owner), secured_s (visitor):", times)


def test_two_hosts_behind_one_nat_connect_over_the_lan(lab: Lab) -> None:
    net = internet(lab)
    stun = start_stun(net)
    a2 = net.lan_host("a2", "10.1.0.11")
    v, o, vp, op = attempt(net.a, a2, PORT, stun)
    assert v["result"] == o["result"] == "connected", (v, o, vp.dump(), op.dump())
    assert v["kind"] == o["kind"] == "lan", (v, o)
    assert v["peer"] == f"10.1.0.11:{PORT}" and o["peer"] == f"{A_IP}:{PORT}", (v, o)
    assert v["data_ok"] and o["data_ok"], (v, o)


def test_a_nat_dropping_the_peers_syns_fails_within_the_deadline(lab: Lab) -> None:
    """NAT B drops every segment with SYN set (SYN and SYN-ACK) coming from A's public address, so no
    handshake between A and B can complete in either direction; STUN still works for both."""
    net = internet(lab)
    stun = start_stun(net)
    for chain in ("FORWARD", "INPUT"):
        net.nat_b.iptables(
            "-I", chain, "-i", net.nat_b.wan_if, "-s", NAT_A_WAN, "-p", "tcp",
            "--tcp-flags", "SYN", "SYN", "-j", "DROP",
        )  # fmt: skip
    v, o, _, _ = attempt(net.a, net.b, PORT, stun)
    assert v["result"] == o["result"] == "failed", (v, o)
    for side in (v, o):
        assert side["error"].startswith("NoDirectPath: no direct TCP path within"), side
        assert BUDGET - 0.1 <= side["failed_s"] <= BUDGET + 1.0, side  # at its deadline, plus slack
