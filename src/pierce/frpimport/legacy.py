"""frp's legacy INI format rewritten into the shape of its current format (camelCase keys, nested tables).

`mapping` then reads one shape only. Each value keeps its original name (``[ssh] local_port``) in
``origin``, so that warnings name the key the user wrote. A key this table does not know is kept under its
own name, where `mapping` reports it as an unknown option.
"""

from __future__ import annotations

import configparser
from collections.abc import Callable
from typing import Any

from pierce.errors import ConfigError, KeyPath, format_key_path

Conv = Callable[[str], Any]


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f'expected an integer, got "{text}"') from None


def _bool(text: str) -> bool:
    # frp reads these with Go's strconv.ParseBool
    value = text.strip().lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise ValueError(f'expected true or false, got "{text}"')


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _str(text: str) -> str:
    return text.strip()


#: Keys of ``[common]`` (frpc's and frps's) -> their place in the current format.
COMMON: dict[str, tuple[KeyPath, Conv]] = {
    "server_addr": (("serverAddr",), _str),
    "server_port": (("serverPort",), _int),
    "user": (("user",), _str),
    "token": (("auth", "token"), _str),
    "authentication_method": (("auth", "method"), _str),
    "authenticate_heartbeats": (("auth", "additionalScopes", "HeartBeats"), _bool),
    "authenticate_new_work_conns": (("auth", "additionalScopes", "NewWorkConns"), _bool),
    "oidc_client_id": (("auth", "oidc", "clientID"), _str),
    "oidc_client_secret": (("auth", "oidc", "clientSecret"), _str),
    "oidc_audience": (("auth", "oidc", "audience"), _str),
    "oidc_scope": (("auth", "oidc", "scope"), _str),
    "oidc_token_endpoint_url": (("auth", "oidc", "tokenEndpointURL"), _str),
    "oidc_issuer": (("auth", "oidc", "issuer"), _str),
    "oidc_skip_expiry_check": (("auth", "oidc", "skipExpiryCheck"), _bool),
    "oidc_skip_issuer_check": (("auth", "oidc", "skipIssuerCheck"), _bool),
    "http_proxy": (("transport", "proxyURL"), _str),
    "log_file": (("log", "to"), _str),
    "log_level": (("log", "level"), _str),
    "log_max_days": (("log", "maxDays"), _int),
    "disable_log_color": (("log", "disablePrintColor"), _bool),
    "pool_count": (("transport", "poolCount"), _int),
    "dns_server": (("dnsServer",), _str),
    "login_fail_exit": (("loginFailExit",), _bool),
    "protocol": (("transport", "protocol"), _str),
    "tls_enable": (("transport", "tls", "enable"), _bool),
    "tls_only": (("transport", "tls", "force"), _bool),
    "tls_cert_file": (("transport", "tls", "certFile"), _str),
    "tls_key_file": (("transport", "tls", "keyFile"), _str),
    "tls_trusted_ca_file": (("transport", "tls", "trustedCaFile"), _str),
    "tls_server_name": (("transport", "tls", "serverName"), _str),
    "disable_custom_tls_first_byte": (("transport", "tls", "disableCustomTLSFirstByte"), _bool),
    "heartbeat_interval": (("transport", "heartbeatInterval"), _int),
    "heartbeat_timeout": (("transport", "heartbeatTimeout"), _int),
    "tcp_mux": (("transport", "tcpMux"), _bool),
    "tcp_mux_keepalive_interval": (("transport", "tcpMuxKeepaliveInterval"), _int),
    "tcp_keepalive": (("transport", "tcpKeepalive"), _int),
    "dial_server_timeout": (("transport", "dialServerTimeout"), _int),
    "dial_server_keepalive": (("transport", "dialServerKeepalive"), _int),
    "connect_server_local_ip": (("transport", "connectServerLocalIP"), _str),
    "quic_keepalive_period": (("transport", "quic", "keepalivePeriod"), _int),
    "quic_max_idle_timeout": (("transport", "quic", "maxIdleTimeout"), _int),
    "quic_max_incoming_streams": (("transport", "quic", "maxIncomingStreams"), _int),
    "admin_addr": (("webServer", "addr"), _str),
    "admin_port": (("webServer", "port"), _int),
    "admin_user": (("webServer", "user"), _str),
    "admin_pwd": (("webServer", "password"), _str),
    "assets_dir": (("webServer", "assetsDir"), _str),
    "start": (("start",), _list),
    "includes": (("includes",), _list),
    "udp_packet_size": (("udpPacketSize",), _int),
    "nat_hole_stun_server": (("natHoleStunServer",), _str),
    # frps
    "bind_addr": (("bindAddr",), _str),
    "bind_port": (("bindPort",), _int),
    "bind_udp_port": (("bindUdpPort",), _int),
    "kcp_bind_port": (("kcpBindPort",), _int),
    "quic_bind_port": (("quicBindPort",), _int),
    "proxy_bind_addr": (("proxyBindAddr",), _str),
    "vhost_http_port": (("vhostHTTPPort",), _int),
    "vhost_https_port": (("vhostHTTPSPort",), _int),
    "vhost_http_timeout": (("vhostHTTPTimeout",), _int),
    "tcpmux_httpconnect_port": (("tcpmuxHTTPConnectPort",), _int),
    "tcpmux_passthrough": (("tcpmuxPassthrough",), _bool),
    "dashboard_addr": (("webServer", "addr"), _str),
    "dashboard_port": (("webServer", "port"), _int),
    "dashboard_user": (("webServer", "user"), _str),
    "dashboard_pwd": (("webServer", "password"), _str),
    "dashboard_tls_mode": (("webServer", "tls", "mode"), _bool),
    "dashboard_tls_cert_file": (("webServer", "tls", "certFile"), _str),
    "dashboard_tls_key_file": (("webServer", "tls", "keyFile"), _str),
    "enable_prometheus": (("enablePrometheus",), _bool),
    "detailed_errors_to_client": (("detailedErrorsToClient",), _bool),
    "user_conn_timeout": (("userConnTimeout",), _int),
    "max_pool_count": (("transport", "maxPoolCount"), _int),
    "max_ports_per_client": (("maxPortsPerClient",), _int),
    "subdomain_host": (("subDomainHost",), _str),
    "custom_404_page": (("custom404Page",), _str),
    "nat_hole_analysis_data_reserve_hours": (("natholeAnalysisDataReserveHours",), _int),
}

