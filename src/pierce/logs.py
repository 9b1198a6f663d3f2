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

#: Check every event against the catalogue (tests set PIERCE_STRICT_EVENTS=1).
STRICT_EVENTS = os.environ.get("PIERCE_STRICT_EVENTS") == "1"


class UnknownEvent(AssertionError):
    """An event name or field outside the catalogue (raised only with PIERCE_STRICT_EVENTS=1)."""


def __getattr__(name: str) -> Any:
    """`EVENTS` and `FIELDS`, the catalogue, from `pierce.log_events` (loaded on first use)."""
    if name in ("EVENTS", "FIELDS"):
        from pierce import log_events

        return getattr(log_events, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_event(name: str, fields: dict[str, Any]) -> None:
    from pierce.log_events import EVENTS

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
