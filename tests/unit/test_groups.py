"""Load-balancing groups on the server, without sockets: who may join, the turns, and the last to leave."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pierce.protocol import ErrorCode, Refused
from pierce.proxies.base import ProxyType
from pierce.proxies.http import HttpSpec
from pierce.proxies.tcp import TcpSpec
from pierce.server.proxies import group as group_mod
from pierce.server.proxies.group import ProxyGroup, ProxyGroups


@dataclass
class Owner:
    client_id: str = "c1"
    user: str = "default"


@dataclass(eq=False)
class Member:
    name: str
    owner: Owner = field(default_factory=Owner)


class Group(ProxyGroup[Member]):
    kind = ProxyType.TCP
    checked_apart = frozenset({"remote_port"})

    def __init__(self, groups: ProxyGroups, user: str, spec: TcpSpec) -> None:
        super().__init__(groups, user, spec)
        self.released = 0

    async def release(self) -> None:
        self.released += 1


def spec(**fields: object) -> TcpSpec:
    return TcpSpec(**{"remote_port": 6000, "group": "g", "group_key": "key-1", **fields})  # type: ignore[arg-type]


def opened(groups: ProxyGroups, user: str = "default", **fields: object) -> Group:
    return groups.join(Group, user, "a", spec(**fields), lambda: Group(groups, user, spec(**fields)))


def test_the_same_name_and_key_join_one_group_and_take_turns() -> None:
    groups = ProxyGroups()
    group = opened(groups)
    a, b, c = Member("a"), Member("b"), Member("c")
    group.add(a)
    assert opened(groups, remote_port=0) is group  # the port is checked by the kind itself
    group.add(b)
    group.add(c)
    assert [group.pick() for _ in range(7)] == [a, b, c, a, b, c, a]


async def test_turns_go_on_with_the_members_left_and_the_last_one_releases() -> None:
    groups = ProxyGroups()
    group = opened(groups)
    a, b, c = Member("a"), Member("b"), Member("c")
    for m in (a, b, c):
        group.add(m)
    assert [group.pick(), group.pick()] == [a, b]
    await group.leave(b)
    assert [group.pick() for _ in range(4)] == [a, c, a, c]
    await group.leave(a)
    await group.leave(a)  # twice: no harm
    assert group.released == 0
    assert [group.pick(), group.pick()] == [c, c]
    await group.leave(c)
    assert group.released == 1
    assert group.pick() is None
    assert groups.find(Group, "default", "d", spec()) is None  # forgotten: the next one opens anew
    assert opened(groups) is not group


def test_a_wrong_key_is_refused_naming_the_group_never_the_key() -> None:
    groups = ProxyGroups()
    opened(groups).add(Member("a"))
    with pytest.raises(Refused) as info:
        groups.find(Group, "default", "b", spec(group_key="key-2"))
    assert info.value.code is ErrorCode.NOT_ALLOWED
    assert str(info.value) == "proxy 'b': wrong group_key for group 'g'"
    with pytest.raises(Refused):
        groups.find(Group, "default", "b", spec(group_key=""))


def test_other_settings_are_refused_naming_them() -> None:
    groups = ProxyGroups()
    opened(groups).add(Member("a"))
    with pytest.raises(Refused) as info:
        groups.find(Group, "default", "b", spec(allow_ips=["10.0.0.0/8"], deny_ips=["10.0.0.1"]))
    assert str(info.value) == (
        "proxy 'b': group 'g' is open with other allow_ips, deny_ips; every member of a group must send "
        "the same"
    )


def test_groups_belong_to_a_user_and_a_kind() -> None:
    groups = ProxyGroups()
    mine = opened(groups, user="alice")
    assert groups.find(Group, "bob", "b", spec(group_key="other")) is None  # bob's "g" is another group
    assert opened(groups, user="bob") is not mine

    class WebGroup(Group):
        kind = ProxyType.HTTP

    assert groups.find(WebGroup, "alice", "w", spec()) is None


def test_a_group_has_a_most_members(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_mod, "MAX_MEMBERS", 2)
    groups = ProxyGroups()
    group = opened(groups)
    group.add(Member("a"))
    group.add(Member("b"))
    with pytest.raises(Refused) as info:
        groups.find(Group, "default", "c", spec())
    assert info.value.code is ErrorCode.LIMIT_REACHED


def test_the_key_never_shows_in_a_spec_repr() -> None:
    web = HttpSpec(custom_domains=["a.example"], group="g", group_key="hunter2-group-key")
    assert "hunter2" not in repr(web)
    assert "hunter2" not in repr(spec(group_key="hunter2-group-key"))
