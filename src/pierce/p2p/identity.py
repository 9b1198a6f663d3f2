"""The short-lived certificate an owner presents on a direct path, pinned by its visitors.

Each client process makes one ECDSA P-256 key and self-signed certificate when it first serves a direct
path. Its SHA-256 fingerprint travels to the visitor inside the rendezvous, under a MAC of the key the
visitor and the owner share (`pierce.protocol.auth.p2p_offer_mac`), so neither the server nor anyone on
the path can substitute a certificate: the visitor's TLS (TCP) or QUIC (UDP) handshake accepts exactly
that certificate and no other. The visitor proves itself inside the encrypted channel with
`pierce.protocol.auth.p2p_client_proof`.

`cryptography` is imported where a certificate is made or encoded, so a client that never serves a
direct path does not load it (a visitor needs only the fingerprint and `client_ssl_context`).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile
from functools import cached_property
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

#: How long a generated certificate is valid (a process serving longer makes a new one).
VALIDITY = datetime.timedelta(days=30)
COMMON_NAME = "pierce p2p"


class Identity(msgspec.Struct, frozen=True):
    """A certificate and its private key; ``fingerprint`` is the SHA-256 of the DER certificate."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> Identity:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def der(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> bytes:
        return fingerprint_of(self.der)

    def server_ssl_context(self) -> ssl.SSLContext:
        """A TLS 1.3 server context presenting this certificate (for the direct TCP path)."""
        from cryptography.hazmat.primitives import serialization

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        cert_pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        key_pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # ssl loads a chain only from a file: write both to a private temporary file, then remove it.
        fd, path = tempfile.mkstemp(prefix="pierce-p2p-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(cert_pem + key_pem)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        return ctx


def fingerprint_of(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def client_ssl_context() -> ssl.SSLContext:
    """A TLS 1.3 client context that checks nothing itself: the caller compares the peer certificate's
    fingerprint with the pinned one before any data moves."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Shared:
    """The one identity of this process, made on first use."""

    @cached_property
    def identity(self) -> Identity:
        return Identity.generate()


_shared = _Shared()


def process_identity() -> Identity:
    """This process's identity (generated once, on first use: about 1 ms)."""
    return _shared.identity
