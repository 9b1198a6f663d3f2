"""A real authoritative DNS server for dynamic DNS tests: Knot DNS (Debian ``knot``) in a lab namespace.

It serves one zone (`ZONE`) whose only writer is one TSIG key (`KEY_NAME`, hmac-sha256), and logs at
debug level to its stderr, which the lab's `Proc` collects: every UPDATE it applies ("DDNS, finished,
serial 3 -> 4") and every one it turns away ("TSIG, key ..., verification failed 'BADSIG'", "ACL, denied,
action update") is a line, so tests count what reached the server rather than what the client says it
sent. Queries go through ``kdig`` (Debian ``knot-dnsutils``) from any lab host.

knotd runs as a tracked lab process (stopped at teardown like the others); its files (config, zone,
journal, control socket) live in the test's ``tmp_path``.
"""

from __future__ import annotations

import base64
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from .lab import Host, Proc

ZONE = "ddns.test"
KEY_NAME = "pierce-ddns"
DNS_PORT = 53


def missing_knot() -> str | None:
    for tool, package in (("knotd", "knot"), ("knotc", "knot"), ("kdig", "knot-dnsutils")):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian package {package})"
    return None


@dataclass
class Knot:
    host: Host
    ip: str
    secret: str
    proc: Proc

    @property
    def server(self) -> str:
        return f"{self.ip}:{DNS_PORT}"

    def dig(self, via: Host, name: str, rdtype: str = "A") -> list[str]:
        """What the server answers for ``name`` (relative to the zone) now, asked from ``via``."""
        fqdn = f"{name}.{ZONE}" if name != "@" else ZONE
        out = via.run("kdig", f"@{self.ip}", "-p", DNS_PORT, fqdn, rdtype, "+short", "+timeout=2", "+retry=1")
        return sorted(line for line in out.stdout.split() if line)

    def serial(self, via: Host) -> int:
        out = via.run("kdig", f"@{self.ip}", "-p", DNS_PORT, ZONE, "SOA", "+short", "+timeout=2", "+retry=1")
        return int(out.stdout.split()[2])

    def applied(self) -> list[str]:
        """The UPDATEs the server applied so far (one log line each)."""
        return [line for line in self.proc.lines("stderr") if "DDNS, finished" in line]

    def refused(self) -> list[str]:
        """The UPDATEs the server turned away for their key so far (one log line each)."""
        return [
            line
            for line in self.proc.lines("stderr")
            if re.search(r"TSIG, key .* verification failed|ACL, denied, action update", line)
        ]

    def expect_applied(self, serial: int) -> str:
        return self.proc.expect(rf"DDNS, finished, serial \d+ -> {serial}\b", "stderr")

    def expect_refused(self) -> str:
        return self.proc.expect(r"TSIG, key .* verification failed|ACL, denied, action update", "stderr")


def start_knot(host: Host, ip: str, workdir: Path) -> Knot:
    """knotd on ``ip``:53 in ``host``, serving `ZONE` (serial 1, no address records yet) and letting
    `KEY_NAME` update it."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "db").mkdir(exist_ok=True)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    (workdir / f"{ZONE}.zone").write_text(
        f"$TTL 300\n@ SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60\n@ NS ns1\nns1 A {ip}\n"
    )
    conf = workdir / "knot.conf"
    conf.write_text(
        f"""server:
    listen: {ip}@{DNS_PORT}
    rundir: {workdir}
    pidfile: {workdir}/knot.pid
database:
    storage: {workdir}/db
log:
  - target: stderr
    any: debug
key:
  - id: {KEY_NAME}
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: ddns
    key: {KEY_NAME}
    action: update
zone:
  - domain: {ZONE}
    storage: {workdir}
    file: {ZONE}.zone
    acl: ddns
    zonefile-sync: -1
"""
    )
    host.run("knotc", "-c", conf, "conf-check")
    proc = host.popen("knotd", "-c", conf, label=f"{host.name}:knotd")
    started = r"server started in the foreground"
    loaded = rf"\[{re.escape(ZONE)}\.\] loaded, serial none -> 1"
    seen: set[str] = set()
    while len(seen) < 2:  # knot loads zones in the background: the two lines come in either order
        line = proc.expect(f"{started}|{loaded}", "stderr")
        seen.add("started" if re.search(started, line) else "loaded")
    return Knot(host, ip, secret, proc)
