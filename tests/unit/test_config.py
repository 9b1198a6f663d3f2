"""Config loading: every shipped example parses; every file in invalid/ fails with a precise message."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pierce import config
from pierce.addr import HostPort, Network, parse_host_port, parse_network
from pierce.errors import ConfigError, InvalidValue
from pierce.proxies.http import HttpProxyConfig

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


# -- the key path comes from the walk, not from msgspec's message text ---------------------------------

CLIENT = 'server_addr = "h"\ntoken = "t"\n'


def problems_of(text: str, kind: type[msgspec.Struct] = config.ClientConfig) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.convert(tomllib.loads(text), kind, "c.toml")
    return info.value.problems


def test_problems_at_every_depth_are_reported_in_file_order() -> None:
    text = (
        'server_addr = "h"\npool_count = 4.5\n'
        '[[proxies]]\ntype = "http"\nname = "w"\nlocal_port = 80\nsubdomain = "a"\n'
        'request_headers.set = { "X" = 1, "Bad Name" = "v" }\n'
        '[[proxies]]\ntype = "tcp"\nname = "t"\nlocal_port = 0\n'
        "[transport]\nencrypt_data = 1\n"
    )
    assert problems_of(text) == [
        "c.toml: pool_count: expected an integer, got a number",
        "c.toml: proxies[0].request_headers.set.X: expected a string, got an integer",
        "c.toml: proxies[1].local_port: expected a port from 1 to 65535, got 0",
        "c.toml: transport.encrypt_data: expected true or false, got an integer",
    ]


def test_a_files_own_checks_are_listed_where_their_key_is() -> None:
    text = 'server_addr = "h"\ntoken = "t"\nserver_port = 0\n'
    text += '[[proxies]]\ntype = "tcp"\nname = "t"\nlocal_port = 0\n'
    assert problems_of(text) == [
        "c.toml: server_port: expected a port from 1 to 65535, got 0",
        "c.toml: proxies[0].local_port: expected a port from 1 to 65535, got 0",
    ]


def test_post_init_keys_are_placed_under_their_struct() -> None:
    text = CLIENT + '[[proxies]]\ntype = "tcp"\nname = "a"\nlocal_port = 1\n'
    text += (
        '[[proxies]]\ntype = "http"\nname = "w"\nlocal_port = 80\ncustom_domains = ["ok.example", "a b"]\n'
    )
    (problem,) = problems_of(text)
    assert problem.startswith(
        'c.toml: proxies[1].custom_domains[1]: expected a domain name like "nas.example.com"'
    )


def test_invalid_value_carries_its_key_as_data() -> None:
    with pytest.raises(InvalidValue) as info:
        HttpProxyConfig(name="w", local_port=80, subdomain="a", locations=["/", "api"])
    assert info.value.key == ("locations", 1)
    assert info.value.message == 'expected a path starting with "/", got "api"'
    assert str(info.value) == 'locations[1]: expected a path starting with "/", got "api"'


def test_unknown_key_hint_lists_the_fields_of_the_chosen_proxy_type() -> None:
    (problem,) = problems_of(CLIENT + '[[proxies]]\ntype = "tcp"\nname = "a"\nlocal_port = 1\nzzzz = 1\n')
    assert problem == (
        "c.toml: proxies[0].zzzz: unknown key; expected one of: "
        "name, local_ip, local_port, remote_port, proxy_protocol_version, direct, bandwidth_limit, "
        "allow_ips, "
        "deny_ips, group, group_key, health_check, type"
    )
    (problem,) = problems_of(CLIENT + '[[proxies]]\ntyp = "tcp"\nname = "a"\nlocal_port = 1\n')
    assert problem == "c.toml: proxies[0].type: missing required key"


def test_dropped_items_do_not_also_count_as_an_empty_list() -> None:
    assert problems_of('[[rules]]\nlisten = "x"\ntarget = "a:1"\n', config.MapConfig) == [
        'c.toml: rules[0].listen: expected "host:port", got "x"'
    ]
    assert problems_of("rules = []\n", config.MapConfig) == [
        "c.toml: rules: expected at least one [[rules]] table"
    ]


def test_every_item_of_a_plain_list_is_checked() -> None:
    assert problems_of('token = "t"\nallow_ports = ["x", "1-2", 0]\n', config.ServerConfig) == [
        'c.toml: allow_ports[0]: expected a port or range like "6000-7000", got "x"',
        'c.toml: allow_ports[2]: expected ports from 1 to 65535 with the smaller first, got "0"',
    ]


@pytest.mark.parametrize(
    ("name", "kind"), [("map", "MapConfig"), ("server", "ServerConfig"), ("client", "ClientConfig")]
)
def test_the_walk_builds_what_msgspec_convert_builds(name: str, kind: str) -> None:
    def listen_addr(obj: Any) -> config.ListenAddr:
        hp = parse_host_port(obj, allow_port_zero=True)
        return config.ListenAddr(hp.host, hp.port)

    def dec_hook(typ: type, obj: Any) -> Any:
        parsers: dict[type, Any] = {
            config.ListenAddr: listen_addr,
            HostPort: parse_host_port,
            Network: parse_network,
            config.PortRange: config.parse_port_range,
        }
        return parsers[typ](obj)

    struct = getattr(config, kind)
    walked = config.convert(config.load_toml(ROOT / "examples" / f"{name}.toml"), struct, name)
    plain = msgspec.convert(config.load_toml(ROOT / "examples" / f"{name}.toml"), struct, dec_hook=dec_hook)
    encode = msgspec.json.Encoder(enc_hook=lambda obj: f"{type(obj).__name__}:{obj}")
    assert encode.encode(walked) == encode.encode(plain)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("login_timeout_s = 0", "login_timeout_s: expected seconds > 0 and up to 3600, got 0"),
        ("max_pending_logins = 0", "max_pending_logins: expected 1 or more connections, got 0"),
        (
            "max_pending_logins_per_ip = -1",
            "max_pending_logins_per_ip: expected 1 or more connections, got -1",
        ),
    ],
)
def test_pre_login_limits_are_checked(line: str, problem: str) -> None:
    text = f'token = "t"\nallow_weak_token = true\n{line}\n'
    assert problems_of(text, config.ServerConfig) == [f"c.toml: {problem}"]


def test_inspector_keys() -> None:
    assert problems_of(CLIENT + "[inspector]\nrequests = 0\nbody_bytes = 100000\n") == [
        "c.toml: inspector.requests: expected 1 to 1000, got 0",
    ]
    assert problems_of(CLIENT + "[inspector]\nbody_bytes = 100000\n") == [
        "c.toml: inspector.body_bytes: expected 0 to 65536, got 100000",
    ]
    (problem,) = problems_of(
        CLIENT
        + '[[proxies]]\ntype = "https"\nname = "s"\nlocal_port = 443\nsubdomain = "s"\ninspect = true\n'
    )
    assert problem.startswith(
        'c.toml: proxies[0].inspect: expected plugin = "https2http" with inspect = true'
    )
    (problem,) = problems_of(
        CLIENT + '[[proxies]]\ntype = "http"\nname = "w"\nlocal_port = 80\nsubdomain = "w"\ninspect = 1\n'
    )
    assert problem.startswith("c.toml: proxies[0].inspect: expected")


def test_p2p_keys_are_named_once() -> None:
    assert problems_of(CLIENT + "[p2p]\npunch_budget_s = 99\n") == [
        "c.toml: p2p.punch_budget_s: expected 1 to 60 seconds, got 99.0"
    ]
    assert problems_of(CLIENT + "[p2p]\nprediction_rate = 0\n") == [
        "c.toml: p2p.prediction_rate: expected 1 to 2000 per second, got 0.0"
    ]


DDNS = (
    CLIENT + '[ddns]\nserver = "ns1.example.com"\nzone = "example.com"\nname = "home"\n'
    'key_name = "home-key"\nkey_secret = "c2VjcmV0LWJ5dGVzLWZvci10c2lnIQ=="\n'
)


def ddns_of(text: str) -> config.DdnsOptions:
    options = config.convert(tomllib.loads(text), config.ClientConfig, "c.toml").ddns
    assert options is not None
    return options


def test_ddns_defaults_and_spellings() -> None:
    options = ddns_of(DDNS)
    assert (options.algorithm, options.ttl, options.check_interval_s) == ("hmac-sha256", 60, 300.0)
    assert config.ddns_server(options.server) == ("ns1.example.com", 53)
    assert config.ddns_server("[2001:db8::53]:5353") == ("2001:db8::53", 5353)
    assert config.ddns_server("2001:db8::53") == ("2001:db8::53", 53)
    assert config.ddns_server("192.0.2.53:5300") == ("192.0.2.53", 5300)
    absolute = ddns_of(
        DDNS.replace('"home"', '"home.Example.com."').replace('"example.com"', '"Example.COM."')
    )
    assert (absolute.zone, absolute.name) == ("example.com", "home.Example.com.")
    assert ddns_of(DDNS + 'algorithm = "HMAC-MD5.SIG-ALG.REG.INT."\n').algorithm == "hmac-md5"
    assert config.convert(tomllib.loads(CLIENT), config.ClientConfig, "c.toml").ddns is None


def test_ddns_key_secret_is_masked() -> None:
    options = ddns_of(DDNS)
    assert "c2VjcmV0" not in repr(options) and "key_secret=MASKED" in repr(options)
    assert "c2VjcmV0" not in repr(config.convert(tomllib.loads(DDNS), config.ClientConfig, "c.toml"))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            ('\nserver = "ns1.example.com"', '\nserver = "ns1:99999"'),
            'ddns.server: expected a port from 1 to 65535, got 99999 in "ns1:99999"',
        ),
        (
            ('zone = "example.com"', 'zone = "exa mple"'),
            'ddns.zone: expected a DNS zone like "example.com", got "exa mple"',
        ),
        (
            ('name = "home"', 'name = "home.example.org."'),
            'ddns.name: expected a name inside the zone "example.com", got "home.example.org."',
        ),
        (
            ('name = "home"', 'name = "-home"'),
            'ddns.name: expected a name like "home" or "home.example.com.", got "-home"',
        ),
        (
            ('key_secret = "c2VjcmV0LWJ5dGVzLWZvci10c2lnIQ=="', 'key_secret = "not base64!"'),
            "ddns.key_secret: expected base64 (as in the DNS server's key definition)",
        ),
        (
            ('key_secret = "c2VjcmV0LWJ5dGVzLWZvci10c2lnIQ=="', 'key_secret = ""'),
            "ddns.key_secret: expected the TSIG key's secret (base64)",
        ),
        (('key_name = "home-key"', 'key_name = ""'), 'ddns.key_name: expected the TSIG key\'s name, got ""'),
        (
            ('key_name = "home-key"', 'key_name = "home-key"\nalgorithm = "hmac-sha3"'),
            'ddns.algorithm: expected one of "hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", '
            '"hmac-sha1", "hmac-md5", "hmac-sha256-128", "hmac-sha384-192", "hmac-sha512-256", '
            'got "hmac-sha3"',
        ),
        (
            ('key_name = "home-key"', 'key_name = "home-key"\nttl = -1'),
            "ddns.ttl: expected seconds from 0 to 2147483647, got -1",
        ),
        (
            ('key_name = "home-key"', 'key_name = "home-key"\ncheck_interval_s = 0'),
            "ddns.check_interval_s: expected 1 to 86400 seconds, got 0",
        ),
        (
            ('key_name = "home-key"', 'key_name = "home-key"\nstun_port = 0'),
            "ddns.stun_port: expected a port from 1 to 65535, got 0",
        ),
        (
            ('key_name = "home-key"', 'key_name = "home-key"\nsecret = "x"'),
            'ddns.secret: unknown key (did you mean "key_secret"?)',
        ),
    ],
)
def test_ddns_errors_name_the_key(change: tuple[str, str], problem: str) -> None:
    text = DDNS.replace(*change)
    assert text != DDNS
    assert problems_of(text) == [f"c.toml: {problem}"]


def test_ddns_requires_its_keys() -> None:
    assert problems_of(CLIENT + '[ddns]\nserver = "ns1"\n') == [
        "c.toml: ddns.zone: missing required key",
        "c.toml: ddns.name: missing required key",
        "c.toml: ddns.key_name: missing required key",
    ]


def test_direct_and_port_mapping_are_checked_with_their_keys() -> None:
    text = (
        CLIENT
        + '[port_mapping]\nmethod = "nat-pmp"\nupnp_url = "http://192.168.1.1/root.xml"\ngateway = "router"\n'
        + '[[proxies]]\ntype = "udp"\nname = "u"\nlocal_port = 1\ndirect = "on"\n'
    )
    assert problems_of(text) == [
        'c.toml: port_mapping.gateway: expected an IPv4 address, got "router"',
        'c.toml: proxies[0].direct: expected one of "auto", "off", got "on"',
    ]
