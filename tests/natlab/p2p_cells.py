"""The P2P matrix: one site per NAT kind and role, and one *cell* = an owner at one site visited from another.

Used by ``tests/natlab/test_p2p_matrix.py`` and ``bench/bench_p2p.py``. A cell starts, on the lab built by
:func:`matrix_lab`: a TCP echo on the owner host's loopback, the owner's ``pierce client`` with an
``xtcp`` proxy for it, and ``pierce visit --p2p`` on the visitor host; it waits for the visitor's verdict
on the direct path (``p2p.direct`` or ``p2p.failed``), then (optionally) moves a payload through the
visitor's port and back, reading the server's interface counters around the transfer, so a direct path
is shown not to cross the server. Every process of a cell is stopped when it ends, pass or fail, and the
routers' conntrack tables are flushed before the next one starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.tunnel import TOKEN, write_toml

from .lab import DEFAULT_TIMEOUT_S, Host, Lab, LabError, Proc, _json_object
from .p2p_lab import KINDS, P2pLab, Shape, Site, SiteKind, SiteSpec, build, event, run_pierce

CONTROL_PORT, SERVICE_PORT, VISIT_PORT = 7000, 7007, 9000
SECRET = "p2p lab secret 7"
#: How long a visitor may take to decide on its direct path (punch budget 10 s, plus start and login).
VERDICT_TIMEOUT_S = 40.0
SHORT = {"none": "pub", "cone": "cone", "full-cone": "full", "symmetric": "sym", "udp-blocked": "noudp",
         "syn-drop": "nosyn"}  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """An owner site and a visitor site of the matrix lab (the same site for the same-NAT cells)."""

    owner_kind: SiteKind
    visitor_kind: SiteKind
    same_nat: str = ""  # "", "no hairpin" or "hairpin"

    @property
    def name(self) -> str:
        if self.same_nat:
            return f"same NAT ({self.same_nat})"
        return f"{self.owner_kind} × {self.visitor_kind}"

    @property
    def id(self) -> str:
        if self.same_nat:
            return "same-nat-" + self.same_nat.replace(" ", "-")
        return f"{self.owner_kind}-x-{self.visitor_kind}"

    def sites(self, plab: P2pLab) -> tuple[Site, ...]:
        """The sites the cell uses (one for the same-NAT cells)."""
        if self.same_nat:
            return (plab.sites["same" if self.same_nat == "no hairpin" else "samehp"],)
        return plab.sites[f"{SHORT[self.owner_kind]}-o"], plab.sites[f"{SHORT[self.visitor_kind]}-v"]

    def hosts(self, plab: P2pLab) -> tuple[Host, Host]:
        """(owner host, visitor host) in the lab built by :func:`matrix_lab`."""
        sites = self.sites(plab)
        if self.same_nat:
            return sites[0].hosts[0], sites[0].hosts[1]
        return sites[0].host, sites[1].host


CELLS: tuple[Cell, ...] = (
    *(Cell(o, v) for o in KINDS for v in KINDS),
    Cell("cone", "cone", same_nat="no hairpin"),
    Cell("full-cone", "full-cone", same_nat="hairpin"),
)


def matrix_specs() -> list[SiteSpec]:
    """Two sites per kind (an owner's, ``-o``, and a visitor's, ``-v``) and two shared LANs: 14 sites."""
    specs = [SiteSpec(f"{SHORT[kind]}-{role}", kind) for kind in KINDS for role in ("o", "v")]
    specs.append(SiteSpec("same", "cone", hosts=2))
    specs.append(SiteSpec("samehp", "full-cone", hosts=2, hairpin=True))
    return specs


def matrix_lab(lab: Lab, shape: Shape = "internet") -> P2pLab:
    return build(lab, matrix_specs(), shape)


@dataclass
class Verdict:
    """What the visitor decided: the path new connections take and how it got there."""

    path: str  # "direct lan" | "direct udp" | "direct predicted" | "direct tcp" | "relay"
    elapsed_ms: float | None = None
    rtt_ms: float | None = None
    reason: str | None = None

    @property
    def direct(self) -> bool:
        return self.path.startswith("direct")


@dataclass
class Transfer:
    """One echo connection through the visitor's port, and what crossed the server meanwhile."""

    size: int
    seconds: float
    conn_path: str
    server_rx: int
    server_tx: int

    @property
    def server_bytes(self) -> int:
        return self.server_rx + self.server_tx

    @property
    def mbit_s(self) -> float:
        return 2 * self.size * 8 / self.seconds / 1e6  # both directions moved at once


