"""The catalogue of log events: every event name with the fields it may carry (`EVENTS`), and what each
field name means (`FIELDS`), one name per meaning.

It is read as `pierce.logs.EVENTS` / `pierce.logs.FIELDS`, and loads only when something reads it: a
process checks its events against it with ``PIERCE_STRICT_EVENTS=1`` (the test suite), the tests read it
to check the code, and nothing else needs it at run time.
"""

from __future__ import annotations

#: What each field name means. Addresses are ``host:port`` text.
FIELDS: dict[str, str] = {
    # who and where
    "fresh": "a visitor connection ran a full login (true) or proved its visitor session's key (false)",
    "conn_path": "the path a visitor's connection takes: relay (through the server), direct lan, direct udp, "
    "direct tcp or direct predicted",
    "elapsed_ms": "milliseconds a P2P attempt took from its start to a path",
    "rtt_ms": "round-trip time of a direct path, milliseconds",
    "keepalive_s": "seconds between a direct path's keepalives (below the NAT's idle timer)",
    "proto": "what a direct path runs on: udp (a punched hole with QUIC) or tcp (one direct TCP connection)",
    "user": "the user (a name of the server's [[users]]) a client or visitor authenticated as",
    "peer": "address a client's connection to the server comes from (as the server sees it)",
    "visitor": "address of a visitor of a proxy or a shared front (as the server or owner sees it)",
    "client": "address of a connection to a map rule (pierce map)",
    "app": "address of a local application using a visitor (pierce visit)",
    "target": "where the bytes go: a service host:port, or 'client <id>' on the server",
    "listen": "address a listener is bound to",
    "server": "the server a client logs in to, host:port",
    "client_id": "id a client logged in with",
    "visitor_id": "client id a visitor logged in with",
    "visitor_name": "name of a [[visitors]] entry (the visiting side)",
    "proxy": "proxy name",
    "rule": "map rule name",
    "run_id": "id of a client's control session",
    "work_conn": "number of a work connection within its client session (repeats show reuse)",
    "closed_idle": "idle work connections closed together with one found dead",
    "front": "shared front: http, https or tcpmux",
    "server_name": "name a visitor asked for (TLS SNI, HTTP CONNECT host)",
    "type": "proxy type (tcp, udp, http, https, stcp, sudp, ...)",
    "role": "what a new connection to the server is for: control, work, visitor",
    "port": "a port number",
    "ports": "port numbers",
    "remote_port": "the public port of a proxy",
    "urls": "where visitors reach a proxy",
    "group": "load-balancing group of a proxy (its group key is never logged)",
    "members": "proxies in a load-balancing group now",
    "url": "a URL",
    "addresses": "bound addresses",
    "alt_addr": "second address of the STUN responder",
    "protocol": "tcp or udp",
    "fingerprint": "SHA-256 fingerprint of the server certificate",
    "generated": "the certificate or token was generated now",
    "source": "what the server's login limits count by: an IPv4 address, or the /64 of an IPv6 one",
    # outcome
    "code": "machine-readable reason (an ErrorCode value, or a refusal code of a front)",
    "reason": "human-readable reason",
    "error": "what went wrong",
    "status": "HTTP status",
    "method": "HTTP method",
    "host": "HTTP Host",
    # counters
    "up_bytes": "bytes towards the service (visitor -> service, client -> target)",
    "down_bytes": "bytes back towards the visitor",
    "up_packets": "datagrams towards the service",
    "down_packets": "datagrams back",
    "duration_s": "seconds the connection lasted",
    "mode": "how the relay moved the bytes: splice, copy or stream",
    "dropped": "datagrams dropped so far",
    "direction": "which way dropped datagrams went: in (visitor -> service) or out (service -> visitor)",
    "refused": "connections turned away that this (rate-limited) line stands for",
    "delay_s": "seconds until the next attempt",
    "suppressed": "lines left out just before this one (a stranger can cause them: rate-limited)",
    "block_s": "seconds new connections from the source are refused",
    # ACME
    "account": "ACME account URL",
    "directory": "ACME directory URL",
    "names": "domain names of a certificate",
    "kind": "what failed",
    "failures": "failures in a row",
    "retry_in_s": "seconds until the next attempt",
    "serving": "a certificate is being served meanwhile",
    "not_after": "certificate expiry (Unix time)",
    "path": "a file",
    "replaced": "an older certificate was replaced",
    "seconds": "seconds taken",
    "serial": "certificate serial number",
    "lifetime_s": "certificate lifetime in seconds",
    "renew_before_s": "seconds before expiry a renewal starts",
    # state directory
    "old_mode": "file mode before it was tightened (octal)",
    "new_mode": "file mode after it was tightened (octal)",
    # reloads
    "added": "proxies added",
    "removed": "proxies removed",
    "changed": "proxies changed",
}

