"""The state directory: created private, loose modes tightened at start, secrets read and generated."""

from __future__ import annotations

import logging
import stat
import sys
from pathlib import Path

import pytest

from pierce.errors import LocalError
from pierce.statedir import MAX_SECRET_FILE, ensure_secret, new_secret, prepare_state_dir, read_secret

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")

log = logging.getLogger("pierce.test")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_new_state_directory_is_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    assert prepare_state_dir(state, log) == []
    assert mode(state) == 0o700


def test_loose_modes_are_tightened_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    (state / "acme").mkdir(parents=True)
    (state / "server.key").write_text("key")
    (state / "acme" / "account.key").write_text("key")
    (state / "run.sh").write_text("#!/bin/sh\n")
    (state / "private").write_text("fine")
    state.chmod(0o777)
    (state / "acme").chmod(0o755)
    (state / "server.key").chmod(0o644)
    (state / "acme" / "account.key").chmod(0o640)
    (state / "run.sh").chmod(0o755)
    (state / "private").chmod(0o600)
    (state / "link").symlink_to("/etc/hostname")

    with caplog.at_level(logging.INFO, logger="pierce"):
        changes = prepare_state_dir(state, log)

    assert (mode(state), mode(state / "acme")) == (0o700, 0o700)
    assert (mode(state / "server.key"), mode(state / "acme" / "account.key")) == (0o600, 0o600)
    assert mode(state / "run.sh") == 0o700
    assert mode(state / "private") == 0o600
    assert {(c.path, c.old_mode, c.new_mode) for c in changes} == {
        (state, 0o777, 0o700),
        (state / "acme", 0o755, 0o700),
        (state / "server.key", 0o644, 0o600),
        (state / "acme" / "account.key", 0o640, 0o600),
        (state / "run.sh", 0o755, 0o700),
    }
    lines = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "state.tightened"]
    assert f"state directory: {state / 'server.key'} was mode 0644, now 0600" in "\n".join(lines)
    assert len(lines) == 5
    assert prepare_state_dir(state, log) == []  # nothing left to do


def test_a_file_in_place_of_the_directory(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(LocalError, match="is not a directory"):
        prepare_state_dir(tmp_path / "state", log)


def test_ensure_secret_generates_once(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token"
    token, generated = ensure_secret(path)
    assert generated and len(token) == 22
    assert mode(path) == 0o600
    assert path.read_text() == token + "\n"
    assert ensure_secret(path) == (token, False)


def test_read_secret_errors(tmp_path: Path) -> None:
    path = tmp_path / "token"
    assert read_secret(path) is None
    path.write_text("  s3cret \n")
    assert read_secret(path) == "s3cret"
    path.write_text("\n")
    with pytest.raises(LocalError, match="the file is empty"):
        read_secret(path)
    path.write_bytes(b"x" * (MAX_SECRET_FILE + 1))
    with pytest.raises(LocalError, match="at most 4096 bytes"):
        read_secret(path)


def test_generated_secrets_never_start_with_a_dash() -> None:
    """A token such as ``-Xy...`` breaks ``--token TOKEN`` on a command line (one in 64 would start so)."""
    drawn = [new_secret() for _ in range(2000)]
    assert not [s for s in drawn if s.startswith("-")]
    assert len(set(drawn)) == len(drawn) and all(len(s) == 22 for s in drawn)
    assert any("-" in s for s in drawn)  # the alphabet is unchanged: only the first character is held
