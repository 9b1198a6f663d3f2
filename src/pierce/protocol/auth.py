"""HMAC-SHA256 challenge-response, sans-I/O: both sides of the handshake as pure functions.

The exchange (the token itself never goes on the wire)::

    client -> server  Hello
    server -> client  Challenge(server_nonce)
    client -> server  AuthResponse(proof=client_proof(...), client_nonce)
    server -> client  AuthOk(server_proof=server_proof(...))   or Error(AUTH_FAILED)

Both proofs cover both nonces, so neither side can replay an old exchange; each is labelled with its
direction, so a client proof is never a valid server proof (or the reverse) even when an attacker
reflects one side's nonce back to it. The server proves itself only after checking the client, so
a wrong token learns nothing.

`channel_binding` ties the proofs to the transport: over TLS it is the SHA-256 of the server
certificate as each side sees it (`certificate_binding`). A man in the middle terminating TLS with
its own certificate makes the two sides compute different bindings, so relaying the proofs fails.
Over plain TCP it is `NO_CHANNEL_BINDING`, and the handshake only proves knowledge of the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: Bytes in each side's random nonce.
NONCE_SIZE = 32
#: Bytes in a proof (an HMAC-SHA256 digest).
PROOF_SIZE = 32
#: The channel binding to use on a connection without TLS.
NO_CHANNEL_BINDING = b""

# Domain-separation labels: a proof computed for one direction never verifies for the other.
_CLIENT_LABEL = b"pierce/1 client proof"
_SERVER_LABEL = b"pierce/1 server proof"
_VISITOR_LABEL = b"pierce/1 visitor proof"


def new_nonce() -> bytes:
    """A fresh random nonce of `NONCE_SIZE` bytes."""
    return secrets.token_bytes(NONCE_SIZE)


def certificate_binding(der_certificate: bytes) -> bytes:
    """The channel binding for a TLS connection: SHA-256 of the server certificate (DER)."""
    return hashlib.sha256(der_certificate).digest()


def client_proof(
    token: str | bytes, *, server_nonce: bytes, client_nonce: bytes, channel_binding: bytes
) -> bytes:
    """The proof the client sends in `AuthResponse`."""
    return _proof(_CLIENT_LABEL, token, server_nonce, client_nonce, channel_binding)


def server_proof(
    token: str | bytes, *, server_nonce: bytes, client_nonce: bytes, channel_binding: bytes
) -> bytes:
    """The proof the server sends in `AuthOk`."""
    return _proof(_SERVER_LABEL, token, server_nonce, client_nonce, channel_binding)


def verify_client_proof(
    token: str | bytes, proof: bytes, *, server_nonce: bytes, client_nonce: bytes, channel_binding: bytes
) -> bool:
    """Whether `proof` (from `AuthResponse`) shows the client knows `token`; constant-time."""
    expected = client_proof(
        token, server_nonce=server_nonce, client_nonce=client_nonce, channel_binding=channel_binding
    )
    return hmac.compare_digest(expected, proof)


def verify_server_proof(
    token: str | bytes, proof: bytes, *, server_nonce: bytes, client_nonce: bytes, channel_binding: bytes
) -> bool:
    """Whether `proof` (from `AuthOk`) shows the server knows `token`; constant-time."""
    expected = server_proof(
        token, server_nonce=server_nonce, client_nonce=client_nonce, channel_binding=channel_binding
    )
    return hmac.compare_digest(expected, proof)


def visitor_proof(secret: str, *, proxy: str, visit_id: str, client_nonce: bytes) -> bytes:
    """The proof a visitor sends in `Visit`: that it knows a secret proxy's ``secret_key``.

    It covers the proxy name and the visit id the server issued for this connection, so it is good for
    one visit of one proxy; only the proxy's owner, which holds the secret, can check it.
    """
    if len(client_nonce) != NONCE_SIZE:
        raise ValueError(f"client nonce must be {NONCE_SIZE} bytes, got {len(client_nonce)}")
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    for part in (_VISITOR_LABEL, proxy.encode(), visit_id.encode(), client_nonce):
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    return mac.digest()


def verify_visitor_proof(
    secret: str, proof: bytes, *, proxy: str, visit_id: str, client_nonce: bytes
) -> bool:
    """Whether `proof` (from `Visit`) shows the visitor knows ``secret``; constant-time."""
    expected = visitor_proof(secret, proxy=proxy, visit_id=visit_id, client_nonce=client_nonce)
    return hmac.compare_digest(expected, proof)


def _proof(
    label: bytes, token: str | bytes, server_nonce: bytes, client_nonce: bytes, binding: bytes
) -> bytes:
    for what, nonce in (("server", server_nonce), ("client", client_nonce)):
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"{what} nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    key = token.encode() if isinstance(token, str) else token
    mac = hmac.new(key, digestmod=hashlib.sha256)
    # Length-prefix every part so that no two different inputs concatenate to the same bytes.
    for part in (label, server_nonce, client_nonce, binding):
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    return mac.digest()
