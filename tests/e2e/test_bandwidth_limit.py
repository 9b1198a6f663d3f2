"""``bandwidth_limit`` on a proxy: each direction held to the rate, all its connections together."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest
from support.streams import MiB, duplex_service, duplex_visit, payload, tcp_server
from support.tunnel import start_client, start_server
from test_tunnel_tcp import proxy_port, tcp_proxy

from pierce.bandwidth import parse_rate

RATE = "1MB"  # 1 MiB/s each way


@pytest.mark.parametrize("encrypt", [True, False], ids=["tls-data", "plain-data"])
async def test_each_direction_runs_at_the_limit(pierce, tmp_path: Path, encrypt: bool) -> None:
    """2 MiB each way at once through a proxy limited to 1 MiB/s: each direction takes its share of
    time, within 10 % of the set rate, and the bytes arrive intact."""
    size = 2 * MiB
    down, up = payload(size, 41), payload(size, 42)
    service, service_got = duplex_service(down)
    async with tcp_server(service) as local:
        transport = {"encrypt_data": encrypt}
        _, port = await start_server(pierce, tmp_path, transport=transport)
        proxy = {**tcp_proxy("svc", local), "bandwidth_limit": RATE}
        client = await start_client(pierce, tmp_path, port, [proxy], transport=transport)
        public = await proxy_port(client, "svc")
        uploaded: list[float] = []  # when the service had read the whole upload
        service_got.add_done_callback(lambda _: uploaded.append(time.monotonic()))
        started = time.monotonic()
        got_down = await duplex_visit("127.0.0.1", public, up)
        down_s = time.monotonic() - started
        got_up = await asyncio.wait_for(service_got, 30)
        up_s = uploaded[0] - started
    assert got_down == (hashlib.sha256(down).hexdigest(), size)
    assert got_up == (hashlib.sha256(up).hexdigest(), size)
    rate = parse_rate(RATE)
    print(f"down {size / down_s / rate:.3f}x, up {size / up_s / rate:.3f}x of the limit")
    assert 0.9 * rate <= size / down_s <= 1.1 * rate, size / down_s / rate
    assert 0.9 * rate <= size / up_s <= 1.1 * rate, size / up_s / rate
