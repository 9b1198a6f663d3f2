"""Proxies also reachable without the server: ``direct = "auto"`` on tcp and udp proxies.

For each such proxy the client listens on a port of its own host (every IPv4 address), asks the router
for a public port mapped to it (`pierce.portmap`: PCP, then NAT-PMP, then UPnP-IGD, as ``[port_mapping]``
says), keeps the mapping alive (`pierce.portmap.lease.Lease`: renewed at half its lease, made again after
a router restart) and serves what comes in exactly as it serves a visitor the server hands over: the
proxy's ``allow_ips`` / ``deny_ips`` are checked here, its PROXY protocol header and ``bandwidth_limit``
apply, and the local service is connected per visitor (tcp) or per visitor flow (udp).

Why a listener of its own rather than a mapping of the service's port: the service may listen on
loopback only or run on another host (``local_ip``), and the proxy's access lists must hold on every
path to it, not only through the server.

The public port asked for is the proxy's ``remote_port`` when it has one (the same port on the server
and on the router: one DNS name and port reach it either way, `pierce.ddns`), else its ``local_port``;
the router may grant another. The listener takes that port number too when it is free here, else any.

The mapped address is published (`ClientProxyInfo.direct` in the status, `DirectAddress` to the server)
only when it is reachable from the internet. When the router maps but its external address is private
or shared (another NAT beyond it, e.g. carrier-grade NAT), the mapping is useless: it is deleted, not
published, and ``direct_error`` says why. A router that answers nothing, or refuses, is asked again later
(`RETRY_FIRST_S`, doubling to `RETRY_MAX_S`): routers reboot, and UPnP gets turned on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pierce.addr import HostPort, format_sockaddr
from pierce.errors import PierceError
from pierce.listeners import PortInUse, TcpListener, bind_socket, tune_tcp
from pierce.logs import event
from pierce.protocol import StartWork
from pierce.proxies.access import IpAccess
from pierce.proxies.base import DirectMode
from pierce.proxies.tcp import TcpProxyConfig, serve_tcp_proxy_work
from pierce.proxies.udp import UdpProxyConfig
from pierce.relay import SocketEnd

if TYPE_CHECKING:
    from pierce.config import PortMappingOptions
    from pierce.portmap.client import Mapping, PortMapClient
    from pierce.portmap.lease import Lease
    from pierce.udpflow import DatagramLimit, UdpFlow, UdpFlows

log = logging.getLogger("pierce.client")

#: Seconds before a router that answered nothing (or refused) is asked again; doubles up to the max.
RETRY_FIRST_S = 30.0
RETRY_MAX_S = 1800.0
#: Seconds before a router whose external address is not public is asked again (it rarely changes).
NOT_PUBLIC_RETRY_S = 3600.0

DirectConfig = TcpProxyConfig | UdpProxyConfig
#: ``(proxy name, public address or "", why not or "")``: what the status shows and the server hears.
OnChange = Callable[[str, str, str], None]
#: Runs a visitor's connection as a tracked task of the client (it outlives reloads, as relayed ones do).
Spawn = Callable[[Coroutine[Any, Any, None]], None]


def wants_direct(config: object) -> bool:
    return isinstance(config, DirectConfig) and config.direct is DirectMode.AUTO


class DirectEntry:
    """One proxy's way in without the server: its listener, its port mapping and what it publishes."""

    def __init__(
        self, config: DirectConfig, options: PortMappingOptions, on_change: OnChange, spawn: Spawn
    ) -> None:
        self.config = config
        self.options = options
        self.on_change = on_change
        self.spawn = spawn
        self.access = IpAccess.of(config.name, config.allow_ips, config.deny_ips)
        #: The public address published now ("" when none), and why there is none.
        self.address = ""
        self.error = ""
        #: Where the listener is bound (``0.0.0.0:port``), once started.
        self.listen = ""
        self._listener: TcpListener | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._flows: UdpFlows | None = None
        self._limit: DatagramLimit | None = None
        self._task: asyncio.Task[None] | None = None
        self._lease: Lease | None = None
        self._client: PortMapClient | None = None

    @property
    def wanted_port(self) -> int:
        return self.config.remote_port or self.config.local_port

    @property
    def udp(self) -> bool:
        return isinstance(self.config, UdpProxyConfig)

    async def start(self) -> None:
        """Listen, then ask the router in the background. A port that cannot be bound at all is said in
        ``direct_error``; the proxy works through the server regardless."""
        try:
            port = await self._bind()
        except (PierceError, OSError) as exc:
            self._set("", f"cannot listen for direct visitors: {exc}")
            return
        self.listen = f"0.0.0.0:{port}"
        self._task = asyncio.get_running_loop().create_task(self._keep(port))

    async def _bind(self) -> int:
        for port in (self.wanted_port, 0):
            try:
                if self.udp:
                    return await self._bind_udp(port)
                self._listener = TcpListener.open(
                    HostPort("0.0.0.0", port), self._serve_tcp, name=f"{self.config.name} (direct)"
                )
                return self._listener.port
            except PortInUse:
                if port == 0:
                    raise
        raise AssertionError("unreachable")

    async def _bind_udp(self, port: int) -> int:
        from pierce.udpflow import DatagramLimit, DatagramProtocol, UdpFlows

        assert isinstance(self.config, UdpProxyConfig)
        sock = bind_socket(HostPort("0.0.0.0", port), socket.SOCK_DGRAM)
        bound = int(sock.getsockname()[1])
        loop = asyncio.get_running_loop()
        self._flows = UdpFlows(self.config.name, log)
        self._limit = DatagramLimit(log, self.config.name, self.config.bandwidth_limit)
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: DatagramProtocol(self._from_visitor, log, self.config.name), sock=sock
        )
        return bound

    async def _keep(self, port: int) -> None:
        """Map the listener's port, publish it, keep it; after a failure ask again later."""
        from pierce.portmap.client import (
            ALL_METHODS,
            Method,
            NoPortMapping,
            NoPublicAddress,
            PortMapClient,
            PortMapRefused,
        )
        from pierce.portmap.lease import Lease, reachable_from_internet
        from pierce.portmap.pcp import Protocol

        options = self.options
        methods = ALL_METHODS if options.method == "auto" else (Method(options.method),)
        gateway = ipaddress.IPv4Address(options.gateway) if options.gateway else None
        retry = RETRY_FIRST_S
        while True:
            client = PortMapClient(gateway, methods=methods, upnp_location=options.upnp_url or None)
            self._client = client
            lease = Lease(
                client,
                Protocol.UDP if self.udp else Protocol.TCP,
                port,
                external_port=self.wanted_port,
                lifetime=options.lifetime_s,
                on_change=self._mapped,
            )
            wait = retry
            try:
                await client.open()
                mapping = await lease.start()
                if reachable_from_internet(mapping.external_ip):
                    self._lease = lease
                    retry = RETRY_FIRST_S
                    await lease.run()  # renews for ever (its failures are retried inside)
                    return
                await lease.close()
                wait = NOT_PUBLIC_RETRY_S
            except NoPublicAddress as exc:  # the router said so itself: it is behind another NAT
                self._set("", str(exc))
                wait = NOT_PUBLIC_RETRY_S
            except (NoPortMapping, PortMapRefused, PierceError, OSError) as exc:
                self._set("", str(exc))
                retry = min(2 * retry, RETRY_MAX_S)
            self._lease, self._client = None, None
            client.close()
            event(
                log,
                logging.WARNING,
                "proxy.direct_unavailable",
                f"proxy {self.config.name}: not reachable directly: {self.error}; asking the router again "
                f"in {wait:g} s",
                proxy=self.config.name,
                error=self.error,
                listen=self.listen,
            )
            await asyncio.sleep(wait)

    def _mapped(self, mapping: Mapping) -> None:
        """The lease's news: a mapping made, or made again with another address."""
        from pierce.portmap.lease import reachable_from_internet

        ip = mapping.external_ip
        if not reachable_from_internet(ip):
            what = f"the router's external address {ip} is" if ip else "the router did not say its address:"
            self._set(
                "",
                f"{what} not public (another NAT beyond it, e.g. the carrier's): a port mapping there is not "
                "reachable from the internet",
            )
            return
        address = format_sockaddr((str(ip), mapping.external_port))
        self._set(address, "")
        event(
            log,
            logging.INFO,
            "proxy.direct",
            f"proxy {self.config.name}: also reachable directly at {address} "
            f"(via {mapping.method.value.upper()} on {mapping.gateway}, -> {self.listen})",
            proxy=self.config.name,
            address=address,
            via=mapping.method.value,
            listen=self.listen,
        )

    def _set(self, address: str, error: str) -> None:
        if (address, error) == (self.address, self.error):
            return
        self.address, self.error = address, error
        self.on_change(self.config.name, address, error)

    # -- visitors ----------------------------------------------------------------------------------

    async def _serve_tcp(self, conn: socket.socket, addr: Any) -> None:
        assert isinstance(self.config, TcpProxyConfig)
        host, port = str(addr[0]), int(addr[1])
        if self.access is not None and not self.access.admit(host):
            conn.close()
            return
        tune_tcp(conn)
        here = conn.getsockname()
        start = StartWork(
            proxy=self.config.name,
            visitor_host=host,
            visitor_port=port,
            server_host=here[0],
            server_port=here[1],
        )
        # The connection belongs to the client from here on, like a relayed visitor's.
        self.spawn(serve_tcp_proxy_work(self.config, start, SocketEnd(conn)))

    def _from_visitor(self, data: bytes, addr: Any) -> None:
        assert self._flows is not None and self._limit is not None
        host, port = str(addr[0]), int(addr[1])
        flow = self._flows.get(addr)
        if flow is None:
            if self.access is not None and not self.access.admit(host):
                return
            flow = self._flows.open(addr, lambda ended: self._new_flow(addr, ended))
            if flow is None:
                return
        if self._limit.inbound(data, host, port):
            flow.send(data)

    def _new_flow(self, addr: Any, ended: Callable[[], None]) -> UdpFlow:
        from pierce.udpflow import UdpFlow

        assert isinstance(self.config, UdpProxyConfig) and self._limit is not None
        host, port = str(addr[0]), int(addr[1])
        limit = self._limit

        def reply(data: bytes) -> None:
            if self._udp is not None and limit.outbound(data, host, port):
                self._udp.sendto(data, addr)

        return UdpFlow(
            label=self.config.name,
            peer=format_sockaddr(addr),
            target=HostPort(self.config.local_ip, self.config.local_port),
            idle_timeout=self.config.idle_timeout,
            reply=reply,
            ended=ended,
            logger=log,
            fields={"proxy": self.config.name},
        )

    async def close(self) -> None:
        """Stop taking new visitors and delete the mapping (live tcp visitors carry on)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.close()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._flows is not None:
            await self._flows.close(reason="shutdown")
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        self._set("", "")


class DirectProxies:
    """The client's `DirectEntry` per proxy with ``direct = "auto"``, kept in step with its config."""

    def __init__(self, on_change: OnChange, spawn: Spawn) -> None:
        self.on_change = on_change
        self.spawn = spawn
        self.entries: dict[str, DirectEntry] = {}

    async def sync(self, proxies: list[Any], options: PortMappingOptions) -> None:
        """Close the entries of proxies gone or changed (deleting their mappings), start new ones."""
        wanted = {p.name: p for p in proxies if wants_direct(p)}
        for name, entry in list(self.entries.items()):
            new = wanted.get(name)
            if new is None or new != entry.config or options != entry.options:
                del self.entries[name]
                await entry.close()
        for name, config in wanted.items():
            if name not in self.entries:
                entry = self.entries[name] = DirectEntry(config, options, self.on_change, self.spawn)
                await entry.start()

    async def close(self) -> None:
        entries, self.entries = list(self.entries.values()), {}
        await asyncio.gather(*(e.close() for e in entries), return_exceptions=True)
