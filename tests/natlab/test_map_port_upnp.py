"""`pierce map-port` over UPnP-IGD against a real router daemon (miniupnpd in the home-router lab).

pierce finds the router by SSDP, maps with AddPortMapping, prints the public address (GetExternalIPAddress),
renews by asking again, notices a router restart at the next renewal (the mapping is gone: UPnP has no
epoch) and maps again, and deletes the mapping on SIGTERM: a visitor on the outside reaches the LAN
service only while the mapping lives. In auto mode, against a router that answers UPnP-IGD only (NAT-PMP
and PCP turned off), PCP and NAT-PMP get nothing and UPnP maps.
"""

from __future__ import annotations

import time

import pytest

from .portmap_lab import HOME_IP, ROUTER_LAN, ROUTER_OUT, HomeNet
from .test_map_port import LEASE_S, map_port, mapped
from .test_portmap_lab import assert_closed, assert_echoed, visit

pytestmark = pytest.mark.natlab


def test_map_port_over_upnp_maps_renews_survives_a_router_restart_and_deletes(home_net: HomeNet) -> None:
    net = home_net
    echo = net.home.helper("tcp_echo.py", "--port", 7000)
    echo.ready_port()

    started = time.monotonic()
    proc = map_port(net.home, "--method", "upnp", "TCP", 7000, "--public-port", 8080, "--lifetime", LEASE_S)
    first = mapped(proc)
    took = time.monotonic() - started  # reported, not asserted: no timing thresholds in tests
    assert first["via"] == "upnp" and first["public_ip"] == ROUTER_OUT and first["public_port"] == 8080, first
    assert first["gateway"] == ROUTER_LAN and first["lifetime"] == LEASE_S, first
    assert first["reachable_from_internet"] is True, first
    found = proc.expect_json("stderr", timeout=15, event="portmap.upnp_found")
    assert found["how"] == "ssdp" and found["service"].startswith("WANIPConnection:"), found
    assert net.miniupnpd.forwards() == {("tcp", 8080, HOME_IP, 7000)}, net.describe()
    assert_echoed(visit(net.visitor, 8080), net)

    # Two renewals (AddPortMapping again): the mapping outlives twice its lease, the way in stays open.
    proc.expect_json("stderr", timeout=15, event="portmap.renewed")
    proc.expect_json("stderr", timeout=15, event="portmap.renewed")
    assert net.miniupnpd.forwards() == {("tcp", 8080, HOME_IP, 7000)}, net.describe()
    assert_echoed(visit(net.visitor, 8080), net)

    # A router restart forgets the mapping; the next renewal finds it missing and maps again.
    net.miniupnpd.restart()
    assert net.miniupnpd.forwards() == set(), net.describe()
    again = proc.expect_json("stderr", timeout=20, event="portmap.restarted")
    assert again["via"] == "upnp" and again["external"] == f"{ROUTER_OUT}:8080", again
    assert net.miniupnpd.forwards() == {("tcp", 8080, HOME_IP, 7000)}, net.describe()
    assert_echoed(visit(net.visitor, 8080), net)

    assert proc.stop() == 0, proc.dump()
    assert any(d.get("event") == "portmap.deleted" for d in proc.json_lines("stderr")), proc.dump()
    assert net.miniupnpd.forwards() == set(), net.describe()
    assert_closed(visit(net.visitor, 8080), net)
    print(f"UPnP-IGD: time to a usable mapping: {took * 1000:.0f} ms (including the interpreter's start)")


def test_map_port_auto_uses_upnp_when_the_router_answers_nothing_else(home_net_upnp_only: HomeNet) -> None:
    net = home_net_upnp_only
    echo = net.home.helper("tcp_echo.py", "--port", 7000)
    echo.ready_port()

    started = time.monotonic()
    proc = map_port(net.home, "TCP", 7000, "--public-port", 8081, "--lifetime", 60)
    first = mapped(proc)
    took = time.monotonic() - started  # reported, not asserted
    assert first["via"] == "upnp" and first["public_ip"] == ROUTER_OUT and first["public_port"] == 8081, first
    assert net.miniupnpd.forwards() == {("tcp", 8081, HOME_IP, 7000)}, net.describe()
    assert_echoed(visit(net.visitor, 8081), net)

    assert proc.stop() == 0, proc.dump()
    assert net.miniupnpd.forwards() == set(), net.describe()
    assert_closed(visit(net.visitor, 8081), net)
    print(
        f"auto (PCP, NAT-PMP unanswered, then UPnP-IGD): time to a usable mapping: {took * 1000:.0f} ms "
        "(including the interpreter's start)"
    )
