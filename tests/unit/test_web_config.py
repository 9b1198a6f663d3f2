"""server.toml / client.toml keys of web proxies: the examples parse, mistakes are named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from pierce import config
from pierce.errors import ConfigError
from pierce.proxies.base import ProxyProtocolVersion
from pierce.proxies.http import HeaderOps, HttpProxyConfig

ROOT = Path(__file__).resolve().parents[2]


def test_examples_parse() -> None:
    server = config.load(ROOT / "examples" / "server.toml", config.ServerConfig)
    assert (server.vhost_http_port, server.vhost_https_port, server.subdomain_host) == (
        80,
        443,
        "example.com",
    )
    assert server.vhost_http_timeout == 60
    assert server.acme is not None and server.acme.directory_url == config.LETS_ENCRYPT_DIRECTORY
    client = config.load(ROOT / "examples" / "client.toml", config.ClientConfig)
    kinds = [type(p).__name__ for p in client.proxies]
    assert kinds == [
        "TcpProxyConfig",
        "HttpProxyConfig",
        "HttpProxyConfig",
        "HttpsProxyConfig",
        "UdpProxyConfig",
        "StcpProxyConfig",
        "TcpMuxProxyConfig",
    ]
    assert [v.server_name for v in client.visitors] == ["office-rdp"]
    nas = client.proxies[1]
    assert isinstance(nas, HttpProxyConfig)
    assert nas.locations == ["/"] and nas.https_auto and nas.request_headers.set == {"X-From": "pierce"}
    api = client.proxies[2]
    assert isinstance(api, HttpProxyConfig)
    assert api.proxy_protocol_version is ProxyProtocolVersion.V2


CLIENT_HEAD = 'server_addr = "h"\ntoken = "t"\n[[proxies]]\nname = "w"\nlocal_port = 80\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('type = "http"\n', "proxies[0].custom_domains: expected custom_domains"),
        (
            'type = "http"\ncustom_domains = ["bad domain"]\n',
            "custom_domains[0]: expected a domain name like",
        ),
        ('type = "http"\nsubdomain = "a.b"\n', 'subdomain: expected one label like "nas", got "a.b"'),
        (
            'type = "http"\nsubdomain = "a"\nlocations = ["api"]\n',
            'locations[0]: expected a path starting with "/"',
        ),
        (
            'type = "http"\nsubdomain = "a"\nhttp_user = "me"\n',
            "expected http_user and http_password together",
        ),
        (
            'type = "http"\ncustom_domains = ["*.dev.example.com"]\nhttps_auto = true\n',
            "https_auto: wildcard domains cannot get certificates",
        ),
        (
            'type = "http"\nsubdomain = "a"\nproxy_protocol_version = "v3"\n',
            'expected one of "v1", "v2", got "v3"',
        ),
        (
            'type = "http"\nsubdomain = "a"\nrequest_headers.set = { "Bad Name" = "x" }\n',
            "set: expected header names",
        ),
        (
            'type = "http"\nsubdomain = "a"\nrequest_headers.set = { "X-A" = "v\\r\\nX-Evil: 1" }\n',
            "proxies[0].request_headers.set.X-A: expected a header value without control characters",
        ),
        (
            'type = "http"\nsubdomain = "a"\nresponse_headers.set = { "X-A" = "v\\u0007" }\n',
            "proxies[0].response_headers.set.X-A: expected a header value without control characters",
        ),
        (
            'type = "http"\nsubdomain = "a"\nresponse_headers.set = { "X-A" = "v\\u0000" }\n',
            "proxies[0].response_headers.set.X-A: expected a header value without control characters",
        ),
        (
            'type = "http"\nsubdomain = "a"\nhost_header_rewrite = "nas\\r\\nX-Evil: 1"\n',
            'proxies[0].host_header_rewrite: expected a host such as "nas.internal"',
        ),
        (
            'type = "http"\nsubdomain = "a"\nhost_header_rewrite = "nas internal"\n',
            "proxies[0].host_header_rewrite: expected a host",
        ),
        (
            'type = "https"\nsubdomain = "a"\nplugin = "https2http"\n',
            "expected plugin_crt_path and plugin_key_path",
        ),
        ('type = "https"\nsubdomain = "a"\nplugin = "http2https"\n', 'expected one of "https2http"'),
        (
            'type = "http"\nsubdomain = "a"\nlocation = ["/"]\n',
            'location: unknown key (did you mean "locations"?)',
        ),
        ('type = "htpp"\nsubdomain = "a"\n', "proxies[0].type: expected one of"),
    ],
)
def test_web_proxy_mistakes_are_named(tmp_path: Path, body: str, expected: str) -> None:
    f = tmp_path / "client.toml"
    f.write_text(CLIENT_HEAD + body)
    with pytest.raises(ConfigError) as info:
        config.load(f, config.ClientConfig)
    assert str(info.value).startswith(f"{f}: "), str(info.value)
    assert expected in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("vhost_http_port = 7000\n", "vhost_http_port: expected a port other than bind_port (7000)"),
        ("vhost_http_port = 80\nvhost_https_port = 80\n", "vhost_https_port: expected a port other than"),
        ("vhost_https_port = 70000\n", "vhost_https_port: expected 0 (off) or a port up to 65535"),
        ('subdomain_host = "exa mple.com"\n', "subdomain_host: expected a domain name"),
        ("vhost_http_timeout = 0\n", "vhost_http_timeout: expected a number of seconds > 0"),
        ("vhost_header_timeout = 0\n", "vhost_header_timeout: expected a number of seconds > 0"),
        ("vhost_max_conns_per_ip = -1\n", "vhost_max_conns_per_ip: expected 0 (no limit) or more, got -1"),
        ("vhost_max_pending_conns = -5\n", "vhost_max_pending_conns: expected 0 (no limit) or more, got -5"),
        (
            '[acme]\nemail = "nobody"\n',
            'acme.email: expected a contact address like "admin@example.com", got "nobody"',
        ),
        (
            '[acme]\nemail = "a@b.c"\ndirectory = "x"\n',
            'acme.directory: unknown key (did you mean "directory_url"?)',
        ),
    ],
)
def test_server_web_mistakes_are_named(tmp_path: Path, body: str, expected: str) -> None:
    f = tmp_path / "server.toml"
    f.write_text('token = "Kq7vB2mN9pL4sR8tW3zY6c"\n' + body)
    with pytest.raises(ConfigError) as info:
        config.load(f, config.ServerConfig)
    assert expected in str(info.value), str(info.value)


def test_config_head_values_pass_and_the_server_checks_a_peers_again() -> None:
    """What a client's config may set passes; a peer that sends a value with CR/LF anyway (a client that
    skips the checks) is refused by the server, naming the key, before anything is routed."""
    from pierce.protocol import Refused
    from pierce.proxies.http import HttpSpec
    from pierce.server.proxies.http import HttpProxyServer

    ok = HttpProxyConfig(
        name="w",
        local_port=80,
        subdomain="a",
        host_header_rewrite="[::1]:8080",
        request_headers=HeaderOps(set={"X-Tab": "a\tb", "X-Utf8": "caf\u00e9"}),
    )
    assert ok.host_header_rewrite == "[::1]:8080"
    for spec, key in (
        (HttpSpec(subdomain="a", host_header_rewrite="a\r\nX-Evil: 1"), "host_header_rewrite"),
        (HttpSpec(subdomain="a", request_headers={"X-A": "v\nX-Evil: 1"}), "request_headers.X-A"),
        (HttpSpec(subdomain="a", response_headers={"X-A": "v\x00"}), "response_headers.X-A"),
        (HttpSpec(subdomain="a", response_headers={"X_Real_IP": "v"}), "response_headers"),
    ):
        with pytest.raises(Refused) as info:
            HttpProxyServer.create("w", spec, site=None)  # type: ignore[arg-type]  # refused before it is used
        assert info.value.reason.startswith(f"proxy 'w': {key}: expected"), info.value.reason
