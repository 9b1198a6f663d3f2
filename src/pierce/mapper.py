"""``pierce map``: forward local TCP and UDP ports to other hosts, the classic port mapper.

TCP: each accepted connection gets a fresh connection to the target (a DNS name is resolved every
time, so DNS changes are followed) and the two are joined by :func:`pierce.relay.relay`.

UDP: a flow table keyed by the client's address, like a NAT (`pierce.udpflow`): each client gets its own
upstream socket connected to the target, so replies go back to the client that caused them; a flow ends
after ``idle_timeout`` seconds without traffic either way. Datagram boundaries are kept.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from pierce.addr import allowed, format_sockaddr
from pierce.config import MapConfig, MapRule, Transport
from pierce.dial import TargetUnreachable, connect_tcp
from pierce.listeners import TcpListener, bind_socket, tune_tcp
from pierce.logs import event, log_relay_closed
from pierce.relay import RelayStats, SocketEnd, relay
from pierce.udpflow import DatagramProtocol, UdpFlow, UdpFlows

log = logging.getLogger("pierce.map")


class TcpForwarder:
    """Accepts on one address and relays every connection to the rule's target."""

    def __init__(self, rule: MapRule) -> None:
        self.rule = rule
        self.bound = ""
        self._listener: TcpListener | None = None

    async def start(self) -> str:
        self._listener = TcpListener.open(self.rule.listen, self._serve, name=self.rule.name)
        self.bound = self._listener.address
        return self.bound

    async def _serve(self, conn: socket.socket, addr: Any) -> None:
        rule = self.rule
        client = format_sockaddr(addr)
        if not allowed(addr[0], rule.allow):
            conn.close()
            event(
                log,
                logging.WARNING,
                "tcp.denied",
                f"{rule.name}: {client} not in allow list, closed",
                rule=rule.name,
                client=client,
            )
            return
        started = time.monotonic()
        try:
            upstream = await connect_tcp(rule.target, rule.connect_timeout)
        except TargetUnreachable as exc:
            conn.close()
            event(
                log,
                logging.WARNING,
                "tcp.target_failed",
                f"{rule.name}: {client}: {exc}",
                rule=rule.name,
                client=client,
                target=str(rule.target),
                error=str(exc),
            )
            return
        except BaseException:
            conn.close()
            raise
        tune_tcp(conn)
        target = format_sockaddr(upstream.getpeername())
        event(
            log,
            logging.INFO,
            "tcp.open",
            f"{rule.name}: {client} -> {target}",
            rule=rule.name,
            client=client,
            target=target,
        )
        stats = RelayStats(started=started)
        await relay(SocketEnd(conn), SocketEnd(upstream), stats)
        log_relay_closed(log, "tcp.close", rule.name, client, target, stats)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None


class UdpForwarder:
    """Receives datagrams on one address and keeps a flow (`pierce.udpflow`) per client address."""

    def __init__(self, rule: MapRule) -> None:
        self.rule = rule
        self.bound = ""
        self.flows = UdpFlows(rule.name, log)
        self._transport: asyncio.DatagramTransport | None = None
        self._denied_logged: set[str] = set()

    async def start(self) -> str:
        sock = bind_socket(self.rule.listen, socket.SOCK_DGRAM)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: DatagramProtocol(self.from_client, log, self.rule.name), sock=sock
        )
        self.bound = format_sockaddr(sock.getsockname())
        return self.bound

    def from_client(self, data: bytes, addr: Any) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            if not allowed(addr[0], self.rule.allow):
                client = format_sockaddr(addr)
                if client not in self._denied_logged and len(self._denied_logged) < 1024:
                    self._denied_logged.add(client)
                    event(
                        log,
                        logging.WARNING,
                        "udp.denied",
                        f"{self.rule.name}: {client} not in allow list",
                        rule=self.rule.name,
                        client=client,
                    )
                return
            flow = self.flows.open(addr, lambda ended: self._new_flow(addr, ended))
            if flow is None:
                return
        flow.send(data)

    def _new_flow(self, addr: Any, ended: Callable[[], None]) -> UdpFlow:
        return UdpFlow(
            label=self.rule.name,
            peer=format_sockaddr(addr),
            target=self.rule.target,
            idle_timeout=self.rule.idle_timeout,
            reply=lambda data: self.to_client(data, addr),
            ended=ended,
            logger=log,
        )

    def to_client(self, data: bytes, addr: Any) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    async def close(self) -> None:
        await self.flows.close(reason="shutdown")
        if self._transport is not None:
            self._transport.close()
            self._transport = None


Forwarder = TcpForwarder | UdpForwarder


class Mapper:
    """Owns every rule's forwarder; ``async with Mapper(config)`` binds them all or none."""

    def __init__(self, config: MapConfig) -> None:
        self.config = config
        self.forwarders: list[Forwarder] = []

    async def __aenter__(self) -> Mapper:
        try:
            for rule in self.config.rules:
                fwd: Forwarder = TcpForwarder(rule) if rule.protocol is Transport.TCP else UdpForwarder(rule)
                bound = await fwd.start()
                self.forwarders.append(fwd)
                event(
                    log,
                    logging.INFO,
                    "map.listening",
                    f"{rule.name}: listening on {rule.protocol.value} {bound}, forwarding to {rule.target}",
                    rule=rule.name,
                    protocol=rule.protocol.value,
                    listen=bound,
                    target=str(rule.target),
                )
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        forwarders, self.forwarders = self.forwarders, []
        await asyncio.gather(*(f.close() for f in forwarders), return_exceptions=True)


async def run_map(config: MapConfig) -> None:
    """Run every rule of ``config`` until SIGINT/SIGTERM."""
    from pierce.runtime import wait_for_stop_signal

    async with Mapper(config):
        sig = await wait_for_stop_signal()
        log.info("stopping on %s", sig.name)
