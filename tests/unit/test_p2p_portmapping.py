"""The owner's port mappings for its direct paths (`pierce.p2p.portmapping`), against the in-process
gateway of test_portmap_client: what is offered, what is deleted, and a router that maps nothing public is
not asked again. miniupnpd and the whole P2P path are tests/natlab/test_p2p_mapped.py's."""

from __future__ import annotations

import ipaddress

from test_portmap_client import Responder, gateway  # noqa: F401 (a fixture)

from pierce.config import PortMappingOptions
from pierce.nat.candidates import Candidate, CandidateKind
from pierce.p2p.portmapping import PathMappings
from pierce.portmap import natpmp, pcp

#: A public address (the in-process gateway's default is a documentation one, which is not).
PUBLIC = ipaddress.IPv4Address("11.0.0.1")


async def test_a_public_mapping_is_offered_and_deleted_when_closed(gateway: tuple[Responder, int]) -> None:  # noqa: F811
    responder, port = gateway
    responder.external = PUBLIC
    mappings = PathMappings(PortMappingOptions(gateway="127.0.0.1", method="pcp"), gateway_port=port)
    try:
        held = await mappings.request(5555, "svc")
        assert held is not None
        assert held.candidate == Candidate(CandidateKind.MAPPED, str(PUBLIC), 5555)
        asked = pcp.decode_request(responder.requests[-1])
        assert isinstance(asked, pcp.MapRequest)
        assert (asked.protocol, asked.internal_port, asked.lifetime) == (pcp.Protocol.UDP, 5555, 7200)
        await held.close()
        deleted = pcp.decode_request(responder.requests[-1])
        assert isinstance(deleted, pcp.MapRequest)
        assert (deleted.internal_port, deleted.lifetime, deleted.nonce) == (5555, 0, asked.nonce)
    finally:
        await mappings.close()


async def test_a_private_external_address_is_not_offered_nor_asked_for_again(
    gateway: tuple[Responder, int],  # noqa: F811
) -> None:
    """Another NAT beyond the router: its mapping is deleted at once, and the next attempt does not ask."""
    responder, port = gateway
    responder.natpmp_only = True
    responder.external = ipaddress.IPv4Address("10.1.2.3")
    mappings = PathMappings(PortMappingOptions(gateway="127.0.0.1", method="nat-pmp"), gateway_port=port)
    try:
        assert await mappings.request(5555, "svc") is None
        deletion = natpmp.decode_request(responder.requests[-1])
        assert deletion == natpmp.MapRequest(natpmp.Opcode.MAP_UDP, 5555, 5555, 0)
        sent = len(responder.requests)
        assert await mappings.request(5556, "svc") is None
        assert len(responder.requests) == sent
    finally:
        await mappings.close()
