"""Reading an frp config file: its format (TOML, YAML, JSON or legacy INI) and its role (frpc or frps)."""

from __future__ import annotations

import configparser
import enum
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pierce.errors import ConfigError

#: frp refuses bigger config files too; a converter has no reason to read more.
MAX_FILE_BYTES = 4 * 1024 * 1024

#: frp's own test for a legacy file: a ``[common]`` section.
_COMMON = re.compile(r"^\s*\[common\]\s*$", re.MULTILINE)


class Format(enum.Enum):
    TOML = "toml"
    YAML = "yaml"
    JSON = "json"
    INI = "ini"


class Role(enum.Enum):
    CLIENT = "client"  # frpc
    SERVER = "server"  # frps


_BY_SUFFIX = {
    ".toml": Format.TOML,
    ".yaml": Format.YAML,
    ".yml": Format.YAML,
    ".json": Format.JSON,
    ".ini": Format.INI,
}

#: Top-level keys only one role has, in the current format and in legacy ``[common]``.
_CLIENT_KEYS = frozenset(
    {"serverAddr", "serverPort", "proxies", "visitors", "loginFailExit", "start", "natHoleStunServer"}
    | {"server_addr", "server_port", "login_fail_exit", "admin_port", "pool_count"}
)
_SERVER_KEYS = frozenset(
    {"bindPort", "bindAddr", "vhostHTTPPort", "vhostHTTPSPort", "subDomainHost", "allowPorts"}
    | {"maxPortsPerClient", "proxyBindAddr", "tcpmuxHTTPConnectPort", "kcpBindPort", "quicBindPort"}
    | {"bind_port", "bind_addr", "vhost_http_port", "vhost_https_port", "subdomain_host", "allow_ports"}
    | {"max_ports_per_client", "dashboard_port", "max_pool_count", "tcpmux_httpconnect_port"}
)


def read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; not a config file"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None


def detect_format(path: Path, text: str) -> Format:
    """INI when the file has a ``[common]`` section (as frp decides), else by suffix, else by content."""
    if _COMMON.search(text):
        return Format.INI
    if path.suffix.lower() in _BY_SUFFIX:
        return _BY_SUFFIX[path.suffix.lower()]
    if text.lstrip().startswith("{"):
        return Format.JSON
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return Format.YAML
    return Format.TOML


def parse(path: Path, text: str, fmt: Format) -> Any:
    """The document in ``text``: a dict for TOML/YAML/JSON, a ConfigParser for INI."""
    try:
        match fmt:
            case Format.TOML:
                return tomllib.loads(text)
            case Format.JSON:
                return json.loads(text)
            case Format.YAML:
                import yaml  # only for frp's YAML files: a client checking its own TOML never loads it

                # frp's YAML is plain data: the safe loader (no tags, no objects) is all it takes
                try:
                    return yaml.safe_load(text)
                except yaml.YAMLError as exc:
                    raise ConfigError([f"{path}: YAML syntax error: {' '.join(str(exc).split())}"]) from None
            case Format.INI:
                # frp reads INI without interpolation and with case-sensitive keys (header_X-From)
                ini = configparser.RawConfigParser(strict=True, default_section="\x00none")
                ini.optionxform = str  # type: ignore[assignment,method-assign]
                ini.read_string(text, source=str(path))
                return ini
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: JSON syntax error: {exc}"]) from None
    except configparser.Error as exc:
        raise ConfigError([f"{path}: INI syntax error: {' '.join(str(exc).split())}"]) from None


def detect_role(path: Path, top: dict[str, Any]) -> Role:
    """frpc or frps, by the top-level keys only one of them has."""
    keys = set(top)
    client, server = bool(keys & _CLIENT_KEYS), bool(keys & _SERVER_KEYS)
    if client != server:
        return Role.CLIENT if client else Role.SERVER
    raise ConfigError(
        [f"{path}: cannot tell an frpc config from an frps config by its keys; pass --kind client or server"]
    )
