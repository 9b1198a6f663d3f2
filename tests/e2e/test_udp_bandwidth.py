"""``bandwidth_limit`` on UDP proxies: the proxy's own (applied by its client; udp and sudp) and its
user's (applied by the server). Datagrams over the limit are dropped, never queued: sent at three times
the rate for a few seconds, what arrives each way is the rate (within 10 %); without a limit a modest flow
loses nothing.

Real `pierce server` / `pierce client` processes on loopback; the visitor and the service run here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from support.procs import PierceProcess
from support.tunnel import start_client, start_server
from test_secret_proxies import secret_proxy, serve_secret, visit, visitor_port
from test_tunnel_udp import proxy_port, udp_proxy

from pierce.bandwidth import DATAGRAM_BURST_S, parse_rate

ALICE = {"name": "alice", "token": "alice-token-6b1e9f4c2a7d5e08"}
RATE = "1MB"
SIZE = 4096  # bytes per datagram
SECONDS = 3.0
#: Seconds the last datagrams of a phase may take to arrive (the marker that ends a phase).
MARKER_TRIES = 50
DATA, MARKER, BLAST = b"D", b"M", b"B"
#: The markers: the path is up (the client's flow to the service is open), the end of each phase.
WARM, IN_DONE, OUT_DONE = b"MW", b"MI", b"MO"


async def paced(send: Callable[[bytes], None], rate: float, seconds: float) -> tuple[float, int]:
    """Send `SIZE`-byte data datagrams at ``rate`` bytes/s for ``seconds``: (seconds taken, datagrams)."""
    loop = asyncio.get_running_loop()
    datagram = DATA + bytes(SIZE - 1)
    start, sent = loop.time(), 0
    while (now := loop.time()) - start < seconds:
        while sent * SIZE < (now - start) * rate:
            send(datagram)
            sent += 1
        await asyncio.sleep(0.005)  # pacing, not synchronisation
    return loop.time() - start, sent


async def until_marked(send: Callable[[bytes], None], seen: asyncio.Event, marker: bytes) -> None:
    """Send ``marker`` until the other side has seen it: the datagrams sent before it have arrived (one
    path, in order) or were dropped."""
    for _ in range(MARKER_TRIES):
        send(marker)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await seen.wait()
                return
    raise AssertionError(f"marker {marker!r} never arrived")


class End(asyncio.DatagramProtocol):
    """One side: counts the data bytes it receives, notes markers, and (the service) blasts on request."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.bytes = self.datagrams = 0
        #: Markers seen, by their first two bytes; the last one whole.
        self.markers: defaultdict[bytes, asyncio.Event] = defaultdict(asyncio.Event)
        self.marker = b""
        self.blast_rate = 0.0
        self.blasting: asyncio.Task[None] | None = None
        self.acked = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[:1] == DATA:
            self.bytes += len(data)
            self.datagrams += 1
        elif data[:1] == MARKER:
            self.marker = data
            self.markers[data[:2]].set()
        elif data[:1] == BLAST and self.blasting is None:
            self.blasting = asyncio.ensure_future(self.blast(addr, float(data[1:])))
        elif data == b"ack":
            self.acked.set()

    async def blast(self, addr: Any, rate: float) -> None:
        transport = self.transport
        assert transport is not None
        took, sent = await paced(lambda d: transport.sendto(d, addr), rate, SECONDS)
        marker = OUT_DONE + f"{took!r} {sent}".encode()
        await until_marked(lambda m: transport.sendto(m, addr), self.acked, marker)


@contextlib.asynccontextmanager
async def udp_end(**where: Any) -> AsyncIterator[tuple[asyncio.DatagramTransport, End]]:
    transport, end = await asyncio.get_running_loop().create_datagram_endpoint(End, **where)
    try:
        yield transport, end
    finally:
        if end.blasting is not None:
            end.blasting.cancel()
        transport.close()


