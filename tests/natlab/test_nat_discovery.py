"""``pierce nat --json`` behind real Linux NATs, against a ``pierce server`` with two addresses.

    l1 192.168.1.10 ─┐                                  ┌─ 203.0.113.10 + .11 server (pierce server, STUN)
    l2 192.168.1.20 ─┴─ seg lan ─ 192.168.1.1  nat  203.0.113.1 ─ seg wan ─┤
                                                                          └─ 203.0.113.20 open (no NAT)

The CGNAT chain puts a carrier segment between two routers:

    l1 ─ lan ─ 192.168.1.1  home  100.64.0.2 ─ seg carrier ─ 100.64.0.1  cgn  203.0.113.1 ─ wan ─ server

Every test asserts the whole JSON report except the ports the NAT chose and the prose of "why".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from support.tunnel import TOKEN, write_toml

from pierce.p2p import keepalive

from .lab import Host, Lab, NatMode, NatRouter, Segment

pytestmark = pytest.mark.natlab

SERVER_IP, SERVER_ALT_IP, OPEN_IP, WAN_IP = "203.0.113.10", "203.0.113.11", "203.0.113.20", "203.0.113.1"
LAN_GW, L1_IP = "192.168.1.1", "192.168.1.10"
CGN_INSIDE_IP, HOME_WAN_IP = "100.64.0.1", "100.64.0.2"
STUN_PORT = 3478
#: Seconds each test waits for an answer that may never come (filtering, hairpinning).
TIMEOUT = "1"
EIM = EIF = "endpoint-independent"
APDM = APDF = "address-and-port-dependent"


def start_server(lab: Lab, wan: Segment, tmp_path: Path) -> Host:
    """The server host with its second address, running ``pierce server`` with STUN on both."""
    server = lab.host("server")
    lab.attach(server, wan, SERVER_IP)
    server.run("ip", "addr", "add", f"{SERVER_ALT_IP}/24", "dev", server.iface(wan))
    conf = write_toml(
        tmp_path / "server.toml",
        {
            "bind_addr": SERVER_IP,
            "bind_port": 7000,
            "token": TOKEN,
            "stun_port": STUN_PORT,
            "stun_alt_addr": SERVER_ALT_IP,
            "stun_allow_response_port": True,  # for the mapping lifetime test
        },
    )
    env = {**os.environ, "PIERCE_STATE_DIR": str(tmp_path / "state")}
    proc = server.python("-m", "pierce", "--json-logs", "server", "-c", conf, env=env, label="server:pierce")
    listening = proc.expect_json("stderr", event="stun.listening")
    assert listening["addresses"] == [
        f"{ip}:{port}" for ip in (SERVER_IP, SERVER_ALT_IP) for port in (STUN_PORT, STUN_PORT + 1)
    ]
    return server


def nat_router_lab(lab: Lab, tmp_path: Path, mode: NatMode, hairpin: bool = False) -> tuple[NatRouter, Host]:
    wan = lab.segment("wan", "203.0.113.0/24")
    lan = lab.segment("lan", "192.168.1.0/24")
    start_server(lab, wan, tmp_path)
    router = lab.nat_router("nat", wan=(wan, WAN_IP), lan=(lan, LAN_GW), mode=mode, hairpin=hairpin)
    l1 = lab.host("l1")
    lab.attach(l1, lan, L1_IP)
    lab.route(l1, "default", via=LAN_GW)
    return router, l1


def pierce_nat(host: Host, *args: str) -> dict[str, Any]:
    proc = host.run(
        sys.executable, "-m", "pierce", "nat", "--server", f"{SERVER_IP}:{STUN_PORT}", "--json",
        "--timeout", TIMEOUT, *args, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert isinstance(report, dict)
    return report


def public_port(report: dict[str, Any], ip: str) -> int:
    host, _, port = str(report["public_address"]).rpartition(":")
    assert host == ip, report
    return int(port)


def expected(report: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The fields every report has, with ``why`` and the NAT's port choices taken from ``report``."""
    base = {
        "public_address": report["public_address"],
        "local_address": report["local_address"],
        "behind_nat": True,
        "cgnat": False,
        "mapping": EIM,
        "filtering": APDF,
        "hairpinning": False,
        "mapping_lifetime_s": None,
        "p2p": "direct likely",
        "why": report["why"],
        "server": f"{SERVER_IP}:{STUN_PORT}",
        "hops": [LAN_GW],
        "port_mapping": report["port_mapping"],
    }
    return base | fields


