"""The home-router lab works: miniupnpd maps ports for Debian's own clients (natpmpc, upnpc), a visitor on
the outside reaches the LAN service through the mapping, and nothing gets in once the mapping is gone.

There is no PCP client in Debian: PCP is checked here only as far as miniupnpd answering an ANNOUNCE;
mapping through PCP is left to pierce's own client.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from .lab import Host, Lab, lab_namespaces
from .portmap_lab import (
    HOME_IP,
    NATPMP_PORT,
    ROOT_DESC_URL,
    ROUTER_LAN,
    ROUTER_OUT,
    VISITOR_IP,
    HomeNet,
    home_router,
)

pytestmark = pytest.mark.natlab

PAYLOAD = b"straight through the router"


def visit(visitor: Host, port: int) -> dict[str, Any]:
    """One TCP exchange from the visitor to the router's outside address."""
    [result] = visitor.run_helper(
        "tcp_client.py", f"{ROUTER_OUT}:{port}", "--hex", PAYLOAD.hex(), "--timeout", "3"
    )
    return result


def assert_echoed(result: dict[str, Any], net: HomeNet) -> None:
    expected = (len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest())
    assert result["result"] == "ok", f"{result}\n{net.describe()}"
    assert (result["received"], result["sha256"]) == expected, result


def assert_closed(result: dict[str, Any], net: HomeNet) -> None:
    """No forward: the SYN ends at the router itself, which has nothing listening on that port."""
    assert result["result"] == "error" and result["errno"] == "ECONNREFUSED", f"{result}\n{net.describe()}"


def natpmpc(net: HomeNet, *args: str | int) -> str:
    """``natpmpc -a PUBLIC PRIVATE PROTO LIFETIME`` maps (lifetime 0 deletes); its stdout."""
    return net.home.run("natpmpc", "-g", ROUTER_LAN, *args).stdout


def test_natpmp_mapping_reaches_the_lan_and_deleting_it_closes_it(home_net: HomeNet) -> None:
    """natpmpc maps public 8080 -> home:7000; the visitor's bytes come back from the LAN service, which sees
    the visitor's own address (no relay, no SNAT); after the delete the rules and the way in are gone."""
    net = home_net
    echo = net.home.helper("tcp_echo.py", "--port", 7000)
    echo.ready_port()
    assert_closed(visit(net.visitor, 8080), net)

    out = natpmpc(net, "-a", 8080, 7000, "tcp", 60)
    assert f"Public IP address : {ROUTER_OUT}" in out and "Mapped public port 8080 protocol TCP" in out, out
    assert net.miniupnpd.forwards() == {("tcp", 8080, HOME_IP, 7000)}, net.describe()
    assert_echoed(visit(net.visitor, 8080), net)
    assert echo.expect_json(event="accepted")["peer"][0] == VISITOR_IP

    natpmpc(net, "-a", 8080, 7000, "tcp", 0)  # lifetime 0: delete (RFC 6886 section 3.4)
    assert net.miniupnpd.forwards() == set(), net.describe()
    assert net.miniupnpd.rules("miniupnpd") == [], net.describe()
    assert_closed(visit(net.visitor, 8080), net)


def test_upnp_igd_is_discovered_and_maps_a_port(home_net: HomeNet) -> None:
    """upnpc finds the router by SSDP, maps public 9091 -> home:9090 over SOAP, and deletes it again."""
    net = home_net
    echo = net.home.helper("tcp_echo.py", "--port", 9090)
    echo.ready_port()

    out = net.home.run("upnpc", "-e", "lab", "-a", HOME_IP, 9090, 9091, "TCP", 60).stdout
    assert f"desc: {ROOT_DESC_URL}" in out and f"ExternalIPAddress = {ROUTER_OUT}" in out, out
    assert f"external {ROUTER_OUT}:9091 TCP is redirected to internal {HOME_IP}:9090" in out, out
    assert net.miniupnpd.forwards() == {("tcp", 9091, HOME_IP, 9090)}, net.describe()
    assert_echoed(visit(net.visitor, 9091), net)
    assert echo.expect_json(event="accepted")["peer"][0] == VISITOR_IP

    net.home.run("upnpc", "-u", ROOT_DESC_URL, "-d", 9091, "TCP")  # -u: no second discovery
    assert net.miniupnpd.forwards() == set(), net.describe()
    assert_closed(visit(net.visitor, 9091), net)