async def udp_proxy_port(
    pierce: Any, tmp_path: Path, local: str, limit: str | None
) -> tuple[PierceProcess, PierceProcess, int]:
    """A server and alice's client with the udp proxy "blast" to ``local``, limited as ``limit`` says:
    (server, client, public port)."""
    users = [{**ALICE, "bandwidth_limit": RATE}] if limit == "user" else [ALICE]
    server, port = await start_server(pierce, tmp_path, stun_port=0, users=users)
    proxy = udp_proxy("blast", local, **({"bandwidth_limit": RATE} if limit == "proxy" else {}))
    client = await start_client(pierce, tmp_path, port, [proxy], user="alice", token=ALICE["token"])
    return server, client, await proxy_port(client, "blast")


async def sudp_visitor_port(
    pierce: Any, tmp_path: Path, local: str
) -> tuple[PierceProcess, PierceProcess, int]:
    """A server, the owner's client with the sudp proxy "blast" to ``local`` limited to `RATE`, and a
    visitor: (server, owner, the visitor's local port)."""
    proxy = secret_proxy("sudp", "blast", local, bandwidth_limit=RATE)
    server, port, owner = await serve_secret(pierce, tmp_path, [proxy])
    visitor = await visit(pierce, port, "blast", "--udp")
    await visitor.wait_event("visitor.checked")
    return server, owner, await visitor_port(visitor)


@pytest.mark.parametrize(
    "limit",
    ["proxy", "user", "sudp", None],
    ids=["proxy-limit", "user-limit", "sudp-proxy-limit", "no-limit"],
)
async def test_datagrams_over_the_limit_are_dropped_each_way(
    pierce, tmp_path: Path, limit: str | None
) -> None:
    rate = parse_rate(RATE)
    # Three times the limit; without one a modest rate, at which nothing may be lost.
    send_rate = 3 * rate if limit else rate / 4
    async with udp_end(local_addr=("127.0.0.1", 0)) as (service_transport, service):
        local = f"127.0.0.1:{service_transport.get_extra_info('sockname')[1]}"
        if limit == "sudp":
            server, client, public = await sudp_visitor_port(pierce, tmp_path, local)
        else:
            server, client, public = await udp_proxy_port(pierce, tmp_path, local, limit)
        async with udp_end(remote_addr=("127.0.0.1", public)) as (visitor_transport, visitor):
            await until_marked(visitor_transport.sendto, service.markers[WARM], WARM)
            # In: visitor -> service.
            up_s, sent_up = await paced(visitor_transport.sendto, send_rate, SECONDS)
            await until_marked(visitor_transport.sendto, service.markers[IN_DONE], IN_DONE)
            # Out: service -> visitor, on request.
            visitor_transport.sendto(BLAST + repr(send_rate).encode())
            async with asyncio.timeout(SECONDS + 15):
                await visitor.markers[OUT_DONE].wait()
            visitor_transport.sendto(b"ack")
            took, sent = visitor.marker[2:].split()
            down_s, sent_down = float(took), int(sent)
    print(f"in {service.bytes / up_s / rate:.3f}x, out {visitor.bytes / down_s / rate:.3f}x of the limit")
    if limit is None:
        assert (service.datagrams, visitor.datagrams) == (sent_up, sent_down)
        assert not server.matching("udp.dropped") and not client.matching("udp.dropped")
        return
    # Within 10 % of the rate, and over it by at most one bucket (`DATAGRAM_BURST_S` of the rate).
    bucket = DATAGRAM_BURST_S * rate
    assert 0.9 * rate * up_s <= service.bytes <= 1.1 * rate * up_s + bucket, service.bytes / up_s / rate
    assert 0.9 * rate * down_s <= visitor.bytes <= 1.1 * rate * down_s + bucket, visitor.bytes / down_s / rate
    dropper = server if limit == "user" else client
    reason = f"over the {'user' if limit == 'user' else 'proxy'}'s bandwidth_limit"
    for direction in ("in", "out"):
        (dropped, *_) = await dropper.wait_event(
            "udp.dropped", lambda e, d=direction: e.get("direction") == d
        )
        assert dropped["reason"] == reason and dropped["proxy"] == "blast", dropped
