"""`pierce import-frp`: frp configs in each format, the keys they map to, and a warning for every option
that is not carried over (nothing dropped silently). The configs in tests/unit/frp/ are our own."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pierce import config
from pierce.cli import main
from pierce.frpimport import convert_file, emit, is_frp_file
from pierce.frpimport.formats import Format, Role
from pierce.frpimport.source import leaves

HERE = Path(__file__).parent / "frp"
TOKEN = "frp-test-token-Q8vN3kL7pX2mR9sT"


def _as(tmp_path: Path, source: str, fmt: str) -> Path:
    """The TOML file ``source`` written in another of frp's formats (same options)."""
    doc = tomllib.loads((HERE / source).read_text())
    path = tmp_path / f"{Path(source).stem}.{fmt}"
    path.write_text(yaml.safe_dump(doc, sort_keys=False) if fmt == "yaml" else json.dumps(doc, indent=2))
    return path


def _warned(warnings: list[str]) -> list[str]:
    """The warnings without the file name (``option: why``)."""
    return [w.split(": ", 1)[1] for w in warnings]


def test_frpc_toml_maps_every_proxy_kind_and_visitor() -> None:
    result = convert_file(HERE / "frpc.toml")
    assert (result.role, result.format, result.problems) == (Role.CLIENT, Format.TOML, [])
    doc = result.doc
    assert {k: doc[k] for k in ("server_addr", "server_port", "token", "pool_count", "trusted_ca_file")} == {
        "server_addr": "tunnel.example.net",
        "server_port": 7001,
        "token": TOKEN,
        "pool_count": 5,
        "trusted_ca_file": "/etc/frp/ca.crt",
    }
    assert (doc["admin_addr"], doc["admin_port"], doc["admin_user"], doc["admin_password"]) == (
        "127.0.0.1",
        7400,
        "admin",
        "admin-pass",
    )
    assert (doc["heartbeat_interval"], doc["heartbeat_timeout"]) == (30, 90)
    proxies = {p["name"]: p for p in doc["proxies"]}
    assert proxies["ssh"] == {
        "name": "ssh",
        "type": "tcp",
        "local_ip": "127.0.0.1",
        "local_port": 22,
        "bandwidth_limit": "1MB",
        "remote_port": 6022,
        "proxy_protocol_version": "v2",
        "group": "ssh-group",
        "group_key": "group-secret",
        "health_check": {"type": "tcp", "interval_s": 10},
    }
    assert proxies["dns"] == {
        "name": "dns",
        "type": "udp",
        "local_ip": "192.168.1.53",
        "local_port": 53,
        "remote_port": 6053,
    }
    assert proxies["web"] == {
        "name": "web",
        "type": "http",
        "local_port": 8080,
        "custom_domains": ["web.example.net"],
        "subdomain": "web",
        "locations": ["/", "/api"],
        "host_header_rewrite": "web.internal",
        "http_user": "alice",
        "http_password": "alice-pass",
        "request_headers": {"set": {"x-from-where": "frp"}},
        "response_headers": {"set": {"x-served-by": "frp"}},
        "health_check": {"type": "http", "path": "/status"},
    }
    assert proxies["cam"]["proxy_protocol_version"] == "v1"
    assert proxies["vault"] == {
        "name": "vault",
        "type": "stcp",
        "local_port": 8200,
        "secret_key": "vault-secret",
        "allow_users": ["*"],
    }
    assert "proxy_protocol_version" not in proxies["games"]
    assert proxies["p2p-rdp"]["type"] == "xtcp"
    assert proxies["lab"] == {
        "name": "lab",
        "type": "tcpmux",
        "local_port": 22,
        "custom_domains": ["lab.example.net"],
        "http_user": "bob",
        "http_password": "bob-pass",
        "multiplexer": "httpconnect",
    }
    # tls2raw: pierce's https2http plugin ends TLS on the client and passes the bytes on
    assert {k: proxies["tls-raw"][k] for k in ("plugin", "local_ip", "local_port", "plugin_crt_path")} == {
        "plugin": "https2http",
        "local_ip": "127.0.0.1",
        "local_port": 9000,
        "plugin_crt_path": "/etc/frp/raw.crt",
    }
    # http2http: a plain http proxy to the plugin's address
    assert proxies["old-web"]["local_port"] == 8081
    assert proxies["old-web"]["host_header_rewrite"] == "old.internal"
    assert proxies["old-web"]["request_headers"] == {"set": {"x-plugin": "yes"}}
    assert set(proxies) == {
        "ssh",
        "dns",
        "web",
        "cam",
        "vault",
        "games",
        "p2p-rdp",
        "lab",
        "tls-raw",
        "old-web",
    }
    visitors = {v["name"]: v for v in doc["visitors"]}
    assert visitors["to-vault"] == {
        "name": "to-vault",
        "type": "stcp",
        "server_name": "vault",
        "secret_key": "vault-secret",
        "bind_addr": "127.0.0.1",
        "bind_port": 18200,
    }
    assert visitors["to-games"]["type"] == "sudp"
    assert (visitors["to-rdp"]["fallback"], visitors["to-rdp"]["fallback_timeout_ms"]) == (True, 1500)
    assert set(visitors) == {"to-vault", "to-games", "to-rdp"}