_RELAY = frozenset({"up_bytes", "down_bytes", "duration_s", "mode", "error"})
_DATAGRAMS = frozenset({"up_bytes", "down_bytes", "up_packets", "down_packets", "duration_s", "error"})
_DROPS = frozenset({"reason", "dropped", "proxy", "visitor", "visitor_name", "client", "rule", "direction"})
_FLOW = frozenset({"rule", "client", "target", "proxy", "visitor", "error", "reason", "dropped"}) | _DATAGRAMS

#: Every event name and the fields it may carry.
EVENTS: dict[str, frozenset[str]] = {
    name: frozenset(fields)
    for name, fields in {
        # server
        "server.listening": {"listen", "port", "fingerprint", "generated"},
        "server.token": {"path", "generated"},
        "login.failed": {"peer", "error", "suppressed"},
        "login.refused": {"peer", "client_id", "role", "error", "suppressed"},
        "auth.failed": {"peer", "client_id", "role", "error", "suppressed"},
        "login.turned_away": {"peer", "source", "reason", "suppressed"},
        "login.blocked": {"source", "failures", "block_s", "suppressed"},
        "client.login": {"client_id", "user", "peer", "run_id"},
        "client.replaced": {"client_id", "user", "peer"},
        "client.gone": {"client_id", "peer"},
        "client.timeout": {"client_id", "peer"},
        "client.protocol_error": {"client_id", "peer", "error"},
        "client.error": {"client_id", "code"},
        "stun.listening": {"addresses", "alt_addr", "ports", "listen"},
        "web.listening": {"listen", "port"},
        "web.turned_away": {"peer", "reason", "refused"},
        "stun.unavailable": {"error"},
        "stun.tcp_unavailable": {"error"},
        "front.listening": {"front", "listen", "port"},
        "front.refused": {"front", "visitor", "code", "reason", "server_name", "proxy", "refused"},
        # proxies (server and owner)
        "proxy.ready": {"client_id", "proxy", "type", "remote_port", "urls", "server"},
        "proxy.refused": {"client_id", "proxy", "code", "reason", "error"},
        "proxy.closed": {"client_id", "proxy", "reason"},
        "proxy.group_joined": {"client_id", "proxy", "type", "group", "members"},
        "proxy.group_left": {"client_id", "proxy", "type", "group", "members"},
        "proxy.health_failed": {"proxy", "target", "error", "failures"},
        "proxy.health_recovered": {"proxy", "target"},
        "proxy.ip_refused": {"proxy", "visitor", "refused"},
        "proxy.conn_open": {"proxy", "visitor", "client_id", "target", "work_conn", "visitor_id", "type"}
        | {"server_name"},
        "proxy.conn_close": {"proxy", "visitor", "client_id", "target", "visitor_id", "type", "server_name"}
        | _RELAY
        | _DATAGRAMS,
        "proxy.no_work_conn": {"proxy", "visitor", "client_id", "visitor_id", "type", "server_name"},
        "proxy.work_failed": {"proxy", "visitor", "client_id", "visitor_id", "type", "server_name", "error"},
        "proxy.work_dead": {"client_id", "proxy", "work_conn", "error", "closed_idle"},
        "proxy.local_failed": {"proxy", "visitor", "target", "error"},
        "proxy.tls_failed": {"proxy", "visitor", "error"},
        "proxy.plugin_failed": {"proxy", "error"},
        "vhost.http.request": {"visitor", "proxy", "method", "host", "target", "status"},
        "vhost.http.aborted": {"visitor", "error"},
        "vhost.http.backend_failed": {"visitor", "proxy", "error"},
        "vhost.http.bad_response": {"proxy", "error"},
        "acme.account": {"account", "directory"},
        "acme.order": {"names", "directory", "reason"},
        "acme.issued": {"names", "not_after", "path", "replaced", "seconds", "serial"},
        "acme.loaded": {"names", "not_after", "path", "serial"},
        "acme.load_failed": {"path", "error"},
        "acme.failed": {"names", "kind", "reason", "failures", "retry_in_s", "serving"},
        "acme.renew_margin": {"names", "lifetime_s", "renew_before_s"},
        # secret proxies
        "visitor.login": {"visitor", "user", "fresh"},
        "visitor.accepted": {"proxy", "visitor", "visitor_id", "user"},
        "visitor.refused": {"proxy", "visitor", "visitor_id", "visitor_name", "user", "code", "reason"},
        "visitor.listening": {"visitor_name", "proxy", "type", "listen", "port"},
        "visitor.checked": {"visitor_name", "proxy"},
        "visitor.failed": {"visitor_name", "proxy", "error"},
        "visitor.retry": {"visitor_name", "proxy", "reason", "failures", "delay_s"},
        "visitor.open": {"visitor_name", "proxy", "app", "conn_path"},
        # P2P
        "p2p.direct": {
            "visitor_name",
            "proxy",
            "visitor",
            "conn_path",
            "proto",
            "elapsed_ms",
            "rtt_ms",
            "keepalive_s",
        },
        "p2p.failed": {"visitor_name", "proxy", "proto", "reason"},
        "p2p.closed": {"visitor_name", "proxy", "visitor", "reason"},
        "p2p.result": {"proxy", "visitor", "conn_path", "elapsed_ms", "rtt_ms", "reason"},
        "p2p.rendezvous_failed": {"proxy", "visitor", "error"},
        "visitor.close": {"visitor_name", "proxy", "app"} | _RELAY | _DATAGRAMS,
        # client
        "client.connected": {"server", "run_id", "user"},
        "client.disconnected": {"error"},
        "client.login_failed": {"error"},
        "client.gave_up": {"error", "server", "user"},
        "client.retry": {"delay_s"},
        "client.reloaded": {"added", "removed", "changed"},
        "client.reload_failed": {"error"},
        "client.stopping": set(),
        "client.crashed": {"error"},
        "admin.listening": {"listen", "port", "path"},
        "inspect.replayed": {"proxy", "method", "target", "status"},
        "tls.pinned": {"server", "fingerprint", "path"},
        "work.failed": {"error", "delay_s"},
        "work.mux_failed": {"error"},
        "work.mux_joined": {"client_id", "peer"},
        "work.unexpected": {"proxy"},
        "work.unknown_proxy": {"proxy"},
        # pierce map, and UDP flows everywhere
        "map.listening": {"rule", "protocol", "listen", "target"},
        "tcp.accept_error": {"rule", "error"},
        "tcp.denied": {"rule", "client"},
        "tcp.open": {"rule", "client", "target"},
        "tcp.target_failed": {"rule", "client", "target", "error"},
        "tcp.close": {"rule", "client", "target"} | _RELAY,
        "udp.denied": {"rule", "client"},
        "udp.open": _FLOW,
        "udp.close": _FLOW,
        "udp.target_failed": _FLOW,
        "udp.dropped": _DROPS,
        "udp.unknown_proxy": _DROPS,
        "udp.too_many_flows": _DROPS,
        # both roles
        "state.tightened": {"path", "old_mode", "new_mode"},
        "state.loose": {"path", "error"},
        "token.on_command_line": set(),
        # pierce demo
        "demo.ready": {"url", "port"},
        "demo.stopped": {"reason"},
    }.items()
}
