"""Pebble, the ACME test CA, on loopback, with a mock DNS that sends every name to 127.0.0.1.

`running_pebble` starts ``pebble-challtestsrv`` (DNS only) and ``pebble`` (Debian package ``pebble``),
with Pebble's HTTP-01 validation port pointing at a `ChallengeServer` of the test's, and stops all three
when the block ends, whatever happened in it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")
#: Why Pebble tests cannot run here, or None.
MISSING = (
    None
    if PEBBLE and CHALLTESTSRV
    else "needs Pebble, the ACME test CA (Debian package pebble: pebble and pebble-challtestsrv)"
)

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# Fast and deterministic: no random validation delays, no rejected nonces, every order validates afresh.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
START_TIMEOUT = 15.0

Answer = Callable[[str], bytes | None]
Hook = Callable[[str, str], None]


class ChallengeServer:
    """Answers ``GET /.well-known/acme-challenge/<token>`` on 127.0.0.1 with ``answer(token)``.

    Runs in threads of its own. ``hook(host, token)``, if set, is called before answering and may block
    (to hold a validation in progress). ``seen`` lists (host, token) of every challenge request.
    """

    def __init__(self) -> None:
        self.answer: Answer = lambda token: None
        self.hook: Hook | None = None
        self.seen: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body: bytes | None = None
                if self.path.startswith(CHALLENGE_PREFIX):
                    token = self.path[len(CHALLENGE_PREFIX) :]
                    host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
                    outer.seen.append((host, token))
                    if outer.hook is not None:
                        outer.hook(host, token)
                    body = outer.answer(token)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def reset(self) -> None:
        self.answer = lambda token: None
        self.hook = None
        self.seen = []

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


class _Process:
    """A child process whose merged output is collected line by line by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, text: str, timeout: float = START_TIMEOUT) -> None:
        def found() -> bool:
            return any(text in line for line in self.lines)

        with self._changed:
            self._changed.wait_for(lambda: found() or not self._reader.is_alive(), timeout)
            if not found():
                raise RuntimeError(f"{self.argv[0]} did not say {text!r}; output:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


@dataclass(frozen=True)
class Pebble:
    directory_url: str
    ca_bundle: Path  #: trusts Pebble's own HTTPS (directory and management interface)
    root_pem: bytes  #: the root Pebble issues under, from its management interface
    challenges: ChallengeServer
    output: Callable[[], str]  #: Pebble's log so far, for failure messages


@contextlib.contextmanager
def running_pebble(workdir: Path, http_port: int | None = None) -> Iterator[Pebble]:
    """Pebble and its DNS on free loopback ports; everything is stopped when the block ends.

    HTTP-01 validation goes to the test's challenge server, or to ``http_port`` when given (a real
    `pierce server` answering on its vhost port).
    """
    if PEBBLE is None or CHALLTESTSRV is None:
        raise RuntimeError(MISSING)
    workdir.mkdir(parents=True, exist_ok=True)
    ca_bundle, cert, key = _listener_certificate(workdir)
    acme_port, management_port, dns_port, dns_management_port, tls_port = _free_ports(5)
    stack = contextlib.ExitStack()
    with stack:
        challenges = ChallengeServer()
        stack.callback(challenges.close)
        dns = _Process(
            [
                CHALLTESTSRV,
                "-dns01",
                f"127.0.0.1:{dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{dns_management_port}",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ]
        )
        stack.callback(dns.stop)
        dns.wait_line("Starting management server")
        config = workdir / "pebble-config.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{acme_port}",
                        "managementListenAddress": f"127.0.0.1:{management_port}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": http_port or challenges.port,
                        "tlsPort": tls_port,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        pebble = _Process(
            [PEBBLE, "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"], env=PEBBLE_ENV
        )
        stack.callback(pebble.stop)
        pebble.wait_line("ACME directory available at")
        _wait_accepting(acme_port)
        _wait_accepting(management_port)
        context = ssl.create_default_context(cafile=str(ca_bundle))
        with urllib.request.urlopen(f"https://127.0.0.1:{management_port}/roots/0", context=context) as reply:
            root_pem = reply.read()
        yield Pebble(
            directory_url=f"https://127.0.0.1:{acme_port}/dir",
            ca_bundle=ca_bundle,
            root_pem=root_pem,
            challenges=challenges,
            output=lambda: "\n".join(pebble.lines),
        )


def _listener_certificate(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it, for Pebble's own HTTPS."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble listener test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = (workdir / "listener-ca.pem", workdir / "listener.pem", workdir / "listener.key")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 for both TCP and UDP right now."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < n:
            tcp = stack.enter_context(socket.socket())
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            udp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
        return ports


def _wait_accepting(port: int, timeout: float = START_TIMEOUT) -> None:
    """Until 127.0.0.1:port accepts: Go logs its listening line just before it binds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            pause.wait(0.02)
