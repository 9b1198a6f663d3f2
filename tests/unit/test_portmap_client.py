"""The port mapping client's own behaviour against a responder in this process that answers with the
codecs: retransmission, the deadline, matching answers to requests, the fallback to NAT-PMP, restarts.

What a real router daemon (miniupnpd) does with the requests is the namespace lab's to test.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import cast

import msgspec
import pytest

from pierce.portmap import natpmp, pcp
from pierce.portmap.client import (
    Method,
    NoPortMapping,
    NoPublicAddress,
    PortMapClient,
    PortMapRefused,
    map_port,
)
from pierce.portmap.pcp import Protocol

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
EXTERNAL = ipaddress.IPv4Address("198.51.100.20")


class Responder(asyncio.DatagramProtocol):
    """A gateway on 127.0.0.1 that answers PCP and NAT-PMP (or only NAT-PMP, or nothing)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.drop = 0  # requests to ignore first
        self.silent = False
        self.natpmp_only = False
        self.result = 0
        self.epoch = 1000
        self.decoys: list[bytes] = []  # sent before each real answer
        self.twice = False  # every answer sent twice (a duplicated datagram)
        self.refuse_deletion = False
        #: NAT-PMP's external address request: this result (None: ``result``) and this address.
        self.address_result: int | None = None
        self.external = EXTERNAL
        #: Seconds to hold the answer to each request, in the order they come (then at once).
        self.delays: list[float] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.requests.append(data)
        if self.silent or len(self.requests) <= self.drop:
            return
        if self.delays:
            asyncio.get_running_loop().call_later(self.delays.pop(0), self.reply, data, addr)
            return
        self.reply(data, addr)

    def reply(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        for decoy in self.decoys:
            self.transport.sendto(decoy, addr)
        for _ in range(2 if self.twice else 1):
            self.transport.sendto(self.answer(data), addr)

    def answer(self, data: bytes) -> bytes:
        if data[0] == 0:
            request = natpmp.decode_request(data)
            if isinstance(request, natpmp.ExternalAddressRequest):
                result = self.result if self.address_result is None else self.address_result
                if result != natpmp.Result.SUCCESS:
                    return natpmp.encode_response(
                        natpmp.ErrorResponse(natpmp.Opcode.EXTERNAL_ADDRESS, result, self.epoch)
                    )
                return natpmp.encode_response(
                    natpmp.ExternalAddressResponse(result, self.epoch, self.external)
                )
            external = 0 if request.lifetime == 0 else request.external_port or request.internal_port
            return natpmp.encode_response(
                natpmp.MapResponse(
                    request.opcode, self.result, self.epoch, request.internal_port, external, request.lifetime
                )
            )
        if self.natpmp_only:  # what miniupnpd without PCP, or any RFC 6886 gateway, sends
            return natpmp.encode_response(
                natpmp.ErrorResponse(data[1] & 0x7F, natpmp.Result.UNSUPPORTED_VERSION, self.epoch)
            )
        request = pcp.decode_request(data)
        assert isinstance(request, pcp.MapRequest)
        answer = self.map_answer(request, request.nonce)
        if self.refuse_deletion and request.lifetime == 0:
            answer = msgspec.structs.replace(answer, result=pcp.Result.NOT_AUTHORIZED, lifetime=30)
        return pcp.encode_response(answer)

    def map_answer(self, request: pcp.MapRequest, nonce: bytes, port: int | None = None) -> pcp.MapResponse:
        external = port or request.external_port or request.internal_port
        return pcp.MapResponse(
            self.result,
            request.lifetime,
            self.epoch,
            nonce,
            request.protocol,
            request.internal_port,
            external,
            self.external,
        )


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Responder, int]]:
    loop = asyncio.get_running_loop()
    transport, responder = await loop.create_datagram_endpoint(Responder, local_addr=("127.0.0.1", 0))
    try:
        yield responder, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def client(port: int, **kwargs: float) -> PortMapClient:
    return PortMapClient(LOOPBACK, port=port, **kwargs)


async def test_pcp_mapping_survives_lost_requests(gateway: tuple[Responder, int]) -> None:
    responder, port = gateway
    responder.drop = 2
    async with client(port) as pm:
        mapping = await pm.map_port(Protocol.TCP, 8080, external_port=18080, lifetime=600)
    assert (mapping.method, mapping.external_ip, mapping.external_port) == (Method.PCP, EXTERNAL, 18080)
    assert (mapping.lifetime, mapping.epoch, mapping.restarted) == (600, 1000, False)
    # Three identical requests (the same nonce each time), the third answered.
    assert pm.sent == 3 and len(responder.requests) == 3 and len(set(responder.requests)) == 1
    assert pcp.decode_request(responder.requests[0]) == pcp.MapRequest(
        LOOPBACK, mapping.nonce, Protocol.TCP, 8080, 600, 18080
    )


