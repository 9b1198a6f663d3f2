"""Logging set-up: a rich console handler for people, JSON lines for machines.

Code logs through :func:`event`, which attaches a stable event name and typed fields to the record.
The console shows the message; ``--json-logs`` writes one JSON object per line with every field, so
tests and log shippers read ``{"event": "tcp.close", "up_bytes": ...}`` instead of parsing prose.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

_JSON = msgspec.json.Encoder()


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


def setup_logging(level: str = "info", *, json_logs: bool = False) -> None:
    """Configure the root ``pierce`` logger once, for the process."""
    root = logging.getLogger("pierce")
    root.handlers.clear()
    root.propagate = False
    root.setLevel(level.upper())
    handler: logging.Handler
    if json_logs:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
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
