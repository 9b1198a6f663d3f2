"""The state directory of a server or a client: private to its owner, and the secrets kept in it.

The directory holds keys and tokens (the server's certificate key and generated token, ACME account
keys, the client's admin token and its pinned server certificates). It is created ``0700``; at every
start `prepare_state_dir` takes group and other permissions off the directory and everything in it
(a directory made by hand with ``mkdir`` is usually ``0755``, files in it ``0644``) and says what it
changed. Symbolic links are left alone. Secrets are written whole and ``0600`` by `write_private`.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

import msgspec

from pierce.errors import LocalError
from pierce.logs import event
from pierce.tls import default_state_dir, make_private_dir, write_private

#: Bytes of randomness in a generated secret (token_urlsafe makes 22 characters of them: 128 bits).
SECRET_BYTES = 16
#: Longest secret file read back (a token, a password): anything larger is not one of ours.
MAX_SECRET_FILE = 4096


class Tightened(msgspec.Struct, frozen=True):
    """One path whose permissions `prepare_state_dir` narrowed (or failed to)."""

    path: Path
    old_mode: int
    new_mode: int
    #: Why the change failed (the path is not ours, ...); empty when it was made.
    error: str = ""


def state_dir_for(role: str, configured: str) -> Path:
    """The state directory a config names (``state_dir``), or the default of `role`."""
    return Path(configured).expanduser() if configured else default_state_dir(role)


def prepare_state_dir(path: Path, logger: logging.Logger) -> list[Tightened]:
    """Create `path` ``0700``, or take group and other permissions off it and everything inside.

    Each change is logged (``state.tightened``; ``state.loose`` when the mode cannot be changed, e.g. a
    file of another user) and returned. Raises `LocalError` when the directory cannot be created or is
    not a directory.
    """
    if not path.exists():
        make_private_dir(path)
        return []
    if not path.is_dir():
        raise LocalError(f"state directory {path} is not a directory")
    changes = [c for c in (_tighten(path),) if c is not None]
    for root, dirs, files in os.walk(path):  # does not follow symbolic links to directories
        for name in [*dirs, *files]:
            change = _tighten(Path(root) / name)
            if change is not None:
                changes.append(change)
    for change in changes:
        old, new = f"{change.old_mode:04o}", f"{change.new_mode:04o}"
        if change.error:
            event(
                logger,
                logging.WARNING,
                "state.loose",
                f"state directory: {change.path} is mode {old}, readable by others, and cannot be made "
                f"private: {change.error}",
                path=str(change.path),
                error=change.error,
            )
        else:
            event(
                logger,
                logging.WARNING,
                "state.tightened",
                f"state directory: {change.path} was mode {old}, now {new} (keys and tokens are kept "
                "here: only their owner may read them)",
                path=str(change.path),
                old_mode=old,
                new_mode=new,
            )
    return changes


def _tighten(path: Path) -> Tightened | None:
    try:
        st = path.lstat()
    except OSError:
        return None  # gone meanwhile
    if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return None
    old = stat.S_IMODE(st.st_mode)
    new = old & ~0o077
    if stat.S_ISDIR(st.st_mode):
        new |= 0o700  # the owner must be able to enter it
    if new == old:
        return None
    try:
        path.chmod(new)
    except OSError as exc:
        return Tightened(path, old, new, exc.strerror or str(exc))
    return Tightened(path, old, new)


def read_secret(path: Path) -> str | None:
    """The secret kept in `path` (surrounding whitespace removed), or None when the file is absent.

    Raises `LocalError` when it cannot be read, is empty, or is too large to be a secret.
    """
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_SECRET_FILE:
        raise LocalError(f"{path}: expected a secret of at most {MAX_SECRET_FILE} bytes, the file is larger")
    try:
        text = data.decode().strip()
    except UnicodeDecodeError:
        raise LocalError(f"{path}: expected a secret in UTF-8 text") from None
    if not text:
        raise LocalError(f"{path}: the file is empty; delete it to have a new secret generated")
    return text


def ensure_secret(path: Path) -> tuple[str, bool]:
    """The secret in `path`, or a new random one (url-safe, 128 bits) written there ``0600``.

    Returns the secret and whether it was generated now.
    """
    existing = read_secret(path)
    if existing is not None:
        return existing, False
    make_private_dir(path.parent)
    value = new_secret()
    write_private(path, (value + "\n").encode())
    return value, True


def new_secret(nbytes: int = SECRET_BYTES) -> str:
    """A random url-safe secret that does not start with ``-``: one in 64 would, and ``--token -Xy...``
    on a command line is then read as a missing value followed by an unknown option."""
    while (value := secrets.token_urlsafe(nbytes)).startswith("-"):
        pass
    return value