FRPC_TOML_WARNINGS = [
    "user: not converted: frp prefixes proxy names with it, pierce's user is a login identity of the "
    "server's [[users]] (set user = ... once the server has that user)",
    "loginFailExit: not converted: a pierce client exits (status 1) when its first login is refused for "
    "the token, and retries network failures for ever",
    "dnsServer: no pierce equivalent: pierce resolves names with the system resolver",
    "natHoleStunServer: not needed: pierce clients use the STUN responder of the pierce server",
    "udpPacketSize: no pierce equivalent: pierce carries UDP datagrams of any size up to 64 KiB",
    "log.to: not a pierce config key: use --log-level and --json-logs (logs go to stderr)",
    "log.level: not a pierce config key: use --log-level and --json-logs (logs go to stderr)",
    "log.maxDays: not a pierce config key: use --log-level and --json-logs (logs go to stderr)",
    "transport.proxyURL: not yet supported by pierce: the client connects to the server directly",
    "transport.tls.certFile: no pierce equivalent: clients log in with their token (SRP), not with a client "
    "certificate",
    "transport.tls.keyFile: no pierce equivalent: clients log in with their token (SRP), not with a client "
    "certificate",
    "transport.tls.serverName: no pierce equivalent: pin the server with server_fingerprint or "
    "trusted_ca_file",
    "webServer.pprofEnable: no pierce equivalent",
    'proxies[0].transport.useCompression (proxy "ssh"): no pierce equivalent: pierce does not compress '
    "tunnel data",
    'proxies[0].metadatas.owner (proxy "ssh"): no pierce equivalent: pierce has no metadata or annotations',
    'proxies[2].routeByHTTPUser (proxy "web"): no pierce equivalent: pierce routes by host and path only',
    'proxies[5].transport.proxyProtocolVersion (proxy "games"): no pierce equivalent: sudp proxies send no '
    "PROXY protocol header",
    'proxies[8] (proxy "socks"): left out: plugin "socks5" on a tcp proxy has no pierce equivalent; not '
    "converted: plugin.password, plugin.type, plugin.username, remotePort",
    'proxies[11] (proxy "off"): left out: "off" has enabled = false; not converted: enabled, localPort, '
    "name, type",
    'proxies[12] (proxy "not-started"): left out: "not-started" is not in start; not converted: localPort, '
    "name, type",
    'visitors[0].serverUser (visitor "to-vault"): no pierce equivalent: pierce visitors name the proxy only '
    "(proxy names are unique on the server)",
    'visitors[0].transport.useCompression (visitor "to-vault"): no pierce equivalent: pierce does not '
    "compress tunnel data",
    'visitors[2].keepTunnelOpen (visitor "to-rdp"): no pierce equivalent: pierce keeps a direct path while '
    "in use",
    'visitors[3] (visitor "to-rdp-relay"): left out: a visitor without a local port (bindPort < 0); '
    "pierce's xtcp visitors fall back through the server on their own (fallback = true); not converted: "
    "bindPort, name, secretKey, serverName, type",
]


def test_frpc_toml_warns_exactly_about_what_it_cannot_map() -> None:
    result = convert_file(HERE / "frpc.toml")
    assert all(w.startswith(f"{HERE / 'frpc.toml'}: ") for w in result.warnings)
    assert _warned(result.warnings) == FRPC_TOML_WARNINGS


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_yaml_and_json_convert_like_toml(tmp_path: Path, fmt: str) -> None:
    """The same options in frp's YAML and JSON formats give the same pierce config and warnings."""
    result = convert_file(_as(tmp_path, "frpc.toml", fmt))
    expected = convert_file(HERE / "frpc.toml")
    assert result.format is Format(fmt)
    assert result.doc == expected.doc
    assert _warned(result.warnings) == FRPC_TOML_WARNINGS
    assert result.problems == []


