"""frp options (in the shape of frp's current format) -> pierce's client.toml / server.toml keys.

Each function reads the options it maps with `Source.get`, reports the ones pierce cannot carry with
`Source.warn` (saying why), and records behaviour pierce always has with `Source.note`.
"""

from __future__ import annotations

from typing import Any

from pierce.errors import InvalidValue, KeyPath
from pierce.frpimport.source import Source
from pierce.token_strength import check_token_strength

NO_COMPRESSION = "no pierce equivalent: pierce does not compress tunnel data"
NO_GROUPS = "no pierce equivalent: pierce groups tcp, http, https and tcpmux proxies only"
NO_HEALTH = "no pierce equivalent: pierce checks the health of tcp, http, https and tcpmux proxies only"
NO_HEALTH_HEADERS = "no pierce equivalent: pierce's http health check sends no extra headers"
NO_META = "no pierce equivalent: pierce has no metadata or annotations"
NO_LOG = "not a pierce config key: use --log-level and --json-logs (logs go to stderr)"
ENCRYPTED = "pierce always encrypts tunnel data with TLS (transport.encrypt_data)"

#: Where frp and pierce use the same meaning under different names, per table.
_CLIENT_KEYS: dict[KeyPath, str] = {
    ("serverPort",): "server_port",
    ("auth", "token"): "token",
    ("transport", "poolCount"): "pool_count",
    ("transport", "tls", "trustedCaFile"): "trusted_ca_file",
    ("webServer", "addr"): "admin_addr",
    ("webServer", "port"): "admin_port",
    ("webServer", "user"): "admin_user",
    ("webServer", "password"): "admin_password",
}
_SERVER_KEYS: dict[KeyPath, str] = {
    ("bindAddr",): "bind_addr",
    ("bindPort",): "bind_port",
    ("proxyBindAddr",): "proxy_bind_addr",
    ("vhostHTTPPort",): "vhost_http_port",
    ("vhostHTTPSPort",): "vhost_https_port",
    ("vhostHTTPTimeout",): "vhost_http_timeout",
    ("tcpmuxHTTPConnectPort",): "tcpmux_httpconnect_port",
    ("tcpmuxPassthrough",): "tcpmux_passthrough",
    ("subDomainHost",): "subdomain_host",
    ("custom404Page",): "custom_404_file",
    ("userConnTimeout",): "user_conn_timeout",
    ("maxPortsPerClient",): "max_ports_per_client",
    ("transport", "tls", "certFile"): "tls_cert_file",
    ("transport", "tls", "keyFile"): "tls_key_file",
}
#: Options with no pierce equivalent, and why, per table.
_CLIENT_UNMAPPED: dict[KeyPath, str] = {
    ("user",): "not converted: frp prefixes proxy names with it, pierce's user is a login identity of the "
    "server's [[users]] (set user = ... once the server has that user)",
    ("auth", "tokenSource"): "not converted: pierce reads the token from the file, --token-file or "
    "PIERCE_TOKEN",
    ("auth", "oidc"): "no pierce equivalent: pierce logs in with a token per user (SRP), not OIDC",
    ("loginFailExit",): "not converted: a pierce client exits (status 1) when its first login is refused "
    "for the token, and retries network failures for ever",
    ("dnsServer",): "no pierce equivalent: pierce resolves names with the system resolver",
    ("natHoleStunServer",): "not needed: pierce clients use the STUN responder of the pierce server",
    ("udpPacketSize",): "no pierce equivalent: pierce carries UDP datagrams of any size up to 64 KiB",
    ("includes",): "not followed: convert the included files too and add their proxies",
    ("metadatas",): NO_META,
    ("featureGates",): "no pierce equivalent",
    ("virtualNet",): "no pierce equivalent: pierce has no virtual network (TUN)",
    ("log",): NO_LOG,
    ("transport", "tcpMuxKeepaliveInterval"): "no pierce equivalent: see heartbeat_interval",
    ("transport", "dialServerTimeout"): "no pierce equivalent: the client's connect timeout is fixed",
    ("transport", "dialServerKeepalive"): "no pierce equivalent",
    ("transport", "connectServerLocalIP"): "no pierce equivalent: the system picks the source address",
    ("transport", "proxyURL"): "not yet supported by pierce: the client connects to the server directly",
    ("transport", "quic"): "no pierce equivalent: the control connection is TCP with TLS",
    ("transport", "tls", "certFile"): "no pierce equivalent: clients log in with their token (SRP), "
    "not with a client certificate",
    ("transport", "tls", "keyFile"): "no pierce equivalent: clients log in with their token (SRP), "
    "not with a client certificate",
    ("transport", "tls", "serverName"): "no pierce equivalent: pin the server with server_fingerprint or "
    "trusted_ca_file",
    ("transport", "tls", "disableCustomTLSFirstByte"): "no pierce equivalent: pierce speaks its own protocol",
    ("webServer", "assetsDir"): "no pierce equivalent: the admin API's pages are served from the package",
    ("webServer", "pprofEnable"): "no pierce equivalent",
    ("webServer", "tls"): "no pierce equivalent: the admin API listens on loopback without TLS",
}
_SERVER_UNMAPPED: dict[KeyPath, str] = {
    ("auth", "oidc"): "no pierce equivalent: pierce logs in with a token per user (SRP), not OIDC",
    ("auth", "tokenSource"): "not converted: pierce reads the token from the file, --token-file or "
    "PIERCE_TOKEN",
    ("kcpBindPort",): "no pierce equivalent: the control port is TCP with TLS",
    ("quicBindPort",): "no pierce equivalent: the control port is TCP with TLS",
    ("bindUdpPort",): "not needed: pierce punches holes with its own STUN responder (stun_port)",
    ("webServer", "assetsDir"): "no pierce equivalent: the dashboard's files are served from the package",
    ("webServer", "pprofEnable"): "no pierce equivalent",
    ("webServer", "tls"): "no pierce equivalent: [web] speaks plain HTTP; put it behind a TLS reverse "
    "proxy, or keep it on loopback",
    ("log",): NO_LOG,
    ("sshTunnelGateway",): "no pierce equivalent: pierce has no SSH gateway",
    ("httpPlugins",): "no pierce equivalent: pierce has no server plugins (HTTP hooks)",
    ("natholeAnalysisDataReserveHours",): "no pierce equivalent",
    ("udpPacketSize",): "no pierce equivalent: pierce carries UDP datagrams of any size up to 64 KiB",
    ("transport", "maxPoolCount"): "no pierce equivalent: the server caps each client's pool at 64",
    ("transport", "tcpMuxKeepaliveInterval"): "no pierce equivalent",
    ("transport", "tcpKeepalive"): "no pierce equivalent",
    ("transport", "quic"): "no pierce equivalent: the control port is TCP with TLS",
    ("transport", "tls", "trustedCaFile"): "no pierce equivalent: clients log in with their token (SRP), "
    "not with a client certificate",
    ("maxPoolCount",): "no pierce equivalent: the server caps each client's pool at 64",
    ("featureGates",): "no pierce equivalent",
}


