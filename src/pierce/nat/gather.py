"""Host candidates: the addresses of this machine's own interfaces, for hole punching.

Two peers behind one NAT reach each other over their LAN addresses even when the router does not
hairpin, so every usable local address is a candidate (RFC 8445 "host"). Which addresses are usable:
not loopback, not link-local (a link-local address needs its interface's scope, which a peer on another
host cannot name), not multicast or unspecified.

On Linux the interfaces are read directly (IPv4 by ``SIOCGIFADDR`` per interface, IPv6 from
``/proc/net/if_inet6``), no root needed. Elsewhere, and as a fallback, the addresses the system would
send from toward a public address (a connected UDP socket sends nothing) and those of the host name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
import struct
import sys

from pierce.nat.candidates import Candidate, CandidateKind

#: Documentation addresses (RFC 5737, RFC 3849): where a connected UDP socket "would send" from.
_PROBE_TARGETS = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}
_SIOCGIFADDR = 0x8915
#: Interfaces looked at, at most (a host with thousands of virtual interfaces gives no better candidates).
MAX_INTERFACES = 256


def usable(address: str) -> bool:
    """Whether ``address`` is worth offering a peer as a host candidate."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)


def host_addresses(family: socket.AddressFamily | None = None) -> list[str]:
    """This host's usable addresses (IPv4 first), without duplicates; ``family`` to keep one kind."""
    found: list[str] = []
    if sys.platform.startswith("linux"):
        found += _linux_ipv4()
        found += _linux_ipv6()
    found += _routed()
    found += _by_host_name()
    unique = [a for a in dict.fromkeys(found) if usable(a)]
    if family is not None:
        want = 4 if family == socket.AF_INET else 6
        unique = [a for a in unique if ipaddress.ip_address(a).version == want]
    return sorted(unique, key=lambda a: ipaddress.ip_address(a).version)


def host_candidates(sockets: dict[int, socket.socket]) -> list[Candidate]:
    """A host candidate per usable address of each socket's family (a wildcard-bound socket) or for its
    own address (a socket bound to one address); interfaces in the order `host_addresses` gives them."""
    candidates = []
    for socket_id, sock in sockets.items():
        bound, port = sock.getsockname()[:2]
        addresses = host_addresses(sock.family) if bound in ("0.0.0.0", "::") else [bound]
        for rank, address in enumerate(a for a in addresses if usable(a)):
            candidates.append(
                Candidate(
                    CandidateKind.HOST, address, port, socket_id=socket_id, local_preference=65535 - rank
                )
            )
    return candidates


def _linux_ipv4() -> list[str]:
    import fcntl

    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex()[:MAX_INTERFACES]:
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on it
                continue
            found.append(socket.inet_ntoa(answer[20:24]))
    return found


def _linux_ipv6() -> list[str]:
    found = []
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as table:
        for line in itertools.islice(table, MAX_INTERFACES * 4):
            hex_address = line.split()[0] if line.split() else ""
            if len(hex_address) == 32:
                found.append(str(ipaddress.IPv6Address(bytes.fromhex(hex_address))))
    return found


def _routed() -> list[str]:
    found = []
    for family, target in _PROBE_TARGETS.items():
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))
            found.append(str(sock.getsockname()[0]))
    return found


def _by_host_name() -> list[str]:
    with contextlib.suppress(OSError, UnicodeError):
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_DGRAM)
        return [str(info[4][0]) for info in infos]
    return []
