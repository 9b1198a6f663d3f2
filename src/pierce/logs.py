"""Logging set-up, and the one vocabulary of log events.

Code logs through :func:`event`, which attaches a stable event name and typed fields to the record.
The console shows the message; ``--json-logs`` writes one JSON object per line with every field, so
tests and log shippers read ``{"event": "tcp.close", "up_bytes": ...}`` instead of parsing prose.

`EVENTS` is the catalogue: every event name with the fields it may carry, and `FIELDS` says what each
field name means, one name per meaning (the address of a proxy's visitor is always ``visitor``, a map
rule's peer always ``client``). With ``PIERCE_STRICT_EVENTS=1`` in the environment (the test suite sets
it) an event outside the catalogue raises, so the vocabulary cannot drift.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any

import msgspec

_JSON = msgspec.json.Encoder()

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
        "work.failed": {"error"},
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

#: Check every event against the catalogue (tests set PIERCE_STRICT_EVENTS=1).
STRICT_EVENTS = os.environ.get("PIERCE_STRICT_EVENTS") == "1"


class UnknownEvent(AssertionError):
    """An event name or field outside the catalogue (raised only with PIERCE_STRICT_EVENTS=1)."""


def check_event(name: str, fields: dict[str, Any]) -> None:
    allowed = EVENTS.get(name)
    if allowed is None:
        raise UnknownEvent(f"log event {name!r} is not in pierce.logs.EVENTS")
    if extra := set(fields) - allowed:
        raise UnknownEvent(f"log event {name!r} has fields outside the catalogue: {sorted(extra)}")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, event, msg and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or "log",
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            doc["error"] = repr(record.exc_info[1])
        return _JSON.encode(doc).decode()


#: Control characters, line breaks included: escaped on a plain line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: syslog priorities by level: the journal reads a ``<N>`` prefix as the line's priority.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or f"\\x{ord(char):02x}"


class LineFormatter(logging.Formatter):
    """One line per record, for a file, a pipe or the journal: time, level, message, never wrapped.

    Line breaks and other control characters in the message (a peer's name, a traceback) are escaped
    as ``\\n``, ``\\x1b`` and so on, so one record stays one line and no text can forge another line.
    ``journal``: the journal stamps the time itself and takes the level from a ``<N>`` prefix.
    """

    def __init__(self, *, journal: bool = False) -> None:
        fmt = "%(levelname)s %(message)s" if journal else "%(asctime)s %(levelname)-7s %(message)s"
        super().__init__(fmt, datefmt="%Y-%m-%d %H:%M:%S")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = _CONTROL.sub(_escape, super().format(record))
        return f"<{_PRIORITY.get(record.levelno, 6)}>{line}" if self.journal else line


def stderr_is_journal() -> bool:
    """stderr is the stream systemd connected to the journal (its ``JOURNAL_STREAM`` names it)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def setup_logging(level: str = "info", *, json_logs: bool = False) -> None:
    """Configure the root ``pierce`` logger once, for the process.

    ``json_logs``: one JSON object per line. Otherwise a terminal gets rich's columns (wrapped to its
    width) and anything else (a file, a pipe, the journal) one plain line per event.
    """
    root = logging.getLogger("pierce")
    root.handlers.clear()
    root.propagate = False
    root.setLevel(level.upper())
    handler: logging.Handler
    if json_logs:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif not sys.stderr.isatty():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter(journal=stderr_is_journal()))
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(stderr=True),
            show_path=False,
            rich_tracebacks=False,
            markup=False,
            log_time_format="[%X]",
        )
    root.addHandler(handler)


def event(logger: logging.Logger, level: int, name: str, message: str, **fields: Any) -> None:
    """Log ``message`` with the stable event ``name`` and machine-readable ``fields``."""
    if STRICT_EVENTS:
        check_event(name, fields)
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"event": name, "fields": fields})


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def monotonic() -> float:
    return time.monotonic()


def relay_summary(stats: Any) -> tuple[str, dict[str, Any]]:
    """What every "connection closed" line says about a `pierce.relay.RelayStats`: the text after
    "closed" and the fields (bytes each way, duration, the error if it ended early)."""
    fields: dict[str, Any] = {
        "up_bytes": stats.a_to_b,
        "down_bytes": stats.b_to_a,
        "duration_s": round(stats.duration, 6),
        "mode": None if stats.mode is None else stats.mode.value,
    }
    suffix = ""
    if stats.error is not None:
        fields["error"] = str(stats.error) or type(stats.error).__name__
        suffix = f" ({fields['error']})"
    text = (
        f"closed after {stats.duration:.2f}s, up {human_bytes(stats.a_to_b)}, "
        f"down {human_bytes(stats.b_to_a)}{suffix}"
    )
    return text, fields


def log_relay_closed(
    logger: logging.Logger, name: str, label: str, client: str, target: str, stats: Any, **extra: Any
) -> None:
    """The one "connection closed" line of a relay between ``client`` and ``target``.

    ``name`` is the event name (e.g. "tcp.close"); ``label`` the rule or proxy the connection belongs
    to; ``stats`` a `pierce.relay.RelayStats` whose ``a_to_b`` runs from ``client`` towards ``target``.
    """
    text, fields = relay_summary(stats)
    event(
        logger,
        logging.INFO,
        name,
        f"{label}: {client} -> {target} {text}",
        rule=label,
        client=client,
        target=target,
        **fields,
        **extra,
    )


def log_conn_closed(
    logger: logging.Logger, proxy: str, visitor: str, target: str, stats: Any, **extra: Any
) -> None:
    """``proxy.conn_close``: one visitor's connection through a proxy ended (server or client side)."""
    text, fields = relay_summary(stats)
    event(
        logger,
        logging.INFO,
        "proxy.conn_close",
        f"{proxy}: visitor {visitor} -> {target} {text}",
        proxy=proxy,
        visitor=visitor,
        target=target,
        **fields,
        **extra,
    )


def log_front_refused(
    logger: logging.Logger, front: str, visitor: str, code: str, reason: str, **fields: Any
) -> None:
    """``front.refused``: a shared front (http, https, tcpmux) turned a visitor away before any proxy."""
    event(
        logger,
        logging.INFO,
        "front.refused",
        f"{front}: {visitor}: {reason}",
        front=front,
        visitor=visitor,
        code=code,
        reason=reason,
        **fields,
    )
