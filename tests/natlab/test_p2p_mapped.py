"""P2P through a port the owner's router maps (``direct = "auto"`` on xtcp/xudp), with a real miniupnpd.

The owner sits behind the home router of `portmap_lab`, made symmetric (MASQUERADE ``--random-fully``)
and, as ever, dropping whatever comes in from outside that is neither a reply nor a port miniupnpd
forwards. The visitor sits behind a symmetric NAT of its own on the outside segment; the pierce server is
the lab's public host::

    home 192.168.1.10 -- router 11.0.0.1 --+-- 11.0.0.10 server (control, STUN)
      (miniupnpd, symmetric NAT)           +-- 11.0.0.3 vnat (symmetric NAT) -- peer 10.9.0.10 (visitor)

Two symmetric NATs: no punched hole can cross them (the punch gives up at once, "both sides symmetric").
With ``direct = "auto"`` the owner asks miniupnpd (PCP) for a UDP port of its attempt's socket and offers
``11.0.0.1:port`` as a mapped candidate; the visitor's checks to it are let in, and the path comes up
("direct mapped" on both sides), carries an echo end to end without crossing the server, and once it
closes the mapping is gone from the router. With ``direct = "off"`` (the same lab) the visitor stays on
the relay: the mapping is what made the direct path. A visitor behind a cone NAT instead also takes the
mapped port (rather than port prediction).

A router without miniupnpd (cone NAT, public visitor): the punched path comes up as before, the owner
says once that the router maps nothing, and the next attempt does not ask it again (the router's counter
of datagrams to port 5351 stays put).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.tunnel import TOKEN, write_toml

from .lab import Host, Lab, NatMode, Proc
from .p2p_cells import verdict
from .p2p_lab import event, run_pierce
from .portmap_lab import HOME_IP, NATPMP_PORT, ROUTER_OUT, VISITOR_IP, HomeNet, home_router, missing_miniupnpd

pytestmark = pytest.mark.natlab

CONTROL_PORT, SERVICE_PORT, VISIT_PORT = 7000, 7007, 9000
SECRET = "mapped p2p secret"
PEER_LAN, PEER_GW, PEER_NAT_OUT, PEER_IP = "10.9.0.0/24", "10.9.0.1", "11.0.0.3", "10.9.0.10"
PAYLOAD_SIZE = 2 << 20


@dataclass
class MappedLab:
    """The home network (owner), a server on its public host, and a visitor host behind a symmetric NAT."""

    net: HomeNet
    peer: Host
    server: Proc
    workdir: Path

    def server_bytes(self) -> int:
        """Bytes in and out of the server's one interface (kernel counters)."""
        stats = f"/sys/class/net/{self.net.visitor.iface('outside')}/statistics"
        rx, tx = self.net.visitor.run("cat", f"{stats}/rx_bytes", f"{stats}/tx_bytes").stdout.split()
        return int(rx) + int(tx)

    def owner(self, kind: str, direct: str, method: str = "pcp") -> tuple[Proc, Proc]:
        """The owner's echo (TCP, UDP for xudp) on loopback and its client with one ``kind`` proxy."""
        home = self.net.home
        service = home.helper(
            "udp_echo.py" if kind == "xudp" else "tcp_echo.py", "--host", "127.0.0.1", "--port", SERVICE_PORT
        )
        service.ready_port()
        state = self.workdir / f"owner-{kind}-{direct}"
        state.mkdir()
        proxy = {
            "type": kind,
            "name": "svc",
            "local_port": SERVICE_PORT,
            "secret_key": SECRET,
            "direct": direct,
        }
        conf = write_toml(
            state / "client.toml",
            {
                "server_addr": VISITOR_IP,
                "server_port": CONTROL_PORT,
                "token": TOKEN,
                "client_id": "owner",
                "port_mapping": {"method": method},
                "proxies": [proxy],
            },
        )
        client = run_pierce(home, state, "client", "-c", conf)
        event(client, "proxy.ready", timeout=20, proxy="svc")
        return service, client

    def visitor(self, udp: bool = False, port: int = VISIT_PORT) -> Proc:
        args = ["visit", "--server", f"{VISITOR_IP}:{CONTROL_PORT}", "--token", TOKEN, "--name", "svc",
                "--secret", SECRET, "--bind", f"127.0.0.1:{port}", "--p2p"]  # fmt: skip
        if udp:
            args.append("--udp")
        proc = run_pierce(self.peer, self.workdir / f"visitor-{udp}-{port}", *args)
        event(proc, "visitor.listening", timeout=20)
        return proc


