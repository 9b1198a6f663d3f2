"""TLS: certificates on disk, fingerprints, and real TLS 1.3 handshakes over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from pierce.errors import LocalError, RemoteError
from pierce.protocol import certificate_binding
from pierce.tls import (
    DEFAULT_SERVER_NAME,
    FingerprintMismatch,
    ServerCertificate,
    certificate_fingerprint,
    check_fingerprint,
    check_peer,
    client_context,
    default_state_dir,
    ensure_server_certificate,
    normalize_fingerprint,
    peer_certificate_der,
    server_context,
)

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture
def cert(tmp_path: Path) -> ServerCertificate:
    return ensure_server_certificate(tmp_path / "state")


@pytest.fixture
def other_cert(tmp_path: Path) -> ServerCertificate:
    return ensure_server_certificate(tmp_path / "other")


@contextlib.asynccontextmanager
async def tls_server(cert: ServerCertificate) -> AsyncIterator[int]:
    """A TLS server on a loopback port 0 that says hello; yields the port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(cert))
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def connect(port: int, ctx: ssl.SSLContext) -> tuple[ssl.SSLObject, bytes]:
    """Handshake, read the greeting, close; returns the client's ssl_object and the greeting."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=DEFAULT_SERVER_NAME
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object, await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


# --- certificates on disk ---------------------------------------------------------------------------


@posix_only
def test_generated_certificate_is_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    first = ensure_server_certificate(state)
    assert first.generated
    assert first.cert_path == state / "server.crt"
    assert first.key_path == state / "server.key"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.cert_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["server.crt", "server.key"]  # no temp files left

    again = ensure_server_certificate(state)
    assert not again.generated
    assert again.der == first.der
    assert again.fingerprint == first.fingerprint


def test_generated_certificate_contents(tmp_path: Path) -> None:
    made = ensure_server_certificate(tmp_path, hostnames=["tunnel.example.com", "192.0.2.7", "pierce"])
    cert = x509.load_der_x509_certificate(made.der)
    assert cert.subject.rfc4514_string() == "CN=pierce server"
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pierce", "tunnel.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3649 <= lifetime.days <= 3651
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ensure_server_certificate(tmp_path / "again").der != made.der  # fresh key and random serial


def test_fingerprint_forms(cert: ServerCertificate) -> None:
    assert cert.fingerprint == certificate_fingerprint(cert.der)
    assert len(cert.fingerprint) == 32 * 3 - 1
    assert cert.fingerprint == cert.fingerprint.lower()
    assert cert.fingerprint.replace(":", "") == cert.fingerprint_hex
    assert certificate_binding(cert.der).hex() == cert.fingerprint_hex


def test_given_certificate_and_key_are_loaded(cert: ServerCertificate, tmp_path: Path) -> None:
    loaded = ensure_server_certificate(tmp_path / "unused", cert_file=cert.cert_path, key_file=cert.key_path)
    assert loaded.der == cert.der
    assert not loaded.generated
    assert (loaded.cert_path, loaded.key_path) == (cert.cert_path, cert.key_path)
    assert not (tmp_path / "unused").exists()


def test_given_combined_pem_is_loaded(cert: ServerCertificate, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(cert.key_path.read_bytes() + cert.cert_path.read_bytes())
    loaded = ensure_server_certificate(tmp_path, cert_file=combined)
    assert loaded.der == cert.der
    assert loaded.key_path == combined
    server_context(loaded)


def test_key_not_matching_certificate(
    cert: ServerCertificate, other_cert: ServerCertificate, tmp_path: Path
) -> None:
    with pytest.raises(LocalError, match="does not match") as info:
        ensure_server_certificate(tmp_path, cert_file=cert.cert_path, key_file=other_cert.key_path)
    assert str(other_cert.key_path) in str(info.value)
    assert str(cert.cert_path) in str(info.value)


def test_missing_files(cert: ServerCertificate, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(LocalError, match="cannot read TLS certificate") as info:
        ensure_server_certificate(tmp_path, cert_file=missing, key_file=cert.key_path)
    assert str(missing) in str(info.value)
    with pytest.raises(LocalError, match="cannot read TLS key") as info:
        ensure_server_certificate(tmp_path, cert_file=cert.cert_path, key_file=missing)
    assert str(missing) in str(info.value)
    with pytest.raises(LocalError, match="without a certificate"):
        ensure_server_certificate(tmp_path, key_file=cert.key_path)


def test_garbage_pem(cert: ServerCertificate, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    with pytest.raises(LocalError, match="not a PEM certificate") as info:
        ensure_server_certificate(tmp_path, cert_file=garbage, key_file=cert.key_path)
    assert str(garbage) in str(info.value)
    with pytest.raises(LocalError, match="not a PEM private key") as info:
        ensure_server_certificate(tmp_path, cert_file=cert.cert_path, key_file=garbage)
    assert str(garbage) in str(info.value)
    # A certificate where the key should be, and the reverse.
    with pytest.raises(LocalError, match="not a PEM private key"):
        ensure_server_certificate(tmp_path, cert_file=cert.cert_path, key_file=cert.cert_path)
    with pytest.raises(LocalError, match="not a PEM certificate"):
        ensure_server_certificate(tmp_path, cert_file=cert.key_path, key_file=cert.key_path)


def test_an_encrypted_key_is_refused_without_a_prompt(cert: ServerCertificate, tmp_path: Path) -> None:
    """A server never asks for a password (it runs unattended): an encrypted key is a named error."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(cert.key_path.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(LocalError, match="is encrypted; give an unencrypted key") as info:
        ensure_server_certificate(tmp_path, cert_file=cert.cert_path, key_file=locked)
    assert str(locked) in str(info.value)