async def test_answers_for_other_requests_are_ignored(gateway: tuple[Responder, int]) -> None:
    responder, port = gateway

    def decoys_for(data: bytes) -> list[bytes]:
        request = pcp.decode_request(data)
        assert isinstance(request, pcp.MapRequest)
        other_nonce = bytes(12) if request.nonce != bytes(12) else b"\x01" * 12
        other_port = pcp.MapRequest(request.client_ip, request.nonce, request.protocol, 9999, 600)
        return [
            pcp.encode_response(responder.map_answer(request, other_nonce, port=1111)),  # another nonce
            pcp.encode_response(responder.map_answer(other_port, request.nonce, port=2222)),  # another port
            b"\x02\x81garbage",
            natpmp.encode_response(natpmp.ExternalAddressResponse(0, 1, EXTERNAL)),  # NAT-PMP, no fallback
        ]

    original = responder.datagram_received

    def with_decoys(data: bytes, addr: tuple[str | int, ...]) -> None:
        responder.decoys = decoys_for(data)
        original(data, addr)

    responder.datagram_received = with_decoys  # type: ignore[method-assign]
    async with client(port) as pm:
        mapping = await pm.map_port(Protocol.UDP, 5000, external_port=15000, lifetime=60)
    assert (mapping.method, mapping.external_port) == (Method.PCP, 15000)
    assert pm.sent == 1


async def test_natpmp_only_gateway_gets_natpmp(gateway: tuple[Responder, int]) -> None:
    responder, port = gateway
    responder.natpmp_only = True
    async with client(port) as pm:
        mapping = await pm.map_port(Protocol.UDP, 5000, lifetime=60)
        assert pm.method is Method.NATPMP
        assert (mapping.method, mapping.external_ip, mapping.external_port) == (Method.NATPMP, EXTERNAL, 5000)
        address = await pm.external_address()
        assert address.ip == EXTERNAL
        await pm.delete(mapping)
    kinds = [(data[0], data[1]) for data in responder.requests]
    # PCP MAP (answered "unsupported version"), NAT-PMP MAP UDP, address, address, deletion: no more PCP.
    assert kinds == [(2, 1), (0, 1), (0, 0), (0, 0), (0, 1)]
    deletion = natpmp.decode_request(responder.requests[-1])
    assert deletion == natpmp.MapRequest(natpmp.Opcode.MAP_UDP, 5000, 5000, 0)


async def test_silent_gateway_gives_up_at_the_deadline(gateway: tuple[Responder, int]) -> None:
    responder, port = gateway
    responder.silent = True
    async with client(port, deadline=0.6, pcp_wait=0.2, rto=0.05) as pm:
        with pytest.raises(NoPortMapping, match="no port mapping protocol answered: PCP and NAT-PMP"):
            await pm.map_port(Protocol.TCP, 22, lifetime=60)
    versions = [data[0] for data in responder.requests]
    # Each protocol was retransmitted before the client gave up, PCP first.
    assert versions.count(2) >= 2 and versions.count(0) >= 2
    assert versions.index(0) > max(i for i, v in enumerate(versions) if v == 2)


async def test_no_daemon_is_known_at_once() -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    # A deadline far beyond the test's own timeout: only the ICMP "port unreachable" can end this.
    async with client(port, deadline=3600, pcp_wait=3600) as pm:
        with pytest.raises(NoPortMapping, match="refused"):
            await pm.map_port(Protocol.TCP, 22, lifetime=60)


async def test_refusal_carries_the_result_text(gateway: tuple[Responder, int]) -> None:
    responder, port = gateway
    responder.result = pcp.Result.NOT_AUTHORIZED
    async with client(port) as pm:
        with pytest.raises(PortMapRefused, match="not authorized") as caught:
            await pm.map_port(Protocol.TCP, 22, lifetime=60)
    assert caught.value.result == pcp.Result.NOT_AUTHORIZED and caught.value.method is Method.PCP


async def test_a_router_without_public_address_is_named_as_such(gateway: tuple[Responder, int]) -> None:
    """miniupnpd behind another NAT: PCP MAP "no resources", NAT-PMP's address request "network failure"."""
    responder, port = gateway
    responder.result, responder.address_result = pcp.Result.NO_RESOURCES, natpmp.Result.NETWORK_FAILURE
    async with client(port) as pm:
        with pytest.raises(NoPublicAddress, match="has no public external address: another NAT") as caught:
            await pm.map_port(Protocol.TCP, 7000, lifetime=60)
        assert "no resources" in str(caught.value) and "network failure" in str(caught.value)
        with pytest.raises(NoPublicAddress):
            await pm.external_address()


