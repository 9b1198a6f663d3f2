"""Dynamic DNS: keep ``[ddns] name`` pointing at this client's public address, by RFC 2136 UPDATE
messages signed with TSIG (RFC 8945), sent to the zone's primary with dnspython's asyncio API.

`DdnsUpdater` is told the public address (`want`) whenever someone learns it, as often as they like;
its task (`run`) sends an UPDATE only when the address differs from the one it last wrote, so a check
that finds the same address costs nothing at the DNS server. The first time, it asks the primary what the
name holds now (one query) and writes nothing when that is already right: a restarted client does not
bump the zone's serial. An UPDATE replaces the name's A rrset and its AAAA rrset (or deletes the AAAA
rrset when the host has no public IPv6 address any more) in one message, so the two never disagree for
long.

A failed UPDATE is logged with the server's answer (NOTAUTH, REFUSED, SERVFAIL, or a TSIG error:
BADKEY, BADSIG, BADTIME) and tried again after a delay that doubles from `BACKOFF_FIRST`: up to
`BACKOFF_MAX` for answers that may pass (a timeout, SERVFAIL), up to `BACKOFF_MAX_REFUSED` when the
server refused the key or the update, which only an edit on one side can fix: a wrong key costs a
handful of attempts an hour, never a storm.

The client learns its public IPv4 address from the pierce server's STUN responder
(`stun_public_address`), after every login and every ``check_interval_s`` (`watch`); ``pierce
ddns-update`` does one update from the command line. dnspython loads with this module, which loads only
when ``[ddns]`` is configured.

The public IPv6 address (``[ddns] ipv6 = "auto"``, the default) is read from this host's own interfaces
(`public_ipv6`, from the kernel's ``/proc/net/if_inet6``), not asked of a STUN server: a host with public
IPv6 normally has no NAT in front of it for IPv6, so the global address on its interface is the one the
internet reaches, and reading it costs no round trip and works when the pierce server has no IPv6 address
(STUN over IPv4 cannot tell it). Only a stable, usable, global address counts: not temporary (RFC 8981
privacy addresses change daily and are meant for outgoing connections only), not deprecated (its
prefix is being withdrawn), not one whose duplicate address detection failed, and global by
`ipaddress.IPv6Address.is_global` (so not link-local, ULA fc00::/7, documentation or other special
ranges). When the pierce server is reached over IPv6, its STUN answer is that address and is used as is.
When the host has no such address, the AAAA record is deleted rather than left behind: a stale AAAA makes
clients that prefer IPv6 try an address that no longer leads here first, and the A record alone still
reaches the host. ``ipv6 = "off"`` leaves the AAAA record alone (for a name whose AAAA is kept elsewhere).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from pierce.config import DdnsOptions, ddns_server
from pierce.logs import event
from pierce.nat import stun

log = logging.getLogger("pierce.ddns")

#: Seconds one DNS exchange (query or UPDATE, over UDP then TCP) may take.
TIMEOUT = 5.0
#: Seconds before the first retry of a failed UPDATE; each failure in a row doubles it ...
BACKOFF_FIRST = 1.0
#: ... up to this for failures that may pass by themselves (no answer, SERVFAIL) ...
BACKOFF_MAX = 300.0
#: ... and up to this when the server refused the key or the update (a config problem on either side).
BACKOFF_MAX_REFUSED = 3600.0
#: Answers that say the key or the permission is wrong: retrying soon cannot help.
REFUSALS = frozenset({"NOTAUTH", "REFUSED", "BADKEY", "BADSIG", "BADTIME", "NOTZONE"})
#: Seconds a STUN Binding to the pierce server may take (retransmitted every `STUN_RTO`).
STUN_TIMEOUT = 3.0
STUN_RTO = 0.5

#: The kernel's table of this host's IPv6 addresses (Linux, per network namespace): one a line, in hex,
#: ``address ifindex prefixlen scope flags ifname``, the flags being the low byte of IFA_F_*.
IF_INET6 = Path("/proc/net/if_inet6")
IFA_F_TEMPORARY = 0x01  # a privacy address (RFC 8981): for outgoing connections, replaced daily
IFA_F_DADFAILED = 0x08  # another host on the link has it
IFA_F_DEPRECATED = 0x20  # its preferred lifetime is over: the prefix is being withdrawn
IFA_F_PERMANENT = 0x80  # configured by hand, not by router advertisements
_NOT_PUBLISHED = IFA_F_TEMPORARY | IFA_F_DADFAILED | IFA_F_DEPRECATED

#: What `_current` records for a type whose rrset is there but is not one record at our TTL: never equal to
#: anything `want` asks for, so the next UPDATE replaces (or deletes) it.
_OTHER = "(other records)"

_TSIG_ERRORS: dict[type[Exception], str] = {
    dns.tsig.PeerBadKey: "BADKEY",
    dns.tsig.PeerBadSignature: "BADSIG",
    dns.tsig.PeerBadTime: "BADTIME",
    dns.tsig.PeerBadTruncation: "BADTRUNC",
}


class UpdateFailed(Exception):
    """The primary did not take an UPDATE: ``rcode`` is its answer (or TIMEOUT / NETWORK)."""

    def __init__(self, rcode: str, detail: str) -> None:
        self.rcode = rcode
        self.detail = detail
        super().__init__(f"{rcode}: {detail}")


class DdnsUpdater:
    """Writes the A (and AAAA) records of one name, never more often than the address changes."""

    def __init__(self, options: DdnsOptions, *, backoff_first: float = BACKOFF_FIRST) -> None:
        self.options = options
        self.backoff_first = backoff_first
        self.zone = dns.name.from_text(options.zone)
        self.name = (
            dns.name.from_text(options.name)
            if options.name.endswith(".")
            else dns.name.from_text(options.name, origin=self.zone)
        )
        self.key = dns.tsig.Key(
            options.key_name, base64.b64decode(options.key_secret), algorithm=options.algorithm
        )
        self.server_host, self.server_port = ddns_server(options.server)
        #: What the name should hold, by record type ("A", "AAAA"): an address, or None for no record of
        #: that type; types absent are left alone.
        self.wanted: dict[str, str | None] = {}
        #: What it holds as far as we know (written by us, or found there), None for none: None until the
        #: first look.
        self.published: dict[str, str | None] | None = None
        #: UPDATE messages sent, and how many the server took (tests and status read them).
        self.attempts = 0
        self.updates = 0
        self.failures = 0
        self._changed = asyncio.Event()

    @property
    def label(self) -> str:
        return self.name.to_text()

    @property
    def server(self) -> str:
        host = f"[{self.server_host}]" if ":" in self.server_host else self.server_host
        return f"{host}:{self.server_port}"

    def want(self, *addresses: str, absent: Collection[str] = ()) -> None:
        """The public addresses now (an IPv4 one for A, an IPv6 one for AAAA), and the record types the
        name should not have (``absent``: "AAAA" when the host has no public IPv6 address); `run`
        writes them."""
        wanted = dict(self.wanted)
        for rdtype in absent:
            wanted[rdtype] = None
        for text in addresses:
            ip = ipaddress.ip_address(text)
            wanted["A" if ip.version == 4 else "AAAA"] = str(ip)
        if wanted != self.wanted:
            self.wanted = wanted
            self._changed.set()

    def pending(self) -> dict[str, str | None]:
        """The records that differ from what the server holds as far as we know (None: to delete)."""
        published = self.published or {}
        return {t: a for t, a in self.wanted.items() if published.get(t) != a}

    async def run(self) -> None:
        """Write what `want` asked for whenever it differs from what is published, until cancelled."""
        delay = self.backoff_first
        while True:
            if not self.wanted or (self.published is not None and not self.pending()):
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                await self.sync()
            except UpdateFailed as exc:
                refused = exc.rcode in REFUSALS
                cap = BACKOFF_MAX_REFUSED if refused else BACKOFF_MAX
                self._log_failure(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)
            else:
                delay = self.backoff_first

    async def sync(self) -> bool:
        """Make the name hold `wanted`: look first when nothing is known, then UPDATE what differs.
        True when an UPDATE was sent and taken; raises UpdateFailed."""
        where = await self._resolve()
        if self.published is None:
            self.published = await self._current(where)
            if not self.pending():
                event(
                    log,
                    logging.INFO,
                    "ddns.unchanged",
                    f"{self.label} already points at {self._shown(self.wanted)} on {self.server}: "
                    "nothing to update",
                    ddns_name=self.label,
                    dns_server=self.server,
                    **self._fields(self.wanted),
                )
                return False
        changes = self.pending()
        message = dns.update.UpdateMessage(self.zone, keyring=self.key, keyname=self.key.name)
        for rdtype, address in changes.items():
            if address is None:
                message.delete(self.name, rdtype)
            else:
                message.replace(self.name, self.options.ttl, rdtype, address)
        self.attempts += 1
        response = await self._exchange(message, where)
        rcode = dns.rcode.to_text(response.rcode())
        if response.rcode() != dns.rcode.NOERROR:
            raise UpdateFailed(rcode, f"{self.server} answered the UPDATE of {self.label} with {rcode}")
        self.published = {**(self.published or {}), **changes}
        self.updates += 1
        self.failures = 0
        removed = sorted(t for t, a in changes.items() if a is None)
        what = f"now points at {self._shown(changes)}" if len(removed) < len(changes) else ""
        if removed:
            gone = f"no longer has {' or '.join(removed)} records"
            what = f"{what} and {gone}" if what else gone
        fields: dict[str, str] = self._fields(changes)
        if removed:
            fields["deleted"] = ",".join(removed)
        event(
            log,
            logging.INFO,
            "ddns.updated",
            f"{self.label} {what} ({self.server} took the update)",
            ddns_name=self.label,
            dns_server=self.server,
            **fields,
        )
        return True

    async def _current(self, where: str) -> dict[str, str | None]:
        """What the primary holds for the name now, per type: its address when it holds exactly one at our
        TTL, None when it holds none, `_OTHER` otherwise."""
        found: dict[str, str | None] = {}
        for rdtype in self.wanted:
            query = dns.message.make_query(self.name, rdtype)
            response = await self._exchange(query, where)
            if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                rcode = dns.rcode.to_text(response.rcode())
                raise UpdateFailed(rcode, f"{self.server} answered a query for {self.label} with {rcode}")
            rrset = response.get_rrset(
                response.answer, self.name, dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
            )
            if rrset is None or len(rrset) == 0:
                found[rdtype] = None
            elif len(rrset) == 1 and rrset.ttl == self.options.ttl:
                found[rdtype] = rrset[0].to_text()
            else:
                found[rdtype] = _OTHER
        return found

    async def _exchange(self, message: dns.message.Message, where: str) -> dns.message.Message:
        """One exchange over UDP (TCP when the answer is truncated), each bounded by `TIMEOUT`."""
        try:
            async with asyncio.timeout(TIMEOUT * 2):
                try:
                    return await dns.asyncquery.udp(
                        message, where, timeout=TIMEOUT, port=self.server_port, raise_on_truncation=True
                    )
                except dns.message.Truncated:
                    return await dns.asyncquery.tcp(message, where, timeout=TIMEOUT, port=self.server_port)
        except tuple(_TSIG_ERRORS) as exc:
            rcode = _TSIG_ERRORS[type(exc)]
            raise UpdateFailed(
                rcode, f"{self.server} refused key {self.options.key_name} ({rcode}): {_key_hint(rcode)}"
            ) from None
        except (dns.message.UnknownTSIGKey, dns.tsig.BadSignature, dns.message.BadTSIG) as exc:
            raise UpdateFailed("BADSIG", f"{self.server} answered without a valid signature: {exc}") from None
        except (TimeoutError, dns.exception.Timeout):
            raise UpdateFailed("TIMEOUT", f"{self.server} did not answer within {TIMEOUT:g} s") from None
        except (OSError, dns.exception.DNSException) as exc:
            raise UpdateFailed("NETWORK", f"cannot reach {self.server}: {exc}") from None

    async def _resolve(self) -> str:
        try:
            return str(ipaddress.ip_address(self.server_host))
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(TIMEOUT):
                infos = await loop.getaddrinfo(self.server_host, self.server_port, type=socket.SOCK_DGRAM)
        except (OSError, TimeoutError) as exc:
            raise UpdateFailed("NETWORK", f"cannot resolve {self.server_host}: {exc}") from None
        return str(infos[0][4][0])

    def _log_failure(self, exc: UpdateFailed, delay: float) -> None:
        self.failures += 1
        refused = exc.rcode in REFUSALS
        hint = (
            "; check [ddns] key_name, key_secret, algorithm and the zone's update policy" if refused else ""
        )
        event(
            log,
            logging.ERROR if refused else logging.WARNING,
            "ddns.failed",
            f"cannot update {self.label}: {exc.detail}{hint}; trying again in {delay:g} s",
            ddns_name=self.label,
            dns_server=self.server,
            rcode=exc.rcode,
            error=exc.detail,
            failures=self.failures,
            delay_s=delay,
        )

    @staticmethod
    def _fields(records: dict[str, str | None]) -> dict[str, str]:
        return {"ipv4" if t == "A" else "ipv6": a for t, a in records.items() if a is not None}

    @staticmethod
    def _shown(records: dict[str, str | None]) -> str:
        return " and ".join(a for a in records.values() if a is not None) or "no address"


def _key_hint(rcode: str) -> str:
    return {
        "BADKEY": "the server does not know this key name and algorithm",
        "BADSIG": "the secret does not match the server's",
        "BADTIME": "this host's clock is too far from the server's",
    }.get(rcode, "the signature was not accepted")


# -- where the address comes from -------------------------------------------------------------------


class _StunProtocol(asyncio.DatagramProtocol):
    def __init__(self, transaction_id: bytes) -> None:
        self.transaction_id = transaction_id
        self.answer: asyncio.Future[stun.Endpoint] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        with contextlib.suppress(stun.StunParseError):
            message = stun.decode(data)
            if (
                message.transaction_id == self.transaction_id
                and message.cls is stun.Class.SUCCESS
                and (mapped := message.reflexive_address) is not None
                and not self.answer.done()
            ):
                self.answer.set_result(mapped)


async def stun_public_address(host: str, port: int, *, timeout: float = STUN_TIMEOUT) -> str:
    """This host's public address as the STUN server ``host:port`` sees it (a pierce server's STUN
    responder); raises OSError or TimeoutError."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, dest = infos[0]
        request = stun.binding_request(software="pierce")
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _StunProtocol(request.transaction_id), family=family
        )
        try:
            while True:
                transport.sendto(stun.encode(request), dest)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STUN_RTO):
                        mapped = await asyncio.shield(protocol.answer)
                        return str(mapped.ip)
        finally:
            transport.close()


