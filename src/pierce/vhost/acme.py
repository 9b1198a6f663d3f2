"""Certificates from an ACME CA (Let's Encrypt by default) for the names the server terminates TLS for.

Theory of operation
-------------------
A `CertificateManager` owns one directory per CA under the state directory (``<host>-<hash>/``, so a
certificate from a staging CA is never served after switching to production): ``account.key`` and
``certs/<first-name>-<hash>.pem``, one file per certificate holding its private key and full chain, all
written 0600 and atomically (a crash leaves the old file or the new one). Files found there at start are
loaded, so a restart does not order again.

Names are proven with HTTP-01 only: the CA fetches ``http://<name>/.well-known/acme-challenge/<token>`` on
port 80, and the server's HTTP vhost answers it with `CertificateManager.challenge_response`. HTTP-01
cannot prove a wildcard name, so `check_names` refuses those with a message saying so.

The protocol itself (`pierce.vhost.acme_order`, on the `acme` library) is blocking. It runs on one worker
thread of the manager's own, which also serialises orders (the ACME client is not thread-safe) and keeps
them off the executor asyncio uses for DNS lookups. The worker writes certificate files and the pending
key authorizations; the event loop owns everything else and writes every log event.

A renewal replaces a certificate only once the new one is on disk and loaded: until then, and when the
renewal fails, `context_for` keeps returning the old one. Failures are logged (``acme.failed``, with the
CA's error type and detail) and retried with exponential backoff; `ensure` raises the last failure
instead of asking the CA again while the backoff lasts.

Which coroutines may be cancelled: `run` and `ensure`. Cancelling `ensure` does not cancel the order it
waits for, which `run` or another caller may share.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import logging
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pierce.config import LETS_ENCRYPT_DIRECTORY
from pierce.errors import LocalError
from pierce.logs import event
from pierce.tls import make_private_dir, write_private
from pierce.vhost.acme_order import AcmeOrderer, IssuanceFailed

__all__ = [
    "CHALLENGE_PATH_PREFIX",
    "DEFAULT_RENEW_BEFORE",
    "LETS_ENCRYPT_DIRECTORY",
    "LETS_ENCRYPT_STAGING_DIRECTORY",
    "Certificate",
    "CertificateManager",
    "IssuanceFailed",
    "UnsupportedName",
    "ca_dir_name",
    "check_names",
]

log = logging.getLogger(__name__)

#: Let's Encrypt's staging directory: untrusted certificates, generous rate limits, for trying things out.
LETS_ENCRYPT_STAGING_DIRECTORY = "https://acme-staging-v02.api.letsencrypt.org/directory"
#: Renew a certificate this long before it expires (seconds): 30 days.
DEFAULT_RENEW_BEFORE = 30 * 86400.0
#: Look at every certificate at least this often (seconds), whatever the schedule says.
DEFAULT_CHECK_INTERVAL = 12 * 3600.0
#: First wait after a failed order (seconds); it doubles with each failure in a row up to the maximum.
DEFAULT_RETRY_INITIAL = 60.0
DEFAULT_RETRY_MAX = 6 * 3600.0
#: Least wait after the CA said "rateLimited" (seconds), unless the maximum backoff is shorter.
RATE_LIMIT_RETRY = 3600.0
#: Least time between two orders for one name set (seconds): a CA whose certificates live shorter than
#: ``renew_before`` must not be asked for a new one in a loop.
MIN_REISSUE_INTERVAL = 3600.0
#: Name sets no longer wanted whose last order and backoff are remembered (`CertificateManager.forget`).
FORGOTTEN_MAX = 1024
#: How long one order may take, from creation to download (seconds).
DEFAULT_ORDER_TIMEOUT = 120.0
#: Where the CA fetches HTTP-01 key authorizations.
CHALLENGE_PATH_PREFIX = "/.well-known/acme-challenge/"
#: Most names one certificate may carry (Let's Encrypt's limit).
MAX_NAMES = 100

_CLOSE_WAIT = 5.0
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_UNSAFE = re.compile(r"[^a-z0-9.-]+")


class UnsupportedName(LocalError):
    """A name automatic HTTPS cannot obtain a certificate for (wildcard, IP address, not a DNS name)."""


class Certificate(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate on disk, loaded, with the server context that presents it."""

    names: tuple[str, ...]  #: the DNS names of its subjectAltName, in certificate order
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime
    path: Path  #: the PEM file holding the private key and the full chain
    context: ssl.SSLContext

    def covers(self, names: Iterable[str]) -> bool:
        return set(names) <= set(self.names)


