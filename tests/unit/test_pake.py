"""SRP-6a logins: they work, they fail on a wrong token, and a captured login gives an attacker nothing
to check guesses against offline, not even the right token."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import pytest
from srp import _pysrp

from pierce.handshake import AuthenticationFailed, client_login, server_login
from pierce.protocol import AuthOk, AuthResponse, Challenge, Hello, Role, certificate_binding, new_nonce
from pierce.protocol.messages import Message
from pierce.protocol.pake import PakeClient, PakeFailed, PakeServer, Verifier, make_verifier
from pierce.transport import MemoryChannel, memory_pair

TOKEN = "sunshine"  # weak on purpose: the point is that a transcript does not let one test it
CERT = certificate_binding(b"0\x82 the server's certificate, as DER")
GUESSES = ["password", "123456", "letmein", "sunshine", "dragon", "monkey", "qwerty", "football"]


class Tap:
    """Records every message a channel sends: what a passive tap (or an impostor) sees."""

    def __init__(self, channel: MemoryChannel, seen: list[Message]) -> None:
        send = channel.send

        async def recording(msg: Any) -> None:
            seen.append(msg)
            await send(msg)

        channel.send = recording  # type: ignore[method-assign]


async def captured_login(token: str) -> list[Message]:
    """One full login between real client and server code, returned as the wire saw it."""
    client, server = memory_pair()
    seen: list[Message] = []
    Tap(client, seen)
    Tap(server, seen)
    verifiers = {"default": make_verifier("default", TOKEN)}

    async def serve() -> None:
        hello = await server.recv()
        assert isinstance(hello, Hello)
        await server_login(
            server, hello, verifier=verifiers.get, features=frozenset(), binding=CERT, run_id="r1"
        )

    served = asyncio.ensure_future(serve())
    await client_login(
        client, user="", token=token, features=frozenset(), client_id="c", role=Role.CONTROL, binding=CERT
    )
    await served
    return seen


def srp_verifier_with_salt(user: str, token: str, salt: bytes) -> Verifier:
    """What an attacker computes from a guess and the salt in the transcript."""
    n, g = _pysrp.get_ng(_pysrp.NG_2048, None, None)
    x = _pysrp.gen_x(hashlib.sha256, salt, user.encode(), token.encode())
    return Verifier(salt, _pysrp.long_to_bytes(pow(g, x, n)))


def offline_checks(transcript: list[Message], guess: str) -> list[str]:
    """Every check an attacker holding the transcript and the certificate can run on ``guess`` alone;
    the names of those that say "this guess is right"."""
    hello = next(m for m in transcript if isinstance(m, Hello))
    challenge = next(m for m in transcript if isinstance(m, Challenge))
    answer = next(m for m in transcript if isinstance(m, AuthResponse))
    ok = next(m for m in transcript if isinstance(m, AuthOk))
    hits = []
    # 1. Replay the client with the guess against the recorded challenge: same M?
    if PakeClient("default", guess).answer(challenge.salt, challenge.pake) == answer.proof:
        hits.append("client M")
    # 2. Be the server with the guess's verifier: does the recorded M verify?
    try:
        PakeServer("default", srp_verifier_with_salt("default", guess, challenge.salt), hello.pake).verify(
            answer.proof
        )
        hits.append("server verify")
    except PakeFailed:
        pass
    # 3. Keyed hashes of the token over everything public (what the old HMAC login was).
    for label in (b"pierce/1 client proof", b"pierce/1 server proof", b""):
        for key in (guess.encode(), hashlib.sha256(guess.encode()).digest()):
            mac = hmac.new(key, digestmod=hashlib.sha256)
            for part in (label, challenge.server_nonce, answer.client_nonce, CERT):
                mac.update(len(part).to_bytes(4, "big") + part)
            if mac.digest() in (answer.proof, ok.server_proof, answer.binding, ok.binding):
                hits.append("hmac")
    # 4. Hashes of the token with the salt against anything in the transcript.
    for digest in (hashlib.sha256(challenge.salt + guess.encode()).digest(),):
        if digest in (answer.proof, ok.server_proof):
            hits.append("salted hash")
    return hits


async def test_a_login_works_and_a_wrong_token_fails_on_both_sides() -> None:
    transcript = await captured_login(TOKEN)
    assert [type(m).__name__ for m in transcript] == ["Hello", "Challenge", "AuthResponse", "AuthOk"]
    with pytest.raises(AuthenticationFailed, match="unknown user or wrong token"):
        await captured_login("moonshine")


async def test_a_captured_login_cannot_be_checked_offline_even_with_the_right_token() -> None:
    transcript = await captured_login(TOKEN)
    assert TOKEN in GUESSES
    for guess in GUESSES:
        assert offline_checks(transcript, guess) == [], guess


def test_the_offline_checks_would_catch_the_old_hmac_login() -> None:
    """The checks above are real: against a login proven by an HMAC of the token they find the token."""
    server_nonce, client_nonce = new_nonce(), new_nonce()
    mac = hmac.new(TOKEN.encode(), digestmod=hashlib.sha256)
    for part in (b"pierce/1 client proof", server_nonce, client_nonce, CERT):
        mac.update(len(part).to_bytes(4, "big") + part)
    old = [
        Hello(
            version=3,
            features=frozenset(),
            client_id="c",
            role=Role.CONTROL,
            pake=PakeClient("x", "y").public,
        ),
        Challenge(
            server_nonce=server_nonce, version=3, features=frozenset(), salt=b"s" * 16, pake=b"\x07" * 256
        ),
        AuthResponse(proof=mac.digest(), client_nonce=client_nonce),
        AuthOk(run_id="r1", server_proof=b"\0" * 32),
    ]
    found = [guess for guess in GUESSES if offline_checks(old, guess)]  # type: ignore[arg-type]
    assert found == [TOKEN]


def test_unknown_user_fails_like_a_wrong_token_with_a_stable_salt() -> None:
    """Nobody learns which user names exist: an unknown name gets a salt that looks like a user's."""
    first = PakeServer("mallory", None, PakeClient("mallory", "x").public)
    second = PakeServer("mallory", None, PakeClient("mallory", "y").public)
    assert first.salt == second.salt and len(first.salt) == 16
    client = PakeClient("mallory", "x")
    server = PakeServer("mallory", None, client.public)
    with pytest.raises(PakeFailed):
        server.verify(client.answer(server.salt, server.public))