def global_ipv6_addresses(table: str) -> list[ipaddress.IPv6Address]:
    """The addresses of a ``/proc/net/if_inet6`` table that may be published: global
    (`ipaddress.IPv6Address.is_global`: not link-local, ULA, documentation...), neither temporary,
    deprecated nor failed in duplicate address detection; hand-configured ones first, then by address."""
    found: list[tuple[bool, ipaddress.IPv6Address]] = []
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        try:
            ip = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            flags = int(fields[4], 16)
        except ValueError:
            continue
        if flags & _NOT_PUBLISHED or not ip.is_global:
            continue
        found.append((not flags & IFA_F_PERMANENT, ip))
    return [ip for _, ip in sorted(set(found))]


def public_ipv6(prefer: str | None = None, table: Path = IF_INET6) -> str | None:
    """This host's public IPv6 address (module doc), None when it has none; ``prefer`` (the one published
    now) while it is still there, so a host with several does not flip between them. Raises OSError when
    this system does not say (no ``/proc/net/if_inet6`` outside Linux)."""
    try:
        text = table.read_text()
    except FileNotFoundError:
        if sys.platform.startswith("linux"):
            return None  # a kernel without IPv6 (ipv6.disable=1) has no table
        raise
    candidates = [str(ip) for ip in global_ipv6_addresses(text)]
    if prefer is not None and prefer in candidates:
        return prefer
    return candidates[0] if candidates else None