def _common_auth(src: Source, unmapped: dict[KeyPath, str]) -> None:
    method = src.lookup(("auth", "method"))
    if method == "token":
        src.note(("auth", "method"), "pierce logs in with the token (SRP, never sent)")
    src.get("auth", "method")
    if method not in (None, "token"):
        src.add_warning(
            src.where(("auth", "method")),
            f'"{method}": no pierce equivalent: pierce logs in with a token per user (SRP)',
        )
    src.note(("auth", "additionalScopes"), "pierce authenticates every connection and heartbeat")
    for path, reason in unmapped.items():
        src.warn(path, reason)


def _renamed(src: Source, out: dict[str, Any], keys: dict[KeyPath, str]) -> None:
    for path, key in keys.items():
        if src.has(*path):
            out[key] = src.get(*path)


def _heartbeat(src: Source, out: dict[str, Any], frp: str, pierce: str) -> None:
    value = src.lookup(("transport", frp))
    if value is None:
        return
    if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        src.warn(("transport", frp), f"{value}: pierce always sends and checks heartbeats")
    else:
        out[pierce] = src.get("transport", frp)


def client(src: Source) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if src.has("serverAddr"):
        out["server_addr"] = src.get("serverAddr")
    else:
        out["server_addr"] = "127.0.0.1"
        src.notes.append("serverAddr: not set; frp's default dials this host, so does 127.0.0.1")
    _renamed(src, out, _CLIENT_KEYS)
    _common_auth(src, _CLIENT_UNMAPPED)
    if "token" not in out:
        src.add_warning("auth.token", "not set: a pierce client needs the server's token (token = ...)")
    protocol = src.lookup(("transport", "protocol"))
    if protocol == "tcp":
        src.note(("transport", "protocol"), "the control connection is TCP with TLS")
    protocol = src.get("transport", "protocol")
    if protocol not in (None, "tcp"):
        src.add_warning(
            src.where(("transport", "protocol")),
            f'"{protocol}": no pierce equivalent: the control connection is TCP with TLS',
        )
    _heartbeat(src, out, "heartbeatInterval", "heartbeat_interval")
    _heartbeat(src, out, "heartbeatTimeout", "heartbeat_timeout")
    _tcp_mux(src, out)
    if src.lookup(("transport", "tls", "enable")) is False:
        src.warn(("transport", "tls", "enable"), "false: pierce always uses TLS to the server")
    src.note(("transport", "tls", "enable"), "pierce always uses TLS to the server")
    start = src.get("start")
    wanted = {name for name in start if isinstance(name, str)} if isinstance(start, list) and start else None
    if isinstance(start, list) and any(not isinstance(name, str) for name in start):
        src.add_warning(src.where(("start",)), "entries that are not proxy or visitor names are ignored")
    proxies = [_proxy(src, ("proxies", i), wanted) for i in range(_count(src, "proxies"))]
    visitors = [_visitor(src, ("visitors", i), wanted) for i in range(_count(src, "visitors"))]
    if any(proxies):
        out["proxies"] = [p for p in proxies if p]
    if any(visitors):
        out["visitors"] = [v for v in visitors if v]
    return out


