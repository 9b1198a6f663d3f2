"""One ACME account at one CA, ordering certificates proven by HTTP-01. Blocking: run it on one thread.

Built on the `acme` library (certbot's). `AcmeOrderer.order` creates the account on first use (agreeing to
the CA's terms of service), publishes each HTTP-01 key authorization in a shared dict while the CA
validates, polls until the CA is done, and returns the new private key and full chain as one PEM. Every
failure becomes `IssuanceFailed`, with the CA's error type and detail when it gave them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from pierce import __version__
from pierce.errors import LocalError, PierceError

if TYPE_CHECKING:
    import requests

#: Timeout of each HTTP request to the CA (seconds).
NETWORK_TIMEOUT = 30

_POLL_FIRST = 0.1
_POLL_MAX = 2.0


class IssuanceFailed(PierceError):
    """The CA did not issue a certificate.

    ``kind`` is the ACME error type without its URN prefix ("rateLimited", "unauthorized", "dns",
    "connection", ...) or one of "network" (the CA could not be reached), "timeout", "stopped", "protocol",
    "error"; ``reason`` is the CA's detail or ours.
    """

    def __init__(self, names: tuple[str, ...], kind: str, reason: str) -> None:
        self.names = names
        self.kind = kind
        self.reason = reason
        super().__init__(f"no certificate for {', '.join(names)}: {kind}: {reason}")


class AcmeOrderer:
    """Orders certificates from the CA at ``directory_url`` for the account whose key ``account_key`` gives.

    ``challenges`` maps HTTP-01 tokens to key authorizations while the CA validates; the HTTP side reads
    it. Setting ``stop`` makes an order in progress give up at its next wait.
    """

    def __init__(
        self,
        directory_url: str,
        account_key: Callable[[], ec.EllipticCurvePrivateKey],
        *,
        email: str | None,
        ca_file: Path | None,
        order_timeout: float,
        challenges: dict[str, bytes],
        stop: threading.Event,
    ) -> None:
        self.directory_url = directory_url
        self._account_key = account_key
        self._email = email
        self._ca_file = ca_file
        self._order_timeout = order_timeout
        self._challenges = challenges
        self._stop = stop
        self._client: client.ClientV2 | None = None
        #: The account's URL, set each time the account is (re)connected; the caller takes and clears it.
        self.connected_account: str | None = None

    def order(self, names: tuple[str, ...]) -> bytes:
        """A new private key and the full chain of its certificate for ``names``, as one PEM."""
        try:
            if self._client is None:
                try:
                    key = self._account_key()
                except (OSError, LocalError, ValueError) as exc:
                    raise IssuanceFailed(names, "account", f"cannot use the account key: {exc}") from exc
                self._client = self._connect(key)
            return self._order(self._client, names)
        except IssuanceFailed:
            self._client = None  # the next order starts afresh: directory, nonces, account
            raise
        except messages.Error as exc:
            self._client = None
            raise IssuanceFailed(names, exc.code or str(exc.typ), problem_text(exc)) from exc
        except errors.Error as exc:
            self._client = None
            raise IssuanceFailed(names, "protocol", str(exc) or type(exc).__name__) from exc
        except OSError as exc:  # requests' errors are OSErrors too
            self._client = None
            raise IssuanceFailed(names, "network", f"{self.directory_url}: {exc}") from exc
        except Exception as exc:  # a reply we cannot use: the caller's renewal loop must go on
            self._client = None
            raise IssuanceFailed(names, "error", f"{type(exc).__name__}: {exc}") from exc

    def _connect(self, key: ec.EllipticCurvePrivateKey) -> client.ClientV2:
        net = client.ClientNetwork(
            JWKEC(key=key),
            alg=ES256,
            user_agent=f"pierce/{__version__}",
            timeout=NETWORK_TIMEOUT,
        )
        if self._ca_file is not None:
            net.verify_ssl = str(self._ca_file)  # type: ignore[assignment]  # requests takes a CA file here
        acme = client.ClientV2(client.ClientV2.get_directory(self.directory_url, net), net)
        registration = messages.NewRegistration.from_data(email=self._email, terms_of_service_agreed=True)
        try:
            uri = str(acme.new_account(registration).uri)
        except errors.ConflictError as exc:  # the CA knows this key already
            uri = exc.location
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        self.connected_account = uri
        return acme

    def _order(self, acme: client.ClientV2, names: tuple[str, ...]) -> bytes:
        deadline = time.monotonic() + self._order_timeout
        private_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        order = acme.new_order(crypto_util.make_csr(private_pem, list(names)))
        account_key = acme.net.key
        assert account_key is not None
        tokens: list[str] = []
        try:
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # the CA reused an earlier validation
                challb = _http01(authzr, names)
                response, validation = challb.response_and_validation(account_key)
                token = challb.chall.encode("token")
                self._challenges[token] = validation.encode()
                tokens.append(token)
                acme.answer_challenge(challb, response)
            for authzr in order.authorizations:
                self._wait_valid(acme, authzr, names, deadline)
            chain = self._finalize(acme, order, names, deadline)
        finally:
            for token in tokens:
                self._challenges.pop(token, None)
        return private_pem + chain.encode()

    def _wait_valid(
        self,
        acme: client.ClientV2,
        authzr: messages.AuthorizationResource,
        names: tuple[str, ...],
        deadline: float,
    ) -> None:
        delay = _POLL_FIRST
        while True:
            authzr, _ = acme.poll(authzr)
            status = authzr.body.status
            if status == messages.STATUS_VALID:
                return
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                problems = [c.error for c in authzr.body.challenges if c.error is not None]
                identifier = authzr.body.identifier.value
                if not problems:
                    raise IssuanceFailed(names, str(status), f"{identifier}: authorization {status}")
                kind = problems[0].code or str(problems[0].typ)
                text = "; ".join(problem_text(p) for p in problems)
                raise IssuanceFailed(names, kind, f"{identifier}: {text}")
            self._pause(delay, deadline, names, "validation")
            delay = min(delay * 2, _POLL_MAX)

    def _finalize(
        self, acme: client.ClientV2, order: messages.OrderResource, names: tuple[str, ...], deadline: float
    ) -> str:
        order = acme.begin_finalization(order)
        delay = _POLL_FIRST
        while True:
            body = order.body
            if body.status == messages.STATUS_VALID and body.certificate is not None:
                return str(_post_as_get(acme, body.certificate).text)
            if body.status == messages.STATUS_INVALID:
                if body.error is not None:
                    kind = body.error.code or str(body.error.typ)
                    raise IssuanceFailed(names, kind, problem_text(body.error))
                raise IssuanceFailed(names, "invalid", "the CA abandoned the order without saying why")
            if order.uri is None:
                raise IssuanceFailed(names, "protocol", "the CA gave the order no URL to poll")
            self._pause(delay, deadline, names, "issuance")
            delay = min(delay * 2, _POLL_MAX)
            order = order.update(body=messages.Order.from_json(_post_as_get(acme, order.uri).json()))

    def _pause(self, delay: float, deadline: float, names: tuple[str, ...], what: str) -> None:
        if time.monotonic() + delay > deadline:
            raise IssuanceFailed(
                names, "timeout", f"the CA did not finish {what} in {self._order_timeout:.0f}s"
            )
        if self._stop.wait(delay):
            raise IssuanceFailed(names, "stopped", "the certificate manager was closed")


def problem_text(error: messages.Error) -> str:
    """The CA's detail of an ACME problem, with its subproblems."""
    text = error.detail or error.title or error.description or str(error.typ)
    for sub in error.subproblems or ():
        who = f"{sub.identifier.value}: " if sub.identifier is not None else ""
        text += f"; {who}{sub.detail or sub.typ}"
    return text


def _http01(authzr: messages.AuthorizationResource, names: tuple[str, ...]) -> messages.ChallengeBody:
    for challb in authzr.body.challenges:
        if isinstance(challb.chall, challenges.HTTP01):
            return challb
    offered = ", ".join(str(c.chall.typ) for c in authzr.body.challenges)
    raise IssuanceFailed(
        names,
        "unsupported",
        f"{authzr.body.identifier.value}: the CA offers no http-01 challenge ({offered})",
    )


def _post_as_get(acme: client.ClientV2, url: str) -> requests.Response:
    return acme.net.post(url, None, new_nonce_url=acme.directory["newNonce"])
