"""`pierce map --udp`: per-client sessions, datagram boundaries, idle expiry, allow-list."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from support.procs import host_port
from support.tunnel import write_toml


class Collector(asyncio.DatagramProtocol):
    """Queues every datagram it receives with its source address."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))


class EchoServer(Collector):
    """Echoes each datagram back (or, with ``echo`` off, queues it) and remembers the addresses it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: set[Any] = set()
        self.echo = True

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.peers.add(addr)
        assert self.transport is not None
        if self.echo:
            self.transport.sendto(data, addr)
        else:
            self.queue.put_nowait((data, addr))


async def udp_echo() -> tuple[asyncio.DatagramTransport, EchoServer, str]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(EchoServer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    return transport, proto, f"127.0.0.1:{port}"


async def udp_client(target: str) -> tuple[asyncio.DatagramTransport, Collector]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Collector, remote_addr=host_port(target))
    return transport, proto


async def exchange(transport: asyncio.DatagramTransport, proto: Collector, data: bytes) -> bytes:
    """Send and wait for the reply, resending as a UDP application would if a datagram is lost
    (a burst of 60 KB datagrams from eight clients can overflow a socket buffer on any path)."""
    for _ in range(5):
        transport.sendto(data)
        try:
            async with asyncio.timeout(2):
                while True:
                    reply, _ = await proto.queue.get()
                    if reply[:2] == data[:2]:  # a late duplicate of an earlier exchange is skipped
                        return reply
        except TimeoutError:
            continue
    raise AssertionError(f"no reply to a {len(data)}-byte datagram after 5 tries")


async def test_several_clients_at_once_get_their_own_replies(pierce) -> None:
    server_transport, server, target = await udp_echo()
    try:
        proc = await pierce("map", "--udp", "127.0.0.1:0", target)
        (listen,) = await proc.listening()
        rng = random.Random(7)
        sizes = [1, 2, 100, 1400, 1500, 9000, 32_000, 60_000] + [rng.randint(1, 60_000) for _ in range(22)]

        async def client(cid: int) -> list[bytes]:
            transport, proto = await udp_client(listen)
            sent = []
            try:
                for seq, size in enumerate(sizes):
                    data = bytes([cid, seq % 256]) + random.Random(cid * 1000 + seq).randbytes(size)
                    sent.append(data)
                    reply = await exchange(transport, proto, data)
                    assert reply == data, f"client {cid} seq {seq}: got {len(reply)} bytes, sent {len(data)}"
            finally:
                transport.close()
            return sent

        results = await asyncio.gather(*(client(cid) for cid in range(8)))
        assert all(len(r) == len(sizes) for r in results)
        # One upstream socket per client: the target saw 8 distinct source addresses.
        assert len(server.peers) == 8
        opened = await proc.wait_event("udp.open", count=8)
        assert len({e["client"] for e in opened}) == 8
    finally:
        server_transport.close()


async def test_idle_session_expires_and_a_new_one_starts(pierce) -> None:
    server_transport, server, target = await udp_echo()
    try:
        proc = await pierce("map", "--udp", "--idle-timeout", "0.3", "127.0.0.1:0", target)
        (listen,) = await proc.listening()
        transport, proto = await udp_client(listen)
        try:
            transport.sendto(b"first")
            async with asyncio.timeout(10):
                assert (await proto.queue.get())[0] == b"first"
            (closed,) = await proc.wait_event("udp.close")
            assert closed["reason"] == "idle"
            assert (closed["up_bytes"], closed["down_bytes"]) == (5, 5)
            assert (closed["up_packets"], closed["down_packets"]) == (1, 1)
            first_upstream = set(server.peers)

            transport.sendto(b"second")
            async with asyncio.timeout(10):
                assert (await proto.queue.get())[0] == b"second"
            await proc.wait_event("udp.open", count=2)
            # The second session used a fresh upstream socket.
            assert len(server.peers - first_upstream) == 1
        finally:
            transport.close()
    finally:
        server_transport.close()


#: Idle timeout of the session-refresh tests, and the gap between their datagrams: well under one
#: timeout (so a refreshed session never expires, even on a loaded machine), while the whole exchange
#: lasts several timeouts (so a session that is not refreshed must expire during it).
IDLE = 0.8
GAP = IDLE / 4
ROUNDS = 16  # 16 x 0.2 s = 4 idle timeouts


async def map_udp_rule(pierce, tmp_path: Path, target: str):
    """``pierce map -c`` with one UDP rule with the short ``IDLE`` timeout; the process and its address."""
    conf = write_toml(
        tmp_path / "map.toml",
        {"rules": [{"listen": "127.0.0.1:0", "target": target, "protocol": "udp", "idle_timeout": IDLE}]},
    )
    proc = await pierce("map", "-c", str(conf))
    (listen,) = await proc.listening()
    return proc, listen


async def test_replies_keep_flowing_while_session_is_active(pierce, tmp_path: Path) -> None:
    server_transport, server, target = await udp_echo()
    try:
        proc, listen = await map_udp_rule(pierce, tmp_path, target)
        transport, proto = await udp_client(listen)
        try:
            # Each exchange refreshes the idle timer: the exchanges span several idle timeouts, each gap
            # is well under one, so there is one session throughout.
            started = time.monotonic()
            for i in range(ROUNDS):
                await asyncio.sleep(GAP)  # spacing the traffic is the point here, not synchronisation
                transport.sendto(b"%d" % i)
                async with asyncio.timeout(10):
                    assert (await proto.queue.get())[0] == b"%d" % i
            assert time.monotonic() - started >= 3 * IDLE
        finally:
            transport.close()
        assert proc.matching("udp.close") == []
        assert len(proc.matching("udp.open")) == 1
        assert len(server.peers) == 1
    finally:
        server_transport.close()


async def test_traffic_either_way_alone_keeps_the_session(pierce, tmp_path: Path) -> None:
    """Datagrams only from the client, then only from the target: each direction refreshes the timer."""
    server_transport, server, target = await udp_echo()
    try:
        proc, listen = await map_udp_rule(pierce, tmp_path, target)
        transport, proto = await udp_client(listen)
        try:
            transport.sendto(b"hello")
            async with asyncio.timeout(10):
                assert (await proto.queue.get())[0] == b"hello"
            (upstream,) = server.peers
            server.echo = False
            started = time.monotonic()
            for i in range(ROUNDS):  # client -> target only
                await asyncio.sleep(GAP)
                transport.sendto(b"up %d" % i)
                async with asyncio.timeout(10):
                    assert (await server.queue.get())[0] == b"up %d" % i
            for i in range(ROUNDS):  # target -> client only, to the session's upstream socket
                await asyncio.sleep(GAP)
                assert server.transport is not None
                server.transport.sendto(b"down %d" % i, upstream)
                async with asyncio.timeout(10):
                    assert (await proto.queue.get())[0] == b"down %d" % i
            assert time.monotonic() - started >= 6 * IDLE
        finally:
            transport.close()
        assert proc.matching("udp.close") == []
        assert len(proc.matching("udp.open")) == 1
        assert server.peers == {upstream}
    finally:
        server_transport.close()


async def test_allow_list_drops_other_sources(pierce) -> None:
    server_transport, server, target = await udp_echo()
    try:
        proc = await pierce("map", "--udp", "--allow", "10.0.0.0/8", "127.0.0.1:0", target)
        (listen,) = await proc.listening()
        transport, _ = await udp_client(listen)
        try:
            transport.sendto(b"nope")
            (denied,) = await proc.wait_event("udp.denied")
            assert denied["client"].startswith("127.0.0.1:")
        finally:
            transport.close()
        assert server.peers == set()
        assert proc.matching("udp.open") == []
    finally:
        server_transport.close()