class _Wanted(msgspec.Struct):
    """Renewal state of one name set."""

    names: tuple[str, ...]
    failures: int = 0
    retry_at: float = 0.0  # time.monotonic() before which the CA is not asked again
    error: IssuanceFailed | None = None
    last_ordered: float | None = None  # time.monotonic() of the last successful order


def check_names(domains: Iterable[str]) -> tuple[str, ...]:
    """Lower-cased, deduplicated DNS names for one certificate; `UnsupportedName` for anything else."""
    names: list[str] = []
    for raw in domains:
        name = raw.strip().rstrip(".").lower()
        if "*" in name:
            raise UnsupportedName(
                f"{raw}: a wildcard name can only be proven with the DNS-01 challenge, and automatic HTTPS "
                "answers HTTP-01 on vhost_http_port; list each name instead, or use an https proxy "
                "with your own certificate"
            )
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(name)
            raise UnsupportedName(f"{raw}: an IP address; automatic HTTPS certifies DNS names only")
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise UnsupportedName(f"{raw!r} is not a valid DNS name: {exc}") from exc
        labels = name.split(".")
        if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
            raise UnsupportedName(f"{raw!r} is not a DNS name a public CA can certify (like nas.example.com)")
        names.append(name)
    unique = tuple(dict.fromkeys(names))
    if not unique:
        raise UnsupportedName("no names to certify")
    if len(unique) > MAX_NAMES:
        raise UnsupportedName(f"{len(unique)} names for one certificate; at most {MAX_NAMES}")
    return unique


