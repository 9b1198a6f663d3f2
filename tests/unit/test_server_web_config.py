"""``[web]`` of server.toml: credentials are required beyond loopback, and come in pairs."""

from __future__ import annotations

import tomllib

import pytest

from pierce import config
from pierce.errors import ConfigError

TOKEN = 'token = "test-token-Kq7vB2mN9pL4sR8tW3zY6c"\n'


def problems(web: str) -> list[str]:
    try:
        config.convert(tomllib.loads(TOKEN + "[web]\n" + web), config.ServerConfig, "s.toml")
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    "web",
    [
        "port = 8080",
        'addr = "::1"\nport = 8080',
        'addr = "localhost"\nport = 8080',
        'addr = "0.0.0.0"\nport = 0',  # off
        'addr = "0.0.0.0"\nport = 8080\nuser = "ops"\npassword = "pw"',
    ],
)
def test_accepted(web: str) -> None:
    assert problems(web) == []


@pytest.mark.parametrize(
    ("web", "problem"),
    [
        ('addr = "0.0.0.0"\nport = 8080', 's.toml: web.password: expected user and password: addr "0.0.0.0"'),
        ('addr = "192.0.2.1"\nport = 8080\nuser = "ops"', "s.toml: web.password: expected user and password"),
        ('port = 8080\npassword = "pw"', "s.toml: web.user: expected user and password together"),
        ("port = 70000", "s.toml: web.port: expected 0 (off) or a port up to 65535"),
    ],
)
def test_refused(web: str, problem: str) -> None:
    (found,) = problems(web)
    assert found.startswith(problem), found


def test_password_is_masked() -> None:
    web = config.WebOptions(user="ops", password="secret-pw")
    assert "secret-pw" not in repr(web)
