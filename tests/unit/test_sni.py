"""ClientHello parsing and peeking: real hellos from Python's ssl and openssl, splits, hostile bytes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fuzz_targets import python_hello

from pierce.tls import ensure_server_certificate, server_context
from pierce.vhost.sni import (
    MAX_RECORD_PAYLOAD,
    RECORD_HEADER_SIZE,
    ClientHello,
    HelloIncomplete,
    HelloTimeout,
    HelloTooLarge,
    MalformedHello,
    NotTls,
    SniError,
    collect_hello,
    parse_client_hello,
    peek_client_hello,
)

# ---------------------------------------------------------------------------------------------------
# ClientHellos: real ones from the ssl module, and hand-built ones for what it cannot produce.


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def extension(kind: int, data: bytes) -> bytes:
    return u16(kind) + u16(len(data)) + data


def sni_extension(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(bytes([kind]) + u16(len(name)) + name for kind, name in names)
    return extension(0, u16(len(entries)) + entries)


def alpn_extension(*protocols: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protocols)
    return extension(16, u16(len(entries)) + entries)


def hello_body(extensions: bytes | None, *, suites: bytes = b"\x13\x01\x13\x02") -> bytes:
    body = b"\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32) + u16(len(suites)) + suites + b"\x01\x00"
    return body if extensions is None else body + u16(len(extensions)) + extensions


def records(message: bytes, size: int = MAX_RECORD_PAYLOAD) -> bytes:
    """Handshake bytes cut into TLS records of at most ``size`` bytes."""
    return b"".join(
        b"\x16\x03\x01" + u16(len(message[i : i + size])) + message[i : i + size]
        for i in range(0, len(message), size)
    )


def handshake(body: bytes, kind: int = 1) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def built_hello(extensions: bytes | None, size: int = MAX_RECORD_PAYLOAD) -> bytes:
    return records(handshake(hello_body(extensions)), size)


def handshake_of(wire: bytes) -> bytes:
    """The handshake bytes carried by a run of records."""
    out, pos = b"", 0
    while pos < len(wire):
        (size,) = struct.unpack("!H", wire[pos + 3 : pos + 5])
        out += wire[pos + 5 : pos + 5 + size]
        pos += 5 + size
    return out


def refragment(wire: bytes, size: int) -> bytes:
    return records(handshake_of(wire), size)


def post_quantum_hello() -> bytes:
    """A hello the size browsers send with hybrid post-quantum key shares, over three records."""
    shares = b"".join(
        u16(group) + u16(len(key)) + key
        for group, key in [(0x11EC, b"\x42" * 1216), (0x6399, b"\x43" * 1216), (0x001D, b"\x44" * 32)]
    )
    extensions = (
        sni_extension((0, b"pq.example.com"))
        + alpn_extension(b"h2", b"http/1.1")
        + extension(43, b"\x04\x03\x04\x03\x03")
        + extension(51, u16(len(shares)) + shares)
    )
    return built_hello(extensions, size=1000)


SNI_ALPN = python_hello("nas.example.com", ["h2", "http/1.1"])
PQ = post_quantum_hello()

# ---------------------------------------------------------------------------------------------------
# Pure parsing.


@pytest.mark.parametrize(
    ("server_name", "alpn", "expected_name", "expected_alpn"),
    [
        ("nas.example.com", None, "nas.example.com", ()),
        ("nas.example.com", ["h2", "http/1.1"], "nas.example.com", ("h2", "http/1.1")),
        (None, None, None, ()),
        (None, ["http/1.1"], None, ("http/1.1",)),
        ("127.0.0.1", None, None, ()),
    ],
)
def test_real_hellos_from_python_ssl(
    server_name: str | None,
    alpn: list[str] | None,
    expected_name: str | None,
    expected_alpn: tuple[str, ...],
) -> None:
    wire = python_hello(server_name, alpn)
    assert parse_client_hello(wire) == ClientHello(expected_name, expected_alpn, len(wire))


@pytest.mark.parametrize(
    "wire",
    [SNI_ALPN, refragment(SNI_ALPN, 1), refragment(SNI_ALPN, 3), refragment(SNI_ALPN, 64), PQ],
    ids=["one-record", "1-byte-records", "3-byte-records", "64-byte-records", "post-quantum-2.5k"],
)
def test_every_split_offset_needs_more_until_the_last_byte(wire: bytes) -> None:
    expected = parse_client_hello(wire)
    assert expected is not None
    assert expected.length == len(wire)
    for cut in range(len(wire)):
        prefix = wire[:cut]
        assert parse_client_hello(prefix) is None, cut
        body, needed = collect_hello(prefix)
        assert body is None
        assert cut < needed <= len(wire), cut
    assert parse_client_hello(wire + b"\x17\x03\x03\x00\x05early") == expected
    assert parse_client_hello(bytearray(wire)) == expected
    assert parse_client_hello(memoryview(wire)) == expected


def test_post_quantum_sized_hello() -> None:
    assert len(PQ) > 2500
    assert parse_client_hello(PQ) == ClientHello("pq.example.com", ("h2", "http/1.1"), len(PQ))


def test_hello_over_several_full_records() -> None:
    wire = built_hello(extension(21, bytes(40_000)) + sni_extension((0, b"big.example.com")))
    assert len(wire) > 2 * MAX_RECORD_PAYLOAD
    hello = parse_client_hello(wire)
    assert hello is not None
    assert hello.server_name == "big.example.com"


def test_limit_refuses_a_hello_as_soon_as_its_size_is_known() -> None:
    assert collect_hello(PQ[:5], limit=1005) == (None, 1005)
    with pytest.raises(HelloTooLarge, match="1005 bytes"):
        collect_hello(PQ[:5], limit=1004)
    with pytest.raises(HelloTooLarge, match="limit of 2048"):
        collect_hello(PQ[:1005], limit=2048)
    assert collect_hello(PQ, limit=len(PQ))[0] is not None


def test_hello_without_extensions() -> None:
    wire = built_hello(None)
    assert parse_client_hello(wire) == ClientHello(None, (), len(wire))


def test_other_name_types_are_skipped_and_bytes_kept() -> None:
    wire = built_hello(sni_extension((7, b"opaque"), (0, b"Nas.Example.com")) + alpn_extension(b"\xffx"))
    assert parse_client_hello(wire) == ClientHello("Nas.Example.com", ("\xffx",), len(wire))


@pytest.mark.parametrize(
    "data",
    [b"G", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"SSH-2.0-OpenSSH_9.2\r\n", b"\x16\x04", b"\x80\x2e\x01"],
)
def test_not_tls_is_told_from_the_first_bytes(data: bytes) -> None:
    with pytest.raises(NotTls):
        parse_client_hello(data)


def test_empty_input_needs_more() -> None:
    assert parse_client_hello(b"") is None
    assert collect_hello(b"") == (None, 5)


def malformed_cases() -> Iterator[tuple[str, bytes]]:
    good = handshake(hello_body(sni_extension((0, b"a.example.com"))))
    yield "empty record", b"\x16\x03\x01\x00\x00"
    yield "oversized record", b"\x16\x03\x01" + u16(MAX_RECORD_PAYLOAD + 1)
    yield "server hello", records(handshake(hello_body(None), kind=2))
    yield "alert after first record", records(good[:10]) + b"\x15\x03\x03\x00\x02\x02\x28"
    yield "not tls version in second record", records(good[:10]) + b"\x16\x02"
    yield "tiny hello", records(handshake(b"\x03\x03"))
    yield "bad hello version", records(handshake(b"\x02\x00" + hello_body(None)[2:]))
    yield "odd cipher suites", records(handshake(hello_body(None, suites=b"\x13")))
    yield "no cipher suites", records(handshake(hello_body(None, suites=b"")))
    yield "long session id", records(handshake(b"\x03\x03" + bytes(32) + b"\x21" + bytes(33) + b"\x00" * 8))
    yield "no compression", records(handshake(hello_body(None)[:-2] + b"\x00"))
    yield "truncated extension", records(handshake(hello_body(b"\x00\x00\x00\x09abc")))
    yield "bytes after extensions", records(handshake(hello_body(b"") + b"x"))
    yield "duplicate extension", records(handshake(hello_body(extension(5, b"") + extension(5, b""))))
    yield "two host names", built_hello(sni_extension((0, b"a.example"), (0, b"b.example")))
    yield "empty name list", built_hello(extension(0, u16(0)))
    yield "empty extension", built_hello(extension(0, b""))
    yield "junk after name list", built_hello(extension(0, u16(0) + b"x"))
    yield "empty host name", built_hello(sni_extension((0, b"")))
    yield "non-ascii host name", built_hello(sni_extension((0, "bü.example".encode())))
    yield "control character in name", built_hello(sni_extension((0, b"a\x00.example")))
    yield "empty alpn list", built_hello(extension(16, u16(0)))
    yield "empty alpn name", built_hello(alpn_extension(b"h2", b""))


@pytest.mark.parametrize(("case", "wire"), list(malformed_cases()), ids=[c for c, _ in malformed_cases()])
def test_malformed_hellos_are_refused(case: str, wire: bytes) -> None:
    with pytest.raises(MalformedHello):
        parse_client_hello(wire)


def test_errors_are_sni_errors() -> None:
    for cls in (NotTls, MalformedHello, HelloTooLarge, HelloIncomplete, HelloTimeout):
        assert issubclass(cls, SniError)


def check_only_sni_errors(data: bytes) -> None:
    try:
        result = parse_client_hello(data)
    except SniError:
        return
    assert result is None or isinstance(result, ClientHello)


@given(st.binary(max_size=600))
def test_random_bytes_raise_nothing_but_sni_errors(data: bytes) -> None:
    check_only_sni_errors(data)


@given(st.binary(max_size=600))
def test_random_handshake_bodies_raise_nothing_but_sni_errors(body: bytes) -> None:
    check_only_sni_errors(records(handshake(body)))
    check_only_sni_errors(records(handshake(hello_body(body))))


@given(st.lists(st.tuples(st.integers(0, len(SNI_ALPN) - 1), st.integers(0, 255)), min_size=1, max_size=4))
@settings(max_examples=300)
def test_mutated_real_hellos_raise_nothing_but_sni_errors(edits: list[tuple[int, int]]) -> None:
    wire = bytearray(SNI_ALPN)
    for index, value in edits:
        wire[index] = value
    check_only_sni_errors(bytes(wire))


# ---------------------------------------------------------------------------------------------------
# Peeking on real sockets.


class WatchedSocket(socket.socket):
    """A real socket that counts its reads and reports each SO_RCVLOWAT set on it."""

    def __init__(self, *, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self.reads = 0
        self.lowats: asyncio.Queue[int] = asyncio.Queue()

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0, flags: int = 0) -> int:  # type: ignore[override]
        self.reads += 1
        return super().recv_into(buffer, nbytes, flags)

    def setsockopt(self, level: int, option: int, value: int | bytes, *rest: int) -> None:  # type: ignore[override]
        super().setsockopt(level, option, value, *rest)
        if (level, option) == (socket.SOL_SOCKET, socket.SO_RCVLOWAT) and isinstance(value, int):
            self.lowats.put_nowait(value)

    async def next_lowat(self) -> int:
        async with asyncio.timeout(10):
            return await self.lowats.get()


def tcp_memory_pressure() -> bool:
    """The machine's TCP memory is past the kernel's low mark (``net.ipv4.tcp_mem``), where it may be
    under pressure: Linux then reports a socket readable below its SO_RCVLOWAT (a socket's receive memory
    nearly used up, or its window clamped to a segment), so a peek may wake before its bytes are there.
    Thousands of connections beside the test (a load benchmark) do that; a test run alone never does."""
    try:
        low = int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[0])
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) >= low
    except (OSError, ValueError, IndexError):
        pass
    return False


@contextlib.asynccontextmanager
async def connected_pair() -> AsyncIterator[tuple[WatchedSocket, socket.socket]]:
    """(accepted server side, client side) of a loopback TCP connection, both non-blocking."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        accepted, _ = await loop.sock_accept(listener)
    server = WatchedSocket(fileno=accepted.detach())
    server.setblocking(False)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def rcvlowat(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


async def test_hello_in_pieces_is_peeked_without_spinning_and_without_consuming() -> None:
    loop = asyncio.get_running_loop()
    wire = PQ
    after = b"application bytes after the hello"
    async with connected_pair() as (server, client):
        original = rcvlowat(server)
        peek = asyncio.create_task(peek_client_hello(server, timeout=10))
        await loop.sock_sendall(client, wire[:1])
        lowat = await server.next_lowat()
        assert lowat == RECORD_HEADER_SIZE
        sent = 1
        for end in [4, 5, 700, 1005, 1800, 2009]:
            await loop.sock_sendall(client, wire[sent:end])
            sent = end
            if end >= lowat:
                # Enough bytes for the next step: the peek wakes and asks for exactly what it needs next.
                lowat = await server.next_lowat()
                assert lowat == collect_hello(wire[:end])[1]
            else:
                # Not enough yet: the socket stays unreadable, so the peek does not even look (unless the
                # kernel itself says it is readable: under memory pressure it ignores SO_RCVLOWAT).
                reads = server.reads
                for _ in range(200):
                    await asyncio.sleep(0)
                if server.reads != reads and tcp_memory_pressure():
                    # The kernel woke it (see `tcp_memory_pressure`): it looked, backing off, and asked
                    # again for the same number of bytes.
                    assert server.reads - reads <= 20
                    while not server.lowats.empty():
                        assert server.lowats.get_nowait() == lowat
                else:
                    assert server.reads == reads
                assert server.lowats.empty()
            assert not peek.done()
        await loop.sock_sendall(client, wire[sent:] + after)
        async with asyncio.timeout(10):
            hello = await peek
        assert hello == ClientHello("pq.example.com", ("h2", "http/1.1"), len(wire))
        assert rcvlowat(server) == original
        received = b""
        async with asyncio.timeout(10):
            while len(received) < len(wire) + len(after):
                received += await loop.sock_recv(server, 65536)
        assert hashlib.sha256(received).digest() == hashlib.sha256(wire + after).digest()


async def test_peek_works_on_a_blocking_socket() -> None:
    loop = asyncio.get_running_loop()
    async with connected_pair() as (server, client):
        server.setblocking(True)
        peek = asyncio.create_task(peek_client_hello(server, timeout=10))
        await loop.sock_sendall(client, SNI_ALPN[:100])
        assert await server.next_lowat() == collect_hello(SNI_ALPN[:100])[1]
        await loop.sock_sendall(client, SNI_ALPN[100:])
        assert (await peek).server_name == "nas.example.com"
        server.setblocking(False)
        assert await loop.sock_recv(server, 2 * len(SNI_ALPN)) == SNI_ALPN


async def test_peer_closing_mid_hello_is_incomplete() -> None:
    loop = asyncio.get_running_loop()
    async with connected_pair() as (server, client):
        peek = asyncio.create_task(peek_client_hello(server, timeout=10))
        await loop.sock_sendall(client, SNI_ALPN[:50])
        client.shutdown(socket.SHUT_WR)
        with pytest.raises(HelloIncomplete, match="50 bytes"):
            await peek
        assert rcvlowat(server) == 1


async def test_peer_resetting_mid_hello_is_incomplete() -> None:
    loop = asyncio.get_running_loop()
    async with connected_pair() as (server, client):
        peek = asyncio.create_task(peek_client_hello(server, timeout=10))
        await loop.sock_sendall(client, SNI_ALPN[:50])
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        with pytest.raises(HelloIncomplete):
            await peek


async def test_peer_closing_before_any_byte_is_incomplete() -> None:
    async with connected_pair() as (server, client):
        peek = asyncio.create_task(peek_client_hello(server, timeout=10))
        client.shutdown(socket.SHUT_WR)
        with pytest.raises(HelloIncomplete, match="before sending anything"):
            await peek


async def test_slow_hello_times_out() -> None:
    loop = asyncio.get_running_loop()
    async with connected_pair() as (server, client):
        await loop.sock_sendall(client, SNI_ALPN[:30])
        with pytest.raises(HelloTimeout, match="30 bytes"):
            await peek_client_hello(server, timeout=0.2)
        assert rcvlowat(server) == 1


async def test_plain_http_is_not_tls() -> None:
    loop = asyncio.get_running_loop()
    async with connected_pair() as (server, client):
        await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: nas.example.com\r\n\r\n")
        with pytest.raises(NotTls):
            await peek_client_hello(server, timeout=10)


async def test_hello_beyond_the_limit_is_refused_before_it_arrives() -> None:
    loop = asyncio.get_running_loop()
    async with connected_pair() as (server, client):
        await loop.sock_sendall(client, PQ[:1005])
        with pytest.raises(HelloTooLarge, match="1024"):
            await peek_client_hello(server, timeout=10, limit=1024)


async def test_cancelling_a_peek_restores_the_socket() -> None:
    loop = asyncio.get_running_loop()
    async with connected_pair() as (server, client):
        peek = asyncio.create_task(peek_client_hello(server, timeout=10))
        await loop.sock_sendall(client, SNI_ALPN[:10])
        assert await server.next_lowat() == collect_hello(SNI_ALPN[:10])[1]
        peek.cancel()
        with pytest.raises(asyncio.CancelledError):
            await peek
        assert rcvlowat(server) == 1
        await loop.sock_sendall(client, SNI_ALPN[10:])
        assert (await peek_client_hello(server, timeout=10)).server_name == "nas.example.com"


# ---------------------------------------------------------------------------------------------------
# openssl s_client against a listener that peeks, then terminates TLS on the same socket.


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command-line tool")
@pytest.mark.parametrize(
    ("args", "expected_name", "expected_alpn"),
    [
        (["-servername", "nas.example.com", "-alpn", "h2,http/1.1"], "nas.example.com", ("h2", "http/1.1")),
        (["-servername", "ha.example.com"], "ha.example.com", ()),
        (["-noservername"], None, ()),
    ],
)
async def test_openssl_s_client_hello_is_peeked_then_tls_completes(
    tmp_path: Path, args: list[str], expected_name: str | None, expected_alpn: tuple[str, ...]
) -> None:
    loop = asyncio.get_running_loop()
    ctx = server_context(ensure_server_certificate(tmp_path / "state"))
    ctx.set_alpn_protocols(["http/1.1"])
    request = b"ping from s_client\n"
    peeked: asyncio.Future[ClientHello] = loop.create_future()
    served: asyncio.Future[bytes] = loop.create_future()

    async def serve(sock: socket.socket) -> None:
        hello = await peek_client_hello(sock, timeout=10)
        peeked.set_result(hello)
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, ssl=ctx)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            line = await reader.readline()
            served.set_result(line)
            writer.write(b"pong " + hashlib.sha256(line).hexdigest().encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-quiet",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(20):
                sock, _ = await loop.sock_accept(listener)
                serving = asyncio.create_task(serve(sock))
                out, err = await proc.communicate(request)
                await serving
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    hello = peeked.result()
    assert (hello.server_name, hello.alpn) == (expected_name, expected_alpn)
    assert served.result() == request
    assert out == b"pong " + hashlib.sha256(request).hexdigest().encode() + b"\n", err
