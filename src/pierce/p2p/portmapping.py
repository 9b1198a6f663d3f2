"""Router port mappings for the owner's direct UDP paths (``direct = "auto"`` on an xtcp/xudp proxy).

`PathMappings` belongs to `pierce.p2p.owner.OwnerP2p`, one per client. For each attempt the owner asks it
(`request`) for a mapping of the attempt's fresh UDP socket while that socket gathers its STUN candidates
(`pierce.p2p.gather`), and waits for the answer no longer than the gather may take (`GATHER_TIMEOUT` from
the start): so the mapping costs no time when the router answers in time, and never more than the bounded
wait. When the router's external address is public (`pierce.portmap.lease.reachable_from_internet`), the
mapping is offered to the visitor as a *mapped* candidate (`pierce.nat.candidates`) and its
`pierce.portmap.lease.Lease` is kept, renewed at half its lifetime, until the attempt fails or its direct
path closes; then the mapping is deleted (`HeldMapping.close`).

One `pierce.portmap.client.PortMapClient` ([port_mapping] of client.toml: gateway, method, UPnP URL) is
made at the first attempt that asks, kept for the next ones (the protocol the router answered, and its
UPnP device, are found once) and closed with the owner. An answer that comes after its attempt went on
without it is awaited in the background and the mapping it made deleted at once: nothing is left on the
router, and the next attempt finds the protocol known.

A router that maps nothing (no protocol answered, it refused, its external address is private or shared:
another NAT sits beyond it) is remembered for `RETRY_AFTER_S`: attempts meanwhile do not ask, and so do
not wait. That verdict is logged once when it is first reached or changes (``p2p.no_mapping``), not per
attempt.

Loading: this module and `pierce.portmap` load with the first attempt of a proxy with ``direct = "auto"``.
Which coroutines may be cancelled: all; a cancelled `request` deletes what it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Coroutine
from typing import Any

from pierce.config import PortMappingOptions
from pierce.errors import PierceError
from pierce.logs import event
from pierce.nat.candidates import Candidate, CandidateKind
from pierce.p2p.gather import GATHER_TIMEOUT
from pierce.portmap import natpmp
from pierce.portmap.client import ALL_METHODS, Mapping, Method, PortMapClient
from pierce.portmap.lease import Lease, reachable_from_internet
from pierce.portmap.pcp import Protocol

log = logging.getLogger("pierce.p2p")

#: Seconds a router found to map nothing is not asked again.
RETRY_AFTER_S = 600.0
#: Seconds an attempt waits for the router, from the start of its gather.
MAPPING_WAIT_S = GATHER_TIMEOUT
#: Seconds a deletion may take when a path closes (a router that does not answer: the lease ends it).
DELETE_TIMEOUT_S = 5.0

_METHODS = {
    "auto": ALL_METHODS,
    "pcp": (Method.PCP,),
    "nat-pmp": (Method.NATPMP,),
    "upnp": (Method.UPNP,),
}


class HeldMapping:
    """A router's mapping of one path's socket, offered as `candidate` and renewed until `close`."""

    def __init__(self, lease: Lease, mapping: Mapping, keeper: asyncio.Task[None]) -> None:
        self.lease = lease
        self.mapping = mapping
        self._keeper = keeper
        assert mapping.external_ip is not None
        self.candidate = Candidate(CandidateKind.MAPPED, str(mapping.external_ip), mapping.external_port)

    @property
    def external(self) -> str:
        return f"{self.mapping.external_ip}:{self.mapping.external_port}"

    async def close(self) -> None:
        """Stop renewing and delete the mapping (bounded; a failure is logged by the lease)."""
        self._keeper.cancel()
        await asyncio.gather(self._keeper, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DELETE_TIMEOUT_S):
                await self.lease.close()


class PathMappings:
    """The owner's port mappings (module doc). ``options``: [port_mapping] of client.toml."""

    def __init__(self, options: PortMappingOptions, *, gateway_port: int = natpmp.PORT) -> None:
        self.options = options
        #: Where the gateway answers PCP and NAT-PMP (5351; another in tests).
        self.gateway_port = gateway_port
        self._client: PortMapClient | None = None
        self._opening = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Loop time until which the router is not asked (it mapped nothing last time).
        self._unavailable_until = 0.0
        #: The last verdict logged: "" none yet, "mapped", or why nothing is mapped.
        self._verdict = ""
        self._closed = False

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name="p2p port mapping")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def request(self, port: int, proxy: str) -> HeldMapping | None:
        """A mapping of local UDP ``port`` whose external address is public, or None: the router maps
        nothing (now, or when last asked within `RETRY_AFTER_S`), or did not answer within
        `MAPPING_WAIT_S`. The caller closes what it gets."""
        loop = asyncio.get_running_loop()
        if self._closed or loop.time() < self._unavailable_until:
            return None
        until = loop.time() + MAPPING_WAIT_S
        asking = self._spawn(self._map(port))
        try:
            done, _ = await asyncio.wait({asking}, timeout=max(0.0, until - loop.time()))
        except asyncio.CancelledError:
            self._spawn(self._discard(asking))
            raise
        if not done:
            event(
                log,
                logging.DEBUG,
                "p2p.no_mapping",
                f"proxy {proxy}: the router did not answer within {MAPPING_WAIT_S:g} s; going on without a "
                f"mapping (its answer is awaited, and what it maps deleted)",
                proxy=proxy,
                port=port,
                reason="no answer in time",
            )
            self._spawn(self._discard(asking))
            return None
        lease = asking.result()
        if lease is None or lease.mapping is None:
            return None
        keeper = self._spawn(lease.run())
        held = HeldMapping(lease, lease.mapping, keeper)
        event(
            log,
            logging.INFO,
            "p2p.mapped",
            f"proxy {proxy}: the router maps {held.external} to the direct path's port {port} "
            f"(via {lease.mapping.method.value}); offered to the visitor",
            proxy=proxy,
            port=port,
            external=held.external,
            via=lease.mapping.method.value,
        )
        return held

    async def _discard(self, asking: asyncio.Task[Lease | None]) -> None:
        """An answer nobody waits for any more: delete the mapping it made."""
        try:
            lease = await asking
        except asyncio.CancelledError:
            asking.cancel()
            raise
        if lease is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DELETE_TIMEOUT_S):
                    await lease.close()

    async def _map(self, port: int) -> Lease | None:
        """Ask for the mapping; the lease when its address is public. Records the verdict."""
        loop = asyncio.get_running_loop()
        lease: Lease | None = None
        try:
            client = await self._open()
            lease = Lease(client, Protocol.UDP, port, lifetime=self.options.lifetime_s)
            mapping = await lease.start()
        except (PierceError, OSError) as exc:
            self._unavailable(loop, str(exc) or type(exc).__name__)
            return None
        if not reachable_from_internet(mapping.external_ip):
            address = str(mapping.external_ip) if mapping.external_ip else "an address it did not say"
            self._unavailable(loop, f"the router's external address is {address}, not a public one")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DELETE_TIMEOUT_S):
                    await lease.close()
            return None
        self._unavailable_until = 0.0
        self._verdict = "mapped"
        return lease

    def _unavailable(self, loop: asyncio.AbstractEventLoop, reason: str) -> None:
        self._unavailable_until = loop.time() + RETRY_AFTER_S
        first = self._verdict != reason
        self._verdict = reason
        event(
            log,
            logging.INFO if first else logging.DEBUG,
            "p2p.no_mapping",
            f"no router port mapping for direct paths ({reason}); they go on without one, and the router "
            f"is asked again in {RETRY_AFTER_S:g} s at the earliest",
            reason=reason,
            delay_s=RETRY_AFTER_S,
        )

    async def _open(self) -> PortMapClient:
        async with self._opening:
            if self._client is None:
                o = self.options
                client = PortMapClient(
                    ipaddress.IPv4Address(o.gateway) if o.gateway else None,
                    port=self.gateway_port,
                    methods=_METHODS[o.method],
                    upnp_location=o.upnp_url or None,
                )
                await client.open()  # NoGateway, NoPortMapping: PierceErrors
                self._client = client
            return self._client

    async def close(self) -> None:
        """Cancel what is pending (a mapping being asked for is deleted) and close the client."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            self._client.close()
            self._client = None
