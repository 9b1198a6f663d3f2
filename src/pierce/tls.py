"""TLS for the tunnel's control and work connections: the server's certificate, both contexts, pinning.

Theory of operation
-------------------
The server always has a certificate. An operator may give one (``cert_file``/``key_file``); otherwise
the server makes a self-signed one on first start and keeps it in its state directory, so its
fingerprint stays the same across restarts and can be pinned by clients.

The client trusts the server in one of three ways:

- **fingerprint** (``server_fingerprint``): the TLS layer accepts any certificate (``CERT_NONE``,
  because a self-signed certificate would fail chain verification) and :func:`check_peer` compares
  the SHA-256 of the certificate the server sent with the pinned one right after the handshake,
  before a single byte of the protocol is sent.
- **CA file** (``ca_file``): OpenSSL verifies the chain against the file. The file may hold the
  server's own certificate (any certificate in it is a trust anchor), a private CA, or a bundle. By
  default the name given as ``server_hostname`` at connect time must match the certificate; pierce's
  generated certificates carry the name ``"pierce"`` (`DEFAULT_SERVER_NAME`).
- **neither**: trust on first use (`pierce.known_hosts`): the client's dialer records the certificate
  of a new ``host:port`` and refuses a different one later, before the login is sent. Besides, the
  HMAC handshake (`pierce.protocol.auth`) binds its proofs to the certificate each side saw, so a man in
  the middle who does not know the token cannot complete authentication.

TLS 1.3 is the minimum on both sides. Nothing here does I/O on sockets; certificate files are the
only files touched.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import ssl
import sys
from pathlib import Path

import msgspec

from pierce.errors import LocalError, RemoteError

#: The DNS name every generated certificate carries; clients verifying with a CA file connect with it.
DEFAULT_SERVER_NAME = "pierce"
#: Common name of generated certificates.
GENERATED_COMMON_NAME = "pierce server"
#: Lifetime of a generated certificate. Pinned by fingerprint, it is never rotated behind anyone's back.
GENERATED_VALIDITY = datetime.timedelta(days=3650)
#: File names of the generated certificate and key inside the state directory.
CERT_FILE_NAME = "server.crt"
KEY_FILE_NAME = "server.key"
#: Environment variable that overrides the base state directory.
STATE_DIR_ENV = "PIERCE_STATE_DIR"

_ROLES = ("server", "client")
_FINGERPRINT_PREFIX = "sha256:"
_FINGERPRINT_HEX_DIGITS = 64
_HEX = re.compile(r"[0-9a-f]*")


class NoPeerCertificate(RemoteError):
    """The TLS peer completed the handshake without presenting a certificate."""


class FingerprintMismatch(RemoteError):
    """The server's certificate is not the one pinned in the client's configuration."""

    def __init__(self, *, expected: str, got: str) -> None:
        self.expected = expected
        self.got = got
        super().__init__(
            f"server certificate fingerprint mismatch: expected {expected}, got {got}; "
            "if the server's certificate changed on purpose, update server_fingerprint"
        )


class ServerCertificate(msgspec.Struct, frozen=True):
    """The certificate a server presents, with the key files ``ssl`` loads it from."""

    cert_path: Path
    key_path: Path
    #: The leaf certificate, DER-encoded: exactly the bytes clients see and hash.
    der: bytes
    #: True when this call created the files (first start); log the fingerprint then.
    generated: bool

    @property
    def fingerprint(self) -> str:
        """SHA-256 of `der` as lowercase colon-separated hex pairs (``ab:cd:...``)."""
        return certificate_fingerprint(self.der)

    @property
    def fingerprint_hex(self) -> str:
        """SHA-256 of `der` as 64 lowercase hex digits, no separators."""
        return hashlib.sha256(self.der).hexdigest()


# --- fingerprints -----------------------------------------------------------------------------------


def certificate_fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as lowercase colon-separated hex pairs."""
    return _colons(hashlib.sha256(der).hexdigest())


def normalize_fingerprint(text: str) -> str:
    """Canonical form (lowercase ``ab:cd:...``) of a SHA-256 fingerprint written by a person.

    Accepts any case, with or without colons, optionally prefixed ``sha256:``; surrounding
    whitespace is ignored. Raises `ValueError` saying what is wrong otherwise.
    """
    digits = text.strip().lower()
    if digits.startswith(_FINGERPRINT_PREFIX):
        digits = digits[len(_FINGERPRINT_PREFIX) :]
    digits = digits.replace(":", "")
    if not _HEX.fullmatch(digits):
        raise ValueError(
            f"a SHA-256 fingerprint is hex digits (optionally in colon-separated pairs): {text!r}"
        )
    if len(digits) != _FINGERPRINT_HEX_DIGITS:
        raise ValueError(
            f"a SHA-256 fingerprint has {_FINGERPRINT_HEX_DIGITS} hex digits, got {len(digits)}: {text!r}"
        )
    return _colons(digits)


