"""The harness does what it says: real NAT behaviour, checked with real traffic through the namespaces."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from .lab import Host, Lab, NatMode, NatRouter, lab_namespaces, sweep_stale

pytestmark = pytest.mark.natlab

WAN_IP, SERVER_IP, PEER_IP = "203.0.113.1", "203.0.113.10", "203.0.113.20"
LAN_GW, L1_IP, L2_IP = "192.168.1.1", "192.168.1.10", "192.168.1.20"


@dataclass
class NatNet:
    """server and peer on the public segment; l1 and l2 on the LAN behind router."""

    router: NatRouter
    server: Host
    peer: Host
    l1: Host
    l2: Host


def build(lab: Lab, mode: NatMode = "masquerade", hairpin: bool = False) -> NatNet:
    wan = lab.segment("wan", "203.0.113.0/24")
    lan = lab.segment("lan", "192.168.1.0/24")
    router = lab.nat_router("nat", wan=(wan, WAN_IP), lan=(lan, LAN_GW), mode=mode, hairpin=hairpin)
    public = {}
    for name, ip in (("server", SERVER_IP), ("peer", PEER_IP)):
        public[name] = lab.host(name)
        lab.attach(public[name], wan, ip)
    private = {}
    for name, ip in (("l1", L1_IP), ("l2", L2_IP)):
        private[name] = lab.host(name)
        lab.attach(private[name], lan, ip)
        lab.route(private[name], "default", via=LAN_GW)
    return NatNet(router, public["server"], public["peer"], private["l1"], private["l2"])


def sha(data: bytes) -> tuple[int, str]:
    """(size, SHA-256 hex) as tcp_client.py reports what it received."""
    return len(data), hashlib.sha256(data).hexdigest()


def udp_send(host: Host, *targets: str, bind: str = "0.0.0.0:0") -> list[dict[str, Any]]:
    return host.run_helper("udp_client.py", *targets, "--bind", bind)


def observed_ports(net: NatNet, mode: NatMode, destinations: int) -> tuple[int, list[tuple[str, int]]]:
    """One LAN socket sends to several UDP echo servers; return its local port and what each server saw."""
    echoes = [net.server.helper("udp_echo.py") for _ in range(destinations)]
    ports = [echo.ready_port() for echo in echoes]
    replies = udp_send(net.l1, *(f"{SERVER_IP}:{port}" for port in ports))
    assert [r["result"] for r in replies] == ["reply"] * destinations, replies
    local_port = int(replies[0]["local"][1])
    seen = [
        (str(ip), int(port)) for echo in echoes for ip, port in [echo.expect_json(event="datagram")["peer"]]
    ]
    return local_port, seen


def test_masquerade_rewrites_source_to_wan_address_tcp(lab: Lab) -> None:
    net = build(lab, "masquerade")
    echo = net.server.helper("tcp_echo.py")
    port = echo.ready_port()
    [result] = net.l1.run_helper("tcp_client.py", f"{SERVER_IP}:{port}", "--hex", b"through the nat".hex())
    assert result["result"] == "ok", result
    assert (result["received"], result["sha256"]) == sha(b"through the nat"), result
    accepted = echo.expect_json(event="accepted")
    assert accepted["peer"][0] == WAN_IP
    assert result["local"][0] == L1_IP


def test_masquerade_rewrites_source_and_keeps_port_udp(lab: Lab) -> None:
    """MASQUERADE: the servers see the router's address, and (no clash) the LAN socket's own port for every
    destination: endpoint-independent mapping in practice."""
    net = build(lab, "masquerade")
    local_port, seen = observed_ports(net, "masquerade", destinations=3)
    assert seen == [(WAN_IP, local_port)] * 3


def test_random_fully_maps_each_destination_to_a_new_port(lab: Lab) -> None:
    """MASQUERADE --random-fully: one LAN socket, four destinations, (almost surely) four external ports.

    A random pick can collide, so only "not all the same" is asserted: with four draws from ~28k ports the
    chance of all four being equal is ~1e-13.
    """
    net = build(lab, "random-fully")
    _, seen = observed_ports(net, "random-fully", destinations=4)
    assert {ip for ip, _ in seen} == {WAN_IP}
    assert len({port for _, port in seen}) > 1, seen


@pytest.mark.parametrize("mode", ["masquerade", "full-cone"])
def test_unsolicited_inbound_udp(lab: Lab, mode: NatMode) -> None:
    """Before the LAN host sends, nothing gets in. After it sent once to the server, only full-cone lets a
    different host (or the same host from another port) in.

    "refused" means the router's own stack answered with ICMP port unreachable: the packet was not
    forwarded. Each probe uses a fresh source port: an unreplied conntrack entry from an earlier probe
    would otherwise keep matching (for ~30 s) and bypass the NAT rules set up later.
    """
    net = build(lab, mode)
    server_echo = net.server.helper("udp_echo.py")
    server_port = server_echo.ready_port()
    lan_port = 40000
    mapped = f"{WAN_IP}:{lan_port}"

    [before] = udp_send(net.peer, mapped, bind="0.0.0.0:5001")
    assert before["result"] == "refused", before

    lan_echo = net.l1.helper("udp_echo.py", "--port", lan_port, "--hello", f"{SERVER_IP}:{server_port}")
    assert lan_echo.ready_port() == lan_port
    assert server_echo.expect_json(event="datagram")["peer"] == [WAN_IP, lan_port]

    [from_peer] = udp_send(net.peer, mapped, bind="0.0.0.0:5002")
    [from_other_port] = udp_send(net.server, mapped, bind="0.0.0.0:5003")
    if mode == "masquerade":
        assert from_peer["result"] == "refused", from_peer
        assert from_other_port["result"] == "refused", from_other_port
        assert [doc["event"] for doc in lan_echo.json_lines()] == ["hello"]
    else:
        assert from_peer["result"] == "reply" and from_peer["from"] == [WAN_IP, lan_port], from_peer
        assert from_other_port["result"] == "reply", from_other_port
        assert lan_echo.expect_json(event="datagram")["peer"] == [PEER_IP, 5002]
        assert lan_echo.expect_json(event="datagram")["peer"] == [SERVER_IP, 5003]


def test_full_cone_learns_the_external_port(lab: Lab) -> None:
    """Two LAN hosts use the same local port: the second is mapped to another external port, and inbound
    traffic to each external port reaches the right host (the map is keyed by the port after SNAT)."""
    net = build(lab, "full-cone")
    server_echo = net.server.helper("udp_echo.py")
    hello = f"{SERVER_IP}:{server_echo.ready_port()}"
    lan_echoes = []
    for host in (net.l1, net.l2):
        lan_echoes.append(host.helper("udp_echo.py", "--port", 40000, "--hello", hello))
        lan_echoes[-1].ready_port()
    first, second = (server_echo.expect_json(event="datagram")["peer"] for _ in range(2))
    assert first == [WAN_IP, 40000] and second[0] == WAN_IP and second[1] != 40000, (first, second)

    for (_, port), echo in zip((first, second), lan_echoes, strict=True):
        [reply] = udp_send(net.peer, f"{WAN_IP}:{port}")
        assert reply["result"] == "reply", reply
        assert echo.expect_json(event="datagram")["peer"][0] == PEER_IP


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpin_port_forward(lab: Lab, hairpin: bool) -> None:
    """A port forward WAN_IP:8000 -> l2 is reachable from outside; from l1 only with hairpin, and then l2
    sees the router's public address as the source (so its replies return through the router)."""
    net = build(lab, "masquerade", hairpin=hairpin)
    tcp_echo = net.l2.helper("tcp_echo.py", "--port", 7000)
    udp_echo = net.l2.helper("udp_echo.py", "--port", 7001)
    tcp_echo.ready_port(), udp_echo.ready_port()
    net.router.forward("tcp", 8000, L2_IP, 7000)
    net.router.forward("udp", 8001, L2_IP, 7001)

    [outside] = net.peer.run_helper("tcp_client.py", f"{WAN_IP}:8000", "--hex", "00ff")
    assert outside["result"] == "ok" and (outside["received"], outside["sha256"]) == sha(b"\x00\xff"), outside
    assert tcp_echo.expect_json(event="accepted")["peer"][0] == PEER_IP

    [tcp_in] = net.l1.run_helper("tcp_client.py", f"{WAN_IP}:8000", "--hex", "00ff")
    [udp_in] = udp_send(net.l1, f"{WAN_IP}:8001")
    if hairpin:
        assert tcp_in["result"] == "ok" and (tcp_in["received"], tcp_in["sha256"]) == sha(b"\x00\xff"), tcp_in
        assert tcp_echo.expect_json(event="accepted")["peer"][0] == WAN_IP
        assert udp_in["result"] == "reply" and udp_in["from"] == [WAN_IP, 8001], udp_in
        assert udp_echo.expect_json(event="datagram")["peer"][0] == WAN_IP
    else:
        assert tcp_in["result"] == "error" and tcp_in["errno"] == "ECONNREFUSED", tcp_in
        assert udp_in["result"] == "refused", udp_in


