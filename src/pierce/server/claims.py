"""Who owns what on the server: proxy names, public ports and domains, each held by one user.

A user claims a thing when one of its proxies opens with it, and keeps it while any of its proxies
holds it, then for ``hold`` seconds more, so that nobody else can take a name, port or domain while its
owner reconnects or reloads. Another user asking for it is refused with a reason that names the thing,
never its owner. Times come from an injectable clock (monotonic), so tests need no waiting.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable

import msgspec

#: Released claims kept at most; the oldest go first (live claims are never dropped).
MAX_RELEASED = 100_000


class Thing(enum.Enum):
    """The kinds of thing a user can own."""

    NAME = "proxy name"
    PORT = "port"
    DOMAIN = "domain"


Key = tuple[Thing, str]


class _Claim(msgspec.Struct):
    user: str
    holders: int = 0
    #: When the last holder let go (monotonic), while ``holders`` is 0.
    released: float = 0.0


class Claims:
    def __init__(self, hold: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold = hold
        self.clock = clock
        self._claims: dict[Key, _Claim] = {}

    def conflict(self, user: str, keys: Iterable[Key]) -> str | None:
        """Why ``user`` may not take ``keys`` ("port 6000 is taken by another user"), or None.

        A domain also conflicts with another user's wildcard that covers it (``*.example.com`` covers
        ``nas.example.com``), and a wildcard with another user's domains under it.
        """
        for key in keys:
            for other in self._related(key):
                claim = self._live(other)
                if claim is None or claim.user == user:
                    continue
                thing, value = key
                shown = repr(value) if thing is Thing.NAME else value
                if claim.holders:
                    return f"{thing.value} {shown} is taken by another user"
                return f"{thing.value} {shown} is reserved for another user, who used it recently"
        return None

    def _related(self, key: Key) -> list[Key]:
        thing, value = key
        if thing is not Thing.DOMAIN:
            return [key]
        related = [key]
        labels = value.split(".")
        related += [(Thing.DOMAIN, "*." + ".".join(labels[i:])) for i in range(1, len(labels))]
        if value.startswith("*."):
            suffix = value[1:]
            related += [k for k in self._claims if k[0] is Thing.DOMAIN and k[1].endswith(suffix)]
        return related

    def _live(self, key: Key) -> _Claim | None:
        claim = self._claims.get(key)
        if claim is not None and claim.holders == 0 and self.clock() - claim.released >= self.hold:
            del self._claims[key]
            return None
        return claim

    def take(self, user: str, keys: Iterable[Key]) -> None:
        """Hold ``keys`` for ``user`` (call `conflict` first)."""
        for key in keys:
            claim = self._claims.get(key)
            if claim is None or claim.user != user:
                claim = self._claims[key] = _Claim(user)
            claim.holders += 1

    def release(self, user: str, keys: Iterable[Key]) -> None:
        """One holder of ``keys`` let go; the last one starts the hold time."""
        now = self.clock()
        for key in keys:
            claim = self._claims.get(key)
            if claim is None or claim.user != user or claim.holders == 0:
                continue
            claim.holders -= 1
            if claim.holders == 0:
                claim.released = now
        self._trim()

    def owner(self, key: Key) -> str | None:
        """The user holding or reserving ``key`` now (for the operator's API, never for refusals)."""
        claim = self._live(key)
        return claim.user if claim is not None else None

    def _trim(self) -> None:
        if len(self._claims) <= MAX_RELEASED:
            return
        released = [(c.released, k) for k, c in self._claims.items() if c.holders == 0]
        if len(released) <= MAX_RELEASED:
            return
        released.sort()
        for _, key in released[: len(released) - MAX_RELEASED]:
            del self._claims[key]
