"""The STUN responder of a real ``pierce server`` is no reflector: per-source rate limit, RESPONSE-PORT only
when configured, small answers."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest
from support.stun import PRIMARY, exchange, stun_server, udp_socket
from support.tunnel import StartPierce

from pierce.nat import stun
from pierce.nat.stun import Attr, Class

#: README, "STUN responder": a plain 20-byte Binding request gets at most this many times its size.
PLAIN_REQUEST_FACTOR = 2.8


async def test_a_burst_from_one_source_gets_at_most_burst_plus_rate_answers(
    pierce: StartPierce, tmp_path: Path
) -> None:
    rate, burst, sent = 5, 20, 300
    port = await stun_server(pierce, tmp_path, stun_rate=rate, stun_burst=burst)
    loop = asyncio.get_running_loop()
    with udp_socket() as flood, udp_socket("127.0.0.3") as marker:
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        ids = set()
        started = loop.time()
        for _ in range(sent):
            request = stun.binding_request()
            ids.add(request.transaction_id)
            flood.sendto(stun.encode(request), (PRIMARY, port))
        # Another source, on the same server socket: once it is answered, every datagram of the burst
        # before it has been read and answered or dropped.
        await exchange(marker, stun.binding_request(), (PRIMARY, port))
        elapsed = loop.time() - started
        answered = 0
        while True:
            try:
                data = flood.recv(2048)
            except BlockingIOError:
                break
            answered += stun.decode(data).transaction_id in ids
    assert burst <= answered <= burst + rate * elapsed, (answered, elapsed)


async def test_response_port_is_refused_by_default(pierce: StartPierce, tmp_path: Path) -> None:
    """RFC 5780 section 5: 420 Unknown Attribute naming RESPONSE-PORT, sent to the request's own port."""
    port = await stun_server(pierce, tmp_path)
    with udp_socket() as asker, udp_socket() as elsewhere:
        request = stun.binding_request(response_port=elsewhere.getsockname()[1])
        reply = stun.decode(await exchange(asker, request, (PRIMARY, port)))
        assert reply.cls is Class.ERROR and reply.error_code is not None, reply
        assert reply.error_code.code == 420
        assert reply.get(Attr.UNKNOWN_ATTRIBUTES) == struct.pack("!H", Attr.RESPONSE_PORT)
        with pytest.raises(BlockingIOError):
            elsewhere.recv(2048)


async def test_response_port_is_honoured_when_configured(pierce: StartPierce, tmp_path: Path) -> None:
    port = await stun_server(pierce, tmp_path, stun_allow_response_port=True)
    with udp_socket() as asker, udp_socket() as elsewhere:
        request = stun.binding_request(response_port=elsewhere.getsockname()[1])
        data = await exchange(asker, request, (PRIMARY, port), receive=elsewhere)
        reply = stun.decode(data)
        assert reply.cls is Class.SUCCESS
        assert reply.xor_mapped_address == stun.Endpoint.of(asker.getsockname())
        with pytest.raises(BlockingIOError):
            asker.recv(2048)


async def test_a_plain_request_is_answered_within_the_documented_factor(
    pierce: StartPierce, tmp_path: Path
) -> None:
    port = await stun_server(pierce, tmp_path)
    with udp_socket() as sock:
        request = stun.binding_request()
        data = await exchange(sock, request, (PRIMARY, port), fingerprint=False)
        me = stun.Endpoint.of(sock.getsockname())
    size = len(stun.encode(request, fingerprint=False))
    assert size == 20
    assert len(data) <= PLAIN_REQUEST_FACTOR * size, len(data)
    reply = stun.decode(data)
    assert reply.xor_mapped_address == me
    assert reply.other_address is not None and reply.response_origin is not None
