"""``pierce map`` as the only way from A to C.

    A 198.51.100.2 ── seg a ── 198.51.100.1  B  203.0.113.1 ── seg c ── 203.0.113.3 C
                                    (ip_forward off, runs pierce map)

C runs an HTTP server, a TCP echo and a UDP echo. A has no route to C, and even with one B does not forward;
every byte A exchanges with C goes through pierce in B, which C sees as 203.0.113.1.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .lab import Host, Lab, Proc

pytestmark = pytest.mark.natlab

A_IP, B_A_IP, B_C_IP, C_IP = "198.51.100.2", "198.51.100.1", "203.0.113.1", "203.0.113.3"
HTTP_PORT, TCP_ECHO_PORT, UDP_ECHO_PORT = 8000, 7000, 7001


@dataclass
class Topology:
    a: Host
    b: Host
    c: Host


@pytest.fixture
def topo(lab: Lab) -> Topology:
    seg_a = lab.segment("a", "198.51.100.0/24")
    seg_c = lab.segment("c", "203.0.113.0/24")
    a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
    lab.attach(a, seg_a, A_IP)
    lab.attach(b, seg_a, B_A_IP)
    lab.attach(b, seg_c, B_C_IP)
    lab.attach(c, seg_c, C_IP)
    return Topology(a, b, c)


def pierce(host: Host, *args: str | Path) -> Proc:
    """``python -m pierce --json-logs ...`` in ``host``; JSON log lines arrive on its stderr."""
    return host.python("-m", "pierce", "--json-logs", *args, label=f"{host.name}:pierce")


def listening(proc: Proc, rule: str | None = None) -> str:
    """Wait for the ``map.listening`` event (of ``rule``); return the bound ``host:port``."""
    fields: dict[str, Any] = {"event": "map.listening"} | ({"rule": rule} if rule else {})
    return str(proc.expect_json("stderr", **fields)["listen"])


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def ip_in_addr_errors(host: Host) -> int:
    """``Ip: InAddrErrors`` of the host: counts packets dropped because the host does not forward."""
    header, values = (line.split() for line in host.run("cat", "/proc/net/snmp").stdout.splitlines()[:2])
    return int(values[header.index("InAddrErrors")])


def test_a_cannot_reach_c_without_pierce(topo: Topology, lab: Lab) -> None:
    assert topo.b.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    [no_route] = topo.a.run_helper("tcp_client.py", f"{C_IP}:{TCP_ECHO_PORT}")
    assert no_route["result"] == "error" and no_route["errno"] == "ENETUNREACH", no_route

    # Even with a route via B the SYN dies in B: forwarding is off, and Linux then drops without ICMP.
    lab.route(topo.a, "203.0.113.0/24", via=B_A_IP)
    dropped_before = ip_in_addr_errors(topo.b)
    [via_b] = topo.a.run_helper("tcp_client.py", f"{C_IP}:{TCP_ECHO_PORT}", "--timeout", "1")
    assert via_b["result"] == "error" and via_b["stage"] == "connect", via_b
    assert ip_in_addr_errors(topo.b) > dropped_before


def test_http_file_through_map(topo: Topology, tmp_path: Path) -> None:
    content = random_file(tmp_path / "blob.bin", 3 * 1024 * 1024 + 17)
    http = topo.c.python("-m", "http.server", HTTP_PORT, "--bind", C_IP, "--directory", tmp_path)
    http.expect(rf"Serving HTTP on {C_IP} port {HTTP_PORT}")
    mapper = pierce(topo.b, "map", f"{B_A_IP}:8080", f"{C_IP}:{HTTP_PORT}")
    assert listening(mapper) == f"{B_A_IP}:8080"

    fetch = (
        "import hashlib, sys, urllib.request\n"
        "body = urllib.request.urlopen(sys.argv[1], timeout=10).read()\n"
        "print(len(body), hashlib.sha256(body).hexdigest())\n"
    )
    out = topo.a.run(sys.executable, "-c", fetch, f"http://{B_A_IP}:8080/blob.bin").stdout.split()
    assert out == [str(len(content)), hashlib.sha256(content).hexdigest()]

    opened = mapper.expect_json("stderr", event="tcp.open")
    assert opened["client"].startswith(f"{A_IP}:") and opened["target"] == f"{C_IP}:{HTTP_PORT}"
    closed = mapper.expect_json("stderr", event="tcp.close")
    assert closed["client"] == opened["client"] and closed["down_bytes"] > len(content)
    assert http.expect(r'"GET /blob.bin HTTP/1.1" 200', "stderr").startswith(B_C_IP)


MAP_TOML = f"""
[[rules]]
name = "echo"
listen = "{B_A_IP}:0"
target = "{C_IP}:{TCP_ECHO_PORT}"
protocol = "tcp"

