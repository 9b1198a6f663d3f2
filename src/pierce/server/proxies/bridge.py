"""The one bridge on the server: visitor -> work connection -> relay -> counters -> log, for every kind.

`bridge` takes a visitor that reached a proxy (a TCP connection on its public port, a TLS connection
chosen by SNI or by an HTTP CONNECT, a secret proxy's visitor connection), asks the owner's session for
a work connection, starts it with `StartWork`, accepts the visitor and relays the two until both ends
finish (through the throttles of the owner's user, when it has a ``bandwidth_limit``). One error policy:
no work connection in time or a work connection that fails is a refusal the visitor hears when it can
(`Visitor.refuse`) and one log line; the visitor is never left open.

`LiveConnections` is each proxy's lifecycle: it counts bytes while connections run and after they end,
and `close` ends every live one, so closing any proxy ends its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any, Protocol

from pierce.addr import format_sockaddr
from pierce.bandwidth import Throttle
from pierce.errors import PierceError
from pierce.listeners import tune_tcp
from pierce.logs import event, log_conn_closed
from pierce.protocol import Error, ErrorCode, StartWork, VisitReady
from pierce.proxies.access import IpAccess
from pierce.proxies.base import ProxyOwner
from pierce.relay import End, RelayStats, SocketEnd, ThrottledEnd, relay
from pierce.server.workconn import WorkConn
from pierce.snapshot import ProxyStats
from pierce.transport import MessageChannel

log = logging.getLogger("pierce.proxy")


class LiveConnections:
    """The connections of one server-side proxy: live counters, totals of the ended ones, and an end."""

    def __init__(self) -> None:
        self._live: dict[RelayStats, asyncio.Task[Any] | End] = {}
        self._total = 0
        self._failed = 0
        self._ended_in = 0
        self._ended_out = 0
        self.closed = False
        #: The proxy's allow_ips / deny_ips, checked before a visitor is served (None: all pass).
        self.access: IpAccess | None = None

    def stats(self) -> ProxyStats:
        live = self._live
        return ProxyStats(
            connections=len(live),
            total_connections=self._total,
            bytes_in=self._ended_in + sum(s.a_to_b for s in live),
            bytes_out=self._ended_out + sum(s.b_to_a for s in live),
            failed_connections=self._failed,
            refused_connections=self.access.refused if self.access is not None else 0,
        )

    def admits(self, host: str) -> bool:
        """Whether the proxy's allow_ips / deny_ips let ``host`` in (a refusal is counted and logged)."""
        return self.access is None or self.access.admit(host)

    def failed(self) -> None:
        """A visitor could not be served (no work connection in time, or it failed)."""
        self._failed += 1

    def add(self, stats: RelayStats, holder: asyncio.Task[Any] | End) -> None:
        """Count a connection until `done`; ``holder`` is what `close` cancels (a task) or closes."""
        self._live[stats] = holder
        self._total += 1

    def done(self, stats: RelayStats) -> None:
        if self._live.pop(stats, None) is not None:
            self._ended_in += stats.a_to_b
            self._ended_out += stats.b_to_a

    def counted(self, end: End) -> End:
        """``end`` (a stream to the service, used by the HTTP engine), counted and ended with the proxy."""
        counted = CountedEnd(end, self)
        self.add(counted.stats, counted)
        return counted

    async def close(self) -> None:
        """End every live connection and wait for their tasks."""
        self.closed = True
        tasks = []
        for holder in list(self._live.values()):
            if isinstance(holder, End):
                holder.close()
            elif holder is not asyncio.current_task():
                holder.cancel()
                tasks.append(holder)
        await asyncio.gather(*tasks, return_exceptions=True)


class CountedEnd(End):
    """An end whose bytes count towards its proxy: read = out (towards the visitor), write = in."""

    def __init__(self, inner: End, live: LiveConnections) -> None:
        self._inner = inner
        self._live = live
        self.stats = RelayStats(started=time.monotonic())

    async def read(self, max_bytes: int) -> bytes:
        data = await self._inner.read(max_bytes)
        self.stats.b_to_a += len(data)
        return data

    async def write(self, data: bytes | memoryview) -> None:
        await self._inner.write(data)
        self.stats.a_to_b += len(data)

    def write_eof(self) -> None:
        self._inner.write_eof()

    def peer_done(self) -> bool:
        return self._inner.peer_done()

    def close(self) -> None:
        self._live.done(self.stats)
        self._inner.close()

    def abort(self) -> None:
        self._live.done(self.stats)
        self._inner.abort()


class Visitor(Protocol):
    """The visitor side of a bridge."""

    #: The visitor's address as the server sees it.
    address: tuple[str, int]
    #: Bytes for the service that came with the visitor's request (read before the bridge started).
    early: bytes

    async def accept(self) -> End:
        """The visitor is through: its relay end (after telling it so, where the protocol says)."""

    async def refuse(self, code: ErrorCode, reason: str) -> None:
        """Turn the visitor away (telling it why, where the protocol can) and close it."""


class SocketVisitor:
    """A visitor's TCP connection, accepted on a public port (or handed on by a front)."""

    early = b""

    def __init__(self, conn: socket.socket, address: tuple[str, int]) -> None:
        self.conn = conn
        self.address = address

    async def accept(self) -> End:
        tune_tcp(self.conn)
        return SocketEnd(self.conn)

    async def refuse(self, code: ErrorCode, reason: str) -> None:
        self.conn.close()


class ChannelVisitor:
    """A logged-in visitor connection of a secret proxy: hears ``ready`` (with the owner's proof) or
    `Error`."""

    early = b""

    def __init__(self, channel: MessageChannel, address: tuple[str, int], ready: VisitReady) -> None:
        self.channel = channel
        self.address = address
        self.ready = ready

    async def accept(self) -> End:
        await self.channel.send(self.ready)
        return self.channel.into_end()

    async def refuse(self, code: ErrorCode, reason: str) -> None:
        await refuse_channel(self.channel, code, reason)


