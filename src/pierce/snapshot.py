"""Typed snapshots of a running server and client: what the demo, the admin API, the dashboard, the JSON
API and /metrics read, never the roles' internals.

Every snapshot is a frozen msgspec Struct, so it encodes to JSON as it is (`msgspec.json.encode`) and its
field names are a contract: add fields, rename none. Byte counters run in the visitor's direction: ``in``
is visitor -> service, ``out`` is service -> visitor, and include the connections still open.
"""

from __future__ import annotations

import enum

import msgspec

from pierce.proxies.base import ProxyType


class ProxyState(enum.StrEnum):
    """Where a proxy stands, as its client sees it."""

    #: Sent to the server (or waiting for a connection to it).
    PENDING = "pending"
    #: Open on the server; visitors can reach it.
    RUNNING = "running"
    #: The server refused it (see ``error``).
    REFUSED = "refused"
    #: Its local service fails its health check: withdrawn from the server until the check passes.
    UNHEALTHY = "unhealthy"


class ConnectionPath(enum.StrEnum):
    """How a proxy's visitors reach it."""

    #: Through the server (every kind today).
    RELAY = "relay"
    #: Peer to peer, not through the server (P2P kinds), when the kind of direct path is not told.
    DIRECT = "direct"
    #: P2P on the local network: a host candidate answered (no NAT crossed).
    DIRECT_LAN = "direct lan"
    #: P2P by TCP simultaneous open through the NATs.
    DIRECT_TCP = "direct tcp"
    #: P2P through a punched UDP hole (QUIC inside).
    DIRECT_UDP = "direct udp"
    #: P2P through a UDP hole found by port prediction (one side behind a symmetric NAT).
    DIRECT_PREDICTED = "direct predicted"
    #: P2P through a port the owner's router maps to it (PCP, NAT-PMP or UPnP-IGD; ``direct = "auto"``).
    DIRECT_MAPPED = "direct mapped"

    @property
    def direct(self) -> bool:
        return self is not ConnectionPath.RELAY


class ProxyStats(msgspec.Struct, frozen=True, kw_only=True):
    """Traffic of one proxy since it opened."""

    #: Connections (or, for datagram proxies, visitor flows) open now.
    connections: int = 0
    #: Connections accepted since the proxy opened, the open ones included.
    total_connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Visitors that got no work connection in time, or whose work connection failed.
    failed_connections: int = 0
    #: Visitors turned away by the proxy's allow_ips / deny_ips.
    refused_connections: int = 0
    #: Datagram proxies (udp): datagrams the server dropped, towards the service and towards the
    #: visitors (over the user's bandwidth_limit, or a full buffer).
    dropped_datagrams_in: int = 0
    dropped_datagrams_out: int = 0


class ServerProxyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One proxy open on the server."""

    name: str
    type: ProxyType
    client_id: str
    #: The public port visitors reach (a shared front's port for web proxies; 0 for secret ones).
    remote_port: int
    urls: list[str]
    stats: ProxyStats
    path: ConnectionPath = ConnectionPath.RELAY
    #: The user whose client registered it.
    user: str = "default"
    #: Its load-balancing group ("": none), and the members the group has now (itself included).
    group: str = ""
    group_members: int = 0
    #: Where the owning client says the proxy is also reachable without the server (``ip:port``, a port
    #: mapping on its router: ``direct = "auto"``); empty: through the server only.
    direct: str = ""


class ClientInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One client logged in to the server."""

    client_id: str
    run_id: str
    #: The address the client's control connection comes from.
    address: str
    #: Unix time of the login.
    connected_since: float
    #: Seconds since the client last sent anything.
    idle_s: float
    proxies: list[str]
    #: Work connections waiting in the pool for a visitor.
    idle_work_conns: int
    #: The user the client logged in as.
    user: str = "default"
    #: The client's pierce version, as it told at login (empty from clients that do not tell).
    version: str = ""
    #: How visitors reach its proxies: a direct kind when the latest P2P visitor of one of them took a
    #: direct path (`ServerProxyInfo.path`), else relay.
    path: ConnectionPath = ConnectionPath.RELAY


class UserLimitsInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One user's limits from ``[[users]]`` (0 and empty: none) and its datagrams dropped over them."""

    max_clients: int = 0
    max_proxies: int = 0
    #: Ports or ranges (``"6000-6010"``) its proxies may take, on top of the server's allow_ports.
    allow_ports: list[str] = []
    #: Bytes per second each way over all its proxies.
    bandwidth_limit: int = 0
    #: Datagrams of its UDP proxies dropped over ``bandwidth_limit`` since start, towards the services
    #: and towards the visitors.
    dropped_datagrams_in: int = 0
    dropped_datagrams_out: int = 0


class ServerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A running server."""

    version: str
    #: The control port's address.
    address: str
    fingerprint: str
    #: Ports of the shared fronts that are on (``vhost_http_port``, ``stun_port``, ...), by config key.
    ports: dict[str, int]
    clients: list[ClientInfo]
    proxies: list[ServerProxyInfo]
    #: The STUN responder's counters since start (requests, answered, malformed, dropped_rate_limited,
    #: dropped_global_limit, ...); empty when off.
    stun: dict[str, int] = {}
    #: P2P rendezvous since start: ``attempts``, ``refused`` (the owner would not try), ``fallbacks``
    #: (visitors left on the relay), and one count per direct path taken (``direct lan``, ``direct udp``,
    #: ``direct tcp``, ``direct predicted``, ``direct mapped``).
    p2p: dict[str, int] = {}
    #: Connections to the control port since start: ``admitted``, ``logged_in``, ``failed`` (logins that
    #: failed, counted against their source), ``auth_failed`` (of those, a wrong token or proof), and the
    #: connections turned away before they said anything: ``refused_pending`` (too many waiting to log
    #: in), ``refused_source`` (too many from one source), ``refused_blocked`` (a source blocked after
    #: failed logins).
    logins: dict[str, int] = {}
    #: The configured user names ([[users]], and "default" for the top-level token).
    users: list[str] = []
    #: Each known user's limits (``[[users]]``) and the datagrams dropped over them, by user name.
    user_limits: dict[str, UserLimitsInfo] = {}
    #: Unix time the server started.
    started_at: float = 0.0
    #: Seconds since the server started, on the monotonic clock: a step of the wall clock (NTP, a
    #: corrected RTC) moves `started_at`'s meaning, never this.
    uptime_s: float = 0.0


class ClientProxyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One proxy of a client, as the client sees it."""

    name: str
    type: ProxyType
    #: The local service, ``host:port``.
    local: str
    state: ProxyState
    remote_port: int | None = None
    urls: list[str] = []
    error: str = ""
    #: The path its visitors take: relay, or for a P2P proxy with direct paths up the latest one's kind.
    path: ConnectionPath = ConnectionPath.RELAY
    #: Direct paths to visitors up now (xtcp/xudp).
    direct_paths: int = 0
    #: ``direct = "auto"``: the public ``ip:port`` its router maps to this client, when it has one that is
    #: reachable from the internet (visitors may use it instead of the server's address).
    direct: str = ""
    #: ``direct = "auto"`` without a public mapped address: why ("no port mapping protocol answered", a
    #: private or shared external address, ...); empty otherwise.
    direct_error: str = ""


class ClientSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A running client."""

    version: str
    client_id: str
    #: The server, ``host:port``.
    server: str
    connected: bool
    run_id: str
    connected_since: float | None
    #: Login attempts since the start (1 for a client that logged in at once and stayed).
    attempts: int
    last_error: str
    proxies: list[ClientProxyInfo]
    #: Visitor connections being relayed now (they survive reconnects and reloads).
    connections: int
    #: The ``[[visitors]]`` this client runs.
    visitors: list[VisitorInfo] = []


class VisitorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One visitor (a local port reaching another client's secret proxy), as its client sees it."""

    name: str
    #: stcp, sudp, xtcp or xudp.
    type: str
    #: The proxy it reaches.
    proxy: str
    #: Where it listens, ``host:port``.
    listen: str
    #: The path new connections take now (P2P visitors: a direct one when it is up).
    path: ConnectionPath = ConnectionPath.RELAY
    #: Round-trip time of the direct path, milliseconds (0 on the relay).
    rtt_ms: float = 0.0
    #: Why a P2P visitor is on the relay (its last attempt's failure); empty when direct or untried.
    reason: str = ""
    #: Direct-path attempts since start.
    p2p_attempts: int = 0
    #: Unix time the direct path came up.
    direct_since: float | None = None