def build(
    lab: Lab, workdir: Path, *, daemon: bool = True, owner_nat: NatMode, peer_nat: NatMode | None
) -> MappedLab:
    """The lab of the module doc: the home router's NAT ``owner_nat``, with or without miniupnpd; the
    visitor host behind a NAT ``peer_nat`` (None: the visitor host is public, 11.0.0.3)."""
    if daemon and (reason := missing_miniupnpd()) is not None:
        pytest.skip(reason)
    net = home_router(lab, workdir, daemon=daemon, nat_mode=owner_nat)
    peer = lab.host("peer")
    if peer_nat is None:
        lab.attach(peer, net.outside, PEER_NAT_OUT)
    else:
        peer_lan = lab.segment("peer-lan", PEER_LAN)
        lab.nat_router("vnat", wan=(net.outside, PEER_NAT_OUT), lan=(peer_lan, PEER_GW), mode=peer_nat)
        lab.attach(peer, peer_lan, PEER_IP)
        lab.route(peer, "default", via=PEER_GW)
    conf = write_toml(
        workdir / "server.toml", {"bind_addr": "0.0.0.0", "bind_port": CONTROL_PORT, "token": TOKEN}
    )
    server = run_pierce(net.visitor, workdir / "server-state", "server", "-c", conf)
    event(server, "server.listening", timeout=20)
    return MappedLab(net, peer, server, workdir)


