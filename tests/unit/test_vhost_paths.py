"""Request paths: one canonical target is routed and forwarded; what has no single reading is refused."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pierce.vhost.paths import UnsafeTarget, canonical_path, canonical_target
from pierce.vhost.router import InvalidLocation, normalize_location


@pytest.mark.parametrize(
    ("target", "forwarded", "path"),
    [
        (b"/", b"/", b"/"),
        (b"/a/b?x=/../y", b"/a/b?x=/../y", b"/a/b"),
        (b"/a/b?q=%zz#", None, None),
        (b"/a/../b", b"/b", b"/b"),
        (b"/a/./b/", b"/a/b/", b"/a/b/"),
        (b"//a//b", b"/a/b", b"/a/b"),
        (b"/a/..", b"/", b"/"),
        (b"/a/b/..", b"/a/", b"/a/"),
        (b"/a/b/.?q", b"/a/b/?q", b"/a/b/"),
        (b"/%61dmin/x", b"/admin/x", b"/admin/x"),
        (b"/x/%2e%2E/admin", b"/admin", b"/admin"),
        (b"/x/%2E./admin?a=%2e%2e", b"/admin?a=%2e%2e", b"/admin"),
        (b"/caf%c3%a9", b"/caf%C3%A9", b"/caf%C3%A9"),
        ("/café".encode(), b"/caf%C3%A9", b"/caf%C3%A9"),
        (b"/a%20b%3f", b"/a%20b%3F", b"/a%20b%3F"),
        (b"/100%25", b"/100%25", b"/100%25"),
        (b"/a/...", b"/a/...", b"/a/..."),
        (b"/a/.b/..c", b"/a/.b/..c", b"/a/.b/..c"),
    ],
)
def test_canonical_target(target: bytes, forwarded: bytes | None, path: bytes | None) -> None:
    if forwarded is None:
        with pytest.raises(UnsafeTarget):
            canonical_target(target)
        return
    assert canonical_target(target) == (forwarded, path)


@pytest.mark.parametrize(
    "target",
    [
        b"/admin/secret.txt#/../../x",
        b"/p#",
        b"/p?q#f",
        b"/../etc",
        b"/%2e%2e/etc",
        b"/a/../../etc",
        b"/a%2fb",
        b"/a%2Fb",
        b"/a%5cb",
        b"/a\\b",
        b"/a%00",
        b"/a%2561",
        b"/a%",
        b"/a%4",
        b"/a%zz",
        b"/x/..;/admin",
        b"/x/.;/admin",
        b"/x/..%3b/admin",
        b"/x/..%3B/admin",
    ],
)
def test_targets_without_one_reading_are_refused(target: bytes) -> None:
    with pytest.raises(UnsafeTarget):
        canonical_target(target)


def test_a_canonical_target_is_returned_as_it_is() -> None:
    target = b"/static/app.js?v=%2e%2e/#"[:-1]
    forwarded, path = canonical_target(target)
    assert forwarded is target
    assert path == b"/static/app.js"


_PATH_BYTES = st.sampled_from(
    [b"/", b".", b"..", b"a", b"%2e", b"%2E", b"%61", b"%25", b"%2f", b"\\", b";", b"%3b", b"%c3"]
)


@given(st.lists(_PATH_BYTES, max_size=12))
def test_canonical_paths_are_fixed_points_and_decode_to_themselves(parts: list[bytes]) -> None:
    """Canonical paths do not change when made canonical again, and one decoding gives a path with the
    same segments: what a service reads is what was routed."""
    try:
        path = canonical_path(b"/" + b"".join(parts))
    except UnsafeTarget:
        return
    assert canonical_path(path) == path
    decoded = unquote_to_bytes(path)
    assert b"\\" not in decoded
    assert decoded.split(b"/") == [unquote_to_bytes(s) for s in path.split(b"/")]
    assert not any(s in (b".", b"..") for s in decoded.split(b"/"))
    assert b"//" not in path
    assert not re.search(rb"%25[0-9A-F]{2}", path)


def test_locations_take_the_same_form() -> None:
    assert normalize_location("/café/") == "/caf%C3%A9"
    assert normalize_location("/%61pi") == "/api"
    assert normalize_location("//a//b/") == "/a/b"
    for bad in ("/a/../../b", "/a%2fb", "/a\\b"):
        with pytest.raises(InvalidLocation, match="not one unambiguous path"):
            normalize_location(bad)
