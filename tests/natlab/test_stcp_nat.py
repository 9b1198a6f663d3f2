"""A secret (stcp) service behind one MASQUERADE NAT, visited from behind another, through the server.

    owner  10.77.0.10 ─ seg lan-a ─ 10.77.0.1  nat-a  203.0.113.1 ─┐
                                    (MASQUERADE)                   ├─ seg wan ─ 203.0.113.10 server
    laptop 10.88.0.10 ─ seg lan-b ─ 10.88.0.1  nat-b  203.0.113.2 ─┘
                                    (MASQUERADE)

The owner runs a TCP echo on its own loopback and a client with an stcp proxy for it; no port of it is
public anywhere. The laptop runs ``pierce visit`` on its loopback; both only dial out, so the server sees
each one as its router's address. 64 MiB go through and come back verified; then a visitor with a wrong
secret is refused at start, and the owner's client logs the attempt with the laptop router's address.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from support.tunnel import TOKEN, write_toml

from .lab import Host, Lab, Proc

pytestmark = pytest.mark.natlab

OWNER_IP, OWNER_ROUTER_LAN, OWNER_ROUTER_WAN = "10.77.0.10", "10.77.0.1", "203.0.113.1"
LAPTOP_IP, LAPTOP_ROUTER_LAN, LAPTOP_ROUTER_WAN = "10.88.0.10", "10.88.0.1", "203.0.113.2"
SERVER_IP = "203.0.113.10"
CONTROL_PORT, ECHO_PORT, VISIT_PORT = 7000, 7007, 9000
SECRET = "lab secret 41"


def run_pierce(host: Host, state: Path, *args: str) -> Proc:
    """``python -m pierce --json-logs ARGS`` in ``host``; its JSON log lines arrive on stderr."""
    env = {**os.environ, "PIERCE_STATE_DIR": str(state)}
    return host.python("-m", "pierce", "--json-logs", *args, env=env, label=f"{host.name}:pierce")


def event(proc: Proc, name: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """The next log event ``name`` of ``proc`` (events before it are consumed)."""
    return proc.expect_json("stderr", timeout=timeout, event=name, **fields)


def visit_args(secret: str) -> list[str]:
    server = f"{SERVER_IP}:{CONTROL_PORT}"
    return ["visit", "--server", server, "--token", TOKEN, "--name", "home-echo", "--secret", secret]


def test_stcp_visitor_across_two_nats(lab: Lab, tmp_path: Path) -> None:
    wan = lab.segment("wan", "203.0.113.0/24")
    server = lab.host("server")
    lab.attach(server, wan, SERVER_IP)
    owner, laptop = lab.host("owner"), lab.host("laptop")
    for host, ip, name, lan_ip, wan_ip, cidr in (
        (owner, OWNER_IP, "a", OWNER_ROUTER_LAN, OWNER_ROUTER_WAN, "10.77.0.0/24"),
        (laptop, LAPTOP_IP, "b", LAPTOP_ROUTER_LAN, LAPTOP_ROUTER_WAN, "10.88.0.0/24"),
    ):
        lan = lab.segment(f"lan-{name}", cidr)
        lab.nat_router(f"nat-{name}", wan=(wan, wan_ip), lan=(lan, lan_ip))
        lab.attach(host, lan, ip)
        lab.route(host, "default", via=lan_ip)

    echo = owner.helper("tcp_echo.py", "--host", "127.0.0.1", "--port", ECHO_PORT)
    echo.ready_port()
    server_conf = write_toml(
        tmp_path / "server.toml",
        {"bind_addr": "0.0.0.0", "bind_port": CONTROL_PORT, "token": TOKEN, "stun_port": 0},
    )
    owner_conf = write_toml(
        tmp_path / "owner.toml",
        {
            "server_addr": SERVER_IP,
            "server_port": CONTROL_PORT,
            "token": TOKEN,
            "client_id": "home",
            "proxies": [
                {"type": "stcp", "name": "home-echo", "local_port": ECHO_PORT, "secret_key": SECRET},
            ],
        },
    )
    pierce_server = run_pierce(server, tmp_path / "server-state", "server", "-c", str(server_conf))
    event(pierce_server, "server.listening")
    pierce_owner = run_pierce(owner, tmp_path / "owner-state", "client", "-c", str(owner_conf))
    assert event(pierce_owner, "proxy.ready", proxy="home-echo")["remote_port"] == 0
    assert event(pierce_server, "client.login")["peer"].startswith(f"{OWNER_ROUTER_WAN}:")

    visitor = run_pierce(
        laptop,
        tmp_path / "laptop-state",
        *visit_args(SECRET),
        "--bind",
        f"127.0.0.1:{VISIT_PORT}",
        "--client-id",
        "laptop",
    )
    event(visitor, "visitor.checked", proxy="home-echo")
    assert event(visitor, "visitor.listening")["port"] == VISIT_PORT

    # Neither side can reach the other directly: the owner's echo is on its loopback, behind its NAT.
    [direct] = laptop.run_helper("tcp_client.py", f"{OWNER_IP}:{ECHO_PORT}", "--timeout", "1")
    assert direct["result"] == "error" and direct["stage"] == "connect", direct

    size = 64 * 1024 * 1024
    sent_path, received_path = tmp_path / "sent.bin", tmp_path / "received.bin"
    sent = os.urandom(size)
    sent_path.write_bytes(sent)
    [result] = laptop.run_helper(
        "tcp_client.py",
        f"127.0.0.1:{VISIT_PORT}",
        "--send",
        sent_path,
        "--recv",
        received_path,
        "--timeout",
        "30",
        timeout=90,
    )
    assert result["result"] == "ok" and result["send_error"] is None, result
    assert result["received"] == size and result["sha256"] == hashlib.sha256(sent).hexdigest(), result
    closed_echo = echo.expect_json(event="closed")
    assert (closed_echo["bytes"], closed_echo["sha256"]) == (size, hashlib.sha256(sent).hexdigest())
    opened = event(pierce_server, "proxy.conn_open", proxy="home-echo")
    assert opened["visitor"].startswith(f"{LAPTOP_ROUTER_WAN}:") and opened["visitor_id"] == "laptop", opened
    closed = event(pierce_server, "proxy.conn_close", proxy="home-echo")
    assert (closed["up_bytes"], closed["down_bytes"]) == (size, size), closed
    closed = event(pierce_owner, "proxy.conn_close", proxy="home-echo")
    assert (closed["up_bytes"], closed["down_bytes"]) == (size, size), closed

    # A wrong secret: refused at start (exit status 1, no port), and the owner logs who tried.
    wrong = laptop.run(
        "env",
        f"PIERCE_STATE_DIR={tmp_path / 'intruder-state'}",
        sys.executable,
        "-m",
        "pierce",
        "--json-logs",
        *visit_args("not the secret"),
        "--client-id",
        "intruder",
        check=False,
        timeout=30,
    )
    assert wrong.returncode == 1, wrong.stderr
    logged = [json.loads(line) for line in wrong.stderr.splitlines() if line.startswith("{")]
    [refused] = [e for e in logged if e["event"] == "visitor.refused"]
    assert refused["code"] == "auth_failed" and "wrong secret" in refused["reason"], refused
    assert not [e for e in logged if e["event"] == "visitor.listening"]
    attempt = event(pierce_owner, "visitor.refused", proxy="home-echo")
    assert attempt["visitor"].startswith(f"{LAPTOP_ROUTER_WAN}:"), attempt
    assert (attempt["visitor_id"], attempt["code"]) == ("intruder", "auth_failed")

    # The good visitor is unaffected.
    [again] = laptop.run_helper("tcp_client.py", f"127.0.0.1:{VISIT_PORT}", "--hex", "00ff" * 512)
    assert again["result"] == "ok" and again["received"] == 1024, again
    assert again["sha256"] == hashlib.sha256(b"\x00\xff" * 512).hexdigest(), again
    assert pierce_server.popen.poll() is None and pierce_owner.popen.poll() is None
    assert visitor.popen.poll() is None
