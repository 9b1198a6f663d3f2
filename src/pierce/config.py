"""Every config file pierce reads: typed msgspec Structs, loaded from TOML, checked strictly.

One place reads config. Errors name the file, the key path and what was expected, e.g.
``map.toml: rules[1].target: expected "host:port", got "10.0.0.5"``, and every problem in the file is
reported in one pass, not only the first.
"""

from __future__ import annotations

import difflib
import enum
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from pierce.addr import HostPort, Network, parse_host_port, parse_network
from pierce.errors import ConfigError

#: The current config format version; files may say ``version = 1``.
CONFIG_VERSION = 1

DEFAULT_UDP_IDLE_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0


class Transport(enum.Enum):
    TCP = "tcp"
    UDP = "udp"


class ListenAddr(HostPort):
    """An address to bind: port 0 means "any free port"."""

    __slots__ = ()


class MapRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One forwarding rule of ``pierce map``."""

    #: Where to accept, ``host:port``; ``0.0.0.0`` / ``[::]`` for all interfaces.
    listen: ListenAddr
    #: Where to forward, ``host:port``; a DNS name is resolved for every new connection or UDP session.
    target: HostPort
    #: ``"tcp"`` or ``"udp"``.
    protocol: Transport = Transport.TCP
    #: Source allow-list (CIDRs or single addresses); empty means everyone.
    allow: list[Network] = []
    #: UDP: seconds a client's session lives without traffic.
    idle_timeout: float = DEFAULT_UDP_IDLE_TIMEOUT
    #: TCP: seconds to wait for the target to accept.
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: A label for logs; defaults to ``protocol:listen``.
    name: str = ""

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0:
            raise ValueError(f"idle_timeout: expected a number of seconds > 0, got {self.idle_timeout:g}")
        if self.connect_timeout <= 0:
            raise ValueError(
                f"connect_timeout: expected a number of seconds > 0, got {self.connect_timeout:g}"
            )
        if not self.name:
            self.name = f"{self.protocol.value}:{self.listen}"


class MapConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``map.toml``: a list of ``[[rules]]``."""

    version: int = CONFIG_VERSION
    rules: list[MapRule]

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise ValueError(f"version: expected {CONFIG_VERSION}, got {self.version}")
        if not self.rules:
            raise ValueError("rules: expected at least one [[rules]] table")


# --------------------------------------------------------------------------------------------------
# Decoding


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is ListenAddr:
        hp = parse_host_port(obj, allow_port_zero=True)
        return ListenAddr(hp.host, hp.port)
    if typ is HostPort:
        return parse_host_port(obj)
    if typ is Network:
        return parse_network(obj)
    raise NotImplementedError(f"no decoder for {typ!r}")


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(err: str, struct: type[msgspec.Struct] | None) -> str:
    """Turn one msgspec message into ``key.path: expectation``."""
    m = _AT.match(err)
    assert m is not None
    msg, path = m.group("msg"), (m.group("path") or "").lstrip(".")
    if u := re.match(r"Object contains unknown field `(.+)`", msg):
        key = u.group(1)
        known = _fields_at(struct, path)
        hint = ""
        if known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else f"; expected one of: {', '.join(known)}"
        return f"{_join(path, key)}: unknown key{hint}"
    if u := re.match(r"Object missing required field `(.+)`", msg):
        return f"{_join(path, u.group(1))}: missing required key"
    if u := re.match(r"Invalid enum value (.+)", msg):
        choices = _enum_choices_at(struct, path)
        want = f"expected one of {choices}" if choices else "unknown value"
        got = u.group(1).strip("'")
        return f'{path}: {want}, got "{got}"'
    if u := re.match(r"Expected `(.+?)`, got `(.+?)`(.*)", msg):
        want, got, rest = u.group(1), u.group(2), u.group(3)
        names = {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "array": "a list",
            "object": "a table",
            "bool": "true or false",
        }
        return f"{path or '(top level)'}: expected {names.get(want, want)}{rest}, got {names.get(got, got)}"
    return f"{path or '(top level)'}: {msg}" if path or not msg.split(":")[0].isidentifier() else msg


