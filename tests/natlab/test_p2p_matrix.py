"""xtcp/xudp between every pair of NAT kinds, through real Linux NATs shaped like the internet.

One lab (`p2p_cells.matrix_lab`: an owner site and a visitor site of each kind, two shared LANs, a pierce
server on the core) serves the whole matrix; each cell starts its own owner client and ``pierce visit
--p2p``, after a conntrack flush on every router. A cell waits for the visitor's verdict (``p2p.direct``
or ``p2p.failed``), then moves 32 MiB (``PIERCE_P2P_MATRIX_MIB``) each way through the visitor's port
(an echo, checked by SHA-256) and asserts the path: direct wherever a direct UDP path exists in
principle (at least one side filters by endpoint only, or neither is symmetric, or exactly one is and
ports are predicted, or both sit on one LAN), the relay otherwise (both symmetric, or a side that
forwards no UDP; there a direct TCP path is also accepted). A direct path must not cross the server:
less than 1 MiB on the server's interface during the transfer, against four times the payload when
relayed. A cell that should go direct may take the visitor's own second attempt (port prediction
misses now and then).

More: cone × cone with 5 % loss and 50 ms of delay each way on both NAT routers; a conntrack flush on
both routers in the middle of a session (new connections still complete); 20 connections at once over
one direct path; xudp datagrams over a direct path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import Host, Lab
from .p2p_cells import (
    CELLS,
    CONTROL_PORT,
    SHORT,
    VISIT_PORT,
    Cell,
    PierceLab,
    cell_processes,
    echo_transfer,
    matrix_lab,
    proxy_name,
    random_payload,
    tcp_verdict,
    verdict,
    verdict_after_retry,
)
from .p2p_lab import SiteSpec, build

pytestmark = pytest.mark.natlab

MiB = 1 << 20
#: Each way per cell, as the issue asks (direct TCP and the relay move Gbit/s in this lab, the QUIC
#: path some 300 Mbit/s); ``PIERCE_P2P_MATRIX_MIB`` to change it.
SIZE = int(os.environ.get("PIERCE_P2P_MATRIX_MIB", "32")) * MiB
#: What may cross the server's interface while a direct path carries 2 x 32 MiB: control traffic only.
DIRECT_SERVER_BYTES = 1 * MiB


def expected(cell: Cell) -> str:
    """ "direct" where a direct path exists in principle, else "relay"."""
    if cell.same_nat:
        return "direct"
    kinds = {cell.owner_kind, cell.visitor_kind}
    if "udp-blocked" in kinds or kinds == {"symmetric"}:
        return "relay"
    return "direct"


def expected_tcp(cell: Cell) -> bool:
    """Whether a direct TCP connection exists in principle: on one LAN, or a simultaneous open where
    neither NAT is symmetric (its TCP ports cannot be predicted) and at least one router lets a SYN in
    (a `syn-drop` router drops every inbound SYN, whatever its state)."""
    if cell.same_nat:
        return True
    if "symmetric" in {cell.owner_kind, cell.visitor_kind}:
        return False
    return not cell.owner_kind == cell.visitor_kind == "syn-drop"


@pytest.fixture(scope="module")
def matrix(natlab_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PierceLab]:
    with Lab() as lab:
        pl = PierceLab(matrix_lab(lab), tmp_path_factory.mktemp("p2p-matrix"))
        pl.start_server()
        yield pl


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_payload(tmp_path_factory.mktemp("payload") / "payload.bin", SIZE)


@pytest.mark.parametrize("cell", CELLS, ids=lambda cell: cell.id)
def test_matrix_cell(matrix: PierceLab, payload: Path, cell: Cell) -> None:
    with cell_processes(matrix, cell) as (host, _, visitor):
        got = verdict(visitor)
        tcp = tcp_verdict(visitor)  # the TCP attempt is told after the UDP one
        for _ in range(2):
            if got.direct or expected(cell) != "direct":
                break
            # Port prediction misses now and then (about 2 % in theory, more on a loaded machine); the
            # visitor itself tries again on a connection after 5 s, as for a user: that verdict counts.
            print(f"{cell.name}: attempt missed: {got}")
            got = verdict_after_retry(host, visitor)
        moved = echo_transfer(matrix.plab, host, visitor, payload)
        dump = visitor.dump()
    print(f"{cell.name}: {got} {tcp} {moved}")
    assert tcp.direct == expected_tcp(cell), (cell.name, tcp, dump)
    if tcp.direct:  # a connection takes a ready direct TCP connection first
        assert moved.conn_path == tcp.path and moved.server_bytes < DIRECT_SERVER_BYTES, moved
    if expected(cell) == "direct":
        assert got.direct, (cell.name, got, dump)
        # A connection takes a ready direct TCP connection first, else a QUIC stream in the UDP hole.
        assert moved.conn_path in (got.path, "direct tcp"), (moved, got)
        assert moved.server_bytes < DIRECT_SERVER_BYTES, moved
    elif not tcp.direct:
        assert got.path == "relay" and got.reason, (cell.name, got, dump)
        assert moved.conn_path == "relay", moved
        assert moved.server_rx >= 2 * SIZE and moved.server_tx >= 2 * SIZE, moved


def test_cone_x_cone_with_loss_and_delay(natlab_ready: None, tmp_path: Path) -> None:
    """5 % of the packets each NAT router receives are dropped, the rest wait 50 ms (so 200 ms round
    trip between the peers); punching still locks the direct path and it carries data."""
    with Lab() as lab:
        plab = build(lab, [SiteSpec("a", "full-cone"), SiteSpec("b", "cone")])
        for site in plab.sites.values():
            plab.impair(site, loss=0.05, delay_ms=50)
        pl = PierceLab(plab, tmp_path)
        pl.start_server()
        pl.owner(plab.sites["a"].host)
        visitor = pl.visitor(plab.sites["b"].host, plab.sites["a"].host)
        got = verdict(visitor)
        if not got.direct:  # 10 % loss end to end can starve one attempt; the visitor's retry counts
            print(f"lossy: first attempt {got}")
            got = verdict_after_retry(plab.sites["b"].host, visitor)
        assert got.direct, (got, visitor.dump())
        # The delay lines are on the path: a punch needs at least one round trip, 200 ms here.
        assert got.elapsed_ms is not None and got.elapsed_ms >= 200, got
        moved = echo_transfer(
            plab, plab.sites["b"].host, visitor, random_payload(tmp_path / "p.bin", 256 * 1024)
        )
        print(f"lossy: {got}, {moved}")
        assert moved.conn_path.startswith("direct") and moved.server_bytes < DIRECT_SERVER_BYTES, moved


def test_conntrack_flush_loses_no_new_connection(matrix: PierceLab, tmp_path: Path) -> None:
    """Both NAT routers forget every mapping mid-session (as after a router reboot); connections opened
    afterwards still complete, over the direct path or the relay."""
    small = random_payload(tmp_path / "small.bin", 256 * 1024)
    with cell_processes(matrix, Cell("cone", "cone")) as (host, _, visitor):
        got = verdict(visitor)
        assert got.direct, (got, visitor.dump())
        assert echo_transfer(matrix.plab, host, visitor, small).conn_path.startswith("direct")
        matrix.plab.flush_conntrack()
        paths = [echo_transfer(matrix.plab, host, visitor, small).conn_path for _ in range(5)]
    print(f"after the flush: {paths}")


@pytest.mark.parametrize("mux", [False, True], ids=["one-tls-each", "multiplexed"])
def test_dead_pooled_work_connections_lose_no_visitor(matrix: PierceLab, tmp_path: Path, mux: bool) -> None:
    """The owner's router forgets its idle work connections but not its control connection (the state
    after a reboot once the owner's next heartbeat has mapped its control connection again): the
    server's next packet on a work connection is answered with a reset. Relayed visitor connections
    still complete. With one TLS connection each, the server lets a visitor through only on a work
    connection that answered, and drops the dead ones with the idle ones; with multiplexed work
    connections the one connection carrying them all is lost, and the owner fills its pool again on a
    new one at once (no visitor waits for the server's next request in vain)."""
    small = random_payload(tmp_path / "small.bin", 256 * 1024)
    owner_host, visitor_host = Cell("cone", "cone").hosts(matrix.plab)
    router = matrix.plab.sites[f"{SHORT['cone']}-o"].router
    assert router is not None and matrix.server is not None
    matrix.plab.flush_conntrack()
    seen = len(matrix.server.lines("stderr"))  # the server serves the module: only its lines from here
    service, client = matrix.owner(owner_host, also_stcp=True, transport={"tcp_mux": mux})
    owner_id = f"owner-{owner_host.name}"

    def server_events(name: str) -> list[dict[str, object]]:
        assert matrix.server is not None
        lines = matrix.server.lines("stderr")[seen:]
        docs = [json.loads(line) for line in lines if line.startswith("{")]
        return [d for d in docs if d.get("event") == name]

    visitor = matrix.visitor(visitor_host, owner_host, stcp=True)
    relay_name = f"{proxy_name(owner_host)}-relay"
    try:
        connected = [json.loads(line) for line in client.dump().splitlines() if '"client.connected"' in line]
        run_id = connected[-1]["run_id"]
        login = matrix.server.expect_json("stderr", event="client.login", run_id=run_id)
        control = int(login["peer"].rpartition(":")[2])
        assert echo_transfer(matrix.plab, visitor_host, visitor, small).conn_path == "relay"
        joined = [e for e in server_events("work.mux_joined") if e["client_id"] == owner_id]
        waited = [e for e in server_events("proxy.no_work_conn") if e.get("proxy") == relay_name]
        assert forget_work_connections(router, control) >= 1
        paths = [echo_transfer(matrix.plab, visitor_host, visitor, small).conn_path for _ in range(3)]
        if not mux:
            dead = matrix.server.expect_json("stderr", timeout=5, event="proxy.work_dead", proxy=relay_name)
        log = client.dump()
    finally:
        for proc in (visitor, client, service):
            proc.stop()
    assert paths == ["relay"] * 3
    assert [e for e in server_events("proxy.no_work_conn") if e.get("proxy") == relay_name] == waited
    rejoined = [e for e in server_events("work.mux_joined") if e["client_id"] == owner_id]
    if mux:
        assert len(joined) == 1 and len(rejoined) == 2, rejoined  # a new connection carried the rest
    else:
        assert dead["closed_idle"] >= 1, dead
        assert not joined and rejoined == joined
    assert '"client.disconnected"' not in log, log  # the control connection lived on


def forget_work_connections(router: Host, control: int) -> int:
    """Delete ``router``'s conntrack entries of TCP connections to the server's control port, except
    the one mapped to public port ``control``; how many were deleted."""
    out = router.run("conntrack", "-L", "-p", "tcp", "--dport", str(CONTROL_PORT), check=False).stdout
    deleted = 0
    for line in out.splitlines():
        ports = [int(word[6:]) for word in line.split() if word.startswith("sport=")]
        public = [int(word[6:]) for word in line.split() if word.startswith("dport=")]
        if len(ports) != 2 or len(public) != 2 or public[1] == control:
            continue
        router.run("conntrack", "-D", "-p", "tcp", "--sport", ports[0], "--dport", CONTROL_PORT, check=False)
        deleted += 1
    return deleted


def test_twenty_connections_at_once_over_one_direct_path(matrix: PierceLab, tmp_path: Path) -> None:
    size = 1 * MiB
    blob = random_payload(tmp_path / "one.bin", size)
    with cell_processes(matrix, Cell("cone", "cone")) as (host, _, visitor):
        got = verdict(visitor)
        assert got.direct, (got, visitor.dump())
        rx0, tx0 = matrix.plab.server_bytes()
        clients = [
            host.helper("tcp_client.py", f"127.0.0.1:{VISIT_PORT}", "--send", blob, "--timeout", "60")
            for _ in range(20)
        ]
        results = [client.expect_json(timeout=90) for client in clients]
        rx1, tx1 = matrix.plab.server_bytes()
        opens = [visitor.expect_json("stderr", event="visitor.open") for _ in range(20)]
    want = (size, hashlib.sha256(blob.read_bytes()).hexdigest())
    assert all((r["result"], r["received"], r["sha256"]) == ("ok", *want) for r in results), results
    assert all(o["conn_path"].startswith("direct") for o in opens), opens
    assert (rx1 - rx0) + (tx1 - tx0) < DIRECT_SERVER_BYTES


def test_xudp_cone_x_cone_datagrams(matrix: PierceLab) -> None:
    with cell_processes(matrix, Cell("cone", "cone"), kind="xudp") as (host, _, visitor):
        got = verdict(visitor)
        assert got.direct, (got, visitor.dump())
        rx0, tx0 = matrix.plab.server_bytes()
        [result] = host.run_helper(
            "udp_datagrams.py", f"127.0.0.1:{VISIT_PORT}", "--count", "2000", "--size", "1200", timeout=120
        )
        rx1, tx1 = matrix.plab.server_bytes()
        opened = visitor.expect_json("stderr", event="visitor.open")
    assert result["echoed"] == result["sent"] == 2000 and result["mismatched"] == 0, result
    assert opened["conn_path"] == got.path, opened
    # 2000 datagrams (1.2 MB each way) would be 4.8 MB on the server's interface if relayed.
    assert (rx1 - rx0) + (tx1 - tx0) < result["bytes"] // 2, (rx1 - rx0, tx1 - tx0)


def test_a_visitor_nat_rebinding_keeps_a_live_quic_stream(natlab_ready: None, tmp_path: Path) -> None:
    """Mid-transfer, the visitor's router forgets its UDP mappings and gives the visitor's next packets a
    new public port (as a router reboot or an expired mapping does). The owner's NAT filters by endpoint
    only (full cone) so the new port gets through; QUIC migrates the live stream to it, nothing lost.
    (Through an owner NAT that filters by address and port, the new port is dropped there: the path dies,
    and new connections take the relay while a new punch runs.)"""
    with Lab() as lab:
        plab = build(lab, [SiteSpec("a", "full-cone"), SiteSpec("b", "cone")])
        pl = PierceLab(plab, tmp_path)
        pl.start_server()
        owner_host, visitor_host = plab.sites["a"].host, plab.sites["b"].host
        pl.owner(owner_host)
        visitor = pl.visitor(visitor_host, owner_host, direct_tcp=False)  # the QUIC path only
        got = verdict(visitor)
        assert got.direct, (got, visitor.dump())
        blob = random_payload(tmp_path / "big.bin", 96 * MiB)
        client = visitor_host.helper(
            "tcp_client.py", f"127.0.0.1:{VISIT_PORT}", "--send", blob, "--timeout", "120"
        )
        opened = visitor.expect_json("stderr", event="visitor.open")
        assert opened["conn_path"] == got.path, opened
        site = plab.sites["b"]
        assert site.router is not None
        # New mappings from a port range the old one is not in, then the old mappings forgotten.
        site.router.iptables(
            "-t", "nat", "-I", "POSTROUTING", "1", "-o", site.router.wan_if, "-p", "udp",
            "-j", "SNAT", "--to-source", f"{site.public_ip}:61000-61999",
        )  # fmt: skip
        plab.flush_conntrack("udp", [site])
        result = client.expect_json(timeout=180)
        mappings = site.router.run("conntrack", "-L", "-p", "udp", check=False).stdout
    want = (96 * MiB, hashlib.sha256(blob.read_bytes()).hexdigest())
    assert (result["result"], result["received"], result["sha256"]) == ("ok", *want), result
    assert "sport=61" in mappings or "dport=61" in mappings, mappings  # the visitor did move
