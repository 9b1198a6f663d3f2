"""Ask the router for a port mapping over UPnP-IGD v1/v2 (SSDP discovery, SOAP control), with
async-upnp-client.

`UpnpClient` finds the Internet Gateway Device by an SSDP M-SEARCH on the LAN (bounded:
``discover_timeout``, default 2 s; sent three times, since it is one multicast datagram) or takes its
root description URL, reads the description, and uses the first WAN connection service it offers:
WANIPConnection:2, WANIPConnection:1, then WANPPPConnection:1. Its calls give the same `Mapping` and
`ExternalAddress` records as PCP and NAT-PMP (``method=Method.UPNP``), and the same errors: the router's
UPnP error code and text in `PortMapRefused`, `NoPortMapping` when nothing answered.

Differences from PCP/NAT-PMP that the caller sees:
- The lease asked for is ``NewLeaseDuration``. A router that only keeps permanent mappings refuses it
  with error 725 (OnlyPermanentLeasesSupported, IGD v1): the mapping is then asked for again with 0
  (permanent), `Mapping.lifetime` is 0, the client remembers it, and the caller must delete the mapping
  on exit (nothing else ever will).
- No external port wanted (0): IGD v2 has AddAnyPortMapping (the router picks and says which); on v1
  the internal port is asked for.
- No epoch: a renewal first asks GetSpecificPortMappingEntry; when the router no longer has the mapping
  (error 714, or another host holds the port) it restarted or lost it, and the renewed `Mapping` says
  ``restarted``. When the router cannot be reached at the URL it had (a restarted router may serve its
  description on another port), the next call discovers it again.

Loading: this module imports async-upnp-client (and with it aiohttp) only when first used, so a process
that never tries UPnP never loads them. Which coroutines may be cancelled: all; a cancelled call leaves
at most a mapping the router made, which ends with its lease (or, permanent, stays until deleted).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections.abc import Mapping as MappingABC
from typing import TYPE_CHECKING, Any

from pierce.logs import event
from pierce.portmap.client import (
    ExternalAddress,
    Mapping,
    Method,
    NoPortMapping,
    PortMapRefused,
)
from pierce.portmap.pcp import Protocol

if TYPE_CHECKING:
    from async_upnp_client.client import UpnpService

log = logging.getLogger("pierce.portmap")

#: Seconds SSDP discovery waits for an Internet Gateway Device to answer.
DEFAULT_DISCOVER_TIMEOUT = 2.0
#: Seconds one HTTP request (description, SOAP action) may take.
DEFAULT_REQUEST_TIMEOUT = 3.0
#: What the M-SEARCH asks for, in turn: an IGD v2 answers the v1 search too, but some v2 devices only
#: answer their own type.
SEARCH_TARGETS = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
)
#: The WAN connection services that hold port mappings, the one tried first first.
CONNECTION_SERVICES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
#: The description a mapping carries on the router (what `upnpc -l` shows).
DESCRIPTION = "pierce"

# UPnP-IGD error codes (WANIPConnection:2 section 2.4) this client acts on.
NO_SUCH_ENTRY = 714
CONFLICT = 718
ONLY_PERMANENT_LEASES = 725
#: Texts for the codes a router may send without a description.
ERROR_TEXT = {
    402: "invalid arguments",
    501: "action failed",
    606: "action not authorized",
    714: "no such entry in the array of port mappings",
    715: "wildcard not permitted in the source address",
    716: "wildcard not permitted in the external port",
    718: "the external port is mapped to another host already",
    724: "internal and external port must be the same",
    725: "only permanent leases are supported",
    726: "the remote host must be a wildcard",
    727: "the external port must be a wildcard",
    728: "no port maps available",
    729: "conflicts with another mechanism",
    732: "wildcard not permitted in the internal port",
}


def short_service(service_type: str) -> str:
    """``urn:schemas-upnp-org:service:WANIPConnection:2`` -> ``WANIPConnection:2``."""
    return service_type.rsplit(":", 2)[-2] + ":" + service_type.rsplit(":", 1)[-1]


async def discover(
    gateway: ipaddress.IPv4Address | None, timeout: float = DEFAULT_DISCOVER_TIMEOUT
) -> str | None:
    """The root description URL of the first Internet Gateway Device that answers an SSDP M-SEARCH
    within ``timeout`` seconds (only one at ``gateway``'s address when it is given), or None."""
    from async_upnp_client.search import SsdpSearchListener

    loop = asyncio.get_running_loop()
    found: asyncio.Future[str] = loop.create_future()

    def answered(headers: MappingABC[str, Any]) -> None:
        location = headers.get("location") or headers.get("LOCATION")
        if not location or found.done():
            return
        host = urllib.parse.urlsplit(str(location)).hostname
        if gateway is not None and host != str(gateway):
            return  # another device's IGD cannot map ports on the way out of this host
        found.set_result(str(location))

    listener = SsdpSearchListener(callback=answered, loop=loop, timeout=1)
    await listener.async_start()
    try:
        deadline = loop.time() + timeout
        sends = 0
        while not found.done() and (left := deadline - loop.time()) > 0:
            if sends < 3:  # at 0, 1/4 and 3/4 of the time: a lost datagram costs little
                for target in SEARCH_TARGETS:
                    listener.search_target = target
                    listener.async_search()
                sends += 1
            wait = min(left, timeout / 4 * sends) if sends < 3 else left
            try:
                await asyncio.wait_for(asyncio.shield(found), wait)
            except TimeoutError:
                continue
        return found.result() if found.done() else None
    finally:
        listener.async_stop()


def _local_address(host: str, port: int) -> ipaddress.IPv4Address:
    """This host's address on the way to ``host`` (the internal client a mapping points at)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))  # no datagram is sent: the kernel only picks the route
        return ipaddress.IPv4Address(sock.getsockname()[0])


class UpnpClient:
    """Port mappings on one Internet Gateway Device. ``open`` finds it; the calls mirror
    `PortMapClient`'s."""

    def __init__(
        self,
        gateway: ipaddress.IPv4Address | None = None,
        *,
        location: str | None = None,
        discover_timeout: float = DEFAULT_DISCOVER_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.gateway = gateway
        #: The root description URL: given, or found by SSDP.
        self.location = location
        self._given_location = location
        self.discover_timeout = discover_timeout
        self.request_timeout = request_timeout
        #: The router refused a finite lease (725): every mapping asked for is permanent.
        self.permanent_only = False
        self._service: UpnpService | None = None
        self._router: ipaddress.IPv4Address | None = None
        self._local_ip: ipaddress.IPv4Address | None = None
        #: Calls made at once by several tasks find the device once.
        self._opening = asyncio.Lock()

    @property
    def service_type(self) -> str | None:
        return self._service.service_type if self._service is not None else None

    async def open(self) -> None:
        """Find the IGD and its WAN connection service. Raises NoPortMapping when none answers."""
        from async_upnp_client.aiohttp import AiohttpRequester
        from async_upnp_client.client_factory import UpnpFactory
        from async_upnp_client.exceptions import UpnpError

        started = time.monotonic()
        how = "given"
        location = self._given_location
        if location is None:
            location = await discover(self.gateway, self.discover_timeout)
            how = "ssdp"
            if location is None:
                where = f" at {self.gateway}" if self.gateway is not None else ""
                raise NoPortMapping(
                    f"UPnP-IGD: no Internet Gateway Device{where} answered SSDP discovery in "
                    f"{self.discover_timeout:g} s"
                )
        factory = UpnpFactory(AiohttpRequester(timeout=max(1, round(self.request_timeout))), non_strict=True)
        try:
            device = await asyncio.wait_for(factory.async_create_device(location), self.request_timeout * 3)
        except (UpnpError, OSError, TimeoutError) as exc:
            raise NoPortMapping(f"UPnP-IGD: cannot read the device description at {location}: {exc}") from exc
        service = next(
            (s for kind in CONNECTION_SERVICES if (s := device.find_service(kind)) is not None), None
        )
        if service is None:
            raise NoPortMapping(
                f"UPnP-IGD: the device at {location} ({device.friendly_name}) offers no WAN connection "
                f"service (WANIPConnection, WANPPPConnection)"
            )
        url = urllib.parse.urlsplit(service.control_url)
        host, port = url.hostname or "", url.port or 80
        try:
            self._local_ip = _local_address(host, port)
            self._router = ipaddress.IPv4Address(host)
        except (OSError, ValueError) as exc:
            raise NoPortMapping(f"UPnP-IGD: cannot use the control URL {service.control_url}: {exc}") from exc
        self.location, self._service = location, service
        event(
            log,
            logging.INFO,
            "portmap.upnp_found",
            f"UPnP-IGD {short_service(service.service_type)} at {location} ({how}, "
            f"{(time.monotonic() - started) * 1000:.0f} ms)",
            gateway=str(self._router),
            url=location,
            service=short_service(service.service_type),
            how=how,
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )

    async def _ready(self) -> UpnpService:
        async with self._opening:
            if self._service is None:
                await self.open()
        assert self._service is not None
        return self._service

    def _forget(self) -> None:
        """The router did not answer at its URL: discover it again on the next call."""
        self._service = None
        self.location = self._given_location

    async def _call(self, action: str, **args: Any) -> MappingABC[str, Any]:
        """One SOAP action. Raises PortMapRefused with the router's UPnP error, NoPortMapping when the
        router cannot be reached (the next call rediscovers it)."""
        from async_upnp_client.exceptions import UpnpActionError, UpnpError

        service = await self._ready()
        if not service.has_action(action):
            raise PortMapRefused(Method.UPNP, 401, f"{short_service(service.service_type)} has no {action}")
        try:
            return await asyncio.wait_for(
                service.action(action).async_call(request_timeout=self.request_timeout, **args),
                self.request_timeout + 1,
            )
        except UpnpActionError as exc:
            code = exc.error_code if exc.error_code is not None else 501
            text = exc.error_desc or ERROR_TEXT.get(code, "error")
            raise PortMapRefused(Method.UPNP, code, f"{action}: {text}") from exc
        except (UpnpError, OSError, TimeoutError) as exc:
            self._forget()
            raise NoPortMapping(
                f"UPnP-IGD: {action} to {service.control_url} failed: {exc or type(exc).__name__}"
            ) from exc

    # -- the calls ---------------------------------------------------------------------------------

    async def external_address(self) -> ExternalAddress:
        answer = await self._call("GetExternalIPAddress")
        text = answer.get("NewExternalIPAddress") or ""
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise PortMapRefused(
                Method.UPNP, 501, f"GetExternalIPAddress: no usable address ({text!r})"
            ) from None
        return ExternalAddress(Method.UPNP, ip, 0, False)

    async def map_port(
        self,
        protocol: Protocol,
        internal_port: int,
        *,
        external_port: int = 0,
        lifetime: int,
        restarted: bool = False,
    ) -> Mapping:
        """AddPortMapping (AddAnyPortMapping on v2 when no external port is wanted); then the external
        address. A finite lease refused with 725 is asked for again as permanent (lifetime 0)."""
        service = await self._ready()
        lease = 0 if self.permanent_only else lifetime
        try:
            port = await self._add(service, protocol, internal_port, external_port, lease)
        except PortMapRefused as exc:
            if exc.result != ONLY_PERMANENT_LEASES or lease == 0:
                raise
            self.permanent_only, lease = True, 0
            event(
                log,
                logging.WARNING,
                "portmap.permanent",
                f"the router keeps only permanent UPnP mappings (error {exc.result}): local port "
                f"{internal_port} is mapped without a lease and deleted on exit",
                port=internal_port,
                code=exc.result,
            )
            port = await self._add(service, protocol, internal_port, external_port, lease)
        address = await self.external_address()
        assert self._router is not None
        return Mapping(
            Method.UPNP, self._router, protocol, internal_port, address.ip, port, lease, 0, restarted
        )

    async def _add(
        self, service: UpnpService, protocol: Protocol, internal_port: int, external_port: int, lease: int
    ) -> int:
        assert self._local_ip is not None
        args = {
            "NewRemoteHost": "",
            "NewProtocol": protocol.name,
            "NewInternalPort": internal_port,
            "NewInternalClient": str(self._local_ip),
            "NewEnabled": True,
            "NewPortMappingDescription": DESCRIPTION,
            "NewLeaseDuration": lease,
        }
        if external_port == 0 and service.has_action("AddAnyPortMapping"):
            answer = await self._call("AddAnyPortMapping", NewExternalPort=internal_port, **args)
            return int(answer.get("NewReservedPort") or internal_port)
        port = external_port or internal_port
        await self._call("AddPortMapping", NewExternalPort=port, **args)
        return port

    async def still_mapped(self, mapping: Mapping) -> bool:
        """Whether the router still forwards ``mapping``'s external port here (GetSpecificPortMappingEntry):
        False after a restart that forgot it, or when another host holds the port now."""
        try:
            entry = await self._call(
                "GetSpecificPortMappingEntry",
                NewRemoteHost="",
                NewExternalPort=mapping.external_port,
                NewProtocol=mapping.protocol.name,
            )
        except PortMapRefused as exc:
            if exc.result == NO_SUCH_ENTRY:
                return False
            raise
        return (str(entry.get("NewInternalClient")), int(entry.get("NewInternalPort") or 0)) == (
            str(self._local_ip),
            mapping.internal_port,
        )

    async def renew(self, mapping: Mapping, lifetime: int) -> Mapping:
        """AddPortMapping again for ``mapping``'s external port; ``restarted`` when the router had lost it."""
        try:
            restarted = not await self.still_mapped(mapping)
        except NoPortMapping:
            restarted = True  # unreachable at its URL: it restarted (or moved); find it again
            await self.open()
        return await self.map_port(
            mapping.protocol,
            mapping.internal_port,
            external_port=mapping.external_port,
            lifetime=lifetime,
            restarted=restarted,
        )

    async def delete(self, mapping: Mapping) -> None:
        """DeletePortMapping. A mapping the router no longer has (714) counts as deleted."""
        try:
            await self._call(
                "DeletePortMapping",
                NewRemoteHost="",
                NewExternalPort=mapping.external_port,
                NewProtocol=mapping.protocol.name,
            )
        except PortMapRefused as exc:
            if exc.result != NO_SUCH_ENTRY:
                raise
