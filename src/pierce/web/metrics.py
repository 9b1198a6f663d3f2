"""``GET /metrics``: the server in Prometheus text format, read from one snapshot per scrape.

Nothing is counted on the data path for this: `SnapshotCollector` turns the counters the server keeps
anyway into metric families when Prometheus asks. Per-proxy series are capped at ``MAX_PROXY_SERIES``
proxies (by name); the totals always cover all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from pierce.proxies.base import ProxyType
from pierce.snapshot import ServerSnapshot

#: Proxies with their own series (connections, bytes); the rest are only in the totals.
MAX_PROXY_SERIES = 1000

#: ``ServerSnapshot.logins`` keys of connections turned away, by the ``reason`` label they get.
REFUSALS = {"pending": "refused_pending", "source": "refused_source", "blocked": "refused_blocked"}


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], ServerSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        info = GaugeMetricFamily("pierce_info", "The server's version", labels=["version"])
        info.add_metric([snap.version], 1)
        yield info
        yield GaugeMetricFamily(
            "pierce_start_time_seconds", "Unix time the server started", value=snap.started_at
        )
        yield GaugeMetricFamily("pierce_clients", "Clients logged in now", value=len(snap.clients))
        by_type = GaugeMetricFamily("pierce_proxies", "Proxies open now, by type", labels=["type"])
        for kind in ProxyType:
            by_type.add_metric([kind.value], sum(1 for p in snap.proxies if p.type is kind))
        yield by_type
        yield GaugeMetricFamily(
            "pierce_connections",
            "Visitor connections (datagram flows for udp kinds) open now, over all proxies",
            value=sum(p.stats.connections for p in snap.proxies),
        )
        yield from _per_proxy(snap)
        yield from _logins(snap.logins)
        yield from _p2p(snap.p2p)
        stun = CounterMetricFamily("pierce_stun", "STUN responder counters since start", labels=["counter"])
        for key, value in sorted(snap.stun.items()):
            stun.add_metric([key], value)
        yield stun


def _per_proxy(snap: ServerSnapshot) -> Iterator[Metric]:
    labels = ["proxy", "type", "user"]
    live = GaugeMetricFamily("pierce_proxy_connections", "Visitor connections open now", labels=labels)
    total = CounterMetricFamily(
        "pierce_proxy_accepted_connections",
        "Visitor connections accepted since the proxy opened",
        labels=labels,
    )
    failed = CounterMetricFamily(
        "pierce_proxy_failed_connections",
        "Visitors that got no work connection in time, or whose work connection failed",
        labels=labels,
    )
    refused = CounterMetricFamily(
        "pierce_proxy_refused_connections",
        "Visitors turned away by the proxy's allow_ips / deny_ips",
        labels=labels,
    )
    bytes_in = CounterMetricFamily(
        "pierce_proxy_bytes_in", "Bytes visitor -> service since the proxy opened", labels=labels
    )
    bytes_out = CounterMetricFamily(
        "pierce_proxy_bytes_out", "Bytes service -> visitor since the proxy opened", labels=labels
    )
    for proxy in sorted(snap.proxies, key=lambda p: p.name)[:MAX_PROXY_SERIES]:
        values = [proxy.name, proxy.type.value, proxy.user]
        stats = proxy.stats
        live.add_metric(values, stats.connections)
        total.add_metric(values, stats.total_connections)
        failed.add_metric(values, stats.failed_connections)
        refused.add_metric(values, stats.refused_connections)
        bytes_in.add_metric(values, stats.bytes_in)
        bytes_out.add_metric(values, stats.bytes_out)
    yield from (live, total, failed, refused, bytes_in, bytes_out)


def _logins(logins: dict[str, int]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "pierce_logins", "Logins on the control port since start", value=logins.get("logged_in", 0)
    )
    yield CounterMetricFamily(
        "pierce_login_failures",
        "Failed logins on the control port since start (wrong token, garbage, timeouts)",
        value=logins.get("failed", 0),
    )
    yield CounterMetricFamily(
        "pierce_auth_failures",
        "Logins with a wrong token or proof since start",
        value=logins.get("auth_failed", 0),
    )
    refused = CounterMetricFamily(
        "pierce_refused_connections",
        "Control-port connections turned away before they said anything, by reason",
        labels=["reason"],
    )
    for reason, key in REFUSALS.items():
        refused.add_metric([reason], logins.get(key, 0))
    yield refused


def _p2p(p2p: dict[str, int]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "pierce_p2p_attempts", "P2P rendezvous since start", value=p2p.get("attempts", 0)
    )
    paths = CounterMetricFamily(
        "pierce_p2p_paths", "P2P visitors that took a direct path, by kind", labels=["path"]
    )
    for key, value in sorted(p2p.items()):
        if key.startswith("direct"):
            paths.add_metric([key], value)
    yield paths
    yield CounterMetricFamily(
        "pierce_p2p_relay_fallbacks", "P2P visitors left on the relay", value=p2p.get("fallbacks", 0)
    )
    yield CounterMetricFamily(
        "pierce_p2p_refused", "P2P rendezvous the owner would not try", value=p2p.get("refused", 0)
    )
    yield CounterMetricFamily(
        "pierce_p2p_failed", "P2P rendezvous that ended early", value=p2p.get("failed", 0)
    )


def registry(snapshot: Callable[[], ServerSnapshot]) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) holding only the server's collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snapshot))
    return reg
