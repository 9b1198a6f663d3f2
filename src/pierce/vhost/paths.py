"""Request paths, sans-I/O: the one form of a request target that is both routed and forwarded.

Why one form
------------
A reverse proxy that routes on one reading of a path and forwards another lets a visitor pick a
location by the first and a file by the second: ``/admin/secret#/../../x`` routed as ``/`` (dot
segments resolved across the fragment) but served as ``/admin/secret``; ``//admin`` or ``/x/..%2fadmin``
routed outside ``/admin`` and served inside it by a service that merges slashes or decodes ``%2F``.
So :func:`canonical_target` makes one canonical target; the router matches its path and the very same
bytes go to the service. Nothing in it can be read as a different path by a later decoding step.

The rules, in order (nginx-like where nginx has a rule: it decodes, merges slashes and resolves dot
segments before matching locations, and answers 400 to a path that climbs above the root; unlike nginx
with a bare ``proxy_pass``, pierce then forwards what it matched, not the raw target):

1. Refused with :class:`UnsafeTarget` (the engine answers 400): a ``#`` anywhere (no fragment belongs
   in a request target, RFC 9112 section 3.2), a backslash or ``%5C`` (a separator on some servers),
   ``%2F`` (a separator after decoding), ``%00``, ``%25`` followed by two hex digits (a double encoding,
   a different path after a second decoding), a ``%`` without two hex digits, a ``..`` that climbs above
   ``/``, and segments ``.;`` / ``..;`` (``..%3B`` too), which servlet containers treat as dot segments.
2. Percent-escapes of unreserved characters (letters, digits, ``-._~``) are decoded, every other escape
   is kept with upper-case hex, and bytes outside ASCII are percent-encoded (RFC 3986 section 6.2.2):
   equivalent spellings become one.
3. Dot segments are resolved and runs of ``/`` merged (RFC 3986 section 5.2.4, nginx's merge_slashes);
   a trailing ``/`` is kept.

The query is not routed and passes unchanged. A target without ``%``, ``\\``, ``#``, ``/.``, ``//`` and
non-ASCII bytes in its path is already canonical and returned as it is (the common case costs a few
byte scans). Locations of the routing table are made canonical by the same rules
(:func:`canonical_path`), so ``/café`` and ``/caf%C3%A9`` are one location.
"""

from __future__ import annotations

import re

from pierce.errors import RemoteError

__all__ = ["UnsafeTarget", "canonical_path", "canonical_target"]


class UnsafeTarget(RemoteError):
    """A request target that cannot be given one unambiguous path (answered 400)."""


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Escapes refused outright: they decode to a path separator, or to NUL.
_REFUSED_ESCAPES = {0x2F: "an encoded '/' (%2F)", 0x5C: "an encoded '\\' (%5C)", 0x00: "an encoded NUL (%00)"}
#: An escape, a '%' that starts none, a byte outside ASCII.
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})|(%)|[\x80-\xff]")
#: An escaped '%' before two hex digits: a second decoding would read another escape.
_DOUBLE = re.compile(rb"%25[0-9A-Fa-f]{2}")
#: A segment that servlet containers read as a dot segment with parameters: ``.;x``, ``..;x``.
_DOT_PARAMETERS = re.compile(rb"/\.\.?(?:;|%3B)")


def canonical_target(target: bytes) -> tuple[bytes, bytes]:
    """``(target, path)``: the origin-form ``target`` to forward and its ``path`` (no query) to route by.

    ``target`` must start with ``/``. Raises :class:`UnsafeTarget` (see the module docstring).
    """
    end = target.find(b"?")
    if end < 0:
        end = len(target)
    if (
        target.isascii()
        and target.find(b"#") < 0
        and target.find(b"%", 0, end) < 0
        and target.find(b"/.", 0, end) < 0
        and target.find(b"//", 0, end) < 0
        and target.find(b"\\", 0, end) < 0
    ):
        return target, target if end == len(target) else target[:end]
    if b"#" in target:
        raise UnsafeTarget("a '#' in the request target")
    path = canonical_path(target[:end])
    return path + target[end:], path


def canonical_path(path: bytes) -> bytes:
    """The canonical form of an absolute path (no query); raises :class:`UnsafeTarget`."""
    if not path.startswith(b"/"):
        raise UnsafeTarget("a path that does not start with '/'")
    if b"#" in path:
        raise UnsafeTarget("a '#' in the path")
    if b"\\" in path:
        raise UnsafeTarget("a backslash in the path")
    if b"%" in path or not path.isascii():
        path = _ESCAPE.sub(_escape, path)
        if _DOUBLE.search(path):  # checked after decoding: "%25%61b" decodes to "%25ab"
            raise UnsafeTarget("a double-encoded escape (%25 and two hex digits)")
    if b"/." in path or b"//" in path:
        path = _resolve(path)
        if _DOT_PARAMETERS.search(path):
            raise UnsafeTarget("a '.;' or '..;' segment (a dot segment to some servers)")
    return path


def _escape(match: re.Match[bytes]) -> bytes:
    digits = match.group(1)
    if digits is not None:
        value = int(digits, 16)
        if value in _UNRESERVED:
            return bytes((value,))
        refused = _REFUSED_ESCAPES.get(value)
        if refused is not None:
            raise UnsafeTarget(f"{refused} in the path")
        return b"%%%02X" % value
    if match.group(2):
        raise UnsafeTarget("a '%' without two hex digits")
    return b"%%%02X" % match.group(0)[0]


def _resolve(path: bytes) -> bytes:
    """Dot segments resolved, empty segments dropped, a trailing ``/`` kept (``/a/b/..`` -> ``/a/``)."""
    segments = path.split(b"/")
    kept: list[bytes] = []
    for segment in segments[1:]:
        if segment == b"" or segment == b".":
            continue
        if segment == b"..":
            if not kept:
                raise UnsafeTarget("a '..' that climbs above the root")
            kept.pop()
        else:
            kept.append(segment)
    if not kept:
        return b"/"
    trailing = segments[-1] in (b"", b".", b"..")
    return b"/" + b"/".join(kept) + (b"/" if trailing else b"")