def ca_dir_name(directory_url: str) -> str:
    """The state subdirectory of one CA: its host, and a hash of the whole directory URL."""
    host = urllib.parse.urlsplit(directory_url).netloc.lower()
    digest = hashlib.sha256(directory_url.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', host) or 'ca'}-{digest}"


class CertificateManager:
    """Obtains, stores, serves and renews ACME certificates for name sets.

    ``state_dir`` holds one subdirectory per CA (`ca_dir_name`). ``ca_file`` is a PEM file of CAs to
    trust for the directory's own HTTPS (a test CA); by default the system's. ``email`` is the account's
    contact, if any. Registering the account agrees to the CA's terms of service. Times are in seconds.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        email: str | None,
        directory_url: str = LETS_ENCRYPT_DIRECTORY,
        ca_file: Path | None = None,
        renew_before: float = DEFAULT_RENEW_BEFORE,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        retry_initial: float = DEFAULT_RETRY_INITIAL,
        retry_max: float = DEFAULT_RETRY_MAX,
        order_timeout: float = DEFAULT_ORDER_TIMEOUT,
    ) -> None:
        self.directory_url = directory_url
        self.dir = state_dir / ca_dir_name(directory_url)
        self._renew_before = datetime.timedelta(seconds=renew_before)
        self._check_interval = check_interval
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._certs: dict[Path, Certificate] = {}
        self._by_name: dict[str, Certificate] = {}
        self._challenges: dict[str, bytes] = {}
        self._wanted: dict[frozenset[str], _Wanted] = {}
        #: The renewal state of name sets no longer wanted, oldest first (see `forget`).
        self._forgotten: dict[frozenset[str], _Wanted] = {}
        self._ordering: dict[frozenset[str], asyncio.Task[Certificate]] = {}
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pierce-acme")
        self._orderer = AcmeOrderer(  # used on the worker thread only
            directory_url,
            self._account_key,
            email=email,
            ca_file=ca_file,
            order_timeout=order_timeout,
            challenges=self._challenges,
            stop=self._stop,
        )
        self._load_all()

    # --- what the server asks -------------------------------------------------------------------

    def challenge_response(self, token: str) -> bytes | None:
        """The key authorization to answer ``GET /.well-known/acme-challenge/<token>`` with, if pending."""
        return self._challenges.get(token)

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """A TLS 1.2+ server context presenting the current certificate for ``server_name``, if any."""
        cert = self.certificate_for(server_name)
        return cert.context if cert is not None else None

    def certificate_for(self, server_name: str) -> Certificate | None:
        """The current certificate for ``server_name`` (the one expiring last, if several cover it)."""
        return self._by_name.get(server_name.rstrip(".").lower())

    # --- what the server wants ------------------------------------------------------------------

    def want(self, domains: Iterable[str]) -> tuple[str, ...]:
        """Keep a certificate for ``domains`` current from now on (`run` orders it); returns the names."""
        names = check_names(domains)
        key = frozenset(names)
        if key not in self._wanted:
            self._wanted[key] = self._forgotten.pop(key) if key in self._forgotten else _Wanted(names)
        self._wake.set()
        return names

    def forget(self, domains: Iterable[str]) -> None:
        """Stop renewing the certificate of ``domains``; it stays on disk and is still served.

        Its last order and backoff are kept (`FORGOTTEN_MAX` name sets): a proxy whose client reconnects
        wants the names again at once, and must not reset the reissue interval or the backoff, which
        would order again on every reconnect (and meet the CA's rate limits)."""
        key = frozenset(check_names(domains))
        wanted = self._wanted.pop(key, None)
        if wanted is not None and (wanted.last_ordered is not None or wanted.error is not None):
            self._forgotten.pop(key, None)
            self._forgotten[key] = wanted
            while len(self._forgotten) > FORGOTTEN_MAX:
                del self._forgotten[next(iter(self._forgotten))]

    async def ensure(self, domains: Iterable[str]) -> Certificate:
        """A current certificate for ``domains``: the one loaded, or a new one ordered now.

        Also `want`s ``domains``. Raises `UnsupportedName`, or `IssuanceFailed` (at once, while the
        backoff after a failed order for the same names lasts).
        """
        names = self.want(domains)
        wanted = self._wanted[frozenset(names)]
        cert = self._covering(names)
        if cert is not None and self._due_in(wanted, cert) > 0:
            return cert
        if wanted.error is not None and time.monotonic() < wanted.retry_at:
            raise wanted.error
        order = self._order_soon(wanted)
        try:
            return await asyncio.shield(order)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if order.cancelled() and (current is None or not current.cancelling()):
                raise IssuanceFailed(names, "stopped", "the certificate manager was closed") from None
            raise

    async def start(self) -> None:
        """Run `run` in a task of the manager's own, until `close`."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self.run(), name="acme renewals")

    async def run(self) -> None:
        """Order and renew the certificates of every wanted name set, until cancelled or closed."""
        while not self._closed:
            self._wake.clear()
            wait = self._check_interval
            for key, wanted in list(self._wanted.items()):
                if key in self._ordering:
                    continue  # its end wakes us
                due_in = self._next_attempt_in(wanted)
                if due_in <= 0:
                    self._order_soon(wanted)
                else:
                    wait = min(wait, due_in)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def close(self) -> None:
        """Stop `run`, abandon orders in progress, and let the worker thread end."""
        self._closed = True
        self._stop.set()
        self._wake.set()
        tasks: list[asyncio.Task[Any]] = list(self._ordering.values())
        if self._runner is not None:
            tasks.append(self._runner)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(TimeoutError):
            # The worker notices the stop at its next step; a request in flight may take longer.
            await asyncio.wait_for(asyncio.to_thread(self._executor.shutdown, wait=True), _CLOSE_WAIT)

    # --- scheduling (event loop) ----------------------------------------------------------------

    def _covering(self, names: tuple[str, ...]) -> Certificate | None:
        found = [c for c in self._certs.values() if c.covers(names)]
        return max(found, key=lambda c: c.not_after) if found else None

    def _due_in(self, wanted: _Wanted, cert: Certificate) -> float:
        """Seconds until ``cert`` should be renewed (<= 0: now)."""
        now = datetime.datetime.now(datetime.UTC)
        due_in = (cert.not_after - self._renew_before - now).total_seconds()
        if wanted.last_ordered is not None:
            due_in = max(due_in, wanted.last_ordered + MIN_REISSUE_INTERVAL - time.monotonic())
        return due_in

    def _next_attempt_in(self, wanted: _Wanted) -> float:
        cert = self._covering(wanted.names)
        due_in = 0.0 if cert is None else self._due_in(wanted, cert)
        if wanted.error is not None:
            due_in = max(due_in, wanted.retry_at - time.monotonic())
        return due_in

    def _order_soon(self, wanted: _Wanted) -> asyncio.Task[Certificate]:
        key = frozenset(wanted.names)
        task = self._ordering.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._order(wanted), name=f"acme {wanted.names[0]}")
            self._ordering[key] = task
            task.add_done_callback(lambda t: self._ordered(key, t))
        return task

    def _ordered(self, key: frozenset[str], task: asyncio.Task[Certificate]) -> None:
        if self._ordering.get(key) is task:
            del self._ordering[key]
        if not task.cancelled():
            task.exception()  # logged by _order already; retrieved so asyncio does not warn
        self._wake.set()

    async def _order(self, wanted: _Wanted) -> Certificate:
        names = wanted.names
        if self._closed:
            raise IssuanceFailed(names, "stopped", "the certificate manager was closed")
        old = self._covering(names)
        why = "new" if old is None else "renewal"
        event(
            log,
            logging.INFO,
            "acme.order",
            f"ordering a certificate for {', '.join(names)} ({why}) from {self.directory_url}",
            names=list(names),
            reason=why,
            directory=self.directory_url,
        )
        started = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
            cert = await loop.run_in_executor(self._executor, self._order_blocking, names)
        except IssuanceFailed as exc:
            self._failed(wanted, exc, old)
            raise
        finally:
            self._log_account()
        wanted.failures = 0
        wanted.error = None
        wanted.last_ordered = time.monotonic()
        self._install(cert)
        event(
            log,
            logging.INFO,
            "acme.issued",
            f"certificate for {', '.join(cert.names)} issued, serial {cert.serial:x}, "
            f"valid until {cert.not_after:%Y-%m-%d %H:%M}Z",
            names=list(cert.names),
            serial=f"{cert.serial:x}",
            not_after=cert.not_after.isoformat(),
            replaced=f"{old.serial:x}" if old is not None else None,
            path=str(cert.path),
            seconds=round(time.monotonic() - started, 3),
        )
        if self._due_in(_Wanted(names), cert) <= 0:
            event(
                log,
                logging.WARNING,
                "acme.renew_margin",
                f"the certificate for {', '.join(names)} lives shorter than renew_before "
                f"({self._renew_before}); ordering at most every {MIN_REISSUE_INTERVAL:.0f}s",
                names=list(names),
                renew_before_s=self._renew_before.total_seconds(),
                lifetime_s=(cert.not_after - cert.not_before).total_seconds(),
            )
        return cert

    def _log_account(self) -> None:
        account, self._orderer.connected_account = self._orderer.connected_account, None
        if account is not None:
            event(
                log,
                logging.INFO,
                "acme.account",
                f"ACME account {account} at {self.directory_url}",
                account=account,
                directory=self.directory_url,
            )

    def _failed(self, wanted: _Wanted, exc: IssuanceFailed, old: Certificate | None) -> None:
        wanted.failures += 1
        delay = min(self._retry_max, self._retry_initial * 2 ** (wanted.failures - 1))
        if exc.kind == "rateLimited":
            delay = max(delay, min(self._retry_max, RATE_LIMIT_RETRY))
        wanted.retry_at = time.monotonic() + delay
        wanted.error = exc
        serving = f"; still serving serial {old.serial:x}" if old is not None else ""
        event(
            log,
            logging.WARNING,
            "acme.failed",
            f"no certificate for {', '.join(wanted.names)}: {exc.kind}: {exc.reason}; "
            f"retrying in {delay:.0f}s{serving}",
            names=list(wanted.names),
            kind=exc.kind,
            reason=exc.reason,
            failures=wanted.failures,
            retry_in_s=round(delay, 3),
            serving=f"{old.serial:x}" if old is not None else None,
        )

    def _install(self, cert: Certificate) -> None:
        self._certs[cert.path] = cert
        by_name: dict[str, Certificate] = {}
        for c in sorted(self._certs.values(), key=lambda c: c.not_after):
            by_name.update(dict.fromkeys(c.names, c))
        self._by_name = by_name

    def _load_all(self) -> None:
        for path in sorted((self.dir / "certs").glob("*.pem")):
            try:
                cert = _load_certificate(path)
            except (OSError, ValueError, ssl.SSLError) as exc:
                event(
                    log,
                    logging.WARNING,
                    "acme.load_failed",
                    f"ignoring certificate file {path}: {exc}",
                    path=str(path),
                    error=str(exc),
                )
                continue
            self._install(cert)
            event(
                log,
                logging.INFO,
                "acme.loaded",
                f"certificate for {', '.join(cert.names)} loaded, valid until {cert.not_after:%Y-%m-%d}",
                names=list(cert.names),
                serial=f"{cert.serial:x}",
                not_after=cert.not_after.isoformat(),
                path=str(path),
            )

    # --- ordering (worker thread) ---------------------------------------------------------------

    def _order_blocking(self, names: tuple[str, ...]) -> Certificate:
        """Order, check, store and load a certificate for ``names``."""
        data = self._orderer.order(names)
        try:
            got = _dns_names(_parse(data))
            if not set(names) <= set(got):
                raise ValueError(f"the CA issued a certificate for {', '.join(got)}")
            digest = hashlib.sha256(",".join(sorted(names)).encode()).hexdigest()[:8]
            path = self.dir / "certs" / f"{names[0]}-{digest}.pem"
            make_private_dir(path.parent)
            write_private(path, data)
            return _load_certificate(path)
        except (OSError, LocalError, ValueError, ssl.SSLError) as exc:
            raise IssuanceFailed(names, "error", f"cannot use the certificate: {exc}") from exc

    def _account_key(self) -> ec.EllipticCurvePrivateKey:
        path = self.dir / "account.key"
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{path} is not an EC private key")
            return key
        key = ec.generate_private_key(ec.SECP256R1())
        make_private_dir(self.dir)
        write_private(path, _key_pem(key))
        return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _parse(data: bytes) -> x509.Certificate:
    """The leaf of a key-and-chain PEM, after checking the key is the leaf's."""
    certs = x509.load_pem_x509_certificates(data)
    key = serialization.load_pem_private_key(data, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certs[0].public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise ValueError("the private key does not match the certificate")
    return certs[0]


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))


def _load_certificate(path: Path) -> Certificate:
    leaf = _parse(path.read_bytes())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(path)  # the file holds the key as well
    return Certificate(
        names=_dns_names(leaf),
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        path=path,
        context=context,
    )
