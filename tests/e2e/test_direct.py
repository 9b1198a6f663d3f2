"""``direct = "auto"`` on loopback, where no router answers: the client says why there is no direct address
(status and log), keeps the proxy working through the server, and its own direct listener serves visitors
as a work connection would (bytes both ways with half-close, the proxy's allow_ips / deny_ips).

The router is 127.0.0.1 and only PCP is asked ([port_mapping]), so nothing leaves the machine: the
datagram meets a closed port and the ICMP answer ends the attempt at once. The natlab tests
(tests/natlab/test_direct_proxies.py) map for real, against miniupnpd.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from support.procs import pierce_cli
from support.streams import duplex_service, duplex_visit, free_port, payload, tcp_server
from support.tunnel import start_client, start_server
from test_map_udp import udp_echo
from test_tunnel_tcp import proxy_port, tcp_proxy
from test_tunnel_udp import udp_proxy

#: A router that cannot answer: PCP to a closed port on loopback.
NO_ROUTER = {"gateway": "127.0.0.1", "method": "pcp"}


def listen_port(event: dict[str, object]) -> int:
    return int(str(event["listen"]).rpartition(":")[2])


async def test_without_a_router_the_proxy_says_why_and_its_direct_port_serves(pierce, tmp_path: Path) -> None:
    down, up = payload(512 * 1024 + 3, 1), payload(256 * 1024 + 5, 2)
    service, service_got = duplex_service(down)
    async with tcp_server(service) as local:
        server, port = await start_server(pierce, tmp_path, stun_port=0)
        admin_port = free_port()
        client = await start_client(
            pierce,
            tmp_path,
            port,
            [{**tcp_proxy("svc", local), "direct": "auto"}],
            port_mapping=NO_ROUTER,
            admin_addr="127.0.0.1",
            admin_port=admin_port,
            state_dir=str(tmp_path / "client-state"),
        )
        (unavailable,) = await client.wait_event("proxy.direct_unavailable")
        assert unavailable["proxy"] == "svc", unavailable
        assert "no port mapping protocol answered" in str(unavailable["error"]), unavailable
        await proxy_port(client, "svc")  # through the server regardless

        rc, out, err = await pierce_cli("status", "-c", str(tmp_path / "client.toml"), "--json")
        assert rc == 0, err
        (proxy,) = json.loads(out)["proxies"]
        assert proxy["direct"] == "" and "no port mapping protocol answered" in proxy["direct_error"], proxy

        # The client's own listener: a visitor on the LAN gets the service, bytes checked both ways.
        direct = listen_port(unavailable)
        assert await duplex_visit("127.0.0.1", direct, up) == (hashlib.sha256(down).hexdigest(), len(down))
        assert await service_got == (hashlib.sha256(up).hexdigest(), len(up))
        (opened,) = await client.wait_event("proxy.conn_open")
        assert opened["proxy"] == "svc" and str(opened["visitor"]).startswith("127.0.0.1:"), opened
    assert client.matching("proxy.direct") == []
    assert server.matching("proxy.conn_open") == []  # that visitor never went through the server


async def test_the_direct_port_keeps_the_proxys_ip_lists(pierce, tmp_path: Path) -> None:
    reached = asyncio.Event()

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.set()
        writer.close()

    async with tcp_server(service) as local:
        _server, port = await start_server(pierce, tmp_path, stun_port=0)
        proxy = {**tcp_proxy("svc", local), "direct": "auto", "deny_ips": ["127.0.0.0/8"]}
        client = await start_client(pierce, tmp_path, port, [proxy], port_mapping=NO_ROUTER)
        (unavailable,) = await client.wait_event("proxy.direct_unavailable")
        reader, writer = await asyncio.open_connection("127.0.0.1", listen_port(unavailable))
        writer.write(b"hello")
        try:
            got = await asyncio.wait_for(reader.read(100), 10)
        except ConnectionResetError:
            got = b""
        writer.close()
        (refused,) = await client.wait_event("proxy.ip_refused")
    assert got == b"" and not reached.is_set()
    assert refused["proxy"] == "svc" and refused["visitor"] == "127.0.0.1", refused


async def test_a_udp_proxy_s_direct_port_carries_whole_datagrams_both_ways(pierce, tmp_path: Path) -> None:
    echo_transport, _echo, local = await udp_echo()
    try:
        _server, port = await start_server(pierce, tmp_path, stun_port=0)
        client = await start_client(
            pierce, tmp_path, port, [udp_proxy("dns", local, direct="auto")], port_mapping=NO_ROUTER
        )
        (unavailable,) = await client.wait_event("proxy.direct_unavailable")
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Visitor(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                replies.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(
            Visitor, remote_addr=("127.0.0.1", listen_port(unavailable))
        )
        try:
            sent = [payload(size, seed) for seed, size in enumerate((1, 1200, 8000, 30000))]
            got = []
            for datagram in sent:
                transport.sendto(datagram)
                got.append(await asyncio.wait_for(replies.get(), 10))
            assert [hashlib.sha256(d).hexdigest() for d in got] == [
                hashlib.sha256(d).hexdigest() for d in sent
            ]
        finally:
            transport.close()
    finally:
        echo_transport.close()
