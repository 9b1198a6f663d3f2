"""``direct = "auto"``: a pierce client behind a home router running miniupnpd maps its proxies' ports on the
router and publishes the mapped addresses; a visitor on the outside reaches the services straight through
the router, and the pierce server (on the outside too) carries none of it. Behind a second NAT the router's
"external" address is shared, so nothing is published and the status says why.

    home 192.168.1.10 (pierce client; tcp echo and udp echo on 127.0.0.1 only)
      -- lan -- 192.168.1.1 router+miniupnpd 11.0.0.1 -- outside -- 11.0.0.10 (pierce server; visitor)

The services listen on loopback only: what the router forwards reaches the client's own direct listener,
which connects the service as it does for a visitor the server hands over.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from support.tunnel import TOKEN, write_toml

from .lab import Host, Proc
from .portmap_lab import HOME_IP, ROUTER_OUT, VISITOR_IP, HomeNet
from .test_portmap_lab import PAYLOAD, assert_echoed, visit

pytestmark = pytest.mark.natlab

CONTROL_PORT, WEB_PORT = 7000, 7500
TCP_SERVICE, UDP_SERVICE = 7100, 7101
TCP_PUBLIC, UDP_PUBLIC = 6000, 6001
WEB_USER, WEB_PASSWORD = "admin", "direct-test-password-5Jq8"


def pierce(host: Host, config: Path, role: str, state: Path) -> Proc:
    env = {**os.environ, "PIERCE_STATE_DIR": str(state)}
    return host.python(
        "-m", "pierce", "--json-logs", role, "-c", config, env=env, label=f"{host.name}:{role}"
    )


def events(proc: Proc, name: str, proxies: set[str], timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    """The first event ``name`` of each proxy in ``proxies`` (logged already, or awaited), whatever the
    order."""
    found: dict[str, dict[str, Any]] = {}
    for doc in proc.json_lines("stderr"):
        if doc.get("event") == name and doc.get("proxy") in proxies:
            found.setdefault(doc["proxy"], doc)

    def wanted(line: str) -> bool:
        try:
            doc = json.loads(line)
        except ValueError:
            return False
        return (
            isinstance(doc, dict) and doc.get("event") == name and doc.get("proxy") in proxies - found.keys()
        )

    while len(found) < len(proxies):
        doc = json.loads(proc.expect(wanted, "stderr", timeout))
        found[doc["proxy"]] = doc
    return found


def start(net: HomeNet, tmp_path: Path) -> tuple[Proc, Proc, Path]:
    """The services on the home host, the server on the outside, the client at home; (server, client)."""
    net.home.helper("tcp_echo.py", "--host", "127.0.0.1", "--port", TCP_SERVICE).ready_port()
    net.home.helper("udp_echo.py", "--host", "127.0.0.1", "--port", UDP_SERVICE).ready_port()
    server_conf = write_toml(
        tmp_path / "server.toml",
        {
            "bind_addr": "0.0.0.0",
            "bind_port": CONTROL_PORT,
            "token": TOKEN,
            "stun_port": 0,
            "web": {"addr": "127.0.0.1", "port": WEB_PORT, "user": WEB_USER, "password": WEB_PASSWORD},
        },
    )
    server = pierce(net.visitor, server_conf, "server", tmp_path / "server-state")
    server.expect_json("stderr", timeout=20, event="web.listening")
    client_conf = write_toml(
        tmp_path / "client.toml",
        {
            "server_addr": VISITOR_IP,
            "server_port": CONTROL_PORT,
            "token": TOKEN,
            "client_id": "home",
            "port_mapping": {"lifetime_s": 120},
            "proxies": [
                {
                    "type": "tcp",
                    "name": "ssh",
                    "local_port": TCP_SERVICE,
                    "remote_port": TCP_PUBLIC,
                    "direct": "auto",
                },
                {
                    "type": "udp",
                    "name": "game",
                    "local_port": UDP_SERVICE,
                    "remote_port": UDP_PUBLIC,
                    "direct": "auto",
                },
            ],
        },
    )
    client = pierce(net.home, client_conf, "client", tmp_path / "client-state")
    return server, client, tmp_path / "server.toml"


def server_proxies(net: HomeNet, server_toml: Path) -> dict[str, dict[str, Any]]:
    done = net.visitor.run(
        sys.executable, "-m", "pierce", "status", "--server", "-c", server_toml, "--json", timeout=20
    )
    return {p["name"]: p for p in json.loads(done.stdout)["proxies"]}


def udp_exchange(net: HomeNet, port: int) -> dict[str, Any]:
    [result] = net.visitor.run_helper("udp_client.py", f"{ROUTER_OUT}:{port}", "--hex", PAYLOAD.hex())
    return result


def test_direct_proxies_are_mapped_published_and_reached_past_the_server(
    home_net: HomeNet, tmp_path: Path
) -> None:
    net = home_net
    server, client, server_toml = start(net, tmp_path)
    ready = events(client, "proxy.ready", {"ssh", "game"})
    assert ready["ssh"]["remote_port"] == TCP_PUBLIC and ready["game"]["remote_port"] == UDP_PUBLIC, ready
    direct = events(client, "proxy.direct", {"ssh", "game"})
    assert direct["ssh"]["address"] == f"{ROUTER_OUT}:{TCP_PUBLIC}", direct
    assert direct["game"]["address"] == f"{ROUTER_OUT}:{UDP_PUBLIC}", direct
    assert direct["ssh"]["via"] == "pcp", direct
    listen = {name: int(doc["listen"].rpartition(":")[2]) for name, doc in direct.items()}
    assert net.miniupnpd.forwards() == {
        ("tcp", TCP_PUBLIC, HOME_IP, listen["ssh"]),
        ("udp", UDP_PUBLIC, HOME_IP, listen["game"]),
    }, net.describe()

    # The visitor goes to the router's address: bytes back from the loopback-only services.
    assert_echoed(visit(net.visitor, TCP_PUBLIC), net)
    reply = udp_exchange(net, UDP_PUBLIC)
    assert reply["result"] == "reply" and bytes.fromhex(reply["hex"]) == PAYLOAD, reply
    opened = client.expect_json("stderr", timeout=10, event="proxy.conn_open", proxy="ssh")
    assert opened["visitor"].startswith(f"{VISITOR_IP}:"), opened  # the visitor's own address: no relay

    # The server publishes the client's claim, and carried none of that traffic.
    events(server, "proxy.direct", {"ssh", "game"})
    proxies = server_proxies(net, server_toml)
    assert proxies["ssh"]["direct"] == f"{ROUTER_OUT}:{TCP_PUBLIC}", proxies
    assert proxies["game"]["direct"] == f"{ROUTER_OUT}:{UDP_PUBLIC}", proxies
    for name in ("ssh", "game"):
        stats = proxies[name]["stats"]
        assert (stats["total_connections"], stats["bytes_in"], stats["bytes_out"]) == (0, 0, 0), proxies

    # The relayed way still works (and the server's counters do count it).
    [relayed] = net.visitor.run_helper(
        "tcp_client.py", f"{VISITOR_IP}:{TCP_PUBLIC}", "--hex", PAYLOAD.hex(), "--timeout", "5"
    )
    assert_echoed(relayed, net)
    server.expect_json("stderr", timeout=10, event="proxy.conn_close", proxy="ssh")
    assert server_proxies(net, server_toml)["ssh"]["stats"]["bytes_in"] == len(PAYLOAD)

    # Stopping the client deletes its mappings: the router forwards nothing any more.
    assert client.stop() == 0, client.dump()
    assert net.miniupnpd.forwards() == set(), net.describe()


def test_behind_a_second_nat_nothing_is_published(home_net_double_nat: HomeNet, tmp_path: Path) -> None:
    net = home_net_double_nat
    _server, client, server_toml = start(net, tmp_path)
    unavailable = events(client, "proxy.direct_unavailable", {"ssh", "game"})
    for doc in unavailable.values():
        assert "no public external address" in doc["error"], unavailable
    events(client, "proxy.ready", {"ssh", "game"})
    assert not any(d.get("event") == "proxy.direct" for d in client.json_lines("stderr")), client.dump()
    proxies = server_proxies(net, server_toml)
    assert proxies["ssh"]["direct"] == "" and proxies["game"]["direct"] == "", proxies
    assert net.miniupnpd.forwards() == set(), net.describe()
