"""UDP proxies through the reverse tunnel, with real `pierce server` and `pierce client` processes."""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import socket
from pathlib import Path
from typing import Any

from support.procs import PierceProcess
from support.tunnel import TOKEN, start_client, start_server, write_toml
from test_map_udp import Collector, udp_client, udp_echo

from pierce.client.session import Dialer
from pierce.config import ClientConfig
from pierce.protocol import NewProxy, ProxyReady, UdpPacket
from pierce.proxies.registry import encode_spec
from pierce.proxies.udp import UdpSpec

#: The largest UDP payload over IPv4.
MAX_DATAGRAM = 65_507


def udp_proxy(name: str, local: str, remote_port: int = 0, **extra: Any) -> dict[str, Any]:
    host, _, port = local.rpartition(":")
    return {
        "type": "udp",
        "name": name,
        "local_ip": host,
        "local_port": int(port),
        "remote_port": remote_port,
        **extra,
    }


async def proxy_port(client: PierceProcess, name: str, count: int = 1) -> int:
    ready = await client.wait_event("proxy.ready", lambda e: e.get("proxy") == name, count=count)
    return int(ready[-1]["remote_port"])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Visitor:
    """A visitor's socket; `exchange` sends a datagram and waits for exactly that datagram back."""

    def __init__(self, transport: asyncio.DatagramTransport, proto: Collector) -> None:
        self.transport = transport
        self.proto = proto
        self.sent: list[bytes] = []
        self.received: list[bytes] = []

    @classmethod
    async def open(cls, port: int) -> Visitor:
        return cls(*await udp_client(f"127.0.0.1:{port}"))

    async def exchange(self, data: bytes, tries: int = 5) -> bytes:
        """Resends as a UDP application would if a datagram is lost; late duplicates are skipped."""
        self.sent.append(data)
        for _ in range(tries):
            self.transport.sendto(data)
            try:
                async with asyncio.timeout(2):
                    while True:
                        reply, _ = await self.proto.queue.get()
                        self.received.append(reply)
                        if reply == data:
                            return reply
            except TimeoutError:
                continue
        raise AssertionError(f"no reply to a {len(data)}-byte datagram after {tries} tries")

    def drain(self) -> list[bytes]:
        while not self.proto.queue.empty():
            self.received.append(self.proto.queue.get_nowait()[0])
        return self.received

    def close(self) -> None:
        self.transport.close()


async def test_visitors_get_their_own_replies_in_whole_datagrams(pierce, tmp_path: Path) -> None:
    echo_transport, echo, local = await udp_echo()
    try:
        server, port = await start_server(pierce, tmp_path)
        client = await start_client(pierce, tmp_path, port, [udp_proxy("echo", local, remote_port=0)])
        public = await proxy_port(client, "echo")  # remote_port = 0: the server picked it
        (ready,) = await server.wait_event("proxy.ready")
        assert (ready["type"], ready["remote_port"]) == ("udp", public)

        sizes = [1, 2, 100, 1400, 1500, 9000, 32_000, MAX_DATAGRAM - 1, MAX_DATAGRAM]

        async def visit(vid: int) -> tuple[str, str]:
            rng = random.Random(vid)
            visitor = await Visitor.open(public)
            replies = []
            try:
                for size in sizes + [rng.randint(2, MAX_DATAGRAM) for _ in range(8)]:
                    # Every datagram starts with the visitor's number (the 1-byte one is the number).
                    data = bytes([vid]) + rng.randbytes(size - 1)
                    replies.append(await visitor.exchange(data))
                # Only this visitor's own datagrams ever came back to it (late duplicates included).
                assert {d[0] for d in visitor.drain()} == {vid}
            finally:
                visitor.close()
            sent = hashlib.sha256(b"".join(len(d).to_bytes(4, "big") + d for d in visitor.sent))
            got = hashlib.sha256(b"".join(len(d).to_bytes(4, "big") + d for d in replies))
            return sent.hexdigest(), got.hexdigest()

        results = await asyncio.gather(*(visit(vid) for vid in range(6)))
        for sent, got in results:
            assert sent == got
        # A flow per visitor: the local service saw six source ports, the client logged six flows.
        assert len(echo.peers) == 6
        opened = await client.wait_event("udp.open", lambda e: e.get("proxy") == "echo", count=6)
        assert len({e["client"] for e in opened}) == 6
        assert all(e["target"] == local for e in opened)
    finally:
        echo_transport.close()