def addresses_to_publish(
    stun_address: str, options: DdnsOptions, published: str | None = None
) -> tuple[list[str], list[str]]:
    """What to hand to `DdnsUpdater.want`: the address STUN saw and, when that is IPv4 and ``ipv6`` is
    "auto", this host's public IPv6 address (``published``: the AAAA published now, kept while it is
    still there), or "AAAA" among the types to delete when it has none. When the system cannot tell, the
    AAAA record is left alone."""
    if ":" in stun_address or options.ipv6 != "auto":
        return [stun_address], []
    try:
        ipv6 = public_ipv6(prefer=published)
    except OSError:
        return [stun_address], []
    return ([stun_address, ipv6], []) if ipv6 is not None else ([stun_address], ["AAAA"])


async def watch(
    updater: DdnsUpdater,
    server_host: Callable[[], str],
    logged_in: asyncio.Event,
    *,
    lookup: Callable[[str, int], Awaitable[str]] = stun_public_address,
) -> None:
    """The client's side: ask the pierce server's STUN responder for the public address after every
    login (``logged_in`` is set) and every ``check_interval_s``, and hand it to ``updater``."""
    options = updater.options
    writer = asyncio.get_running_loop().create_task(updater.run())
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.check_interval_s):
                    await logged_in.wait()
            logged_in.clear()
            host = server_host()
            try:
                address = await lookup(host, options.stun_port)
            except (OSError, TimeoutError) as exc:
                error = str(exc) or "no answer"
                event(
                    log,
                    logging.WARNING,
                    "ddns.no_address",
                    f"cannot learn the public address from {host}:{options.stun_port} (STUN): {error}",
                    server=f"{host}:{options.stun_port}",
                    error=error,
                )
                continue
            current = (updater.published or {}).get("AAAA")
            addresses, absent = addresses_to_publish(address, options, current)
            ipv6 = f"; IPv6 {addresses[1]} (this host's interfaces)" if len(addresses) > 1 else ""
            none = "; no public IPv6 address on this host's interfaces" if absent else ""
            event(
                log,
                logging.DEBUG,
                "ddns.checked",
                f"the public address is {address} (STUN of {host}:{options.stun_port}){ipv6}{none}",
                server=f"{host}:{options.stun_port}",
                **DdnsUpdater._fields({"A" if ":" not in a else "AAAA": a for a in addresses}),
            )
            updater.want(*addresses, absent=absent)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
