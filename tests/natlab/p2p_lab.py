"""Sites of every NAT kind around a public core, for peer-to-peer tests and the P2P benchmark.

A *site* is one or more hosts and what stands between them and the public network. Kinds:

- ``none``: a public host, no NAT;
- ``cone``: Linux MASQUERADE (port-preserving, endpoint-independent mapping in practice, filtering by
  address and port);
- ``full-cone``: endpoint-independent mapping and filtering (the lab's nft full-cone map);
- ``symmetric``: MASQUERADE ``--random-fully`` (a new random public port per destination);
- ``udp-blocked``: a cone whose router forwards no UDP at all (STUN and punching fail; TCP works);
- ``syn-drop``: a cone whose router drops TCP SYNs arriving on its WAN, replies to its own SYNs
  included (TCP simultaneous open cannot work; UDP punches as through a cone).

A site with ``hosts=2`` puts two hosts on one LAN behind one router (the "same NAT" case); with
``hairpin=True`` its router (then a full-cone one: MASQUERADE mappings never hairpin on Linux) also
loops packets from the LAN to its own public address back into the LAN.

Two shapes (:func:`build`):

``internet``: each site behind its own plain "ISP" router, the ISPs and the server on a core segment::

    host 10.{i+1}.0.10 ─ lan-N ─ nat-N 203.0.113.{16i+2} ─ acc-N ─ isp-N 198.51.100.{i+1} ─┐
                                                                                          core ─ server
    (kind none: the host itself is 203.0.113.{16i+2} on acc-N)                                198.51.100.200

A probe with TTL 2 leaves its own NAT and dies at its ISP, before any other site's NAT: the way pierce
opens its own mapping first. Every ISP and the server route each site's /28 to that site's ISP.

``flat``: every NAT router, public host and the server (203.0.113.250) on one bridge ``wan``
(203.0.113.0/24). There is no router between two NATs, so no TTL can stop a probe short of the peer's
NAT; what works in this shape and not in the other is the effect of that alone.

Addresses are the same in both shapes: site ``i`` (its position in the list) has LAN ``10.{i+1}.0.0/24``
(gateway ``.1``, hosts ``.10``, ``.11``) and public address ``203.0.113.{16i+2}``; at most 15 sites.

Impairments (:meth:`P2pLab.impair`) act on a site's router, on every packet it receives from either side:
random loss (``-m statistic --mode random``) and a fixed delay (``tests/helpers/delay_line.py`` holding
packets of an NFQUEUE, since this kernel has no netem).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .lab import Host, Lab, LabError, NatMode, NatRouter, Proc, Segment

SiteKind = Literal["none", "cone", "full-cone", "symmetric", "udp-blocked", "syn-drop"]
Shape = Literal["internet", "flat"]

KINDS: tuple[SiteKind, ...] = ("none", "cone", "full-cone", "symmetric", "udp-blocked", "syn-drop")
NAT_MODES: dict[SiteKind, NatMode] = {
    "cone": "masquerade",
    "full-cone": "full-cone",
    "symmetric": "random-fully",
    "udp-blocked": "masquerade",
    "syn-drop": "masquerade",
}
MAX_SITES = 15
CORE_SERVER_IP, FLAT_SERVER_IP = "198.51.100.200", "203.0.113.250"


@dataclass(frozen=True)
class SiteSpec:
    """What to build: a site's name (lowercase, digits, ``-``), its kind, how many hosts share its LAN."""

    name: str
    kind: SiteKind
    hosts: int = 1
    hairpin: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown site kind {self.kind!r}")
        if not 1 <= self.hosts <= (1 if self.kind == "none" else 2):
            raise ValueError(f"site {self.name}: {self.hosts} hosts (a public site has one, a LAN two)")
        if self.hairpin and self.kind != "full-cone":
            raise ValueError(f"site {self.name}: hairpin needs kind full-cone (MASQUERADE never hairpins)")


@dataclass
class Site:
    spec: SiteSpec
    index: int
    public_ip: str
    hosts: list[Host]
    router: NatRouter | None = None
    isp: Host | None = None

    @property
    def host(self) -> Host:
        return self.hosts[0]

    @property
    def kind(self) -> SiteKind:
        return self.spec.kind


@dataclass
class P2pLab:
    """A built topology: its sites by name and the server host on the core."""

    lab: Lab
    shape: Shape
    sites: dict[str, Site]
    server: Host
    server_ip: str
    delay_lines: dict[str, Proc] = field(default_factory=dict)

    def routers(self) -> list[Host]:
        """Every NAT and ISP router (where conntrack state lives)."""
        nats = [site.router for site in self.sites.values() if site.router is not None]
        isps = [site.isp for site in self.sites.values() if site.isp is not None]
        return [*nats, *isps]

    def flush_conntrack(self, proto: Literal["udp", "all"] = "all", sites: Sequence[Site] = ()) -> None:
        """Forget the routers' conntrack entries (all of them, or UDP only, which leaves TCP sessions
        such as a client's control connection standing); of the given sites' routers, or all."""
        if shutil.which("conntrack") is None:
            raise LabError("the P2P lab needs conntrack (Debian package conntrack) on PATH")
        routers = [r for site in sites for r in (site.router, site.isp) if r] if sites else self.routers()
        args = ["-D", "-p", "udp"] if proto == "udp" else ["-F"]
        for router in routers:
            # conntrack -D exits 1 when nothing matched; -F never does.
            router.run("conntrack", *args, check=False)

    def conntrack_count(self, site: Site) -> int:
        assert site.router is not None
        return int(site.router.run("conntrack", "-C").stdout.strip())

    def server_bytes(self) -> tuple[int, int]:
        """(received, sent) bytes of the server's only interface, from its kernel counters."""
        iface = self.server.iface("core" if self.shape == "internet" else "wan")
        stats = f"/sys/class/net/{iface}/statistics"
        out = self.server.run("cat", f"{stats}/rx_bytes", f"{stats}/tx_bytes").stdout.split()
        return int(out[0]), int(out[1])

    def impair(self, site: Site, loss: float = 0.0, delay_ms: float = 0.0) -> None:
        """Drop ``loss`` of the packets the site's router receives (either side) and delay the rest by
        ``delay_ms``: so a path through it loses that share and waits that long each way."""
        router = site.router
        if router is None:
            raise ValueError(f"site {site.spec.name} has no router to impair")
        if loss:
            router.iptables(
                "-t", "raw", "-I", "PREROUTING", "1",
                "-m", "statistic", "--mode", "random", "--probability", str(loss), "-j", "DROP",
            )  # fmt: skip
        if delay_ms:
            line = router.helper("delay_line.py", "--queue", "0", "--delay-ms", delay_ms)
            line.ready_port()
            self.delay_lines[site.spec.name] = line
            # Before conntrack (raw) and appended after the loss rule: a dropped packet is never queued.
            router.iptables("-t", "raw", "-A", "PREROUTING", "-j", "NFQUEUE", "--queue-num", "0")


