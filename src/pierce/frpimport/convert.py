"""One frp file -> pierce TOML text, the warnings, and the result checked by pierce's own loader."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from pierce import config
from pierce.errors import ConfigError, KeyPath, format_key_path
from pierce.frpimport import emit, legacy, mapping
from pierce.frpimport.formats import Format, Role, detect_format, detect_role, parse
from pierce.frpimport.sniff import read_text
from pierce.frpimport.source import Source


class Converted(msgspec.Struct, frozen=True):
    """The result of converting one frp file."""

    role: Role
    format: Format
    #: The pierce config document and its TOML text (with notes as comments on top).
    doc: dict[str, Any]
    text: str
    #: ``file: option: why`` for every option that was not carried over.
    warnings: list[str]
    #: What pierce's loader says about the result (empty: it loads as it is).
    problems: list[str]


def convert_file(path: Path, role: Role | None = None) -> Converted:
    """Convert the frp file at ``path``; ConfigError when it cannot be read or parsed."""
    text = read_text(path)
    fmt = detect_format(path, text)
    parsed = parse(path, text, fmt)
    origin: dict[Any, str] = {}
    unplaced: list[tuple[str, str]] = []
    if isinstance(parsed, configparser.RawConfigParser):
        old = legacy.from_ini(parsed, str(path))
        doc, origin, unplaced = old.doc, old.origin, old.unplaced
        top = dict(parsed.items("common")) if parsed.has_section("common") else {}
        if doc.get("proxies") or doc.get("visitors"):
            top["proxies"] = "(sections)"
    else:
        if not isinstance(parsed, dict):
            raise ConfigError([f"{path}: expected a table of frp options at the top level"])
        doc = top = parsed
    role = role or detect_role(path, top)
    src = Source(doc, str(path), origin)
    for where, reason in unplaced:
        src.add_warning(where, reason)
    out = mapping.client(src) if role is Role.CLIENT else mapping.server(src)
    src.finish()
    _drop_unwritable(out, (), src)
    kind = config.ClientConfig if role is Role.CLIENT else config.ServerConfig
    frp_name = "frpc" if role is Role.CLIENT else "frps"
    header = [
        f"pierce {role.value} config converted from {path.name} ({frp_name}, {fmt.value})",
        "by `pierce import-frp`.",
        "Check it with `pierce verify -c FILE`. frp options pierce has built in:" if src.notes else "",
        *(f"  {note}" for note in src.notes),
    ]
    toml_text = emit.dumps(out, [line for line in header if line])
    problems: list[str] = []
    try:
        config.convert(tomllib.loads(toml_text), kind, f"converted {path.name}")
    except ConfigError as exc:
        problems = exc.problems
    return Converted(role, fmt, out, toml_text, src.warnings, problems)


#: What a pierce config value can be (what `emit` writes).
_WRITABLE = (bool, int, float, str, list, dict)


def _drop_unwritable(node: dict[str, Any] | list[Any], path: KeyPath, src: Source) -> None:
    """Take out of the result what TOML cannot hold: a missing value the mapping passed on (None, e.g.
    a proxy without a name: the loader then says the key is missing) and values of other types
    (a YAML date, binary), each with a warning."""
    items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
    for key, item in reversed(items):
        where = (*path, key if isinstance(key, str | int) else str(key))
        if isinstance(item, dict | list):
            _drop_unwritable(item, where, src)
        elif item is None or not isinstance(item, _WRITABLE):
            del node[key]  # type: ignore[arg-type]
            if item is not None:
                src.add_warning(
                    format_key_path(where),
                    f"a {type(item).__name__} value, which a pierce config cannot hold",
                )
