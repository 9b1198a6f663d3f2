"""``pierce import-frp``: frpc/frps configs (TOML, YAML, JSON, legacy INI) converted to pierce's TOML.

The layers, each in its own module: `formats` reads a file and tells its format and role (frpc or frps);
`legacy` rewrites a legacy INI file into the shape of frp's current format, remembering each key's
original name; `mapping` turns that shape into a pierce document and a warning for every option it
cannot map; `emit` writes the document as TOML. Every leaf of the input is either mapped or warned about
(`mapping.Source` checks that at the end), so nothing is dropped silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pierce.frpimport.sniff import is_frp_file

if TYPE_CHECKING:
    from pierce.frpimport.convert import Converted, convert_file

__all__ = ["Converted", "convert_file", "is_frp_file"]


def __getattr__(name: str) -> Any:
    """The converter loads on first use: a client only asks `is_frp_file` of its own config file."""
    if name in ("Converted", "convert_file"):
        from pierce.frpimport import convert

        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