def test_hairpin_reaches_full_cone_mapping(lab: Lab) -> None:
    """Two peers behind one full-cone NAT with hairpin: l2 reaches l1 at l1's public mapping."""
    net = build(lab, "full-cone", hairpin=True)
    server_port = net.server.helper("udp_echo.py").ready_port()
    l1_echo = net.l1.helper("udp_echo.py", "--port", 40000, "--hello", f"{SERVER_IP}:{server_port}")
    l1_echo.ready_port()
    [reply] = udp_send(net.l2, f"{WAN_IP}:40000")
    assert reply["result"] == "reply" and reply["from"] == [WAN_IP, 40000], reply
    assert l1_echo.expect_json(event="datagram")["peer"][0] == WAN_IP


def test_segments_without_route_are_unreachable(lab: Lab) -> None:
    """A LAN host without a default route cannot reach the public segment at all."""
    net = build(lab, "masquerade")
    net.l1.run("ip", "route", "del", "default")
    [result] = net.l1.run_helper("tcp_client.py", f"{SERVER_IP}:80", "--timeout", "3")
    assert result["result"] == "error" and result["errno"] == "ENETUNREACH", result


def _assert_gone(lab: Lab, procs: list[subprocess.Popen[str]]) -> None:
    assert lab.namespaces, "the lab should have created namespaces"
    assert not set(lab.namespaces) & set(lab_namespaces())
    assert all(proc.poll() is not None for proc in procs)


def test_cleanup_after_normal_exit(natlab_ready: None) -> None:
    with Lab() as lab:
        build(lab, "full-cone", hairpin=True)
        proc = lab.hosts["server"].helper("udp_echo.py")
        proc.ready_port()
        assert set(lab.namespaces) <= set(lab_namespaces())
    _assert_gone(lab, [proc.popen])


def test_cleanup_after_exception(natlab_ready: None) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        net = build(lab, "masquerade")
        proc = net.l1.helper("tcp_echo.py")
        proc.ready_port()
        raise RuntimeError("boom")
    _assert_gone(lab, [proc.popen])


def test_sweep_removes_namespaces_of_dead_runs(natlab_ready: None) -> None:
    """A lab whose owner died without closing it is swept; a live owner's lab is left alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    orphan = Lab(tag=f"{dead_pid}-dead")
    with Lab() as live:
        try:
            orphan.host("left")
            live.host("kept")
            removed = sweep_stale()
            assert orphan.namespaces[0] in removed
            assert orphan.namespaces[0] not in lab_namespaces()
            assert live.namespaces[0] in lab_namespaces()
        finally:
            orphan.close()
