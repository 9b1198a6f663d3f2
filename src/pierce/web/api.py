"""The JSON API's response types, and how each is made from a snapshot (and the traffic history).

The types are msgspec Structs: the handlers encode them, and `pierce.web.openapi` generates the OpenAPI
schemas from them, so the document cannot drift from what is served. Field names are a contract, as in
`pierce.snapshot`: add fields, rename none.
"""

from __future__ import annotations

import enum
from collections import Counter

import msgspec

from pierce.proxies.base import ProxyType
from pierce.snapshot import (
    ClientInfo,
    ConnectionPath,
    ProxyStats,
    ServerProxyInfo,
    ServerSnapshot,
    UserLimitsInfo,
)
from pierce.web.history import MINUTE, TrafficHistory


class ProxyStatus(enum.StrEnum):
    #: Open on the server now.
    ONLINE = "online"
    #: Seen open earlier; its client is gone or closed it (kept until ``DELETE /api/proxies/offline``,
    #: or for a day).
    OFFLINE = "offline"


class ServerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/serverinfo``: the server and its totals."""

    version: str
    #: The control port's address.
    address: str
    #: SHA-256 fingerprint of the server certificate (what clients pin).
    fingerprint: str
    #: Ports of the shared fronts that are on, by config key.
    ports: dict[str, int]
    #: Unix time the server started.
    started_at: float
    uptime_s: float
    clients: int
    #: Proxies open now, in all and by type.
    proxies: int
    proxies_by_type: dict[str, int]
    #: Visitor connections (or datagram flows) open now, over all proxies.
    connections: int
    #: Bytes over all proxies open now, since each opened (visitor -> service, service -> visitor).
    bytes_in: int
    bytes_out: int
    #: Control-port counters since start (`pierce.snapshot.ServerSnapshot.logins`).
    logins: dict[str, int]
    #: P2P rendezvous counters since start.
    p2p: dict[str, int]
    #: STUN responder counters since start; empty when off.
    stun: dict[str, int]


class UserInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One configured user, what its clients hold now, and its limits (``[[users]]``; 0 and empty:
    none beyond the server's)."""

    name: str
    #: Clients logged in now (``max_clients`` counts them).
    clients: int
    #: Proxies open now over all its clients (``max_proxies`` counts them).
    proxies: int
    connections: int
    bytes_in: int
    bytes_out: int
    max_clients: int = 0
    max_proxies: int = 0
    #: Ports or ranges its proxies may take, on top of the server's allow_ports.
    allow_ports: list[str] = []
    #: Bytes per second each way over all its proxies (0: no limit).
    bandwidth_limit: int = 0
    #: Datagrams of its UDP proxies the server dropped over ``bandwidth_limit`` since start, towards the
    #: services and towards the visitors.
    dropped_datagrams_in: int = 0
    dropped_datagrams_out: int = 0


class ProxyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One proxy: open now, or seen open earlier (offline: its last known state)."""

    name: str
    type: ProxyType
    status: ProxyStatus
    client_id: str
    user: str
    #: The public port visitors reach (a shared front's port for web proxies; 0 for secret ones).
    remote_port: int
    urls: list[str]
    path: ConnectionPath
    stats: ProxyStats
    #: Unix time it was last seen open (offline proxies; for online ones the time of this answer).
    last_seen: float
    #: Its load-balancing group ("": none), and the members the group has (offline: had) at the time.
    group: str = ""
    group_members: int = 0
    #: Where the owning client says it is also reachable without the server (``ip:port``: a port mapping
    #: on its router, ``direct = "auto"``); empty: through the server only.
    direct: str = ""


class TrafficPoint(msgspec.Struct, frozen=True, kw_only=True):
    #: Unix time the minute starts.
    t: int
    bytes_in: int
    bytes_out: int


class ProxyTraffic(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/proxies/{name}/traffic``: bytes per minute over the last day, oldest first; minutes
    without traffic are left out."""

    name: str
    interval_s: int
    points: list[TrafficPoint]


