"""``allow_ips`` / ``deny_ips``: the server turns visitors away before a byte reaches the client."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from support.streams import duplex_service, duplex_visit, payload, tcp_server
from support.tunnel import start_client, start_server
from test_tunnel_tcp import proxy_port, tcp_proxy


@pytest.mark.parametrize(
    "lists",
    [{"deny_ips": ["127.0.0.0/8"]}, {"allow_ips": ["10.0.0.0/8", "::1"]}],
    ids=["denied", "not-allowed"],
)
async def test_a_refused_visitor_never_reaches_the_service(pierce, tmp_path: Path, lists: dict) -> None:
    reached = asyncio.Event()

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.set()
        writer.close()

    async with tcp_server(service) as local:
        server, port = await start_server(pierce, tmp_path)
        client = await start_client(pierce, tmp_path, port, [{**tcp_proxy("svc", local), **lists}])
        public = await proxy_port(client, "svc")
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"hello")
        try:
            got = await asyncio.wait_for(reader.read(100), 10)
        except ConnectionResetError:
            got = b""
        writer.close()
        (refused,) = await server.wait_event("proxy.ip_refused")
    assert got == b"" and not reached.is_set()
    assert refused["proxy"] == "svc" and refused["visitor"] == "127.0.0.1"
    assert server.matching("proxy.conn_open") == []


async def test_an_allowed_visitor_passes_with_its_bytes(pierce, tmp_path: Path) -> None:
    down, up = payload(256 * 1024, 1), payload(256 * 1024, 2)
    service, service_got = duplex_service(down)
    async with tcp_server(service) as local:
        server, port = await start_server(pierce, tmp_path)
        lists = {"allow_ips": ["127.0.0.1/32"], "deny_ips": ["10.0.0.0/8"]}
        client = await start_client(pierce, tmp_path, port, [{**tcp_proxy("svc", local), **lists}])
        public = await proxy_port(client, "svc")
        assert await duplex_visit("127.0.0.1", public, up) == (hashlib.sha256(down).hexdigest(), len(down))
        assert await service_got == (hashlib.sha256(up).hexdigest(), len(up))
    assert server.matching("proxy.ip_refused") == []


async def test_a_bad_entry_is_a_config_error_naming_the_key(pierce, tmp_path: Path) -> None:
    from pierce import config
    from pierce.errors import ConfigError

    path = tmp_path / "client.toml"
    path.write_text(
        'server_addr = "127.0.0.1"\ntoken = "t"\n[[proxies]]\nname = "a"\ntype = "tcp"\nlocal_port = 1\n'
        'deny_ips = ["10.0.0.0/33"]\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load(path, config.ClientConfig)
    assert "proxies[0].deny_ips" in str(info.value) and "CIDR" in str(info.value)


async def test_a_refused_visitor_s_datagrams_are_dropped_on_the_server(pierce, tmp_path: Path) -> None:
    from test_map_udp import udp_echo
    from test_tunnel_udp import Visitor, udp_proxy

    echo_transport, echo, local = await udp_echo()
    try:
        server, port = await start_server(pierce, tmp_path)
        proxy = udp_proxy("dns", local, deny_ips=["127.0.0.1"])
        client = await start_client(pierce, tmp_path, port, [proxy])
        public = await proxy_port(client, "dns")
        visitor = await Visitor.open(public)
        try:
            visitor.transport.sendto(b"query")
            (refused,) = await server.wait_event("proxy.ip_refused")
        finally:
            visitor.transport.close()
    finally:
        echo_transport.close()
    assert refused["proxy"] == "dns" and echo.peers == set()
