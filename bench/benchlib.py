"""Pieces shared by the benchmark scripts: processes, readiness, iperf3, connection latency, ratios, a
pierce tunnel and an ``ssh -R`` tunnel to compare it with, idle connections held open and the memory
they cost, clean exits on Ctrl-C and SIGTERM.

Every measurement can run inside a network namespace: pass the ``ip netns exec NS`` prefix as ``prefix``
(an empty list means the current namespace).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

HOST = "127.0.0.1"
TOKEN = "bench-token-Kq7vB2mN9pL4sR8tW3zY6c"
SSHD = "/usr/sbin/sshd"

#: A TCP echo (asyncio, uvloop when installed) on ``argv[1]``, any free port; prints the port.
ECHO_SERVER = r"""
import asyncio, resource, socket, sys
try:
    import uvloop
except ImportError:
    uvloop = None

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

async def handle(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, sys.argv[1], 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

(uvloop.run if uvloop else asyncio.run)(main())
"""

#: ``count`` sequential connect / send 1 byte / read the echo / close; prints the median in microseconds.
LATENCY_CLIENT = r"""
import socket, statistics, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for _ in range(count):
    t0 = time.perf_counter()
    with socket.create_connection((host, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise SystemExit("echo mismatch")
    times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1e6)
"""


def missing_tools(*tools: str) -> str | None:
    """The first tool not on PATH, or None."""
    return next((tool for tool in tools if shutil.which(tool) is None), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Procs:
    """Background processes, each in its own process group; ``close()`` stops them all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def start_echo(procs: Procs, host: str, prefix: Sequence[str] = (), nofile: int = 0) -> int:
    """Start `ECHO_SERVER` on ``host`` (with RLIMIT_NOFILE ``nofile`` if given); return its port."""
    extra: dict[str, Any] = {"preexec_fn": nofile_preexec(nofile)} if nofile else {}
    echo = procs.start([*prefix, sys.executable, "-c", ECHO_SERVER, host], stdout=subprocess.PIPE, **extra)
    assert echo.stdout is not None
    return int(echo.stdout.readline())


def wait_listening(port: int, prefix: Sequence[str] = (), timeout: float = 10) -> None:
    """Poll `ss` (in the namespace of ``prefix``) until something listens on TCP ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([*prefix, "ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
        if out.stdout.strip():
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def iperf(host: str, port: int, seconds: float, prefix: Sequence[str] = ()) -> float:
    """One single-stream ``iperf3 -c`` run; received Gbit/s (``end.sum_received``).

    iperf3's server runs one test at a time and may still be finishing the previous one (its
    results exchange) when the next client arrives: "busy" is retried for a few seconds.
    """
    for attempt in range(20):
        out = subprocess.run(
            [*prefix, "iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        doc = json.loads(out.stdout)
        if "busy" in str(doc.get("error", "")) and attempt < 19:
            time.sleep(0.25)
            continue
        if "error" in doc:
            raise RuntimeError(doc["error"])
        return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
    raise AssertionError("unreachable")


def connect_latency(host: str, port: int, count: int, prefix: Sequence[str] = ()) -> float:
    """Median microseconds for connect + 1-byte echo + close, measured in a fresh process."""
    out = subprocess.run(
        [*prefix, sys.executable, "-c", LATENCY_CLIENT, host, str(port), str(count)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return float(out.stdout)


def rotated(items: list[str], k: int) -> Iterator[str]:
    """``items`` starting at index ``k``: each round runs the paths in another order."""
    k %= len(items)
    yield from items[k:] + items[:k]


def bar_verdicts(ratios: dict[str, float], bars: dict[str, tuple[str, float]]) -> dict[str, dict[str, Any]]:
    """Each bar (ratio key -> ``(">=" | "<=", limit)``) as printed and whether its ratio meets it."""
    return {
        key: {"bar": f"{op} {limit}x", "met": ratios[key] >= limit if op == ">=" else ratios[key] <= limit}
        for key, (op, limit) in bars.items()
    }


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Pair by pair within each round, then the median: robust to drift between rounds."""
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 2)


