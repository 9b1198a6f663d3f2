"""The login handshake of every tunnel connection, both sides, over a `MessageChannel`.

    client                                   server
    Hello(version, features, id, role) -->
                                         <-- Challenge(server_nonce, version, features)  | Error
    AuthResponse(proof, client_nonce)  -->
                                         <-- AuthOk(run_id, server_proof)                | Error

``proof`` and ``server_proof`` are HMACs over both nonces and a *channel binding*: for TLS connections
the SHA-256 of the server certificate the client actually saw, so a man in the middle who presents
another certificate cannot produce a proof either side accepts, even when the client pins nothing.
The token itself never crosses the wire. Version and feature mismatches are named errors on both ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NoReturn

from pierce.errors import RemoteError
from pierce.protocol import (
    MAX_FRAME_SIZE,
    NO_CHANNEL_BINDING,
    PROTOCOL_VERSION,
    AuthOk,
    AuthResponse,
    Challenge,
    Error,
    ErrorCode,
    Feature,
    Hello,
    Refused,
    Role,
    UnexpectedMessage,
    client_proof,
    new_nonce,
    server_proof,
    verify_client_proof,
    verify_server_proof,
)
from pierce.transport import MessageChannel

MITM_REASON = (
    "authentication failed: the token is right, but the server's certificate is not the one this client "
    "saw: a man in the middle is intercepting the connection (or a TLS-terminating proxy sits in front "
    "of the server); pin server_fingerprint or trusted_ca_file"
)


class AuthenticationFailed(RemoteError):
    """The token did not match (on the server: the client's proof; on the client: the server's)."""


def plain_binding(run_id: str) -> bytes:
    """Channel binding of an unencrypted work connection: tied to its control session."""
    return hashlib.sha256(b"pierce plain work connection\0" + run_id.encode()).digest()


def encrypt_data_text(features: frozenset[str]) -> str:
    return "true" if Feature.ENCRYPT_DATA in features else "false"


def version_mismatch(theirs: int, *, we: str) -> str:
    they = "client" if we == "server" else "server"
    return (
        f"{they} speaks pierce protocol {theirs}, {we} speaks {PROTOCOL_VERSION}; "
        "run the same pierce version on both"
    )


async def _refuse(channel: MessageChannel, code: ErrorCode, reason: str) -> NoReturn:
    """Tell the peer why, then fail the handshake."""
    await channel.send(Error(code=code, reason=reason))
    raise Refused(code, reason)


def mismatch(ours: frozenset[str], theirs: frozenset[str], *, we: str, they: str) -> str | None:
    """Why the two feature sets cannot work together, or None."""
    if (Feature.ENCRYPT_DATA in ours) != (Feature.ENCRYPT_DATA in theirs):
        return (
            f"transport.encrypt_data differs: {we} has {encrypt_data_text(ours)}, "
            f"{they} has {encrypt_data_text(theirs)}; set the same value on both"
        )
    return None


async def server_handshake(
    channel: MessageChannel,
    hello: Hello,
    *,
    token: str,
    features: frozenset[str],
    binding: bytes,
    run_id: str,
) -> None:
    """Answer ``hello`` (already read); raise after telling the client why when it must be refused."""
    if hello.version != PROTOCOL_VERSION:
        await _refuse(channel, ErrorCode.VERSION_MISMATCH, version_mismatch(hello.version, we="server"))
    nonce = new_nonce()
    await channel.send(Challenge(server_nonce=nonce, version=PROTOCOL_VERSION, features=features))
    answer = await channel.recv()
    if isinstance(answer, Error):
        raise Refused(answer.code, answer.reason)
    if not isinstance(answer, AuthResponse):
        raise UnexpectedMessage(answer, "AuthResponse")
    if not verify_client_proof(
        token, answer.proof, server_nonce=nonce, client_nonce=answer.client_nonce, channel_binding=binding
    ):
        reason = "authentication failed: wrong token"
        if answer.unbound_proof is not None and verify_client_proof(
            token,
            answer.unbound_proof,
            server_nonce=nonce,
            client_nonce=answer.client_nonce,
            channel_binding=NO_CHANNEL_BINDING,
        ):
            reason = MITM_REASON
        await channel.send(Error(code=ErrorCode.AUTH_FAILED, reason=reason))
        raise AuthenticationFailed(reason)
    if hello.role is Role.CONTROL and (why := mismatch(features, hello.features, we="server", they="client")):
        await _refuse(channel, ErrorCode.FEATURE_MISMATCH, why)
    proof = server_proof(token, server_nonce=nonce, client_nonce=answer.client_nonce, channel_binding=binding)
    await channel.send(AuthOk(run_id=run_id, server_proof=proof))
    channel.max_frame_size = MAX_FRAME_SIZE


async def client_handshake(
    channel: MessageChannel,
    *,
    token: str,
    features: frozenset[str],
    client_id: str,
    role: Role,
    run_id: str = "",
    binding: bytes | Callable[[], bytes],
) -> str:
    """Log in; return the server's run id. Raises Refused / AuthenticationFailed by name."""
    await channel.send(
        Hello(version=PROTOCOL_VERSION, features=features, client_id=client_id, role=role, run_id=run_id)
    )
    msg = await channel.recv()
    if isinstance(msg, Error):
        raise Refused(msg.code, msg.reason)
    if not isinstance(msg, Challenge):
        raise UnexpectedMessage(msg, "Challenge")
    if msg.version != PROTOCOL_VERSION:
        await _refuse(channel, ErrorCode.VERSION_MISMATCH, version_mismatch(msg.version, we="client"))
    if role is Role.CONTROL and (why := mismatch(features, msg.features, we="client", they="server")):
        await _refuse(channel, ErrorCode.FEATURE_MISMATCH, why)
    bound = binding() if callable(binding) else binding
    nonce = new_nonce()
    proof = client_proof(token, server_nonce=msg.server_nonce, client_nonce=nonce, channel_binding=bound)
    unbound = client_proof(
        token, server_nonce=msg.server_nonce, client_nonce=nonce, channel_binding=NO_CHANNEL_BINDING
    )
    await channel.send(AuthResponse(proof=proof, client_nonce=nonce, unbound_proof=unbound))
    reply = await channel.recv()
    if isinstance(reply, Error):
        if reply.code is ErrorCode.AUTH_FAILED:
            raise AuthenticationFailed(reply.reason)
        raise Refused(reply.code, reply.reason)
    if not isinstance(reply, AuthOk):
        raise UnexpectedMessage(reply, "AuthOk")
    if not verify_server_proof(
        token, reply.server_proof, server_nonce=msg.server_nonce, client_nonce=nonce, channel_binding=bound
    ):
        raise AuthenticationFailed(
            "authentication failed: the server could not prove it knows the token for the certificate "
            "this client saw: a man in the middle, or a server with another token"
        )
    channel.max_frame_size = MAX_FRAME_SIZE
    return reply.run_id