@dataclass
class PierceLab:
    """The pierce server on a P2P lab's core, and the owners and visitors a cell starts on its hosts."""

    plab: P2pLab
    workdir: Path
    server: Proc | None = None
    _runs: Iterator[int] = field(default_factory=itertools.count)

    def start_server(self) -> Proc:
        conf = write_toml(
            self.workdir / "server.toml",
            {"bind_addr": "0.0.0.0", "bind_port": CONTROL_PORT, "token": TOKEN},
        )
        self.server = run_pierce(self.plab.server, self.workdir / "server-state", "server", "-c", conf)
        event(self.server, "server.listening", timeout=20)
        return self.server

    def _state(self, role: str) -> Path:
        return self.workdir / f"{role}-{next(self._runs)}"

    def owner(
        self, host: Host, kind: str = "xtcp", *, also_stcp: bool = False, **settings: Any
    ) -> tuple[Proc, Proc]:
        """A TCP (UDP for xudp) echo on ``host``'s loopback and a client with a ``kind`` proxy for it,
        named after the host (`proxy_name`), and with ``also_stcp`` an stcp proxy ``NAME-relay`` for the
        same service; both ready (or both stopped and the error raised). ``settings``: more keys of its
        client.toml."""
        udp = kind == "xudp"
        service = host.helper(
            "udp_echo.py" if udp else "tcp_echo.py", "--host", "127.0.0.1", "--port", SERVICE_PORT
        )
        name = proxy_name(host)
        proxies = [{"type": kind, "name": name, "local_port": SERVICE_PORT, "secret_key": SECRET}]
        if also_stcp:
            proxies.append({**proxies[0], "type": "stcp", "name": f"{name}-relay"})
        state = self._state("owner")
        state.mkdir(parents=True)
        conf = write_toml(
            state / "client.toml",
            {
                "server_addr": self.plab.server_ip,
                "server_port": CONTROL_PORT,
                "token": TOKEN,
                "client_id": f"owner-{host.name}",
                **settings,
                "proxies": proxies,
            },
        )
        client: Proc | None = None
        try:
            service.ready_port()
            client = run_pierce(host, state, "client", "-c", conf)
            for p in proxies:
                event(client, "proxy.ready", timeout=20, proxy=p["name"])
        except BaseException:
            for proc in (client, service):
                if proc is not None:
                    proc.stop()
            raise
        return service, client

    def visitor(
        self,
        host: Host,
        owner: Host,
        *extra: str,
        udp: bool = False,
        stcp: bool = False,
        port: int = VISIT_PORT,
        direct_tcp: bool = True,
    ) -> Proc:
        """``pierce visit --p2p`` (plain, of the ``-relay`` stcp proxy, with ``stcp``) of ``owner``'s proxy
        on ``host``, bound to ``127.0.0.1:port``; returns once it listens. ``direct_tcp=False``: an xtcp
        visitor in a ``pierce client`` config with ``[p2p] direct_tcp = false`` (the QUIC path only)."""
        name = proxy_name(owner) + ("-relay" if stcp else "")
        if not direct_tcp:
            return self._quic_only_visitor(host, name, port)
        args = ["visit", "--server", f"{self.plab.server_ip}:{CONTROL_PORT}", "--token", TOKEN,
                "--name", name, "--secret", SECRET, "--bind", f"127.0.0.1:{port}",
                "--client-id", f"visitor-{host.name}"]  # fmt: skip
        if not stcp:
            args.append("--p2p")
        if udp:
            args.append("--udp")
        visitor = run_pierce(host, self._state("visitor"), *args, *extra)
        event(visitor, "visitor.listening", timeout=20)
        return visitor

    def _quic_only_visitor(self, host: Host, name: str, port: int) -> Proc:
        state = self._state("visitor")
        state.mkdir(parents=True)
        conf = write_toml(
            state / "client.toml",
            {
                "server_addr": self.plab.server_ip,
                "server_port": CONTROL_PORT,
                "token": TOKEN,
                "client_id": f"visitor-{host.name}-quic",
                "p2p": {"direct_tcp": False},
                "visitors": [
                    {"type": "xtcp", "name": f"visit-{name}", "server_name": name, "secret_key": SECRET,
                     "bind_addr": "127.0.0.1", "bind_port": port},
                ],
            },
        )  # fmt: skip
        visitor = run_pierce(host, state, "client", "-c", conf)
        event(visitor, "visitor.listening", timeout=20)
        return visitor


def proxy_name(owner: Host) -> str:
    """Proxy names are unique on a server: one per owner host, so cells can run side by side."""
    return f"svc-{owner.name}"