def _count(src: Source, key: str) -> int:
    items = src.lookup((key,))
    return len(items) if isinstance(items, list) else 0


def _left_out(src: Source, base: KeyPath, wanted: set[str] | None) -> bool:
    """A proxy or visitor frp would not start (``enabled = false``, not in ``start``): warned, left out."""
    name = src.lookup((*base, "name"))
    if src.lookup((*base, "enabled")) is False:
        src.drop(base, f'left out: "{name}" has enabled = false')
        return True
    if wanted is not None and name not in wanted:
        src.drop(base, f'left out: "{name}" is not in start')
        return True
    src.get(*base, "enabled")
    return False


_PROXY_KINDS = ("tcp", "udp", "http", "https", "stcp", "sudp", "xtcp", "tcpmux")
#: Kinds that can send a PROXY protocol header in pierce.
_PROXY_PROTOCOL_KINDS = ("tcp", "http", "https", "tcpmux")
#: Kinds with load-balancing groups and health checks in pierce.
_GROUP_KINDS = ("tcp", "http", "https", "tcpmux")
#: frp's ``healthCheck`` options and pierce's ``health_check`` keys.
_HEALTH_KEYS = {"intervalSeconds": "interval_s", "timeoutSeconds": "timeout_s", "maxFailed": "max_failed"}


