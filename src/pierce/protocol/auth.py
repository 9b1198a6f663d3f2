"""Keyed proofs, sans-I/O: everything that is proven with a key the peers already share.

The keys come from a password-authenticated exchange (`pierce.protocol.pake`), never from the token
itself:

- a login derives a session key; its work connections prove it with `client_proof` / `server_proof`
  (an HMAC challenge-response over both nonces and the channel binding), so the pool is authenticated
  once per session and a passive tap on a plain work connection sees only HMACs of a random key;
- a login binds its SRP exchange to the TLS channel with `binding_proof`;
- a client that reconnects proves it held the previous session (`resume_proof`);
- a visitor and the owner of a secret service who ran the exchange share a ticket key; later visits
  prove it in both directions (`visit_proof`, `owner_proof`).

Every proof is labelled with its purpose and direction, so no proof is ever valid for another use, and
every part is length-prefixed, so no two different inputs concatenate to the same bytes.

``channel_binding`` ties proofs to the transport: over TLS it is the SHA-256 of the server certificate
as each side sees it (`certificate_binding`). A man in the middle terminating TLS with its own
certificate makes the two sides compute different bindings, so relaying the messages fails.
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

_CLIENT_LABEL = b"pierce/2 work client proof"
_SERVER_LABEL = b"pierce/2 work server proof"
_BIND_CLIENT = b"pierce/2 login channel client"
_BIND_SERVER = b"pierce/2 login channel server"
_RESUME_LABEL = b"pierce/2 resume"
_VISIT_LABEL = b"pierce/2 visit"
_OWNER_LABEL = b"pierce/2 owner"
_P2P_OFFER_LABEL = b"pierce/2 p2p offer"
_P2P_CLIENT_LABEL = b"pierce/2 p2p client"
_P2P_OWNER_LABEL = b"pierce/2 p2p owner"


def new_nonce() -> bytes:
    """A fresh random nonce of `NONCE_SIZE` bytes."""
    return secrets.token_bytes(NONCE_SIZE)


def certificate_binding(der_certificate: bytes) -> bytes:
    """The channel binding for a TLS connection: SHA-256 of the server certificate (DER)."""
    return hashlib.sha256(der_certificate).digest()


def mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 under ``key`` of ``label`` and ``parts``, each length-prefixed."""
    digest = hmac.new(key, digestmod=hashlib.sha256)
    for part in (label, *parts):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


def derive_key(key: bytes, purpose: str, *context: str) -> bytes:
    """A key for one purpose, derived from a session key (never the session key itself)."""
    return mac(key, b"pierce/2 key " + purpose.encode(), *(c.encode() for c in context))


def _check_nonces(server_nonce: bytes, client_nonce: bytes) -> None:
    for what, nonce in (("server", server_nonce), ("client", client_nonce)):
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"{what} nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")


def client_proof(key: bytes, *, server_nonce: bytes, client_nonce: bytes, channel_binding: bytes) -> bytes:
    """The proof a work connection sends in `AuthResponse`: it holds the session's work key."""
    _check_nonces(server_nonce, client_nonce)
    return mac(key, _CLIENT_LABEL, server_nonce, client_nonce, channel_binding)


def server_proof(key: bytes, *, server_nonce: bytes, client_nonce: bytes, channel_binding: bytes) -> bytes:
    """The proof the server sends back in `AuthOk` on a work connection."""
    _check_nonces(server_nonce, client_nonce)
    return mac(key, _SERVER_LABEL, server_nonce, client_nonce, channel_binding)


def verify(expected: bytes, proof: bytes | None) -> bool:
    """Constant-time comparison; a missing proof never verifies."""
    return proof is not None and hmac.compare_digest(expected, proof)


def binding_proof(key: bytes, *, server: bool, channel_binding: bytes) -> bytes:
    """Proof that the holder of a fresh login key sees ``channel_binding`` (its direction labelled)."""
    return mac(key, _BIND_SERVER if server else _BIND_CLIENT, channel_binding)


def resume_proof(resume_key: bytes, *, challenge: bytes) -> bytes:
    """Proof that a new login comes from the client that held the session of ``resume_key``."""
    return mac(resume_key, _RESUME_LABEL, challenge)


def visit_proof(ticket_key: bytes, *, proxy: str, visit_id: str, nonce: bytes) -> bytes:
    """A visitor's proof, on a later visit, that it ran the exchange that made ``ticket_key``."""
    return mac(ticket_key, _VISIT_LABEL, proxy.encode(), visit_id.encode(), nonce)


def owner_proof(ticket_key: bytes, *, proxy: str, visit_id: str, nonce: bytes) -> bytes:
    """The owner's answer to `visit_proof`: it too holds the ticket key (so it knows the secret)."""
    return mac(ticket_key, _OWNER_LABEL, proxy.encode(), visit_id.encode(), nonce)


def p2p_key(ticket_key: bytes, *, proxy: str, visit_id: str) -> bytes:
    """The key of one P2P rendezvous (the visit ``visit_id``): punch packets are authenticated with it
    and both sides' offers are MACed with it. Only the visitor and the owner hold it; the server, which
    relays the offers, does not."""
    return derive_key(ticket_key, "p2p", proxy, visit_id)


def p2p_offer_mac(key: bytes, *, owner: bool, offer: bytes) -> bytes:
    """The MAC over one side's encoded offer (candidates, certificate fingerprint), direction labelled."""
    return mac(key, _P2P_OFFER_LABEL, b"owner" if owner else b"visitor", offer)


def p2p_client_proof(key: bytes, *, server_fingerprint: bytes, nonce: bytes) -> bytes:
    """The visitor's proof, sent first inside a direct path's encrypted channel, that it holds the
    rendezvous key (bound to the certificate it pinned and a fresh nonce)."""
    return mac(key, _P2P_CLIENT_LABEL, server_fingerprint, nonce)


def p2p_owner_proof(key: bytes, *, server_fingerprint: bytes, nonce: bytes) -> bytes:
    """The owner's answer to `p2p_client_proof` (over the visitor's fresh ``nonce``): it holds the
    rendezvous key too. Over TLS it confirms the visitor was accepted; on a plain direct path
    (``encrypt_data = false``) it is what authenticates the owner."""
    return mac(key, _P2P_OWNER_LABEL, server_fingerprint, nonce)