def _decided(line: str) -> bool:
    """A visitor's verdict on its UDP attempt (a direct TCP connection's, proto "tcp", is told after it)."""
    doc = _json_object(line)
    return doc is not None and doc.get("event") in ("p2p.direct", "p2p.failed") and doc.get("proto") != "tcp"


def verdict(visitor: Proc, timeout: float = VERDICT_TIMEOUT_S) -> Verdict:
    """Wait for the visitor's ``p2p.direct`` or ``p2p.failed`` of its UDP attempt, whichever comes first."""
    return _verdict(visitor.expect(_decided, "stderr", timeout))


def _tcp_decided(line: str) -> bool:
    doc = _json_object(line)
    return doc is not None and doc.get("event") in ("p2p.direct", "p2p.failed") and doc.get("proto") == "tcp"


def tcp_verdict(visitor: Proc, timeout: float = VERDICT_TIMEOUT_S) -> Verdict:
    """An xtcp visitor's verdict on its first direct TCP connection (told after the UDP one)."""
    return _verdict(visitor.expect(_tcp_decided, "stderr", timeout))


def verdict_after_retry(host: Host, visitor: Proc, port: int = VISIT_PORT) -> Verdict:
    """The verdict of the visitor's next attempt. It retries a failed one on demand, on the first
    connection after its retry delay (5 s): so a small echo goes through its port once a second until
    a new verdict shows (bounded by `VERDICT_TIMEOUT_S`)."""
    deadline = time.monotonic() + VERDICT_TIMEOUT_S
    while True:
        host.run_helper("tcp_client.py", f"127.0.0.1:{port}", "--hex", "00", "--timeout", "5")
        try:
            return _verdict(visitor.expect(_decided, "stderr", 1.0))
        except LabError:
            if time.monotonic() > deadline:
                raise


def _verdict(line: str) -> Verdict:
    doc = _json_object(line)
    assert doc is not None
    if doc["event"] == "p2p.failed":
        return Verdict("relay", reason=str(doc.get("reason")))
    return Verdict(str(doc["conn_path"]), doc.get("elapsed_ms"), doc.get("rtt_ms"))


def echo_transfer(plab: P2pLab, host: Host, visitor: Proc, payload: Path, port: int = VISIT_PORT) -> Transfer:
    """Send ``payload`` through ``127.0.0.1:port`` on ``host`` to the owner's echo and back, checked by
    SHA-256; the server's interface counters are read just before and after. The time is the client's
    own, from its connect to the end of the echo (its interpreter's start is not counted)."""
    data = payload.read_bytes()
    rx0, tx0 = plab.server_bytes()
    [result] = host.run_helper(
        "tcp_client.py", f"127.0.0.1:{port}", "--send", payload, "--timeout", "60", timeout=180
    )
    rx1, tx1 = plab.server_bytes()
    if result["result"] != "ok" or result["send_error"] is not None:
        raise LabError(f"transfer failed: {result}\n{visitor.dump()}")
    if (result["received"], result["sha256"]) != (len(data), hashlib.sha256(data).hexdigest()):
        raise LabError(f"echo came back different: {result}")
    opened = event(visitor, "visitor.open", timeout=DEFAULT_TIMEOUT_S)
    return Transfer(len(data), float(result["seconds"]), str(opened["conn_path"]), rx1 - rx0, tx1 - tx0)


@contextlib.contextmanager
def cell_processes(pl: PierceLab, cell: Cell, kind: str = "xtcp") -> Iterator[tuple[Host, Proc, Proc]]:
    """Fresh conntrack state, then the owner (echo + client) and the visitor of ``cell``:
    yields (visitor host, owner client, visitor); all three stopped on the way out."""
    owner_host, visitor_host = cell.hosts(pl.plab)
    pl.plab.flush_conntrack()
    procs: list[Proc] = []
    try:
        service, client = pl.owner(owner_host, kind)
        procs += [service, client]
        visitor = pl.visitor(visitor_host, owner_host, udp=kind == "xudp")
        procs.append(visitor)
        yield visitor_host, client, visitor
    finally:
        for proc in reversed(procs):
            proc.stop()


def random_payload(path: Path, size: int) -> Path:
    if not path.exists() or path.stat().st_size != size:
        path.write_bytes(os.urandom(size))
    return path


def summary(cell: Cell, got: Verdict, transfer: Transfer | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "cell": cell.name,
        "path": got.path,
        "elapsed_ms": got.elapsed_ms,
        "rtt_ms": got.rtt_ms,
    }
    if got.reason:
        doc["reason"] = got.reason
    if transfer:
        doc.update(
            open_path=transfer.conn_path,
            server_bytes=transfer.server_bytes,
            seconds=round(transfer.seconds, 2),
        )
    return doc
