"""Every config file pierce reads: typed msgspec Structs, loaded from TOML, checked strictly.

One place reads config. Errors name the file, the key path and what was expected, e.g.
``map.toml: rules[1].target: expected "host:port", got "10.0.0.5"``, and every problem in the file is
reported in one pass, not only the first.

The ``[[proxies]]`` tables are the kinds' own config Structs (`pierce.proxies`, one module per kind),
gathered into `ProxyConfig` by `pierce.proxies.registry`; this module holds everything else.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeGuard, TypeVar

import msgspec

from pierce.addr import HostPort, Network, parse_host_port, parse_network
from pierce.domains import InvalidDomain, normalize_domain
from pierce.errors import ConfigError, InvalidValue, KeyPath, format_key_path
from pierce.nat.stun_policy import DEFAULT_BURST as DEFAULT_STUN_BURST
from pierce.nat.stun_policy import DEFAULT_GLOBAL_RATE as DEFAULT_STUN_GLOBAL_RATE
from pierce.nat.stun_policy import DEFAULT_RATE as DEFAULT_STUN_RATE
from pierce.protocol import SecretKind
from pierce.protocol.messages import DEFAULT_USER, MAX_IDLE_WORK_CONNS
from pierce.proxies.base import DEFAULT_UDP_IDLE_TIMEOUT as DEFAULT_UDP_IDLE_TIMEOUT
from pierce.proxies.base import check_bandwidth_limit, masked_repr
from pierce.proxies.registry import ProxyConfig

#: The current config format version; files may say ``version = 1``.
CONFIG_VERSION = 1

DEFAULT_VHOST_HTTP_TIMEOUT = 60.0
DEFAULT_VHOST_HEADER_TIMEOUT = 10.0
DEFAULT_VHOST_MAX_CONNS_PER_IP = 256
DEFAULT_VHOST_MAX_PENDING_CONNS = 4096
#: Let's Encrypt's production directory, the default CA of ``[acme]``.
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
DEFAULT_CONNECT_TIMEOUT = 10.0


class Transport(enum.Enum):
    TCP = "tcp"
    UDP = "udp"


class ListenAddr(HostPort):
    """An address to bind: port 0 means "any free port"."""

    __slots__ = ()


class MapRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One forwarding rule of ``pierce map``."""

    #: Where to accept, ``host:port``; ``0.0.0.0`` / ``[::]`` for all interfaces.
    listen: ListenAddr
    #: Where to forward, ``host:port``; a DNS name is resolved for every new connection or UDP session.
    target: HostPort
    #: ``"tcp"`` or ``"udp"``.
    protocol: Transport = Transport.TCP
    #: Source allow-list (CIDRs or single addresses); empty means everyone.
    allow: list[Network] = []
    #: UDP: seconds a client's session lives without traffic.
    idle_timeout: float = DEFAULT_UDP_IDLE_TIMEOUT
    #: TCP: seconds to wait for the target to accept.
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: A label for logs; defaults to ``protocol:listen``.
    name: str = ""

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0:
            raise InvalidValue("idle_timeout", f"expected a number of seconds > 0, got {self.idle_timeout:g}")
        if self.connect_timeout <= 0:
            raise InvalidValue(
                "connect_timeout", f"expected a number of seconds > 0, got {self.connect_timeout:g}"
            )
        if not self.name:
            self.name = f"{self.protocol.value}:{self.listen}"


class MapConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``map.toml``: a list of ``[[rules]]``."""

    version: int = CONFIG_VERSION
    rules: list[MapRule]

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise InvalidValue("version", f"expected {CONFIG_VERSION}, got {self.version}")
        if not self.rules:
            raise InvalidValue("rules", "expected at least one [[rules]] table")


# --------------------------------------------------------------------------------------------------
# Tunnel: server.toml and client.toml

DEFAULT_CONTROL_PORT = 7000
DEFAULT_POOL_COUNT = 4
DEFAULT_HEARTBEAT_INTERVAL = 10.0
DEFAULT_HEARTBEAT_TIMEOUT = 30.0
DEFAULT_USER_CONN_TIMEOUT = 10.0
DEFAULT_STUN_PORT = 3478
DEFAULT_LOGIN_TIMEOUT = 10.0
DEFAULT_MAX_PENDING_LOGINS = 256
DEFAULT_MAX_PENDING_LOGINS_PER_IP = 16


class PortRange:
    """An allowed port or range, written ``"8022"`` or ``"6000-7000"``."""

    __slots__ = ("first", "last")

    def __init__(self, first: int, last: int) -> None:
        self.first = first
        self.last = last

    def __contains__(self, port: int) -> bool:
        return self.first <= port <= self.last

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def __repr__(self) -> str:
        return f"PortRange({self})"


def parse_port_range(text: object) -> PortRange:
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise ValueError(f'expected a port or range like "6000-7000", got {text!r}')
    first_text, _, last_text = text.strip().partition("-")
    if not first_text.isdigit() or (last_text and not last_text.isdigit()):
        raise ValueError(f'expected a port or range like "6000-7000", got "{text}"')
    first, last = int(first_text), int(last_text or first_text)
    if not (1 <= first <= last <= 65535):
        raise ValueError(f'expected ports from 1 to 65535 with the smaller first, got "{text}"')
    return PortRange(first, last)


#: User names: letters, digits, ``.``, ``_`` and ``-``, as logs and the API show them.
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Seconds a proxy name, port or domain stays reserved to its user after the user's last proxy using it
#: closed, so that nobody else can take it while its owner reconnects.
DEFAULT_CLAIM_HOLD = 3600.0


def user_problems(name: str) -> list[str]:
    """What is wrong with ``name`` as a user name (nothing: an empty list)."""
    if _USER_NAME.match(name):
        return []
    return [f'expected 1 to 64 letters, digits, ".", "_" or "-" (alphanumeric first), got "{name}"']


class UserConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[[users]]`` in server.toml: one identity. Its clients log in with ``user = name`` and its token."""

    name: str
    #: The user's token (the server keeps only an SRP verifier of it in memory).
    token: str = ""
    #: Or the verifier itself, from `pierce verifier` (``salt:verifier`` in hex): the file then holds
    #: nothing that logs in.
    verifier: str = ""
    #: Public ports this user's proxies may take, on top of the server's ``allow_ports``; empty: any
    #: the server allows.
    allow_ports: list[PortRange] = []
    #: Proxies open at once over all this user's clients; 0 = no limit.
    max_proxies: int = 0
    #: Clients logged in at once as this user; 0 = no limit. A login beyond it is refused.
    max_clients: int = 0
    #: Bytes per second each way over all this user's proxies (``"10MB"``), enforced on the server;
    #: empty: none.
    bandwidth_limit: str = ""

    def __post_init__(self) -> None:
        for problem in user_problems(self.name):
            raise InvalidValue("name", problem)
        for key in ("max_proxies", "max_clients"):
            if getattr(self, key) < 0:
                raise InvalidValue(key, f"expected 0 (no limit) or more, got {getattr(self, key)}")
        check_bandwidth_limit(self.bandwidth_limit)
        if bool(self.token) == bool(self.verifier):
            raise InvalidValue("token", "expected either token or verifier for this user (exactly one)")
        if self.verifier:
            from pierce.protocol.pake import Verifier

            try:
                Verifier.parse(self.verifier)
            except ValueError as exc:
                raise InvalidValue("verifier", str(exc)) from None

    def __repr__(self) -> str:
        return masked_repr(self)


class TransportOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[transport]``: settings both ends must agree on (checked when the client logs in)."""

    #: Work (data) connections over TLS. ``false`` on both ends sends data in the clear after
    #: authentication, so the relay can splice: only for trusted networks.
    encrypt_data: bool = True
    #: Carry work connections as streams multiplexed over one TLS connection (when both ends have it
    #: on and data is encrypted): no TLS handshake per visitor connection and a few hundred bytes of
    #: state per stream instead of a TLS connection's. ``false`` on either end: one TLS connection each.
    tcp_mux: bool = True


#: Most requests ``[inspector] requests`` may keep per proxy, and most bytes of each body preview.
MAX_INSPECTOR_REQUESTS = 1000
MAX_INSPECTOR_BODY_BYTES = 64 * 1024


class InspectorOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[inspector]`` of client.toml: what the request inspector keeps (read at start)."""

    #: Requests kept per http proxy (the oldest goes when a new one comes).
    requests: int = 50
    #: Bytes of each request and response body kept as a preview (a request replays only when its
    #: whole body fits).
    body_bytes: int = 4096

    def __post_init__(self) -> None:
        if not 1 <= self.requests <= MAX_INSPECTOR_REQUESTS:
            raise InvalidValue("requests", f"expected 1 to {MAX_INSPECTOR_REQUESTS}, got {self.requests}")
        if not 0 <= self.body_bytes <= MAX_INSPECTOR_BODY_BYTES:
            raise InvalidValue(
                "body_bytes", f"expected 0 to {MAX_INSPECTOR_BODY_BYTES}, got {self.body_bytes}"
            )