def percentile(ordered: Sequence[int], q: float) -> int:
    """The nearest-rank ``q``-th percentile of a sorted, non-empty sequence."""
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid`` (all their threads)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class NetnsChain:
    """Network namespaces ``TAG-a``, ``TAG-b`` and ``TAG-c`` in a row, joined by two veth links (MTU 1500).

    Link a-b is 198.51.100.0/24 (a .2, b .1), link b-c is 203.0.113.0/24 (b .1, c .3); b forwards between
    them, so a and c reach each other routed by b's kernel. Needs root. ``close()`` kills what still runs
    inside and deletes the namespaces (their veths go with them); it is safe after a partial ``build()``.
    """

    A_IP, B_A_IP, B_C_IP, C_IP = "198.51.100.2", "198.51.100.1", "203.0.113.1", "203.0.113.3"

    def __init__(self, tag: str) -> None:
        self.names = tuple(f"{tag}-{r}" for r in "abc")

    @staticmethod
    def prefix(ns: str) -> list[str]:
        """The command prefix that runs a command inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns]

    def build(self) -> None:
        a, b, c = self.names
        cmds = [
            *(["ip", "netns", "add", n] for n in (a, b, c)),
            *(["ip", "-n", n, "link", "set", "lo", "up"] for n in (a, b, c)),
            ["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b],
            ["ip", "-n", b, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", c],
            ["ip", "-n", a, "addr", "add", f"{self.A_IP}/24", "dev", "eth0"],
            ["ip", "-n", b, "addr", "add", f"{self.B_A_IP}/24", "dev", "eth0"],
            ["ip", "-n", b, "addr", "add", f"{self.B_C_IP}/24", "dev", "eth1"],
            ["ip", "-n", c, "addr", "add", f"{self.C_IP}/24", "dev", "eth0"],
            ["ip", "-n", a, "link", "set", "eth0", "up"],
            ["ip", "-n", b, "link", "set", "eth0", "up"],
            ["ip", "-n", b, "link", "set", "eth1", "up"],
            ["ip", "-n", c, "link", "set", "eth0", "up"],
            ["ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["ip", "-n", a, "route", "add", "203.0.113.0/24", "via", self.B_A_IP],
            ["ip", "-n", c, "route", "add", "198.51.100.0/24", "via", self.B_C_IP],
        ]
        for cmd in cmds:
            subprocess.run(cmd, check=True)

    def close(self) -> None:
        for ns in self.names:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)


# -- clean exits -----------------------------------------------------------------------------------


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the enclosed cleanup is done, then take effect."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C does, so every ``finally`` removes what it set up."""
    raise SystemExit(128 + signum)


# -- file descriptors and memory -------------------------------------------------------------------


def raise_fd_limit(need: int) -> None:
    """This process's RLIMIT_NOFILE to at least ``need`` (past the hard limit only as root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if os.geteuid() == 0 and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))


def nofile_preexec(need: int) -> Callable[[], None]:
    """A ``preexec_fn`` giving the child RLIMIT_NOFILE ``need`` (the product's defaults stay as they are)."""

    def preexec() -> None:
        raise_fd_limit(need)

    return preexec


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (sshd forks a process per connection, in a new session)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(roots: Sequence[int]) -> float:
    """User + system CPU seconds of each root's process tree, with the children it has reaped
    (socat's per-connection forks end up in its ``cutime``/``cstime``)."""
    total = 0
    for root in roots:
        for pid in process_tree(root):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def cores_per_gbps(cpu_s: float, seconds: float, gbps: float) -> float:
    """CPU cores busy per Gbit/s moved: CPU seconds per second of transfer, per Gbit/s."""
    return cpu_s / seconds / gbps if gbps > 0 else float("nan")


def hold_connections(
    port: int,
    count: int,
    *,
    host: str = HOST,
    prelude: Callable[[socket.socket], None] | None = None,
    timeout: float = 15,
    keep_on_error: bool = False,
) -> list[socket.socket]:
    """``count`` visitor connections, each carried one byte both ways through the tunnel, left open.

    ``prelude`` runs on each new socket first (a proxy's CONNECT). On a failure the connections opened
    so far are closed (with ``keep_on_error``, only the failing one: the others are ``HoldFailed.held``)
    and the exception says how many had answered (``HoldFailed``).
    """
    held: list[socket.socket] = []
    answered = 0
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=timeout)
            held.append(sock)
            if prelude is not None:
                prelude(sock)
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise RuntimeError("echo mismatch (or the connection closed)")
            answered += 1
    except BaseException as exc:
        keep = keep_on_error and isinstance(exc, Exception)
        for sock in held[answered if keep else 0 :]:
            sock.close()
        if isinstance(exc, Exception):
            raise HoldFailed(answered, exc, held[:answered] if keep else []) from exc
        raise
    return held


class HoldFailed(RuntimeError):
    """`hold_connections` stopped: ``opened`` connections had answered before ``cause``."""

    def __init__(self, opened: int, cause: Exception, held: list[socket.socket]) -> None:
        super().__init__(f"after {opened} connections: {type(cause).__name__}: {cause}")
        self.opened = opened
        self.cause = cause
        self.held = held


