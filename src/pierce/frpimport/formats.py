"""Reading an frp config file: its format (TOML, YAML, JSON or legacy INI) and its role (frpc or frps).

`pierce.frpimport.sniff` tells an frp file from pierce's: all a client starting from its own TOML file
needs of this package.
"""

from __future__ import annotations

import enum
import tomllib
from pathlib import Path
from typing import Any

from pierce.errors import ConfigError
from pierce.frpimport.sniff import COMMON_SECTION


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


def detect_format(path: Path, text: str) -> Format:
    """INI when the file has a ``[common]`` section (as frp decides), else by suffix, else by content."""
    if COMMON_SECTION.search(text):
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
    match fmt:
        case Format.TOML:
            try:
                return tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
        case Format.JSON:
            import json  # each parser loads with the first file of its format

            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError([f"{path}: JSON syntax error: {exc}"]) from None
        case Format.YAML:
            import yaml  # only for frp's YAML files: a client checking its own TOML never loads it

            # frp's YAML is plain data: the safe loader (no tags, no objects) is all it takes
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError([f"{path}: YAML syntax error: {' '.join(str(exc).split())}"]) from None
        case Format.INI:
            import configparser

            # frp reads INI without interpolation and with case-sensitive keys (header_X-From)
            ini = configparser.RawConfigParser(strict=True, default_section="\x00none")
            ini.optionxform = str  # type: ignore[assignment,method-assign]
            try:
                ini.read_string(text, source=str(path))
            except configparser.Error as exc:
                raise ConfigError([f"{path}: INI syntax error: {' '.join(str(exc).split())}"]) from None
            return ini


def detect_role(path: Path, top: dict[str, Any]) -> Role:
    """frpc or frps, by the top-level keys only one of them has."""
    keys = set(top)
    client, server = bool(keys & _CLIENT_KEYS), bool(keys & _SERVER_KEYS)
    if client != server:
        return Role.CLIENT if client else Role.SERVER
    raise ConfigError(
        [f"{path}: cannot tell an frpc config from an frps config by its keys; pass --kind client or server"]
    )
