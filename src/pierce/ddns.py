"""Dynamic DNS: keep ``[ddns] name`` pointing at this client's public address, by RFC 2136 UPDATE
messages signed with TSIG (RFC 8945), sent to the zone's primary with dnspython's asyncio API.

`DdnsUpdater` is told the public address (`want`) whenever someone learns it, as often as they like;
its task (`run`) sends an UPDATE only when the address differs from the one it last wrote, so a check
that finds the same address costs nothing at the DNS server. The first time, it asks the primary what the
name holds now (one query) and writes nothing when that is already right: a restarted client does not
bump the zone's serial. An UPDATE replaces the name's A rrset (and its AAAA rrset when an IPv6 address is
given) in one message, so the two never disagree for long.

A failed UPDATE is logged with the server's answer (NOTAUTH, REFUSED, SERVFAIL, or a TSIG error:
BADKEY, BADSIG, BADTIME) and tried again after a delay that doubles from `BACKOFF_FIRST`: up to
`BACKOFF_MAX` for answers that may pass (a timeout, SERVFAIL), up to `BACKOFF_MAX_REFUSED` when the
server refused the key or the update, which only an edit on one side can fix: a wrong key costs a
handful of attempts an hour, never a storm.

The client learns its public address from the pierce server's STUN responder (`stun_public_address`),
after every login and every ``check_interval_s`` (`watch`); ``pierce ddns-update`` does one update from
the command line. dnspython loads with this module, which loads only when ``[ddns]`` is configured.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

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
        #: What the name should hold, by record type ("A", "AAAA"); types absent are left alone.
        self.wanted: dict[str, str] = {}
        #: What it holds as far as we know (written by us, or found there): None until the first look.
        self.published: dict[str, str] | None = None
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

    def want(self, *addresses: str) -> None:
        """The public addresses now (an IPv4 one for A, an IPv6 one for AAAA); `run` writes them."""
        wanted = dict(self.wanted)
        for text in addresses:
            ip = ipaddress.ip_address(text)
            wanted["A" if ip.version == 4 else "AAAA"] = str(ip)
        if wanted != self.wanted:
            self.wanted = wanted
            self._changed.set()

    def pending(self) -> dict[str, str]:
        """The records that differ from what the server holds as far as we know."""
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
            message.replace(self.name, self.options.ttl, rdtype, address)
        self.attempts += 1
        response = await self._exchange(message, where)
        rcode = dns.rcode.to_text(response.rcode())
        if response.rcode() != dns.rcode.NOERROR:
            raise UpdateFailed(rcode, f"{self.server} answered the UPDATE of {self.label} with {rcode}")
        self.published = {**(self.published or {}), **changes}
        self.updates += 1
        self.failures = 0
        event(
            log,
            logging.INFO,
            "ddns.updated",
            f"{self.label} now points at {self._shown(changes)} ({self.server} took the update)",
            ddns_name=self.label,
            dns_server=self.server,
            **self._fields(changes),
        )
        return True

    async def _current(self, where: str) -> dict[str, str]:
        """What the primary holds for the name now: one address per type, when it holds exactly one."""
        found: dict[str, str] = {}
        for rdtype in self.wanted:
            query = dns.message.make_query(self.name, rdtype)
            response = await self._exchange(query, where)
            if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                rcode = dns.rcode.to_text(response.rcode())
                raise UpdateFailed(rcode, f"{self.server} answered a query for {self.label} with {rcode}")
            rrset = response.get_rrset(
                response.answer, self.name, dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
            )
            if rrset is not None and len(rrset) == 1 and rrset.ttl == self.options.ttl:
                found[rdtype] = rrset[0].to_text()
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
    def _fields(records: dict[str, str]) -> dict[str, str]:
        return {"ipv4" if t == "A" else "ipv6": a for t, a in records.items()}

    @staticmethod
    def _shown(records: dict[str, str]) -> str:
        return " and ".join(records.values())


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
            event(
                log,
                logging.DEBUG,
                "ddns.checked",
                f"the public address is {address} (STUN of {host}:{options.stun_port})",
                server=f"{host}:{options.stun_port}",
                **DdnsUpdater._fields({"A" if ":" not in address else "AAAA": address}),
            )
            updater.want(address)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
