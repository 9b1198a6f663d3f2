"""The server learns each P2P proxy's path from its visitors' results: what the dashboard shows per proxy
and per client (`pierce.server.proxies.registry.visitor_path`). One rendezvous runs over in-memory
channels."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pierce.protocol import P2pAnswer, P2pOffer, P2pRequest, P2pResult, P2pStart
from pierce.server.proxies.registry import visitor_path
from pierce.server.proxies.rendezvous import P2pCounters, serve_rendezvous
from pierce.server.proxies.secret import XtcpProxyServer
from pierce.snapshot import ConnectionPath
from pierce.transport import MemoryChannel, memory_pair

MAC = b"m" * 32


@dataclass
class Owner:
    channel: MemoryChannel
    client_id: str = "owner"
    user: str = "default"


async def rendezvous(proxy: XtcpProxyServer, owner_end: MemoryChannel, visit_id: str, path: str) -> None:
    """A visitor offers, the owner answers, the visitor reports ``path``."""
    visitor, server_end = memory_pair(("visitor", "server"))
    counters = P2pCounters()
    served = asyncio.ensure_future(
        serve_rendezvous(proxy, server_end, visit_id=visit_id, visitor="v", stun_port=0, counters=counters)
    )
    async with asyncio.timeout(5):
        await visitor.send(P2pOffer(offer=b"offer", mac=MAC))
        request = await owner_end.recv()
        assert isinstance(request, P2pRequest)
        proxy.p2p_answer(P2pAnswer(proxy=proxy.name, visit_id=visit_id, offer=b"answer", mac=MAC))
        assert isinstance(await visitor.recv(), P2pStart)
        assert isinstance(await owner_end.recv(), P2pStart)
        await visitor.send(P2pResult(path=path))
        await served
    assert counters.counts["attempts"] == 1


async def test_the_latest_visitor_result_is_the_proxy_path() -> None:
    owner_end, session_end = memory_pair(("owner", "session"))
    proxy = XtcpProxyServer("p2p", Owner(session_end))  # type: ignore[arg-type]
    assert proxy.path is visitor_path(proxy) is ConnectionPath.RELAY
    await rendezvous(proxy, owner_end, "visit-1", "direct udp")
    assert proxy.path is visitor_path(proxy) is ConnectionPath.DIRECT_UDP
    await rendezvous(proxy, owner_end, "visit-2", "relay")  # a later visitor fell back
    assert proxy.path is ConnectionPath.RELAY