def build(lab: Lab, specs: Sequence[SiteSpec], shape: Shape = "internet") -> P2pLab:
    """Build ``specs`` (see the module doc for the address plan) around a server host; no process runs."""
    if not 1 <= len(specs) <= MAX_SITES:
        raise ValueError(f"1 to {MAX_SITES} sites, got {len(specs)}")
    if shape == "internet":
        core = lab.segment("core", "198.51.100.0/24")
        server_ip = CORE_SERVER_IP
    else:
        core = lab.segment("wan", "203.0.113.0/24")
        server_ip = FLAT_SERVER_IP
    server = lab.host("server")
    lab.attach(server, core, server_ip)
    sites = {spec.name: _site(lab, spec, index, core, shape) for index, spec in enumerate(specs)}
    if shape == "internet":
        # Every ISP and the server know which ISP holds each site's /28.
        routes = {
            site.spec.name: (_access_net(site.index), f"198.51.100.{site.index + 1}")
            for site in sites.values()
        }
        for site in sites.values():
            assert site.isp is not None
            _ip_batch(
                site.isp,
                [
                    f"route add {net} via {via}"
                    for name, (net, via) in routes.items()
                    if name != site.spec.name
                ],
            )
        _ip_batch(server, [f"route add {net} via {via}" for net, via in routes.values()])
    return P2pLab(lab, shape, sites, server, server_ip)


def _access_net(index: int) -> str:
    return f"203.0.113.{16 * index}/28"


def _site(lab: Lab, spec: SiteSpec, index: int, core: Segment, shape: Shape) -> Site:
    public_ip = f"203.0.113.{16 * index + 2}"
    isp: Host | None = None
    if shape == "internet":
        access = lab.segment(f"acc-{spec.name}", _access_net(index))
        isp = lab.host(f"isp-{spec.name}")
        lab.attach(isp, core, f"198.51.100.{index + 1}")
        lab.attach(isp, access, f"203.0.113.{16 * index + 1}")
        isp.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        uplink: Segment = access
        gateway: str | None = f"203.0.113.{16 * index + 1}"
    else:
        uplink, gateway = core, None
    if spec.kind == "none":
        host = lab.host(spec.name)
        lab.attach(host, uplink, public_ip)
        if gateway:
            lab.route(host, "default", gateway)
        return Site(spec, index, public_ip, [host], isp=isp)
    lan = lab.segment(f"lan-{spec.name}", f"10.{index + 1}.0.0/24")
    lan_gw = f"10.{index + 1}.0.1"
    router = lab.nat_router(
        f"nat-{spec.name}",
        (uplink, public_ip),
        (lan, lan_gw),
        mode=NAT_MODES[spec.kind],
        hairpin=spec.hairpin,
    )
    if gateway:
        lab.route(router, "default", gateway)
    if spec.kind == "udp-blocked":
        router.iptables("-A", "FORWARD", "-p", "udp", "-j", "DROP")
    elif spec.kind == "syn-drop":
        router.iptables("-A", "FORWARD", "-i", router.wan_if, "-p", "tcp", "--syn", "-j", "DROP")
    hosts = []
    for k in range(spec.hosts):
        host = lab.host(spec.name if k == 0 else f"{spec.name}-{k + 1}")
        lab.attach(host, lan, f"10.{index + 1}.0.{10 + k}")
        lab.route(host, "default", lan_gw)
        hosts.append(host)
    return Site(spec, index, public_ip, hosts, router=router, isp=isp)


def _ip_batch(host: Host, commands: list[str]) -> None:
    """Many ``ip`` commands in one process (``ip -batch``): routes for a dozen sites in one exec."""
    if not commands:
        return
    argv = ["ip", "-n", host.ns, "-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"ip -batch in {host.name} failed: {proc.stderr.strip()}")


# -- pierce processes in the lab ---------------------------------------------------------------------------


def run_pierce(host: Host, state: Path, *args: str | Path, **kw: Any) -> Proc:
    """``python -m pierce --json-logs ARGS`` in ``host`` with its own state directory; JSON logs on stderr."""
    env = {**os.environ, "PIERCE_STATE_DIR": str(state)}
    return host.python(
        "-m", "pierce", "--json-logs", *map(str, args), env=env, label=f"{host.name}:pierce", **kw
    )


def event(proc: Proc, name: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """The next log event ``name`` of ``proc`` (events before it are consumed)."""
    return proc.expect_json("stderr", timeout=timeout, event=name, **fields)
