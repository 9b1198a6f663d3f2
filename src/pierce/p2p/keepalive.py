"""How often a direct path sends keepalives: below the NAT's idle timer.

``[p2p] keepalive_s`` (15 s) suits the NATs people meet. ``pierce nat --lifetime`` measures the idle
lifetime of this network's UDP mappings and records it in the client's state directory, keyed by the
public address it was measured behind; a direct path whose server-reflexive address is that one then
keeps alive at half the measured lifetime when that is shorter (never below `MIN_KEEPALIVE_S`). A laptop
that moved to another network finds no record for its new address and uses the configured value.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import msgspec

from pierce.nat.punch import PunchSettings
from pierce.p2p.settings import PathSettings
from pierce.tls import make_private_dir, write_private

log = logging.getLogger(__name__)

FILE_NAME = "nat-lifetime.json"
#: Networks remembered (the newest measurements are kept).
MAX_RECORDS = 32
#: The shortest keepalive a measured lifetime may ask for, in seconds.
MIN_KEEPALIVE_S = 1.0
#: Bytes read from the record file at most.
MAX_FILE_BYTES = 64 * 1024


def record(state_dir: Path, public_ip: str, lifetime_s: float) -> Path:
    """Remember ``lifetime_s`` for mappings behind ``public_ip``; returns the file written."""
    records = load(state_dir)
    records.pop(public_ip, None)
    records[public_ip] = lifetime_s
    newest = dict(list(records.items())[-MAX_RECORDS:])
    path = state_dir / FILE_NAME
    doc = {ip: {"mapping_lifetime_s": s, "measured_at": int(time.time())} for ip, s in newest.items()}
    make_private_dir(state_dir)
    write_private(path, json.dumps(doc, indent=1).encode())
    return path


def load(state_dir: Path) -> dict[str, float]:
    """The recorded lifetimes by public address (empty when there is no usable record)."""
    path = state_dir / FILE_NAME
    try:
        with path.open("rb") as f:
            doc = json.loads(f.read(MAX_FILE_BYTES))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: ignored (%s); the configured keepalive applies", path, exc)
        return {}
    found: dict[str, float] = {}
    if isinstance(doc, dict):
        for ip, entry in list(doc.items())[-MAX_RECORDS:]:
            seconds = entry.get("mapping_lifetime_s") if isinstance(entry, dict) else None
            if isinstance(seconds, int | float) and seconds > 0:
                found[str(ip)] = float(seconds)
    return found


def keepalive_for(configured_s: float, lifetime_s: float | None) -> float:
    """The keepalive interval: the configured one, or half a shorter measured lifetime."""
    if lifetime_s is None:
        return configured_s
    return max(MIN_KEEPALIVE_S, min(configured_s, lifetime_s / 2))


def tuned(
    settings: PunchSettings,
    path: PathSettings,
    lifetimes: dict[str, float],
    reflexive: tuple[str, int] | None,
) -> tuple[PunchSettings, PathSettings]:
    """``settings`` and ``path`` for a path from the public address ``reflexive``: a lifetime recorded
    for it in ``lifetimes`` (`load`) shortens the keepalive."""
    lifetime_s = lifetimes.get(reflexive[0]) if reflexive is not None else None
    keepalive = keepalive_for(settings.keepalive_s, lifetime_s)
    if keepalive == settings.keepalive_s:
        return settings, path
    return (
        msgspec.structs.replace(settings, keepalive_s=keepalive),
        msgspec.structs.replace(path, keepalive_s=keepalive),
    )
