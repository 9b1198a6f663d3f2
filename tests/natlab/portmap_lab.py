r"""A home router for the port-mapping tests: NAPT, a stateful firewall and, by choice, a real miniupnpd.

    home 192.168.1.10 -- lan 192.168.1.0/24 -- 192.168.1.1 router 11.0.0.1 -- outside 11.0.0.0/24
                                                                                  \-- visitor 11.0.0.10

    with Lab() as lab:
        net = home_router(lab, tmp_path)                  # daemon=False: the same router without miniupnpd
        echo = net.home.helper("tcp_echo.py", "--port", 8080)
        net.home.run("natpmpc", "-a", 8080, 8080, "tcp", 60)
        assert net.daemon.forwards() == {("tcp", 8080, HOME_IP, 8080)}
        [reply] = net.visitor.run_helper("tcp_client.py", f"{ROUTER_OUT}:8080", "--hex", "00ff")

The router is :meth:`Lab.nat_router` (iptables MASQUERADE out of the outside interface) plus one nftables
table, ``inet miniupnpd``, shaped like the one Debian's ``/etc/miniupnpd/nft_init.sh`` creates (the
nftables build of miniupnpd 2.3 creates no tables or chains itself): a ``forward`` filter chain with policy
drop that lets replies and LAN-originated traffic through and jumps to miniupnpd's ``miniupnpd`` chain, and
nat ``prerouting``/``postrouting`` chains jumping to ``prerouting_miniupnpd``/``postrouting_miniupnpd``.
So nothing from outside reaches the LAN except through a rule miniupnpd added. The table is loaded on the
router without the daemon too, with its chains left empty.

The router's outside address is an ordinary, globally routable one: miniupnpd 2.3.1 checks the address of
``ext_ifname`` and, when it is private or reserved (RFC 1918, 100.64/10, the documentation blocks 192.0.2/24,
198.51.100/24, 203.0.113/24...), logs "Reserved / private IP address ... Port forwarding is impossible" and
answers every NAT-PMP/PCP request with "network failure"; ``ext_ip=`` refuses such an address too, and the
``ext_allow_private_ipv4`` option of later versions does not exist in 2.3.1 ("invalid option"). 11.0.0.0/8
is allocated to the US Department of Defense; using it here is safe because lab namespaces have no link to
the root namespace or any real interface and no route out, so no packet to or from 11.0.0.0/24 can ever
leave them. (miniupnpd's own tests use 11.x as their example of a non-reserved address.)

``home_router(behind_nat=True)`` puts a second NAT in front (double NAT, as behind a carrier's NAT)::

    home -- lan -- 192.168.1.1 router 100.64.0.2 -- 100.64.0.0/24 -- 100.64.0.1 carrier 11.0.0.1 -- outside

There miniupnpd sees a shared address on ``ext_ifname``, logs the refusal above and maps nothing (NAT-PMP's
external address request: "network failure", PCP MAP: "no resources", UPnP: 501 with an empty external
address); :meth:`Miniupnpd.start` then expects that refusal instead of failing on it.

The daemon runs in the foreground (``-d``: every log level on stderr, collected by :class:`Proc`) with a
config file written here (:func:`miniupnpd_config`), its pid file in the test's directory, no lease file
(a restart forgets every mapping, as a rebooted router does) and UPnP-IGD (SSDP + HTTP on
``HTTP_PORT``), NAT-PMP and PCP (UDP 5351) on the LAN interface only. Stopping it leaves its rules behind
(miniupnpd does not delete them at exit; Debian's unit flushes them in ExecStopPost): :meth:`Miniupnpd.stop`
flushes the three chains the same way. Teardown is the lab's: the process is a tracked :class:`Proc`, and
the rules go with the router's namespace.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from .lab import Host, Lab, LabError, NatMode, NatRouter, Proc, Segment, _load_nft

LAN_NET, ROUTER_LAN, HOME_IP = "192.168.1.0/24", "192.168.1.1", "192.168.1.10"
OUTSIDE_NET, ROUTER_OUT, VISITOR_IP = "11.0.0.0/24", "11.0.0.1", "11.0.0.10"
#: Behind a carrier's NAT (``home_router(behind_nat=True)``): the carrier's router takes ROUTER_OUT, the
#: home router's outside is on the shared range of carrier-grade NAT (RFC 6598).
CARRIER_NET, CARRIER_LAN, ROUTER_SHARED = "100.64.0.0/24", "100.64.0.1", "100.64.0.2"
#: miniupnpd's HTTP port (description and SOAP control), fixed so clients can skip SSDP with ROOT_DESC_URL.
HTTP_PORT = 5000
ROOT_DESC_URL = f"http://{ROUTER_LAN}:{HTTP_PORT}/rootDesc.xml"
NATPMP_PORT = 5351  # NAT-PMP and PCP share it (RFC 6887 section 19.1)
#: The nftables table holding the router's filter policy and miniupnpd's chains.
TABLE = "miniupnpd"
DAEMON_CHAINS = ("miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd")
READY_LINE = rf"Listening for NAT-PMP/PCP traffic on port {NATPMP_PORT}"
UPNP_READY_LINE = rf"HTTP listening on port {HTTP_PORT}"
REFUSED_LINE = "Port forwarding is impossible"
_PROTO = {"0x6": "tcp", "0x11": "udp"}
#: One DNAT rule as miniupnpd 2.3.1 writes it, as ``nft list chain`` prints it:
#: ``iif "eth0" @nh,72,8 0x6 th dport 9091 dnat ip to 192.168.1.10:9090``
_DNAT = re.compile(r"@nh,72,8 (0x[0-9a-f]+) th dport (\d+) dnat ip to ([\d.]+):(\d+)")


def miniupnpd_binary() -> str | None:
    """miniupnpd is in /usr/sbin, which a non-login PATH may lack."""
    return shutil.which("miniupnpd") or shutil.which("/usr/sbin/miniupnpd")


def missing_miniupnpd() -> str | None:
    """Why the daemon fixtures cannot run here, or None."""
    binary = miniupnpd_binary()
    if binary is None:
        return "needs miniupnpd (Debian packages miniupnpd miniupnpd-nftables)"
    for tool in ("natpmpc", "upnpc"):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian packages natpmpc miniupnpc)"
    return None


def firewall_ruleset(lan_if: str) -> str:
    return f"""