def _proxy(src: Source, base: KeyPath, wanted: set[str] | None) -> dict[str, Any] | None:
    if _left_out(src, base, wanted):
        return None
    kind = src.lookup((*base, "type"))
    if kind not in _PROXY_KINDS:
        src.drop(base, f"left out: proxy type {kind!r} has no pierce equivalent")
        return None
    out: dict[str, Any] = {"name": src.get(*base, "name"), "type": src.get(*base, "type")}
    for frp, pierce in (("localIP", "local_ip"), ("localPort", "local_port")):
        if src.has(*base, frp):
            out[pierce] = src.get(*base, frp)
    if src.has(*base, "plugin") and not _plugin(src, base, out):
        return None
    src.note((*base, "transport", "useEncryption"), ENCRYPTED)
    src.warn((*base, "transport", "useCompression"), NO_COMPRESSION)
    if src.has(*base, "transport", "bandwidthLimit"):  # every kind has bandwidth_limit
        out["bandwidth_limit"] = src.get(*base, "transport", "bandwidthLimit")
        src.note(
            (*base, "transport", "bandwidthLimitMode"),
            "pierce applies bandwidth_limit on the client (the sender is slowed, or datagrams dropped, "
            "either way)",
        )
    if kind in _PROXY_PROTOCOL_KINDS and src.has(*base, "transport", "proxyProtocolVersion"):
        out["proxy_protocol_version"] = src.get(*base, "transport", "proxyProtocolVersion")
    src.warn(
        (*base, "transport", "proxyProtocolVersion"),
        f"no pierce equivalent: {kind} proxies send no PROXY protocol header",
    )
    if kind in _GROUP_KINDS:
        _group_and_health(src, base, out)
    src.warn((*base, "loadBalancer"), NO_GROUPS)
    src.warn((*base, "healthCheck"), NO_HEALTH)
    src.warn((*base, "metadatas"), NO_META)
    src.warn((*base, "annotations"), NO_META)
    keys: dict[str, str] = {}
    if kind in ("tcp", "udp"):
        keys = {"remotePort": "remote_port"}
    elif kind in ("http", "https", "tcpmux"):
        keys = {"customDomains": "custom_domains", "subdomain": "subdomain"}
        if kind == "http":
            keys |= {"locations": "locations", "hostHeaderRewrite": "host_header_rewrite"}
        if kind != "https":
            keys |= {"httpUser": "http_user", "httpPassword": "http_password"}
        if kind == "tcpmux":
            keys |= {"multiplexer": "multiplexer"}
    else:  # stcp, sudp, xtcp
        keys = {"secretKey": "secret_key", "allowUsers": "allow_users"}
        if src.lookup((*base, "allowUsers")) not in (None, [], ["*"]):
            src.notes.append(
                f"{src.where((*base, 'allowUsers'))}: pierce checks these names against the server's "
                "[[users]] (authenticated), not frp's user prefix"
            )
    for frp, pierce in keys.items():
        if src.has(*base, frp):
            out[pierce] = src.get(*base, frp)
    if kind == "http":
        for frp, pierce in (("requestHeaders", "request_headers"), ("responseHeaders", "response_headers")):
            if src.has(*base, frp, "set"):
                headers = src.get(*base, frp, "set")
                out.setdefault(pierce, {"set": {}})["set"].update(headers)
    if kind in ("http", "tcpmux"):
        src.warn((*base, "routeByHTTPUser"), "no pierce equivalent: pierce routes by host and path only")
    if kind == "xtcp":
        src.warn((*base, "natTraversal"), "no pierce equivalent: pierce gathers its own candidates")
    return out


def _group_and_health(src: Source, base: KeyPath, out: dict[str, Any]) -> None:
    """``loadBalancer`` -> ``group`` / ``group_key``; ``healthCheck`` -> ``health_check``."""
    for frp, pierce in (("group", "group"), ("groupKey", "group_key")):
        if src.has(*base, "loadBalancer", frp):
            out[pierce] = src.get(*base, "loadBalancer", frp)
    if not src.has(*base, "healthCheck", "type"):
        return
    check: dict[str, Any] = {"type": src.get(*base, "healthCheck", "type")}
    keys = _HEALTH_KEYS | ({"path": "path"} if check["type"] == "http" else {})
    for frp, pierce in keys.items():
        if src.has(*base, "healthCheck", frp):
            check[pierce] = src.get(*base, "healthCheck", frp)
    out["health_check"] = check
    src.warn((*base, "healthCheck", "httpHeaders"), NO_HEALTH_HEADERS)


