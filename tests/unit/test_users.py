"""Per-user limits on the server (``[[users]]``): the config keys and the bookkeeping of `UserLimits`."""

from __future__ import annotations

import tomllib

import msgspec
import pytest

from pierce import config
from pierce.errors import ConfigError
from pierce.protocol import ErrorCode, Refused
from pierce.server.app import _is_failure
from pierce.server.users import UserLimits, Users

SERVER = 'allow_weak_token = true\nallow_ports = ["6000-6999"]\n'


def server(text: str) -> config.ServerConfig:
    return config.convert(tomllib.loads(SERVER + text), config.ServerConfig, "s.toml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        server(text)
    return info.value.problems


def test_the_keys_of_a_user_are_read() -> None:
    cfg = server(
        '[[users]]\nname = "alice"\ntoken = "a"\nallow_ports = ["6000-6009", 6100]\nmax_proxies = 3\n'
        'max_clients = 2\nbandwidth_limit = "2MB"\n'
    )
    (alice,) = cfg.users
    assert [str(r) for r in alice.allow_ports] == ["6000-6009", "6100"]
    assert (alice.max_proxies, alice.max_clients, alice.bandwidth_limit) == (3, 2, "2MB")
    limits = Users(cfg)["alice"]
    assert limits.rate == 2 * 1024 * 1024 and limits.bandwidth is not None
    assert Users(cfg)["default"].bandwidth is None  # no [[users]] table: only the server-wide limits


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ("max_proxies = -1", "users[0].max_proxies: expected 0 (no limit) or more, got -1"),
        ("max_clients = -2", "users[0].max_clients: expected 0 (no limit) or more, got -2"),
        ('bandwidth_limit = "fast"', 'users[0].bandwidth_limit: expected a rate such as "10MB"'),
        (
            'allow_ports = ["7000-7001"]',
            "users[0].allow_ports: expected ports within the server's allow_ports",
        ),
        ('allow_ports = ["x"]', 'users[0].allow_ports[0]: expected a port or range like "6000-7000"'),
    ],
)
def test_bad_user_limits_name_the_key(lines: str, problem: str) -> None:
    (found,) = problems(f'[[users]]\nname = "alice"\ntoken = "a"\n{lines}\n')
    assert found.startswith(f"s.toml: {problem}"), found


def test_max_clients_refuses_a_login_beyond_it_and_a_leaving_client_frees_its_place() -> None:
    limits = UserLimits("alice", max_clients=2)
    limits.take_client()
    limits.take_client()
    with pytest.raises(Refused) as info:
        limits.take_client()
    assert info.value.code is ErrorCode.LIMIT_REACHED
    assert "max_clients = 2" in info.value.reason and "'alice'" in info.value.reason
    limits.client_left()
    limits.take_client()
    assert limits.clients == 2


def test_max_proxies_and_allow_ports_refuse_with_the_limit_and_its_value() -> None:
    limits = UserLimits("bob", max_proxies=1, allow_ports=[config.parse_port_range("6000-6001")])
    limits.check_proxy()
    limits.proxies = 1
    with pytest.raises(Refused) as info:
        limits.check_proxy()
    assert info.value.code is ErrorCode.LIMIT_REACHED and "max_proxies = 1" in info.value.reason
    assert limits.port_allowed(6001) and not limits.port_allowed(6002)
    refusal = limits.port_refusal(6002)
    assert refusal.code is ErrorCode.PORT_NOT_ALLOWED and "6000-6001" in refusal.reason


def test_a_login_refused_over_max_clients_does_not_count_against_its_source() -> None:
    assert not _is_failure(Refused(ErrorCode.LIMIT_REACHED, "max_clients"), said_hello=True)
    assert _is_failure(Refused(ErrorCode.BAD_MESSAGE, "garbage"), said_hello=True)


def test_the_snapshot_carries_the_limits() -> None:
    info = UserLimits("carol", max_clients=1, rate=4096).info()
    doc = msgspec.to_builtins(info)
    assert doc["max_clients"] == 1 and doc["bandwidth_limit"] == 4096 and doc["dropped_datagrams_in"] == 0
