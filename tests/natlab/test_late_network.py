"""A client started before its network is up (a boot where the network comes late) connects by itself.

    client 10.78.0.10 ─ seg lan ─ 10.78.0.1  nat  203.0.113.1 ─ seg wan ─ 203.0.113.10 server

The client names its server ``server.pierce.test``. At first the client's namespace has no default route
and its resolver knows no such name (``ip netns exec`` lays ``/etc/netns/NS/hosts`` and ``resolv.conf`` over
the real ones, and the resolver points at a port nothing answers). The name is added (the client then
fails on the route), then the route: the same client process logs in, and its proxy carries bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.tunnel import TOKEN, write_toml

from .lab import Host, Lab
from .test_tunnel_nat import event, pierce

pytestmark = pytest.mark.natlab

CLIENT_IP, ROUTER_LAN_IP = "10.78.0.10", "10.78.0.1"
SERVER_IP, ROUTER_WAN_IP = "203.0.113.10", "203.0.113.1"
SERVER_NAME = "server.pierce.test"
CONTROL_PORT, PUBLIC_PORT = 7000, 6000
#: The client's backoff is 1 s doubling to 20 s plus 20% jitter; the next attempt comes within this.
RETRY_WITHIN_S = 25.0


def failed_with(text: str) -> Callable[[str], bool]:
    def test(line: str) -> bool:
        return '"client.login_failed"' in line and text in line

    return test


EtcOverlay = Callable[[Host], Path]


@pytest.fixture
def etc_overlay(lab: Lab) -> Iterator[EtcOverlay]:
    """``/etc/netns/NS`` of a host: files there are laid over ``/etc`` by ``ip netns exec`` (removed
    afterwards, with ``/etc/netns`` when this made it)."""
    root = Path("/etc/netns")
    made_root = not root.exists()
    made: list[Path] = []

    def for_host(host: Host) -> Path:
        path = root / host.ns
        path.mkdir(parents=True)
        made.append(path)
        return path

    try:
        yield for_host
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        if made_root:
            with contextlib.suppress(OSError):
                root.rmdir()


def test_a_client_started_without_name_or_route_connects_when_they_come(
    lab: Lab, etc_overlay: EtcOverlay, tmp_path: Path
) -> None:
    wan = lab.segment("wan", "203.0.113.0/24")
    lan = lab.segment("lan", "10.78.0.0/24")
    server = lab.host("server")
    lab.attach(server, wan, SERVER_IP)
    lab.nat_router("nat", wan=(wan, ROUTER_WAN_IP), lan=(lan, ROUTER_LAN_IP))
    client = lab.host("client")
    lab.attach(client, lan, CLIENT_IP)  # no default route yet

    etc = etc_overlay(client)
    hosts = etc / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # nothing answers there

    echo = client.helper("tcp_echo.py", "--host", "127.0.0.1", "--port", 0)
    echo_port = echo.ready_port()
    server_conf = write_toml(
        tmp_path / "server.toml", {"bind_addr": "0.0.0.0", "bind_port": CONTROL_PORT, "token": TOKEN}
    )
    client_conf = write_toml(
        tmp_path / "client.toml",
        {
            "server_addr": SERVER_NAME,
            "server_port": CONTROL_PORT,
            "token": TOKEN,
            "client_id": "late",
            "proxies": [
                {
                    "type": "tcp",
                    "name": "echo",
                    "local_ip": "127.0.0.1",
                    "local_port": echo_port,
                    "remote_port": PUBLIC_PORT,
                }
            ],
        },
    )
    pierce_server = pierce(server, server_conf, "server", tmp_path / "server-state")
    event(pierce_server, "server.listening")
    pierce_client = pierce(client, client_conf, "client", tmp_path / "client-state")
    pierce_client.expect(failed_with(f"cannot resolve {SERVER_NAME}"), "stderr")
    event(pierce_client, "client.retry")

    # The name comes (appended: the file laid over /etc/hosts is the same file), the route not yet.
    with hosts.open("a") as f:
        f.write(f"{SERVER_IP} {SERVER_NAME}\n")
    pierce_client.expect(failed_with("Network is unreachable"), "stderr", timeout=RETRY_WITHIN_S)

    # The route comes: the same process logs in and its proxy carries bytes.
    lab.route(client, "default", via=ROUTER_LAN_IP)
    event(pierce_client, "client.connected", timeout=RETRY_WITHIN_S)
    assert event(pierce_client, "proxy.ready", proxy="echo")["remote_port"] == PUBLIC_PORT
    sent = tmp_path / "sent.bin"
    sent.write_bytes(os.urandom(64 * 1024))
    [result] = server.run_helper("tcp_client.py", f"{SERVER_IP}:{PUBLIC_PORT}", "--send", sent)
    assert result["result"] == "ok" and result["received"] == 64 * 1024, result
    assert pierce_client.popen.poll() is None