def test_frpc_legacy_ini_names_the_keys_the_user_wrote() -> None:
    result = convert_file(HERE / "frpc.ini")
    assert (result.role, result.format, result.problems) == (Role.CLIENT, Format.INI, [])
    doc = result.doc
    assert (doc["server_addr"], doc["server_port"], doc["token"], doc["pool_count"]) == (
        "203.0.113.7",
        7000,
        TOKEN,
        2,
    )
    assert doc["admin_password"] == "admin-pass"
    proxies = {p["name"]: p for p in doc["proxies"]}
    assert proxies["ssh"] == {
        "name": "ssh",
        "type": "tcp",
        "local_ip": "127.0.0.1",
        "local_port": 22,
        "remote_port": 6022,
        "group": "ssh",
        "group_key": "gk",
        "health_check": {"type": "tcp", "interval_s": 10},
    }
    assert proxies["web"]["custom_domains"] == ["web.example.net", "www.example.net"]
    assert proxies["web"]["locations"] == ["/", "/api"]
    assert (proxies["web"]["http_user"], proxies["web"]["http_password"]) == ("alice", "alice-pass")
    assert proxies["web"]["request_headers"] == {"set": {"X-From-Where": "frp"}}
    assert proxies["secure-web"]["plugin"] == "https2http"
    assert (proxies["secure-web"]["local_ip"], proxies["secure-web"]["local_port"]) == ("127.0.0.1", 8080)
    assert proxies["vault"]["secret_key"] == "vault-secret"
    assert set(proxies) == {"ssh", "web", "secure-web", "vault"}
    assert doc["visitors"] == [
        {
            "name": "vault-visitor",
            "type": "stcp",
            "server_name": "vault",
            "secret_key": "vault-secret",
            "bind_addr": "127.0.0.1",
            "bind_port": 18200,
        }
    ]
    warned = _warned(result.warnings)
    for expected in [
        '[common] authentication_method: "oidc": no pierce equivalent: pierce logs in with a token per user '
        "(SRP)",
        "[common] oidc_client_secret: no pierce equivalent: pierce logs in with a token per user (SRP), "
        "not OIDC",
        '[common] protocol: "kcp": no pierce equivalent: the control connection is TCP with TLS',
        "[common] meta_site: no pierce equivalent: pierce has no metadata or annotations",
        "[common] bogus_option: not an frp option this converter knows; not converted",
        "[ssh] use_compression: no pierce equivalent: pierce does not compress tunnel data",
        '[files]: left out: plugin "static_file" on a tcp proxy has no pierce equivalent; not converted: '
        "[files] plugin, [files] plugin_http_passwd, [files] plugin_http_user, [files] plugin_local_path, "
        "[files] plugin_strip_prefix, [files] remote_port",
        '[docker]: left out: plugin "unix_domain_socket" on a tcp proxy has no pierce equivalent; not '
        "converted: [docker] plugin, [docker] plugin_unix_path, [docker] remote_port",
        '[proxy]: left out: plugin "http_proxy" on a tcp proxy has no pierce equivalent; not converted: '
        "[proxy] plugin, [proxy] plugin_http_passwd, [proxy] plugin_http_user, [proxy] remote_port",
        '[to-https]: left out: plugin "http2https" on a http proxy has no pierce equivalent; not converted: '
        "[to-https] custom_domains, [to-https] plugin, [to-https] plugin_local_addr",
        '[tls-tls]: left out: plugin "https2https" on a https proxy has no pierce equivalent; not converted: '
        "[tls-tls] custom_domains, [tls-tls] plugin, [tls-tls] plugin_local_addr",
        "[secure-web] plugin_header_X-From-Where: no pierce equivalent for this option of the https2http "
        "plugin",
        "[range:games] local_port: range sections are not converted; write one proxy per port",
    ]:
        assert expected in warned
    assert len(warned) == 21