async def test_a_private_external_address_names_it(gateway: tuple[Responder, int]) -> None:
    responder, port = gateway
    responder.result, responder.address_result = pcp.Result.NO_RESOURCES, natpmp.Result.SUCCESS
    responder.external = ipaddress.IPv4Address("100.64.0.2")
    async with client(port) as pm:
        with pytest.raises(NoPublicAddress, match=r"its outside address 100\.64\.0\.2 is private or shared"):
            await pm.map_port(Protocol.TCP, 7000, lifetime=60)


async def test_no_resources_with_a_public_address_stays_what_it_is(gateway: tuple[Responder, int]) -> None:
    responder, port = gateway
    responder.result, responder.address_result = pcp.Result.NO_RESOURCES, natpmp.Result.SUCCESS
    responder.external = ipaddress.IPv4Address("11.0.0.1")
    async with client(port) as pm:
        with pytest.raises(PortMapRefused, match="no resources") as caught:
            await pm.map_port(Protocol.TCP, 7000, lifetime=60)
    assert not isinstance(caught.value, NoPublicAddress)


async def test_pcp_network_failure_alone_says_it(gateway: tuple[Responder, int]) -> None:
    """A PCP-only server (NAT-PMP's request goes unanswered as unsupported) refusing with network failure."""
    responder, port = gateway
    responder.result, responder.address_result = pcp.Result.NETWORK_FAILURE, natpmp.Result.UNSUPPORTED_VERSION
    async with client(port) as pm:
        with pytest.raises(NoPublicAddress, match=r"pcp: network failure"):
            await pm.map_port(Protocol.TCP, 7000, lifetime=60)


async def test_restart_is_seen_in_the_epoch_and_renewal_repeats_the_nonce(
    gateway: tuple[Responder, int],
) -> None:
    responder, port = gateway
    async with client(port) as pm:
        first = await pm.map_port(Protocol.TCP, 8080, lifetime=600)
        responder.epoch = 2  # the gateway restarted
        second = await pm.renew(first)
        assert second.restarted and not first.restarted
        assert second.nonce == first.nonce and second.external_port == first.external_port
        await pm.delete(second)
    deletion = pcp.decode_request(responder.requests[-1])
    assert isinstance(deletion, pcp.MapRequest)
    assert (deletion.nonce, deletion.lifetime, deletion.internal_port) == (first.nonce, 0, 8080)


async def test_a_late_duplicate_does_not_answer_the_deletion(gateway: tuple[Responder, int]) -> None:
    responder, port = gateway
    responder.twice = True
    responder.refuse_deletion = True
    async with client(port) as pm:
        mapping = await pm.map_port(Protocol.TCP, 8080, lifetime=600)
        # Copies of the mapping's answer (same nonce, same ports), one queued before the deletion is
        # sent and one arriving after it, are no answer to the deletion: the gateway's own, a refusal, is.
        responder.twice = False
        responder.decoys = [responder.answer(responder.requests[0])]
        with pytest.raises(PortMapRefused, match="not authorized"):
            await pm.delete(mapping)


async def test_one_shot_map_port(gateway: tuple[Responder, int]) -> None:
    _, port = gateway
    mapping = await map_port(
        Protocol.UDP, 4000, external_port=14000, gateway=LOOPBACK, port=port, lifetime=30
    )
    assert (mapping.method, mapping.external_ip, mapping.external_port) == (Method.PCP, EXTERNAL, 14000)
    assert (mapping.gateway, mapping.protocol, mapping.lifetime) == (LOOPBACK, Protocol.UDP, 30)


async def test_one_client_serves_concurrent_requests(gateway: tuple[Responder, int]) -> None:
    """Several tasks share one client (the owner's direct paths): every request gets its own answer the
    first time, none is read and dropped by another's exchange."""
    responder, port = gateway
    # Answers that would come back in the reverse order, were the requests all out at once; each well
    # within the first retransmission timeout (0.25 s), so a request that had its own answer read by
    # another exchange is the only reason to send one again.
    responder.delays = [0.02 * (8 - i) for i in range(8)]
    async with client(port, deadline=2.0) as pm:
        mappings = await asyncio.gather(*(pm.map_port(Protocol.UDP, 6000 + i, lifetime=60) for i in range(8)))
    assert [m.internal_port for m in mappings] == list(range(6000, 6008))
    assert pm.sent == 8
