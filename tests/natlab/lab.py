"""A small network-namespace lab: hosts, L2 segments and real Linux NAT routers.

Everything lives in namespaces named ``pz-<pid>-<rand>-<name>``; the root namespace is never touched (veth
pairs are created inside a host namespace with their peer end placed directly in the segment namespace).
Interface names only need to be unique inside their own namespace, so they are short and predictable:
``eth0``, ``eth1``... on hosts, ``br0`` plus ``p0``, ``p1``... in a segment.

    with Lab() as lab:
        wan = lab.segment("wan", "203.0.113.0/24")
        lan = lab.segment("lan", "192.168.1.0/24")
        server = lab.host("server")
        lab.attach(server, wan, "203.0.113.10")
        router = lab.nat_router("nat", wan=(wan, "203.0.113.1"), lan=(lan, "192.168.1.1"))
        client = lab.host("client")
        lab.attach(client, lan, "192.168.1.10")
        lab.route(client, "default", via="192.168.1.1")
        echo = server.helper("udp_echo.py")            # tracked process, stopped at teardown
        port = echo.ready_port()                        # waits for its "READY <port>" line
        [reply] = client.run_helper("udp_client.py", f"203.0.113.10:{port}")
        assert echo.expect_json(event="datagram")["peer"][0] == "203.0.113.1"

Teardown (``close()``, run by ``__exit__`` even on exceptions and KeyboardInterrupt) stops tracked processes
(SIGTERM, then SIGKILL after a bounded wait), kills anything else still running inside the lab's namespaces
and deletes the namespaces, which removes their veths and bridges with them. :func:`sweep_stale` removes
namespaces left behind by a lab whose process died without tearing down (``kill -9``, power loss).

NAT flavours (:meth:`Lab.nat_router`), all IPv4 and all built from netfilter in the router's namespace:

- ``masquerade``: ``iptables -t nat -A POSTROUTING -o WAN -j MASQUERADE``. Linux keeps the source port when
  the resulting tuple is free, so mapping is endpoint-independent in practice; filtering is address-and-port
  dependent (only conntrack replies come back in).
- ``random-fully``: the same rule with ``--random-fully``: every new flow gets a random external port, i.e.
  address-and-port-dependent ("symmetric") mapping.
- ``full-cone``: endpoint-independent mapping *and* filtering. ``SNAT --to-source WAN_IP`` (port preserving)
  plus an nftables dynamic map learnt from outgoing traffic: every original-direction UDP packet leaving
  the WAN interface records ``external port -> (LAN address, LAN port)`` (refreshed by each packet,
  expiring after ``FULL_CONE_TIMEOUT`` seconds), and a prerouting DNAT rule sends any new inbound UDP flow
  to ``WAN_IP:external port`` to the recorded LAN endpoint, whoever sends it. A port the LAN has never sent
  from stays closed. iptables cannot express "DNAT to wherever this port was last mapped from", hence nft.
  UDP only: TCP behind a full-cone router is filtered as under ``masquerade``.
- ``hairpin=True``: DNAT rules (port forwards and the full-cone map) also match packets arriving from the
  LAN, and ``POSTROUTING -o LAN -m conntrack --ctstate DNAT -j SNAT --to-source WAN_IP`` rewrites the source
  of such LAN->WAN_IP->LAN flows so replies go back through the router (as RFC 4787 REQ-9 wants, the
  target sees the router's public address, not the LAN address of its peer).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PREFIX = "pz-"
HELPERS = Path(__file__).resolve().parent.parent / "helpers"
FULL_CONE_TIMEOUT = 120
STOP_GRACE_S = 3.0
DEFAULT_TIMEOUT_S = 10.0

NatMode = Literal["masquerade", "random-fully", "full-cone"]
Proto = Literal["tcp", "udp"]
Completed = subprocess.CompletedProcess[str]
Arg = str | int | Path
Stream = Literal["stdout", "stderr"]


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def sh(*cmd: str, check: bool = True, timeout: float = 30.0) -> Completed:
    """Run a command in the current (root) namespace, capturing text output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        output = proc.stderr.strip() or proc.stdout.strip()
        raise LabError(f"{' '.join(cmd)!r} exited {proc.returncode}: {output}")
    return proc


