"""The P2P lab's site kinds, shapes and impairments do what `p2p_lab` says, checked with real traffic."""

from __future__ import annotations

import sys

import pytest

from .lab import Lab
from .p2p_lab import Shape, SiteSpec, build

pytestmark = pytest.mark.natlab

#: Milliseconds for a TCP connect (one round trip) from ``argv[1]:argv[2]``; "timeout" after 2 s.
CONNECT_MS = """
import socket, sys, time
t = time.perf_counter()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except TimeoutError:
    print("timeout")
else:
    print(round((time.perf_counter() - t) * 1000, 1))
"""


@pytest.mark.parametrize("shape", ["internet", "flat"])
def test_kinds_filter_what_they_say(lab: Lab, shape: Shape) -> None:
    specs = [SiteSpec(kind, kind) for kind in ("none", "cone", "udp-blocked", "syn-drop")]
    plab = build(lab, specs, shape)
    echo_tcp, echo_udp = plab.server.helper("tcp_echo.py"), plab.server.helper("udp_echo.py")
    tcp_port, udp_port = echo_tcp.ready_port(), echo_udp.ready_port()
    for name, site in plab.sites.items():
        [udp] = site.host.run_helper("udp_client.py", f"{plab.server_ip}:{udp_port}", "--timeout", "1")
        [tcp] = site.host.run_helper("tcp_client.py", f"{plab.server_ip}:{tcp_port}", "--hex", "00")
        assert tcp["result"] == "ok", (name, tcp)
        assert udp["result"] == ("timeout" if name == "udp-blocked" else "reply"), (name, udp)
        if udp["result"] == "reply":  # the server sees the site's public address
            assert udp["from"][0] == plab.server_ip
            assert echo_udp.expect_json(event="datagram")["peer"][0] == site.public_ip
    # Inbound TCP through a port forward: a cone's router passes the SYN, a syn-drop router does not.
    for name in ("cone", "syn-drop"):
        site = plab.sites[name]
        assert site.router is not None
        service = site.host.helper("tcp_echo.py", "--port", 8000)
        service.ready_port()
        site.router.forward("tcp", 8000, site.host.ip(f"lan-{name}"))
        got = plab.server.run(sys.executable, "-c", CONNECT_MS, site.public_ip, "8000").stdout.strip()
        assert (got == "timeout") == (name == "syn-drop"), (name, got)


def test_ttl_two_dies_between_the_nats_only_on_the_internet(natlab_ready: None) -> None:
    """The reason for the two shapes: on the internet shape a TTL-2 datagram leaves its own NAT and
    dies at its ISP; on the flat one the other site's NAT router is within two hops."""
    probe = "import socket,sys; s=socket.socket(2,2); s.setsockopt(0,2,2); s.sendto(b'x',(sys.argv[1],5000))"
    for shape, reaches in (("internet", False), ("flat", True)):
        with Lab() as lab:
            plab = build(lab, [SiteSpec("a", "cone"), SiteSpec("b", "cone")], shape)
            a, b = plab.sites["a"], plab.sites["b"]
            assert b.router is not None
            a.host.run(sys.executable, "-c", probe, b.public_ip)
            # An unsolicited datagram that reached b's router leaves an (unreplied) conntrack entry there.
            entries = b.router.run("conntrack", "-L", "-p", "udp", "--dport", "5000").stdout
            assert (a.public_ip in entries) == reaches, (shape, entries)


def test_impairments_delay_and_drop(lab: Lab) -> None:
    plab = build(lab, [SiteSpec("a", "cone")])
    site = plab.sites["a"]
    echo = plab.server.helper("tcp_echo.py")
    port = echo.ready_port()

    def connect_ms() -> str:
        return site.host.run(sys.executable, "-c", CONNECT_MS, plab.server_ip, port).stdout.strip()

    assert float(connect_ms()) < 50
    plab.impair(site, delay_ms=50)
    # The SYN and the SYN-ACK each pass the router once: 100 ms.
    assert all(100 <= float(connect_ms()) < 1000 for _ in range(3))
    plab.impair(site, loss=1.0)  # everything dropped
    assert connect_ms() == "timeout"
    # ...and the server's counters show it: 100 datagrams of 1000 bytes sent, none arrived.
    flood = "import socket,sys\nfor _ in range(100): socket.socket(2,2).sendto(bytes(1000),(sys.argv[1],9))"
    rx0, _ = plab.server_bytes()
    site.host.run(sys.executable, "-c", flood, plab.server_ip)
    rx1, _ = plab.server_bytes()
    assert rx1 - rx0 < 10_000, rx1 - rx0  # not 100 kB (a late retransmission or an ARP may come)