def check_fingerprint(der: bytes, expected: str) -> None:
    """Raise `FingerprintMismatch` unless the certificate `der` hashes to `expected`.

    `expected` may be in any form `normalize_fingerprint` accepts; a malformed one raises `ValueError`.
    """
    want = normalize_fingerprint(expected)
    got = certificate_fingerprint(der)
    if got != want:
        raise FingerprintMismatch(expected=want, got=got)


def _colons(hex_digits: str) -> str:
    return ":".join(hex_digits[i : i + 2] for i in range(0, len(hex_digits), 2))


# --- the peer's certificate -------------------------------------------------------------------------


def peer_certificate_der(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes:
    """The DER certificate the peer presented on a completed handshake.

    Works whatever the verify mode (a ``CERT_NONE`` client still receives the server's certificate).
    With asyncio streams, pass ``writer.get_extra_info("ssl_object")``.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise NoPeerCertificate("the TLS peer presented no certificate")
    return der


def check_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, *, fingerprint: str | None = None) -> bytes:
    """Check the server right after the client's handshake and return its DER certificate.

    With `fingerprint`, raises `FingerprintMismatch` unless the certificate matches it. Feed the
    result to `pierce.protocol.auth.certificate_binding` for the handshake's channel binding.
    """
    der = peer_certificate_der(ssl_object)
    if fingerprint is not None:
        check_fingerprint(der, fingerprint)
    return der


# --- contexts ---------------------------------------------------------------------------------------


def server_context(cert: ServerCertificate) -> ssl.SSLContext:
    """A server-side context presenting `cert`, TLS 1.3 or later, asking clients for no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(cert.cert_path, cert.key_path)
    except (OSError, ssl.SSLError) as exc:
        raise LocalError(
            f"cannot load TLS certificate {cert.cert_path} with key {cert.key_path}: {exc}"
        ) from exc
    return ctx


def client_context(
    *, fingerprint: str | None = None, ca_file: Path | None = None, check_hostname: bool = True
) -> ssl.SSLContext:
    """A client-side context, TLS 1.3 or later.

    With `ca_file`, the handshake fails (`ssl.SSLCertVerificationError`) unless the server's chain
    leads to a certificate in that file; with `check_hostname` (the default) the certificate must
    also carry the ``server_hostname`` given at connect time (asyncio defaults it to the host
    dialled, so pass ``server_hostname=DEFAULT_SERVER_NAME`` for a generated certificate).
    Without `ca_file` the TLS layer accepts any certificate: call `check_peer` after the handshake.
    `fingerprint` is only validated here (`ValueError` if malformed); `check_peer` enforces it.
    Both may be given: the chain is verified and the certificate is pinned.
    """
    if fingerprint is not None:
        normalize_fingerprint(fingerprint)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_file is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Any certificate in the file is a trust anchor, so it may hold the server's own certificate.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise LocalError(f"cannot load CA certificates from {ca_file}: {exc}") from exc
    return ctx


# --- the server's certificate on disk --------------------------------------------------------------


def ensure_server_certificate(
    state_dir: Path,
    *,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    hostnames: list[str] | None = None,
) -> ServerCertificate:
    """The server's certificate: the operator's files, or a self-signed one kept in `state_dir`.

    With `cert_file`, it and `key_file` are loaded (the key may sit in `cert_file` itself when
    `key_file` is omitted); `state_dir` is not touched. Otherwise ``server.crt``/``server.key`` in
    `state_dir` are reused if present, or generated (ECDSA P-256, CN ``"pierce server"``, DNS name
    ``"pierce"`` plus `hostnames`, which may include IP addresses; valid for ten years). `hostnames`
    only shapes a new certificate: delete the two files to generate one with other names (and a new
    fingerprint). Every problem is a `LocalError` naming the file.
    """
    if cert_file is not None:
        return _load(cert_file, key_file or cert_file, generated=False)
    if key_file is not None:
        raise LocalError(f"TLS key file {key_file} given without a certificate file")
    cert_path = state_dir / CERT_FILE_NAME
    key_path = state_dir / KEY_FILE_NAME
    if cert_path.exists():
        if not key_path.exists():
            raise LocalError(
                f"TLS key {key_path} is missing but certificate {cert_path} exists; restore the key, "
                "or delete the certificate to generate a new one (clients pinning it must be updated)"
            )
        return _load(cert_path, key_path, generated=False)
    # No certificate yet (a key without one is the remains of an interrupted first start: replace it).
    make_private_dir(state_dir)
    cert_pem, key_pem = _generate([DEFAULT_SERVER_NAME, *(hostnames or [])])
    # The key goes first, so a certificate on disk always has its key next to it.
    write_private(key_path, key_pem)
    write_private(cert_path, cert_pem)
    return _load(cert_path, key_path, generated=True)


def default_state_dir(role: str) -> Path:
    """Where `role` ("server" or "client") keeps state between runs, one subdirectory per role.

    ``$PIERCE_STATE_DIR/<role>`` if set; else ``$XDG_STATE_HOME/pierce/<role>`` or
    ``~/.local/state/pierce/<role>`` (Linux and other Unix), ``~/Library/Application Support/pierce/<role>``
    (macOS), ``%LOCALAPPDATA%\\pierce\\<role>`` (Windows).
    """
    if role not in _ROLES:
        raise ValueError(f"role must be one of {', '.join(_ROLES)}, got {role!r}")
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override).expanduser() / role
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_STATE_HOME")
        # The XDG spec says relative paths are invalid and must be ignored.
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "pierce" / role


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\s.+?\s-----END CERTIFICATE-----", re.S)


