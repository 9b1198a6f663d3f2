"""Dynamic DNS against a real authoritative server (Knot DNS, `ddns_lab`), from a client behind a NAT.

    client 10.77.0.10 ─ seg lan ─ 10.77.0.1  nat  203.0.113.1 (.2 later) ─ seg wan ─┬─ 203.0.113.10 server
                                              (MASQUERADE, SNAT later)             └─ 203.0.113.53 knotd

The client learns its public address from the pierce server's STUN responder (after each login and every
``check_interval_s``) and writes it with a TSIG-signed UPDATE: ``kdig`` sees the router's address, checks
that find the same address send nothing (the server applied one UPDATE, the SOA serial stays), and when the
router's public address changes the record follows. A wrong secret is refused (BADSIG, logged with the
rcode) and retried after doubling delays, which the server's own log confirms attempt by attempt.

IPv6: the client's namespace gets addresses on its LAN interface. The AAAA record follows the global one
(from an ordinary global range, 2a0b:4e07:77::/64: lab namespaces have no route out, so nothing leaves
them), while the ULA, documentation, link-local and deprecated ones beside it are never published; when
the global address changes the record follows, and when the host has none left the AAAA record is deleted
and the A record stays.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from support.tunnel import TOKEN, write_toml

from .ddns_lab import KEY_NAME, ZONE, Knot, missing_knot, start_knot
from .lab import Host, Lab, NatRouter, Proc

pytestmark = pytest.mark.natlab

CLIENT_IP, ROUTER_LAN_IP = "10.77.0.10", "10.77.0.1"
SERVER_IP, DNS_IP, ROUTER_WAN_IP, ROUTER_WAN_IP2 = (
    "203.0.113.10",
    "203.0.113.53",
    "203.0.113.1",
    "203.0.113.2",
)
CONTROL_PORT = 7000
NAME = "home"
#: The client looks at its public address this often (seconds) in these tests.
CHECK_S = 1
#: Global IPv6 addresses for the client (any global range works inside the lab; 2001:db8::/32, the
#: documentation prefix, is not global and is one of the addresses that must never be published).
CLIENT_V6, CLIENT_V6_2 = "2a0b:4e07:77::10", "2a0b:4e07:77::20"
#: Addresses beside them that are not public: ULA, documentation, and a deprecated global one.
NOT_PUBLIC_V6 = ("fd77::10/64", "2001:db8::10/64")
DEPRECATED_V6 = "2a0b:4e07:77::30"


class Net:
    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        reason = missing_knot()
        if reason is not None:
            pytest.skip(reason)
        self.tmp_path = tmp_path
        wan = lab.segment("wan", "203.0.113.0/24")
        lan = self.lan = lab.segment("lan", "10.77.0.0/24")
        self.server, self.dns = lab.host("server"), lab.host("dns")
        lab.attach(self.server, wan, SERVER_IP)
        lab.attach(self.dns, wan, DNS_IP)
        self.router: NatRouter = lab.nat_router("nat", wan=(wan, ROUTER_WAN_IP), lan=(lan, ROUTER_LAN_IP))
        self.client = lab.host("client")
        lab.attach(self.client, lan, CLIENT_IP)
        lab.route(self.client, "default", via=ROUTER_LAN_IP)
        self.knot: Knot = start_knot(self.dns, DNS_IP, tmp_path / "knot")
        server_conf = write_toml(
            tmp_path / "server.toml", {"bind_addr": "0.0.0.0", "bind_port": CONTROL_PORT, "token": TOKEN}
        )
        self.pierce_server = pierce(self.server, server_conf, "server", tmp_path / "server-state")
        assert event(self.pierce_server, "server.listening")["port"] == CONTROL_PORT

    def client_config(self, secret: str) -> Path:
        return write_toml(
            self.tmp_path / "client.toml",
            {
                "server_addr": SERVER_IP,
                "server_port": CONTROL_PORT,
                "token": TOKEN,
                "ddns": {
                    "server": DNS_IP,
                    "zone": ZONE,
                    "name": NAME,
                    "key_name": KEY_NAME,
                    "key_secret": secret,
                    "ttl": 30,
                    "check_interval_s": CHECK_S,
                },
            },
        )

    def start_client(self, secret: str) -> Proc:
        conf = self.client_config(secret)
        return pierce(self.client, conf, "client", self.tmp_path / "client-state", "--log-level", "debug")


def pierce(host: Host, config: Path, role: str, state: Path, *flags: str) -> Proc:
    env = {**os.environ, "PIERCE_STATE_DIR": str(state), "PIERCE_STRICT_EVENTS": "1"}
    return host.python(
        "-m", "pierce", "--json-logs", *flags, role, "-c", config, env=env, label=f"{host.name}:pierce"
    )


def event(proc: Proc, name: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    return proc.expect_json("stderr", timeout=timeout, event=name, **fields)


@pytest.fixture
def net(lab: Lab, tmp_path: Path) -> Net:
    return Net(lab, tmp_path)


def test_ddns_follows_the_public_address_and_writes_only_changes(net: Net) -> None:
    knot = net.knot
    assert knot.dig(net.client, NAME) == [] and knot.serial(net.client) == 1

    client = net.start_client(knot.secret)
    event(client, "client.connected")
    updated = event(client, "ddns.updated")
    assert updated["ipv4"] == ROUTER_WAN_IP and updated["ddns_name"] == f"{NAME}.{ZONE}.", updated
    knot.expect_applied(serial=2)
    assert knot.dig(net.client, NAME) == [ROUTER_WAN_IP]

    # Three more checks find the same address: nothing more reaches the server.
    for _ in range(3):
        assert event(client, "ddns.checked")["ipv4"] == ROUTER_WAN_IP
    assert len(knot.applied()) == 1 and knot.serial(net.client) == 2, knot.proc.dump()

    # The router's public address changes (a new lease from the ISP): the next check sees it, and the
    # record follows; the old connection's state is gone with the router's conntrack table.
    router = net.router
    router.run("ip", "addr", "add", f"{ROUTER_WAN_IP2}/24", "dev", router.wan_if)
    router.iptables("-t", "nat", "-R", "POSTROUTING", "1", "-o", router.wan_if, "-j", "SNAT",
                    "--to-source", ROUTER_WAN_IP2)  # fmt: skip
    router.run("conntrack", "-F", check=False)
    updated = event(client, "ddns.updated", timeout=20)
    assert updated["ipv4"] == ROUTER_WAN_IP2, updated
    knot.expect_applied(serial=3)
    assert knot.dig(net.client, NAME) == [ROUTER_WAN_IP2]
    assert len(knot.applied()) == 2, knot.proc.dump()
    assert not [d for d in client.json_lines("stderr") if d.get("event") == "ddns.failed"], client.dump()

    # A restarted client finds the record right and writes nothing (no serial bump on every restart).
    assert client.stop() == 0, client.dump()
    client = net.start_client(knot.secret)
    unchanged = event(client, "ddns.unchanged")
    assert unchanged["ipv4"] == ROUTER_WAN_IP2, unchanged
    event(client, "ddns.checked")
    assert len(knot.applied()) == 2 and knot.serial(net.client) == 3, knot.proc.dump()


def test_ddns_wrong_key_is_refused_logged_and_retried_with_backoff(net: Net) -> None:
    knot = net.knot
    wrong = "d3Jvbmcgc2VjcmV0IG9mIHRoaXJ0eS10d28gYnl0ZXM="
    client = net.start_client(wrong)
    delays = []
    for attempt in (1, 2, 3):
        failed = event(client, "ddns.failed", timeout=15)
        assert failed["rcode"] == "BADSIG" and failed["failures"] == attempt, failed
        assert failed["level"] == "error" and "key_secret" in failed["msg"], failed
        knot.expect_refused()
        delays.append(failed["delay_s"])
        # What reached the server: one refused UPDATE per failure so far (the next is `delay_s` away),
        # and nothing applied.
        assert len(knot.refused()) == attempt and knot.applied() == [], knot.proc.dump()
    assert delays == [1, 2, 4], delays  # doubling, not a storm
    assert knot.dig(net.client, NAME) == [] and knot.serial(net.client) == 1
    assert wrong not in "\n".join(client.lines("stderr"))  # the secret is never logged

    # An unknown key name, with the one-shot command: BADKEY, exit 1, nothing written.
    conf = net.client_config(knot.secret)
    conf.write_text(conf.read_text().replace(f'key_name = "{KEY_NAME}"', 'key_name = "nobody"'))
    done = net.client.run(
        sys.executable, "-m", "pierce", "ddns-update", "-c", conf, "--ip", "192.0.2.7", check=False
    )
    assert done.returncode == 1 and "BADKEY" in done.stderr, done
    assert knot.dig(net.client, NAME) == []


def client_ipv6(net: Net, *args: str) -> None:
    """``ip -6 addr ARGS dev <the client's LAN interface>``."""
    net.client.run("ip", "-6", "addr", *args, "dev", net.client.iface(net.lan))


