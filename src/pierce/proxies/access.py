"""``allow_ips`` / ``deny_ips`` of a proxy: which visitor addresses the server lets in.

Checked on the server when a visitor arrives, before any byte of it reaches the client: a denied TCP
connection is reset, a denied HTTP request gets 403, a denied datagram is dropped. ``deny_ips`` wins;
a non-empty ``allow_ips`` lets in only what it lists. Entries are addresses or CIDR networks, IPv4 or
IPv6 (an IPv4-mapped IPv6 visitor address is matched as IPv4). Each refusal is counted in the proxy's
`ProxyStats.refused_connections` and logged (``proxy.ip_refused``, at most once a second per proxy
with a count).
"""

from __future__ import annotations

import ipaddress
import logging
import time

import msgspec

from pierce.errors import InvalidValue
from pierce.logs import event

log = logging.getLogger("pierce.proxy")

#: Entries per list (client configs and specs from the wire alike).
MAX_ENTRIES = 256
#: Seconds between two refusal log lines of one proxy.
LOG_EVERY_S = 1.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(key: str, entries: list[str]) -> tuple[Network, ...]:
    """The networks of ``entries``; `InvalidValue` naming ``key`` and the entry that is not one."""
    if len(entries) > MAX_ENTRIES:
        raise InvalidValue(key, f"expected at most {MAX_ENTRIES} entries, got {len(entries)}")
    found = []
    for entry in entries:
        try:
            found.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise InvalidValue(
                key, f'expected IP addresses or CIDR networks such as "192.168.1.0/24", got "{entry}"'
            ) from None
    return tuple(found)


class IpAccess(msgspec.Struct):
    """One proxy's lists, and its refusals."""

    proxy: str
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    refused: int = 0
    _logged_at: float = 0.0
    _unlogged: int = 0

    @classmethod
    def of(cls, proxy: str, allow: list[str], deny: list[str]) -> IpAccess | None:
        """None when both lists are empty (every visitor is let in, nothing to check)."""
        if not allow and not deny:
            return None
        return cls(proxy, parse_networks("allow_ips", allow), parse_networks("deny_ips", deny))

    def allows(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip.version == net.version and ip in net for net in self.deny):
            return False
        return not self.allow or any(ip.version == net.version and ip in net for net in self.allow)

    def admit(self, host: str) -> bool:
        """`allows`, counting and logging a refusal."""
        if self.allows(host):
            return True
        self.refused += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            event(
                log,
                logging.INFO,
                "proxy.ip_refused",
                f"{self.proxy}: visitor {host} refused by allow_ips/deny_ips"
                + (f" ({self._unlogged} since the last line)" if self._unlogged > 1 else ""),
                proxy=self.proxy,
                visitor=host,
                refused=self._unlogged,
            )
            self._logged_at = now
            self._unlogged = 0
        return False
