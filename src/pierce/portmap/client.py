"""Ask the router for a port mapping over PCP (RFC 6887), falling back to NAT-PMP (RFC 6886), then to
UPnP-IGD (`pierce.portmap.upnp`).

One `PortMapClient` talks to one gateway from one connected UDP socket; only datagrams from the
gateway's address and port 5351 reach it (the kernel filters a connected socket; the protocol checks
again), at most `MAX_QUEUED` wait unread, and every answer is matched to its request: PCP by opcode,
nonce, protocol and internal port; NAT-PMP by opcode and internal port. Anything else is ignored.

Order (RFC 6887 appendix A): PCP first. A gateway that only speaks NAT-PMP answers a PCP request with
NAT-PMP's 8-byte "unsupported version" and the client switches at once; one that does not answer PCP
within ``pcp_wait`` gets NAT-PMP for what is left of the deadline. The protocol that answered is kept
for later calls. An ICMP "port unreachable" (no daemon) ends the attempt at once.

UPnP-IGD comes last, and only when neither PCP nor NAT-PMP answered at all (a refusal is an answer: the
router spoke, and its reason is the one to report). PCP and NAT-PMP are one unicast datagram to the known
gateway: an answer, or a definite "no" (ICMP port unreachable) within one round trip, an epoch that
reports a restart, and little to parse. UPnP needs a multicast search that can only end by waiting out
its time when no device answers, then HTTP and XML from the router; asked last, its wait is spent only
on routers that speak nothing else. So "nothing answered" takes at most ``deadline`` plus UPnP's
discovery time (2 s), and a router that refuses UDP 5351 costs UPnP nothing. The methods tried can be
narrowed (``methods``, `pierce map-port --method`).

Retransmission: both protocols from `natpmp.INITIAL_RTO` (250 ms, RFC 6886 section 3.1), doubling, each
request ending at one overall ``deadline`` (default `DEFAULT_DEADLINE`). RFC 6887 section 8.1.1 starts
PCP at 3 s and keeps trying for ever; a caller that must say "no port mapping protocol answered" in
bounded time, and get a usable mapping in well under 2 s when a datagram is lost, cannot wait that long,
so PCP gets NAT-PMP's schedule (still well under RFC 6887's rate limit for a client).

Every answer carries the gateway's epoch; `Mapping.restarted` / `ExternalAddress.restarted` say when it
shows the gateway lost its state since the previous answer (`pierce.portmap.epoch`): the caller then
asks for its mappings again.

Which coroutines may be cancelled: all of them; a cancelled request leaves nothing behind but the
datagrams already sent (a mapping the gateway may have made expires with its lifetime).

One client may be shared by tasks (the direct paths of `pierce.p2p.owner` each map a port, and their
`pierce.portmap.lease.Lease` renewals run whenever they fall due): its requests take turns, one exchange
with the gateway at a time, since answers arrive on one socket and each exchange reads them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, TypeVar

import msgspec

from pierce.addr import IPAddress
from pierce.errors import LocalError, RemoteError
from pierce.portmap import natpmp, pcp
from pierce.portmap.epoch import EpochTracker
from pierce.portmap.gateway import NoGateway, default_gateway
from pierce.portmap.pcp import Protocol

if TYPE_CHECKING:
    from pierce.portmap.upnp import UpnpClient

#: Seconds one call (map, renew, delete, external address) may take before it gives up.
DEFAULT_DEADLINE = 3.0
#: Seconds PCP gets to answer before NAT-PMP is tried (when the gateway's protocol is not known yet).
DEFAULT_PCP_WAIT = 1.0
#: Lifetime asked for by default: RFC 6886 section 3.3 recommends two hours.
DEFAULT_LIFETIME = 7200
#: Datagrams waiting to be read; more are dropped (only the gateway can send them, but still).
MAX_QUEUED = 16
_MAX_DATAGRAM = pcp.MAX_SIZE

T = TypeVar("T")


class Method(enum.Enum):
    PCP = "pcp"
    NATPMP = "nat-pmp"
    UPNP = "upnp"


#: Every method, in the order they are tried.
ALL_METHODS = (Method.PCP, Method.NATPMP, Method.UPNP)


class Mapping(msgspec.Struct, frozen=True):
    """A mapping the gateway granted: ``external_ip:external_port`` reaches ``internal_port`` here."""

    method: Method
    gateway: ipaddress.IPv4Address
    protocol: Protocol
    internal_port: int
    external_ip: IPAddress | None  # None when NAT-PMP could not tell the external address
    external_port: int
    #: Seconds granted (may be shorter than asked for); renew before they run out. 0: permanent (a UPnP
    #: router that keeps only permanent mappings); it must be deleted.
    lifetime: int
    #: The gateway's epoch in its answer, and whether it shows the gateway lost its state since the
    #: previous answer this client saw (UPnP has no epoch: 0, and restarted when a renewal found the
    #: mapping gone).
    epoch: int
    restarted: bool
    #: PCP names a mapping by this nonce: renewals and the deletion must repeat it. Empty for NAT-PMP.
    nonce: bytes = b""


class ExternalAddress(msgspec.Struct, frozen=True):
    method: Method
    ip: IPAddress
    epoch: int
    restarted: bool


class PortMapRefused(RemoteError):
    """The gateway answered with a failure result code (UPnP: the router's UPnP error code)."""

    def __init__(self, method: Method, result: int, text: str, lifetime: int = 0) -> None:
        super().__init__(f"{method.value}: {text} (result {result})")
        self.method = method
        self.result = result
        #: PCP: for how many seconds the error holds (retry after it for the transient ones).
        self.lifetime = lifetime


class NoPortMapping(LocalError):
    """No port mapping protocol answered (no daemon, or it is turned off, or something drops it)."""


#: How a NoPortMapping of the first attempt starts (`pierce map-port` prints it).
NO_ANSWER = "no port mapping protocol answered: "


class NoPublicAddress(PortMapRefused):
    """The router answered, but has no public external address to map a port on: its own outside address
    is private or shared (RFC 1918, RFC 6598), so another NAT sits beyond it (a second home router, the
    carrier's NAT). miniupnpd 2.3 then refuses every request (NAT-PMP and PCP "network failure", PCP MAP
    "no resources", UPnP 501 with an empty external address); any mapping there would be useless anyway,
    as nobody on the internet reaches that address. ``refusals``: what the router said."""

    def __init__(
        self,
        gateway: object | None,
        refusals: Sequence[PortMapRefused],
        external_ip: IPAddress | None = None,
    ) -> None:
        first = refusals[0]
        super().__init__(first.method, first.result, "", first.lifetime)
        router = f"the router {gateway}" if gateway else "the router"
        where = f"its outside address {external_ip} is private or shared, so " if external_ip else ""
        said = "; ".join(dict.fromkeys(str(r) for r in refusals))
        self.args = (
            f"{router} {NO_PUBLIC_ADDRESS}: {where}another NAT sits beyond it (a second router, or the "
            f"carrier's), so no port can be mapped there that the internet could reach ({said})",
        )
        self.external_ip = external_ip


#: What `NoPublicAddress` says (`pierce map-port` and `pierce nat` print it).
NO_PUBLIC_ADDRESS = "has no public external address"
#: Refusals that may mean "no public external address" (then the router is asked for its address).
_MAYBE_NO_ADDRESS = {
    Method.PCP: frozenset({pcp.Result.NETWORK_FAILURE, pcp.Result.NO_RESOURCES}),
    Method.NATPMP: frozenset({natpmp.Result.NETWORK_FAILURE}),
    Method.UPNP: frozenset({501}),  # ActionFailed
}
#: Refusals that say it by themselves.
_NO_ADDRESS = {(Method.PCP, pcp.Result.NETWORK_FAILURE), (Method.NATPMP, natpmp.Result.NETWORK_FAILURE)}


class _NatPmpOnly:
    """A PCP request was answered by a NAT-PMP-only gateway."""


_NATPMP_ONLY = _NatPmpOnly()


def _answers_lifetime(result: int, granted: int, asked: int) -> bool:
    """Can a successful answer granting ``granted`` seconds be the one to a request for ``asked``? A
    deletion (0) is answered with 0, a mapping never is: a late duplicate of the answer that created a
    mapping must not pass for the answer to its deletion (the nonce and ports are the same)."""
    return result != 0 or (granted == 0) == (asked == 0)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.queue: asyncio.Queue[bytes | OSError] = asyncio.Queue(MAX_QUEUED)
        self.dropped = 0

    def _put(self, item: bytes | OSError) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if (addr[0], addr[1]) != self.peer or len(data) > _MAX_DATAGRAM:
            self.dropped += 1
            return
        self._put(data)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self._put(exc)


class PortMapClient:
    """Port mappings on one gateway. ``async with PortMapClient() as client: await client.map_port(...)``."""

    def __init__(
        self,
        gateway: ipaddress.IPv4Address | None = None,
        *,
        port: int = natpmp.PORT,
        deadline: float = DEFAULT_DEADLINE,
        pcp_wait: float = DEFAULT_PCP_WAIT,
        rto: float = natpmp.INITIAL_RTO,
        methods: Collection[Method] = ALL_METHODS,
        upnp_location: str | None = None,
        upnp_discover_timeout: float | None = None,
    ) -> None:
        if not methods:
            raise ValueError("at least one port mapping method")
        self.gateway = gateway
        #: The methods that may be tried, in `ALL_METHODS` order.
        self.methods = tuple(m for m in ALL_METHODS if m in methods)
        self.upnp_location = upnp_location
        self.upnp_discover_timeout = upnp_discover_timeout
        self.port = port
        self.deadline = deadline
        self.pcp_wait = pcp_wait
        self.rto = rto
        #: The protocol the gateway answered, once known.
        self.method: Method | None = None
        #: Requests sent, retransmissions included (what a test or a status line reads).
        self.sent = 0
        self._epochs = {Method.PCP: EpochTracker(), Method.NATPMP: EpochTracker()}
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Datagrams | None = None
        self._local_ip: IPAddress = pcp.ANY_V4
        self._upnp: UpnpClient | None = None
        #: Held by one exchange at a time (module doc).
        self._turn = asyncio.Lock()

    @property
    def upnp(self) -> UpnpClient:
        """The UPnP-IGD client (its module, async-upnp-client and aiohttp load with the first use)."""
        if self._upnp is None:
            from pierce.portmap import upnp

            kwargs = (
                {} if self.upnp_discover_timeout is None else {"discover_timeout": self.upnp_discover_timeout}
            )
            self._upnp = upnp.UpnpClient(self.gateway, location=self.upnp_location, **kwargs)
        return self._upnp

    async def open(self) -> None:
        if self.methods == (Method.UPNP,):
            # No UDP socket to the gateway: UPnP finds its router by SSDP (or its URL), preferring the
            # default gateway's IGD when there is a default gateway.
            if self.gateway is None and self.upnp_location is None:
                with contextlib.suppress(NoGateway):
                    self.gateway = default_gateway()
            return
        if self.gateway is None:
            self.gateway = default_gateway()
        peer = (str(self.gateway), self.port)
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Datagrams(peer), remote_addr=peer
            )
        except OSError as exc:
            raise NoPortMapping(f"cannot reach the gateway {self.gateway}: {exc.strerror or exc}") from exc
        self._transport, self._protocol = transport, protocol
        self._local_ip = ipaddress.ip_address(transport.get_extra_info("sockname")[0])

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> PortMapClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- the calls ---------------------------------------------------------------------------------

    async def map_port(
        self,
        protocol: Protocol,
        internal_port: int,
        *,
        external_port: int = 0,
        lifetime: int = DEFAULT_LIFETIME,
        nonce: bytes | None = None,
    ) -> Mapping:
        """Ask for ``internal_port`` to be reachable from outside (``external_port``: a preference, 0 for
        none). Raises PortMapRefused when the gateway says no (NoPublicAddress when that is because it
        has no public external address), NoPortMapping when nothing answered."""
        if lifetime <= 0:
            raise ValueError("a mapping's lifetime is at least 1 second (delete() removes one)")
        try:
            return await self._map_port(protocol, internal_port, external_port, lifetime, nonce)
        except PortMapRefused as exc:
            why = await self._why_refused(exc)
            if why is exc:
                raise
            raise why from exc

    async def _why_refused(self, refused: PortMapRefused) -> PortMapRefused:
        """``refused``, or NoPublicAddress when the router has no public external address: a refusal
        that may mean that is checked by asking the router for its address (NAT-PMP's request, which
        miniupnpd answers on PCP's port too; UPnP's GetExternalIPAddress)."""
        if isinstance(refused, NoPublicAddress) or refused.result not in _MAYBE_NO_ADDRESS[refused.method]:
            return refused
        said = refused.method, refused.result
        address: ExternalAddress | None
        try:
            if refused.method is Method.UPNP:
                address = await self.upnp.external_address()
            else:
                loop = asyncio.get_running_loop()
                address = await self._natpmp_address(loop.time() + self.deadline)
        except PortMapRefused as again:
            if again.method is Method.UPNP or (again.method, again.result) in _NO_ADDRESS:
                return NoPublicAddress(self.gateway, [refused, again])
            address = None
        except NoPortMapping:
            address = None
        if address is not None and not address.ip.is_global:
            return NoPublicAddress(self.gateway, [refused], address.ip)
        if address is None and said in _NO_ADDRESS:
            return NoPublicAddress(self.gateway, [refused])
        return refused

    async def _map_port(
        self, protocol: Protocol, internal_port: int, external_port: int, lifetime: int, nonce: bytes | None
    ) -> Mapping:
        if self.method is Method.UPNP:
            return await self.upnp.map_port(
                protocol, internal_port, external_port=external_port, lifetime=lifetime
            )
        udp_methods = [m for m in self.methods if m is not Method.UPNP]
        if self.method is not None or udp_methods:
            known = self.method is not None
            try:
                return await self._udp_map_port(protocol, internal_port, external_port, lifetime, nonce)
            except NoPortMapping as exc:
                if known or Method.UPNP not in self.methods:
                    raise
                before = str(exc).removeprefix(NO_ANSWER)
        else:
            before = ""
        try:
            mapping = await self.upnp.map_port(
                protocol, internal_port, external_port=external_port, lifetime=lifetime
            )
        except NoPortMapping as exc:
            raise NoPortMapping(NO_ANSWER + "; ".join(filter(None, (before, str(exc))))) from exc
        self.method = Method.UPNP
        return mapping

    async def _udp_map_port(
        self, protocol: Protocol, internal_port: int, external_port: int, lifetime: int, nonce: bytes | None
    ) -> Mapping:
        """PCP, then NAT-PMP (of those in ``methods``, or the one the gateway answered before)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        tried: list[str] = []
        pcp_allowed = self.method is Method.PCP or (self.method is None and Method.PCP in self.methods)
        natpmp_allowed = self.method is Method.NATPMP or (
            self.method is None and Method.NATPMP in self.methods
        )
        if pcp_allowed:
            until = (
                deadline
                if self.method is Method.PCP or not natpmp_allowed
                else min(deadline, loop.time() + self.pcp_wait)
            )
            answer = await self._pcp_map(protocol, internal_port, external_port, lifetime, nonce, until)
            if isinstance(answer, Mapping):
                self.method = Method.PCP
                return answer
            if answer is _NATPMP_ONLY and natpmp_allowed:
                self.method = Method.NATPMP
            elif self.method is Method.PCP:
                raise NoPortMapping(f"the gateway {self.gateway} stopped answering PCP")
            elif answer is _NATPMP_ONLY:
                raise NoPortMapping(f"{NO_ANSWER}the gateway {self.gateway} speaks NAT-PMP, not PCP")
            else:
                tried.append("PCP")
        mapping = (
            await self._natpmp_map(protocol, internal_port, external_port, lifetime, deadline)
            if natpmp_allowed or self.method is Method.NATPMP
            else None
        )
        if mapping is None:
            if natpmp_allowed:
                tried.append("NAT-PMP")
            raise NoPortMapping(
                f"{NO_ANSWER}{' and '.join(tried)} to {self.gateway}:{self.port} "
                f"got no answer in {self.deadline:g} s"
            )
        self.method = Method.NATPMP
        return mapping

    async def renew(self, mapping: Mapping, lifetime: int | None = None) -> Mapping:
        """Ask again for ``mapping`` (same nonce, same external port preferred) before it runs out, or
        after `Mapping.restarted` said the gateway forgot it. UPnP: AddPortMapping again, after checking
        that the router still has the mapping (``restarted`` when it had lost it)."""
        self.method = mapping.method
        if mapping.method is Method.UPNP:
            return await self.upnp.renew(mapping, mapping.lifetime if lifetime is None else lifetime)
        return await self.map_port(
            mapping.protocol,
            mapping.internal_port,
            external_port=mapping.external_port,
            lifetime=mapping.lifetime if lifetime is None else lifetime,
            nonce=mapping.nonce or None,
        )

    async def delete(self, mapping: Mapping) -> None:
        """Remove ``mapping`` (a lifetime-0 request; UPnP: DeletePortMapping). Raises PortMapRefused /
        NoPortMapping."""
        if mapping.method is Method.UPNP:
            await self.upnp.delete(mapping)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        if mapping.method is Method.PCP:
            answer = await self._pcp_map(
                mapping.protocol,
                mapping.internal_port,
                mapping.external_port,
                0,
                mapping.nonce,
                deadline,
                external_ip=mapping.external_ip,
            )
            done = answer is not None
        else:
            done = (
                await self._natpmp_map(
                    mapping.protocol, mapping.internal_port, mapping.external_port, 0, deadline
                )
            ) is not None
        if not done:
            raise NoPortMapping(
                f"the gateway {self.gateway} did not answer the deletion in {self.deadline:g} s"
            )

    async def external_address(self) -> ExternalAddress:
        """The gateway's external IPv4 address (NAT-PMP opcode 0; PCP has no request for it alone, its
        MAP answers carry it); UPnP's GetExternalIPAddress once the gateway answered UPnP. Raises
        NoPublicAddress when the router says it has none (NAT-PMP "network failure", UPnP ActionFailed or
        an empty address)."""
        try:
            if self.method is Method.UPNP or self.methods == (Method.UPNP,):
                return await self.upnp.external_address()
            loop = asyncio.get_running_loop()
            answer = await self._natpmp_address(loop.time() + self.deadline)
        except PortMapRefused as exc:
            if (exc.method, exc.result) in _NO_ADDRESS or (exc.method, exc.result) == (Method.UPNP, 501):
                raise NoPublicAddress(self.gateway, [exc]) from exc
            raise
        if answer is None:
            raise NoPortMapping(f"NAT-PMP to {self.gateway}:{self.port} got no answer in {self.deadline:g} s")
        return answer

    async def announce(self) -> Method | None:
        """Which protocol the gateway speaks, asked with a PCP ANNOUNCE (RFC 6887 section 14.1): PCP when
        a PCP answer comes (success or error: a PCP server is there), NAT-PMP when the gateway answers
        with NAT-PMP's "unsupported version", None when nothing answers within the deadline. An ICMP
        refusal raises NoPortMapping, as every call does."""

        def match(data: bytes) -> Method | None:
            if data[:1] == b"\x00":
                try:
                    old = natpmp.decode_response(data)
                except natpmp.NatPmpParseError:
                    return None
                return Method.NATPMP if isinstance(old, natpmp.ErrorResponse) else None
            try:
                answer = pcp.decode_response(data)
            except pcp.PcpParseError:
                return None
            if isinstance(answer, pcp.AnnounceResponse):
                return Method.PCP
            if isinstance(answer, pcp.ErrorResponse) and answer.opcode == pcp.Opcode.ANNOUNCE:
                return Method.PCP
            return None

        loop = asyncio.get_running_loop()
        request = pcp.encode_request(pcp.AnnounceRequest(self._local_ip))
        return await self._exchange(request, match, loop.time() + self.deadline)

    # -- PCP -----------------------------------------------------------------------------------------

    async def _pcp_map(
        self,
        protocol: Protocol,
        internal_port: int,
        external_port: int,
        lifetime: int,
        nonce: bytes | None,
        until: float,
        *,
        external_ip: IPAddress | None = None,
    ) -> Mapping | _NatPmpOnly | None:
        nonce = nonce or pcp.new_nonce()
        any_ip = pcp.ANY_V4 if self._local_ip.version == 4 else pcp.ANY_V6
        request = pcp.MapRequest(
            self._local_ip, nonce, protocol, internal_port, lifetime, external_port, external_ip or any_ip
        )

        def match(data: bytes) -> pcp.MapResponse | pcp.ErrorResponse | _NatPmpOnly | None:
            if data[:1] == b"\x00":
                try:
                    old = natpmp.decode_response(data)
                except natpmp.NatPmpParseError:
                    return None
                return _NATPMP_ONLY if old.result == natpmp.Result.UNSUPPORTED_VERSION else None
            try:
                answer = pcp.decode_response(data)
            except pcp.PcpParseError:
                return None
            if isinstance(answer, pcp.MapResponse):
                if (answer.nonce, answer.protocol, answer.internal_port) != (nonce, protocol, internal_port):
                    return None
                return answer if _answers_lifetime(answer.result, answer.lifetime, lifetime) else None
            if isinstance(answer, pcp.ErrorResponse) and answer.opcode == pcp.Opcode.MAP:
                return answer
            return None

        answer: pcp.MapResponse | pcp.ErrorResponse | _NatPmpOnly | None
        answer = await self._exchange(pcp.encode_request(request), match, until)
        if answer is None or isinstance(answer, _NatPmpOnly):
            return answer
        if isinstance(answer, pcp.ErrorResponse) and answer.result == pcp.Result.UNSUPP_VERSION:
            return _NATPMP_ONLY  # a PCP server of another version: NAT-PMP may still work
        restarted = self._epochs[Method.PCP].observe(answer.epoch, asyncio.get_running_loop().time())
        if answer.result != pcp.Result.SUCCESS:
            raise PortMapRefused(Method.PCP, answer.result, pcp.result_text(answer.result), answer.lifetime)
        assert isinstance(answer, pcp.MapResponse)
        assert self.gateway is not None
        return Mapping(
            Method.PCP,
            self.gateway,
            protocol,
            internal_port,
            answer.external_ip,
            answer.external_port,
            answer.lifetime,
            answer.epoch,
            restarted,
            nonce,
        )

    # -- NAT-PMP -------------------------------------------------------------------------------------

    async def _natpmp_map(
        self, protocol: Protocol, internal_port: int, external_port: int, lifetime: int, until: float
    ) -> Mapping | None:
        opcode = natpmp.Opcode.MAP_UDP if protocol is Protocol.UDP else natpmp.Opcode.MAP_TCP
        # Deleting, RFC 6886 section 3.4 wants suggested port 0 (and the gateway to ignore it); miniupnpd
        # reads 0 as "the internal port" and would delete the wrong mapping, so the external port goes.
        request = natpmp.MapRequest(opcode, internal_port, external_port, lifetime)

        def match(data: bytes) -> natpmp.MapResponse | natpmp.ErrorResponse | None:
            try:
                answer = natpmp.decode_response(data)
            except natpmp.NatPmpParseError:
                return None
            if isinstance(answer, natpmp.MapResponse):
                if (answer.opcode, answer.internal_port) != (opcode, internal_port):
                    return None
                return answer if _answers_lifetime(answer.result, answer.lifetime, lifetime) else None
            if isinstance(answer, natpmp.ErrorResponse) and answer.opcode == opcode:
                return answer
            return None

        answer: natpmp.MapResponse | natpmp.ErrorResponse | None
        answer = await self._exchange(natpmp.encode_request(request), match, until)
        if answer is None:
            return None
        restarted = self._epochs[Method.NATPMP].observe(answer.epoch, asyncio.get_running_loop().time())
        if answer.result != natpmp.Result.SUCCESS or isinstance(answer, natpmp.ErrorResponse):
            raise PortMapRefused(Method.NATPMP, answer.result, natpmp.result_text(answer.result))
        external_ip: IPAddress | None = None
        if lifetime:
            try:
                address = await self._natpmp_address(until)
            except PortMapRefused:
                address = None
            if address is not None:
                external_ip = address.ip
                restarted = restarted or address.restarted
        assert self.gateway is not None
        return Mapping(
            Method.NATPMP,
            self.gateway,
            protocol,
            internal_port,
            external_ip,
            answer.external_port,
            answer.lifetime,
            answer.epoch,
            restarted,
        )

    async def _natpmp_address(self, until: float) -> ExternalAddress | None:
        def match(data: bytes) -> natpmp.ExternalAddressResponse | natpmp.ErrorResponse | _NatPmpOnly | None:
            if data[:1] != b"\x00":
                try:
                    new = pcp.decode_response(data)
                except pcp.PcpParseError:
                    return None
                return _NATPMP_ONLY if new.result == pcp.Result.UNSUPP_VERSION else None
            try:
                answer = natpmp.decode_response(data)
            except natpmp.NatPmpParseError:
                return None
            if isinstance(answer, natpmp.ExternalAddressResponse):
                return answer
            if isinstance(answer, natpmp.ErrorResponse) and answer.opcode == natpmp.Opcode.EXTERNAL_ADDRESS:
                return answer
            return None

        request = natpmp.encode_request(natpmp.ExternalAddressRequest())
        answer: natpmp.ExternalAddressResponse | natpmp.ErrorResponse | _NatPmpOnly | None
        answer = await self._exchange(request, match, until)
        if answer is None:
            return None
        if isinstance(answer, _NatPmpOnly):
            raise NoPortMapping(
                f"the gateway {self.gateway} speaks PCP only, which tells the external address with a mapping"
            )
        restarted = self._epochs[Method.NATPMP].observe(answer.epoch, asyncio.get_running_loop().time())
        if answer.result != natpmp.Result.SUCCESS or isinstance(answer, natpmp.ErrorResponse):
            raise PortMapRefused(Method.NATPMP, answer.result, natpmp.result_text(answer.result))
        return ExternalAddress(Method.NATPMP, answer.address, answer.epoch, restarted)

    # -- one request, retransmitted --------------------------------------------------------------

    async def _exchange(self, payload: bytes, match: Callable[[bytes], T | None], until: float) -> T | None:
        """Send ``payload`` at 0, rto, 3 rto, 7 rto ... until ``match`` accepts an answer (returned) or
        loop time ``until`` passes (None). An ICMP error from the gateway raises NoPortMapping."""
        async with self._turn:
            return await self._exchange_now(payload, match, until)

    async def _exchange_now(
        self, payload: bytes, match: Callable[[bytes], T | None], until: float
    ) -> T | None:
        transport, protocol = self._transport, self._protocol
        if transport is None or protocol is None:
            raise RuntimeError("PortMapClient used before open() or after close()")
        loop = asyncio.get_running_loop()
        rto = self.rto
        while not protocol.queue.empty():  # late duplicates of earlier answers
            protocol.queue.get_nowait()
        while (now := loop.time()) < until:
            transport.sendto(payload)
            self.sent += 1
            resend_at = min(now + rto, until)
            rto *= 2
            while (left := resend_at - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(protocol.queue.get(), left)
                except TimeoutError:
                    break
                if isinstance(item, OSError):
                    raise NoPortMapping(
                        f"{NO_ANSWER}the gateway {self.gateway}:{self.port} refused "
                        f"({item.strerror or item}; no NAT-PMP/PCP daemon there)"
                    ) from item
                answer = match(item)
                if answer is not None:
                    return answer
        return None


async def map_port(
    protocol: Protocol,
    internal_port: int,
    *,
    external_port: int = 0,
    lifetime: int = DEFAULT_LIFETIME,
    gateway: ipaddress.IPv4Address | None = None,
    port: int = natpmp.PORT,
    deadline: float = DEFAULT_DEADLINE,
) -> Mapping:
    """One mapping from the default gateway (or ``gateway``) with a client of its own; a caller that
    renews or deletes it keeps a `PortMapClient` open instead (the protocol that answered is kept)."""
    async with PortMapClient(gateway, port=port, deadline=deadline) as client:
        return await client.map_port(protocol, internal_port, external_port=external_port, lifetime=lifetime)