def test_ddns_keeps_aaaa_at_the_hosts_public_ipv6_and_deletes_it_when_there_is_none(net: Net) -> None:
    knot, client_host = net.knot, net.client
    iface = client_host.iface(net.lan)
    client_host.run(
        "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", f"net.ipv6.conf.{iface}.disable_ipv6=0"
    )
    for address in NOT_PUBLIC_V6:
        client_ipv6(net, "add", address, "nodad")
    client_ipv6(net, "add", f"{DEPRECATED_V6}/64", "preferred_lft", "0", "valid_lft", "forever", "nodad")
    client_ipv6(net, "add", f"{CLIENT_V6}/64", "nodad")

    client = net.start_client(knot.secret)
    updated = event(client, "ddns.updated")
    assert (updated["ipv4"], updated["ipv6"]) == (ROUTER_WAN_IP, CLIENT_V6), updated
    knot.expect_applied(serial=2)  # A and AAAA in one UPDATE
    assert knot.dig(net.client, NAME, "AAAA") == [CLIENT_V6]
    assert knot.dig(net.client, NAME) == [ROUTER_WAN_IP]

    # The host's global address changes (a new prefix from the ISP): the AAAA record follows, alone.
    client_ipv6(net, "add", f"{CLIENT_V6_2}/64", "nodad")
    client_ipv6(net, "del", f"{CLIENT_V6}/64")
    updated = event(client, "ddns.updated", timeout=20)
    assert updated["ipv6"] == CLIENT_V6_2 and "ipv4" not in updated, updated
    knot.expect_applied(serial=3)
    assert knot.dig(net.client, NAME, "AAAA") == [CLIENT_V6_2]

    # No public IPv6 address left (the ULA, documentation, link-local and deprecated ones remain): the
    # AAAA record goes, the A record stays.
    client_ipv6(net, "del", f"{CLIENT_V6_2}/64")
    updated = event(client, "ddns.updated", timeout=20)
    assert updated["deleted"] == "AAAA" and "ipv6" not in updated and "ipv4" not in updated, updated
    knot.expect_applied(serial=4)
    assert knot.dig(net.client, NAME, "AAAA") == []
    assert knot.dig(net.client, NAME) == [ROUTER_WAN_IP]

    # Checks that find the same (A only) send nothing more.
    for _ in range(3):
        checked = event(client, "ddns.checked")
        assert checked["ipv4"] == ROUTER_WAN_IP and "ipv6" not in checked, checked
    assert len(knot.applied()) == 3 and knot.serial(net.client) == 4, knot.proc.dump()
    assert not [d for d in client.json_lines("stderr") if d.get("event") == "ddns.failed"], client.dump()