def settled(
    measure: Callable[[], float], timeout: float = 10, step: float = 0.5, still: float = 0.1
) -> float:
    """``measure()`` once it moves by less than ``still`` between two reads ``step`` seconds apart
    (a pool refills in the background after a burst of visitors), or its last value at ``timeout``."""
    last, deadline = measure(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(step)
        now = measure()
        if abs(now - last) < still:
            return now
        last = now
    return last


# -- a pierce tunnel and an ssh -R tunnel ----------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Where the visitor, the public server and the LAN host run, and the addresses between them."""

    path: str  #: the name reported for this topology
    layout: str  #: one line describing it, for the report
    visitor: list[str]  #: command prefix of the visitor host (iperf3 and latency clients)
    server: list[str]  #: of the public server host (pierce server, sshd, socat)
    lan: list[str]  #: of the LAN host (iperf3 server, echo, pierce client, ssh -R client)
    public_ip: str  #: server address visitors connect to
    server_ip: str  #: server address the LAN host dials (control port, sshd)
    lan_ip: str  #: LAN host address: the direct path and socat's target
    service_ip: str  #: address the LAN services bind to (pierce and ssh reach them on 127.0.0.1)


LOOPBACK = Site("loopback", "every role on 127.0.0.1", [], [], [], HOST, HOST, HOST, HOST)


def toml(doc: dict[str, Any]) -> str:
    """Just enough TOML for the config files: scalars, tables of scalars (``[transport]``), arrays of
    tables (``[[proxies]]``, ``[[visitors]]``) whose values are scalars or lists of strings."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in doc.items() if not isinstance(v, dict | list)]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines += [f"[{key}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    for key, items in doc.items():
        if isinstance(items, list):
            for item in items:
                lines += [f"[[{key}]]", *(f"{k} = {value(v)}" for k, v in item.items())]
    return "\n".join(lines) + "\n"


#: Makes a pierce server's certificate in the state directory given (as a first start does).
MAKE_CERTIFICATE = (
    "import sys; from pathlib import Path; from pierce.tls import ensure_server_certificate; "
    "ensure_server_certificate(Path(sys.argv[1]))"
)


class Tunnel:
    """A `pierce server` on the server host and a `pierce client` on the LAN host exposing the LAN's TCP
    ports (on 127.0.0.1 there) on fixed public ports. ``nofile``: both start with that RLIMIT_NOFILE."""

    def __init__(
        self,
        procs: Procs,
        workdir: Path,
        name: str,
        *,
        site: Site,
        encrypt: bool,
        targets: dict[str, int],
        web: dict[str, Any] | None = None,
        nofile: int = 0,
    ) -> None:
        self.public = {proxy: free_port() for proxy in targets}
        self.logs = [workdir / f"{name}-server.log", workdir / f"{name}-client.log"]
        self.nofile = nofile
        control = free_port()
        transport = {"encrypt_data": encrypt}
        server_conf = workdir / f"{name}-server.toml"
        server_conf.write_text(
            toml(
                {
                    "bind_addr": site.server_ip,
                    "bind_port": control,
                    "proxy_bind_addr": site.public_ip,
                    "token": TOKEN,
                    "transport": transport,
                    **({"web": web} if web else {}),
                }
            )
        )
        proxies = [
            {"name": p, "type": "tcp", "local_ip": HOST, "local_port": port, "remote_port": self.public[p]}
            for p, port in targets.items()
        ]
        client_conf = workdir / f"{name}-client.toml"
        client_conf.write_text(
            toml(
                {
                    "server_addr": site.server_ip,
                    "server_port": control,
                    "token": TOKEN,
                    "client_id": name,
                    "transport": transport,
                    "proxies": proxies,
                }
            )
        )
        env = {**os.environ, "PIERCE_STATE_DIR": str(workdir / f"{name}-state")}
        # A server that has run before: its certificate waits in its state directory. The first start
        # makes it, loading cryptography (~8 MiB) for that once; every later start checks it with ssl
        # alone. The figures are those of a server's usual start.
        server_state = workdir / f"{name}-state" / "server"
        subprocess.run([sys.executable, "-c", MAKE_CERTIFICATE, str(server_state)], env=env, check=True)
        self.server = self._start(procs, site.server, "server", server_conf, self.logs[0], env)
        wait_listening(control, site.server)
        self.client = self._start(procs, site.lan, "client", client_conf, self.logs[1], env)
        for port in self.public.values():
            wait_listening(port, site.server)

    def _start(
        self, procs: Procs, prefix: list[str], role: str, conf: Path, log: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        argv = [*prefix, sys.executable, "-m", "pierce", "--log-level", "warning", role, "-c", str(conf)]
        extra: dict[str, Any] = {"preexec_fn": nofile_preexec(self.nofile)} if self.nofile else {}
        with log.open("wb") as out:
            return procs.start(argv, env=env, stdout=out, stderr=out, **extra)

    def roles(self) -> dict[str, list[int]]:
        return {"server": [self.server.pid], "client": [self.client.pid]}

    def rss_mib(self) -> float:
        return (vm_rss_kib(self.server.pid) + vm_rss_kib(self.client.pid)) / 1024

    def fds(self) -> int:
        return fd_count(self.server.pid) + fd_count(self.client.pid)


class SshReverseTunnel:
    """A private sshd on the server host and ``ssh -N -R`` forwards to it from the LAN host."""

    def __init__(self, procs: Procs, workdir: Path, site: Site, targets: dict[str, int]) -> None:
        d = workdir / "ssh"
        d.mkdir()
        for key in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
        (d / "authorized_keys").write_bytes((d / "user_key.pub").read_bytes())
        port = free_port()
        config = d / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress {site.server_ip}\n"
            f"HostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nUsePAM no\nStrictModes no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "AllowTcpForwarding yes\nGatewayPorts clientspecified\nLogLevel ERROR\n"
        )
        # sshd insists on its privilege separation directory, which a container may lack.
        with contextlib.suppress(OSError):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
        self.sshd = procs.start([*site.server, SSHD, "-D", "-f", str(config), "-E", str(d / "sshd.log")])
        wait_listening(port, site.server)
        self.public = {name: free_port() for name in targets}
        forwards = [
            a for n, t in targets.items() for a in ("-R", f"{site.public_ip}:{self.public[n]}:{HOST}:{t}")
        ]
        self.argv = [
            *site.lan, "ssh", "-N", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
            "-i", str(d / "user_key"), "-p", str(port), *forwards, f"{getpass.getuser()}@{site.server_ip}",
        ]  # fmt: skip
        self.client = procs.start(self.argv)
        for public in self.public.values():
            wait_listening(public, site.server)
        # What this ssh negotiates by default (its first cipher), for the report.
        out = subprocess.run(["ssh", "-G", "-p", str(port), site.server_ip], capture_output=True, text=True)
        ciphers = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("ciphers ")]
        self.cipher = ciphers[0].split(",")[0] if ciphers else "?"

    def roles(self) -> dict[str, list[int]]:
        """sshd with the processes it forked for the session; the ``ssh -R`` client."""
        return {"sshd": process_tree(self.sshd.pid), "ssh": [self.client.pid]}


class Stunnel:
    """A TLS pipe over the server host -> LAN host hop, the hop a pierce tunnel encrypts: ``stunnel``
    (client mode) on the server host takes visitors on public ports and dials ``stunnel`` (server mode)
    on the LAN host over TLS, which connects to the LAN's ports on 127.0.0.1 there. The client checks
    the server's self-signed certificate (``verifyPeer``), as pierce pins its server's."""

    def __init__(self, procs: Procs, workdir: Path, site: Site, targets: dict[str, int]) -> None:
        d = workdir / "stunnel"
        d.mkdir()
        cert, key = d / "cert.pem", d / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=stunnel.bench"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.public = {name: free_port() for name in targets}
        inner = {name: free_port() for name in targets}
        common = "foreground = yes\npid =\ndebug = 3\n"
        server_conf, client_conf = d / "server.conf", d / "client.conf"
        server_conf.write_text(
            common
            + "".join(
                f"[{n}]\naccept = {site.lan_ip}:{inner[n]}\nconnect = {HOST}:{t}\n"
                f"cert = {cert}\nkey = {key}\n"
                for n, t in targets.items()
            )
        )
        client_conf.write_text(
            common
            + "client = yes\n"
            + "".join(
                f"[{n}]\naccept = {site.public_ip}:{self.public[n]}\nconnect = {site.lan_ip}:{inner[n]}\n"
                f"verifyPeer = yes\nCAfile = {cert}\n"
                for n in targets
            )
        )
        with (d / "server.log").open("wb") as log:
            self.server = procs.start([*site.lan, "stunnel", str(server_conf)], stdout=log, stderr=log)
        for port in inner.values():
            wait_listening(port, site.lan)
        with (d / "client.log").open("wb") as log:
            self.client = procs.start([*site.server, "stunnel", str(client_conf)], stdout=log, stderr=log)
        for port in self.public.values():
            wait_listening(port, site.server)

    def roles(self) -> dict[str, list[int]]:
        """The stunnel on the server host (client mode) and the one on the LAN host (server mode)."""
        return {"client": [self.client.pid], "server": [self.server.pid]}