def test_short_natpmp_lease_expires(home_net: HomeNet) -> None:
    """A 2 s lease is removed by miniupnpd itself; then the visitor is refused."""
    net = home_net
    net.home.helper("tcp_echo.py", "--port", 7000).ready_port()
    natpmpc(net, "-a", 8080, 7000, "tcp", 2)
    assert_echoed(visit(net.visitor, 8080), net)
    net.miniupnpd.expect_log("remove port mapping 8080 TCP because it has expired")
    assert net.miniupnpd.forwards() == set(), net.describe()
    assert_closed(visit(net.visitor, 8080), net)


def test_restart_forgets_mappings(home_net: HomeNet) -> None:
    """restart() is a router reboot: the mapping and its rules are gone, and a new request works again."""
    net = home_net
    net.home.helper("tcp_echo.py", "--port", 7000).ready_port()
    natpmpc(net, "-a", 8080, 7000, "tcp", 60)
    net.miniupnpd.restart()
    assert net.miniupnpd.forwards() == set(), net.describe()
    assert_closed(visit(net.visitor, 8080), net)
    natpmpc(net, "-a", 8080, 7000, "tcp", 60)
    assert_echoed(visit(net.visitor, 8080), net)


def pcp_announce(client_ip: str) -> bytes:
    """A PCP ANNOUNCE request (RFC 6887 sections 7.1 and 14.1): version 2, opcode 0, lifetime 0."""
    return bytes([2, 0, 0, 0]) + bytes(4) + ipaddress.IPv6Address(f"::ffff:{client_ip}").packed


def test_pcp_is_answered(home_net: HomeNet) -> None:
    """miniupnpd speaks PCP on 5351: an ANNOUNCE gets a version 2 response with result SUCCESS."""
    target = f"{ROUTER_LAN}:{NATPMP_PORT}"
    [reply] = home_net.home.run_helper("udp_client.py", target, "--hex", pcp_announce(HOME_IP).hex())
    assert reply["result"] == "reply", f"{reply}\n{home_net.describe()}"
    data = bytes.fromhex(reply["hex"])
    assert len(data) == 24 and (data[0], data[1], data[3]) == (2, 0x80, 0), data.hex()  # R bit, SUCCESS


def test_router_without_daemon_translates_but_maps_nothing(home_net_no_daemon: HomeNet) -> None:
    """The plain router: outbound NAPT works (the visitor sees the router's address), but nothing listens on
    the port mapping port, so NAT-PMP/PCP get an ICMP port unreachable."""
    net = home_net_no_daemon
    echo = net.visitor.helper("tcp_echo.py")
    port = echo.ready_port()
    [out] = net.home.run_helper("tcp_client.py", f"{VISITOR_IP}:{port}", "--hex", PAYLOAD.hex())
    assert_echoed(out, net)
    assert echo.expect_json(event="accepted")["peer"][0] == ROUTER_OUT
    [reply] = net.home.run_helper("udp_client.py", f"{ROUTER_LAN}:{NATPMP_PORT}", "--hex", "0000")
    assert reply["result"] == "refused", reply


def test_cleanup_stops_miniupnpd_after_exception(natlab_ready: None, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        net = home_router(lab, tmp_path)
        daemon = net.miniupnpd.proc
        raise RuntimeError("boom")
    assert daemon is not None and daemon.popen.poll() is not None
    assert not set(lab.namespaces) & set(lab_namespaces())