async def test_idle_flow_closes_and_a_new_datagram_opens_another(pierce, tmp_path: Path) -> None:
    echo_transport, echo, local = await udp_echo()
    try:
        _, port = await start_server(pierce, tmp_path)
        client = await start_client(pierce, tmp_path, port, [udp_proxy("dns", local, idle_timeout=0.3)])
        visitor = await Visitor.open(await proxy_port(client, "dns"))
        try:
            await visitor.exchange(b"first")
            (closed,) = await client.wait_event("udp.close")
            assert (closed["proxy"], closed["reason"]) == ("dns", "idle")
            assert (closed["up_bytes"], closed["down_bytes"]) == (5, 5)
            assert (closed["up_packets"], closed["down_packets"]) == (1, 1)
            first_flow = set(echo.peers)

            await visitor.exchange(b"second")
            opened = await client.wait_event("udp.open", count=2)
            assert opened[0]["client"] == opened[1]["client"]  # same visitor, new flow
            assert len(echo.peers - first_flow) == 1  # with a fresh socket towards the service
        finally:
            visitor.close()
    finally:
        echo_transport.close()


async def test_flows_survive_a_server_restart(pierce, tmp_path: Path) -> None:
    echo_transport, echo, local = await udp_echo()
    try:
        public = free_udp_port()
        server, port = await start_server(pierce, tmp_path)
        client = await start_client(pierce, tmp_path, port, [udp_proxy("game", local, public)])
        assert await proxy_port(client, "game") == public
        visitor = await Visitor.open(public)
        try:
            await visitor.exchange(b"before")
            await server.stop()
            await client.wait_event("client.disconnected")
            await start_server(pierce, tmp_path, bind_port=port)
            assert await proxy_port(client, "game", count=2) == public
            await visitor.exchange(b"after")  # the new control channel carries it
        finally:
            visitor.close()
        # The visitor's flow outlived the reconnect: still one source port at the service.
        assert len(echo.peers) == 1
        assert len(client.matching("udp.open")) == 1
    finally:
        echo_transport.close()


async def test_removed_proxy_closes_its_flows(pierce, tmp_path: Path) -> None:
    echo_transport, _, local = await udp_echo()
    try:
        server, port = await start_server(pierce, tmp_path)
        client = await start_client(pierce, tmp_path, port, [udp_proxy("gone", local)])
        visitor = await Visitor.open(await proxy_port(client, "gone"))
        try:
            await visitor.exchange(b"hello")
            write_toml(
                tmp_path / "client.toml",
                {"server_addr": "127.0.0.1", "server_port": port, "token": TOKEN, "client_id": "client"},
            )
            client.proc.send_signal(signal.SIGHUP)
            (closed,) = await client.wait_event("udp.close")
            assert (closed["proxy"], closed["reason"]) == ("gone", "proxy removed")
            await server.wait_event("proxy.closed", lambda e: e.get("proxy") == "gone")
        finally:
            visitor.close()
    finally:
        echo_transport.close()


async def test_port_outside_allow_ports_is_refused(pierce, tmp_path: Path) -> None:
    allowed = free_udp_port()
    _, port = await start_server(pierce, tmp_path, allow_ports=[str(allowed)])
    outside = allowed - 1 if allowed > 1024 else allowed + 1
    client = await start_client(
        pierce,
        tmp_path,
        port,
        [udp_proxy("bad", "127.0.0.1:9", outside), udp_proxy("good", "127.0.0.1:9", 0)],
    )
    (refused,) = await client.wait_event("proxy.refused", lambda e: e.get("proxy") == "bad")
    assert f"port {outside} is not allowed" in refused["error"]
    assert await proxy_port(client, "good") == allowed


async def test_server_sends_packets_only_to_own_proxies_and_their_visitors(pierce, tmp_path: Path) -> None:
    """A logged-in client cannot reach another client's visitors, nor use its own port to send anywhere."""
    echo_transport, _, local = await udp_echo()
    try:
        server, port = await start_server(pierce, tmp_path)
        owner = await start_client(pierce, tmp_path, port, [udp_proxy("victim", local)], name="owner")
        visitor = await Visitor.open(await proxy_port(owner, "victim"))
        rogue = Dialer(ClientConfig(server_addr="127.0.0.1", server_port=port, token=TOKEN), "rogue")
        channel, _, _ = await rogue.control(None)
        try:
            await visitor.exchange(b"legit")
            host, vport = visitor.transport.get_extra_info("sockname")
            await channel.send(NewProxy(name="rogue-udp", spec=encode_spec(UdpSpec(remote_port=0))))
            while not isinstance(await channel.recv(), ProxyReady):
                pass
            for proxy in ("victim", "rogue-udp"):
                await channel.send(UdpPacket(proxy=proxy, peer_host=host, peer_port=vport, data=b"spoof"))
            (foreign,) = await server.wait_event("udp.unknown_proxy")
            assert foreign["proxy"] == "victim"
            (stranger,) = await server.wait_event("udp.dropped")
            assert stranger["proxy"] == "rogue-udp"
            assert "never sent" in stranger["reason"]
            await visitor.exchange(b"still mine")
            assert b"spoof" not in visitor.drain()
        finally:
            channel.close()
            visitor.close()
    finally:
        echo_transport.close()
