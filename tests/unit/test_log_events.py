"""One vocabulary: every event the code logs is in the catalogue, with the fields the catalogue names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pierce import logs

SRC = Path(__file__).resolve().parents[2] / "src" / "pierce"


#: Calls that log an event, and the position of the event name among their arguments.
_LOGGERS = {"event": 2, "_event": 1, "log_relay_closed": 1, "DropCounter": 1}


def logged_events() -> list[tuple[str, str, set[str]]]:
    """(where, event name, field names) of every call that logs an event with a literal name.

    Fields are the call's keywords for `event` and the ``_event`` wrappers; the other helpers add
    their own fixed fields (checked at run time, since the suite runs with PIERCE_STRICT_EVENTS=1).
    """
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            at = _LOGGERS.get(called)
            if at is None or len(node.args) <= at:
                continue
            name = node.args[at]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                fields = set()
                if called in ("event", "_event"):
                    fields = {k.arg for k in node.keywords if k.arg is not None}
                found.append((f"{path.relative_to(SRC)}:{node.lineno}", name.value, fields))
    return found


def test_the_source_logs_events() -> None:
    assert len(logged_events()) > 50


@pytest.mark.parametrize(("where", "name", "fields"), logged_events(), ids=lambda x: str(x))
def test_every_event_is_catalogued_with_its_fields(where: str, name: str, fields: set[str]) -> None:
    assert name in logs.EVENTS, f"{where}: {name!r} is not in pierce.logs.EVENTS"
    assert fields <= logs.EVENTS[name], (
        f"{where}: {name} has uncatalogued fields {fields - logs.EVENTS[name]}"
    )


def test_every_field_has_a_meaning() -> None:
    used = set().union(*logs.EVENTS.values())
    assert used <= set(logs.FIELDS), sorted(used - set(logs.FIELDS))


def test_strict_mode_refuses_unknown_events_and_fields() -> None:
    with pytest.raises(logs.UnknownEvent, match=r"not in pierce\.logs\.EVENTS"):
        logs.check_event("proxy.teleported", {})
    with pytest.raises(logs.UnknownEvent, match=r"\['client'\]"):
        logs.check_event("proxy.conn_open", {"proxy": "p", "client": "1.2.3.4:5"})
    logs.check_event("proxy.conn_open", {"proxy": "p", "visitor": "1.2.3.4:5"})


def test_the_suite_runs_strict() -> None:
    assert logs.STRICT_EVENTS, "tests/conftest.py sets PIERCE_STRICT_EVENTS=1 for every pierce it starts"
