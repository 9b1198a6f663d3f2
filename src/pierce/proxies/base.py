"""What every proxy kind shares: its type, the shape of its config and wire spec, and the server-side seams.

A proxy kind is one module in `pierce.proxies` holding its config struct (``[[proxies]] type = ...``),
its wire spec (what the client sends in `NewProxy`) and the client-side work handler, and one module of
the same name in `pierce.server.proxies` holding the server-side object. `pierce.proxies.registry` and
`pierce.server.proxies.registry` list the kinds; the sessions dispatch through them and nothing else
names a kind.

The seams a kind sees, each a small Protocol so that it gets only what it uses:

- `ProxyOwner`: the client session on the server that registered the proxy (its id, its control
  channel, its work connections, its user's bandwidth throttles).
- `ProxySite`: what opening a proxy on the server may use: the owner, the port policy for a public port
  of its own, and the server's shared fronts (the web ports, the tcpmux port).
- `ServerProxy`: what the session, the server and its snapshot need from an open proxy.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, TypeVar

import msgspec

from pierce.addr import HostPort
from pierce.errors import InvalidValue
from pierce.proxies.health import HealthCheckConfig
from pierce.transport import MessageChannel

if TYPE_CHECKING:
    from pierce.bandwidth import Limits
    from pierce.config import ServerConfig
    from pierce.server.proxies.group import ProxyGroup, ProxyGroups
    from pierce.server.workconn import WorkConn
    from pierce.snapshot import ProxyStats

#: Seconds a visitor's UDP flow (udp, sudp) lives without traffic, unless its proxy says otherwise.
DEFAULT_UDP_IDLE_TIMEOUT = 60.0


class ProxyType(enum.StrEnum):
    """The ``type`` of a ``[[proxies]]`` table, and of its wire spec."""

    TCP = "tcp"
    UDP = "udp"
    HTTP = "http"
    HTTPS = "https"
    STCP = "stcp"
    SUDP = "sudp"
    TCPMUX = "tcpmux"
    XTCP = "xtcp"
    XUDP = "xudp"


class DirectMode(enum.StrEnum):
    """A proxy's ``direct``: whether the client also asks its router for a port mapping, so that visitors
    can reach the proxy without the server (`pierce.client.direct`, `pierce.portmap`)."""

    #: Map a port on the router (PCP, NAT-PMP or UPnP-IGD) when it offers one and publish the mapped
    #: address when it is really public; go on through the server alone when not.
    AUTO = "auto"
    #: Through the server only.
    OFF = "off"


class ProxyProtocolVersion(enum.Enum):
    """PROXY protocol header the client sends to the local service before the visitor's bytes."""

    V1 = "v1"
    V2 = "v2"


class ProxySpec(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False):
    """Base of the wire specs: what the server needs to open a proxy of one kind (no local details).

    Tagged by ``"type"`` with the kind's `ProxyType` value. Constraints on peer-controlled values are
    part of each spec's types, so an out-of-range value fails to decode instead of reaching the kind.
    """

    #: Visitor addresses the server lets in (`pierce.proxies.access`); empty: every one.
    allow_ips: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=256)] = []
    #: Visitor addresses the server turns away.
    deny_ips: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=256)] = []


#: A ``group`` name, in config and on the wire.
GROUP_NAME = r"[A-Za-z0-9._-]{1,64}"
#: The longest ``group_key``.
MAX_GROUP_KEY = 255


class GroupedSpec(ProxySpec, frozen=True, kw_only=True):
    """Base of the specs of kinds that can share their port, domain or name
    (`pierce.server.proxies.group`)."""

    #: Load-balancing group ("": none); members take turns with the visitors.
    group: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9._-]*$")] = ""
    #: What every member of the group must present (never logged or shown).
    group_key: Annotated[str, msgspec.Meta(max_length=MAX_GROUP_KEY)] = ""

    def __repr__(self) -> str:
        return masked_repr(self)


class PublicProxyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The keys every proxy with a public side takes (tcp, udp, http, https, tcpmux) besides its own: how
    fast it may go and who may reach it. A kind's ``__post_init__`` checks its name and ports, then
    calls this one."""

    #: Most bytes per second each way, all connections of the proxy together ("10MB", "512KB"; "" = none).
    bandwidth_limit: str = ""
    #: Visitor addresses or CIDR networks the server lets in (empty: all); checked on the server.
    allow_ips: list[str] = []
    #: Visitor addresses or CIDR networks the server turns away (wins over allow_ips).
    deny_ips: list[str] = []

    def __post_init__(self) -> None:
        check_bandwidth_limit(self.bandwidth_limit)
        check_ip_lists(self.allow_ips, self.deny_ips)

    def __repr__(self) -> str:
        return masked_repr(self)


class GroupedProxyConfig(PublicProxyConfig):
    """`PublicProxyConfig` of the kinds that can share their port, domain or name with other clients'
    proxies (tcp, http, https, tcpmux: `pierce.server.proxies.group`), and withdraw while their service
    fails."""

    #: Load balancing: proxies of this user with the same group share the port, domains or name and
    #: take turns.
    group: str = ""
    group_key: str = ""
    #: Withdraw the proxy from the server while its local service fails this check.
    health_check: HealthCheckConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_group(self.group, self.group_key)


class ProxyOwner(Protocol):
    """The session on the server of the client that registered a proxy."""

    @property
    def client_id(self) -> str: ...

    @property
    def user(self) -> str: ...

    @property
    def channel(self) -> MessageChannel: ...

    @property
    def bandwidth(self) -> Limits | None:
        """The throttles of the owner's user (``bandwidth_limit`` in ``[[users]]``), shared by all its
        proxies' traffic through the server; None without a limit."""

    async def take_work_conn(self) -> WorkConn:
        """A ready work connection; TimeoutError when none comes in time."""

    def work_conn_dead(self, work: WorkConn, proxy: str, error: str) -> None:
        """``work`` did not confirm its `StartWork`: drop the idle ones too (fresh ones are asked for)."""


