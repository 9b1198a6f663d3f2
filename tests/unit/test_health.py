"""Health checks of a proxy's local service: the state machine (results in, changes out), the probes
against real loopback services, and the config keys' errors."""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pierce import config
from pierce.addr import HostPort
from pierce.errors import ConfigError
from pierce.proxies.health import Health, HealthCheckConfig, HealthCheckType, HealthState, probe

UP, DOWN, UNKNOWN = Health.UP, Health.DOWN, Health.UNKNOWN


def run(state: HealthState, results: str) -> list[Health | None]:
    """Feed results ("+" passed, "-" failed); the change each one made."""
    return [state.record(r == "+") for r in results]


def test_a_proxy_is_unknown_until_its_first_check_passes() -> None:
    state = HealthState(max_failed=3)
    assert state.health is UNKNOWN
    assert run(state, "--+") == [None, None, UP]
    assert state.failures == 0


def test_max_failed_failures_in_a_row_take_it_down_and_one_pass_brings_it_back() -> None:
    state = HealthState(max_failed=3)
    assert run(state, "+--+--") == [UP, None, None, None, None, None]  # a pass in between resets
    assert state.failures == 2
    assert run(state, "-") == [DOWN]
    assert run(state, "---") == [None, None, None]  # down stays down, without another change
    assert run(state, "+") == [UP]
    assert run(state, "+") == [None]


def test_failing_from_the_start_is_a_change_to_down_too() -> None:
    state = HealthState(max_failed=2)
    assert run(state, "--+") == [None, DOWN, UP]


def test_max_failed_one_goes_down_at_the_first_failure() -> None:
    state = HealthState(max_failed=1)
    assert run(state, "+-+-") == [UP, DOWN, UP, DOWN]


# -- probes against real services on loopback ------------------------------------------------------

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(answer: Answer) -> AsyncIterator[HostPort]:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield HostPort("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()


def http_answer(status: bytes, seen: list[bytes]) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    return answer


def http_check(path: str = "") -> HealthCheckConfig:
    return HealthCheckConfig(type=HealthCheckType.HTTP, timeout_s=5, path=path)


@pytest.mark.parametrize(
    ("status", "passes"),
    [
        (b"200 OK", True),
        (b"204 No Content", True),
        (b"302 Found", True),
        (b"404 Not Found", False),
        (b"500 Internal Server Error", False),
    ],
)
async def test_http_check_passes_on_2xx_and_3xx(status: bytes, passes: bool) -> None:
    seen: list[bytes] = []
    async with serve(http_answer(status, seen)) as local:
        error = await probe(http_check("/healthz?full=1"), local)
    assert (error is None) is passes, error
    if not passes:
        assert error == f"answered {int(status[:3])} to GET /healthz?full=1"
    assert seen[0].startswith(b"GET /healthz?full=1 HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_http_check_asks_for_the_root_without_a_path_and_wants_http() -> None:
    seen: list[bytes] = []
    async with serve(http_answer(b"200 OK", seen)) as local:
        assert await probe(http_check(), local) is None
    assert seen[0].startswith(b"GET / HTTP/1.1\r\n")

    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    async with serve(not_http) as local:
        assert await probe(http_check(), local) == "answered with no HTTP status line"


async def test_tcp_check_connects_and_a_closed_port_fails() -> None:
    tcp = HealthCheckConfig(type=HealthCheckType.TCP, timeout_s=5)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with serve(silent) as local:
        assert await probe(tcp, local) is None
    error = await probe(tcp, local)  # the server is closed now
    assert error is not None and "refused" in error.lower(), error


async def test_a_service_that_never_answers_fails_at_the_timeout() -> None:
    release = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    check = HealthCheckConfig(type=HealthCheckType.HTTP, timeout_s=0.2)
    async with serve(mute) as local:
        assert await probe(check, local) == "no answer within 0.2s"
        release.set()


# -- config ----------------------------------------------------------------------------------------

PROXY = 'server_addr = "h"\ntoken = "t"\n[[proxies]]\ntype = "tcp"\nname = "a"\nlocal_port = 1\n'


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.convert(tomllib.loads(text), config.ClientConfig, "c.toml")
    return info.value.problems


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ('health_check = { type = "icmp" }', 'proxies[0].health_check.type: expected one of "tcp", "http"'),
        ("health_check = { interval_s = 1 }", "proxies[0].health_check.type: missing required key"),
        (
            'health_check = { type = "tcp", interval_s = 0 }',
            "proxies[0].health_check.interval_s: expected seconds > 0, at most 86400",
        ),
        (
            'health_check = { type = "tcp", timeout_s = 61 }',
            "proxies[0].health_check.timeout_s: expected seconds > 0, at most 60",
        ),
        (
            'health_check = { type = "tcp", max_failed = 0 }',
            "proxies[0].health_check.max_failed: expected 1 to 1000, got 0",
        ),
        (
            'health_check = { type = "tcp", path = "/up" }',
            'proxies[0].health_check.path: expected no path: it is for type = "http"',
        ),
        (
            'health_check = { type = "http", path = "up" }',
            'proxies[0].health_check.path: expected a path starting with "/"',
        ),
        ('health_check = { type = "http", intervals = 1 }', 'unknown key (did you mean "interval_s"?)'),
        ('group = "web farm"', "proxies[0].group: expected 1 to 64 letters, digits, '.', '_' or '-'"),
        ('group_key = "k"', "proxies[0].group_key: expected group too"),
        ('group = "g"\ngroup_key = "' + "k" * 256 + '"', "proxies[0].group_key: expected at most 255"),
    ],
)
def test_group_and_health_check_keys_name_their_problem(lines: str, problem: str) -> None:
    (found,) = problems_of(PROXY + lines + "\n")
    assert found.startswith("c.toml: ") and problem in found, found
    assert "k" * 20 not in found  # a group key is never repeated


def test_health_check_defaults_and_group_keys_parse_on_every_stream_kind() -> None:
    text = 'server_addr = "h"\ntoken = "t"\n'
    for kind, extra in (
        ("tcp", ""),
        ("http", 'custom_domains = ["a.example"]\n'),
        ("https", 'custom_domains = ["a.example"]\n'),
        ("tcpmux", 'custom_domains = ["a.example"]\n'),
    ):
        text += f'[[proxies]]\ntype = "{kind}"\nname = "{kind}"\nlocal_port = 1\n{extra}'
        text += 'group = "g.1"\ngroup_key = "secret-of-the-group"\nhealth_check = { type = "http" }\n'
    cfg = config.convert(tomllib.loads(text), config.ClientConfig, "c.toml")
    for proxy in cfg.proxies:
        check = proxy.health_check  # type: ignore[union-attr]
        assert (check.interval_s, check.timeout_s, check.max_failed, check.path) == (10.0, 3.0, 1, "")
        assert "secret-of-the-group" not in repr(proxy)
