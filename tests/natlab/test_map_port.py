"""`pierce map-port` against a real router daemon (miniupnpd in the home-router lab, `portmap_lab`).

pierce asks the router for the mapping itself (PCP, which miniupnpd answers; NAT-PMP when a router only
speaks that), prints the public address, renews the lease at half its lifetime, asks again after the
router restarted (its epoch starts over), and deletes the mapping on SIGTERM: a visitor on the outside
reaches the LAN service only while the mapping lives. A router without a daemon gets a clear "no port
mapping protocol answered", at once (its ICMP port unreachable says so). A router behind another NAT
(double NAT: its own outside address is shared), whose miniupnpd refuses everything, gets "the router has
no public external address", by every method, and `pierce nat` says a mapping there is useless.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from .lab import Host, Proc
from .portmap_lab import HOME_IP, ROOT_DESC_URL, ROUTER_LAN, ROUTER_OUT, VISITOR_IP, HomeNet
from .test_portmap_lab import assert_closed, assert_echoed, visit

pytestmark = pytest.mark.natlab

#: Short enough that a renewal comes within the test, long enough for a busy machine.
LEASE_S = 4


def map_port(host: Host, *args: str | int) -> Proc:
    return host.python(
        "-m", "pierce", "--json-logs", "map-port", *map(str, args), "--json", label=f"{host.name}:map-port"
    )


def mapped(proc: Proc) -> dict[str, Any]:
    """The next mapping `--json` printed."""
    return proc.expect_json("stdout", timeout=15, local_port=7000)


def test_map_port_maps_renews_survives_a_router_restart_and_deletes(home_net: HomeNet) -> None:
    net = home_net
    echo = net.home.helper("tcp_echo.py", "--port", 7000)
    echo.ready_port()

    started = time.monotonic()
    proc = map_port(net.home, "TCP", 7000, "--public-port", 8080, "--lifetime", LEASE_S)
    first = mapped(proc)
    took = time.monotonic() - started  # reported, not asserted: no timing thresholds in tests
    assert first["via"] == "pcp" and first["public_ip"] == ROUTER_OUT and first["public_port"] == 8080, first
    assert first["reachable_from_internet"] is True and first["lifetime"] == LEASE_S, first
    assert net.miniupnpd.forwards() == {("tcp", 8080, HOME_IP, 7000)}, net.describe()
    assert_echoed(visit(net.visitor, 8080), net)

    # Two renewals: the mapping outlives twice its lease, and the way in stays open.
    proc.expect_json("stderr", timeout=15, event="portmap.renewed")
    proc.expect_json("stderr", timeout=15, event="portmap.renewed")
    assert net.miniupnpd.forwards() == {("tcp", 8080, HOME_IP, 7000)}, net.describe()
    assert_echoed(visit(net.visitor, 8080), net)

    # A router restart forgets the mapping; the next renewal sees the epoch start over and maps again.
    net.miniupnpd.restart()
    assert net.miniupnpd.forwards() == set(), net.describe()
    again = proc.expect_json("stderr", timeout=15, event="portmap.restarted")
    assert again["external"] == f"{ROUTER_OUT}:8080", again
    assert net.miniupnpd.forwards() == {("tcp", 8080, HOME_IP, 7000)}, net.describe()
    assert_echoed(visit(net.visitor, 8080), net)

    assert proc.stop() == 0, proc.dump()
    assert any(d.get("event") == "portmap.deleted" for d in proc.json_lines("stderr")), proc.dump()
    assert net.miniupnpd.forwards() == set(), net.describe()
    assert_closed(visit(net.visitor, 8080), net)
    print(f"time to a usable mapping: {took * 1000:.0f} ms (including the interpreter's start)")


def test_map_port_says_when_no_router_answers(home_net_no_daemon: HomeNet) -> None:
    net = home_net_no_daemon
    done = net.home.run(sys.executable, "-m", "pierce", "map-port", "TCP", "7000", check=False, timeout=20)
    assert done.returncode == 1, done
    assert "no port mapping protocol answered" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "method", [(), ("--method", "nat-pmp"), ("--method", "upnp", "--upnp-url", ROOT_DESC_URL)]
)
def test_map_port_says_when_the_router_has_no_public_address(
    home_net_double_nat: HomeNet, method: tuple[str, ...]
) -> None:
    net = home_net_double_nat
    done = net.home.run(
        sys.executable, "-m", "pierce", "map-port", "TCP", "7000", *method, check=False, timeout=20
    )
    assert done.returncode == 1, done
    assert "the router" in done.stderr and "has no public external address" in done.stderr, done.stderr
    assert "another NAT sits beyond it" in done.stderr, done.stderr
    assert net.miniupnpd.forwards() == set(), net.describe()


def pierce_nat(host: Host) -> dict[str, Any]:
    """``pierce nat --json`` with no STUN server answering (the visitor's address has none): the report
    still says what the router answered of port mapping."""
    done = host.run(
        sys.executable, "-m", "pierce", "nat", "--server", f"{VISITOR_IP}:3478", "--json", "--timeout", "0.3",
        check=False, timeout=30,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert isinstance(report, dict), done
    return report


def test_nat_reports_the_routers_port_mapping(home_net: HomeNet) -> None:
    mapping = pierce_nat(home_net.home)["port_mapping"]
    assert mapping["gateway"] == ROUTER_LAN and mapping["protocols"] == ["pcp", "nat-pmp", "upnp"], mapping
    assert mapping["external_address"] == ROUTER_OUT and mapping["mapping_useful"] is True, mapping


def test_nat_reports_a_router_that_speaks_upnp_only(home_net_upnp_only: HomeNet) -> None:
    mapping = pierce_nat(home_net_upnp_only.home)["port_mapping"]
    assert mapping["gateway"] == ROUTER_LAN and mapping["protocols"] == ["upnp"], mapping
    assert mapping["external_address"] == ROUTER_OUT and mapping["mapping_useful"] is True, mapping


def test_nat_says_when_the_router_answers_no_port_mapping(home_net_no_daemon: HomeNet) -> None:
    mapping = pierce_nat(home_net_no_daemon.home)["port_mapping"]
    assert mapping["protocols"] == [] and mapping["mapping_useful"] is None, mapping
    assert "No port mapping protocol (PCP, NAT-PMP, UPnP-IGD) answered" in mapping["why"], mapping


def test_nat_says_a_mapping_is_useless_behind_another_nat(home_net_double_nat: HomeNet) -> None:
    mapping = pierce_nat(home_net_double_nat.home)["port_mapping"]
    assert mapping["protocols"] == ["pcp", "nat-pmp", "upnp"] and mapping["external_address"] is None, mapping
    assert mapping["mapping_useful"] is False, mapping
    assert "has no public external address" in mapping["why"] and "network failure" in mapping["why"], mapping
