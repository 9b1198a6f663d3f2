"""Every path a visitor can take to one service, through one lossy, slow router: for the loss and delay tests
and ``bench/bench_faults.py``.

Two cone sites of the P2P lab's internet shape (`p2p_lab.build`): the owner at ``a`` (a TCP echo on its
loopback, and one ``pierce client`` with a tcp proxy on the server's public port `PUBLIC_PORT`, an stcp
proxy and an xtcp proxy for it), the visitor at ``b``, the pierce server on the core. The visitor host
reaches the echo four ways (`PATHS`):

- ``tunnel``: the server's public port (visitor -> server -> owner's client, a multiplexed work stream);
- ``stcp``: ``pierce visit`` of the stcp proxy, through the server;
- ``direct-tcp``: ``pierce visit --p2p`` of the xtcp proxy, its ready direct TCP connection;
- ``quic``: an xtcp visitor with ``[p2p] direct_tcp = false``: a QUIC stream in the punched UDP hole.

`FaultsLab.impair` then acts on the owner's NAT router, which every one of these paths crosses once each
way (and so does an ``ssh -R`` from the owner host to an sshd on the server host): random loss of what it
receives from either side, and a fixed delay. Paths are set up before the impairment, so what is measured
is how each carries bytes through it (punching under loss is `test_p2p_matrix`'s). The hosts send
wire-sized packets (their segmentation offloads off, `ethtool -K`): a veth otherwise carries a TCP or
UDP_SEGMENT burst of up to 64 KiB to the router as one packet, where a 1 % loss would drop 1 % of the
bursts, whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from support.tunnel import TOKEN, write_toml

from .lab import Lab, LabError, Proc
from .p2p_cells import CONTROL_PORT, SECRET, SERVICE_PORT, VISIT_PORT, PierceLab, proxy_name, verdict
from .p2p_lab import SiteSpec, build

PUBLIC_PORT = 6000
PATHS = ("tunnel", "stcp", "direct-tcp", "quic")


class FaultsLab:
    """The topology of the module doc with every process up and every path checked direct where it should
    be (`paths_up`)."""

    def __init__(self, lab: Lab, workdir: Path, tcp_congestion_control: str = "") -> None:
        self.plab = build(lab, [SiteSpec("a", "cone"), SiteSpec("b", "cone")])
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        for host in (self.plab.server, *(site.host for site in self.plab.sites.values())):
            for iface, _ in host.addrs.values():
                host.run("ethtool", "-K", iface, "tso", "off", "gso", "off", "gro", "off")
            if tcp_congestion_control:  # a namespace starts with the machine's; sockets take it when made
                host.run("sysctl", "-qw", f"net.ipv4.tcp_congestion_control={tcp_congestion_control}")
        self.pl = PierceLab(self.plab, workdir)
        self.pl.start_server()
        self.owner_site, visitor_site = self.plab.sites["a"], self.plab.sites["b"]
        self.owner, self.visitor = self.owner_site.host, visitor_site.host
        self.echo = self.owner.helper("tcp_echo.py", "--host", "127.0.0.1", "--port", SERVICE_PORT)
        self.echo.ready_port()
        name = proxy_name(self.owner)
        proxies = [
            {"type": "xtcp", "name": name, "local_port": SERVICE_PORT, "secret_key": SECRET},
            {"type": "stcp", "name": f"{name}-relay", "local_port": SERVICE_PORT, "secret_key": SECRET},
            {"type": "tcp", "name": f"{name}-tcp", "local_port": SERVICE_PORT, "remote_port": PUBLIC_PORT},
        ]
        state = workdir / "owner"
        state.mkdir(parents=True)
        conf = write_toml(
            state / "client.toml",
            {
                "server_addr": self.plab.server_ip,
                "server_port": CONTROL_PORT,
                "token": TOKEN,
                "client_id": "owner",
                "proxies": proxies,
            },
        )
        from .p2p_lab import event, run_pierce

        self.client = run_pierce(self.owner, state, "client", "-c", conf)
        for p in proxies:
            event(self.client, "proxy.ready", timeout=20, proxy=p["name"])
        self.ports = {"stcp": VISIT_PORT + 1, "direct-tcp": VISIT_PORT, "quic": VISIT_PORT + 2}
        self.visitors: dict[str, Proc] = {
            "stcp": self.pl.visitor(self.visitor, self.owner, stcp=True, port=self.ports["stcp"]),
            "direct-tcp": self.pl.visitor(self.visitor, self.owner, port=self.ports["direct-tcp"]),
            "quic": self.pl.visitor(self.visitor, self.owner, port=self.ports["quic"], direct_tcp=False),
        }
        for path in ("direct-tcp", "quic"):
            got = verdict(self.visitors[path])
            if got.path != "direct udp":
                raise LabError(f"{path}: no direct UDP path: {got}\n{self.visitors[path].dump()}")
        tcp = self.visitors["direct-tcp"].expect_json("stderr", timeout=40, event="p2p.direct", proto="tcp")
        if tcp.get("conn_path") != "direct tcp":
            raise LabError(f"no direct TCP connection: {tcp}")

    def target(self, path: str) -> str:
        """Where the visitor host connects for ``path``."""
        if path == "tunnel":
            return f"{self.plab.server_ip}:{PUBLIC_PORT}"
        return f"127.0.0.1:{self.ports[path]}"

    def impair(self, loss: float = 0.0, delay_ms: float = 0.0) -> None:
        """Loss and delay on the owner's router (replacing any set before)."""
        self.clear()
        self.plab.impair(self.owner_site, loss=loss, delay_ms=delay_ms)

    def clear(self) -> None:
        router = self.owner_site.router
        assert router is not None
        router.iptables("-t", "raw", "-F", "PREROUTING")
        line = self.plab.delay_lines.pop(self.owner_site.spec.name, None)
        if line is not None:
            line.stop()

    def transfer(self, path: str, payload: Path, timeout: float, target: str = "") -> dict[str, Any]:
        """``payload`` through ``path`` (or to ``target``, another way to the same echo) and back (sent,
        half-closed, read to EOF), on the visitor host; the helper's JSON result plus ``verified`` (every
        byte back, SHA-256 equal) and, for the visitors, the path their connection took."""
        data = payload.read_bytes()
        [result] = self.visitor.run_helper(
            "tcp_client.py", target or self.target(path), "--send", payload, "--timeout", timeout,
            timeout=timeout + 30,
        )  # fmt: skip
        result["verified"] = (
            result["result"] == "ok"
            and result["send_error"] is None
            and result["received"] == len(data)
            and result["sha256"] == hashlib.sha256(data).hexdigest()
        )
        if path in self.visitors:
            opened = self.visitors[path].expect_json("stderr", timeout=10, event="visitor.open")
            result["conn_path"] = opened.get("conn_path")
        return result
