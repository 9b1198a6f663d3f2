"""The default IPv4 gateway: where NAT-PMP and PCP requests go (RFC 6886 section 3, RFC 6887 section 8.1).

Linux: the lowest-metric default route of ``/proc/net/route`` (readable without root). Elsewhere there
is no portable way without a subprocess, so `default_gateway` says so and the caller passes the
gateway's address itself.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from pierce.errors import LocalError

PROC_NET_ROUTE = Path("/proc/net/route")
_RTF_UP, _RTF_GATEWAY = 0x0001, 0x0002


class NoGateway(LocalError):
    """No default IPv4 gateway could be found."""


def parse_proc_net_route(text: str) -> list[tuple[int, str, ipaddress.IPv4Address]]:
    """(metric, interface, gateway) of each default route that is up and goes through a gateway,
    lowest metric first. Lines that do not parse are skipped (the file's format is the kernel's)."""
    routes: list[tuple[int, str, ipaddress.IPv4Address]] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, dest, gateway, flags, metric, mask = (
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            fields[6],
            fields[7],
        )
        try:
            if int(dest, 16) or int(mask, 16):
                continue
            if int(flags, 16) & (_RTF_UP | _RTF_GATEWAY) != _RTF_UP | _RTF_GATEWAY:
                continue
            # The kernel prints the address as a 32-bit hex number in host byte order.
            ip = ipaddress.IPv4Address(int(gateway, 16).to_bytes(4, sys.byteorder))
            routes.append((int(metric), iface, ip))
        except (ValueError, OverflowError):
            continue
    routes.sort(key=lambda route: route[0])
    return routes


def default_gateway(path: Path = PROC_NET_ROUTE) -> ipaddress.IPv4Address:
    """The default IPv4 gateway. Raises NoGateway with what to do when there is none or it cannot be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NoGateway(
            f"cannot find the default gateway: {path} does not exist (only Linux is read); "
            "give the router's address"
        ) from None
    except OSError as exc:
        raise NoGateway(f"cannot find the default gateway: {path}: {exc.strerror}") from exc
    routes = parse_proc_net_route(text)
    if not routes:
        raise NoGateway("no default IPv4 route through a gateway (is this host behind a router?)")
    return routes[0][2]