def _local_addr(src: Source, path: KeyPath, out: dict[str, Any]) -> None:
    addr = src.get(*path)
    host, _, port = str(addr).rpartition(":")
    if host and port.isdigit():
        out["local_ip"], out["local_port"] = host.strip("[]"), int(port)
    else:
        src.add_warning(src.where(path), f'"{addr}": expected host:port; local_ip/local_port not set')


def _plugin(src: Source, base: KeyPath, out: dict[str, Any]) -> bool:
    """Map the proxy's plugin; False when pierce has no equivalent (the proxy is then left out)."""
    plugin: KeyPath = (*base, "plugin")
    name = src.lookup((*plugin, "type"))
    kind = out["type"]
    if kind == "https" and name in ("https2http", "tls2raw"):
        # pierce's https2http ends TLS on the client and passes the bytes on: both plugins in one
        src.get(*plugin, "type")
        out["plugin"] = "https2http"
        _local_addr(src, (*plugin, "localAddr"), out)
        for frp, pierce in (("crtPath", "plugin_crt_path"), ("keyPath", "plugin_key_path")):
            if src.has(*plugin, frp):
                out[pierce] = src.get(*plugin, frp)
            else:
                src.add_warning(
                    src.where((*plugin, "type")),
                    f"{frp} not set: frp generates a certificate, pierce needs {pierce}",
                )
        src.warn(plugin, f"no pierce equivalent for this option of the {name} plugin")
        return True
    if kind == "http" and name == "http2http":
        # an http proxy whose local service is plain HTTP: exactly what pierce's http proxy does
        src.get(*plugin, "type")
        _local_addr(src, (*plugin, "localAddr"), out)
        if src.has(*plugin, "hostHeaderRewrite") and not src.has(*base, "hostHeaderRewrite"):
            out["host_header_rewrite"] = src.get(*plugin, "hostHeaderRewrite")
        if src.has(*plugin, "requestHeaders", "set"):
            out.setdefault("request_headers", {"set": {}})["set"].update(
                src.get(*plugin, "requestHeaders", "set")
            )
        src.warn(plugin, "no pierce equivalent for this option of the http2http plugin")
        return True
    src.drop(base, f'left out: plugin "{name}" on a {kind} proxy has no pierce equivalent')
    return False


_VISITOR_KINDS = ("stcp", "sudp", "xtcp")


def _visitor(src: Source, base: KeyPath, wanted: set[str] | None) -> dict[str, Any] | None:
    if _left_out(src, base, wanted):
        return None
    kind = src.lookup((*base, "type"))
    if kind not in _VISITOR_KINDS:
        src.drop(base, f"left out: visitor type {kind!r} has no pierce equivalent")
        return None
    port = src.lookup((*base, "bindPort"))
    if isinstance(port, int) and port < 0:
        src.drop(
            base,
            "left out: a visitor without a local port (bindPort < 0); pierce's xtcp visitors fall back "
            "through the server on their own (fallback = true)",
        )
        return None
    out: dict[str, Any] = {"name": src.get(*base, "name"), "type": src.get(*base, "type")}
    for frp, pierce in (
        ("serverName", "server_name"),
        ("secretKey", "secret_key"),
        ("bindAddr", "bind_addr"),
        ("bindPort", "bind_port"),
    ):
        if src.has(*base, frp):
            out[pierce] = src.get(*base, frp)
    src.warn(
        (*base, "serverUser"),
        "no pierce equivalent: pierce visitors name the proxy only (proxy names are unique on the server)",
    )
    src.note((*base, "transport", "useEncryption"), ENCRYPTED)
    src.warn((*base, "transport", "useCompression"), NO_COMPRESSION)
    src.warn((*base, "plugin"), "no pierce equivalent: pierce visitors have no plugins")
    if kind == "xtcp":
        if src.lookup((*base, "protocol")) == "quic":
            src.note((*base, "protocol"), "pierce runs QUIC in the hole")
        protocol = src.get(*base, "protocol")
        if protocol not in (None, "quic"):
            src.add_warning(
                src.where((*base, "protocol")), f'"{protocol}": pierce runs QUIC (or TCP) in the hole'
            )
        if src.has(*base, "fallbackTo"):
            src.get(*base, "fallbackTo")
            out["fallback"] = True
            if src.has(*base, "fallbackTimeoutMs"):
                out["fallback_timeout_ms"] = src.get(*base, "fallbackTimeoutMs")
        else:
            out["fallback"] = False
            src.notes.append(
                f"{src.where((*base, 'name'))}: no fallbackTo, so fallback = false (as in frp); "
                "fallback = true goes through the server when no direct path is up"
            )
        src.warn((*base, "keepTunnelOpen"), "no pierce equivalent: pierce keeps a direct path while in use")
        src.warn((*base, "maxRetriesAnHour"), "no pierce equivalent: see [p2p] punch_budget_s")
        src.warn((*base, "minRetryInterval"), "no pierce equivalent: see [p2p] punch_budget_s")
        src.warn((*base, "natTraversal"), "no pierce equivalent: pierce gathers its own candidates")
    return out


