"""Load balancing: proxies that share one public port, domain or tcpmux name and take turns with visitors.

Proxies whose specs name the same ``group`` form one group when they are of the same kind and belong to
the same user. Groups are per user, as ports and domains are (`pierce.server.claims`): another user's
proxy with the same group name is in another group, and asking for a port or domain that is taken is
refused as it always is. Members keep names of their own (names stay unique on the server).

The first member opens what the group shares, in a subclass of `ProxyGroup` per kind: the public
listener of tcp proxies, the route on the web ports (http, https) or on the tcpmux port. A later
member joins when its ``group_key`` matches (compared in constant time; the key is never logged or
shown) and its spec asks for the same in every other respect (domains, locations, auth, headers,
allow_ips ...): a member that differs is refused with the settings named, since the server could not
apply two sets of them to one port or route. Each new visitor connection goes to the next member in
turn (for http: each new connection to a service; a browser's kept-alive connection stays with the
member it reached). The shared part stays open while any member does; the last to leave closes it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pierce.logs import event
from pierce.protocol import ErrorCode, Refused
from pierce.proxies.base import GroupedSpec, ProxyOwner, ProxyType

log = logging.getLogger("pierce.proxy")

#: Members one group may have.
MAX_MEMBERS = 256

#: A group's identity: its user, its kind and its name.
GroupId = tuple[str, ProxyType, str]


class Member(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def owner(self) -> ProxyOwner: ...


M = TypeVar("M", bound=Member)
G = TypeVar("G", bound="ProxyGroup[Any]")


def _digest(key: str) -> bytes:
    # Fixed-length digests, so that the comparison takes the same time whatever the keys' lengths.
    return hashlib.sha256(key.encode()).digest()


class ProxyGroup(Generic[M]):
    """One group: its members in turn order, and what they must agree on. Subclasses hold what the
    members share and close it in `release`."""

    kind: ClassVar[ProxyType]
    #: Spec fields a subclass checks itself (beside the key, which is never compared as a setting).
    checked_apart: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, groups: ProxyGroups, user: str, spec: GroupedSpec) -> None:
        self.name = spec.group
        self.user = user
        self._groups = groups
        self._key = _digest(spec.group_key)
        self._spec = spec
        self.members: list[M] = []
        self._turn = 0

    @property
    def ident(self) -> GroupId:
        return (self.user, self.kind, self.name)

    def check(self, proxy: str, spec: GroupedSpec) -> None:
        """Whether proxy ``proxy`` with ``spec`` may join; raises `Refused` saying why not."""
        if not hmac.compare_digest(_digest(spec.group_key), self._key):
            raise Refused(ErrorCode.NOT_ALLOWED, f"proxy {proxy!r}: wrong group_key for group {self.name!r}")
        skip = self.checked_apart | {"group_key"}
        differ = [
            f for f in spec.__struct_fields__ if f not in skip and getattr(spec, f) != getattr(self._spec, f)
        ]
        if differ:
            raise Refused(
                ErrorCode.NOT_ALLOWED,
                f"proxy {proxy!r}: group {self.name!r} is open with other {', '.join(differ)}; "
                "every member of a group must send the same",
            )
        if len(self.members) >= MAX_MEMBERS:
            raise Refused(
                ErrorCode.LIMIT_REACHED, f"group {self.name!r} has {MAX_MEMBERS} members, the most allowed"
            )

    def pick(self) -> M | None:
        """The member whose turn it is (None when the last one has just left)."""
        if not self.members:
            return None
        turn = self._turn % len(self.members)
        self._turn = turn + 1
        return self.members[turn]

    def add(self, member: M) -> None:
        self.members.append(member)
        self._log("proxy.group_joined", member, "joined")

    async def leave(self, member: M) -> None:
        """``member`` is gone; the last member to leave closes what the group shares."""
        if member not in self.members:
            return
        self.members.remove(member)
        self._log("proxy.group_left", member, "left")
        if not self.members:
            self._groups.forget(self)
            await self.release()

    async def release(self) -> None:
        """Close what the members shared."""
        raise NotImplementedError

    def _log(self, name: str, member: M, what: str) -> None:
        event(
            log,
            logging.INFO,
            name,
            f"client {member.owner.client_id}: proxy {member.name} {what} {self.kind} group {self.name} "
            f"({len(self.members)} members)",
            client_id=member.owner.client_id,
            proxy=member.name,
            type=self.kind.value,
            group=self.name,
            members=len(self.members),
        )


class ProxyGroups:
    """The server's open groups."""

    def __init__(self) -> None:
        self._open: dict[GroupId, ProxyGroup[Any]] = {}

    def find(self, kind: type[G], user: str, proxy: str, spec: GroupedSpec) -> G | None:
        """The open group of ``user`` that ``spec`` names, once ``proxy`` may join it (`ProxyGroup.check`
        raises `Refused`); None when no such group is open."""
        group = self._open.get((user, kind.kind, spec.group))
        if group is None:
            return None
        assert isinstance(group, kind)
        group.check(proxy, spec)
        return group

    def join(self, kind: type[G], user: str, proxy: str, spec: GroupedSpec, opener: Callable[[], G]) -> G:
        """The group ``spec`` names: the open one, or a new one from ``opener`` (which opens what the
        members share, or raises `Refused`)."""
        group = self.find(kind, user, proxy, spec)
        if group is None:
            group = opener()
            self.add(group)
        return group

    def add(self, group: ProxyGroup[Any]) -> None:
        self._open[group.ident] = group

    def forget(self, group: ProxyGroup[Any]) -> None:
        if self._open.get(group.ident) is group:
            del self._open[group.ident]