def local_port(report: dict[str, Any]) -> int:
    host, _, port = str(report["local_address"]).rpartition(":")
    assert host == L1_IP, report
    return int(port)


def test_no_nat(lab: Lab, tmp_path: Path) -> None:
    wan = lab.segment("wan", "203.0.113.0/24")
    start_server(lab, wan, tmp_path)
    host = lab.host("open")
    lab.attach(host, wan, OPEN_IP)
    report = pierce_nat(host)
    assert report["public_address"] == report["local_address"]
    assert report["public_address"].startswith(f"{OPEN_IP}:")
    assert report == expected(report, behind_nat=False, filtering=EIF, hairpinning=None, hops=None)
    assert "no NAT" in report["why"]


def test_masquerade(lab: Lab, tmp_path: Path) -> None:
    """Linux MASQUERADE keeps the port (endpoint-independent mapping) and lets in only replies."""
    _, l1 = nat_router_lab(lab, tmp_path, "masquerade")
    report = pierce_nat(l1)
    assert public_port(report, WAN_IP) == local_port(report)
    assert report == expected(report)
    assert "does not hairpin" in report["why"]


def test_random_fully_is_address_and_port_dependent(lab: Lab, tmp_path: Path) -> None:
    """A new random port per destination: symmetric mapping, nothing predictable, so only the relay."""
    _, l1 = nat_router_lab(lab, tmp_path, "random-fully")
    report = pierce_nat(l1)
    public_port(report, WAN_IP)
    assert report == expected(report, mapping=APDM, hairpinning=None, p2p="relay only")
    assert "unpredictable" in report["why"]


@pytest.mark.parametrize("hairpin", [True, False])
def test_full_cone_with_and_without_hairpin(lab: Lab, tmp_path: Path, hairpin: bool) -> None:
    """Full cone: anyone may send to a mapping (endpoint-independent filtering). With the hairpin rules the
    LAN reaches its own public mapping; without them it does not."""
    _, l1 = nat_router_lab(lab, tmp_path, "full-cone", hairpin=hairpin)
    report = pierce_nat(l1)
    assert public_port(report, WAN_IP) == local_port(report)
    assert report == expected(report, filtering=EIF, hairpinning=hairpin)


def test_cgnat_chain(lab: Lab, tmp_path: Path) -> None:
    """Two NATs with 100.64.0.0/10 between them: the trace shows the carrier's router."""
    wan = lab.segment("wan", "203.0.113.0/24")
    carrier = lab.segment("carrier", "100.64.0.0/24")
    lan = lab.segment("lan", "192.168.1.0/24")
    start_server(lab, wan, tmp_path)
    lab.nat_router("cgn", wan=(wan, WAN_IP), lan=(carrier, CGN_INSIDE_IP))
    home = lab.nat_router("home", wan=(carrier, HOME_WAN_IP), lan=(lan, LAN_GW))
    lab.route(home, "default", via=CGN_INSIDE_IP)
    l1 = lab.host("l1")
    lab.attach(l1, lan, L1_IP)
    lab.route(l1, "default", via=LAN_GW)
    report = pierce_nat(l1)
    public_port(report, WAN_IP)
    assert report == expected(report, cgnat=True, hops=[LAN_GW, CGN_INSIDE_IP])
    assert "100.64.0.0/10" in report["why"]


