"""A reverse tunnel out of a LAN behind a real MASQUERADE router, and back after the link is cut.

    client 10.77.0.10 ─┐                                      ┌─ 203.0.113.10 server (pierce server)
                       ├─ seg lan ─ 10.77.0.1  nat  203.0.113.1 ─ seg wan ─┤
    nas    10.77.0.20 ─┘            (MASQUERADE)                           └─ 203.0.113.20 visitor

The NAS runs a TCP echo the visitor cannot route to. The client dials out to the server (which sees the
router's address), and the visitor reaches the echo through the server's public port. Then the router drops
everything it forwards until both ends have noticed (heartbeats), the link comes back, the client logs in
again by itself, and the same public port carries verified bytes again; nothing was restarted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from support.tunnel import TOKEN, write_toml

from .lab import Host, Lab, NatRouter, Proc

pytestmark = pytest.mark.natlab

CLIENT_IP, NAS_IP, ROUTER_LAN_IP = "10.77.0.10", "10.77.0.20", "10.77.0.1"
SERVER_IP, VISITOR_IP, ROUTER_WAN_IP = "203.0.113.10", "203.0.113.20", "203.0.113.1"
CONTROL_PORT, PUBLIC_PORT, ECHO_PORT = 7000, 6000, 7007
#: Both ends notice a dead link after this many seconds without traffic.
HEARTBEAT_TIMEOUT = 3


def pierce(host: Host, config: Path, role: str, state: Path) -> Proc:
    """``python -m pierce --json-logs ROLE -c CONFIG`` in ``host``; JSON log lines arrive on its stderr."""
    env = {**os.environ, "PIERCE_STATE_DIR": str(state)}
    return host.python(
        "-m", "pierce", "--json-logs", role, "-c", config, env=env, label=f"{host.name}:pierce"
    )


def event(proc: Proc, name: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """The next log event ``name`` of ``proc`` (events before it are consumed)."""
    return proc.expect_json("stderr", timeout=timeout, event=name, **fields)


def visit(visitor: Host, tmp_path: Path, tag: str, size: int) -> str:
    """Random bytes through the public port to the NAS echo: sent, half-closed, echoed back, SHA-256 equal.
    Returns the SHA-256 (hex) of the bytes sent."""
    sent_path, received_path = tmp_path / f"{tag}-sent.bin", tmp_path / f"{tag}-received.bin"
    sent = os.urandom(size)
    sent_path.write_bytes(sent)
    [result] = visitor.run_helper(
        "tcp_client.py", f"{SERVER_IP}:{PUBLIC_PORT}", "--send", sent_path, "--recv", received_path
    )
    assert result["result"] == "ok" and result["send_error"] is None, result
    assert result["received"] == size and result["sha256"] == hashlib.sha256(sent).hexdigest(), result
    assert received_path.read_bytes() == sent
    return hashlib.sha256(sent).hexdigest()


def test_tunnel_through_masquerade_survives_a_cut_link(lab: Lab, tmp_path: Path) -> None:
    wan = lab.segment("wan", "203.0.113.0/24")
    lan = lab.segment("lan", "10.77.0.0/24")
    server, visitor = lab.host("server"), lab.host("visitor")
    lab.attach(server, wan, SERVER_IP)
    lab.attach(visitor, wan, VISITOR_IP)
    router: NatRouter = lab.nat_router("nat", wan=(wan, ROUTER_WAN_IP), lan=(lan, ROUTER_LAN_IP))
    client, nas = lab.host("client"), lab.host("nas")
    for host, ip in ((client, CLIENT_IP), (nas, NAS_IP)):
        lab.attach(host, lan, ip)
        lab.route(host, "default", via=ROUTER_LAN_IP)

    echo = nas.helper("tcp_echo.py", "--host", NAS_IP, "--port", ECHO_PORT)
    echo.ready_port()
    server_conf = write_toml(
        tmp_path / "server.toml",
        {
            "bind_addr": "0.0.0.0",
            "bind_port": CONTROL_PORT,
            "token": TOKEN,
            "heartbeat_timeout": HEARTBEAT_TIMEOUT,
        },
    )
    client_conf = write_toml(
        tmp_path / "client.toml",
        {
            "server_addr": SERVER_IP,
            "server_port": CONTROL_PORT,
            "token": TOKEN,
            "client_id": "lan-box",
            "heartbeat_interval": 1,
            "heartbeat_timeout": HEARTBEAT_TIMEOUT,
            "proxies": [
                {
                    "type": "tcp",
                    "name": "nas-echo",
                    "local_ip": NAS_IP,
                    "local_port": ECHO_PORT,
                    "remote_port": PUBLIC_PORT,
                }
            ],
        },
    )
    pierce_server = pierce(server, server_conf, "server", tmp_path / "server-state")
    assert event(pierce_server, "server.listening")["port"] == CONTROL_PORT
    pierce_client = pierce(client, client_conf, "client", tmp_path / "client-state")
    event(pierce_client, "client.connected")
    assert event(pierce_client, "proxy.ready", proxy="nas-echo")["remote_port"] == PUBLIC_PORT
    login = event(pierce_server, "client.login", client_id="lan-box")
    assert login["peer"].startswith(f"{ROUTER_WAN_IP}:"), login  # the server only sees the NAT's address
    assert event(pierce_server, "proxy.ready", proxy="nas-echo")["remote_port"] == PUBLIC_PORT

    # The visitor has no way into the LAN but the tunnel.
    [direct] = visitor.run_helper("tcp_client.py", f"{NAS_IP}:{ECHO_PORT}", "--timeout", "1")
    assert direct["result"] == "error" and direct["stage"] == "connect", direct

    size = 1024 * 1024 + 7
    digest = visit(visitor, tmp_path, "before", size)
    assert echo.expect_json(event="accepted")["peer"][0] == CLIENT_IP
    closed_echo = echo.expect_json(event="closed")
    assert (closed_echo["bytes"], closed_echo["sha256"]) == (size, digest), closed_echo
    opened = event(pierce_server, "proxy.conn_open", proxy="nas-echo")
    assert opened["visitor"].startswith(f"{VISITOR_IP}:"), opened
    closed = event(pierce_server, "proxy.conn_close", proxy="nas-echo")
    assert (closed["up_bytes"], closed["down_bytes"]) == (size, size), closed

    # Cut: the router forwards nothing. Both ends notice through their heartbeats; the server frees the port.
    router.iptables("-I", "FORWARD", "-j", "DROP")
    try:
        event(pierce_client, "client.disconnected", timeout=HEARTBEAT_TIMEOUT + 5)
        event(pierce_server, "client.timeout", timeout=HEARTBEAT_TIMEOUT + 5, client_id="lan-box")
        event(pierce_server, "proxy.closed", proxy="nas-echo")
        [gone] = visitor.run_helper("tcp_client.py", f"{SERVER_IP}:{PUBLIC_PORT}", "--timeout", "2")
        assert gone["result"] == "error" and gone["errno"] == "ECONNREFUSED", gone
    finally:
        router.iptables("-D", "FORWARD", "-j", "DROP")

    # Restored: the same client process logs in again on its own and gets the same public port back.
    event(pierce_client, "client.retry")
    event(pierce_client, "client.connected", timeout=20)
    assert event(pierce_client, "proxy.ready", proxy="nas-echo")["remote_port"] == PUBLIC_PORT
    assert event(pierce_server, "client.login", client_id="lan-box")["peer"].startswith(f"{ROUTER_WAN_IP}:")
    assert event(pierce_server, "proxy.ready", proxy="nas-echo")["remote_port"] == PUBLIC_PORT

    digest = visit(visitor, tmp_path, "after", size)
    assert echo.expect_json(event="accepted")["peer"][0] == CLIENT_IP
    closed_echo = echo.expect_json(event="closed")
    assert (closed_echo["bytes"], closed_echo["sha256"]) == (size, digest), closed_echo
    closed = event(pierce_server, "proxy.conn_close", proxy="nas-echo")
    assert (closed["up_bytes"], closed["down_bytes"]) == (size, size), closed
    assert pierce_server.popen.poll() is None and pierce_client.popen.poll() is None
