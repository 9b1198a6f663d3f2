"""Every config file pierce reads: typed msgspec Structs, loaded from TOML, checked strictly.

One place reads config. Errors name the file, the key path and what was expected, e.g.
``map.toml: rules[1].target: expected "host:port", got "10.0.0.5"``, and every problem in the file is
reported in one pass, not only the first.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import re
import tomllib
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from pierce.addr import HostPort, Network, parse_host_port, parse_network
from pierce.errors import ConfigError
from pierce.proxies.base import DEFAULT_UDP_IDLE_TIMEOUT as DEFAULT_UDP_IDLE_TIMEOUT
from pierce.proxies.base import masked_repr
from pierce.proxies.registry import ProxyConfig

#: The current config format version; files may say ``version = 1``.
CONFIG_VERSION = 1

DEFAULT_VHOST_HTTP_TIMEOUT = 60.0
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
            raise ValueError(f"idle_timeout: expected a number of seconds > 0, got {self.idle_timeout:g}")
        if self.connect_timeout <= 0:
            raise ValueError(
                f"connect_timeout: expected a number of seconds > 0, got {self.connect_timeout:g}"
            )
        if not self.name:
            self.name = f"{self.protocol.value}:{self.listen}"


class MapConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``map.toml``: a list of ``[[rules]]``."""

    version: int = CONFIG_VERSION
    rules: list[MapRule]

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise ValueError(f"version: expected {CONFIG_VERSION}, got {self.version}")
        if not self.rules:
            raise ValueError("rules: expected at least one [[rules]] table")


# --------------------------------------------------------------------------------------------------
# Tunnel: server.toml and client.toml

DEFAULT_CONTROL_PORT = 7000
DEFAULT_POOL_COUNT = 4
DEFAULT_HEARTBEAT_INTERVAL = 10.0
DEFAULT_HEARTBEAT_TIMEOUT = 30.0
DEFAULT_USER_CONN_TIMEOUT = 10.0
DEFAULT_STUN_PORT = 3478


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


class TransportOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[transport]``: settings both ends must agree on (checked when the client logs in)."""

    #: Work (data) connections over TLS. ``false`` on both ends sends data in the clear after
    #: authentication, so the relay can splice: only for trusted networks.
    encrypt_data: bool = True


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``server.toml``."""

    version: int = CONFIG_VERSION
    bind_addr: str = "0.0.0.0"
    bind_port: int = DEFAULT_CONTROL_PORT
    token: str = msgspec.field(default="")
    #: Ports clients may ask for; empty means any.
    allow_ports: list[PortRange] = []
    #: Public ports one client may hold at once; 0 = no limit.
    max_ports_per_client: int = 0
    #: Address public proxy ports bind to; defaults to ``bind_addr``.
    proxy_bind_addr: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: Where the generated certificate lives; defaults to the per-user state directory.
    state_dir: str = ""
    #: Drop a client that has sent nothing for this many seconds.
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    #: How long a visitor waits for a work connection before it is closed.
    user_conn_timeout: float = DEFAULT_USER_CONN_TIMEOUT
    #: UDP port of the STUN responder (``port + 1`` is used too, for RFC 5780 change-port tests); 0 = off.
    stun_port: int = DEFAULT_STUN_PORT
    #: A second IP address of this host for the STUN responder: enables RFC 5780 change-IP tests.
    stun_alt_addr: str = ""
    transport: TransportOptions = msgspec.field(default_factory=TransportOptions)
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
    #: Automatic HTTPS certificates for ``https_auto`` proxies.
    acme: AcmeConfig | None = None

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("token: expected a non-empty shared secret")
        for key in ("vhost_http_port", "vhost_https_port"):
            port = getattr(self, key)
            if not 0 <= port <= 65535:
                raise ValueError(f"{key}: expected 0 (off) or a port up to 65535, got {port}")
            if port and port == self.bind_port:
                raise ValueError(f"{key}: expected a port other than bind_port ({port})")
        if self.vhost_http_port and self.vhost_http_port == self.vhost_https_port:
            raise ValueError("vhost_https_port: expected a port other than vhost_http_port")
        if self.subdomain_host:
            self.subdomain_host = self.subdomain_host.lower().rstrip(".")
            _check_domain(self.subdomain_host, "subdomain_host", wildcard=False)
        if self.vhost_http_timeout <= 0:
            raise ValueError("vhost_http_timeout: expected a number of seconds > 0")
        if not 0 <= self.bind_port <= 65535:
            raise ValueError(f"bind_port: expected a port from 0 to 65535, got {self.bind_port}")
        if self.max_ports_per_client < 0:
            raise ValueError("max_ports_per_client: expected 0 (no limit) or more")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file: expected tls_cert_file and tls_key_file together")
        if self.heartbeat_timeout <= 0 or self.user_conn_timeout <= 0:
            raise ValueError("heartbeat_timeout: expected timeouts in seconds > 0")
        if not (self.stun_port == 0 or 1 <= self.stun_port <= 65534):
            raise ValueError(f"stun_port: expected 0 (off) or a port from 1 to 65534, got {self.stun_port}")
        if self.stun_alt_addr:
            try:
                ipaddress.ip_address(self.stun_alt_addr)
            except ValueError:
                got = self.stun_alt_addr
                raise ValueError(f'stun_alt_addr: expected an IP address, got "{got}"') from None
        if not self.proxy_bind_addr:
            self.proxy_bind_addr = self.bind_addr

    def __repr__(self) -> str:
        return masked_repr(self)

    def port_allowed(self, port: int) -> bool:
        return not self.allow_ports or any(port in r for r in self.allow_ports)


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
            raise ValueError(
                f'email: expected a contact address like "admin@example.com", got "{self.email}"'
            )
        if not self.directory_url.startswith(("https://", "http://")):
            raise ValueError(f'directory_url: expected an https:// URL, got "{self.directory_url}"')
        if self.renew_before_days <= 0:
            raise ValueError("renew_before_days: expected a number of days > 0")


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


class SudpVisitorConfig(_VisitorConfig, tag="sudp", tag_field="type"):
    """``[[visitors]] type = "sudp"``: a local UDP port whose datagrams reach a secret UDP proxy."""


VisitorConfig = StcpVisitorConfig | SudpVisitorConfig

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _check_domain(domain: str, key: str, *, wildcard: bool = True) -> None:
    labels = domain.split(".")
    if wildcard and labels[0] == "*":
        labels = labels[1:]
    if len(domain) > 253 or len(labels) < 1 or not all(_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f'{key}: expected a domain name like "nas.example.com", got "{domain}"')


def _check_visitor(name: str, server_name: str, secret_key: str, bind_port: int) -> None:
    if not name or len(name) > 255:
        raise ValueError("name: expected 1 to 255 characters")
    if not server_name or len(server_name) > 255:
        raise ValueError("server_name: expected the name of a proxy (1 to 255 characters)")
    if not secret_key:
        raise ValueError("secret_key: expected the proxy's secret")
    if not 0 <= bind_port <= 65535:
        raise ValueError(f"bind_port: expected 0 (any free port) or a port up to 65535, got {bind_port}")


class ClientConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``client.toml``."""

    version: int = CONFIG_VERSION
    server_addr: str
    server_port: int = DEFAULT_CONTROL_PORT
    token: str = ""
    #: A stable name for this client; a reconnect with the same id replaces the stale session.
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
    transport: TransportOptions = msgspec.field(default_factory=TransportOptions)
    proxies: list[ProxyConfig] = []
    #: Local ports that reach other clients' secret (stcp/sudp) proxies; read at start.
    visitors: list[VisitorConfig] = []

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("token: expected the server's shared secret")
        if not 1 <= self.server_port <= 65535:
            raise ValueError(f"server_port: expected a port from 1 to 65535, got {self.server_port}")
        if not 0 <= self.pool_count <= 64:
            raise ValueError(f"pool_count: expected 0 to 64, got {self.pool_count}")
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout: expected heartbeat_timeout > heartbeat_interval > 0")
        names = [p.name for p in self.proxies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"proxies: duplicate proxy name {dupes[0]!r}")
        names = [v.name for v in self.visitors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"visitors: duplicate visitor name {dupes[0]!r}")

    def __repr__(self) -> str:
        return masked_repr(self)


# --------------------------------------------------------------------------------------------------
# Decoding


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is ListenAddr:
        hp = parse_host_port(obj, allow_port_zero=True)
        return ListenAddr(hp.host, hp.port)
    if typ is HostPort:
        return parse_host_port(obj)
    if typ is Network:
        return parse_network(obj)
    if typ is PortRange:
        return parse_port_range(obj)
    raise NotImplementedError(f"no decoder for {typ!r}")


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(err: str, struct: type[msgspec.Struct] | None) -> str:
    """Turn one msgspec message into ``key.path: expectation``."""
    m = _AT.match(err)
    assert m is not None
    msg, path = m.group("msg"), (m.group("path") or "").lstrip(".")
    if u := re.match(r"Object contains unknown field `(.+)`", msg):
        key = u.group(1)
        known = _fields_at(struct, path)
        hint = ""
        if known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else f"; expected one of: {', '.join(known)}"
        return f"{_join(path, key)}: unknown key{hint}"
    if u := re.match(r"Object missing required field `(.+)`", msg):
        return f"{_join(path, u.group(1))}: missing required key"
    if u := re.match(r"Invalid value '(.+)'", msg):
        tags = _union_tags_at(struct, path)
        want = f"expected one of {tags}" if tags else "unknown value"
        return f'{path}: {want}, got "{u.group(1)}"'
    if u := re.match(r"Invalid enum value (.+)", msg):
        choices = _enum_choices_at(struct, path)
        want = f"expected one of {choices}" if choices else "unknown value"
        got = u.group(1).strip("'")
        return f'{path}: {want}, got "{got}"'
    if u := re.match(r"Expected `(.+?)`, got `(.+?)`(.*)", msg):
        want, got, rest = u.group(1), u.group(2), u.group(3)
        names = {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "array": "a list",
            "object": "a table",
            "bool": "true or false",
        }
        return f"{path or '(top level)'}: expected {names.get(want, want)}{rest}, got {names.get(got, got)}"
    if path and (inner := re.match(r"([A-Za-z_][\w.\[\]]*): (.*)", msg, re.S)):
        return f"{path}.{inner.group(1)}: {inner.group(2)}"
    return f"{path or '(top level)'}: {msg}" if path or not msg.split(":")[0].isidentifier() else msg


def _structs_at(struct: type[msgspec.Struct] | None, path: str) -> list[type[msgspec.Struct]]:
    """Follow ``rules[1]`` style paths through Struct annotations; a tagged union yields all its members."""
    current: list[Any] = [struct] if struct is not None else []
    for part in filter(None, re.split(r"\.|\[\d+\]", path)):
        found: list[Any] = []
        for owner in current:
            if isinstance(owner, type) and issubclass(owner, msgspec.Struct):
                hint = typing.get_type_hints(owner).get(part)
                if hint is not None:
                    found.extend(_leaf_types(hint))
        current = found
    return [c for c in current if isinstance(c, type) and issubclass(c, msgspec.Struct)]


def _leaf_types(hint: Any) -> list[Any]:
    """``list[A | B]`` -> [A, B]; ``A | None`` -> [A]; ``dict[str, A]`` -> [A]."""
    origin = typing.get_origin(hint)
    if origin is None:
        return [hint]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (list, tuple, set, frozenset):
        return [t for a in args for t in _leaf_types(a)]
    if origin is dict:
        return _leaf_types(args[-1]) if args else []
    return [t for a in args for t in _leaf_types(a)]  # a union


def _struct_at(struct: type[msgspec.Struct] | None, path: str) -> type[msgspec.Struct] | None:
    found = _structs_at(struct, path)
    return found[-1] if found else None


def _fields_at(struct: type[msgspec.Struct] | None, path: str) -> list[str]:
    fields: dict[str, None] = {}
    for target in _structs_at(struct, path):
        fields.update(dict.fromkeys(target.__struct_fields__))
    return list(fields)


def _union_tags_at(struct: type[msgspec.Struct] | None, path: str) -> str:
    """For ``proxies[0].type``: the tags of the tagged union stored under ``proxies``."""
    parent = re.sub(r"\[\d+\]$", "", path.rpartition(".")[0])
    owner_path, _, field_name = parent.rpartition(".")
    owner = _struct_at(struct, owner_path) if owner_path else struct
    if owner is None:
        return ""
    hint = typing.get_type_hints(owner).get(field_name)
    members = typing.get_args(typing.get_args(hint)[0]) if typing.get_origin(hint) is list else ()
    tags = [m.__struct_config__.tag for m in members if isinstance(m, type) and issubclass(m, msgspec.Struct)]
    return ", ".join(f'"{t}"' for t in tags if isinstance(t, str))


def _enum_choices_at(struct: type[msgspec.Struct] | None, path: str) -> str:
    parent, _, leaf = path.rpartition(".")
    for target in _structs_at(struct, parent):
        hint = typing.get_type_hints(target).get(re.sub(r"\[\d+\]$", "", leaf))
        for typ in _leaf_types(hint) if hint is not None else []:
            if isinstance(typ, type) and issubclass(typ, enum.Enum):
                return ", ".join(f'"{e.value}"' for e in typ)
    return ""


S = TypeVar("S", bound=msgspec.Struct)


def convert(doc: dict[str, Any], kind: type[S], source: str) -> S:
    """Validate a parsed document against ``kind``; raise ConfigError listing every problem."""
    try:
        return msgspec.convert(doc, kind, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        first = str(exc)
    problems = _all_problems(doc, kind) or [_describe(first, kind)]
    raise ConfigError([f"{source}: {p}" for p in problems])


def _all_problems(doc: dict[str, Any], kind: type[msgspec.Struct]) -> list[str]:
    """msgspec stops at the first error; check list items one by one to report them all."""
    import typing

    problems: list[str] = []
    hints = typing.get_type_hints(kind)
    shallow = dict(doc)
    for key, value in doc.items():
        item_type = hints.get(key)
        if typing.get_origin(item_type) is list and isinstance(value, list):
            (elem,) = typing.get_args(item_type)
            if isinstance(elem, type) and issubclass(elem, msgspec.Struct):
                for i, item in enumerate(value):
                    try:
                        msgspec.convert(item, elem, dec_hook=_dec_hook)
                    except msgspec.ValidationError as exc:
                        problems.append(_describe(_prefix(str(exc), f"{key}[{i}]"), kind))
                if problems:
                    shallow[key] = []
    if problems:
        try:
            msgspec.convert(shallow, kind, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            text = str(exc)
            if "expected at least one" not in text:
                problems.insert(0, _describe(text, kind))
    return problems


def _prefix(err: str, prefix: str) -> str:
    m = _AT.match(err)
    assert m is not None
    path = (m.group("path") or "").lstrip(".")
    full = prefix + path if path.startswith("[") or not path else f"{prefix}.{path}"
    # Post-init errors carry their own "key: ..." prefix; fold it into the path.
    msg = m.group("msg")
    if p := re.match(r"^([a-z_]+): (.*)$", msg, re.S):
        return f"{p.group(2)} - at `$.{full}.{p.group(1)}`"
    return f"{msg} - at `$.{full}`"


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
