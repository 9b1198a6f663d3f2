"""Config loading: every shipped example parses; every file in invalid/ fails with a precise message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pierce import config
from pierce.addr import HostPort, parse_host_port
from pierce.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.toml"))


def test_example_map_config_parses() -> None:
    cfg = config.load(ROOT / "examples" / "map.toml", config.MapConfig)
    assert [r.protocol for r in cfg.rules] == [
        config.Transport.TCP,
        config.Transport.UDP,
        config.Transport.TCP,
    ]
    ssh, dns, web = cfg.rules
    assert ssh.name == "nas-ssh"
    assert ssh.target == HostPort("192.168.0.10", 22)
    assert [str(n) for n in ssh.allow] == ["10.0.0.0/8", "192.0.2.7/32"]
    assert ssh.connect_timeout == 5
    assert dns.idle_timeout == 30
    assert dns.name == "udp:0.0.0.0:5353"
    assert str(web.listen) == "[::]:8080"
    assert web.target.host == "web.internal"
    assert web.idle_timeout == config.DEFAULT_UDP_IDLE_TIMEOUT


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config_names_file_key_and_expectation(path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(ConfigError) as info:
        config.load(path, config.MapConfig)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_all_problems_are_reported_in_one_pass(tmp_path: Path) -> None:
    f = tmp_path / "map.toml"
    f.write_text(
        '[[rules]]\nlisten = "0.0.0.0:1"\ntarget = "a"\n'
        '[[rules]]\nlisten = "0.0.0.0:2"\ntarget = "b:2"\nprotocol = "icmp"\n'
        '[[rules]]\nlisten = "0.0.0.0:3"\ntarget = "c:3"\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load(f, config.MapConfig)
    assert info.value.problems == [
        f'{f}: rules[0].target: expected "host:port", got "a"',
        f'{f}: rules[1].protocol: expected one of "tcp", "udp", got "icmp"',
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml", config.MapConfig)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:10022", "0.0.0.0", 10022),
        (":80", "0.0.0.0", 80),
        ("[::1]:8080", "::1", 8080),
        ("[fe80::1%eth0]:22", "fe80::1%eth0", 22),
        ("nas.example.com:443", "nas.example.com", 443),
        ("localhost:1", "localhost", 1),
    ],
)
def test_host_port_accepts(text: str, host: str, port: int) -> None:
    hp = parse_host_port(text)
    assert (hp.host, hp.port) == (host, port)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.0.0.5", 'expected "host:port"'),
        ("::1:80", "write IPv6 as"),
        ("[::1]80", "[ipv6]:port"),
        ("[nothost]:80", "IPv6 address inside"),
        ("host:http", "port number"),
        ("host:0", "from 1 to 65535"),
        ("bad host:80", "host name or IP"),
    ],
)
def test_host_port_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_host_port(text)


def test_str_round_trips_ipv6() -> None:
    assert str(parse_host_port("[::1]:80")) == "[::1]:80"
    assert parse_host_port(str(HostPort("::1", 80))) == HostPort("::1", 80)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pierce", *args], capture_output=True, text=True, timeout=60)


def test_verify_ok_and_exit_codes() -> None:
    ok = run_cli("verify", "-c", str(ROOT / "examples" / "map.toml"))
    assert ok.returncode == 0, ok.stderr
    assert "OK (map config, 3 rules)" in ok.stdout

    bad = run_cli("verify", "-c", str(INVALID[0]))
    assert bad.returncode == 2
    assert str(INVALID[0]) in bad.stderr


def test_map_cli_rejects_bad_target_with_exit_2() -> None:
    res = run_cli("map", "0.0.0.0:10022", "10.0.0.5")
    assert res.returncode == 2
    assert 'rules[0].target: expected "host:port", got "10.0.0.5"' in res.stderr
