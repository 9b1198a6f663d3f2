"""Whether a config file is frp's rather than pierce's (`is_frp_file`), and reading one within bounds.

This is all a client starting from its own TOML file needs of `pierce.frpimport`: the formats, the
parsers and the converter load only when an frp file is read.
"""

from __future__ import annotations

import re
from pathlib import Path

from pierce.errors import ConfigError

#: frp refuses bigger config files too; a converter has no reason to read more.
MAX_FILE_BYTES = 4 * 1024 * 1024

#: frp's own test for a legacy file: a ``[common]`` section.
COMMON_SECTION = re.compile(r"^\s*\[common\]\s*$", re.MULTILINE)
#: A TOML file is frp's when it has keys that only frp's current format uses (pierce's are snake_case).
_FRP_TOML_KEYS = re.compile(
    r"^\s*(serverAddr|serverPort|bindPort|\[\[proxies\]\][^\[]*?localPort)\s*=", re.M | re.S
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


def is_frp_file(path: Path) -> bool:
    """Whether ``path`` is an frp config rather than pierce's: legacy INI (``[common]``), a YAML/JSON/INI
    suffix, or TOML with frp's camelCase keys. Unreadable files are not (the normal loader reports them)."""
    if path.suffix.lower() in (".ini", ".yaml", ".yml", ".json"):
        return True
    try:
        text = read_text(path)
    except ConfigError:
        return False
    return COMMON_SECTION.search(text) is not None or bool(_FRP_TOML_KEYS.search(text))
