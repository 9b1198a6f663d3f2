"""Plain log lines (stderr not a terminal): one line per record, whatever the message holds."""

from __future__ import annotations

import logging
import sys

from pierce.logs import LineFormatter


def record(msg: str, level: int = logging.WARNING, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("pierce", level, __file__, 1, msg, None, exc_info)  # type: ignore[arg-type]


def test_line_breaks_and_control_characters_are_escaped() -> None:
    line = LineFormatter().format(record("visitor sent\nERROR forged\r\x1b[31m C:\\dir"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.endswith("WARNING visitor sent\\nERROR forged\\r\\x1b[31m C:\\dir")


def test_a_traceback_stays_on_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        line = LineFormatter().format(record("failed", logging.ERROR, sys.exc_info()))
    assert "\n" not in line
    assert "ERROR   failed\\nTraceback (most recent call last):\\n" in line
    assert line.endswith("ValueError: boom")


def test_the_journal_gets_the_priority_and_no_time() -> None:
    assert LineFormatter(journal=True).format(record("lost the server")) == "<4>WARNING lost the server"
    assert LineFormatter(journal=True).format(record("up", logging.INFO)) == "<6>INFO up"
