"""Automatic HTTPS certificates, obtained from Pebble (the ACME test CA) over real HTTP-01 validation.

Pebble's mock DNS sends every name to 127.0.0.1, where a challenge server of the test answers from
`CertificateManager.challenge_response`. Pages are fetched over TLS served with `context_for`, verifying
the chain against Pebble's root and the name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from helpers.acme_pebble import MISSING, Pebble, running_pebble
from support.streams import payload
from test_resource_faults import fill, small_disk

from pierce.vhost.acme import (
    CertificateManager,
    IssuanceFailed,
    UnsupportedName,
    check_names,
)

NAMES = ("nas.example.com", "ha.example.com")
EMAIL = "ops@example.com"
PAGE = payload(64 * 1024, seed=5)
FOREVER = 100 * 365 * 86400.0  # renew_before longer than any certificate lives: every one is due

needs_pebble = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    if MISSING is not None:
        pytest.skip(MISSING)
    with running_pebble(tmp_path_factory.mktemp("pebble")) as running:
        yield running


@pytest.fixture
def ca(pebble: Pebble) -> Iterator[Pebble]:
    """Pebble with a challenge server that answers nothing and has seen nothing yet."""
    pebble.challenges.reset()
    yield pebble
    pebble.challenges.reset()


class AcmeEvents(logging.Handler):
    """The manager's log events, awaitable by name."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None) or {}
        self.records.append({"event": getattr(record, "event", None), "msg": record.getMessage(), **fields})
        self._changed.set()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == name]

    async def wait(self, name: str, count: int = 1, timeout: float = 20) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.named(name)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.named(name)