@pytest.mark.parametrize(
    "public", [b"", b"\0" * 256, _pysrp.long_to_bytes(_pysrp.get_ng(_pysrp.NG_2048, None, None)[0])]
)
def test_forged_public_values_are_refused(public: bytes) -> None:
    """A = 0 or N (mod N) would fix the session key; both sides refuse such a value."""
    with pytest.raises(PakeFailed):
        PakeServer("u", make_verifier("u", "p"), public)
    with pytest.raises(PakeFailed):
        PakeClient("u", "p").answer(b"s" * 16, public)


def test_verifier_text_round_trips_and_names_errors() -> None:
    verifier = make_verifier("alice", "a long token")
    assert Verifier.parse(verifier.text()) == verifier
    for bad in ("nocolon", "zz:00", "00:00"):
        with pytest.raises(ValueError):
            Verifier.parse(bad)


async def resumed_login(server_key: bytes | None, client_key: bytes, user_of_old: str = "default") -> bool:
    """Whether the server counts a login that names session "old" (with ``client_key``) as resuming it."""
    client, server = memory_pair()
    verifiers = {"default": make_verifier("default", TOKEN)}
    logins = []

    async def serve() -> None:
        hello = await server.recv()
        assert isinstance(hello, Hello) and hello.run_id == "old"
        login = await server_login(
            server,
            hello,
            verifier=verifiers.get,
            features=frozenset(),
            binding=CERT,
            run_id="new",
            resume=lambda user, run_id: server_key if (user, run_id) == (user_of_old, "old") else None,
        )
        logins.append(login)

    served = asyncio.ensure_future(serve())
    await client_login(
        client, user="", token=TOKEN, features=frozenset(), client_id="c", role=Role.CONTROL,
        binding=CERT, resume=("old", client_key),
    )  # fmt: skip
    await served
    return logins[0].resumed


async def test_a_login_resumes_a_session_only_with_that_sessions_key() -> None:
    key = b"k" * 32
    assert await resumed_login(key, key)
    assert not await resumed_login(key, b"x" * 32)  # another key
    assert not await resumed_login(None, key)  # no such session
    assert not await resumed_login(key, key, user_of_old="bob")  # another user's session