def test_frps_toml_maps_server_options_and_flags_a_weak_token() -> None:
    result = convert_file(HERE / "frps.toml")
    assert (result.role, result.problems) == (Role.SERVER, [])
    assert result.doc == {
        "bind_addr": "0.0.0.0",
        "bind_port": 7000,
        "proxy_bind_addr": "0.0.0.0",
        "vhost_http_port": 80,
        "vhost_https_port": 443,
        "vhost_http_timeout": 90,
        "tcpmux_httpconnect_port": 1337,
        "tcpmux_passthrough": False,
        "subdomain_host": "example.net",
        "custom_404_file": "/etc/frp/404.html",
        "user_conn_timeout": 15,
        "max_ports_per_client": 10,
        "tls_cert_file": "/etc/frp/server.crt",
        "tls_key_file": "/etc/frp/server.key",
        "token": "1234",
        "allow_weak_token": True,
        "allow_ports": ["2000-3000", "3001"],
        "heartbeat_timeout": 90,
        "web": {"addr": "127.0.0.1", "port": 7500, "user": "admin", "password": "admin"},
        "transport": {"tcp_mux": True},
    }
    warned = _warned(result.warnings)
    assert warned[0].startswith("auth.token: this token is too easy to guess")
    assert warned[0].endswith(
        "allow_weak_token = true added so that it still works: replace the token on "
        "the server and its clients"
    )
    assert warned[1:] == [
        "kcpBindPort: no pierce equivalent: the control port is TCP with TLS",
        "quicBindPort: no pierce equivalent: the control port is TCP with TLS",
        *[
            f"httpPlugins[0].{k}: no pierce equivalent: pierce has no server plugins (HTTP hooks)"
            for k in ("name", "addr", "path", "ops")
        ],
        "transport.maxPoolCount: no pierce equivalent: the server caps each client's pool at 64",
        "transport.tls.trustedCaFile: no pierce equivalent: clients log in with their token (SRP), not with "
        "a client certificate",
    ]
    assert "#   transport.tls.force: pierce always requires TLS on the control port" in result.text
    assert "#   enablePrometheus: pierce serves /metrics on the [web] port" in result.text


def test_frps_legacy_ini() -> None:
    result = convert_file(HERE / "frps.ini")
    assert (result.role, result.format, result.problems) == (Role.SERVER, Format.INI, [])
    assert result.doc == {
        "bind_addr": "0.0.0.0",
        "bind_port": 7000,
        "vhost_http_port": 8080,
        "subdomain_host": "example.net",
        "token": TOKEN,
        "allow_ports": ["2000-3000", "3001", "3003"],
        "heartbeat_timeout": 60,
        "web": {"port": 7500, "user": "admin", "password": "admin"},
    }
    assert "[web] listens on 127.0.0.1 without addr" in result.text
    warned = _warned(result.warnings)
    assert (
        "[common] oidc_issuer: no pierce equivalent: pierce logs in with a token per user (SRP), not OIDC"
        in warned
    )
    assert (
        "[common] bind_udp_port: not needed: pierce punches holes with its own STUN responder (stun_port)"
        in warned
    )
    assert (
        "[plugin.user-manager] ops: no pierce equivalent: pierce has no server plugins (HTTP hooks)" in warned
    )
    assert len(warned) == 10  # the dashboard_* keys are converted to [web]


def _drop_leaf(node: Any, path: tuple[Any, ...]) -> None:
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]


@pytest.mark.parametrize("name", ["frpc.toml", "frps.toml"])
def test_no_option_is_dropped_silently(tmp_path: Path, name: str) -> None:
    """Each leaf of the input either changes the output (mapped, or a note) when removed, or is warned."""
    doc = tomllib.loads((HERE / name).read_text())
    base = convert_file(HERE / name)
    for path, _ in leaves(doc):
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
        if any(f": {where}" in w or f": {where} (" in w for w in base.warnings):
            continue
        reduced = tomllib.loads((HERE / name).read_text())
        _drop_leaf(reduced, path)
        again = convert_file(_json(tmp_path, reduced, name))
        table_dropped = any(path[: len(p)] == p for p in _left_out_tables(base.warnings))
        assert table_dropped or _body(again.text) != _body(base.text), (
            f"{where} is neither mapped nor warned about"
        )


def _body(text: str) -> str:
    """The converted TOML and its notes, without the first two header lines (file name and format)."""
    return text.split("\n", 2)[2]


