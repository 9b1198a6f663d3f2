"""What `pierce nat` says about the router: which port mapping protocols it answers, its external address,
and whether a mapping there would be of any use.

PCP, NAT-PMP and UPnP-IGD are asked at once: PCP's ANNOUNCE, NAT-PMP's and UPnP's external address
request. UPnP takes longest when no device answers (its SSDP search waits `upnp.DEFAULT_DISCOVER_TIMEOUT`,
2 s), so the probe takes at most about that much.

A mapping is of use only when the router's external address is the host's public address: an external
address that is private or shared (RFC 1918, RFC 6598's 100.64.0.0/10 of carrier-grade NAT) or one that
differs from the address a STUN server sees means another NAT sits beyond the router, and a port opened
on it is not reachable from the internet. A router that refuses to tell its external address with NAT-PMP's
"network failure" (miniupnpd when its own outside address is private or shared) says the same.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import msgspec

from pierce.addr import IPAddress
from pierce.errors import PierceError
from pierce.portmap.client import ExternalAddress, Method, NoPublicAddress, PortMapClient, PortMapRefused

#: Seconds the probe waits for each protocol's answer (both are asked at once).
PROBE_DEADLINE = 1.5


#: How `RouterReport.as_text` names the protocols.
PROTOCOL_NAMES = {"pcp": "PCP", "nat-pmp": "NAT-PMP", "upnp": "UPnP-IGD"}


class RouterReport(msgspec.Struct):
    gateway: str | None
    #: The protocols that answered ("pcp", "nat-pmp", "upnp"), in that order.
    protocols: list[str]
    external_ip: str | None
    #: Whether a mapping would be reachable from the internet (None: unknown).
    useful: bool | None
    why: str

    def as_json(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "protocols": self.protocols,
            "external_address": self.external_ip,
            "mapping_useful": self.useful,
            "why": self.why,
        }

    def as_text(self) -> str:
        if not self.protocols:
            return self.why
        names = [PROTOCOL_NAMES.get(p, p) for p in self.protocols]
        answered = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        external = f", external address {self.external_ip}" if self.external_ip else ""
        return f"{answered} on {self.gateway}{external}: {self.why}"


async def probe_router(
    public_ip: IPAddress | None = None,
    *,
    gateway: ipaddress.IPv4Address | None = None,
    port: int | None = None,
    deadline: float = PROBE_DEADLINE,
) -> RouterReport:
    """Ask the default gateway (or ``gateway``) over PCP, NAT-PMP and UPnP-IGD, at once; never raises for
    network trouble. ``public_ip`` is the address a STUN server saw (None when unknown)."""
    kw: dict[str, Any] = {"deadline": deadline}
    if port is not None:
        kw["port"] = port
    pcp_client, pmp_client = PortMapClient(gateway, **kw), PortMapClient(gateway, **kw)
    try:
        await pcp_client.open()
        await pmp_client.open()
    except PierceError as exc:
        pcp_client.close()
        return RouterReport(str(gateway) if gateway else None, [], None, None, f"Port mapping: {exc}.")
    try:
        announced, address, upnp = await asyncio.gather(
            pcp_client.announce(),
            pmp_client.external_address(),
            _upnp_external_address(pcp_client.gateway),
            return_exceptions=True,
        )
    finally:
        pcp_client.close()
        pmp_client.close()
    where = str(pcp_client.gateway)
    protocols = ["pcp"] if announced is Method.PCP else []
    external: IPAddress | None = None
    if not isinstance(address, BaseException):
        protocols.append("nat-pmp")
        external = address.ip
    elif isinstance(address, PortMapRefused) or announced is Method.NATPMP:
        protocols.append("nat-pmp")  # it answered, if only to refuse
    if not isinstance(upnp, BaseException):
        protocols.append("upnp")
        external = external or upnp.ip
    elif isinstance(upnp, PortMapRefused):
        protocols.append("upnp")
    if not protocols:
        return RouterReport(
            where, [], None, None, f"No port mapping protocol (PCP, NAT-PMP, UPnP-IGD) answered on {where}."
        )
    if isinstance(address, NoPublicAddress):
        return RouterReport(where, protocols, None, False, str(address))
    if external is None and isinstance(upnp, PortMapRefused) and protocols == ["upnp"]:
        return RouterReport(
            where,
            protocols,
            None,
            False,
            f"the router has no external address to give ({upnp}): it is itself behind another NAT, or "
            "offline, so a mapping there would not be reachable from the internet",
        )
    return RouterReport(where, protocols, str(external) if external else None, *_useful(external, public_ip))


async def _upnp_external_address(gateway: ipaddress.IPv4Address | None) -> ExternalAddress:
    """The router's external address over UPnP-IGD (SSDP search, then GetExternalIPAddress)."""
    from pierce.portmap.upnp import DEFAULT_DISCOVER_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, UpnpClient

    async with asyncio.timeout(DEFAULT_DISCOVER_TIMEOUT + 2 * DEFAULT_REQUEST_TIMEOUT):
        return await UpnpClient(gateway).external_address()


def _useful(external: IPAddress | None, public_ip: IPAddress | None) -> tuple[bool | None, str]:
    if external is None:
        return None, "its external address is told only with a mapping (`pierce map-port` shows it)"
    if not external.is_global:
        return False, (
            f"{external} is private or shared, so another NAT (e.g. the carrier's) sits beyond the router: "
            "a mapping there would not be reachable from the internet"
        )
    if public_ip is not None and external != public_ip:
        return False, (
            f"the STUN server sees {public_ip}, not {external}: another NAT sits beyond the router, so a "
            "mapping there would not be reachable from the internet"
        )
    return True, "a mapping there is reachable from the internet (`pierce map-port`)"