table inet {TABLE} {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{lan_if}" accept
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"""


def miniupnpd_config(router: NatRouter, device_uuid: str, min_lifetime: int = 1, natpmp: bool = True) -> str:
    """The config file: WAN = the outside interface, LAN = the LAN interface, mappings allowed only for
    the LAN's own addresses to ports >= 1024, lifetimes down to ``min_lifetime`` seconds (PCP; NAT-PMP
    takes the lifetime it is asked for), UPnP clients limited to mapping to themselves (secure_mode).
    Without ``natpmp`` the daemon answers UPnP-IGD only (UDP 5351 closed: NAT-PMP and PCP go unanswered)."""
    return f"""\
ext_ifname={router.wan_if}
listening_ip={router.lan_if}
http_port={HTTP_PORT}
enable_upnp=yes
enable_natpmp={"yes" if natpmp else "no"}
ipv6_disable=yes
secure_mode=yes
system_uptime=no
uuid={device_uuid}
upnp_table_name={TABLE}
upnp_nat_table_name={TABLE}
upnp_forward_chain={DAEMON_CHAINS[0]}
upnp_nat_chain={DAEMON_CHAINS[1]}
upnp_nat_postrouting_chain={DAEMON_CHAINS[2]}
min_lifetime={min_lifetime}
max_lifetime=86400
allow 1024-65535 {router.lan_net} 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""