def _json(tmp_path: Path, doc: dict[str, Any], name: str) -> Path:
    path = tmp_path / f"{Path(name).stem}.json"
    path.write_text(json.dumps(doc))
    return path


def _left_out_tables(warnings: list[str]) -> list[tuple[Any, ...]]:
    """``proxies[8]`` of a "left out" warning as a key path."""
    out = []
    for w in warnings:
        where = w.split(": ")[1].split(" ")[0]
        if "left out" in w and where.endswith("]"):
            key, _, index = where[:-1].partition("[")
            out.append((key, int(index)))
    return out


def test_an_unknown_key_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "frpc.toml"
    path.write_text(f'serverAddr = "h"\nauth.token = "{TOKEN}"\nserverPortt = 7000\n')
    assert convert_file(path).warnings == [
        f"{path}: serverPortt: not an frp option this converter knows; not converted"
    ]


def test_output_loads_with_pierces_loader(tmp_path: Path) -> None:
    for name in ("frpc.toml", "frpc.ini", "frps.toml", "frps.ini"):
        result = convert_file(HERE / name)
        kind = config.ClientConfig if result.role is Role.CLIENT else config.ServerConfig
        out = tmp_path / f"{name}.pierce.toml"
        out.write_text(result.text)
        config.load(out, kind)  # raises ConfigError when it does not load


def test_cli_prints_toml_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-frp", str(HERE / "frps.ini")]) == 0
    out, err = capsys.readouterr()
    assert tomllib.loads(out)["bind_port"] == 7000
    assert f"warning: {HERE / 'frps.ini'}: [common] max_pool_count: no pierce equivalent" in err


@pytest.mark.parametrize(
    ("text", "suffix", "error"),
    [
        ("serverAddr = \n", ".toml", "TOML syntax error"),
        ("a: [b\n", ".yaml", "YAML syntax error"),
        ('{"serverAddr": }', ".json", "JSON syntax error"),
        ("[common]\nserver_port = seven\n", ".ini", '[common] server_port: expected an integer, got "seven"'),
        ("[common]\nserver_addr = a\n[ssh]\nlocal_port = 22\nlocal_port = 23\n", ".ini", "INI syntax error"),
        ('token = "x"\n', ".toml", "cannot tell an frpc config from an frps config"),
        ("- 1\n", ".yaml", "expected a table of frp options"),
    ],
)
def test_invalid_input_exits_1_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, suffix: str, error: str
) -> None:
    path = tmp_path / f"frp{suffix}"
    path.write_text(text)
    assert main(["import-frp", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert error in err


def test_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-frp", str(tmp_path / "nope.toml")]) == 1
    assert "file not found" in capsys.readouterr().err


def test_client_reads_an_frpc_file_directly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pierce.cli import build_parser, client_config_from_args

    assert is_frp_file(HERE / "frpc.ini") and is_frp_file(HERE / "frpc.toml")
    pierce_file = tmp_path / "client.toml"
    pierce_file.write_text(f'server_addr = "h"\ntoken = "{TOKEN}"\n')
    assert not is_frp_file(pierce_file)
    args = build_parser().parse_args(["client", "-c", str(HERE / "frpc.ini")])
    cfg = client_config_from_args(args)
    assert cfg.server_addr == "203.0.113.7"
    assert [p.name for p in cfg.proxies] == ["ssh", "web", "secure-web", "vault"]
    assert "[ssh] use_compression: no pierce equivalent" in capsys.readouterr().err


_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_keys = st.text(min_size=1, max_size=10)
_inline = st.recursive(
    st.one_of(_scalars, st.lists(_scalars, max_size=3)),
    lambda inner: st.dictionaries(_keys, inner, max_size=3),
)


@given(
    st.dictionaries(_keys, st.one_of(_scalars, st.lists(_scalars, max_size=3)), max_size=4),
    st.dictionaries(_keys, st.dictionaries(_keys, _inline, max_size=3), max_size=2),
    st.lists(st.dictionaries(_keys, _inline, min_size=1, max_size=3), min_size=1, max_size=2),
)
def test_emitted_toml_reads_back_the_same(
    top: dict[str, Any], tables: dict[str, Any], items: list[Any]
) -> None:
    doc: dict[str, Any] = {**top}
    for name, table in tables.items():
        doc.setdefault(name, table)
    doc.setdefault("proxies", items)
    assert tomllib.loads(emit.dumps(doc, ["header"])) == doc