def test_the_key_may_follow_the_certificate_in_one_file(cert: ServerCertificate, tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(cert.cert_path.read_bytes() + cert.key_path.read_bytes())
    loaded = ensure_server_certificate(tmp_path, cert_file=both)
    assert loaded.der == cert.der


def test_state_dir_key_lost(cert: ServerCertificate) -> None:
    cert.key_path.unlink()
    with pytest.raises(LocalError, match="is missing") as info:
        ensure_server_certificate(cert.cert_path.parent)
    assert str(cert.key_path) in str(info.value)


def test_state_dir_stray_key_is_replaced(cert: ServerCertificate) -> None:
    # An interrupted first start leaves a key without a certificate: nobody can have pinned it.
    cert.cert_path.unlink()
    made = ensure_server_certificate(cert.cert_path.parent)
    assert made.generated
    assert made.der != cert.der


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIERCE_STATE_DIR", str(tmp_path))
    assert default_state_dir("server") == tmp_path / "server"
    assert default_state_dir("client") == tmp_path / "client"
    monkeypatch.delenv("PIERCE_STATE_DIR")
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
        assert default_state_dir("server") == tmp_path / "xdg" / "pierce" / "server"
        monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
        assert default_state_dir("client") == Path.home() / ".local" / "state" / "pierce" / "client"
        monkeypatch.delenv("XDG_STATE_HOME")
        assert default_state_dir("client") == Path.home() / ".local" / "state" / "pierce" / "client"
    with pytest.raises(ValueError, match="role"):
        default_state_dir("visitor")


# --- fingerprints -----------------------------------------------------------------------------------


def test_check_fingerprint_accepts_every_spelling(cert: ServerCertificate) -> None:
    for spelling in (
        cert.fingerprint,
        cert.fingerprint_hex,
        cert.fingerprint.upper(),
        cert.fingerprint_hex.upper(),
        "sha256:" + cert.fingerprint,
        "SHA256:" + cert.fingerprint_hex.upper(),
        f"  {cert.fingerprint}\n",
    ):
        check_fingerprint(cert.der, spelling)
        assert normalize_fingerprint(spelling) == cert.fingerprint


def test_check_fingerprint_rejects_another_certificate(
    cert: ServerCertificate, other_cert: ServerCertificate
) -> None:
    with pytest.raises(FingerprintMismatch) as info:
        check_fingerprint(other_cert.der, cert.fingerprint_hex.upper())
    assert isinstance(info.value, RemoteError)
    assert str(info.value) == (
        f"server certificate fingerprint mismatch: expected {cert.fingerprint}, "
        f"got {other_cert.fingerprint}; if the server's certificate changed on purpose, "
        "update server_fingerprint"
    )
    assert (info.value.expected, info.value.got) == (cert.fingerprint, other_cert.fingerprint)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "64 hex digits, got 0"),
        ("ab:cd", "64 hex digits, got 4"),
        ("a" * 63, "64 hex digits, got 63"),
        ("a" * 66, "64 hex digits, got 66"),
        ("g" * 64, "hex digits"),
        ("sha1:" + "a" * 64, "hex digits"),
        ("ab cd" + "a" * 60, "hex digits"),
    ],
)
def test_malformed_fingerprints(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        normalize_fingerprint(text)
    with pytest.raises(ValueError, match=problem):
        client_context(fingerprint=text)


# --- real handshakes --------------------------------------------------------------------------------


async def test_handshake_tls13_and_peer_certificate(cert: ServerCertificate) -> None:
    async with tls_server(cert) as port:
        ssl_object, greeting = await connect(port, client_context(fingerprint=cert.fingerprint))
    assert greeting == b"hello\n"
    assert ssl_object.version() == "TLSv1.3"
    assert peer_certificate_der(ssl_object) == cert.der
    assert check_peer(ssl_object, fingerprint=cert.fingerprint) == cert.der


async def test_no_verification_still_sees_certificate(cert: ServerCertificate) -> None:
    async with tls_server(cert) as port:
        ssl_object, _ = await connect(port, client_context())
    assert check_peer(ssl_object) == cert.der


async def test_check_peer_detects_another_server(
    cert: ServerCertificate, other_cert: ServerCertificate
) -> None:
    async with tls_server(other_cert) as port:
        ssl_object, _ = await connect(port, client_context(fingerprint=cert.fingerprint))
    with pytest.raises(FingerprintMismatch):
        check_peer(ssl_object, fingerprint=cert.fingerprint)


async def test_ca_file_of_the_server_certificate_verifies(cert: ServerCertificate) -> None:
    async with tls_server(cert) as port:
        ssl_object, greeting = await connect(port, client_context(ca_file=cert.cert_path))
    assert greeting == b"hello\n"
    assert peer_certificate_der(ssl_object) == cert.der


async def test_ca_file_of_another_certificate_fails(
    cert: ServerCertificate, other_cert: ServerCertificate
) -> None:
    async with tls_server(cert) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(port, client_context(ca_file=other_cert.cert_path))


async def test_ca_file_checks_the_server_name(cert: ServerCertificate) -> None:
    async with tls_server(cert) as port:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname"):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(ca_file=cert.cert_path), server_hostname="other"
            )
        ctx = client_context(ca_file=cert.cert_path, check_hostname=False)
        _, greeting = await connect(port, ctx)
    assert greeting == b"hello\n"