def _tcp_mux(src: Source, out: dict[str, Any]) -> None:
    """frp's ``transport.tcpMux`` (work connections as streams of one connection) is pierce's
    ``transport.tcp_mux``; on by default in both."""
    if not src.has("transport", "tcpMux"):
        return
    value = src.lookup(("transport", "tcpMux"))
    if isinstance(value, bool):
        src.get("transport", "tcpMux")
        out.setdefault("transport", {})["tcp_mux"] = value
    else:
        src.warn(("transport", "tcpMux"), f"{value!r} is not true or false: not converted")


def server(src: Source) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _renamed(src, out, _SERVER_KEYS)
    _tcp_mux(src, out)
    if src.has("auth", "token"):
        token = src.get("auth", "token")
        out["token"] = token
        try:
            check_token_strength("token", str(token), allow_weak=False)
        except InvalidValue as exc:
            out["allow_weak_token"] = True
            src.add_warning(
                src.where(("auth", "token")),
                f"{exc.message.split('.')[0]}; allow_weak_token = true added so that it still works: "
                "replace the token on the server and its clients",
            )
    else:
        src.notes.append("auth.token: not set; pierce generates a token on first start (state_dir/token)")
    _common_auth(src, _SERVER_UNMAPPED)
    ports = src.get("allowPorts")
    if isinstance(ports, list):
        out["allow_ports"] = [_port_range(src, item) for item in ports]
    _heartbeat(src, out, "heartbeatTimeout", "heartbeat_timeout")
    _web(src, out)
    src.note(("transport", "tls", "force"), "pierce always requires TLS on the control port")
    if src.lookup(("detailedErrorsToClient",)) is False:
        src.warn(("detailedErrorsToClient",), "false: pierce always tells a client why it was refused")
    src.note(("detailedErrorsToClient",), "pierce always tells a client why it was refused")
    return out


def _web(src: Source, out: dict[str, Any]) -> None:
    """``webServer`` (the dashboard and its API) becomes ``[web]``; its /metrics is ``enablePrometheus``."""
    web = {
        key: src.get("webServer", key)
        for key in ("addr", "port", "user", "password")
        if src.has("webServer", key)
    }
    if web:
        out["web"] = web
    if web.get("port") and "addr" not in web:
        src.notes.append(
            f"{src.where(('webServer', 'port'))}: [web] listens on 127.0.0.1 without addr; add "
            'addr = "0.0.0.0" (with user and password) to reach it from other hosts'
        )
    prometheus = src.lookup(("enablePrometheus",))
    if prometheus is True and web.get("port"):
        src.note(("enablePrometheus",), "pierce serves /metrics on the [web] port")
    elif prometheus is True:
        src.warn(
            ("enablePrometheus",), "not converted: pierce serves /metrics on the [web] port, not set here"
        )
    else:
        src.note(("enablePrometheus",), "pierce serves /metrics on the [web] port")


def _port_range(src: Source, item: Any) -> str:
    if isinstance(item, dict) and "single" in item:
        return str(item["single"])
    if isinstance(item, dict):
        return f"{item.get('start')}-{item.get('end')}"
    return str(item)
