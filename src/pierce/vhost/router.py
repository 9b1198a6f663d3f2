"""Routing table of the virtual hosts: which owner serves a host name and a request path.

Rules of matching
-----------------
1. Names are compared in lower case, without a trailing dot. The host of a request is normalised the
   same way, and a ``:port`` suffix and IPv6 brackets are removed (:func:`normalize_host`).
2. An exact name wins over every wildcard. A wildcard ``*.dev.example.com`` matches any name at any
   depth below ``dev.example.com`` (but not ``dev.example.com`` itself); the longest wildcard wins, so
   ``a.b.dev.example.com`` tries ``*.b.dev.example.com``, then ``*.dev.example.com``, then
   ``*.example.com``, then ``*.com``.
3. Within one name, the longest location that is a path prefix on a segment boundary wins: ``/api``
   matches ``/api``, ``/api/x`` and ``/api?q=1``, not ``/apix``. ``/`` matches every path. Paths are
   compared in the canonical form of `pierce.vhost.paths` (the form the engine routes and forwards);
   locations are brought to it when added. A trailing ``/`` of a location is not significant.
4. When a name has routes but none of its locations matches the path, matching goes on with the next
   less specific name of rule 2.

The table is sans-I/O and synchronous; one instance belongs to one listening port.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

import msgspec

from pierce import domains
from pierce.errors import PierceError
from pierce.vhost.paths import UnsafeTarget, canonical_path

T = TypeVar("T")

#: The location every request path matches.
ROOT_LOCATION = "/"

_HOST = re.compile(r"[a-z0-9._:-]{1,253}")
_LOCATION_FORBIDDEN = re.compile(r"[\x00-\x20\x7f?#]")
_WILDCARD_PREFIX = domains.WILDCARD_PREFIX


class RouteError(PierceError):
    """A route cannot be added: its domain or location is invalid, or it is taken.

    Whose fault that is depends on where the route came from (a local configuration file or a
    client's request), so the caller decides how to report it.
    """


class InvalidDomain(RouteError, domains.InvalidDomain):
    """A domain is not a valid DNS name or wildcard (``*.`` followed by a name); see `pierce.domains`."""


class InvalidLocation(RouteError, ValueError):
    """A location is not a URL path such as ``/`` or ``/api``."""


class RouteTaken(RouteError):
    """The domain and location are already routed to another owner."""

    def __init__(self, domain: str, location: str, owner: object) -> None:
        self.domain = domain
        self.location = location
        self.owner = owner
        # The owner stays out of the text: refusals never say whose a domain is.
        super().__init__(f"domain {domain} location {location} is already taken")


class Route(msgspec.Struct, Generic[T], frozen=True):
    """One entry of the table: a normalised domain, a normalised location and its owner."""

    domain: str
    location: str
    value: T


def normalize_domain(domain: str) -> str:
    """The canonical form of a configured domain (lower case, no trailing dot); raises InvalidDomain.

    The rules (and why ``_`` is allowed) are those of `pierce.domains`, shared with config checks.
    """
    try:
        return domains.normalize_domain(domain)
    except domains.InvalidDomain as exc:
        raise InvalidDomain(str(exc)) from None


def normalize_location(location: str) -> str:
    """The canonical form of a location (``/api/`` -> ``/api``, ``/café`` -> ``/caf%C3%A9``); raises
    InvalidLocation."""
    if not isinstance(location, str) or not location.startswith("/"):
        raise InvalidLocation(f'expected a location starting with "/" such as "/api", got {location!r}')
    if _LOCATION_FORBIDDEN.search(location):
        raise InvalidLocation(
            f"location {location!r} must be a path without spaces, control characters, '?' or '#'"
        )
    try:
        canonical = canonical_path(location.encode()).decode("ascii")
    except (UnsafeTarget, UnicodeError) as exc:
        raise InvalidLocation(f"location {location!r} is not one unambiguous path: {exc}") from None
    return canonical.rstrip("/") or ROOT_LOCATION


def normalize_host(host: str | bytes) -> str:
    """The name to look up for a ``Host`` header or an SNI name; never raises.

    Lower case, without ``:port``, IPv6 brackets or a trailing dot. Text that cannot be a host name
    (non-ASCII, spaces, ``*`` ...) gives ``""``, which matches no route.
    """
    text = host.decode("latin-1") if isinstance(host, bytes | bytearray) else host
    if not text.isascii():
        return ""
    text = text.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    if text.endswith("."):
        text = text[:-1]
    return text if _HOST.fullmatch(text) else ""


def full_domain(subdomain: str, subdomain_host: str) -> str:
    """``subdomain`` of a proxy under the server's ``subdomain_host``: ``nas`` + ``example.com``."""
    if not subdomain_host:
        raise InvalidDomain(f'subdomain "{subdomain}" needs subdomain_host to be set on the server')
    try:
        label = domains.normalize_label(subdomain)
        host = domains.normalize_domain(subdomain_host, wildcard=False)
        return domains.normalize_domain(f"{label}.{host}")
    except domains.InvalidDomain as exc:
        raise InvalidDomain(str(exc)) from None


def proxy_domains(custom_domains: Iterable[str], subdomain: str, subdomain_host: str) -> list[str]:
    """The full domain names a proxy asks for (``subdomain`` needs the server's ``subdomain_host``)."""
    domains = list(custom_domains)
    if subdomain:
        if not subdomain_host:
            raise RouteError(f'subdomain "{subdomain}" needs subdomain_host in the server config')
        domains.append(full_domain(subdomain, subdomain_host))
    if not domains:
        raise RouteError("no domain: set custom_domains or subdomain")
    return domains


def location_matches(location: str, path: str) -> bool:
    """True when the normalised ``location`` is a prefix of ``path`` ending on a segment boundary."""
    if location == ROOT_LOCATION:
        return True
    if not path.startswith(location):
        return False
    return len(path) == len(location) or path[len(location)] in "/?#"


def candidate_domains(host: str) -> Iterator[str]:
    """Table keys that may serve a normalised host, most specific first: the name, then wildcards."""
    yield host
    labels = host.split(".")
    for i in range(1, len(labels)):
        yield _WILDCARD_PREFIX + ".".join(labels[i:])


class DomainRouter(Generic[T]):
    """Routes (domain, location) pairs to owners of type ``T``; see the module docstring for the rules."""

    def __init__(self) -> None:
        # domain -> {location: owner}, each inner dict ordered longest location first.
        self._table: dict[str, dict[str, T]] = {}

    def __len__(self) -> int:
        return sum(len(locations) for locations in self._table.values())

    def add(self, domain: str, location: str, value: T) -> Route[T]:
        """Route ``domain`` + ``location`` to ``value``; raises InvalidDomain, InvalidLocation, RouteTaken."""
        (route,) = self.add_all([domain], [location], value)
        return route

    def add_all(self, domains: Iterable[str], locations: Iterable[str], value: T) -> list[Route[T]]:
        """Route every domain with every location to ``value``, all or nothing.

        Nothing is added when any pair is invalid or taken. Pairs that are equal once normalised
        are added once.
        """
        names = list(dict.fromkeys(normalize_domain(d) for d in domains))
        paths = list(dict.fromkeys(normalize_location(loc) for loc in locations))
        for name in names:
            taken = self._table.get(name, {})
            for path in paths:
                if path in taken:
                    raise RouteTaken(name, path, taken[path])
        added = []
        for name in names:
            taken = self._table.setdefault(name, {})
            for path in paths:
                taken[path] = value
                added.append(Route(name, path, value))
            self._table[name] = dict(sorted(taken.items(), key=lambda item: len(item[0]), reverse=True))
        return added

    def remove(self, domain: str, location: str = ROOT_LOCATION) -> T | None:
        """Remove one route; its owner, or None when there was no such route."""
        try:
            name, path = normalize_domain(domain), normalize_location(location)
        except RouteError:
            return None
        taken = self._table.get(name)
        if taken is None or path not in taken:
            return None
        value = taken.pop(path)
        if not taken:
            del self._table[name]
        return value

    def remove_value(self, value: T) -> list[Route[T]]:
        """Remove every route whose owner equals ``value``; the routes removed."""
        removed = [route for route in self.routes() if route.value == value]
        for route in removed:
            self.remove(route.domain, route.location)
        return removed

    def routes(self) -> list[Route[T]]:
        """Every route, sorted by domain then location."""
        return [
            Route(name, path, value)
            for name in sorted(self._table)
            for path, value in sorted(self._table[name].items())
        ]

    def match(self, host: str | bytes, path: str | bytes = ROOT_LOCATION) -> Route[T] | None:
        """The route that serves ``host`` (a Host header or SNI name) and ``path``; None if none does."""
        name = normalize_host(host)
        if not name:
            return None
        target = path.decode("latin-1") if isinstance(path, bytes | bytearray) else path
        for candidate in candidate_domains(name):
            taken = self._table.get(candidate)
            if taken is None:
                continue
            for location, value in taken.items():
                if location_matches(location, target):
                    return Route(candidate, location, value)
        return None

    def lookup(self, host: str | bytes, path: str | bytes = ROOT_LOCATION) -> T | None:
        """The owner that serves ``host`` and ``path``, or None."""
        route = self.match(host, path)
        return None if route is None else route.value