class Removed(msgspec.Struct, frozen=True, kw_only=True):
    """``DELETE /api/proxies/offline``: the names forgotten."""

    removed: list[str]


class DashboardState(msgspec.Struct, frozen=True, kw_only=True):
    """One ``state`` event of ``GET /api/events`` (the dashboard's live feed)."""

    serverinfo: ServerInfo
    clients: list[ClientInfo]
    proxies: list[ProxyInfo]


class ApiError(msgspec.Struct, frozen=True, kw_only=True):
    error: str


def server_info(snap: ServerSnapshot) -> ServerInfo:
    by_type = Counter(str(p.type) for p in snap.proxies)
    return ServerInfo(
        version=snap.version,
        address=snap.address,
        fingerprint=snap.fingerprint,
        ports=snap.ports,
        started_at=snap.started_at,
        uptime_s=snap.uptime_s,
        clients=len(snap.clients),
        proxies=len(snap.proxies),
        proxies_by_type={t.value: by_type.get(t.value, 0) for t in ProxyType},
        connections=sum(p.stats.connections for p in snap.proxies),
        bytes_in=sum(p.stats.bytes_in for p in snap.proxies),
        bytes_out=sum(p.stats.bytes_out for p in snap.proxies),
        logins=snap.logins,
        p2p=snap.p2p,
        stun=snap.stun,
    )


def users(snap: ServerSnapshot) -> list[UserInfo]:
    names = sorted({*snap.users, *(c.user for c in snap.clients)})
    out = []
    for name in names:
        proxies = [p for p in snap.proxies if p.user == name]
        limits = snap.user_limits.get(name) or UserLimitsInfo()
        out.append(
            UserInfo(
                name=name,
                clients=sum(1 for c in snap.clients if c.user == name),
                proxies=len(proxies),
                connections=sum(p.stats.connections for p in proxies),
                bytes_in=sum(p.stats.bytes_in for p in proxies),
                bytes_out=sum(p.stats.bytes_out for p in proxies),
                max_clients=limits.max_clients,
                max_proxies=limits.max_proxies,
                allow_ports=limits.allow_ports,
                bandwidth_limit=limits.bandwidth_limit,
                dropped_datagrams_in=limits.dropped_datagrams_in,
                dropped_datagrams_out=limits.dropped_datagrams_out,
            )
        )
    return out


def clients(snap: ServerSnapshot) -> list[ClientInfo]:
    return sorted(snap.clients, key=lambda c: (c.user, c.client_id))


def _proxy(p: ServerProxyInfo, status: ProxyStatus, last_seen: float) -> ProxyInfo:
    return ProxyInfo(
        name=p.name,
        type=p.type,
        status=status,
        client_id=p.client_id,
        user=p.user,
        remote_port=p.remote_port,
        urls=p.urls,
        path=p.path,
        stats=p.stats,
        last_seen=last_seen,
        group=p.group,
        group_members=p.group_members,
        direct=p.direct,
    )


def proxies(
    snap: ServerSnapshot, history: TrafficHistory, now: float, kind: ProxyType | None = None
) -> list[ProxyInfo]:
    """The proxies open now and the offline ones the history keeps, by name; of one type if given."""
    online = [_proxy(p, ProxyStatus.ONLINE, now) for p in snap.proxies]
    names = {p.name for p in online}
    offline = [_proxy(p, ProxyStatus.OFFLINE, seen) for p, seen in history.offline() if p.name not in names]
    found = sorted(online + offline, key=lambda p: p.name)
    return [p for p in found if kind is None or p.type is kind]


def proxy(snap: ServerSnapshot, history: TrafficHistory, now: float, name: str) -> ProxyInfo | None:
    return next((p for p in proxies(snap, history, now) if p.name == name), None)


def traffic(history: TrafficHistory, name: str, now: float) -> ProxyTraffic | None:
    points = history.traffic(name, now)
    if points is None:
        return None
    return ProxyTraffic(
        name=name,
        interval_s=MINUTE,
        points=[TrafficPoint(t=t, bytes_in=i, bytes_out=o) for t, i, o in points],
    )