async def refuse_channel(channel: MessageChannel, code: ErrorCode, reason: str) -> None:
    """Tell the peer why (if it still listens), then close."""
    with contextlib.suppress(PierceError, OSError):
        await channel.send(Error(code=code, reason=reason))
    channel.close()


#: Work connections one visitor is offered at most when ``start.confirm`` finds them dead: after the
#: first dead one the owner's idle ones are dropped, so the second is a fresh one.
MAX_WORK_TRIES = 2


async def open_work(owner: ProxyOwner, start: StartWork) -> tuple[End, WorkConn]:
    """A work connection of ``owner`` started for one visitor: the relay end of its data. With
    ``start.confirm`` a connection that does not confirm is passed over (at most `MAX_WORK_TRIES`)."""
    for tries in range(1, MAX_WORK_TRIES + 1):
        work = await owner.take_work_conn()
        try:
            return await work.start(start), work
        except (PierceError, OSError) as exc:
            work.close()
            if not start.confirm or tries == MAX_WORK_TRIES:
                raise
            owner.work_conn_dead(work, start.proxy, str(exc) or type(exc).__name__)
        except BaseException:
            work.close()
            raise
    raise AssertionError("unreachable")  # the last try returns or raises


async def bridge(
    name: str,
    owner: ProxyOwner,
    live: LiveConnections,
    visitor: Visitor,
    start: StartWork,
    **fields: Any,
) -> None:
    """Relay ``visitor`` with a work connection of ``owner`` for proxy ``name``; log open and close.

    ``fields`` go into both log lines (e.g. ``server_name``, ``visitor_id``). Cancelling it (the proxy
    closing) ends the connection.
    """
    who = format_sockaddr(visitor.address)
    stats = RelayStats(started=time.monotonic())
    task = asyncio.current_task()
    assert task is not None
    if live.closed:
        await visitor.refuse(ErrorCode.UNKNOWN_PROXY, f"proxy {name!r} is closing")
        return
    if not live.admits(visitor.address[0]):
        await visitor.refuse(ErrorCode.NOT_ALLOWED, "your address is not allowed to reach this proxy")
        return
    live.add(stats, task)
    try:
        try:
            end, work = await open_work(owner, start)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and task.cancelling():
                await _quietly(visitor.refuse(ErrorCode.UNKNOWN_PROXY, f"proxy {name!r} closed"))
                raise
            # TimeoutError, or the owner's pool closed under us (its session ended).
            # The visitor hears no client id: refusals never say who serves a proxy.
            live.failed()
            await _quietly(visitor.refuse(ErrorCode.TIMEOUT, f"no work connection for {name!r} in time"))
            event(
                log,
                logging.WARNING,
                "proxy.no_work_conn",
                f"{name}: visitor {who}: no work connection from client {owner.client_id} in time",
                proxy=name,
                visitor=who,
                client_id=owner.client_id,
                **fields,
            )
            return
        except (PierceError, OSError) as exc:
            live.failed()
            await _quietly(visitor.refuse(ErrorCode.INTERNAL, "the work connection failed"))
            _work_failed(name, who, owner, exc, fields)
            return
        try:
            here = await visitor.accept()
            if visitor.early:
                await end.write(visitor.early)
                stats.a_to_b += len(visitor.early)
        except BaseException as exc:
            end.close()
            await _quietly(visitor.refuse(ErrorCode.INTERNAL, "closed"))
            if not isinstance(exc, PierceError | OSError):
                raise
            _work_failed(name, who, owner, exc, fields)
            return
        event(
            log,
            logging.INFO,
            "proxy.conn_open",
            f"{name}: visitor {who}",
            proxy=name,
            visitor=who,
            client_id=owner.client_id,
            work_conn=work.serial,
            **fields,
        )
        try:
            await relay(here, end, stats, throttles=user_throttles(owner))
        except asyncio.CancelledError:
            if stats.error is None:  # cancelled: the proxy (or the server) is closing
                stats.error = ConnectionAbortedError(f"proxy {name!r} closed")
            raise
        finally:
            target = f"client {owner.client_id}"
            log_conn_closed(log, name, who, target, stats, client_id=owner.client_id, **fields)
    finally:
        live.done(stats)


def user_throttles(owner: ProxyOwner) -> tuple[Throttle | None, Throttle | None]:
    """The relay throttles of ``owner``'s user: visitor -> service, service -> visitor (none: splice
    and the other fast paths stay on)."""
    limits = owner.bandwidth
    return (limits.inbound, limits.outbound) if limits is not None else (None, None)


def user_throttled(owner: ProxyOwner, end: End) -> End:
    """``end`` (towards the service) held to ``owner``'s user bandwidth, for code that moves the bytes
    itself (the HTTP engine): writes go towards the service, reads towards the visitor."""
    limits = owner.bandwidth
    if limits is None:
        return end
    return ThrottledEnd(end, reads=limits.outbound, writes=limits.inbound)


def _work_failed(name: str, who: str, owner: ProxyOwner, exc: BaseException, fields: dict[str, Any]) -> None:
    error = str(exc) or type(exc).__name__
    event(
        log,
        logging.WARNING,
        "proxy.work_failed",
        f"{name}: visitor {who}: {error}",
        proxy=name,
        visitor=who,
        client_id=owner.client_id,
        error=error,
        **fields,
    )


async def _quietly(refusal: Any) -> None:
    with contextlib.suppress(PierceError, OSError):
        await refusal