def missing_prerequisites() -> str | None:
    """Why a lab cannot run here, or None. Actually creates and deletes a probe namespace."""
    if os.geteuid() != 0:
        return "natlab needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "nft"):
        if shutil.which(tool) is None:
            return f"natlab needs {tool!r} on PATH"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        sh("ip", "netns", "add", probe)
        try:
            sh("ip", "netns", "exec", probe, "iptables", "-t", "nat", "-S")
            sh("ip", "netns", "exec", probe, "nft", "list", "ruleset")
        finally:
            sh("ip", "netns", "del", probe, check=False)
    except (LabError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create network namespaces with iptables/nft here: {exc}"
    return None


def lab_namespaces() -> list[str]:
    """All namespaces that carry the lab prefix, from any run."""
    out = sh("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def _kill_namespace(ns: str) -> None:
    """SIGKILL every process still inside ``ns``, then delete it."""
    pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    sh("ip", "netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """Delete lab namespaces whose creating process (the pid in the name) no longer exists."""
    removed = []
    for ns in lab_namespaces():
        match = re.match(rf"{re.escape(PREFIX)}(\d+)-", ns)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            _kill_namespace(ns)
            removed.append(ns)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Proc:
    """A process running in a lab namespace, with its output collected line by line.

    Lines are read by background threads; ``expect`` waits (bounded) for a matching line, consuming the
    lines before it, so successive calls see successive events. ``lines`` keeps everything for asserts.
    """

    def __init__(self, argv: list[str], popen: subprocess.Popen[str], label: str) -> None:
        self.argv = argv
        self.popen = popen
        self.label = label
        self._lines: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
        self._cursor: dict[Stream, int] = {"stdout": 0, "stderr": 0}
        self._eof: dict[Stream, bool] = {"stdout": popen.stdout is None, "stderr": popen.stderr is None}
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        for name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            if pipe is not None:
                thread = threading.Thread(target=self._pump, args=(name, pipe), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, stream: Stream, pipe: Any) -> None:
        for line in pipe:
            with self._cond:
                self._lines[stream].append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof[stream] = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def lines(self, stream: Stream = "stdout") -> list[str]:
        with self._cond:
            return list(self._lines[stream])

    def expect(
        self,
        match: str | Callable[[str], bool],
        stream: Stream = "stdout",
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> str:
        """Wait for the next line matching a regex (``re.search``) or predicate; return it."""
        test = (lambda line: re.search(match, line) is not None) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                lines = self._lines[stream]
                while self._cursor[stream] < len(lines):
                    line = lines[self._cursor[stream]]
                    self._cursor[stream] += 1
                    if test(line):
                        return line
                if self._eof[stream]:
                    raise LabError(f"{self.label}: {stream} ended, no match for {match!r}\n{self.dump()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LabError(f"{self.label}: no line matched {match!r} in {timeout}s\n{self.dump()}")
                self._cond.wait(remaining)

    def expect_json(
        self, stream: Stream = "stdout", timeout: float = DEFAULT_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """Wait for the next JSON-object line whose keys equal ``fields`` (``event="map.listening"``)."""

        def test(line: str) -> bool:
            doc = _json_object(line)
            return doc is not None and all(doc.get(k) == v for k, v in fields.items())

        doc = _json_object(self.expect(test, stream, timeout))
        assert doc is not None
        return doc

    def json_lines(self, stream: Stream = "stdout") -> list[dict[str, Any]]:
        return [doc for line in self.lines(stream) if (doc := _json_object(line)) is not None]

    def ready_port(self, timeout: float = DEFAULT_TIMEOUT_S) -> int:
        """Wait for the helpers' ``READY <port>`` line and return the port."""
        line = self.expect(r"^READY \d+$", "stdout", timeout)
        return int(line.split()[1])

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds. Returns the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(grace)
        for thread in self._threads:
            thread.join(grace)
        return self.popen.returncode

    def dump(self) -> str:
        with self._cond:
            out = "\n".join(self._lines["stdout"][-40:])
            err = "\n".join(self._lines["stderr"][-40:])
        return f"--- {self.label} argv: {self.argv}\n--- stdout:\n{out}\n--- stderr:\n{err}"


def _json_object(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class Segment:
    """An L2 segment: bridge ``br0`` alone in its own namespace; hosts attach veths to it."""

    name: str
    ns: str
    network: ipaddress.IPv4Network
    ports: int = 0


@dataclass
class Host:
    """A network namespace with ``lo`` up. ``addrs`` maps segment name -> (interface, address)."""

    name: str
    ns: str
    lab: Lab = field(repr=False)
    addrs: dict[str, tuple[str, str]] = field(default_factory=dict)

    def ip(self, segment: Segment | str) -> str:
        """This host's address on ``segment``."""
        return self.addrs[segment if isinstance(segment, str) else segment.name][1]

    def iface(self, segment: Segment | str) -> str:
        return self.addrs[segment if isinstance(segment, str) else segment.name][0]

    def run(self, *cmd: Arg, check: bool = True, timeout: float = 30.0) -> Completed:
        """Run ``cmd`` inside this namespace and wait for it (text output captured)."""
        return sh("ip", "netns", "exec", self.ns, *map(str, cmd), check=check, timeout=timeout)

    def popen(self, *cmd: Arg, label: str | None = None, **kw: Any) -> Proc:
        """Start ``cmd`` inside this namespace, tracked by the lab and stopped at teardown.

        stdout and stderr are piped and collected by :class:`Proc` unless overridden in ``kw``.
        """
        argv = ["ip", "netns", "exec", self.ns, *map(str, cmd)]
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        env = dict(kw.pop("env", None) or os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        popen = subprocess.Popen(argv, text=True, env=env, **kw)
        proc = Proc(argv, popen, label or f"{self.name}:{Path(str(cmd[0])).name}")
        self.lab.procs.append(proc)
        return proc

    def python(self, *args: Arg, **kw: Any) -> Proc:
        """``sys.executable -u *args`` in this namespace: a script path, ``-m module ...`` or ``-c code``."""
        return self.popen(sys.executable, "-u", *args, **kw)

    def helper(self, script: str, *args: Arg, **kw: Any) -> Proc:
        """Run ``tests/helpers/<script>`` with ``args`` (see the helper scripts for their options)."""
        return self.python(HELPERS / script, *map(str, args), label=f"{self.name}:{script}", **kw)

    def run_helper(self, script: str, *args: Arg, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Run a one-shot helper to completion; return its JSON stdout lines."""
        proc = self.run(sys.executable, HELPERS / script, *map(str, args), timeout=timeout)
        return [doc for line in proc.stdout.splitlines() if (doc := _json_object(line)) is not None]


@dataclass
class NatRouter(Host):
    """A host forwarding between a LAN and a WAN segment through netfilter NAT."""

    wan_if: str = ""
    wan_ip: str = ""
    lan_if: str = ""
    lan_ip: str = ""
    lan_net: str = ""
    mode: NatMode = "masquerade"
    hairpin: bool = False

    def iptables(self, *args: str) -> None:
        self.run("iptables", "-w", *args)

    def forward(self, proto: Proto, port: int, to_ip: str, to_port: int | None = None) -> None:
        """Port forward: ``WAN_IP:port`` -> ``to_ip:to_port`` (also from the LAN when ``hairpin``)."""
        iface = [] if self.hairpin else ["-i", self.wan_if]
        target = f"{to_ip}:{to_port or port}"
        self.iptables(
            "-t", "nat", "-A", "PREROUTING", *iface, "-d", self.wan_ip, "-p", proto, "--dport", str(port),
            "-j", "DNAT", "--to-destination", target,
        )  # fmt: skip

    def rules(self) -> str:
        """The router's whole netfilter ruleset, for failure messages."""
        return self.run("nft", "list", "ruleset").stdout


class Lab:
    """Owns every namespace and process of one topology; a context manager that always cleans up."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or f"{os.getpid()}-{secrets.token_hex(2)}"
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.hosts: dict[str, Host] = {}
        self.segments: dict[str, Segment] = {}
        self._closed = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_ns(self, name: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            raise ValueError(f"lab names are lowercase letters, digits and '-', got {name!r}")
        ns = f"{PREFIX}{self.tag}-{name}"
        if ns in self.namespaces:
            raise ValueError(f"{name!r} already exists in this lab")
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # New namespaces copy IPv4 conf (forwarding included) from the root namespace: pin it off. IPv6 off
        # keeps the segments quiet (no DAD, router solicitations or MLD).
        ipv6_off = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0", *ipv6_off)
        return ns

    def host(self, name: str) -> Host:
        """A new namespace with ``lo`` up, IPv4 forwarding off and IPv6 disabled."""
        host = Host(name, self._new_ns(name), self)
        self.hosts[name] = host
        return host

    def segment(self, name: str, cidr: str) -> Segment:
        """A new L2 segment (a bridge in its own namespace) for addresses in ``cidr``."""
        ns = self._new_ns(f"seg-{name}")
        sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns, "link", "set", "br0", "up")
        segment = Segment(name, ns, ipaddress.IPv4Network(cidr))
        self.segments[name] = segment
        return segment

    def attach(self, host: Host, segment: Segment, ip: str) -> str:
        """Connect ``host`` to ``segment`` with address ``ip`` (prefix from the segment); return the iface."""
        if ipaddress.IPv4Address(ip) not in segment.network:
            raise ValueError(f"{ip} is not in segment {segment.name} ({segment.network})")
        iface, port = f"eth{len(host.addrs)}", f"p{segment.ports}"
        segment.ports += 1
        veth = ("type", "veth", "peer", "name", port, "netns", segment.ns)
        sh("ip", "-n", host.ns, "link", "add", iface, *veth)
        sh("ip", "-n", segment.ns, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", host.ns, "addr", "add", f"{ip}/{segment.network.prefixlen}", "dev", iface)
        sh("ip", "-n", host.ns, "link", "set", iface, "up")
        host.addrs[segment.name] = (iface, ip)
        return iface

    def route(self, host: Host, dest: str, via: str) -> None:
        """``ip route add dest via via`` in ``host`` (``dest`` is a CIDR or ``"default"``)."""
        sh("ip", "-n", host.ns, "route", "add", dest, "via", via)

    def nat_router(
        self,
        name: str,
        wan: tuple[Segment, str],
        lan: tuple[Segment, str],
        mode: NatMode = "masquerade",
        hairpin: bool = False,
    ) -> NatRouter:
        """A NAT router between ``lan`` and ``wan`` (each ``(segment, address)``); see the module doc."""
        if mode not in ("masquerade", "random-fully", "full-cone"):
            raise ValueError(f"unknown NAT mode {mode!r}")
        (wan_seg, wan_ip), (lan_seg, lan_ip) = wan, lan
        router = NatRouter(name, self._new_ns(name), self, mode=mode, hairpin=hairpin)
        self.hosts[name] = router
        router.wan_if, router.wan_ip = self.attach(router, wan_seg, wan_ip), wan_ip
        router.lan_if, router.lan_ip = self.attach(router, lan_seg, lan_ip), lan_ip
        router.lan_net = str(lan_seg.network)
        router.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        out = ["-t", "nat", "-A", "POSTROUTING", "-o", router.wan_if]
        if mode == "masquerade":
            router.iptables(*out, "-j", "MASQUERADE")
        elif mode == "random-fully":
            router.iptables(*out, "-j", "MASQUERADE", "--random-fully")
        else:
            router.iptables(*out, "-j", "SNAT", "--to-source", wan_ip)
            _load_nft(router, _full_cone_ruleset(router))
        if hairpin:
            random = ["--random-fully"] if mode == "random-fully" else []
            router.iptables(
                "-t", "nat", "-A", "POSTROUTING", "-o", router.lan_if, "-s", router.lan_net,
                "-m", "conntrack", "--ctstate", "DNAT", "-j", "SNAT", "--to-source", wan_ip, *random,
            )  # fmt: skip
        return router

    def close(self) -> None:
        """Stop processes, then delete namespaces. Idempotent; never raises for an already-gone thing."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        for ns in reversed(self.namespaces):
            _kill_namespace(ns)


# -- the shape of the internet ---------------------------------------------------------------------------

#: Addresses of `internet`: the two inside hosts and their NATs' public addresses.
A_IP, B_IP = "10.1.0.10", "10.2.0.10"
NAT_A_WAN, NAT_B_WAN = "203.0.113.2", "203.0.113.18"


@dataclass
class Internet:
    """Two sites behind their own NAT and ISP router, meeting on a core segment (see `internet`)."""

    lab: Lab
    a: Host
    b: Host
    nat_a: NatRouter
    nat_b: NatRouter
    core: Segment
    lan_a: Segment
    lan_b: Segment

    def core_host(self, name: str, ip: str) -> Host:
        """A host on the core (``198.51.100.0/24``, say a server) that reaches both sites' public sides."""
        host = self.lab.host(name)
        self.lab.attach(host, self.core, ip)
        self.lab.route(host, "203.0.113.0/28", "198.51.100.1")
        self.lab.route(host, "203.0.113.16/28", "198.51.100.2")
        return host

    def lan_host(self, name: str, ip: str, site: Literal["a", "b"] = "a") -> Host:
        """One more host on a site's LAN, behind the same NAT as ``a`` (or ``b``)."""
        host = self.lab.host(name)
        lan, gateway = (self.lan_a, "10.1.0.1") if site == "a" else (self.lan_b, "10.2.0.1")
        self.lab.attach(host, lan, ip)
        self.lab.route(host, "default", gateway)
        return host


def internet(lab: Lab, mode_b: NatMode = "masquerade") -> Internet:
    """The shape of the internet, not a flat lab:

        A 10.1.0.10 -> NAT A 203.0.113.2 -> ISP A -> core 198.51.100.0/24
                                                       <- ISP B <- NAT B 203.0.113.18 <- B 10.2.0.10

    NAT A is a MASQUERADE, NAT B one of ``mode_b``. Each NAT has a plain router (its "ISP") between it
    and the core, so a packet with TTL 2 leaves its NAT and dies at the ISP, before the other NAT. Built
    by `p2p_lab.build` (sites "a" and "b"; its server host on the core is left unused here).
    """
    from .p2p_lab import SiteSpec, build  # p2p_lab builds on this module

    kind_b = {"masquerade": "cone", "random-fully": "symmetric", "full-cone": "full-cone"}[mode_b]
    net = build(lab, [SiteSpec("a", "cone"), SiteSpec("b", kind_b)])  # type: ignore[arg-type]
    a, b = net.sites["a"], net.sites["b"]
    assert a.router is not None and b.router is not None
    assert (a.host.ip("lan-a"), b.host.ip("lan-b"), a.public_ip, b.public_ip) == (
        A_IP,
        B_IP,
        NAT_A_WAN,
        NAT_B_WAN,
    )
    segments = lab.segments
    return Internet(
        lab, a.host, b.host, a.router, b.router, segments["core"], segments["lan-a"], segments["lan-b"]
    )


def _full_cone_ruleset(router: NatRouter) -> str:
    inbound = "" if router.hairpin else f'iifname "{router.wan_if}" '
    return f"""
table ip natlab_full_cone {{
    map mappings {{
        type inet_service : ipv4_addr . inet_service
        flags dynamic, timeout
        timeout {FULL_CONE_TIMEOUT}s
    }}
    chain learn {{
        type filter hook postrouting priority srcnat + 10; policy accept;
        oifname "{router.wan_if}" ct direction original ip saddr {router.wan_ip} meta l4proto udp \\
            update @mappings {{ udp sport : ct original ip saddr . ct original proto-src }}
    }}
    chain inbound {{
        type nat hook prerouting priority dstnat; policy accept;
        {inbound}ip daddr {router.wan_ip} meta l4proto udp dnat ip to udp dport map @mappings
    }}
}}
"""


def _load_nft(host: Host, ruleset: str) -> None:
    argv = ["ip", "netns", "exec", host.ns, "nft", "-f", "-"]
    proc = subprocess.run(argv, input=ruleset, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"nft -f failed in {host.name}: {proc.stderr.strip()}\n{ruleset}")
