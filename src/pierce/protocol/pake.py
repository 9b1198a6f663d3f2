"""SRP-6a, the password-authenticated key exchange of every login, sans-I/O.

Why SRP-6a (RFC 2945, RFC 5054 group and hash choices) and not a keyed hash of the token:

- A captured login, or one collected by an impostor server, gives nothing to test guesses against:
  each side's proof depends on a random exponent that never leaves it, so checking a guessed token
  needs a live exchange with the peer. One login attempt is one online guess.
- The server keeps only a *verifier* per user (``g^x mod N``); `pierce verifier` computes one, so a
  server.toml that leaks does not hand out the users' tokens.
- It is fast where it runs (OpenSSL's bignums through the ``srp`` package: about 1 ms of CPU per side)
  and it fits the login's two round trips: the client's public value rides in `Hello`.

The same exchange runs between a visitor and the owner of a secret service, with the service's
``secret_key`` as the password and the owner as the verifier: each proves the secret to the other and
the server that relays the messages learns nothing it could test a guess against.

Group: the 2048-bit group of RFC 5054 with SHA-256. Both sides wrap the ``srp`` package here and
nowhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import msgspec
import srp  # type: ignore[import-untyped]

_HASH = srp.SHA256
_GROUP = srp.NG_2048

#: Bytes in a salt.
SALT_SIZE = 16
#: Largest public value (A or B) accepted: a 2048-bit number.
MAX_PUBLIC_SIZE = 256
#: Bytes in SRP's proofs (M and HAMK with SHA-256).
SRP_PROOF_SIZE = 32


class PakeFailed(Exception):
    """The peer's public value or proof is invalid (the password does not match, or a forgery)."""


class Verifier(msgspec.Struct, frozen=True):
    """What the verifying side keeps for one password: a salt and ``g^x mod N``."""

    salt: bytes
    verifier: bytes

    def text(self) -> str:
        """``salt:verifier`` in hex, the form server.toml holds."""
        return f"{self.salt.hex()}:{self.verifier.hex()}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """The inverse of `text`; ValueError names what is wrong."""
        salt_hex, sep, verifier_hex = text.partition(":")
        if not sep:
            raise ValueError('expected "salt:verifier" in hex, as `pierce verifier` prints')
        try:
            salt, verifier = bytes.fromhex(salt_hex), bytes.fromhex(verifier_hex)
        except ValueError:
            raise ValueError("expected hex digits on both sides of ':'") from None
        if not 8 <= len(salt) <= 64 or not 1 <= len(verifier) <= MAX_PUBLIC_SIZE:
            raise ValueError("expected an 8-64 byte salt and a verifier of at most 256 bytes")
        if salt[0] == 0:
            # The srp package carries the salt as a number, so it sends it without its leading zero
            # bytes and the client derives its key from other bytes than the verifier was made from:
            # every login would fail. `pierce verifier` never makes such a salt.
            raise ValueError(
                "the salt starts with a zero byte, which the login would drop (every login would fail);"
                " make the verifier again with `pierce verifier`"
            )
        return cls(salt, verifier)


def make_verifier(identity: str, password: str) -> Verifier:
    """A verifier for ``password`` under ``identity``, with a fresh random salt."""
    salt, verifier = srp.create_salted_verification_key(
        identity.encode(), password.encode(), hash_alg=_HASH, ng_type=_GROUP, salt_len=SALT_SIZE
    )
    return Verifier(bytes(salt), bytes(verifier))


def _group_modulus() -> int:
    """N of the group, as the implementation the package loaded defines it (OpenSSL's through ctypes; the
    pure-Python fallback, which imports six, loads only without it)."""
    n_hex, _ = srp._mod._ng_const[_GROUP]
    return int(n_hex, 16)


_N = _group_modulus()


class PakeClient:
    """The side that knows the password (a client logging in; a visitor of a secret service)."""

    def __init__(self, identity: str, password: str) -> None:
        self._user = srp.User(identity.encode(), password.encode(), hash_alg=_HASH, ng_type=_GROUP)
        _, public = self._user.start_authentication()
        self.public: bytes = bytes(public)

    def answer(self, salt: bytes, public: bytes) -> bytes:
        """The proof M for the verifier's ``salt`` and public value B; PakeFailed when B is invalid."""
        if not salt or not public or len(public) > MAX_PUBLIC_SIZE or int.from_bytes(public, "big") % _N == 0:
            raise PakeFailed("invalid public value from the peer")
        proof = self._user.process_challenge(salt, public)
        if proof is None:
            raise PakeFailed("invalid public value from the peer")
        return bytes(proof)

    def pending_key(self) -> bytes:
        """The session key `answer` computed, before the peer proved it (for proofs sent beside M,
        which depend on the key exactly as M does and so give a peer nothing more)."""
        key = getattr(self._user, "K", None)
        if not key:
            raise PakeFailed("no key before answer()")
        return bytes(key)

    def confirm(self, proof: bytes) -> bytes:
        """Check the verifier's proof (HAMK); return the shared session key, or raise PakeFailed."""
        self._user.verify_session(proof)
        if not self._user.authenticated():
            raise PakeFailed("the peer could not prove it knows the password")
        return bytes(self._user.get_session_key())


class PakeServer:
    """The verifying side (the server for a login; the owner of a secret service for a visitor).

    ``verifier`` None means the identity is unknown: the exchange is run against a random verifier, so
    that it fails at the proof exactly as a wrong password does and nobody learns which names exist.
    """

    def __init__(self, identity: str, verifier: Verifier | None, public: bytes) -> None:
        if not public or len(public) > MAX_PUBLIC_SIZE:
            raise PakeFailed("invalid public value from the peer")
        self._known = verifier is not None
        if verifier is None:
            verifier = Verifier(_decoy_salt(identity), secrets.token_bytes(MAX_PUBLIC_SIZE - 1))
        self._server = srp.Verifier(
            identity.encode(), verifier.salt, verifier.verifier, public, hash_alg=_HASH, ng_type=_GROUP
        )
        salt, b_public = self._server.get_challenge()
        if b_public is None:  # A % N == 0: a forged value that would fix the key
            raise PakeFailed("invalid public value from the peer")
        self.salt: bytes = bytes(salt)
        self.public: bytes = bytes(b_public)

    def verify(self, proof: bytes) -> tuple[bytes, bytes]:
        """Check the client's proof M; return ``(HAMK, session key)``, or raise PakeFailed."""
        hamk = self._server.verify_session(proof)
        if hamk is None or not self._known or not self._server.authenticated():
            raise PakeFailed("wrong password")
        return bytes(hamk), bytes(self._server.get_session_key())


_DECOY_KEY = secrets.token_bytes(32)


def _decoy_salt(identity: str) -> bytes:
    """A stable salt for an unknown identity, so asking twice shows the same salt as a real user."""
    return hmac.new(_DECOY_KEY, identity.encode(), hashlib.sha256).digest()[:SALT_SIZE]