@pytest.fixture
def events() -> Iterator[AcmeEvents]:
    logger = logging.getLogger("pierce.vhost.acme")
    handler = AcmeEvents()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class HeldValidation:
    """Holds the CA's challenge requests until released; ``arrived`` resolves at the first one."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.arrived: asyncio.Future[str] = self._loop.create_future()
        self._release = threading.Event()

    def __call__(self, host: str, token: str) -> None:
        self._loop.call_soon_threadsafe(self._arrive, host)
        self._release.wait(30)

    def _arrive(self, host: str) -> None:
        if not self.arrived.done():
            self.arrived.set_result(host)

    def release(self) -> None:
        self._release.set()


@contextlib.asynccontextmanager
async def managed(state: Path, pebble: Pebble, **options: Any) -> AsyncIterator[CertificateManager]:
    manager = CertificateManager(
        state, email=EMAIL, directory_url=pebble.directory_url, ca_file=pebble.ca_bundle, **options
    )
    try:
        yield manager
    finally:
        await manager.close()


@contextlib.asynccontextmanager
async def tls_site(manager: CertificateManager) -> AsyncIterator[int]:
    """HTTPS on 127.0.0.1 choosing each handshake's certificate by SNI with `context_for`; yields the port."""
    base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def choose(conn: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        context = manager.context_for(name) if name else None
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        conn.context = context
        return None

    base.sni_callback = choose

    async def page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(PAGE))
            writer.write(PAGE)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(page, "127.0.0.1", 0, ssl=base)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def fetch(port: int, name: str, root_pem: bytes) -> tuple[x509.Certificate, str]:
    """GET / over TLS for ``name``, verifying chain and name against ``root_pem``.

    Returns the peer's certificate and the SHA-256 of the page.
    """
    context = ssl.create_default_context(cadata=root_pem.decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        body = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    return x509.load_der_x509_certificate(der), hashlib.sha256(body).hexdigest()


def dns_names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_names_refused_with_a_reason() -> None:
    with pytest.raises(UnsupportedName, match=r"wildcard.*DNS-01.*HTTP-01"):
        check_names(["nas.example.com", "*.dev.example.com"])
    with pytest.raises(UnsupportedName, match="IP address"):
        check_names(["203.0.113.7"])
    with pytest.raises(UnsupportedName, match="not a DNS name"):
        check_names(["localhost"])
    with pytest.raises(UnsupportedName, match="no names"):
        check_names([])
    assert check_names(["NAS.example.com.", "nas.example.com", "ha.example.com"]) == NAMES


async def test_wildcard_is_refused_before_asking_the_ca(tmp_path: Path) -> None:
    manager = CertificateManager(tmp_path, email=None, directory_url="https://127.0.0.1:9/dir")
    try:
        with pytest.raises(UnsupportedName, match=r"\*\.dev\.example\.com: a wildcard"):
            await manager.ensure(["*.dev.example.com"])
    finally:
        await manager.close()


@needs_pebble
async def test_issue_serve_restart_and_renew(ca: Pebble, events: AcmeEvents, tmp_path: Path) -> None:
    expected_page = hashlib.sha256(PAGE).hexdigest()

    # First start: an account and a certificate for both names, proven over HTTP-01.
    async with managed(tmp_path, ca) as manager:
        ca.challenges.answer = manager.challenge_response
        first = await manager.ensure(NAMES)
        assert set(first.names) == set(NAMES)
        assert {host for host, _ in ca.challenges.seen} == set(NAMES), ca.challenges.seen
        assert [e["names"] for e in events.named("acme.order")] == [list(NAMES)]
        assert len(events.named("acme.account")) == 1
        assert manager.challenge_response(ca.challenges.seen[0][1]) is None  # forgotten once validated

        account_key = manager.dir / "account.key"
        assert mode(manager.dir) == 0o700
        assert mode(account_key) == 0o600
        assert mode(first.path) == 0o600

        async with tls_site(manager) as port:
            for name in NAMES:
                cert, digest = await fetch(port, name, ca.root_pem)
                assert digest == expected_page
                assert cert.serial_number == first.serial
                assert dns_names(cert) == set(NAMES)
                common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                assert all(attr.value in NAMES for attr in common_names), cert.subject
            with pytest.raises((ssl.SSLError, ConnectionError)):  # no certificate for that name
                await fetch(port, "other.example.com", ca.root_pem)
        assert manager.context_for("NAS.example.com.") is manager.context_for("nas.example.com")
        assert manager.context_for("other.example.com") is None

    # Restart: the certificate comes from disk, no order, no validation.
    ca.challenges.seen.clear()
    events.records.clear()
    async with managed(tmp_path, ca) as manager:
        assert [e["serial"] for e in events.named("acme.loaded")] == [f"{first.serial:x}"]
        again = await manager.ensure(list(reversed(NAMES)))
        assert again.serial == first.serial
        assert events.named("acme.order") == [] and events.named("acme.account") == []
        assert ca.challenges.seen == []

    # Renewal by the background task: the old certificate is served until the new one is in place.
    events.records.clear()
    async with managed(tmp_path, ca, renew_before=FOREVER) as manager:
        held = HeldValidation()
        ca.challenges.answer = manager.challenge_response
        ca.challenges.hook = held
        renewing = asyncio.create_task(manager.run())
        try:
            async with tls_site(manager) as port:
                manager.want(NAMES)
                await asyncio.wait_for(held.arrived, 20)
                cert, digest = await fetch(port, NAMES[0], ca.root_pem)
                assert cert.serial_number == first.serial, "a renewal in progress must not stop the old cert"
                assert digest == expected_page
                held.release()

                (issued,) = await events.wait("acme.issued")
                assert issued["replaced"] == f"{first.serial:x}"
                assert issued["serial"] != f"{first.serial:x}"
                for name in NAMES:
                    cert, digest = await fetch(port, name, ca.root_pem)
                    assert f"{cert.serial_number:x}" == issued["serial"]
                    assert digest == expected_page
            assert not renewing.done()
            assert [e["reason"] for e in events.named("acme.order")] == ["renewal"]
            # Due again at once (renew_before outlives the certificate): warned, and not ordered in a loop.
            assert len(events.named("acme.renew_margin")) == 1
            assert len(events.named("acme.order")) == 1
        finally:
            held.release()
            await manager.close()
            await asyncio.wait_for(renewing, 5)
    assert events.named("acme.failed") == []


@needs_pebble
async def test_failed_validation_is_logged_retried_and_survived(
    ca: Pebble, events: AcmeEvents, tmp_path: Path
) -> None:
    names = ("cam.example.com",)
    async with managed(tmp_path, ca, retry_initial=2.0) as manager:
        ca.challenges.answer = lambda token: b"not the key authorization"
        await manager.start()
        manager.want(names)
        (failed,) = await events.wait("acme.failed")
        assert failed["names"] == list(names)
        assert failed["kind"] == "unauthorized", failed
        assert "cam.example.com" in failed["reason"] and "key authorization" in failed["reason"], failed
        assert failed["failures"] == 1 and failed["retry_in_s"] == 2.0
        assert manager.context_for("cam.example.com") is None

        # While the backoff lasts, ensure() gives the reason without asking the CA again.
        with pytest.raises(IssuanceFailed) as raised:
            await manager.ensure(names)
        assert raised.value.kind == "unauthorized"
        assert len(events.named("acme.order")) == 1

        # Fixed: the background task's retry gets the certificate.
        ca.challenges.answer = manager.challenge_response
        (issued,) = await events.wait("acme.issued", timeout=30)
        assert issued["names"] == list(names)
        assert len(events.named("acme.order")) == 2
        assert manager.context_for("cam.example.com") is not None

    # A renewal that fails keeps the current certificate in service.
    events.records.clear()
    async with managed(tmp_path, ca, renew_before=FOREVER) as manager:
        current = manager.certificate_for("cam.example.com")
        assert current is not None
        ca.challenges.answer = lambda token: b"not the key authorization"
        with pytest.raises(IssuanceFailed) as raised:
            await manager.ensure(names)
        assert raised.value.kind == "unauthorized"
        (failed,) = events.named("acme.failed")
        assert failed["serving"] == f"{current.serial:x}"
        assert manager.certificate_for("cam.example.com") == current
        assert manager.context_for("cam.example.com") is current.context


@needs_pebble
async def test_names_wanted_again_keep_their_reissue_interval_and_backoff(
    ca: Pebble, events: AcmeEvents, tmp_path: Path
) -> None:
    """A proxy whose client reconnects forgets its names and wants them again at once: a certificate that
    is due at once (it lives shorter than renew_before) is not ordered again, and a failed order's
    backoff still holds."""
    names = ("flap.example.com",)
    async with managed(tmp_path, ca, renew_before=FOREVER) as manager:
        ca.challenges.answer = manager.challenge_response
        cert = await manager.ensure(names)
        await events.wait("acme.renew_margin")
        for _ in range(3):
            manager.forget(names)
            manager.want(names)
            assert await manager.ensure(names) == cert
        assert len(events.named("acme.order")) == 1

        other = ("fails.example.com",)
        ca.challenges.answer = lambda token: b"not the key authorization"
        with pytest.raises(IssuanceFailed):
            await manager.ensure(other)
        manager.forget(other)
        manager.want(other)
        with pytest.raises(IssuanceFailed):
            await manager.ensure(other)  # the backoff's answer, without asking the CA
        assert len(events.named("acme.order")) == 2


@needs_pebble
async def test_full_disk_fails_orders_with_the_reason_then_they_succeed(
    ca: Pebble, events: AcmeEvents, tmp_path: Path
) -> None:
    """A state directory on a full disk: the order fails with the reason (nothing can be written, from
    the account key on), is retried, and succeeds once there is room; a renewal failing the same way
    keeps the current certificate in service."""
    names = ("disk.example.com",)
    with small_disk(tmp_path / "state") as disk:
        fill(disk)
        async with managed(disk, ca, retry_initial=0.5) as manager:
            ca.challenges.answer = manager.challenge_response
            await manager.start()
            manager.want(names)
            (failed,) = await events.wait("acme.failed")
            assert "No space left on device" in failed["reason"], failed
            assert manager.context_for("disk.example.com") is None
            (disk / "filler").unlink()
            (issued,) = await events.wait("acme.issued", timeout=30)
            assert issued["names"] == list(names)

        events.records.clear()
        fill(disk)
        async with managed(disk, ca, renew_before=FOREVER) as manager:
            ca.challenges.answer = manager.challenge_response
            current = manager.certificate_for("disk.example.com")
            assert current is not None
            with pytest.raises(IssuanceFailed) as raised:
                await manager.ensure(names)
            assert "No space left on device" in raised.value.reason, raised.value
            (failed,) = events.named("acme.failed")
            assert failed["serving"] == f"{current.serial:x}"
            assert manager.context_for("disk.example.com") is current.context