class _EncryptedKey(Exception):
    """The key asked for a password (we give none: a server must not prompt)."""


def _no_password() -> bytes:
    raise _EncryptedKey


def _load(cert_path: Path, key_path: Path, *, generated: bool) -> ServerCertificate:
    # With the ssl module alone (cryptography, ~8 MiB, loads only to generate a certificate): the
    # first certificate of the file is parsed by OpenSSL as a trust anchor would be, then the pair is
    # loaded as the TLS port will load it, which checks that the key matches.
    cert_pem = _read(cert_path, "certificate")
    if key_path != cert_path:
        _read(key_path, "key")
    found = _PEM_CERTIFICATE.search(cert_pem)
    try:
        if found is None:
            raise ValueError("no BEGIN CERTIFICATE block")
        der = ssl.PEM_cert_to_DER_cert(found.group().decode("ascii"))
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (ValueError, ssl.SSLError) as exc:
        raise LocalError(f"TLS certificate {cert_path} is not a PEM certificate: {exc}") from exc
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=_no_password)
    except _EncryptedKey:
        raise LocalError(f"TLS key {key_path} is encrypted; give an unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise LocalError(f"TLS key {key_path} does not match certificate {cert_path}") from None
        raise LocalError(f"TLS key {key_path} is not a PEM private key: {exc}") from exc
    except OSError as exc:
        raise LocalError(f"cannot read TLS key {key_path}: {exc.strerror or exc}") from exc
    return ServerCertificate(cert_path=cert_path, key_path=key_path, der=der, generated=generated)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LocalError(f"cannot read TLS {what} {path}: {exc.strerror or exc}") from exc


def _generate(names: list[str]) -> tuple[bytes, bytes]:
    """A self-signed certificate and its key, both PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GENERATED_COMMON_NAME)])
    alt_names: list[x509.GeneralName] = []
    for host in dict.fromkeys(names):  # dedupe, keep order
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clients whose clocks run slow
        .not_valid_after(now + GENERATED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def make_private_dir(path: Path) -> None:
    if path.is_dir():
        return
    try:
        path.mkdir(mode=0o700, parents=True)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        if not path.is_dir():  # another process made it meanwhile: fine when it is a directory
            raise LocalError(f"state directory {path} is not a directory") from None
    except OSError as exc:
        raise LocalError(f"cannot create state directory {path}: {exc.strerror or exc}") from exc


def write_private(path: Path, data: bytes) -> None:
    """Write `path` readable by its owner only, atomically: a crash leaves the old file or the new one.

    The temporary file is made as ``tempfile.mkstemp`` makes one (a random name, ``O_EXCL``, ``0600``)
    without importing tempfile, whose shutil loads the archive modules (bz2, lzma) into the process.
    """
    try:
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}")
        # os.open's descriptors are not inherited (PEP 446); O_BINARY matters on Windows only
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise LocalError(f"cannot write {path}: {exc.strerror or exc}") from exc
