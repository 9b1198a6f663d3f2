"""Self-signed certificates and TLS services for tests of SNI routing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.crt`` / ``name.key`` (a certificate for ``name``) into ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return crt, pem


@dataclass
class TlsService:
    """A running `tls_service`: its port, its certificate, and what each connection sent it."""

    port: int
    cert: Path
    #: One running SHA-256 per accepted connection, in order, over the bytes that arrived decrypted.
    received: list[Any] = field(default_factory=list)

    def digests(self) -> list[tuple[str, int]]:
        """(sha256 hex, size) of what each connection has sent so far."""
        return [(h.hexdigest(), n) for h, n in ((r["sha256"], r["size"]) for r in self.received)]


@contextlib.asynccontextmanager
async def tls_service(directory: Path, name: str) -> AsyncIterator[TlsService]:
    """A TLS server with a certificate for ``name``: it sends one line, ``name``, then echoes every byte
    it receives, hashing it first (`TlsService.digests`), until the peer closes."""
    crt, key = self_signed(directory, name)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    service = TlsService(0, crt)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: dict[str, Any] = {"sha256": hashlib.sha256(), "size": 0}
        service.received.append(seen)
        with contextlib.suppress(Exception):
            writer.write(f"{name}\n".encode())
            await writer.drain()
            while data := await reader.read(256 * 1024):
                seen["sha256"].update(data)
                seen["size"] += len(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    service.port = int(server.sockets[0].getsockname()[1])
    try:
        yield service
    finally:
        server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await server.wait_closed()
