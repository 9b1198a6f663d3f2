"""Closing a proxy ends its live connections, whatever its kind (one lifecycle for every kind)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from helpers.http_services import web_service
from support.certs import tls_service
from support.streams import echo, free_port, tcp_server
from support.tunnel import TOKEN, start_client, start_server, write_toml

ENDED = 15.0


@contextlib.asynccontextmanager
async def echo_service() -> AsyncIterator[int]:
    async with tcp_server(echo) as local:
        yield int(local.rpartition(":")[2])


async def ended(reader: asyncio.StreamReader) -> bool:
    """True when the connection ends (EOF or reset) within `ENDED` seconds, discarding what arrives."""
    try:
        async with asyncio.timeout(ENDED):
            while await reader.read(65536):
                pass
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


async def test_removing_proxies_ends_their_connections_for_every_kind(pierce, tmp_path: Path) -> None:
    http_port, https_port, mux_port = free_port(), free_port(), free_port()
    async with (
        echo_service() as echo_port,
        web_service("site") as (web_port, _),
        tls_service(tmp_path, "s.example.com") as tls,
    ):
        server, control = await start_server(
            pierce,
            tmp_path,
            vhost_http_port=http_port,
            vhost_https_port=https_port,
            tcpmux_httpconnect_port=mux_port,
        )
        proxies = [
            {"type": "tcp", "name": "t", "local_port": echo_port},
            {"type": "http", "name": "h", "local_port": web_port, "custom_domains": ["h.example.com"]},
            {"type": "https", "name": "s", "local_port": tls.port, "custom_domains": ["s.example.com"]},
            {"type": "tcpmux", "name": "m", "local_port": echo_port, "custom_domains": ["m.example.com"]},
        ]
        client = await start_client(pierce, tmp_path, control, proxies)
        ready = await client.wait_event("proxy.ready", count=4)
        tcp_port = next(int(e["remote_port"]) for e in ready if e["proxy"] == "t")

        # One live connection through each proxy, each shown to work first.
        t_reader, t_writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        t_writer.write(b"tcp\n")
        assert await asyncio.wait_for(t_reader.readline(), 10) == b"tcp\n"

        m_reader, m_writer = await asyncio.open_connection("127.0.0.1", mux_port)
        m_writer.write(b"CONNECT m.example.com:22 HTTP/1.1\r\nHost: m.example.com:22\r\n\r\nmux\n")
        assert await asyncio.wait_for(m_reader.readuntil(b"\r\n\r\n"), 10) == (
            b"HTTP/1.1 200 Connection established\r\n\r\n"
        )
        assert await asyncio.wait_for(m_reader.readline(), 10) == b"mux\n"

        ctx = ssl.create_default_context(cafile=str(tls.cert))
        s_reader, s_writer = await asyncio.open_connection(
            "127.0.0.1", https_port, ssl=ctx, server_hostname="s.example.com"
        )
        assert await asyncio.wait_for(s_reader.readline(), 10) == b"s.example.com\n"

        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{http_port}/ws"
            async with http.ws_connect(url, headers={"Host": "h.example.com"}) as ws:
                await ws.send_str("ws")
                assert await ws.receive_str() == "site:ws"

                # Every proxy removed by a reload: the server closes them, and with them their connections.
                write_toml(
                    tmp_path / "client.toml",
                    {"server_addr": "127.0.0.1", "server_port": control, "token": TOKEN,
                     "client_id": "client", "proxies": []},
                )  # fmt: skip
                client.proc.send_signal(signal.SIGHUP)
                closed = await server.wait_event("proxy.closed", count=4)
                assert {e["proxy"] for e in closed} == {"t", "h", "s", "m"}

                assert await ended(t_reader), "tcp connection outlived its proxy"
                assert await ended(m_reader), "tcpmux connection outlived its proxy"
                assert await ended(s_reader), "https connection outlived its proxy"
                async with asyncio.timeout(ENDED):
                    message = await ws.receive()
                assert message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                )
        for writer in (t_writer, m_writer, s_writer):
            writer.close()
        # The server logged each connection's end.
        closes = server.matching("proxy.conn_close")
        assert {e["proxy"] for e in closes} >= {"t", "s", "m"}
