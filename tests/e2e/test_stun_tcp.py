"""STUN over TCP on a real ``pierce server`` (RFC 8489 section 6.2.2): a Binding request on a TCP connection
gets the TCP peer's address; garbage, oversized and slow connections are closed; the server keeps serving
(UDP too); a taken TCP port leaves UDP STUN running."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

from support.stun import PRIMARY, exchange, free_port_pair, stun_server, udp_socket
from support.tunnel import StartPierce, start_server

from pierce.addr import HostPort
from pierce.nat import stun
from pierce.nat.stun import Attr, Class, Endpoint
from pierce.nat.stun_tcp import CONNECTION_DEADLINE, MAX_PER_SOURCE, MAX_REQUESTS
from pierce.p2p.tcp_direct import bind_reusable, tcp_reflexive

#: Seconds a test waits for the server to close a connection it must close at once.
PROMPT = 2.0


@contextlib.contextmanager
def tcp_socket(ip: str = PRIMARY) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind((ip, 0))
        yield sock
    finally:
        sock.close()


async def connect(sock: socket.socket, port: int) -> None:
    await asyncio.get_running_loop().sock_connect(sock, (PRIMARY, port))


async def binding(sock: socket.socket) -> stun.Message:
    """One Binding request on a connected socket and its answer."""
    loop = asyncio.get_running_loop()
    request = stun.binding_request()
    await loop.sock_sendall(sock, stun.encode(request))
    async with asyncio.timeout(5):
        head = await read_exactly(sock, stun.HEADER_SIZE)
        body = await read_exactly(sock, struct.unpack_from("!H", head, 2)[0])
    reply = stun.decode(head + body)
    assert reply.transaction_id == request.transaction_id
    return reply


async def read_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


async def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset), failing after ``seconds``."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.timeout(seconds):
        while True:
            try:
                if not await loop.sock_recv(sock, 4096):
                    break
            except ConnectionError:
                break
    return loop.time() - began


async def test_a_binding_over_tcp_gets_the_tcp_peer_address(pierce: StartPierce, tmp_path: Path) -> None:
    port = await stun_server(pierce, tmp_path)
    with tcp_socket() as sock:
        await connect(sock, port)
        for _ in range(MAX_REQUESTS):
            reply = await binding(sock)
            assert reply.cls is Class.SUCCESS
            assert reply.xor_mapped_address == Endpoint.of(sock.getsockname())
            assert reply.response_origin == Endpoint.of(sock.getpeername())
        # One request too many: the connection is closed instead.
        await asyncio.get_running_loop().sock_sendall(sock, stun.encode(stun.binding_request()))
        await closed_within(sock, PROMPT)


async def test_tcp_reflexive_from_a_fixed_port(pierce: StartPierce, tmp_path: Path) -> None:
    port = await stun_server(pierce, tmp_path)
    with bind_reusable("0.0.0.0") as probe:
        local_port = int(probe.getsockname()[1])
    mapped = await tcp_reflexive(HostPort(PRIMARY, port), local_port, timeout=5)
    assert mapped == (PRIMARY, local_port)


async def test_change_request_over_tcp_gets_400(pierce: StartPierce, tmp_path: Path) -> None:
    port = await stun_server(pierce, tmp_path)
    loop = asyncio.get_running_loop()
    with tcp_socket() as sock:
        await connect(sock, port)
        request = stun.binding_request(change_port=True)
        await loop.sock_sendall(sock, stun.encode(request))
        async with asyncio.timeout(5):
            head = await read_exactly(sock, stun.HEADER_SIZE)
            reply = stun.decode(head + await read_exactly(sock, struct.unpack_from("!H", head, 2)[0]))
        assert reply.cls is Class.ERROR and reply.error_code is not None and reply.error_code.code == 400
        assert reply.get(Attr.XOR_MAPPED_ADDRESS) is None


async def test_garbage_oversize_and_slow_connections_are_closed_and_the_server_keeps_serving(
    pierce: StartPierce, tmp_path: Path
) -> None:
    port = await stun_server(pierce, tmp_path)
    loop = asyncio.get_running_loop()
    oversize = struct.pack("!HHI12s", 0x0001, 4096, stun.MAGIC_COOKIE, bytes(12))
    with tcp_socket() as garbage, tcp_socket() as big, tcp_socket() as idle, tcp_socket() as slow:
        for sock in (garbage, big, idle, slow):
            await connect(sock, port)
        await loop.sock_sendall(garbage, b"G")  # "GET / HTTP/1.1": wrong from its first byte
        await loop.sock_sendall(big, oversize[:4])  # a length field past the limit
        await loop.sock_sendall(slow, stun.encode(stun.binding_request())[:10])  # never finished
        assert await closed_within(garbage, PROMPT) < PROMPT
        assert await closed_within(big, PROMPT) < PROMPT
        # Idle and half-sent connections: closed at the per-connection deadline (plus slack).
        assert await closed_within(idle, CONNECTION_DEADLINE + 2) >= CONNECTION_DEADLINE - PROMPT
        await closed_within(slow, 2)
    with tcp_socket() as sock:
        await connect(sock, port)
        assert (await binding(sock)).xor_mapped_address == Endpoint.of(sock.getsockname())
    with udp_socket() as sock:
        reply = stun.decode(await exchange(sock, stun.binding_request(), (PRIMARY, port)))
        assert reply.xor_mapped_address == Endpoint.of(sock.getsockname())


async def test_one_source_gets_a_few_connections_and_others_still_get_theirs(
    pierce: StartPierce, tmp_path: Path
) -> None:
    port = await stun_server(pierce, tmp_path)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(tcp_socket()) for _ in range(MAX_PER_SOURCE)]
        for sock in held:
            await connect(sock, port)
        # All of them accepted (answered) before one more is opened.
        for sock in held:
            await binding(sock)
        extra = stack.enter_context(tcp_socket())
        await connect(extra, port)
        assert await closed_within(extra, PROMPT) < PROMPT  # reset unread: over the per-source cap
        other = stack.enter_context(tcp_socket("127.0.0.3"))
        await connect(other, port)
        assert (await binding(other)).xor_mapped_address == Endpoint.of(other.getsockname())


async def test_a_taken_tcp_port_leaves_udp_stun_running(pierce: StartPierce, tmp_path: Path) -> None:
    port = free_port_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((PRIMARY, port))
        squatter.listen(1)
        proc, _ = await start_server(pierce, tmp_path, stun_port=port, bind_addr=PRIMARY)
        (warning,) = await proc.wait_event("stun.tcp_unavailable")
        assert f"{PRIMARY}:{port}" in warning["error"]
        (listening,) = await proc.wait_event("stun.listening")
        assert listening["listen"] is None
        with udp_socket() as sock:
            reply = stun.decode(await exchange(sock, stun.binding_request(), (PRIMARY, port)))
            assert reply.xor_mapped_address == Endpoint.of(sock.getsockname())
