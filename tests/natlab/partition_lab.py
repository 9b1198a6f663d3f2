"""The client's uplink cut during a transfer, for 5 s, 40 s and 5 min: it comes back by itself, and nothing
is left half-open on the server.

    client 10.77.0.10 ─ seg lan ─ 10.77.0.1  nat  203.0.113.1 ─ seg wan ─┬─ 203.0.113.10 server
    (pierce client, TCP echo          (MASQUERADE)                      └─ 203.0.113.20 visitor
     on its loopback)

The visitor sends random bytes through the server's public port to the echo behind the client, paced so
the transfer outlives the cut, and reads them back. Two ways to cut: ``drop`` (the NAT router drops
everything to and from the client, as a dead line does: nothing tells either end) and ``link-down`` (the
client's own interface goes down, its routes with it, and comes back with its default route as after a
DHCP renewal: the client's kernel fails its sends at once). Default heartbeats (10 s, dead after 30 s): a
5 s cut stays below them (no one notices, TCP retransmits), a 40 s or 5 min cut does not (both ends drop
the session, the client retries with its backoff).

Afterwards, whatever happened: the transfer either came back whole (SHA-256) or failed with an error on the
visitor's side, and the server logged that connection's end; the client logged in again (if it had lost the
server); and the server holds exactly the connections its API accounts for: no visitor connection on the
public port, and on the control port only the connections of the session that is logged in now, none of
the pre-cut ones when the client had to log in again.

Used by ``tests/natlab/test_partitions.py`` and ``bench/bench_faults.py --cuts``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from support.tunnel import TOKEN, write_toml

from pierce.client.session import DIAL_TIMEOUT

from .lab import Host, Lab, NatRouter, Proc
from .p2p_lab import event, run_pierce

CLIENT_IP, ROUTER_LAN_IP = "10.77.0.10", "10.77.0.1"
SERVER_IP, VISITOR_IP, ROUTER_WAN_IP = "203.0.113.10", "203.0.113.20", "203.0.113.1"
CONTROL_PORT, PUBLIC_PORT, ECHO_PORT, WEB_PORT = 7000, 6000, 7007, 7500
#: Bytes a second the visitor sends: the transfer lasts the cut and about 10 s more.
RATE = 64 * 1024
Cut = Literal["drop", "link-down"]


class PartitionLab:
    """The topology above with a pierce server (its API on its loopback) and client running."""

    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        wan = lab.segment("wan", "203.0.113.0/24")
        lan = lab.segment("lan", "10.77.0.0/24")
        self.server, self.visitor = lab.host("server"), lab.host("visitor")
        lab.attach(self.server, wan, SERVER_IP)
        lab.attach(self.visitor, wan, VISITOR_IP)
        self.router: NatRouter = lab.nat_router("nat", wan=(wan, ROUTER_WAN_IP), lan=(lan, ROUTER_LAN_IP))
        self.client = lab.host("client")
        lab.attach(self.client, lan, CLIENT_IP)
        lab.route(self.client, "default", via=ROUTER_LAN_IP)
        self.tmp_path = tmp_path
        self.echo = self.client.helper("tcp_echo.py", "--host", "127.0.0.1", "--port", ECHO_PORT)
        self.echo.ready_port()
        server_conf = write_toml(
            tmp_path / "server.toml",
            {
                "bind_addr": "0.0.0.0",
                "bind_port": CONTROL_PORT,
                "token": TOKEN,
                "web": {"addr": "127.0.0.1", "port": WEB_PORT},
            },
        )
        client_conf = write_toml(
            tmp_path / "client.toml",
            {
                "server_addr": SERVER_IP,
                "server_port": CONTROL_PORT,
                "token": TOKEN,
                "client_id": "lan-box",
                "proxies": [
                    {
                        "type": "tcp",
                        "name": "echo",
                        "local_ip": "127.0.0.1",
                        "local_port": ECHO_PORT,
                        "remote_port": PUBLIC_PORT,
                    }
                ],
            },
        )
        self.pierce_server = run_pierce(self.server, tmp_path / "server-state", "server", "-c", server_conf)
        event(self.pierce_server, "server.listening", timeout=20)
        self.pierce_client = run_pierce(self.client, tmp_path / "client-state", "client", "-c", client_conf)
        event(self.pierce_client, "client.connected", timeout=20)
        event(self.pierce_client, "proxy.ready", proxy="echo", timeout=20)
        event(self.pierce_server, "proxy.ready", proxy="echo", timeout=20)

    # -- the fault ---------------------------------------------------------------------------------

    def cut(self, how: Cut) -> None:
        if how == "drop":
            for side in ("-s", "-d"):
                self.router.iptables("-I", "FORWARD", side, CLIENT_IP, "-j", "DROP")
        else:
            self.client.run("ip", "link", "set", self.client.iface("lan"), "down")

    def restore(self, how: Cut) -> None:
        if how == "drop":
            for side in ("-s", "-d"):
                self.router.iptables("-D", "FORWARD", side, CLIENT_IP, "-j", "DROP")
        else:
            self.client.run("ip", "link", "set", self.client.iface("lan"), "up")
            self.client.run("ip", "route", "replace", "default", "via", ROUTER_LAN_IP)

    # -- what the server holds -------------------------------------------------------------------------

    def api(self, path: str) -> Any:
        code = "import urllib.request as u, sys; sys.stdout.write(u.urlopen(sys.argv[1]).read().decode())"
        out = self.server.run(sys.executable, "-c", code, f"http://127.0.0.1:{WEB_PORT}{path}").stdout
        return json.loads(out)

    def server_tcp(self) -> list[tuple[int, str]]:
        return tcp_connections(self.server)

    def settled(self, relogged: bool, before: list[tuple[int, str]], timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the server holds nothing but what the API accounts for; return the last view.

        No visitor connection on the public port (and none counted by the API); on the control port the
        control connection and the multiplexed work connection of the one client logged in now (one
        client in ``/api/clients``), none of ``before`` if it logged in again. On the client's host the
        same two connections, and nothing to its echo.
        """
        deadline = time.monotonic() + timeout
        while True:
            info, clients = self.api("/api/serverinfo"), self.api("/api/clients")
            conns = self.server_tcp()
            public = [c for c in conns if c[0] == PUBLIC_PORT]
            control = [c for c in conns if c[0] == CONTROL_PORT]
            stale = [c for c in control if c in before] if relogged else []
            client = self.client_tcp()
            view = {"api_connections": info["connections"], "clients": len(clients), "public": public,
                    "control": control, "stale": stale, "client": client}  # fmt: skip
            server_ok = not public and not info["connections"] and len(clients) == 1 and len(control) <= 2
            client_ok = len(client) <= 2 and all(peer.endswith(f":{CONTROL_PORT}") for _, peer in client)
            if server_ok and client_ok and not stale:
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"connections left over: {view}\n{self.pierce_server.dump()}")
            time.sleep(0.2)

    def client_tcp(self) -> list[tuple[int, str]]:
        """The client host's TCP connections (its echo's and the pierce client's), as `server_tcp`."""
        return tcp_connections(self.client)