class Miniupnpd:
    """miniupnpd in the router's namespace; :meth:`start` waits until it listens."""

    def __init__(self, router: NatRouter, workdir: Path, natpmp: bool = True, refuses: bool = False) -> None:
        binary = miniupnpd_binary()
        if binary is None:
            raise LabError("miniupnpd is not installed")
        self.router = router
        self.binary = binary
        self.config_path = workdir / "miniupnpd.conf"
        self.pid_path = workdir / "miniupnpd.pid"
        self.config = miniupnpd_config(router, str(uuid.uuid4()), natpmp=natpmp)
        #: The last line it logs once it listens on everything it was configured for.
        self.ready_line = READY_LINE if natpmp else UPNP_READY_LINE
        #: Its outside address is private or shared: it logs REFUSED_LINE and maps nothing.
        self.refuses = refuses
        self.config_path.write_text(self.config)
        self.proc: Proc | None = None

    def start(self) -> None:
        """Start in the foreground; fail with its log if it exits, or if it refuses to forward when it
        should not (or forwards when it should refuse)."""
        argv = (self.binary, "-f", self.config_path, "-d", "-P", self.pid_path)
        self.proc = self.router.popen(*argv, label=f"{self.router.name}:miniupnpd")
        self.proc.expect(self.ready_line, "stderr")
        refused = any(REFUSED_LINE in line for line in self.proc.lines("stderr"))
        if refused != self.refuses:
            raise LabError(f"miniupnpd {'will not' if refused else 'will'} forward ports\n{self.proc.dump()}")

    def stop(self) -> None:
        """Stop the daemon and flush its chains, as Debian's service does after it exits."""
        if self.proc is not None:
            self.proc.stop()
        for chain in DAEMON_CHAINS:
            self.router.run("nft", "flush", "chain", "inet", TABLE, chain)

    def restart(self) -> None:
        """A router reboot as far as port mapping goes: every mapping is forgotten, the epoch starts over."""
        self.stop()
        self.start()

    def rules(self, chain: str) -> list[str]:
        """The rules of one chain of the table, one line each."""
        out = self.router.run("nft", "list", "chain", "inet", TABLE, chain).stdout
        body = out.split("{", 2)[2].rsplit("}", 2)[0]  # table { chain { body } }
        return [line.strip() for line in body.splitlines() if line.strip()]

    def forwards(self) -> set[tuple[str, int, str, int]]:
        """miniupnpd's port forwards: ``(proto, external port, internal ip, internal port)`` each."""
        found = set()
        for rule in self.rules("prerouting_miniupnpd"):
            match = _DNAT.search(rule)
            if match is None:
                raise LabError(f"unexpected rule in prerouting_miniupnpd: {rule!r}")
            proto, eport, iaddr, iport = match.groups()
            found.add((_PROTO.get(proto, proto), int(eport), iaddr, int(iport)))
        return found

    def expect_log(self, pattern: str) -> str:
        """Wait (bounded) for the daemon's next log line matching ``pattern``."""
        if self.proc is None:
            raise LabError("miniupnpd not started")
        return self.proc.expect(pattern, "stderr")

    def log(self) -> str:
        return self.proc.dump() if self.proc is not None else "(miniupnpd not started)"


@dataclass
class HomeNet:
    """``home`` behind ``router`` (and its ``daemon``, or None), ``visitor`` on the outside segment."""

    lab: Lab
    router: NatRouter
    home: Host
    visitor: Host
    outside: Segment
    lan: Segment
    daemon: Miniupnpd | None
    #: The carrier's NAT in front of ``router`` (``behind_nat``), holding the public address; else None.
    carrier: NatRouter | None = None

    @property
    def miniupnpd(self) -> Miniupnpd:
        assert self.daemon is not None, "this router runs no miniupnpd"
        return self.daemon

    def describe(self) -> str:
        """The daemon's log and the router's table, for failure messages."""
        table = self.router.run("nft", "list", "table", "inet", TABLE, check=False).stdout
        log = self.daemon.log() if self.daemon is not None else "(no miniupnpd on this router)"
        return f"{log}\n--- nft table inet {TABLE}:\n{table}"


def home_router(
    lab: Lab,
    workdir: Path,
    daemon: bool = True,
    natpmp: bool = True,
    behind_nat: bool = False,
    nat_mode: NatMode = "masquerade",
) -> HomeNet:
    """Build the home network (module doc); with ``daemon``, start miniupnpd and wait until it listens
    (without ``natpmp``: a router that answers UPnP-IGD only). With ``behind_nat`` the home router's
    outside is ROUTER_SHARED on a carrier segment behind a second NAT router, ``carrier``, whose own
    outside is ROUTER_OUT (double NAT): miniupnpd there refuses every mapping. ``nat_mode``: the home
    router's outbound NAT (`Lab.nat_router`); "random-fully" makes it symmetric, so that no punched hole
    gets through it and only a port it maps does."""
    outside = lab.segment("outside", OUTSIDE_NET)
    lan = lab.segment("lan", LAN_NET)
    carrier = None
    if behind_nat:
        shared = lab.segment("carrier", CARRIER_NET)
        carrier = lab.nat_router("carrier", wan=(outside, ROUTER_OUT), lan=(shared, CARRIER_LAN))
        router = lab.nat_router("router", wan=(shared, ROUTER_SHARED), lan=(lan, ROUTER_LAN))
        lab.route(router, "default", via=CARRIER_LAN)
    else:
        router = lab.nat_router("router", wan=(outside, ROUTER_OUT), lan=(lan, ROUTER_LAN), mode=nat_mode)
    _load_nft(router, firewall_ruleset(router.lan_if))
    visitor = lab.host("visitor")
    lab.attach(visitor, outside, VISITOR_IP)
    home = lab.host("home")
    lab.attach(home, lan, HOME_IP)
    lab.route(home, "default", via=ROUTER_LAN)
    miniupnpd = None
    if daemon:
        miniupnpd = Miniupnpd(router, workdir, natpmp=natpmp, refuses=behind_nat)
        miniupnpd.start()
    return HomeNet(lab, router, home, visitor, outside, lan, miniupnpd, carrier)