def _struct_at(struct: type[msgspec.Struct] | None, path: str) -> type[msgspec.Struct] | None:
    """Follow ``rules[1]`` style paths through Struct annotations."""
    import typing

    current: Any = struct
    for part in filter(None, re.split(r"\.|\[\d+\]", path)):
        if current is None:
            return None
        hints = typing.get_type_hints(current)
        current = hints.get(part)
        while typing.get_origin(current) in (list, tuple, dict) or (
            typing.get_origin(current) is not None and typing.get_args(current)
        ):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            current = args[-1] if args else None
    if isinstance(current, type) and issubclass(current, msgspec.Struct):
        return current
    return None


def _fields_at(struct: type[msgspec.Struct] | None, path: str) -> list[str]:
    target = _struct_at(struct, path)
    return list(target.__struct_fields__) if target else []


def _enum_choices_at(struct: type[msgspec.Struct] | None, path: str) -> str:
    import typing

    parent, _, leaf = path.rpartition(".")
    target = _struct_at(struct, parent)
    if target is None:
        return ""
    typ = typing.get_type_hints(target).get(re.sub(r"\[\d+\]$", "", leaf))
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        return ", ".join(f'"{e.value}"' for e in typ)
    return ""


S = TypeVar("S", bound=msgspec.Struct)


def convert(doc: dict[str, Any], kind: type[S], source: str) -> S:
    """Validate a parsed document against ``kind``; raise ConfigError listing every problem."""
    try:
        return msgspec.convert(doc, kind, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        first = str(exc)
    problems = _all_problems(doc, kind) or [_describe(first, kind)]
    raise ConfigError([f"{source}: {p}" for p in problems])


def _all_problems(doc: dict[str, Any], kind: type[msgspec.Struct]) -> list[str]:
    """msgspec stops at the first error; check list items one by one to report them all."""
    import typing

    problems: list[str] = []
    hints = typing.get_type_hints(kind)
    shallow = dict(doc)
    for key, value in doc.items():
        item_type = hints.get(key)
        if typing.get_origin(item_type) is list and isinstance(value, list):
            (elem,) = typing.get_args(item_type)
            if isinstance(elem, type) and issubclass(elem, msgspec.Struct):
                for i, item in enumerate(value):
                    try:
                        msgspec.convert(item, elem, dec_hook=_dec_hook)
                    except msgspec.ValidationError as exc:
                        problems.append(_describe(_prefix(str(exc), f"{key}[{i}]"), kind))
                if problems:
                    shallow[key] = []
    if problems:
        try:
            msgspec.convert(shallow, kind, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            text = str(exc)
            if "expected at least one" not in text:
                problems.insert(0, _describe(text, kind))
    return problems


def _prefix(err: str, prefix: str) -> str:
    m = _AT.match(err)
    assert m is not None
    path = (m.group("path") or "").lstrip(".")
    full = prefix + path if path.startswith("[") or not path else f"{prefix}.{path}"
    # Post-init errors carry their own "key: ..." prefix; fold it into the path.
    msg = m.group("msg")
    if p := re.match(r"^([a-z_]+): (.*)$", msg, re.S):
        return f"{p.group(2)} - at `$.{full}.{p.group(1)}`"
    return f"{msg} - at `$.{full}`"


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; syntax errors become ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None


def load(path: str | Path, kind: type[S]) -> S:
    """Load ``path`` as ``kind`` (e.g. MapConfig)."""
    p = Path(path)
    return convert(load_toml(p), kind, str(p))


#: What ``pierce verify`` can check, by the top-level keys that tell the kinds apart.
KINDS: dict[str, tuple[type[msgspec.Struct], Callable[[dict[str, Any]], bool]]] = {
    "map": (MapConfig, lambda doc: "rules" in doc),
}


def sniff_kind(doc: dict[str, Any]) -> str | None:
    for name, (_, test) in KINDS.items():
        if test(doc):
            return name
    return None
