"""The login handshake of every tunnel connection, both sides, over a `MessageChannel`.

A login (control channels and visitor connections) is SRP-6a (`pierce.protocol.pake`) in the same two
round trips the protocol always had::

    client                                           server
    Hello(version, features, id, role, user, A) -->
                                                 <-- Challenge(nonce, version, features, salt, B) | Error
    AuthResponse(M, binding, unbound, resume)   -->
                                                 <-- AuthOk(run_id, HAMK, binding)                | Error

``binding`` proves the fresh session key over the *channel binding* each side sees (the SHA-256 of
the server certificate), so a man in the middle with another certificate is caught even when the
client pins nothing, and learns nothing to test token guesses against: a captured or relayed login
is one online guess, never an offline one.

A work connection joins a logged-in session and proves the session's work key (derived from the
login's key, never the token) with an HMAC challenge-response over both nonces and the binding::

    Hello(role=WORK, run_id) --> <-- Challenge(nonce) ; AuthResponse(proof, client_nonce) --> <-- AuthOk

Version and feature mismatches are named errors on both ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import NoReturn

import msgspec

from pierce import __version__
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
    new_nonce,
)
from pierce.protocol.auth import (
    binding_proof,
    client_proof,
    derive_key,
    resume_proof,
    server_proof,
    verify,
)
from pierce.protocol.messages import DEFAULT_USER
from pierce.protocol.pake import PakeClient, PakeFailed, PakeServer, Verifier
from pierce.transport import MessageChannel

MITM_REASON = (
    "authentication failed: the token is right, but the server's certificate is not the one this client "
    "saw: a man in the middle is intercepting the connection (or a TLS-terminating proxy sits in front "
    "of the server); pin server_fingerprint or trusted_ca_file"
)


WRONG_CREDENTIALS = "authentication failed: unknown user or wrong token"


class AuthenticationFailed(RemoteError):
    """The token did not match (on the server: the client's proof; on the client: the server's)."""


class WrongCredentials(AuthenticationFailed):
    """The server refused the login: it knows no such user, or the token is not the user's.

    A client that never logged in gives up on this (the config is wrong); one that has logged in
    before keeps trying (the server's users may change back).
    """


class Login(msgspec.Struct, frozen=True):
    """A login the server accepted."""

    user: str
    #: The session key both sides derived (never sent); work and resume keys derive from it.
    key: bytes
    #: The client proved it held the session named in its `Hello` (``run_id``).
    resumed: bool
    #: This login's server nonce: fresh and known to both sides (a visit id is made of it).
    nonce: bytes = b""


def work_key(key: bytes, run_id: str) -> bytes:
    """The key work connections of session ``run_id`` prove (derived from the login's key)."""
    return derive_key(key, "work", run_id)


def visitor_key(key: bytes, run_id: str) -> bytes:
    """The key later visitor connections of the visitor session ``run_id`` prove."""
    return derive_key(key, "visitor", run_id)


def resume_key(key: bytes, run_id: str) -> bytes:
    """The key a reconnecting client proves to take over session ``run_id``."""
    return derive_key(key, "resume", run_id)


def user_of(hello: Hello) -> str:
    return hello.user or DEFAULT_USER


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


async def server_login(
    channel: MessageChannel,
    hello: Hello,
    *,
    verifier: Callable[[str], Verifier | None],
    features: frozenset[str],
    binding: bytes,
    run_id: str,
    resume: Callable[[str, str], bytes | None] = lambda user, run_id: None,
    admit: Callable[[Login], Awaitable[None]] | None = None,
) -> Login:
    """Answer a login ``hello`` (already read); raise after telling the client why when it is refused.

    ``verifier(user)`` is the user's SRP verifier (None: no such user, which fails like a wrong token);
    ``resume(user, run_id)`` the resume key of that user's session ``run_id``, if there is one;
    ``admit(login)`` runs once the client is authenticated and before it hears so: raising `Refused`
    there turns the login away with that code and reason.
    """
    if hello.version != PROTOCOL_VERSION:
        await _refuse(channel, ErrorCode.VERSION_MISMATCH, version_mismatch(hello.version, we="server"))
    user = user_of(hello)
    try:
        pake = PakeServer(user, verifier(user), hello.pake)
    except PakeFailed:
        await _refuse(channel, ErrorCode.BAD_MESSAGE, "login without a valid SRP public value")
    nonce = new_nonce()
    await channel.send(
        Challenge(
            server_nonce=nonce, version=PROTOCOL_VERSION, features=features, salt=pake.salt, pake=pake.public
        )
    )
    answer = await _answer(channel)
    try:
        hamk, key = pake.verify(answer.proof)
    except PakeFailed:
        await channel.send(Error(code=ErrorCode.AUTH_FAILED, reason=WRONG_CREDENTIALS))
        raise AuthenticationFailed(f"{WRONG_CREDENTIALS} (user {user!r})") from None
    if not verify(binding_proof(key, server=False, channel_binding=binding), answer.binding):
        reason = "authentication failed: the channel binding does not match"
        if verify(binding_proof(key, server=False, channel_binding=NO_CHANNEL_BINDING), answer.unbound_proof):
            reason = MITM_REASON
        await channel.send(Error(code=ErrorCode.AUTH_FAILED, reason=reason))
        raise AuthenticationFailed(reason)
    if hello.role is Role.CONTROL and (why := mismatch(features, hello.features, we="server", they="client")):
        await _refuse(channel, ErrorCode.FEATURE_MISMATCH, why)
    resumed = False
    if hello.run_id and answer.resume is not None:
        old_key = resume(user, hello.run_id)
        resumed = old_key is not None and verify(resume_proof(old_key, challenge=nonce), answer.resume)
    login = Login(user=user, key=key, resumed=resumed, nonce=nonce)
    if admit is not None:
        try:
            await admit(login)
        except Refused as exc:
            await _refuse(channel, exc.code, exc.reason)
    bound = binding_proof(key, server=True, channel_binding=binding)
    await channel.send(AuthOk(run_id=run_id, server_proof=hamk, binding=bound))
    channel.max_frame_size = MAX_FRAME_SIZE
    return login


async def server_work_login(
    channel: MessageChannel, hello: Hello, *, key: bytes, features: frozenset[str], binding: bytes
) -> bytes:
    """Check a connection that joins a session by proving ``key`` (a work key or a visitor key);
    refuse it when wrong. Returns the server nonce of the exchange."""
    if hello.version != PROTOCOL_VERSION:
        await _refuse(channel, ErrorCode.VERSION_MISMATCH, version_mismatch(hello.version, we="server"))
    nonce = new_nonce()
    await channel.send(Challenge(server_nonce=nonce, version=PROTOCOL_VERSION, features=features))
    answer = await _answer(channel)
    nonces = {"server_nonce": nonce, "client_nonce": answer.client_nonce, "channel_binding": binding}
    if not verify(client_proof(key, **nonces), answer.proof):
        reason = "authentication failed: not a connection of this session"
        await channel.send(Error(code=ErrorCode.AUTH_FAILED, reason=reason))
        raise AuthenticationFailed(reason)
    await channel.send(AuthOk(run_id=hello.run_id, server_proof=server_proof(key, **nonces)))
    channel.max_frame_size = MAX_FRAME_SIZE
    return nonce


async def _answer(channel: MessageChannel) -> AuthResponse:
    answer = await channel.recv()
    if isinstance(answer, Error):
        raise Refused(answer.code, answer.reason)
    if not isinstance(answer, AuthResponse):
        raise UnexpectedMessage(answer, "AuthResponse")
    return answer


async def _challenge(channel: MessageChannel, features: frozenset[str], role: Role) -> Challenge:
    msg = await channel.recv()
    if isinstance(msg, Error):
        raise Refused(msg.code, msg.reason)
    if not isinstance(msg, Challenge):
        raise UnexpectedMessage(msg, "Challenge")
    if msg.version != PROTOCOL_VERSION:
        await _refuse(channel, ErrorCode.VERSION_MISMATCH, version_mismatch(msg.version, we="client"))
    if role is Role.CONTROL and (why := mismatch(features, msg.features, we="client", they="server")):
        await _refuse(channel, ErrorCode.FEATURE_MISMATCH, why)
    return msg


async def _auth_ok(channel: MessageChannel) -> AuthOk:
    reply = await channel.recv()
    if isinstance(reply, Error):
        if reply.code is ErrorCode.AUTH_FAILED:
            # The server's words for a failed proof (the same protocol version, so the same text); its
            # other AUTH_FAILED answers are about the connection (a man in the middle), not the token.
            if reply.reason == WRONG_CREDENTIALS:
                raise WrongCredentials(reply.reason)
            raise AuthenticationFailed(reply.reason)
        raise Refused(reply.code, reply.reason)
    if not isinstance(reply, AuthOk):
        raise UnexpectedMessage(reply, "AuthOk")
    return reply


async def client_login(
    channel: MessageChannel,
    *,
    user: str,
    token: str,
    features: frozenset[str],
    client_id: str,
    role: Role,
    binding: bytes | Callable[[], bytes],
    resume: tuple[str, bytes] | None = None,
) -> tuple[str, bytes, bytes, frozenset[str]]:
    """Log in as ``user``; return the server's run id, the session key, the server's nonce and the
    features the server offers.

    ``resume`` is the previous session's run id and resume key, to take that session over.
    Raises Refused / AuthenticationFailed by name.
    """
    pake = PakeClient(user or DEFAULT_USER, token)
    await channel.send(
        Hello(
            version=PROTOCOL_VERSION,
            features=features,
            client_id=client_id,
            role=role,
            run_id=resume[0] if resume else "",
            user=user,
            pake=pake.public,
            software=__version__ if role is Role.CONTROL else "",
        )
    )
    msg = await _challenge(channel, features, role)
    bound = binding() if callable(binding) else binding
    try:
        proof = pake.answer(msg.salt, msg.pake)
    except PakeFailed as exc:
        raise AuthenticationFailed(f"authentication failed: the server sent {exc}") from None
    # The session key is not known before the server's proof; the binding proofs use SRP's K, which
    # the client computed in answer(): read it through a confirm-free path.
    key = pake.pending_key()
    await channel.send(
        AuthResponse(
            proof=proof,
            client_nonce=new_nonce(),
            binding=binding_proof(key, server=False, channel_binding=bound),
            unbound_proof=binding_proof(key, server=False, channel_binding=NO_CHANNEL_BINDING),
            resume=resume_proof(resume[1], challenge=msg.server_nonce) if resume else None,
        )
    )
    reply = await _auth_ok(channel)
    try:
        pake.confirm(reply.server_proof)
    except PakeFailed:
        raise AuthenticationFailed(
            "authentication failed: the server could not prove it knows this user's token: "
            "a man in the middle, or a server with another token"
        ) from None
    if not verify(binding_proof(key, server=True, channel_binding=bound), reply.binding):
        raise AuthenticationFailed(
            "authentication failed: the server proved the token over another certificate than the one "
            "this client saw: a man in the middle"
        )
    channel.max_frame_size = MAX_FRAME_SIZE
    return reply.run_id, key, msg.server_nonce, msg.features


async def client_work_login(
    channel: MessageChannel,
    *,
    key: bytes,
    features: frozenset[str],
    client_id: str,
    run_id: str,
    binding: bytes | Callable[[], bytes],
    role: Role = Role.WORK,
) -> bytes:
    """Join session ``run_id`` by proving ``key`` (its work key; for a visitor, its visitor key).
    Returns the server's nonce. Raises Refused / AuthenticationFailed."""
    await channel.send(
        Hello(version=PROTOCOL_VERSION, features=features, client_id=client_id, role=role, run_id=run_id)
    )
    msg = await _challenge(channel, features, role)
    bound = binding() if callable(binding) else binding
    nonces = {"server_nonce": msg.server_nonce, "client_nonce": new_nonce(), "channel_binding": bound}
    await channel.send(AuthResponse(proof=client_proof(key, **nonces), client_nonce=nonces["client_nonce"]))
    reply = await _auth_ok(channel)
    if not verify(server_proof(key, **nonces), reply.server_proof):
        raise AuthenticationFailed("authentication failed: the server does not hold this session's key")
    channel.max_frame_size = MAX_FRAME_SIZE
    return msg.server_nonce
