"""The token strength estimate and the check config loading applies to the server's token."""

from __future__ import annotations

import math
import random
import string

import pytest

from pierce import config
from pierce.errors import ConfigError, InvalidValue
from pierce.token_strength import MIN_TOKEN_BITS, check_token_strength, estimate_bits

URL_SAFE = string.ascii_letters + string.digits + "-_"


def random_token(rng: random.Random, length: int, alphabet: str = URL_SAFE) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.mark.parametrize(
    "token",
    [
        "sunshine",  # a common password
        "password123",  # a word and a sequence
        "P@ssw0rd!",  # the same with the usual substitutions
        "aaaaaaaaaaaaaaaa",  # one character repeated
        "abcdefgh12345678",  # two sequences
        "qwertyuiop1234567890",  # keyboard rows
        "abcabcabcabcabcabc",  # a repeated stretch
        "secret",
        "test-token",
        "xyzzy-7",  # random-ish, but short
        "x" * 300,  # long is not strong
    ],
)
def test_weak_tokens_are_estimated_below_the_minimum(token: str) -> None:
    assert estimate_bits(token) < MIN_TOKEN_BITS


def test_random_url_safe_tokens_of_22_characters_are_strong() -> None:
    """What `secrets.token_urlsafe(16)` makes (128 random bits): estimated near 130, never below 100."""
    rng = random.Random(5)
    estimates = [estimate_bits(random_token(rng, 22)) for _ in range(300)]
    assert min(estimates) > 100
    assert max(estimates) <= 22 * math.log2(26 + 26 + 10 + 33) + 1e-9  # the classes' size, no more


@pytest.mark.parametrize(
    ("token", "low", "high"),
    [
        ("b069df845318aed8", 64, 90),  # 16 hex digits: 64 random bits
        ("cdcad5f5f14d80dc98b2094a76d86d27", 128, 170),  # `openssl rand -hex 16`
        ("Kq7vB2mN9pL4sR8tW3zY6c", 100, 135),
    ],
)
def test_generated_looking_tokens(token: str, low: float, high: float) -> None:
    assert low <= estimate_bits(token) <= high


def test_patterns_cost_less_than_random_characters() -> None:
    assert estimate_bits("sunshine") < estimate_bits("snuhsnie")
    assert estimate_bits("Sunshine") > estimate_bits("sunshine")  # a capital costs a little
    assert estimate_bits("") == 0


def test_check_names_the_key_the_bits_and_the_escape() -> None:
    with pytest.raises(InvalidValue) as info:
        check_token_strength("users[2].token", "sunshine", allow_weak=False)
    assert info.value.key == ("users[2].token",)
    assert "about 5 bits estimated, at least 64 expected" in info.value.message
    assert "allow_weak_token = true" in info.value.message
    check_token_strength("token", "sunshine", allow_weak=True)
    check_token_strength("token", "Kq7vB2mN9pL4sR8tW3zY6c", allow_weak=False)


def test_server_config_refuses_a_weak_token_unless_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        config.convert({"token": "password123"}, config.ServerConfig, "server.toml")
    (problem,) = info.value.problems
    assert problem.startswith("server.toml: token: this token is too easy to guess: about 9 bits")
    assert "allow_weak_token = true" in problem
    weak = config.convert({"token": "password123", "allow_weak_token": True}, config.ServerConfig, "s")
    assert weak.token == "password123"
    assert config.convert({}, config.ServerConfig, "s").token == ""  # generated at start


def test_clients_are_not_checked() -> None:
    """The client does not choose the token; the server it logs in to does."""
    cfg = config.convert({"server_addr": "h", "token": "t"}, config.ClientConfig, "c")
    assert cfg.token == "t"
