"""systemd units for the server and the client, shipped in the package (``pierce systemd-unit``).

The files say ``/usr/local/bin/pierce``; `unit` puts the entry point that is running in its place, so
a venv or pipx install gets a unit that starts the same pierce.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROLES = ("server", "client")
#: The entry point the shipped files name.
SHIPPED_PATH = "/usr/local/bin/pierce"
#: Directories the units' ProtectHome= hides from the service.
HIDDEN = (Path("/home"), Path("/root"), Path("/run/user"))


def shipped(role: str) -> str:
    """The unit file of ``role`` as shipped."""
    return resources.files(__package__).joinpath(f"pierce-{role}.service").read_text(encoding="utf-8")


def entry_point() -> str:
    """How to start the pierce that is running: its ``pierce`` script, else its interpreter with ``-m``."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "pierce" and argv0.is_absolute():
        return str(argv0)
    beside = Path(sys.executable).parent / "pierce"
    if beside.is_file():
        return str(beside)
    return f"{sys.executable} -m pierce"


def unit(role: str, pierce: str | None = None) -> str:
    """The unit file of ``role`` starting ``pierce`` (default: the running entry point)."""
    return shipped(role).replace(SHIPPED_PATH, pierce or entry_point())


def hidden_by_protect_home(pierce: str) -> bool:
    """The entry point lies where the unit's ProtectHome= makes it invisible to the service."""
    path = Path(pierce.split()[0])
    return any(path.is_relative_to(hidden) for hidden in HIDDEN)