def tcp_connections(host: Host) -> list[tuple[int, str]]:
    """``host``'s TCP connections (not listeners, not TIME-WAIT): (local port, peer ip:port)."""
    out = host.run("ss", "-Htn", "state", "all", "exclude", "listening", "exclude", "time-wait")
    conns = []
    for line in out.stdout.splitlines():
        fields = line.split()
        conns.append((int(fields[-2].rpartition(":")[2]), fields[-1]))
    return conns


def json_events(proc: Proc, name: str) -> list[dict[str, Any]]:
    return [doc for doc in proc.json_lines("stderr") if doc.get("event") == name]


def transfer_through_cut(lab: Lab, tmp_path: Path, how: Cut, seconds: float) -> dict[str, Any]:
    """The scenario of the module doc; returns what happened, for the report."""
    pl = PartitionLab(lab, tmp_path)
    before = pl.server_tcp()
    size = int(RATE * (seconds + 10))
    sent = os.urandom(size)
    (tmp_path / "sent.bin").write_bytes(sent)
    received_path = tmp_path / "received.bin"
    visitor = pl.visitor.helper(
        "tcp_client.py", f"{SERVER_IP}:{PUBLIC_PORT}", "--send", tmp_path / "sent.bin",
        "--recv", received_path, "--rate", RATE, "--progress", "--timeout", seconds + 300,
    )  # fmt: skip
    visitor.expect_json(event="progress", timeout=20)
    logins_before = len(json_events(pl.pierce_server, "client.login"))
    pl.cut(how)
    time.sleep(seconds)  # the fault itself: the link stays cut this long
    restored = time.time()
    pl.restore(how)
    lost = bool(json_events(pl.pierce_client, "client.disconnected"))
    report: dict[str, Any] = {"cut": how, "seconds": seconds, "client_lost_server": lost}
    if lost:
        # Back within the backoff: the wait it was in when the link came back, plus one login.
        connected = event(pl.pierce_client, "client.connected", timeout=60)
        retries = [r for r in json_events(pl.pierce_client, "client.retry") if r["ts"] <= restored]
        last = retries[-1]
        report.update(
            recovery_s=round(connected["ts"] - restored, 2),
            # The backoff in force: attempts start this far apart, so the bar is recovery_s <= backoff_s
            # (plus one login); retry_due_s < 0: a dial was under way when the link came back.
            backoff_s=last.get("backoff_s", last["delay_s"]),
            retry_due_s=round(last["ts"] + last["delay_s"] - restored, 2),
            login_failures=len(json_events(pl.pierce_client, "client.login_failed")),
        )
        event(pl.pierce_client, "proxy.ready", proxy="echo", timeout=20)
        # Attempts start a backoff apart: the time a dial hung on the dead link was part of the wait.
        log = [
            d
            for d in pl.pierce_client.json_lines("stderr")
            if d.get("event") in ("client.login_failed", "client.retry")
        ]
        for failed, retry in itertools.pairwise(log):
            if failed["event"] == "client.login_failed" and "timed out" in failed["error"]:
                assert retry["event"] == "client.retry", (failed, retry)
                assert retry["delay_s"] <= max(0.0, retry["backoff_s"] - DIAL_TIMEOUT) + 0.01, (failed, retry)
        # The client says why: its heartbeats went unanswered (nothing came from the server to close it).
        [lost_event] = json_events(pl.pierce_client, "client.disconnected")
        report["client_error"] = lost_event["error"]
        assert "no answer from the server" in lost_event["error"], lost_event
    visitor.popen.wait(seconds + 330)
    [result] = [doc for doc in visitor.json_lines() if "result" in doc]
    whole = result["result"] == "ok" and result["send_error"] is None
    if whole:  # an orderly end is the whole transfer, byte for byte
        assert result["received"] == size and result["sha256"] == hashlib.sha256(sent).hexdigest(), result
        assert received_path.read_bytes() == sent
        outcome, error = "verified", None
    else:
        # A reset, never an orderly end of fewer bytes: the reading thread sees ECONNRESET, or the sending
        # one does first (the kernel reports a socket's error once) and the read then ends short.
        error = result.get("errno") or result["send_error"]
        assert "ECONNRESET" in error or "reset" in error, result
        assert result["received"] < size, result
        outcome = "reset"
    # The server logged that visitor connection's end, whichever way it went.
    closed = event(pl.pierce_server, "proxy.conn_close", proxy="echo", timeout=20)
    report.update(
        transfer=outcome,
        error=error,
        transfer_s=round(result.get("seconds", 0.0), 1),
        server_close=closed,
    )
    # ...and so did the client, for its end of it: when the session was lost, as soon as its multiplexed
    # work connection failed to answer a ping too (during the cut: the error names the silence).
    client_closes = [e for e in json_events(pl.pierce_client, "proxy.conn_close") if e["proxy"] == "echo"]
    client_closed = client_closes[0] if client_closes else event(pl.pierce_client, "proxy.conn_close", 150)
    report["client_close"] = {k: client_closed.get(k) for k in ("ts", "error", "up_bytes", "down_bytes")}
    report["client_close"]["after_restore_s"] = round(client_closed["ts"] - restored, 1)
    if not whole:
        assert closed.get("error") and client_closed.get("error"), (closed, client_closed)
    if lost:  # its multiplexed connection gave up on the server with the session, not after the cut
        assert "no answer from the server" in client_closed["error"], client_closed
    relogged = len(json_events(pl.pierce_server, "client.login")) > logins_before
    assert relogged == lost, (relogged, lost)
    report["server_after"] = pl.settled(relogged, before)
    assert pl.pierce_server.popen.poll() is None and pl.pierce_client.popen.poll() is None
    # ...and the tunnel carries verified bytes again.
    [again] = pl.visitor.run_helper("tcp_client.py", f"{SERVER_IP}:{PUBLIC_PORT}", "--hex", sent[:4096].hex())
    assert again["result"] == "ok" and again["sha256"] == hashlib.sha256(sent[:4096]).hexdigest(), again
    print(json.dumps(report))
    return report