def coturn(server: Host, tmp_path: Path) -> None:
    """coturn's ``turnserver`` as the RFC 5780 STUN server on both server addresses (instead of pierce)."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("turnserver is not installed (Debian: coturn)")
    help_text = server.run(binary, "-h", check=False).stdout
    server.popen(
        binary, "-n", "--stun-only", "--no-cli", "--no-tcp", "--no-tls", "--no-dtls",
        f"--listening-ip={SERVER_IP}", f"--listening-ip={SERVER_ALT_IP}", f"--listening-port={STUN_PORT}",
        f"--pidfile={tmp_path / 'turnserver.pid'}", f"--log-file={tmp_path / 'turnserver.log'}",
        "--simple-log",
        *(["--rfc5780"] if re.search(r"^\s*--rfc5780\b", help_text, re.M) else []),
        label="server:turnserver",
    )  # fmt: skip
    [ready] = server.run_helper("stun_probe.py", f"{SERVER_IP}:{STUN_PORT}")
    assert ready["result"] == "answer", ready


@pytest.mark.parametrize("mode", ["masquerade", "random-fully"])
def test_against_coturn(lab: Lab, tmp_path: Path, mode: NatMode) -> None:
    """The same answers from coturn as from pierce's own responder."""
    wan = lab.segment("wan", "203.0.113.0/24")
    lan = lab.segment("lan", "192.168.1.0/24")
    server = lab.host("server")
    lab.attach(server, wan, SERVER_IP)
    server.run("ip", "addr", "add", f"{SERVER_ALT_IP}/24", "dev", server.iface(wan))
    coturn(server, tmp_path)
    lab.nat_router("nat", wan=(wan, WAN_IP), lan=(lan, LAN_GW), mode=mode)
    l1 = lab.host("l1")
    lab.attach(l1, lan, L1_IP)
    lab.route(l1, "default", via=LAN_GW)
    report = pierce_nat(l1)
    public_port(report, WAN_IP)
    if mode == "masquerade":
        assert report == expected(report)
    else:
        assert report == expected(report, mapping=APDM, hairpinning=None, p2p="relay only")


@pytest.mark.parametrize(
    ("mode", "verdict"),
    [("masquerade", "Endpoint Independent"), ("random-fully", "Address and Port Dependent")],
)
def test_coturn_natdiscovery_against_pierce(lab: Lab, tmp_path: Path, mode: NatMode, verdict: str) -> None:
    """coturn's client reads pierce's fixed OTHER-ADDRESS right: the mapping verdict matches the NAT."""
    binary = shutil.which("turnutils_natdiscovery")
    if binary is None:
        pytest.skip("turnutils_natdiscovery is not installed (Debian: coturn)")
    _, l1 = nat_router_lab(lab, tmp_path, mode)
    out = l1.run(binary, "-m", SERVER_IP, check=False, timeout=30).stdout
    assert f"NAT with {verdict} Mapping!" in out, out


def test_mapping_lifetime(lab: Lab, tmp_path: Path) -> None:
    """The router forgets idle UDP mappings after 2 s: the bisection finds a lower bound just under it."""
    router, l1 = nat_router_lab(lab, tmp_path, "masquerade")
    router.run("sysctl", "-q", "-w", "net.netfilter.nf_conntrack_udp_timeout=2")
    state = tmp_path / "client-state"
    report = pierce_nat(l1, "--lifetime", "--lifetime-max", "3", "--state-dir", str(state))
    lifetime = report["mapping_lifetime_s"]
    assert isinstance(lifetime, float) and 1.5 <= lifetime <= 2.0, report
    assert report == expected(report, mapping_lifetime_s=lifetime)
    # Recorded for the client's direct paths behind this public address (their keepalive).
    public_ip = str(report["public_address"]).rpartition(":")[0]
    assert keepalive.load(state) == {public_ip: lifetime}
