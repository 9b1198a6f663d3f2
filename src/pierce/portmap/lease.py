"""Keeping a router port mapping alive: `Lease`, and `pierce map-port` (`hold_mapping`).

A `Lease` asks for the mapping, renews it when half its granted lifetime has passed (RFC 6886 section 3.3,
RFC 6887 section 11.2.1; counted as below), asks for it again at once when an answer's epoch shows the
router lost its state (a restart: `Mapping.restarted`; UPnP has no epoch: its renewal checks that the
router still has the mapping, `pierce.portmap.upnp`), retries with a doubling wait while the router does
not answer or refuses, and deletes the mapping when it is closed. Each change is logged (``portmap.*``
events) and passed to ``on_change``, so a caller can publish the new public address.

Half the lifetime is counted so that no renewal comes after an expiry, whatever the lifetime: from when
the request was sent (the router's lease starts when it takes the request, which the answer only tells
later), and of the lifetime less a second, since routers count leases in whole seconds. miniupnpd, for
one, stamps a mapping with the second it took the request plus the lifetime and removes it once its clock
reaches that second, so a lease of L seconds lasts between L - 1 and L. Renewing at L/2 after the answer
came let a short lease (a few seconds) expire just before the renewal reached the router: miniupnpd
logged "remove port mapping ... because it has expired" for 2 s leases while a visitor's new connections
were refused. At (L - 1)/2 after the request went out, the renewal has half of the shortest possible lease
to spare; for the usual lease of hours it is still half.

An external address that is private or shared (RFC 1918, RFC 6598's 100.64.0.0/10 of carrier-grade NAT)
means another NAT sits beyond the router: the mapping works inside it, but nobody on the internet
reaches that address. `reachable_from_internet` tells, and `pierce map-port` says so plainly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Collection

from pierce.addr import IPAddress
from pierce.errors import PierceError
from pierce.logs import event
from pierce.portmap.client import ALL_METHODS, Mapping, Method, PortMapClient
from pierce.portmap.pcp import Protocol

log = logging.getLogger("pierce.portmap")

#: The first wait before asking again after a failure; it doubles up to `MAX_RETRY_S` (or half the
#: lifetime asked for, when that is shorter).
MIN_WAIT_S = 1.0
MAX_RETRY_S = 60.0
#: The shortest wait before a renewal.
MIN_RENEW_S = 0.5
#: How much of a granted lifetime a router's clock may eat: leases counted in whole seconds (module doc).
ROUTER_CLOCK_S = 1.0


def reachable_from_internet(ip: IPAddress | None) -> bool:
    """Whether an external address a router reports can be reached from the internet: not private,
    shared (CGNAT), loopback, link-local or reserved. Unknown (None) is not."""
    return ip is not None and ip.is_global


def describe(mapping: Mapping) -> str:
    external = (
        f"{mapping.external_ip}:{mapping.external_port}"
        if mapping.external_ip
        else (f"port {mapping.external_port} (the router did not say its address)")
    )
    lease = f"lease {mapping.lifetime} s" if mapping.lifetime else "permanent until deleted"
    return (
        f"{mapping.protocol.name} {external} -> local port {mapping.internal_port} "
        f"(via {mapping.method.value.upper()} on {mapping.gateway}, {lease})"
    )


class Lease:
    """One mapping, kept: `start` makes it (raises when the router says no or nothing answers), `run`
    keeps it until cancelled, `close` deletes it."""

    def __init__(
        self,
        client: PortMapClient,
        protocol: Protocol,
        internal_port: int,
        *,
        external_port: int = 0,
        lifetime: int,
        on_change: Callable[[Mapping], None] | None = None,
    ) -> None:
        self.client = client
        self.protocol = protocol
        self.internal_port = internal_port
        self.external_port = external_port
        self.lifetime = lifetime
        self.on_change = on_change
        #: The mapping as last granted (None before `start` and after `close`).
        self.mapping: Mapping | None = None
        #: When (event loop time) the request that the router last granted was sent: its lease began later.
        self.asked_at = 0.0

    async def start(self) -> Mapping:
        asked_at = asyncio.get_running_loop().time()
        mapping = await self.client.map_port(
            self.protocol, self.internal_port, external_port=self.external_port, lifetime=self.lifetime
        )
        self.asked_at = asked_at
        self._granted(mapping, "portmap.mapped", "mapped")
        return mapping

    async def run(self) -> None:
        """Renew at half the granted lifetime (module doc); after a failure ask again after a doubling
        wait."""
        retry = MIN_WAIT_S
        wait = self._renew_after()
        while True:
            await asyncio.sleep(wait)
            try:
                await self._renew()
            except (PierceError, OSError) as exc:
                wait = retry
                retry = min(2 * retry, MAX_RETRY_S, max(MIN_WAIT_S, self.lifetime / 2))
                event(
                    log,
                    logging.WARNING,
                    "portmap.failed",
                    f"port mapping of local port {self.internal_port} not renewed: {exc}; "
                    f"asking again in {wait:g} s",
                    port=self.internal_port,
                    error=str(exc),
                    delay_s=wait,
                )
                continue
            retry = MIN_WAIT_S
            wait = self._renew_after()

    async def _renew(self) -> Mapping:
        previous = self.mapping
        if previous is None:
            return await self.start()
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        mapping = await self.client.renew(previous, self.lifetime)
        self.asked_at = asked_at
        took_ms = round((loop.time() - asked_at) * 1000, 3)
        changed = (mapping.external_ip, mapping.external_port) != (
            previous.external_ip,
            previous.external_port,
        )
        if mapping.restarted:
            self._granted(mapping, "portmap.restarted", "made again after the router restarted")
        elif changed:
            self._granted(mapping, "portmap.mapped", "mapped to a new address")
        else:
            self.mapping = mapping
            event(
                log,
                logging.INFO,  # once per half lease: an hour with the default two
                "portmap.renewed",
                f"renewed {describe(mapping)}",
                port=mapping.internal_port,
                lease_s=mapping.lifetime,
                took_ms=took_ms,
            )
        return mapping

    def _renew_after(self) -> float:
        """Seconds from now to the renewal: half the granted lifetime less the router's clock, counted
        from when the request was sent (module doc). A permanent mapping (0, UPnP) is checked at half the
        one asked for, so a router restart that forgot it is still noticed."""
        granted = self.mapping.lifetime if self.mapping is not None else self.lifetime
        lease = max(0.0, (granted or self.lifetime) - ROUTER_CLOCK_S)
        due = self.asked_at + lease / 2
        return max(MIN_RENEW_S, due - asyncio.get_running_loop().time())

    def _granted(self, mapping: Mapping, name: str, what: str) -> None:
        self.mapping = mapping
        external = f"{mapping.external_ip}:{mapping.external_port}" if mapping.external_ip else ""
        event(
            log,
            logging.INFO,
            name,
            f"{what}: {describe(mapping)}",
            via=mapping.method.value,
            gateway=str(mapping.gateway),
            protocol=mapping.protocol.name.lower(),
            port=mapping.internal_port,
            external=external,
            lease_s=mapping.lifetime,
            reachable=reachable_from_internet(mapping.external_ip),
        )
        if self.on_change is not None:
            self.on_change(mapping)

    async def close(self) -> None:
        """Delete the mapping (a failure is logged: the mapping then ends with its lifetime)."""
        mapping, self.mapping = self.mapping, None
        if mapping is None:
            return
        try:
            await self.client.delete(mapping)
        except (PierceError, OSError) as exc:
            event(
                log,
                logging.WARNING,
                "portmap.failed",
                f"port mapping of local port {mapping.internal_port} not deleted ({exc}); it ends with its "
                f"lease",
                port=mapping.internal_port,
                error=str(exc),
            )
            return
        event(
            log,
            logging.INFO,
            "portmap.deleted",
            f"deleted {describe(mapping)}",
            port=mapping.internal_port,
            protocol=mapping.protocol.name.lower(),
        )


async def hold_mapping(
    protocol: Protocol,
    internal_port: int,
    *,
    external_port: int = 0,
    lifetime: int,
    gateway: ipaddress.IPv4Address | None = None,
    gateway_port: int | None = None,
    methods: Collection[Method] = ALL_METHODS,
    upnp_location: str | None = None,
    on_change: Callable[[Mapping], None],
    stop: asyncio.Future[object] | None = None,
) -> None:
    """`pierce map-port`: make the mapping (raising when that fails), keep it until ``stop`` (default:
    SIGINT/SIGTERM), then delete it."""
    from pierce.portmap import natpmp

    client = PortMapClient(
        gateway, port=gateway_port or natpmp.PORT, methods=methods, upnp_location=upnp_location
    )
    async with client:
        lease = Lease(
            client,
            protocol,
            internal_port,
            external_port=external_port,
            lifetime=lifetime,
            on_change=on_change,
        )
        await lease.start()
        keeper = asyncio.ensure_future(lease.run())
        try:
            if stop is None:
                from pierce.runtime import wait_for_stop_signal

                await wait_for_stop_signal()
            else:
                await stop
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await lease.close()