class ServerProxy(Protocol):
    """An open proxy on the server, whatever its kind."""

    type: ClassVar[ProxyType]

    @property
    def name(self) -> str: ...

    @property
    def owner(self) -> ProxyOwner: ...

    @property
    def port(self) -> int:
        """The public port visitors reach (a shared front's port for web proxies; 0 for secret ones)."""

    @property
    def urls(self) -> list[str]:
        """Where visitors reach it, when that is more than a port (web proxies: one URL per domain)."""

    @property
    def domains(self) -> list[str]:
        """The domains it is routed by (web and tcpmux proxies; none for the others)."""

    @property
    def group(self) -> ProxyGroup[Any] | None:
        """The load-balancing group it is a member of (tcp, http, https and tcpmux proxies can be)."""

    def stats(self) -> ProxyStats: ...

    async def close(self) -> None:
        """Stop taking visitors and end the live connections (and leave its group)."""


class Front(Protocol):
    """A listener the server shares between proxies (the web ports, the tcpmux port)."""

    #: What a proxy that needs this front hears when the server has not configured it.
    missing: ClassVar[str]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def ports(self) -> dict[str, int]:
        """Its listening ports by config key, for the server's snapshot."""


class FrontType(Protocol):
    """A front's class, made from the server config that asks for it
    (`pierce.server.proxies.registry.configured_fronts`)."""

    def __call__(self, config: ServerConfig, state_dir: Path) -> Front: ...


P = TypeVar("P")
F = TypeVar("F", bound=Front)


class ProxySite(Protocol):
    """What opening a proxy on the server may use."""

    @property
    def owner(self) -> ProxyOwner: ...

    def bind_public(self, name: str, port: int, opener: Callable[[HostPort], P]) -> P:
        """Open a public port of the proxy's own through ``opener``, after the server's port rules and
        limits (port 0: any allowed port). Raises `pierce.protocol.Refused`."""

    def front(self, kind: type[F]) -> F:
        """The server's shared front of that kind; `pierce.protocol.Refused` when it has none."""

    @property
    def groups(self) -> ProxyGroups:
        """The server's load-balancing groups."""


# -- config checks shared by the kinds --------------------------------------------------------------


def check_proxy(name: str, local_port: int, remote_port: int = 0) -> None:
    """The fields every proxy has; `InvalidValue` names the key (see `pierce.config`)."""
    if not name or len(name) > 255:
        raise InvalidValue("name", "expected 1 to 255 characters")
    if not 1 <= local_port <= 65535:
        raise InvalidValue("local_port", f"expected a port from 1 to 65535, got {local_port}")
    if not 0 <= remote_port <= 65535:
        raise InvalidValue(
            "remote_port", f"expected 0 (server picks) or a port up to 65535, got {remote_port}"
        )


def check_bandwidth_limit(text: str) -> None:
    """``bandwidth_limit``: empty (none) or a rate such as "10MB" (`pierce.bandwidth.parse_rate`)."""
    if text:
        from pierce.bandwidth import parse_rate

        try:
            parse_rate(text)
        except ValueError as exc:
            raise InvalidValue("bandwidth_limit", str(exc)) from None


def check_ip_lists(allow: list[str], deny: list[str]) -> None:
    """``allow_ips`` / ``deny_ips``: addresses or CIDR networks (`pierce.proxies.access`)."""
    from pierce.proxies.access import parse_networks

    parse_networks("allow_ips", allow)
    parse_networks("deny_ips", deny)


def check_group(group: str, group_key: str) -> None:
    """``group`` / ``group_key`` of a proxy (the key is never repeated in a message)."""
    if group and not re.fullmatch(GROUP_NAME, group):
        raise InvalidValue("group", f"expected 1 to 64 letters, digits, '.', '_' or '-', got {group!r}")
    if group_key and not group:
        raise InvalidValue("group_key", "expected group too (a group_key only guards a group)")
    if len(group_key) > MAX_GROUP_KEY:
        raise InvalidValue("group_key", f"expected at most {MAX_GROUP_KEY} characters")


def check_idle_timeout(seconds: float) -> None:
    if seconds <= 0:
        raise InvalidValue("idle_timeout", f"expected a number of seconds > 0, got {seconds:g}")


#: Config fields that never show in a repr (logs, tracebacks, debuggers).
SECRET_FIELDS = frozenset(
    {"token", "secret_key", "http_password", "admin_password", "password", "group_key", "key_secret"}
)


def masked_repr(cfg: msgspec.Struct) -> str:
    """A config struct's repr without its secrets."""
    fields = ", ".join(
        f"{f}={'MASKED' if f in SECRET_FIELDS else repr(getattr(cfg, f))}" for f in cfg.__struct_fields__
    )
    return f"{type(cfg).__name__}({fields})"
