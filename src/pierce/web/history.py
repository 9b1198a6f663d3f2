"""Traffic per proxy and minute over the last day, and the proxies that were seen and are gone (offline).

No I/O and no clock of its own: `TrafficHistory.observe` gets the snapshot's proxies and the time. Each
observation adds what a proxy's byte counters grew by since the last one to the current minute. The
counters count since the proxy opened, so a proxy that opened again (a client that reconnected) shows
smaller counters, and its new counts are taken whole.

Bounded: at most ``max_proxies`` proxies are tracked (when full, the proxy offline longest is forgotten
to make room, and with none offline a new proxy goes untracked: it is listed, but has no history), each
with one fixed ring of ``window_minutes`` minutes; a proxy offline for a whole window is forgotten.
"""

from __future__ import annotations

from array import array

from pierce.snapshot import ServerProxyInfo

MINUTE = 60
#: Minutes of history kept per proxy (a day).
WINDOW_MINUTES = 24 * 60
#: Proxies tracked at once (about 35 KiB each).
MAX_PROXIES = 256


class _Series:
    """One proxy: its last seen info and counters, and a ring of (minute, bytes in, bytes out)."""

    __slots__ = ("bytes_in", "bytes_out", "info", "last_seen", "minutes", "online", "seen_counts")

    def __init__(self, info: ServerProxyInfo, window: int) -> None:
        self.info = info
        self.online = True
        self.last_seen = 0.0
        #: bytes_in, bytes_out, total_connections at the last observation.
        self.seen_counts = (0, 0, 0)
        self.minutes = array("q", [-1]) * window
        self.bytes_in = array("Q", [0]) * window
        self.bytes_out = array("Q", [0]) * window

    def add(self, minute: int, bytes_in: int, bytes_out: int) -> None:
        i = minute % len(self.minutes)
        if self.minutes[i] != minute:
            self.minutes[i] = minute
            self.bytes_in[i] = self.bytes_out[i] = 0
        self.bytes_in[i] += bytes_in
        self.bytes_out[i] += bytes_out

    def points(self, first_minute: int) -> list[tuple[int, int, int]]:
        found = [
            (m, self.bytes_in[i], self.bytes_out[i]) for i, m in enumerate(self.minutes) if m >= first_minute
        ]
        return sorted(found)


class TrafficHistory:
    """The proxies seen (online and offline) and their traffic per minute."""

    def __init__(self, *, max_proxies: int = MAX_PROXIES, window_minutes: int = WINDOW_MINUTES) -> None:
        self.max_proxies = max_proxies
        self.window_minutes = window_minutes
        self._series: dict[str, _Series] = {}

    def __len__(self) -> int:
        return len(self._series)

    def observe(self, proxies: list[ServerProxyInfo], now: float) -> None:
        """Take the proxies open now (a snapshot's) at Unix time ``now``."""
        minute = int(now // MINUTE)
        online = set()
        for proxy in proxies:
            online.add(proxy.name)
            series = self._series.get(proxy.name)
            if series is None:
                if not self._make_room():
                    continue
                series = self._series[proxy.name] = _Series(proxy, self.window_minutes)
            stats = proxy.stats
            counts = (stats.bytes_in, stats.bytes_out, stats.total_connections)
            last = series.seen_counts
            if any(c < s for c, s in zip(counts, last, strict=True)):
                last = (0, 0, 0)  # opened again: its counters started over
            if counts[0] > last[0] or counts[1] > last[1]:
                series.add(minute, counts[0] - last[0], counts[1] - last[1])
            series.seen_counts = counts
            series.info = proxy
            series.online = True
            series.last_seen = now
        forget_before = now - self.window_minutes * MINUTE
        for name, series in list(self._series.items()):
            if name not in online:
                series.online = False
                if series.last_seen < forget_before:
                    del self._series[name]

    def _make_room(self) -> bool:
        if len(self._series) < self.max_proxies:
            return True
        offline = [s for s in self._series.values() if not s.online]
        if not offline:
            return False
        oldest = min(offline, key=lambda s: s.last_seen)
        del self._series[oldest.info.name]
        return True

    def offline(self) -> list[tuple[ServerProxyInfo, float]]:
        """The proxies seen that are gone: their last info and when they were last seen, by name."""
        gone = [(s.info, s.last_seen) for s in self._series.values() if not s.online]
        return sorted(gone, key=lambda item: item[0].name)

    def last_seen(self, name: str) -> float | None:
        series = self._series.get(name)
        return series.last_seen if series is not None else None

    def traffic(self, name: str, now: float) -> list[tuple[int, int, int]] | None:
        """``(minute start, bytes in, bytes out)`` of each minute with traffic in the window, oldest
        first; None for a proxy not tracked."""
        series = self._series.get(name)
        if series is None:
            return None
        first = int(now // MINUTE) - self.window_minutes + 1
        return [(m * MINUTE, bytes_in, bytes_out) for m, bytes_in, bytes_out in series.points(first)]

    def forget_offline(self) -> list[str]:
        """Forget the proxies that are gone; returns their names."""
        gone = sorted(name for name, s in self._series.items() if not s.online)
        for name in gone:
            del self._series[name]
        return gone
