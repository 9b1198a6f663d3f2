"""A small TOML writer for the documents the converter builds: scalars, lists of scalars, tables of them,
and arrays of tables (``[[proxies]]``) whose nested tables are written inline."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def value(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        text = repr(item)
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(text, text)
    if isinstance(item, str):
        return _string(item)
    if isinstance(item, list):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {value(v)}" for k, v in item.items()) + "}"
    raise TypeError(f"cannot write {type(item).__name__} as TOML")


def _is_table_array(item: Any) -> bool:
    return isinstance(item, list) and bool(item) and all(isinstance(v, dict) for v in item)


def dumps(doc: dict[str, Any], header: Sequence[str] = ()) -> str:
    """``doc`` as TOML, after ``header`` lines written as comments."""
    lines = [f"# {line}" if line else "#" for line in header]
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict) and not _is_table_array(v)}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in doc.items() if _is_table_array(v)}
    if lines:
        lines.append("")
    lines.extend(f"{_key(k)} = {value(v)}" for k, v in scalars.items())
    for name, table in tables.items():
        lines += ["", f"[{_key(name)}]"]
        lines.extend(f"{_key(k)} = {value(v)}" for k, v in table.items())
    for name, items in arrays.items():
        for item in items:
            lines += ["", f"[[{_key(name)}]]"]
            lines.extend(f"{_key(k)} = {value(v)}" for k, v in item.items())
    return "\n".join(lines).strip("\n") + "\n"
