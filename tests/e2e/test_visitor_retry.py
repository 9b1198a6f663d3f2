"""A visitor connection that comes while the proxy's owner is away waits for it (`pierce.client.revisit`),
with real `pierce server`, `pierce client` and `pierce visit` on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

from support.streams import echo, payload, tcp_server
from support.tunnel import start_client
from test_secret_proxies import echo_through, secret_proxy, serve_secret, visit, visitor_port

from pierce.client.revisit import MAX_REVISITS, REVISIT_WINDOW


async def test_a_connection_waits_for_an_owner_that_comes_back(pierce, tmp_path: Path) -> None:
    """The owner's client dies (SIGKILL) and starts again while an application's connection to the
    visitor waits: its bytes reach the service and come back whole. An owner that stays away turns
    the connection away within `REVISIT_WINDOW` seconds."""
    size = 300_000
    want = hashlib.sha256(payload(size, 7)).digest()
    async with tcp_server(echo) as local:
        proxies = [secret_proxy("stcp", "ssh", local)]
        server, port, owner = await serve_secret(pierce, tmp_path, proxies)
        visitor = await visit(pierce, port, "ssh")
        vport = await visitor_port(visitor)
        assert hashlib.sha256(await echo_through(vport, size, 7)).digest() == want

        owner.proc.kill()
        await owner.wait_exit()
        await server.wait_event("proxy.closed", lambda e: e["proxy"] == "ssh")
        waiting = asyncio.create_task(echo_through(vport, size, 7))
        (retry,) = await visitor.wait_event("visitor.retry")
        assert retry["reason"] == "no secret proxy named 'ssh' on this server", retry
        again = await start_client(pierce, tmp_path, port, proxies, name="owner")
        await again.wait_event("proxy.ready")
        back = await asyncio.wait_for(waiting, REVISIT_WINDOW + 5)
        assert hashlib.sha256(back).digest() == want
        assert not visitor.matching("visitor.refused")

        # Away for good: refused once the window is over, after a bounded number of visits.
        retries = len(visitor.matching("visitor.retry"))
        await again.stop()
        await server.wait_event("proxy.closed", lambda e: e["proxy"] == "ssh", count=2)
        started = time.monotonic()
        assert await asyncio.wait_for(echo_through(vport, 1000, 8), REVISIT_WINDOW + 5) == b""
        assert time.monotonic() - started < REVISIT_WINDOW + 2
        (refused,) = await visitor.wait_event("visitor.refused")
        assert refused["code"] == "unknown_proxy"
        assert 1 <= len(visitor.matching("visitor.retry")) - retries <= MAX_REVISITS
