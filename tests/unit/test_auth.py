"""The work connections' HMAC challenge-response over a session key: both sides in memory, and every
way a proof must fail."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pierce.protocol import (
    NO_CHANNEL_BINDING,
    NONCE_SIZE,
    PROOF_SIZE,
    AuthOk,
    AuthResponse,
    Challenge,
    FrameDecoder,
    certificate_binding,
    encode_frame,
    new_nonce,
)
from pierce.protocol.auth import client_proof, p2p_client_proof, p2p_owner_proof, server_proof, verify

TOKEN = b"a session's work key, 32 bytes."


def verify_client_proof(key: bytes, proof: bytes, **kw: bytes) -> bool:
    return verify(client_proof(key, **kw), proof)


def verify_server_proof(key: bytes, proof: bytes, **kw: bytes) -> bool:
    return verify(server_proof(key, **kw), proof)


CERT = certificate_binding(b"0\x82 pretend DER certificate")
nonces = st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)


def test_nonces_are_fresh_and_sized() -> None:
    a, b = new_nonce(), new_nonce()
    assert len(a) == len(b) == NONCE_SIZE
    assert a != b


def test_certificate_binding_is_sha256() -> None:
    assert certificate_binding(b"cert") == hashlib.sha256(b"cert").digest()


def test_full_handshake_through_the_codec() -> None:
    """Both sides run over frames, as the roles will, and each accepts the other."""
    to_client, to_server = FrameDecoder(), FrameDecoder()

    server_nonce = new_nonce()
    [challenge] = to_client.feed(
        encode_frame(Challenge(server_nonce=server_nonce, version=1, features=frozenset()))
    )
    assert isinstance(challenge, Challenge)
    client_nonce = new_nonce()
    proof = client_proof(
        TOKEN, server_nonce=challenge.server_nonce, client_nonce=client_nonce, channel_binding=CERT
    )
    assert len(proof) == PROOF_SIZE

    [response] = to_server.feed(encode_frame(AuthResponse(proof=proof, client_nonce=client_nonce)))
    assert isinstance(response, AuthResponse)
    assert verify_client_proof(
        TOKEN,
        response.proof,
        server_nonce=server_nonce,
        client_nonce=response.client_nonce,
        channel_binding=CERT,
    )
    answer = server_proof(
        TOKEN, server_nonce=server_nonce, client_nonce=response.client_nonce, channel_binding=CERT
    )

    [ok] = to_client.feed(encode_frame(AuthOk(run_id="r-1", server_proof=answer)))
    assert isinstance(ok, AuthOk)
    assert verify_server_proof(
        TOKEN, ok.server_proof, server_nonce=server_nonce, client_nonce=client_nonce, channel_binding=CERT
    )


@given(nonces, nonces, st.binary(max_size=64), st.binary(min_size=1, max_size=40))
def test_proofs_verify(server_nonce: bytes, client_nonce: bytes, binding: bytes, token: bytes) -> None:
    kw = {"server_nonce": server_nonce, "client_nonce": client_nonce, "channel_binding": binding}
    assert verify_client_proof(token, client_proof(token, **kw), **kw)
    assert verify_server_proof(token, server_proof(token, **kw), **kw)


@given(nonces, nonces)
def test_wrong_token_fails(server_nonce: bytes, client_nonce: bytes) -> None:
    kw = {"server_nonce": server_nonce, "client_nonce": client_nonce, "channel_binding": CERT}
    assert not verify_client_proof(TOKEN, client_proof(TOKEN + b"!", **kw), **kw)
    assert not verify_server_proof(TOKEN, server_proof(b"x", **kw), **kw)


@given(nonces, nonces)
def test_swapped_roles_fail(server_nonce: bytes, client_nonce: bytes) -> None:
    """A client proof is never a server proof, so a reflected proof does not authenticate anyone."""
    kw = {"server_nonce": server_nonce, "client_nonce": client_nonce, "channel_binding": CERT}
    assert client_proof(TOKEN, **kw) != server_proof(TOKEN, **kw)
    assert not verify_server_proof(TOKEN, client_proof(TOKEN, **kw), **kw)
    assert not verify_client_proof(TOKEN, server_proof(TOKEN, **kw), **kw)


def test_swapped_nonces_fail() -> None:
    a, b = new_nonce(), new_nonce()
    proof = client_proof(TOKEN, server_nonce=a, client_nonce=b, channel_binding=CERT)
    assert not verify_client_proof(TOKEN, proof, server_nonce=b, client_nonce=a, channel_binding=CERT)


def test_reflected_nonce_fails() -> None:
    """A server that echoes the client's nonce as its own still cannot use the client's proof."""
    n = new_nonce()
    proof = client_proof(TOKEN, server_nonce=n, client_nonce=n, channel_binding=CERT)
    assert not verify_server_proof(TOKEN, proof, server_nonce=n, client_nonce=n, channel_binding=CERT)


@pytest.mark.parametrize(
    "other", [NO_CHANNEL_BINDING, certificate_binding(b"the man in the middle's certificate"), CERT[:-1]]
)
def test_different_channel_binding_fails(other: bytes) -> None:
    """A relay that terminates TLS with its own certificate makes the bindings differ."""
    server_nonce, client_nonce = new_nonce(), new_nonce()
    proof = client_proof(TOKEN, server_nonce=server_nonce, client_nonce=client_nonce, channel_binding=CERT)
    assert not verify_client_proof(
        TOKEN, proof, server_nonce=server_nonce, client_nonce=client_nonce, channel_binding=other
    )
    answer = server_proof(TOKEN, server_nonce=server_nonce, client_nonce=client_nonce, channel_binding=other)
    assert not verify_server_proof(
        TOKEN, answer, server_nonce=server_nonce, client_nonce=client_nonce, channel_binding=CERT
    )


@given(st.binary(max_size=64))
def test_garbage_proofs_fail(proof: bytes) -> None:
    assert not verify_client_proof(
        TOKEN, proof, server_nonce=new_nonce(), client_nonce=new_nonce(), channel_binding=CERT
    )


def test_every_input_changes_the_proof() -> None:
    base = {"server_nonce": bytes(NONCE_SIZE), "client_nonce": bytes(NONCE_SIZE), "channel_binding": CERT}
    reference = client_proof(TOKEN, **base)
    for key in base:
        changed = dict(base)
        changed[key] = bytes([base[key][0] ^ 1]) + base[key][1:]
        assert client_proof(TOKEN, **changed) != reference, key


@pytest.mark.parametrize("size", [0, NONCE_SIZE - 1, NONCE_SIZE + 1])
def test_wrong_nonce_size_is_a_bug(size: int) -> None:
    with pytest.raises(ValueError, match="server nonce must be 32 bytes"):
        client_proof(TOKEN, server_nonce=bytes(size), client_nonce=new_nonce(), channel_binding=CERT)
    with pytest.raises(ValueError, match="client nonce must be 32 bytes"):
        server_proof(TOKEN, server_nonce=new_nonce(), client_nonce=bytes(size), channel_binding=CERT)


def test_p2p_proofs_are_directional_and_bound_to_fingerprint_and_nonce() -> None:
    key, fp, nonce = bytes(32), bytes(range(32)), new_nonce()
    visitor = p2p_client_proof(key, server_fingerprint=fp, nonce=nonce)
    owner = p2p_owner_proof(key, server_fingerprint=fp, nonce=nonce)
    assert visitor != owner  # neither side can reflect the other's proof
    assert p2p_owner_proof(key, server_fingerprint=fp, nonce=new_nonce()) != owner
    assert p2p_owner_proof(key, server_fingerprint=bytes(32), nonce=nonce) != owner
    assert p2p_owner_proof(bytes([1] * 32), server_fingerprint=fp, nonce=nonce) != owner
