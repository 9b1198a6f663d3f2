"""An frp document being converted: which of its options have been dealt with, and the warnings so far.

Every leaf of the document (a scalar, a list of scalars, an empty table) must end up either read by the
mapping (`get`) or warned about (`warn`); `finish` warns about whatever is left, so nothing is dropped
silently, including keys this converter has never heard of.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pierce.errors import KeyPath, format_key_path


def leaves(node: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, (*path, str(key)))
    elif isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        for i, item in enumerate(node):
            yield from leaves(item, (*path, i))
    else:
        yield path, node


def _under(leaf: KeyPath, path: KeyPath) -> bool:
    return leaf[: len(path)] == path


class Source:
    def __init__(self, doc: dict[str, Any], file: str, origin: dict[KeyPath, str] | None = None) -> None:
        self.doc = doc
        self.file = file
        #: Legacy INI: the name each leaf had in the file (``[ssh] local_port``).
        self.origin = origin or {}
        self.pending: dict[KeyPath, Any] = dict(leaves(doc))
        self.warnings: list[str] = []
        #: Options whose behaviour pierce has built in; they become comments in the output.
        self.notes: list[str] = []

    def where(self, path: KeyPath) -> str:
        if path in self.origin:
            return self.origin[path]
        named = {where for leaf, where in self.origin.items() if _under(leaf, path)}
        if (*path, "name") in self.origin:  # a legacy section: "[ssh]"
            return self.origin[(*path, "name")]
        if len(named) == 1:
            return named.pop()
        text = format_key_path(path) or "(top level)"
        if len(path) >= 2 and path[0] in ("proxies", "visitors"):
            name = self.lookup((*path[:2], "name"))
            if isinstance(name, str):
                text += f' ({"proxy" if path[0] == "proxies" else "visitor"} "{name}")'
        return text

    def lookup(self, path: KeyPath) -> Any:
        """The value at ``path`` without taking it; None when absent."""
        node: Any = self.doc
        for part in path:
            in_list = isinstance(part, int) and isinstance(node, list) and part < len(node)
            if in_list or (isinstance(node, dict) and part in node):
                node = node[part]
            else:
                return None
        return node

    def has(self, *path: str | int) -> bool:
        return self.lookup(path) is not None

    def get(self, *path: str | int) -> Any:
        """Take the value at ``path`` (a leaf or a whole subtree): it counts as mapped."""
        for leaf in [leaf for leaf in self.pending if _under(leaf, path)]:
            del self.pending[leaf]
        return self.lookup(path)

    def warn(self, path: KeyPath, reason: str) -> None:
        """Every leaf still pending under ``path`` is not converted, for ``reason``."""
        for leaf in [leaf for leaf in self.pending if _under(leaf, path)]:
            del self.pending[leaf]
            self.add_warning(self.where(leaf), reason)

    def drop(self, path: KeyPath, reason: str) -> None:
        """A whole table (a proxy, a visitor) is not converted: one warning naming all its options."""
        under = [leaf for leaf in self.pending if _under(leaf, path)]
        for leaf in under:
            del self.pending[leaf]
        if under:
            names = sorted({self.origin.get(leaf, format_key_path(leaf[len(path) :])) for leaf in under})
            self.add_warning(self.where(path), f"{reason}; not converted: {', '.join(names)}")

    def add_warning(self, where: str, reason: str) -> None:
        text = f"{self.file}: {where}: {reason}"
        if text not in self.warnings:  # several INI values from one key (allow_ports)
            self.warnings.append(text)

    def note(self, path: KeyPath, text: str) -> None:
        """``path`` is mapped to behaviour pierce always has; say so in the output."""
        if not any(_under(leaf, path) for leaf in self.pending):
            return  # absent, or already mapped or warned about
        self.get(*path)
        line = f"{self.where(path)}: {text}"
        if line not in self.notes:
            self.notes.append(line)

    def finish(self) -> None:
        for leaf in list(self.pending):
            self.warn(leaf, "not an frp option this converter knows; not converted")
