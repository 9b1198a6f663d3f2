"""Typed network addresses: ``host:port`` parsing and formatting, IPv6 literals included."""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: An address as the socket module returns it: ``(host, port)`` or ``(host, port, flow, scope)``.
SockAddr = tuple[str, int] | tuple[str, int, int, int]


class HostPort:
    """A host (IP literal or DNS name) and a port. Formats back with brackets for IPv6.

    A plain class rather than a dataclass on purpose: config decoding hands it to our own parser
    (``msgspec`` would otherwise expect a table where users write ``"host:port"``).
    """

    __slots__ = ("family", "host", "ip", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: The host as an IP address, or None when it is a name to resolve.
        self.ip: IPAddress | None
        try:
            self.ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            self.ip = None
        self.family = socket.AF_INET6 if self.ip is not None and self.ip.version == 6 else socket.AF_INET

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostPort) and (self.host, self.port) == (other.host, other.port)

    def __hash__(self) -> int:
        return hash((self.host, self.port))

    def __repr__(self) -> str:
        return f"HostPort({self.host!r}, {self.port})"

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_host_port(text: str, *, allow_port_zero: bool = False) -> HostPort:
    """Parse ``host:port``, ``[v6]:port`` or ``:port`` (all interfaces).

    Raises ValueError with a message that says what was expected.
    """
    if not isinstance(text, str):
        raise ValueError(f'expected "host:port", got {text!r}')
    raw = text.strip()
    host: str
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or raw[end + 1 : end + 2] != ":":
            raise ValueError(f'expected "[ipv6]:port", got "{text}"')
        host, port_text = raw[1:end], raw[end + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f'expected an IPv6 address inside [...], got "{text}"') from None
    else:
        if raw.count(":") != 1:
            if raw.count(":") > 1:
                raise ValueError(f'expected "host:port" (write IPv6 as "[addr]:port"), got "{text}"')
            raise ValueError(f'expected "host:port", got "{text}"')
        host, port_text = raw.split(":")
        if not host:
            host = "0.0.0.0"
        elif not _valid_hostname(host):
            raise ValueError(f'expected a host name or IP address before ":", got "{text}"')
    if not port_text.isdigit():
        raise ValueError(f'expected a port number after ":", got "{text}"')
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f'expected a port from {low} to 65535, got {port} in "{text}"')
    return HostPort(host, port)


def _valid_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    )


def format_sockaddr(addr: SockAddr | tuple[str, int] | None) -> str:
    """Format a socket-module address as ``host:port`` (``[v6]:port``)."""
    if not addr:
        return "?"
    host, port = addr[0], addr[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class Network:
    """An allow-list entry: a CIDR such as ``10.0.0.0/8`` or one address; matches v4-mapped v6."""

    __slots__ = ("net",)

    def __init__(self, net: IPNetwork) -> None:
        self.net = net

    def __contains__(self, ip: IPAddress) -> bool:
        return unmap_ipv4(ip) in self.net

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Network) and self.net == other.net

    def __hash__(self) -> int:
        return hash(self.net)

    def __repr__(self) -> str:
        return f"Network({str(self.net)!r})"

    def __str__(self) -> str:
        return str(self.net)


def parse_network(text: str) -> Network:
    """Parse a CIDR (``10.0.0.0/8``) or a single address (``192.0.2.7``)."""
    if not isinstance(text, str):
        raise ValueError(f'expected a network like "10.0.0.0/8", got {text!r}')
    try:
        return Network(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(f'expected an address or network like "10.0.0.0/8", got "{text}"') from None


def allowed(ip_text: str, allow: list[Network]) -> bool:
    """True when ``allow`` is empty or one of its networks holds ``ip_text``."""
    if not allow:
        return True
    try:
        ip = ipaddress.ip_address(ip_text.split("%", 1)[0])
    except ValueError:
        return False
    return any(ip in net for net in allow)


def unmap_ipv4(ip: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` -> ``10.0.0.1``, so allow-lists match dual-stack sockets."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def source_of(host: str) -> str:
    """What per-source limits count by: the IPv4 address (also when mapped into IPv6), else the /64 of
    an IPv6 address (one host or site usually holds a whole /64, so counting per address would give it
    2**64 allowances). A host that is not an IP address counts as itself."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def listener_url(addr: str, port: int) -> str:
    """``http://HOST:PORT`` of a local HTTP listener bound to ``addr``: a wildcard is reached on loopback."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr) or addr
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