#: Keys of a proxy or visitor section -> their place in the current format.
SECTION: dict[str, tuple[KeyPath, Conv]] = {
    "type": (("type",), _str),
    "local_ip": (("localIP",), _str),
    "local_port": (("localPort",), _int),
    "remote_port": (("remotePort",), _int),
    "use_encryption": (("transport", "useEncryption"), _bool),
    "use_compression": (("transport", "useCompression"), _bool),
    "bandwidth_limit": (("transport", "bandwidthLimit"), _str),
    "bandwidth_limit_mode": (("transport", "bandwidthLimitMode"), _str),
    "proxy_protocol_version": (("transport", "proxyProtocolVersion"), _str),
    "group": (("loadBalancer", "group"), _str),
    "group_key": (("loadBalancer", "groupKey"), _str),
    "health_check_type": (("healthCheck", "type"), _str),
    "health_check_timeout_s": (("healthCheck", "timeoutSeconds"), _int),
    "health_check_max_failed": (("healthCheck", "maxFailed"), _int),
    "health_check_interval_s": (("healthCheck", "intervalSeconds"), _int),
    "health_check_url": (("healthCheck", "path"), _str),
    "custom_domains": (("customDomains",), _list),
    "subdomain": (("subdomain",), _str),
    "locations": (("locations",), _list),
    "http_user": (("httpUser",), _str),
    "http_pwd": (("httpPassword",), _str),
    "host_header_rewrite": (("hostHeaderRewrite",), _str),
    "route_by_http_user": (("routeByHTTPUser",), _str),
    "multiplexer": (("multiplexer",), _str),
    "sk": (("secretKey",), _str),
    "allow_users": (("allowUsers",), _list),
    "server_name": (("serverName",), _str),
    "server_user": (("serverUser",), _str),
    "bind_addr": (("bindAddr",), _str),
    "bind_port": (("bindPort",), _int),
    "protocol": (("protocol",), _str),
    "keep_tunnel_open": (("keepTunnelOpen",), _bool),
    "max_retries_an_hour": (("maxRetriesAnHour",), _int),
    "min_retry_interval": (("minRetryInterval",), _int),
    "fallback_to": (("fallbackTo",), _str),
    "fallback_timeout_ms": (("fallbackTimeoutMs",), _int),
    "plugin": (("plugin", "type"), _str),
    "plugin_unix_path": (("plugin", "unixPath"), _str),
    "plugin_http_user": (("plugin", "httpUser"), _str),
    "plugin_http_passwd": (("plugin", "httpPassword"), _str),
    "plugin_user": (("plugin", "username"), _str),
    "plugin_passwd": (("plugin", "password"), _str),
    "plugin_local_path": (("plugin", "localPath"), _str),
    "plugin_strip_prefix": (("plugin", "stripPrefix"), _str),
    "plugin_local_addr": (("plugin", "localAddr"), _str),
    "plugin_crt_path": (("plugin", "crtPath"), _str),
    "plugin_key_path": (("plugin", "keyPath"), _str),
    "plugin_host_header_rewrite": (("plugin", "hostHeaderRewrite"), _str),
    "plugin_enable_http2": (("plugin", "enableHTTP2"), _bool),
}

#: Key prefixes that carry a name after them (``header_X-From-Where``).
PREFIXED: dict[str, KeyPath] = {
    "plugin_header_": ("plugin", "requestHeaders", "set"),
    "header_": ("requestHeaders", "set"),
    "meta_": ("metadatas",),
}