[[rules]]
name = "guarded"
listen = "{B_A_IP}:9000"
target = "{C_IP}:{TCP_ECHO_PORT}"
protocol = "tcp"
allow = ["198.51.100.99/32"]
"""


def test_tcp_echo_half_close_and_allow_list(topo: Topology, tmp_path: Path) -> None:
    """Random bytes through a config-file rule (port 0, read back from the log) come back byte for byte
    after the client half-closes; a rule whose allow-list excludes A closes A's connection unanswered."""
    echo = topo.c.helper("tcp_echo.py", "--port", TCP_ECHO_PORT)
    echo.ready_port()
    config = tmp_path / "map.toml"
    config.write_text(MAP_TOML)
    mapper = pierce(topo.b, "map", "-c", config)
    echo_addr = listening(mapper, "echo")
    assert echo_addr.startswith(f"{B_A_IP}:") and not echo_addr.endswith(":0")
    assert listening(mapper, "guarded") == f"{B_A_IP}:9000"

    sent_path, received_path = tmp_path / "sent.bin", tmp_path / "received.bin"
    sent = random_file(sent_path, 2 * 1024 * 1024 + 3)
    [result] = topo.a.run_helper("tcp_client.py", echo_addr, "--send", sent_path, "--recv", received_path)
    assert result["result"] == "ok" and result["send_error"] is None, result
    assert received_path.read_bytes() == sent
    assert echo.expect_json(event="accepted")["peer"][0] == B_C_IP
    closed_echo = echo.expect_json(event="closed")
    assert (closed_echo["bytes"], closed_echo["sha256"]) == (len(sent), hashlib.sha256(sent).hexdigest())
    closed = mapper.expect_json("stderr", event="tcp.close", rule="echo")
    assert (closed["up_bytes"], closed["down_bytes"]) == (len(sent), len(sent))

    [denied] = topo.a.run_helper("tcp_client.py", f"{B_A_IP}:9000", "--hex", b"let me in".hex())
    # Closed without data: a clean EOF, or a reset when our bytes were still unread at close().
    assert denied.get("received", 0) == 0, denied
    assert denied["result"] == "ok" or denied["errno"] == "ECONNRESET", denied
    refusal = mapper.expect_json("stderr", event="tcp.denied", rule="guarded")
    assert refusal["client"].startswith(f"{A_IP}:")
    assert [doc["event"] for doc in echo.json_lines()] == ["accepted", "closed"], "C saw the denied client"


def test_udp_echo_through_map(topo: Topology) -> None:
    """Datagrams of several sizes from one A socket: echoed byte for byte, one pierce session, which C sees
    as one B address and port; the session ends after the idle timeout with the right counters."""
    echo = topo.c.helper("udp_echo.py", "--port", UDP_ECHO_PORT)
    echo.ready_port()
    rule = ("--udp", f"{B_A_IP}:5353", f"{C_IP}:{UDP_ECHO_PORT}", "--idle-timeout", "1")
    mapper = pierce(topo.b, "map", *rule)
    assert listening(mapper) == f"{B_A_IP}:5353"

    payloads = [os.urandom(size) for size in (1, 512, 1400)]
    for payload in payloads:
        [reply] = topo.a.run_helper(
            "udp_client.py", f"{B_A_IP}:5353", "--hex", payload.hex(), "--bind", f"{A_IP}:6000"
        )
        assert reply["result"] == "reply" and reply["from"] == [B_A_IP, 5353], reply
        assert bytes.fromhex(reply["hex"]) == payload

    seen = {tuple(echo.expect_json(event="datagram")["peer"]) for _ in payloads}
    assert len(seen) == 1 and next(iter(seen))[0] == B_C_IP, seen
    opened = mapper.expect_json("stderr", event="udp.open")
    assert opened["client"] == f"{A_IP}:6000"
    closed = mapper.expect_json("stderr", event="udp.close")
    total = sum(map(len, payloads))
    assert closed["reason"] == "idle" and closed["client"] == f"{A_IP}:6000", closed
    assert (closed["up_bytes"], closed["down_bytes"], closed["up_packets"]) == (total, total, 3), closed
    assert [doc["event"] for doc in mapper.json_lines("stderr")].count("udp.open") == 1