@pytest.fixture
def mapped_lab(lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> MappedLab:
    """Owner behind the symmetric router with miniupnpd; the visitor behind a NAT of the kind asked for
    (``indirect`` parameter; default symmetric)."""
    return build(lab, tmp_path, owner_nat="random-fully", peer_nat=getattr(request, "param", "random-fully"))


def udp_forwards(ml: MappedLab) -> set[tuple[str, int, str, int]]:
    return {f for f in ml.net.miniupnpd.forwards() if f[0] == "udp"}


def echo_through(ml: MappedLab, visitor: Proc) -> dict[str, Any]:
    """A random payload through the visitor's port to the owner's echo and back, checked by SHA-256;
    the server's interface counters around it."""
    payload = ml.workdir / "payload.bin"
    payload.write_bytes(os.urandom(PAYLOAD_SIZE))
    before = ml.server_bytes()
    [result] = ml.peer.run_helper(
        "tcp_client.py", f"127.0.0.1:{VISIT_PORT}", "--send", payload, "--timeout", "60", timeout=120
    )
    crossed = ml.server_bytes() - before
    assert result["result"] == "ok" and result["send_error"] is None, f"{result}\n{visitor.dump()}"
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    assert (result["received"], result["sha256"]) == (PAYLOAD_SIZE, digest), result
    opened = event(visitor, "visitor.open")
    return {"conn_path": opened["conn_path"], "server_bytes": crossed}


@pytest.mark.parametrize(
    "mapped_lab", ["random-fully", "masquerade"], ids=["symmetric-visitor", "cone-visitor"], indirect=True
)
def test_the_mapped_port_makes_the_direct_path(mapped_lab: MappedLab) -> None:
    """Behind a symmetric visitor NAT no punch could work; behind a cone one, only port prediction
    (hundreds of probes, seconds): both go straight to the mapped port."""
    ml = mapped_lab
    _, owner = ml.owner("xtcp", "auto")
    visitor = ml.visitor()

    offered = event(owner, "p2p.mapped", timeout=30, proxy="svc")
    host, port = offered["external"].rsplit(":", 1)
    assert host == ROUTER_OUT and offered["via"] == "pcp", offered
    [(_, eport, ihost, iport)] = udp_forwards(ml)  # miniupnpd forwards it to the attempt's socket
    assert (eport, ihost, iport) == (int(port), HOME_IP, offered["port"]), ml.net.describe()

    got = verdict(visitor)
    assert got.path == "direct mapped", f"{got}\n{visitor.dump()}\n{owner.dump()}\n{ml.net.describe()}"
    ours = event(owner, "p2p.direct", proto="udp")
    assert ours["conn_path"] == "direct mapped", ours

    moved = echo_through(ml, visitor)
    assert moved["conn_path"] == "direct mapped", moved
    assert moved["server_bytes"] < PAYLOAD_SIZE // 4, moved  # the 2 x 2 MiB went around the server

    visitor.stop()  # its QUIC connection closes: the owner's path ends and its mapping goes
    event(owner, "p2p.closed", timeout=60, proxy="svc")
    deleted = event(owner, "portmap.deleted", timeout=20, port=offered["port"])
    assert deleted["protocol"] == "udp", deleted
    assert udp_forwards(ml) == set(), ml.net.describe()


def test_xudp_datagrams_take_the_mapped_path(mapped_lab: MappedLab) -> None:
    ml = mapped_lab
    _, owner = ml.owner("xudp", "auto")
    visitor = ml.visitor(udp=True)
    event(owner, "p2p.mapped", timeout=30, proxy="svc")
    got = verdict(visitor)
    assert got.path == "direct mapped", f"{got}\n{visitor.dump()}\n{owner.dump()}"
    [reply] = ml.peer.run_helper("udp_client.py", f"127.0.0.1:{VISIT_PORT}", "--timeout", "5")
    assert reply["result"] == "reply", reply
    visitor.stop()
    event(owner, "portmap.deleted", timeout=60)
    assert udp_forwards(ml) == set(), ml.net.describe()


def test_without_the_mapping_the_same_nats_leave_the_visitor_on_the_relay(mapped_lab: MappedLab) -> None:
    """The control: ``direct = "off"``, same lab; the punch gives up, the relay carries the echo, and the
    router was never asked."""
    ml = mapped_lab
    _, owner = ml.owner("xtcp", "off")
    visitor = ml.visitor()
    got = verdict(visitor)
    assert got.path == "relay" and "symmetric" in (got.reason or ""), got
    moved = echo_through(ml, visitor)
    assert moved["conn_path"] == "relay", moved
    assert all(e.get("event") not in ("p2p.mapped", "portmap.mapped") for e in owner.json_lines("stderr"))
    assert udp_forwards(ml) == set(), ml.net.describe()


def test_a_router_without_port_mapping_changes_nothing_and_is_logged_once(lab: Lab, tmp_path: Path) -> None:
    """The home router without miniupnpd (a cone NAT here, so punching works) and ``method = "auto"``:
    two visits in a row both get their punched path; the router's silence is logged once, at the first
    attempt, and the second does not ask."""
    ml = build(lab, tmp_path, daemon=False, owner_nat="masquerade", peer_nat=None)
    router = ml.net.router
    router.iptables("-I", "INPUT", "-p", "udp", "--dport", str(NATPMP_PORT))  # counts, decides nothing

    def asked() -> int:
        out = router.run("iptables", "-w", "-L", "INPUT", "-v", "-x", "-n").stdout
        return sum(int(line.split()[0]) for line in out.splitlines() if f"dpt:{NATPMP_PORT}" in line)

    _, owner = ml.owner("xtcp", "auto", method="auto")
    for port in (VISIT_PORT, VISIT_PORT + 1):
        visitor = ml.visitor(port=port)
        got = verdict(visitor)
        assert got.path == "direct udp", f"{got}\n{owner.dump()}"
        event(owner, "p2p.direct", proto="udp")
        if port == VISIT_PORT:
            said = event(owner, "p2p.no_mapping", timeout=20)
            assert "no port mapping protocol answered" in said["reason"], said
            first = asked()
            assert first >= 1
        visitor.stop()
    assert asked() == first  # the second attempt did not ask the router
    told = [e for e in owner.json_lines("stderr") if e.get("event") in ("p2p.no_mapping", "p2p.mapped")]
    assert [e["event"] for e in told] == ["p2p.no_mapping"], told