class P2pOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[p2p]`` of client.toml: how this client punches holes (both for its xtcp/xudp proxies and its
    P2P visitors). The defaults are the documented ones; each bounds time, sockets or packets."""

    #: Seconds an attempt probes before it gives up (and the visitor stays on the relay).
    punch_budget_s: float = 10.0
    #: TTL of the opening probes (the number of NAT routers on this side plus one); 0: none.
    opening_ttl: int = 2
    #: Seconds between keepalives on a direct path (below the NAT's idle timer for UDP).
    keepalive_s: float = 15.0
    #: Port prediction against one symmetric NAT: the sockets the symmetric side opens, the probes the
    #: other side sends, and the rate of both (probes per second).
    prediction_sockets: int = 256
    prediction_probes: int = 1024
    prediction_rate: float = 200.0
    #: xtcp visitors: keep direct TCP connections ready (LAN connect or TCP simultaneous open) besides
    #: the UDP path; false: UDP (QUIC) only.
    direct_tcp: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.punch_budget_s <= 60:
            raise InvalidValue("punch_budget_s", f"expected 1 to 60 seconds, got {self.punch_budget_s}")
        if not 0 <= self.opening_ttl <= 64:
            raise InvalidValue("opening_ttl", f"expected 0 (none) to 64, got {self.opening_ttl}")
        if not 1 <= self.keepalive_s <= 300:
            raise InvalidValue("keepalive_s", f"expected 1 to 300 seconds, got {self.keepalive_s}")
        if not 1 <= self.prediction_sockets <= 1024:
            raise InvalidValue("prediction_sockets", f"expected 1 to 1024, got {self.prediction_sockets}")
        if not 1 <= self.prediction_probes <= 8192:
            raise InvalidValue("prediction_probes", f"expected 1 to 8192, got {self.prediction_probes}")
        if not 1 <= self.prediction_rate <= 2000:
            raise InvalidValue(
                "prediction_rate", f"expected 1 to 2000 per second, got {self.prediction_rate}"
            )


#: TSIG algorithms ``[ddns] algorithm`` accepts: the HMAC names dnspython signs with (RFC 8945 section 6).
TSIG_ALGORITHMS = (
    "hmac-sha256",
    "hmac-sha384",
    "hmac-sha512",
    "hmac-sha224",
    "hmac-sha1",
    "hmac-md5",
    "hmac-sha256-128",
    "hmac-sha384-192",
    "hmac-sha512-256",
)
DEFAULT_DDNS_PORT = 53
#: ``[ddns] ipv6``: publish this host's public IPv6 address as AAAA (deleting it when there is none), or not.
DDNS_IPV6 = ("auto", "off")
DEFAULT_DDNS_TTL = 60
#: Seconds between the client's checks of its public address for ``[ddns]`` (besides one after every login).
DEFAULT_DDNS_CHECK_INTERVAL = 300.0


class DdnsOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[ddns]`` of client.toml: keep a DNS name pointing at this client's public address, by RFC 2136
    updates signed with TSIG (RFC 8945) sent to the zone's primary server (`pierce.ddns`)."""

    #: The zone's primary (the server that takes updates): ``host`` or ``host:port`` (port 53 unless given).
    server: str
    #: The zone, e.g. ``"example.com"``.
    zone: str
    #: The name to keep up to date: relative to the zone (``"home"``, ``"@"`` for the apex) or absolute
    #: (``"home.example.com."``, which must be inside the zone).
    name: str
    #: The TSIG key's name and its secret (base64), as in the server's key definition.
    key_name: str
    key_secret: str = msgspec.field(default="")
    algorithm: str = "hmac-sha256"
    #: TTL of the A / AAAA records written, in seconds.
    ttl: int = DEFAULT_DDNS_TTL
    #: The pierce server's STUN port, through which the client learns its public address.
    stun_port: int = DEFAULT_STUN_PORT
    #: Seconds between checks of the public address (one also follows every login).
    check_interval_s: float = DEFAULT_DDNS_CHECK_INTERVAL
    #: ``"auto"``: keep the AAAA record at this host's public IPv6 address (from its interfaces), and
    #: delete it when the host has none; ``"off"``: leave the AAAA record alone.
    ipv6: str = "auto"

    def __post_init__(self) -> None:
        try:
            ddns_server(self.server)
        except ValueError as exc:
            raise InvalidValue("server", str(exc)) from None
        zone = self.zone.strip().rstrip(".").lower()
        if not zone or not _ddns_name_ok(zone):
            raise InvalidValue("zone", f'expected a DNS zone like "example.com", got "{self.zone}"')
        self.zone = zone
        name = self.name.strip()
        if name != "@" and not _ddns_name_ok(name.rstrip(".")):
            raise InvalidValue("name", f'expected a name like "home" or "home.{zone}.", got "{self.name}"')
        if name.endswith("."):
            absolute = name.rstrip(".").lower()
            if absolute != zone and not absolute.endswith("." + zone):
                raise InvalidValue("name", f'expected a name inside the zone "{zone}", got "{self.name}"')
        if not self.key_name.strip() or not _ddns_name_ok(self.key_name.strip().rstrip(".")):
            raise InvalidValue("key_name", f'expected the TSIG key\'s name, got "{self.key_name}"')
        if not self.key_secret:
            raise InvalidValue("key_secret", "expected the TSIG key's secret (base64)")
        import binascii
        from base64 import b64decode

        try:
            secret = b64decode(self.key_secret, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidValue(
                "key_secret", "expected base64 (as in the DNS server's key definition)"
            ) from None
        if not secret:
            raise InvalidValue("key_secret", "expected a non-empty secret")
        algorithm = self.algorithm.strip().rstrip(".").lower()
        if algorithm == "hmac-md5.sig-alg.reg.int":
            algorithm = "hmac-md5"
        if algorithm not in TSIG_ALGORITHMS:
            choices = ", ".join(f'"{a}"' for a in TSIG_ALGORITHMS)
            raise InvalidValue("algorithm", f'expected one of {choices}, got "{self.algorithm}"')
        self.algorithm = algorithm
        if not 0 <= self.ttl <= 2**31 - 1:
            raise InvalidValue("ttl", f"expected seconds from 0 to 2147483647, got {self.ttl}")
        if not 1 <= self.stun_port <= 65535:
            raise InvalidValue("stun_port", f"expected a port from 1 to 65535, got {self.stun_port}")
        if not 1 <= self.check_interval_s <= 86400:
            raise InvalidValue(
                "check_interval_s", f"expected 1 to 86400 seconds, got {self.check_interval_s:g}"
            )
        if self.ipv6 not in DDNS_IPV6:
            choices = " or ".join(f'"{c}"' for c in DDNS_IPV6)
            raise InvalidValue("ipv6", f'expected {choices}, got "{self.ipv6}"')

    def __repr__(self) -> str:
        return masked_repr(self)


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _ddns_name_ok(name: str) -> bool:
    """A DNS name of letters, digits, ``-`` and ``_`` (as in ``_dmarc``), at most 253 characters."""
    return 0 < len(name) <= 253 and all(_DNS_LABEL.match(label) for label in name.split("."))


def ddns_server(text: str) -> tuple[str, int]:
    """``[ddns] server`` as (host, port): ``host``, ``host:port``, an IPv6 address or ``[v6]:port``."""
    raw = text.strip()
    try:
        ipaddress.IPv6Address(raw)
    except ValueError:
        pass
    else:
        return raw, DEFAULT_DDNS_PORT
    if ":" not in raw or (raw.startswith("[") and raw.endswith("]")):
        hp = parse_host_port(f"{raw}:{DEFAULT_DDNS_PORT}")
    else:
        hp = parse_host_port(raw)
    return hp.host, hp.port


#: Seconds of lease the client asks its router for (``[port_mapping] lifetime_s``); renewed at half.
DEFAULT_PORT_MAPPING_LIFETIME = 7200
PORT_MAPPING_METHODS = ("auto", "pcp", "nat-pmp", "upnp")


class PortMappingOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[port_mapping]`` of client.toml: how the proxies with ``direct = "auto"`` ask the router for their
    port mappings (`pierce.portmap`); the same choices as `pierce map-port`'s flags."""

    #: The router's IPv4 address; empty: the default route's gateway.
    gateway: str = ""
    #: "auto" (PCP, then NAT-PMP, then UPnP-IGD) or one of "pcp", "nat-pmp", "upnp".
    method: str = "auto"
    #: UPnP-IGD: the router's root description URL; empty: found by SSDP on the LAN.
    upnp_url: str = ""
    #: Seconds of lease asked for; the client renews at half of what the router grants.
    lifetime_s: int = DEFAULT_PORT_MAPPING_LIFETIME

    def __post_init__(self) -> None:
        if self.gateway:
            try:
                ipaddress.IPv4Address(self.gateway)
            except ValueError:
                raise InvalidValue("gateway", f'expected an IPv4 address, got "{self.gateway}"') from None
        if self.method not in PORT_MAPPING_METHODS:
            choices = ", ".join(f'"{m}"' for m in PORT_MAPPING_METHODS)
            raise InvalidValue("method", f'expected one of {choices}, got "{self.method}"')
        if self.upnp_url and not self.upnp_url.startswith(("http://", "https://")):
            raise InvalidValue("upnp_url", f'expected an http:// URL, got "{self.upnp_url}"')
        if self.upnp_url and self.method not in ("auto", "upnp"):
            raise InvalidValue("upnp_url", f'only with method "upnp" or "auto", not "{self.method}"')
        if not 2 <= self.lifetime_s <= 2**31 - 1:
            raise InvalidValue("lifetime_s", f"expected seconds from 2 to 2147483647, got {self.lifetime_s}")


class WebOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[web]`` of server.toml: the JSON API and ``/metrics`` (`pierce.web`), off unless ``port`` is set."""

    addr: str = "127.0.0.1"
    #: 0: off.
    port: int = 0
    #: HTTP basic auth for every request; required when ``addr`` is not a loopback address.
    user: str = ""
    password: str = msgspec.field(default="")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidValue("port", f"expected 0 (off) or a port up to 65535, got {self.port}")
        if bool(self.user) != bool(self.password):
            raise InvalidValue("user" if self.password else "password", "expected user and password together")
        if self.port and not self.password and not is_loopback(self.addr):
            raise InvalidValue(
                "password",
                f'expected user and password: addr "{self.addr}" is reachable from other hosts '
                '(or keep addr = "127.0.0.1")',
            )

    def __repr__(self) -> str:
        return masked_repr(self)


def is_loopback(addr: str) -> bool:
    """``localhost`` or a loopback address (an empty address or a wildcard is every interface)."""
    if addr.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``server.toml``."""

    version: int = CONFIG_VERSION
    bind_addr: str = "0.0.0.0"
    bind_port: int = DEFAULT_CONTROL_PORT
    #: Seconds a new connection has to log in: TLS handshake, `Hello` and the whole login exchange
    #: (which includes the ping, up to 3 s, of a silent session a reconnecting client replaces).
    login_timeout_s: float = DEFAULT_LOGIN_TIMEOUT
    #: Connections that have not logged in yet, in all ...
    max_pending_logins: int = DEFAULT_MAX_PENDING_LOGINS
    #: ... and from one address (IPv4) or /64 (IPv6); more are reset at once.
    max_pending_logins_per_ip: int = DEFAULT_MAX_PENDING_LOGINS_PER_IP
    #: The shared secret clients log in with; empty: generated on first start and kept in the state
    #: directory (file ``token``).
    token: str = msgspec.field(default="")
    #: Accept a token estimated below 64 bits (`pierce.token_strength`); for tests and closed networks.
    allow_weak_token: bool = False
    #: Named identities; every proxy name, port, domain and session belongs to one of them.
    users: list[UserConfig] = []
    #: Seconds a proxy name, port or domain stays reserved to its user after its last proxy closed.
    claim_hold_s: float = DEFAULT_CLAIM_HOLD
    #: Ports clients may ask for; empty means any.
    allow_ports: list[PortRange] = []
    #: Public ports one client may hold at once; 0 = no limit.
    max_ports_per_client: int = 0
    #: Address public proxy ports bind to; defaults to ``bind_addr``.
    proxy_bind_addr: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: Where the generated certificate and token live; defaults to the per-user state directory.
    state_dir: str = ""
    #: Drop a client that has sent nothing for this many seconds.
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    #: How long a visitor waits for a work connection before it is closed.
    user_conn_timeout: float = DEFAULT_USER_CONN_TIMEOUT
    #: UDP port of the STUN responder (``port + 1`` is used too, for RFC 5780 change-port tests); 0 = off.
    stun_port: int = DEFAULT_STUN_PORT
    #: A second IP address of this host for the STUN responder: enables RFC 5780 change-IP tests.
    stun_alt_addr: str = ""
    #: STUN answers per second to one source (an IPv4 address or IPv6 /64) once its burst is used.
    stun_rate: float = DEFAULT_STUN_RATE
    #: STUN answers one source may get at once.
    stun_burst: int = DEFAULT_STUN_BURST
    #: STUN answers per second to all sources together.
    stun_global_rate: float = DEFAULT_STUN_GLOBAL_RATE
    #: Honour RFC 5780 RESPONSE-PORT (answers to another port of the requesting address).
    stun_allow_response_port: bool = False
    transport: TransportOptions = msgspec.field(default_factory=TransportOptions)
    #: The JSON API and /metrics.
    web: WebOptions = msgspec.field(default_factory=WebOptions)
    #: Public port for HTTP proxies, routed by Host (0 = off).
    vhost_http_port: int = 0
    #: Public port for HTTPS proxies, routed by TLS SNI without terminating TLS (0 = off).
    vhost_https_port: int = 0
    #: Domain under which proxies with ``subdomain = "nas"`` are reachable (nas.<subdomain_host>).
    subdomain_host: str = ""
    #: Page served (404) for a host no proxy claims.
    custom_404_file: str = ""
    #: Seconds an HTTP visitor or inside service may stay silent while a request or response head is due.
    vhost_http_timeout: float = DEFAULT_VHOST_HTTP_TIMEOUT
    #: Seconds a whole request head, TLS ClientHello or TLS handshake on the vhost ports may take.
    vhost_header_timeout: float = DEFAULT_VHOST_HEADER_TIMEOUT
    #: Connections open at once from one address (IPv6: one /64) to the vhost ports; 0 = no limit.
    vhost_max_conns_per_ip: int = DEFAULT_VHOST_MAX_CONNS_PER_IP
    #: Connections to the vhost ports without a complete first head or ClientHello yet; 0 = no limit.
    vhost_max_pending_conns: int = DEFAULT_VHOST_MAX_PENDING_CONNS
    #: Public port of tcpmux proxies: TCP services chosen by the host of an HTTP CONNECT (0 = off).
    tcpmux_httpconnect_port: int = 0
    #: Pass the CONNECT request on to the service instead of answering it (services that speak it).
    tcpmux_passthrough: bool = False
    #: Automatic HTTPS certificates for ``https_auto`` proxies.
    acme: AcmeConfig | None = None

    def __post_init__(self) -> None:
        from pierce.token_strength import check_token_strength  # the server's only: a client never loads it

        names = [u.name for u in self.users]
        if self.token:
            check_token_strength("token", self.token, self.allow_weak_token)
            names.append(DEFAULT_USER)
        for i, user in enumerate(self.users):
            if user.token:
                check_token_strength(f"users[{i}].token", user.token, self.allow_weak_token)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            hint = ' (the top-level token is the user "default")' if dupes[0] == DEFAULT_USER else ""
            raise InvalidValue("users", f"duplicate user name {dupes[0]!r}{hint}")
        if self.claim_hold_s < 0:
            raise InvalidValue("claim_hold_s", "expected a number of seconds >= 0")
        if self.allow_ports:
            for i, user in enumerate(self.users):
                if user.allow_ports and not any(self.port_allowed(p) for r in user.allow_ports for p in r):
                    allowed = ", ".join(str(r) for r in self.allow_ports)
                    raise InvalidValue(
                        ("users", i, "allow_ports"),
                        f"expected ports within the server's allow_ports ({allowed})",
                    )
        taken = {"bind_port": self.bind_port}
        for key in ("vhost_http_port", "vhost_https_port", "tcpmux_httpconnect_port"):
            port = getattr(self, key)
            if not 0 <= port <= 65535:
                raise InvalidValue(key, f"expected 0 (off) or a port up to 65535, got {port}")
            if port and (other := next((k for k, p in taken.items() if p == port), None)):
                raise InvalidValue(key, f"expected a port other than {other} ({port})")
            taken[key] = port
        if self.subdomain_host:
            self.subdomain_host = _check_domain(self.subdomain_host, "subdomain_host", wildcard=False)
        if self.vhost_http_timeout <= 0:
            raise InvalidValue("vhost_http_timeout", "expected a number of seconds > 0")
        if self.vhost_header_timeout <= 0:
            raise InvalidValue("vhost_header_timeout", "expected a number of seconds > 0")
        for key in ("vhost_max_conns_per_ip", "vhost_max_pending_conns"):
            if getattr(self, key) < 0:
                raise InvalidValue(key, f"expected 0 (no limit) or more, got {getattr(self, key)}")
        if not 0 <= self.bind_port <= 65535:
            raise InvalidValue("bind_port", f"expected a port from 0 to 65535, got {self.bind_port}")
        if self.max_ports_per_client < 0:
            raise InvalidValue("max_ports_per_client", "expected 0 (no limit) or more")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise InvalidValue("tls_cert_file", "expected tls_cert_file and tls_key_file together")
        if self.heartbeat_timeout <= 0 or self.user_conn_timeout <= 0:
            raise InvalidValue("heartbeat_timeout", "expected timeouts in seconds > 0")
        if not 0 < self.login_timeout_s <= 3600:
            raise InvalidValue(
                "login_timeout_s", f"expected seconds > 0 and up to 3600, got {self.login_timeout_s:g}"
            )
        for key in ("max_pending_logins", "max_pending_logins_per_ip"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"expected 1 or more connections, got {getattr(self, key)}")
        if not (self.stun_port == 0 or 1 <= self.stun_port <= 65534):
            raise InvalidValue(
                "stun_port", f"expected 0 (off) or a port from 1 to 65534, got {self.stun_port}"
            )
        if self.stun_alt_addr:
            try:
                ipaddress.ip_address(self.stun_alt_addr)
            except ValueError:
                got = self.stun_alt_addr
                raise InvalidValue("stun_alt_addr", f'expected an IP address, got "{got}"') from None
        for key in ("stun_rate", "stun_global_rate"):
            if not getattr(self, key) > 0:
                raise InvalidValue(key, f"expected answers per second > 0, got {getattr(self, key)}")
        if self.stun_burst < 1:
            raise InvalidValue("stun_burst", f"expected a number of answers >= 1, got {self.stun_burst}")
        if not self.proxy_bind_addr:
            self.proxy_bind_addr = self.bind_addr

    def __repr__(self) -> str:
        return masked_repr(self)

    def port_allowed(self, port: int) -> bool:
        return ports_allow(self.allow_ports, port)


def ports_allow(allowed: list[PortRange], port: int) -> bool:
    """Whether an ``allow_ports`` list lets ``port`` in (an empty one lets every port in)."""
    return not allowed or any(port in r for r in allowed)


class AcmeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[acme]`` in server.toml: obtain and renew certificates for ``https_auto`` proxies (HTTP-01)."""

    #: Contact address given to the certificate authority (expiry warnings).
    email: str
    directory_url: str = LETS_ENCRYPT_DIRECTORY
    #: Trust this CA bundle for the directory's own HTTPS (test authorities such as Pebble).
    ca_file: str = ""
    #: Renew this many days before a certificate expires.
    renew_before_days: float = 30.0

    def __post_init__(self) -> None:
        if "@" not in self.email:
            raise InvalidValue(
                "email", f'expected a contact address like "admin@example.com", got "{self.email}"'
            )
        if not self.directory_url.startswith(("https://", "http://")):
            raise InvalidValue("directory_url", f'expected an https:// URL, got "{self.directory_url}"')
        if self.renew_before_days <= 0:
            raise InvalidValue("renew_before_days", "expected a number of days > 0")


class _VisitorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: A label for logs.
    name: str
    #: The proxy to reach (its ``name`` in the owner's client.toml).
    server_name: str
    secret_key: str
    bind_addr: str = "127.0.0.1"
    #: 0 = any free port (logged).
    bind_port: int

    def __post_init__(self) -> None:
        _check_visitor(self.name, self.server_name, self.secret_key, self.bind_port)

    def __repr__(self) -> str:
        return masked_repr(self)


class StcpVisitorConfig(_VisitorConfig, tag="stcp", tag_field="type"):
    """``[[visitors]] type = "stcp"``: a local port whose connections reach a secret TCP proxy."""

    secret_kind: ClassVar[SecretKind] = SecretKind.STCP


class SudpVisitorConfig(_VisitorConfig, tag="sudp", tag_field="type"):
    """``[[visitors]] type = "sudp"``: a local UDP port whose datagrams reach a secret UDP proxy."""

    secret_kind: ClassVar[SecretKind] = SecretKind.SUDP


#: Milliseconds a P2P visitor waits for a direct path before it goes through the server.
DEFAULT_FALLBACK_TIMEOUT_MS = 2000


def _check_fallback(timeout_ms: int) -> None:
    if not 0 <= timeout_ms <= 60_000:
        raise InvalidValue("fallback_timeout_ms", f"expected 0 to 60000 milliseconds, got {timeout_ms}")


class XtcpVisitorConfig(StcpVisitorConfig, tag="xtcp", tag_field="type"):
    """``[[visitors]] type = "xtcp"``: a local port whose connections reach a P2P TCP proxy, directly
    where a direct path is up, else through the server (unless ``fallback = false``)."""

    secret_kind: ClassVar[SecretKind] = SecretKind.XTCP
    #: Go through the server when no direct path is up.
    fallback: bool = True
    fallback_timeout_ms: int = DEFAULT_FALLBACK_TIMEOUT_MS

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fallback(self.fallback_timeout_ms)


class XudpVisitorConfig(SudpVisitorConfig, tag="xudp", tag_field="type"):
    """``[[visitors]] type = "xudp"``: a local UDP port whose datagrams reach a P2P UDP proxy."""

    secret_kind: ClassVar[SecretKind] = SecretKind.XUDP
    fallback: bool = True
    fallback_timeout_ms: int = DEFAULT_FALLBACK_TIMEOUT_MS

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fallback(self.fallback_timeout_ms)


VisitorConfig = StcpVisitorConfig | SudpVisitorConfig | XtcpVisitorConfig | XudpVisitorConfig
#: Visitors of P2P proxies (they have ``fallback``).
P2P_VISITORS = (XtcpVisitorConfig, XudpVisitorConfig)


def _check_domain(domain: str, key: str | KeyPath, *, wildcard: bool = True) -> str:
    """``domain`` normalised by the rules the server's router applies too (`pierce.domains`)."""
    try:
        return normalize_domain(domain, wildcard=wildcard)
    except InvalidDomain as exc:
        raise InvalidValue(key, str(exc)) from None


def _check_visitor(name: str, server_name: str, secret_key: str, bind_port: int) -> None:
    if not name or len(name) > 255:
        raise InvalidValue("name", "expected 1 to 255 characters")
    if not server_name or len(server_name) > 255:
        raise InvalidValue("server_name", "expected the name of a proxy (1 to 255 characters)")
    if not secret_key:
        raise InvalidValue("secret_key", "expected the proxy's secret")
    if not 0 <= bind_port <= 65535:
        raise InvalidValue("bind_port", f"expected 0 (any free port) or a port up to 65535, got {bind_port}")


class ClientConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``client.toml``."""

    version: int = CONFIG_VERSION
    server_addr: str
    server_port: int = DEFAULT_CONTROL_PORT
    #: Who this client logs in as (a name of the server's ``[[users]]``); empty: the default user.
    user: str = ""
    token: str = ""
    #: A stable name for this client within its user; a reconnect with the same id replaces the
    #: stale session (never a live one).
    client_id: str = ""
    #: Ready work connections kept open, so a visitor's first byte does not wait for a TLS handshake.
    pool_count: int = DEFAULT_POOL_COUNT
    #: Pin the server certificate by its SHA-256 fingerprint (printed by the server at start).
    server_fingerprint: str = ""
    #: Or verify the server certificate against this CA bundle.
    trusted_ca_file: str = ""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    #: Local admin API (status, reload, stop); off unless admin_port is set.
    admin_addr: str = "127.0.0.1"
    admin_port: int = 0
    #: Credentials of the admin API (HTTP basic auth). Without a password the client generates a token
    #: (file ``admin.token`` in the state directory) that callers send as ``Authorization: Bearer``.
    admin_user: str = "admin"
    admin_password: str = msgspec.field(default="")
    #: Where the client keeps its admin token and the server certificates it pinned on first use
    #: (``known_hosts``); defaults to the per-user state directory.
    state_dir: str = ""
    transport: TransportOptions = msgspec.field(default_factory=TransportOptions)
    p2p: P2pOptions = msgspec.field(default_factory=P2pOptions)
    #: The request inspector of http proxies (on the admin port).
    inspector: InspectorOptions = msgspec.field(default_factory=InspectorOptions)
    #: Dynamic DNS: keep a name pointing at this client's public address (off unless present).
    ddns: DdnsOptions | None = None
    #: How proxies with ``direct = "auto"`` ask the router for their port mappings.
    port_mapping: PortMappingOptions = msgspec.field(default_factory=PortMappingOptions)
    proxies: list[ProxyConfig] = []
    #: Local ports that reach other clients' secret (stcp/sudp) proxies; read at start.
    visitors: list[VisitorConfig] = []

    def __post_init__(self) -> None:
        if not self.token:
            raise InvalidValue("token", "expected the server's shared secret")
        if self.user and not _USER_NAME.match(self.user):
            raise InvalidValue("user", f'expected a user name of the server\'s [[users]], got "{self.user}"')
        if self.admin_password and not self.admin_user:
            raise InvalidValue("admin_user", "expected a user name to go with admin_password")
        if not 1 <= self.server_port <= 65535:
            raise InvalidValue("server_port", f"expected a port from 1 to 65535, got {self.server_port}")
        if not 0 <= self.pool_count <= MAX_IDLE_WORK_CONNS:
            raise InvalidValue("pool_count", f"expected 0 to {MAX_IDLE_WORK_CONNS}, got {self.pool_count}")
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise InvalidValue("heartbeat_timeout", "expected heartbeat_timeout > heartbeat_interval > 0")
        names = [p.name for p in self.proxies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidValue("proxies", f"duplicate proxy name {dupes[0]!r}")
        names = [v.name for v in self.visitors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidValue("visitors", f"duplicate visitor name {dupes[0]!r}")

    def __repr__(self) -> str:
        return masked_repr(self)


# --------------------------------------------------------------------------------------------------
# Decoding
#
# msgspec reports a failed conversion as one ValidationError whose only structure is its English text
# ("Expected `int`, got `str` - at `$.rules[0].port`"), and it stops at the first problem. So config
# documents are not handed to msgspec.convert: they are walked here against the Struct types (their
# fields from msgspec.structs.fields, tagged unions by ``__struct_config__``). Every problem is recorded
# with the key path the walk is at, in our own words, and the walk goes on, so one pass reports them all.
# The walk also builds the result: a Struct is constructed from its checked fields, which runs its
# ``__post_init__``; an InvalidValue raised there carries the key it is about.


def _parse_listen_addr(obj: Any) -> ListenAddr:
    hp = parse_host_port(obj, allow_port_zero=True)
    return ListenAddr(hp.host, hp.port)


#: Types read from a string by our own parsers; their ValueError text is the problem's message.
_PARSERS: dict[Any, Callable[[Any], Any]] = {
    ListenAddr: _parse_listen_addr,
    HostPort: parse_host_port,
    Network: parse_network,
    PortRange: parse_port_range,
}

#: What a value of a plain type is called in "expected ..." messages.
_EXPECTED: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}

_FAILED: Any = object()  # a value that could not be converted; its problem is already recorded


def _got(value: object) -> str:
    """What a TOML value is, for "got ..." in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    for typ, words in (
        (str, "a string"),
        (int, "an integer"),
        (float, "a number"),
        (list, "a list"),
        (dict, "a table"),
        (datetime.datetime, "a date-time"),
        (datetime.date, "a date"),
        (datetime.time, "a time"),
    ):
        if isinstance(value, typ):
            return words
    return "null" if value is None else type(value).__name__


def _shown(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else _got(value)


def _is_struct(hint: object) -> TypeGuard[type[msgspec.Struct]]:
    return isinstance(hint, type) and issubclass(hint, msgspec.Struct)


def _is_union(hint: object) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _holds_structs(hint: object) -> bool:
    """A Struct, or a union of them: list items of such a type are dropped one by one when invalid."""
    args = typing.get_args(hint) if _is_union(hint) else (hint,)
    return all(_is_struct(a) or a is type(None) for a in args)


class _Walk:
    """One pass over a document: the problems found so far, and where items were dropped."""

    def __init__(self) -> None:
        self.problems: list[tuple[KeyPath, str]] = []
        #: Lists of Structs that lost invalid items: their owner is still built (so its own checks run
        #: too), but an owner's complaint about such a list is a consequence, not a new problem.
        self.dropped: set[KeyPath] = set()

    def problem(self, path: KeyPath, message: str) -> Any:
        self.problems.append((path, message))
        return _FAILED

    def report(self, doc: object, source: str) -> list[str]:
        """The problems as ``file: key.path: message``, in the order their keys appear in the file."""
        ordered = sorted(self.problems, key=lambda problem: _position(doc, problem[0]))
        return [f"{source}: {format_key_path(path) or '(top level)'}: {message}" for path, message in ordered]

    def value(self, value: object, hint: Any, path: KeyPath) -> Any:
        if _is_union(hint):
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            if value is None and len(options) < len(typing.get_args(hint)):
                return None
            if len(options) == 1:
                return self.value(value, options[0], path)
            if all(_is_struct(a) and a.__struct_config__.tag_field for a in options):
                return self.tagged(value, options, path)
            return self.fallback(value, hint, path)
        origin = typing.get_origin(hint)
        if origin is list:
            return self.array(value, typing.get_args(hint), path)
        if origin is dict:
            return self.table(value, typing.get_args(hint), path)
        if _is_struct(hint):
            return self.struct(value, hint, path)
        if hint in _PARSERS:
            try:
                return _PARSERS[hint](value)
            except ValueError as exc:
                return self.problem(path, str(exc))
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            for member in hint:
                if type(member.value) is type(value) and member.value == value:
                    return member
            choices = ", ".join(_shown(m.value) for m in hint)
            return self.problem(path, f"expected one of {choices}, got {_shown(value)}")
        if hint in _EXPECTED:
            if isinstance(value, hint) and not (isinstance(value, bool) and hint is not bool):
                return value
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            return self.problem(path, f"expected {_EXPECTED[hint]}, got {_got(value)}")
        if hint is Any:
            return value
        return self.fallback(value, hint, path)

    def fallback(self, value: object, hint: Any, path: KeyPath) -> Any:
        """A type no config field has so far: msgspec converts it, and its own text is the message."""
        try:
            return msgspec.convert(value, hint)
        except msgspec.ValidationError as exc:
            return self.problem(path, str(exc))

    def array(self, value: object, args: tuple[Any, ...], path: KeyPath) -> Any:
        if not isinstance(value, list):
            return self.problem(path, f"expected a list, got {_got(value)}")
        item_type = args[0] if args else Any
        items = [self.value(item, item_type, (*path, i)) for i, item in enumerate(value)]
        kept = [item for item in items if item is not _FAILED]
        if len(kept) == len(items):
            return kept
        if _holds_structs(item_type):
            self.dropped.add(path)
            return kept
        return _FAILED

    def table(self, value: object, args: tuple[Any, ...], path: KeyPath) -> Any:
        if not isinstance(value, dict):
            return self.problem(path, f"expected a table, got {_got(value)}")
        key_type, item_type = args if args else (Any, Any)
        out = {}
        for key, item in value.items():
            out[self.value(key, key_type, (*path, str(key)))] = self.value(item, item_type, (*path, str(key)))
        return _FAILED if _FAILED in out or _FAILED in out.values() else out

    def tagged(self, value: object, members: list[Any], path: KeyPath) -> Any:
        """A table whose tag field (``type = "tcp"``) says which Struct of a union it is."""
        if not isinstance(value, dict):
            return self.problem(path, f"expected a table, got {_got(value)}")
        tag_field = members[0].__struct_config__.tag_field
        if tag_field not in value:
            return self.problem((*path, tag_field), "missing required key")
        tag = value[tag_field]
        for member in members:
            if type(member.__struct_config__.tag) is type(tag) and member.__struct_config__.tag == tag:
                return self.struct(value, member, path)
        choices = ", ".join(_shown(m.__struct_config__.tag) for m in members)
        return self.problem((*path, tag_field), f"expected one of {choices}, got {_shown(tag)}")

    def struct(self, value: object, kind: type[msgspec.Struct], path: KeyPath) -> Any:
        if not isinstance(value, dict):
            return self.problem(path, f"expected a table, got {_got(value)}")
        struct_config = kind.__struct_config__
        fields = {f.encode_name: f for f in msgspec.structs.fields(kind)}
        kwargs: dict[str, Any] = {}
        failed = False
        for key, item in value.items():
            if key == struct_config.tag_field and key not in fields:
                if item != struct_config.tag:
                    self.problem((*path, key), f"expected {_shown(struct_config.tag)}, got {_shown(item)}")
                    failed = True
                continue
            field = fields.get(key)
            if field is None:
                if struct_config.forbid_unknown_fields:
                    known = [
                        *_own_first(kind, fields),
                        *([struct_config.tag_field] if struct_config.tag_field else []),
                    ]
                    self.problem((*path, key), f"unknown key{_did_you_mean(key, known)}")
                    failed = True
                continue
            converted = self.value(item, field.type, (*path, key))
            if converted is _FAILED:
                failed = True
            else:
                kwargs[field.name] = converted
        for key, field in fields.items():
            if field.required and key not in value:
                self.problem((*path, key), "missing required key")
                failed = True
        if failed:
            return _FAILED
        try:
            return kind(**kwargs)
        except InvalidValue as exc:
            if (*path, *exc.key[:1]) in self.dropped:
                return _FAILED
            return self.problem((*path, *exc.key), exc.message)
        except ValueError as exc:
            return self.problem(path, str(exc))


def _position(doc: object, path: KeyPath) -> tuple[int, ...]:
    """Where ``path`` is in the document, as indexes; a key the document lacks sorts after the others."""
    position: list[int] = []
    node = doc
    for part in path:
        if isinstance(node, dict):
            keys = list(node)
            position.append(keys.index(part) if part in keys else len(keys))
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            position.append(part)
            node = node[part] if part < len(node) else None
        else:
            break
    return tuple(position)


def _own_first(kind: type[msgspec.Struct], keys: Iterable[str]) -> list[str]:
    """``keys`` of ``kind``: its own fields first, then those of its bases from the farthest one: a
    proxy's ``name`` and ports before the keys every public proxy shares."""
    depth: dict[str, int] = {}
    for level, cls in enumerate(kind.__mro__):
        if isinstance(cls, type) and issubclass(cls, msgspec.Struct) and cls is not msgspec.Struct:
            for name in cls.__struct_fields__:
                depth[name] = level  # the farthest class that declares it wins
    return sorted(keys, key=lambda name: (depth.get(name, 0) > 0, -depth.get(name, 0)))


def _did_you_mean(key: str, known: list[str]) -> str:
    if not known:
        return ""
    import difflib  # only a config with an unknown key needs it

    close = difflib.get_close_matches(key, known, n=1)
    return f' (did you mean "{close[0]}"?)' if close else f"; expected one of: {', '.join(known)}"


S = TypeVar("S", bound=msgspec.Struct)


def convert(doc: dict[str, Any], kind: type[S], source: str) -> S:
    """Validate a parsed document against ``kind``; raise ConfigError listing every problem."""
    walk = _Walk()
    result = walk.struct(doc, kind, ())
    if walk.problems:  # the result may exist when only list items were dropped
        raise ConfigError(walk.report(doc, source))
    assert isinstance(result, kind)
    return result


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; syntax errors become ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None


def load(path: str | Path, kind: type[S]) -> S:
    """Load ``path`` as ``kind`` (e.g. MapConfig)."""
    p = Path(path)
    return convert(load_toml(p), kind, str(p))


def read_key(path: Path, kind: type[msgspec.Struct], key: str) -> Any:
    """One top-level ``key`` of a config file, checked against its field in ``kind``; None when absent.

    The rest of the file is not checked: a tool that needs one setting (``pierce nat`` needs the
    client's ``server_addr``) still works while other parts of the file are being edited.
    """
    doc = load_toml(path)
    (field,) = [f for f in msgspec.structs.fields(kind) if f.encode_name == key]
    if key not in doc:
        return None
    walk = _Walk()
    value = walk.value(doc[key], field.type, (key,))
    if walk.problems:
        raise ConfigError(walk.report(doc, str(path)))
    return value


def user_client_config() -> Path:
    """Where the user's client.toml is: ``$XDG_CONFIG_HOME/pierce/client.toml``, else
    ``~/.config/pierce/client.toml``."""
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    return (Path(base) if os.path.isabs(base) else Path.home() / ".config") / "pierce" / "client.toml"


#: What ``pierce verify`` can check, by the top-level keys that tell the kinds apart.
KINDS: dict[str, tuple[type[msgspec.Struct], Callable[[dict[str, Any]], bool]]] = {
    "map": (MapConfig, lambda doc: "rules" in doc),
    "client": (ClientConfig, lambda doc: "server_addr" in doc or "proxies" in doc),
    "server": (ServerConfig, lambda doc: "bind_port" in doc or "allow_ports" in doc or "token" in doc),
}


def sniff_kind(doc: dict[str, Any]) -> str | None:
    for name, (_, test) in KINDS.items():
        if test(doc):
            return name
    return None