def test_unreadable_ca_file(cert: ServerCertificate, tmp_path: Path) -> None:
    with pytest.raises(LocalError, match="CA certificates") as info:
        client_context(ca_file=tmp_path / "missing.pem")
    assert "missing.pem" in str(info.value)
    with pytest.raises(LocalError, match="CA certificates"):
        client_context(ca_file=cert.key_path)


def tls12_only(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def handshake_in_memory(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    """Run a handshake between two memory-BIO TLS objects; raises what either side raises."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=DEFAULT_SERVER_NAME)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
                    done[name] = True
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_tls12_client_is_refused_with_an_alert(cert: ServerCertificate) -> None:
    handshake_in_memory(client_context(), server_context(cert))  # the same pair works in TLS 1.3
    old = tls12_only(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
        handshake_in_memory(old, server_context(cert))


def test_tls12_server_is_refused(cert: ServerCertificate) -> None:
    old = tls12_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    old.load_cert_chain(cert.cert_path, cert.key_path)
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
        handshake_in_memory(client_context(), old)


async def test_tls12_client_is_refused_over_loopback(cert: ServerCertificate) -> None:
    old = tls12_only(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    async with tls_server(cert) as port:
        # asyncio's server drops the connection without flushing its alert, so the client sees EOF or
        # a reset rather than the protocol-version alert the in-memory test above checks for.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await connect(port, old)
        _, greeting = await connect(port, client_context())  # the server carries on
    assert greeting == b"hello\n"