class Legacy:
    """A legacy INI file in the current shape: ``doc``, each leaf's original name in ``origin``, and the
    parts that have no place in the current shape in ``unplaced`` (where, why)."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}
        self.origin: dict[KeyPath, str] = {}
        self.unplaced: list[tuple[str, str]] = []

    def put(self, path: KeyPath, value: Any, where: str) -> None:
        node: Any = self.doc
        for depth, part in enumerate(path[:-1]):
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
            if not isinstance(node, dict | list):
                # Another key of the file set a value where this one needs a table (``transport = x``
                # and then ``tcp_mux``): the first one stays, this one is reported.
                self._clash(path[: depth + 1], where)
                return
        if isinstance(node, dict) and isinstance(node.get(path[-1]), dict):
            self._clash(path, where)  # a table that other keys filled already
            return
        node[path[-1]] = value
        self.origin[path] = where

    def _clash(self, path: KeyPath, where: str) -> None:
        taken = sorted({origin for leaf, origin in self.origin.items() if leaf[: len(path)] == path})
        self.unplaced.append(
            (where, f"not converted: {', '.join(taken) or 'another key'} already set {format_key_path(path)}")
        )


def _place(
    key: str, table: dict[str, tuple[KeyPath, Conv]], extra_prefixes: bool
) -> tuple[KeyPath, Conv] | None:
    if key in table:
        return table[key]
    if extra_prefixes:
        for prefix, base in PREFIXED.items():
            if key.startswith(prefix) and len(key) > len(prefix):
                return (*base, key[len(prefix) :]), _str
    elif key.startswith("meta_") and len(key) > len("meta_"):
        return ("metadatas", key[len("meta_") :]), _str
    return None


def _section(legacy: Legacy, base: KeyPath, name: str, items: list[tuple[str, str]], table: bool) -> None:
    """One section's keys into ``legacy.doc`` under ``base``; ValueError texts become ConfigErrors."""
    for key, raw in items:
        where = f"[{name}] {key}"
        placed = _place(key, COMMON if not table else SECTION, extra_prefixes=table)
        path, conv = placed if placed is not None else ((key,), _str)
        try:
            value = conv(raw)
        except ValueError as exc:
            raise ConfigError([f"{where}: {exc}"]) from None
        legacy.put((*base, *path), value, where)


def _allow_ports(text: str) -> list[dict[str, int]]:
    """``2000-3000,3001`` -> the current format's ``[{start, end}, {single}]``."""
    out: list[dict[str, int]] = []
    for part in _list(text):
        first, _, last = part.partition("-")
        out.append({"start": _int(first), "end": _int(last)} if last else {"single": _int(first)})
    return out


def from_ini(ini: configparser.RawConfigParser, source: str) -> Legacy:
    legacy = Legacy()
    if ini.has_section("common"):
        items = [(k, v) for k, v in ini.items("common") if k != "allow_ports"]
        _section(legacy, (), "common", items, table=False)
        if ini.has_option("common", "allow_ports"):
            try:
                ports = _allow_ports(ini.get("common", "allow_ports"))
            except ValueError as exc:
                raise ConfigError([f"{source}: [common] allow_ports: {exc}"]) from None
            legacy.doc["allowPorts"] = [{} for _ in ports]
            for i, port in enumerate(ports):
                for k, v in port.items():
                    legacy.put(("allowPorts", i, k), v, "[common] allow_ports")
    proxies: list[dict[str, Any]] = []
    visitors: list[dict[str, Any]] = []
    plugins: list[dict[str, Any]] = []
    legacy.doc["proxies"], legacy.doc["visitors"], legacy.doc["httpPlugins"] = proxies, visitors, plugins
    for name in ini.sections():
        if name == "common":
            continue
        items = ini.items(name)
        if name.startswith("plugin."):  # frps server plugins (HTTP hooks)
            base: KeyPath = ("httpPlugins", len(plugins))
            plugins.append({})
            legacy.put((*base, "name"), name[len("plugin.") :], f"[{name}]")
            _section(legacy, base, name, items, table=False)
            continue
        if name.startswith("range:"):
            for key, _ in items:
                legacy.unplaced.append(
                    (f"[{name}] {key}", "range sections are not converted; write one proxy per port")
                )
            continue
        role = ini.get(name, "role", fallback="server").strip()
        into = visitors if role == "visitor" else proxies
        base = ("visitors" if into is visitors else "proxies", len(into))
        into.append({})
        legacy.put((*base, "name"), name, f"[{name}]")
        _section(legacy, base, name, [(k, v) for k, v in items if k != "role"], table=True)
        if role not in ("server", "visitor"):
            legacy.unplaced.append((f"[{name}] role", f'expected "server" or "visitor", got "{role}"'))
    for key in ("proxies", "visitors", "httpPlugins"):
        if not legacy.doc[key]:
            del legacy.doc[key]
    return legacy
