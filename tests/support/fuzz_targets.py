"""The fuzz targets: every decoder that reads bytes from the network or a file, as one harness each.

A `Target` runs one input through its decoder (and what reads the decoded value next), lets the module's
own error types pass, and asserts the bounds the module documents (bytes buffered, sizes, counts) and
the properties any split of the input must keep. Anything else it raises is a crash. Both
``tests/unit/test_fuzz_decoders.py`` (hypothesis, bounded examples) and ``bench/fuzz.py`` (atheris, a
time budget) run these same harnesses, from the same seeds: valid inputs for structure-aware mutation.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import ipaddress
import json
import os
import random
import ssl
import struct
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pierce.errors import ConfigError

if TYPE_CHECKING:
    from pierce.nat.punch import PunchAgent
    from pierce.p2p.datagrams import DatagramEnd

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    name: str
    #: Runs one input; raises only ``expected`` errors (or returns).
    run: Callable[[bytes], object]
    #: The module's own, documented error types.
    expected: tuple[type[BaseException], ...]
    #: Valid inputs (built on first use): the seed corpus and what mutations start from.
    seeds: Callable[[], list[bytes]]
    #: Tokens for the fuzzer's dictionary (keys, keywords), if the format has any.
    tokens: tuple[bytes, ...] = field(default=())
    #: Builds a random well-typed-or-not document from a random source: structure-aware inputs for
    #: formats where flipped bytes mostly break the syntax (config files).
    structured: Callable[[random.Random], bytes] | None = None

    def check(self, data: bytes) -> None:
        """Run ``data``; a crash (an error other than ``expected``) propagates."""
        with contextlib.suppress(self.expected):
            self.run(data)


def _pieces(data: bytes, sizes: tuple[int, ...] = (1, 3, 7, 2, 16, 5)) -> list[bytes]:
    """``data`` cut into small pieces of varying sizes: what a reader may get from a socket."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[pos : pos + n])
        pos += n
        i += 1
    return out


# -- control-channel frames and messages -----------------------------------------------------------------


def _frames(data: bytes) -> None:
    from pierce.protocol.errors import ProtocolError
    from pierce.protocol.frames import HEADER_SIZE, MAX_FRAME_SIZE, PRE_AUTH_MAX_FRAME_SIZE, FrameDecoder
    from pierce.protocol.messages import NewProxy
    from pierce.proxies.registry import decode_spec

    outcomes = []
    for limit in (PRE_AUTH_MAX_FRAME_SIZE, MAX_FRAME_SIZE):
        for pieces in ([data], _pieces(data)):
            decoder = FrameDecoder(limit)
            got: list[object] = []
            try:
                for piece in pieces:
                    got += decoder.feed(piece)
                    # Nothing beyond one frame is held, and a huge length prefix is never buffered.
                    assert decoder.buffered < HEADER_SIZE + limit, (decoder.buffered, limit)
                    assert 1 <= decoder.wanted <= HEADER_SIZE + limit, (decoder.wanted, limit)
            except ProtocolError as exc:
                outcomes.append((limit, type(exc)))
                continue
            outcomes.append((limit, got))
            for msg in got:
                if isinstance(msg, NewProxy):
                    with contextlib.suppress(ProtocolError):
                        decode_spec(msg.spec)
    # However the bytes were split, the same messages come out, or the same error.
    assert outcomes[0] == outcomes[1] and outcomes[2] == outcomes[3], outcomes


def _frame_seeds() -> list[bytes]:
    from pierce.protocol import messages as m
    from pierce.protocol.frames import encode_frame
    from pierce.proxies.http import HttpSpec
    from pierce.proxies.registry import encode_spec
    from pierce.proxies.tcp import TcpSpec

    samples: list[m.Message] = [
        m.Hello(
            version=m.PROTOCOL_VERSION, features=frozenset({"udp", "mux"}), client_id="c", role=m.Role.CONTROL
        ),
        m.AuthResponse(proof=b"p" * 32, client_nonce=b"n" * 32),
        m.NewProxy(name="ssh", spec=encode_spec(TcpSpec(remote_port=6000))),
        m.NewProxy(name="web", spec=encode_spec(HttpSpec(custom_domains=["a.example"], locations=["/"]))),
        m.Visit(proxy="s", kind=m.SecretKind.STCP, pake=b"\x01" * 64),
        m.UdpPacket(proxy="dns", peer_host="2001:db8::1", peer_port=53, data=b"\x00\x01q"),
        m.StartWork(proxy="ssh", visitor_host="198.51.100.2", visitor_port=5),
        m.Ping(seq=3),
        m.ReqWorkConn(count=3),
        m.Error(code=m.ErrorCode.AUTH_FAILED, reason="no"),
        m.P2pStart(visit_id="ab" * 32, delay_ms=0, offer=b"o", mac=b"p" * 32),
    ]
    frames = [encode_frame(msg) for msg in samples]
    return [*frames, b"".join(frames[:4]), frames[7] + frames[2][:9]]


# -- data chunks -----------------------------------------------------------------------------------------


def _chunks(data: bytes) -> None:
    from pierce.protocol.chunks import CHUNK_HEADER_SIZE, ChunkDecoder
    from pierce.protocol.errors import ProtocolError

    for max_chunk in (64, 1024 * 1024):
        outcomes = []
        for mode in ("whole", "pieces", "reader"):
            decoder = ChunkDecoder(max_chunk)
            out = bytearray()
            try:
                if mode == "whole":
                    for piece in decoder.feed(data):
                        out += piece
                elif mode == "pieces":
                    for chunk in _pieces(data):
                        for piece in decoder.feed(chunk):
                            out += piece
                        assert decoder.left <= max_chunk
                else:
                    # A reader that asks for exactly `wanted` bytes and takes the header fast path.
                    pos = 0
                    while pos < len(data) and decoder.wanted:
                        take = data[pos : pos + decoder.wanted]
                        pos += len(take)
                        if decoder.in_header and len(take) == CHUNK_HEADER_SIZE:
                            decoder.header(take)
                        else:
                            for piece in decoder.feed(take):
                                out += piece
                        assert decoder.left <= max_chunk
                    if pos < len(data):
                        decoder.feed(data[pos:])  # bytes after the end marker: an error
            except ProtocolError:
                outcomes.append(None)
                continue
            outcomes.append((bytes(out), decoder.ended, decoder.left, decoder.at_boundary))
        assert outcomes[0] == outcomes[1] == outcomes[2], outcomes


def _chunk_seeds() -> list[bytes]:
    from pierce.protocol.chunks import END_OF_DATA, chunk

    return [
        b"".join(chunk(b"hello")) + END_OF_DATA,
        b"".join(bytes(p) for p in chunk(b"x" * 40)) + b"".join(chunk(b"y")),
        END_OF_DATA,
        b"\x00\x00\x00\x05abc",
    ]


# -- STUN --------------------------------------------------------------------------------------------------


def _stun(data: bytes) -> None:
    from pierce.nat import stun, stun_server, stun_tcp
    from pierce.nat.stun import Endpoint, StunParseError

    try:
        msg = stun.decode(data)
    except StunParseError:
        msg = None
    if msg is not None:
        for name in (
            "xor_mapped_address",
            "mapped_address",
            "reflexive_address",
            "response_origin",
            "other_address",
            "change_request",
            "response_port",
            "error_code",
            "software",
        ):
            with contextlib.suppress(StunParseError):
                getattr(msg, name)
        msg.unknown_required(stun.Attr)
        stun.check_integrity(data, b"key")
    # What the UDP responder sends back: never more than MAX_AMPLIFICATION times what came in.
    for source, local in (
        (Endpoint(ipaddress.ip_address("198.51.100.7"), 4000), ipaddress.ip_address("203.0.113.1")),
        (Endpoint(ipaddress.ip_address("2001:db8::7"), 4000), ipaddress.ip_address("2001:db8::1")),
    ):
        alternate = ipaddress.ip_address("203.0.113.2" if local.version == 4 else "2001:db8::2")
        for layout in (stun_server.Layout(local, 3478), stun_server.Layout(local, 3478, alternate)):
            try:
                reply = stun_server.answer(
                    data, source, (0, 0), local, layout, lambda local=local: local, allow_response_port=True
                )
            except StunParseError:
                continue
            if reply is not None:
                ratio = len(reply.data) / len(data)
                assert ratio <= stun_server.MAX_AMPLIFICATION[source.ip.version] + 1e-9, (ratio, reply)
    # STUN over TCP: the header checked as it arrives, then the answer.
    length = None
    for end in range(1, min(len(data), stun.HEADER_SIZE) + 1):
        try:
            length = stun_tcp.check_header(data[:end])
        except StunParseError:
            return
    if length is not None:
        assert length <= stun_tcp.MAX_MESSAGE
        if len(data) >= length:
            with contextlib.suppress(StunParseError):
                stun_tcp.answer_tcp(data[:length], source, Endpoint(local, 3478))


def _stun_seeds() -> list[bytes]:
    from pierce.nat import stun
    from pierce.nat.stun import Endpoint

    tid = b"t" * 12
    request = stun.binding_request(tid, software="pierce")
    mapped = Endpoint(ipaddress.ip_address("198.51.100.7"), 4000)
    origin = Endpoint(ipaddress.ip_address("203.0.113.1"), 3478)
    classic = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, tid, (), 0x01020304)
    return [
        stun.encode(request),
        stun.encode(stun.binding_request(tid), fingerprint=False),
        stun.encode(stun.binding_request(tid, change_ip=True, change_port=True)),
        stun.encode(stun.binding_request(tid, response_port=5000), fingerprint=False),
        stun.encode(stun.binding_success(request, mapped, origin=origin, other=origin, software="s")),
        stun.encode(stun.binding_error(request, 420, "Unknown", unknown=[0x7777])),
        stun.encode(classic, fingerprint=False),
        stun.encode(stun.binding_success(classic, mapped, origin=origin, other=origin), fingerprint=False),
    ]


# -- HTTP heads ----------------------------------------------------------------------------------------


def _http(data: bytes) -> None:
    from pierce.vhost.http_parse import Head, Malformed, MessageParser, declares_body, split_absolute_form

    max_size, max_count = 512, 8
    for request in (True, False):
        for pieces in ([data], _pieces(data)):
            parser = MessageParser(request=request, max_size=max_size, max_count=max_count)
            parser.skip_body = not request and len(data) % 2 == 1
            try:
                for piece in pieces:
                    parser.feed(piece)
                    parser.rest = b""
            except Malformed:
                pass
            for event in parser.events:
                if isinstance(event, Head):
                    size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                    assert len(event.headers) <= max_count and size <= max_size, event
                    declares_body(event)
                    split_absolute_form(event.target)


def _http_seeds() -> list[bytes]:
    return [
        b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"POST /up?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        b"GET http://a.example:81/p?q HTTP/1.1\r\nHost: b\r\nHost: c\r\nAuthorization: Basic eDp5\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nbody until close",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw",
    ]


_HTTP_TOKENS = (
    b"GET ", b"POST ", b"CONNECT ", b" HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"\r\n", b"\r\n\r\n", b"Host: ",
    b"Content-Length: ", b"Transfer-Encoding: chunked\r\n", b"Connection: Upgrade\r\n", b"Upgrade: ",
    b"Authorization: Basic ", b"0\r\n\r\n",
)  # fmt: skip


# -- TLS ClientHello -----------------------------------------------------------------------------------


def _sni(data: bytes) -> None:
    from pierce.vhost.sni import SniError, collect_hello, parse_client_hello

    limit = 4096
    try:
        body, needed = collect_hello(data, limit)
    except SniError:
        pass
    else:
        # A reader that peeks at most `limit` bytes is never asked for more.
        assert body is not None or needed <= limit, needed
    hello = parse_client_hello(data)
    if hello is not None:
        assert hello.length <= len(data)
        assert parse_client_hello(data[: hello.length]) == hello
        # One byte short is "need more", not an error the whole hello does not give.
        assert parse_client_hello(data[: hello.length - 1]) is None


def python_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight of a real TLS client (OpenSSL through Python's ssl), caught in a MemoryBIO."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("the TLS client finished a handshake without a server")


@functools.cache
def _client_hellos() -> tuple[bytes, ...]:
    out = []
    for server_name, alpn in (
        ("a.example", ["h2", "http/1.1"]),
        (None, []),
        (".".join(["x" * 60] * 3), ["acme-tls/1"]),
    ):
        out.append(python_hello(server_name, alpn))
    # One hello split over two records.
    first = out[0]
    body = first[5:]
    half = len(body) // 2
    out.append(
        first[:3]
        + struct.pack("!H", half)
        + body[:half]
        + first[:3]
        + struct.pack("!H", len(body) - half)
        + body[half:]
    )
    return tuple(out)


# -- PROXY protocol ------------------------------------------------------------------------------------


def _proxy_protocol(data: bytes) -> None:
    from pierce.proxy_protocol import V1_MAX_LENGTH, V2_HEADER_SIZE, ProxyProtocolError, parse

    result = parse(data)
    if result is None:
        return
    header, n = result
    assert 0 < n <= len(data)
    assert n <= (V1_MAX_LENGTH if header.version == 1 else V2_HEADER_SIZE + 0xFFFF), n
    assert parse(data[:n]) == result
    try:
        assert parse(data[: n - 1]) is None
    except ProxyProtocolError:
        raise AssertionError("a prefix of a valid header is refused") from None


def _proxy_protocol_seeds() -> list[bytes]:
    from pierce.proxy_protocol import TlvType, build_v1, build_v2

    v4 = (("198.51.100.7", 4711), ("203.0.113.1", 443))
    v6 = (("2001:db8::7", 4711, 0, 0), ("2001:db8::1", 443, 0, 0))
    return [
        build_v1(*v4) + b"GET /",
        build_v1(*v6),
        build_v1(None, None),
        build_v2(*v4),
        build_v2(*v6, tlvs=[(TlvType.AUTHORITY, b"a.example"), (TlvType.NOOP, b"")]),
        build_v2(None, None),
    ]


# -- NAT-PMP and PCP -----------------------------------------------------------------------------------


def _natpmp(data: bytes) -> None:
    from pierce.portmap import natpmp

    for decode, encode in (
        (natpmp.decode_request, natpmp.encode_request),
        (natpmp.decode_response, natpmp.encode_response),
    ):
        try:
            message = decode(data)
        except natpmp.NatPmpParseError:
            continue
        # What decodes encodes again, to the same message.
        assert decode(encode(message)) == message, message  # type: ignore[arg-type]


def _natpmp_seeds() -> list[bytes]:
    from pierce.portmap import natpmp

    return [
        natpmp.encode_request(natpmp.ExternalAddressRequest()),
        natpmp.encode_request(natpmp.MapRequest(natpmp.Opcode.MAP_TCP, 22, 2222, 7200)),
        natpmp.encode_response(
            natpmp.ExternalAddressResponse(natpmp.Result.SUCCESS, 77, ipaddress.IPv4Address("198.51.100.1"))
        ),
        natpmp.encode_response(
            natpmp.MapResponse(natpmp.Opcode.MAP_UDP, natpmp.Result.SUCCESS, 9, 53, 5353, 60)
        ),
        natpmp.encode_response(natpmp.ErrorResponse(5, natpmp.Result.UNSUPPORTED_OPCODE, 9)),
    ]


def _pcp(data: bytes) -> None:
    from pierce.portmap import pcp

    for decode, encode in (
        (pcp.decode_request, pcp.encode_request),
        (pcp.decode_response, pcp.encode_response),
    ):
        try:
            message = decode(data)
        except pcp.PcpParseError:
            continue
        assert decode(encode(message)) == message, message  # type: ignore[arg-type]


def _pcp_seeds() -> list[bytes]:
    from pierce.portmap import pcp

    client = ipaddress.ip_address("192.168.1.10")
    nonce = b"n" * pcp.NONCE_SIZE
    third = pcp.Option(pcp.OptionCode.THIRD_PARTY, pcp.encode_address(client))
    return [
        pcp.encode_request(pcp.AnnounceRequest(client)),
        pcp.encode_request(pcp.MapRequest(client, nonce, 6, 22, 7200, 2222, options=(third,))),
        pcp.encode_request(
            pcp.MapRequest(client, nonce, 17, 53, 0, options=(pcp.Option(pcp.OptionCode.PREFER_FAILURE),))
        ),
        pcp.encode_response(pcp.AnnounceResponse(pcp.Result.SUCCESS, 0, 5)),
        pcp.encode_response(
            pcp.MapResponse(
                pcp.Result.SUCCESS, 7200, 5, nonce, 6, 22, 2222, ipaddress.ip_address("198.51.100.1")
            )
        ),
        pcp.encode_response(pcp.ErrorResponse(1, pcp.Result.UNSUPP_VERSION, 0, 5, version=1)),
        pcp.encode_response(pcp.ErrorResponse(1, pcp.Result.NOT_AUTHORIZED, 30, 5)),
    ]


# -- P2P offers ----------------------------------------------------------------------------------------

_P2P_KEY = b"k" * 32


def _p2p_offer(data: bytes) -> None:
    from pierce.p2p.gather import offered
    from pierce.protocol.auth import p2p_offer_mac
    from pierce.protocol.p2p import MAX_CANDIDATES, MAX_MAPPED, MAX_OFFER_SIZE, BadOffer, open_offer

    # A forged MAC is refused before anything is decoded.
    try:
        open_offer(data, b"\x00" * 32, _P2P_KEY, owner=True)
        raise AssertionError("an offer with a forged MAC was opened")
    except BadOffer:
        pass
    # The peer holds the key: what it seals is decoded, and must be safe to act on.
    offer = open_offer(data, p2p_offer_mac(_P2P_KEY, owner=False, offer=data), _P2P_KEY, owner=False)
    assert len(data) <= MAX_OFFER_SIZE
    assert len(offer.candidates) <= MAX_CANDIDATES and len(offer.mapped) <= MAX_MAPPED
    for proto in ("udp", "tcp"):
        for candidate in offered(offer, proto):
            ipaddress.ip_address(candidate.host)
            assert 1 <= candidate.port <= 65535


def _p2p_offer_seeds() -> list[bytes]:
    from pierce.protocol.p2p import Offer, WireCandidate, seal

    offers = [
        Offer(candidates=[WireCandidate("host", "udp", "192.168.1.5", 4000)], mapping="endpoint-independent"),
        Offer(
            candidates=[
                WireCandidate("srflx", "udp", "198.51.100.7", 4000, 100),
                WireCandidate("host", "tcp", "2001:db8::5", 4001),
            ],
            mapped=[WireCandidate("mapped", "udp", "198.51.100.7", 4000)],
            fingerprint=b"f" * 32,
            want="tcp",
            encrypt=False,
        ),
        Offer(candidates=[]),
    ]
    return [seal(offer, _P2P_KEY, owner=False)[0] for offer in offers]


# -- mux frames --------------------------------------------------------------------------------------------


def _mux(data: bytes) -> None:
    from pierce.protocol.errors import ProtocolError
    from pierce.protocol.mux import HEADER_SIZE, INITIAL_WINDOW, MAX_FRAME, MuxState, StreamData

    for initiator in (False, True):
        state = MuxState(initiator=initiator, max_streams=4)
        pos = 0
        try:
            while len(data) - pos >= HEADER_SIZE:
                header = data[pos : pos + HEADER_SIZE]
                _, _, _, length = state.header(header)  # checked before its bytes are read
                assert length <= MAX_FRAME
                payload = data[pos + HEADER_SIZE : pos + HEADER_SIZE + length]
                if len(payload) < length:
                    break
                pos += HEADER_SIZE + length
                for event in state.receive(header, payload):
                    if isinstance(event, StreamData) and event.stream % 3:
                        state.consumed(event.stream, len(event.data))
                state.take_refusals()
                assert state._peer_open <= state.max_streams
                for stream in list(state._streams.values()):
                    assert 0 <= stream.unread <= INITIAL_WINDOW and stream.send_window < 2**31
        except ProtocolError:
            pass


def _mux_seeds() -> list[bytes]:
    from pierce.protocol.mux import MuxState

    dialler = MuxState(initiator=True)
    stream, opened = dialler.open_frame()
    second, opened2 = dialler.open_frame()
    return [
        opened + dialler.data_frame(stream, b"hello") + dialler.data_frame(stream, b"", fin=True),
        opened + opened2 + dialler.data_frame(second, b"x" * 40, fin=True) + dialler.reset_frame(stream),
        dialler.ping_frame(b"12345678") + dialler.goaway_frame(1, "bye"),
        b"\x02\x00\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x10\x00",
    ]


# -- hole-punch packets ----------------------------------------------------------------------------------

_PUNCH_KEY = bytes(range(32))
_PUNCH_SID = b"session-0123456"
#: What the harness's agents run with: few answers queued, so a burst of requests reaches the cap.
_PUNCH_MAX_ANSWERS = 4


def _punch_agent(controlling: bool) -> PunchAgent:
    from pierce.nat.candidates import Candidate, CandidateKind
    from pierce.nat.punch import PunchAgent, PunchSettings, Role

    local = [
        Candidate(CandidateKind.HOST, "10.0.0.2", 4000),
        Candidate(CandidateKind.HOST, "2001:db8::2", 4000, 1),
    ]
    remote = [
        Candidate(CandidateKind.SRFLX, "198.51.100.7", 5000),
        Candidate(CandidateKind.HOST, "2001:db8::7", 5000),
    ]
    return PunchAgent(
        Role.CONTROLLING if controlling else Role.CONTROLLED,
        _PUNCH_SID,
        _PUNCH_KEY,
        local,
        remote,
        0.0,
        start_at=0.0,
        settings=PunchSettings(max_answers=_PUNCH_MAX_ANSWERS),
        rng=random.Random(0),
    )


def _punch_sealed(data: bytes) -> bytes:
    """``data`` with the MAC the key holder would put on it: what gets past the MAC check to the rest."""
    from pierce.nat.punch_wire import MAC_SIZE

    body = data[:-MAC_SIZE] if len(data) > MAC_SIZE else data
    return body + hmac.digest(_PUNCH_KEY, body, "sha256")[:MAC_SIZE]


def _punch_packets(data: bytes) -> list[bytes]:
    """``data`` cut where each packet's session id length says it ends: a run of datagrams."""
    from pierce.nat.punch_wire import OVERHEAD

    out, pos = [], 0
    while pos < len(data):
        n = OVERHEAD + (data[pos + 7] if pos + 7 < len(data) else 0)
        out.append(data[pos : pos + n])
        pos += n
    return out


def _punch(data: bytes) -> None:
    from pierce.nat.punch import Outgoing
    from pierce.nat.punch_wire import Kind, PunchWireError, decode, encode, is_punch_packet

    for datagram in (data, _punch_sealed(data)):
        for session_id in (None, _PUNCH_SID):
            try:
                packet = decode(datagram, _PUNCH_KEY, session_id)
            except PunchWireError:
                continue
            # What decodes is ours by the demux rule, and has one encoding (no other bytes authenticate).
            assert is_punch_packet(datagram)
            assert encode(packet, _PUNCH_KEY) == datagram, packet
    # What reads them next: an agent of each role, mid-attempt (its first probes out), fed the packets
    # as a run of datagrams, each as it came and sealed. It only drops or answers; what it sends is valid.
    packets = [p for piece in _punch_packets(data) for p in (piece, _punch_sealed(piece))]
    for controlling in (True, False):
        agent = _punch_agent(controlling)
        sent: list[Outgoing] = agent.datagrams_to_send(0.3)
        for i, datagram in enumerate(packets):
            source = ("198.51.100.7", 5000) if i % 4 < 2 else ("2001:db8::7", 5000 + i)
            agent.receive(datagram, source, 0.3 + i / 1000, socket_id=i % 3)
        sent += agent.datagrams_to_send(1.0)
        answers = 0
        for out in sent:
            packet = decode(out.data, _PUNCH_KEY, _PUNCH_SID)
            assert packet.controlling == controlling, out
            answers += packet.kind is Kind.ANSWER
        assert answers <= _PUNCH_MAX_ANSWERS, answers
        agent.pop_events()


def _punch_seeds() -> list[bytes]:
    from pierce.nat.punch_wire import Kind, PunchPacket, decode, encode

    def packet(kind: Kind, controlling: bool, txid: int, sid: bytes = _PUNCH_SID) -> bytes:
        return encode(PunchPacket(kind, controlling, sid, txid), _PUNCH_KEY)

    # Answers to the first requests each agent sends, so the answer paths are reachable.
    answers = []
    for controlling in (True, False):
        agent = _punch_agent(controlling)
        for out in agent.datagrams_to_send(0.3)[:2]:
            txid = decode(out.data, _PUNCH_KEY, _PUNCH_SID).txid
            answers.append(packet(Kind.ANSWER, not controlling, txid))
    return [
        packet(Kind.PROBE, True, 1),
        packet(Kind.PROBE, False, 2**64 - 1, b"s"),
        packet(Kind.NOMINATE, True, 7, b"x" * 32),
        packet(Kind.KEEPALIVE, False, 9),
        *answers,
        packet(Kind.PROBE, False, 1) + packet(Kind.NOMINATE, False, 2) + packet(Kind.KEEPALIVE, False, 3),
        packet(Kind.PROBE, True, 1) + answers[0] + packet(Kind.KEEPALIVE, True, 5),
        packet(Kind.PROBE, False, 1) * 3 + packet(Kind.PROBE, False, 4) * 6,
    ]


_PUNCH_TOKENS = (b"\x0cpun", b"\x0cpun\x01\x01\x01\x0f", b"\x0cpun\x01\x02\x00\x0f", _PUNCH_SID)


# -- P2P datagrams (xudp) -----------------------------------------------------------------------------


class DatagramPathStub:
    """What a `DatagramEnd` asks of its QUIC path: DATAGRAM frames that always fit and are kept here."""

    def __init__(self) -> None:
        import asyncio

        from pierce.protocol.frames import HEADER_SIZE, MAX_FRAME_SIZE

        self.closed = asyncio.Event()
        self.max_datagram_payload = HEADER_SIZE + MAX_FRAME_SIZE
        self.sent: list[bytes] = []

    def send_datagram(self, data: bytes) -> bool:
        self.sent.append(data)
        return True


_T = TypeVar("_T")


def _at_once(coro: Coroutine[Any, Any, _T]) -> _T:
    """The result of a coroutine that must finish without waiting (a `DatagramEnd` with data queued)."""
    try:
        coro.send(None)
    except StopIteration as done:
        value: _T = done.value
        return value
    coro.close()
    raise AssertionError("the coroutine waited")


def _whole_frames(data: bytes) -> list[bytes]:
    """``data`` as length-prefixed frames; AssertionError when it does not end on a frame's end."""
    frames, pos = [], 0
    while pos < len(data):
        end = pos + 4 + int.from_bytes(data[pos : pos + 4], "big")
        assert len(data) >= pos + 4 and end <= len(data), ("a partial frame read", data[pos : pos + 16])
        frames.append(data[pos:end])
        pos = end
    return frames


def read_queued(end: DatagramEnd) -> bytes:
    """Everything a `DatagramEnd` has queued, as the tunnel reads it."""
    out = bytearray()
    while end._queue:
        out += _at_once(end.read(64 * 1024))
    return bytes(out)


def _datagrams(data: bytes) -> None:
    from pierce.p2p.datagrams import EMPTY_FRAME, MAX_QUEUED, DatagramEnd, FrameSplitter
    from pierce.protocol.errors import ProtocolError
    from pierce.protocol.frames import HEADER_SIZE, MAX_FRAME_SIZE

    # The datagram stream: whole or in pieces, the same whole frames, in order, or the same error.
    outcomes: list[object] = []
    for pieces in ([data], _pieces(data)):
        splitter = FrameSplitter()
        got: list[bytes] = []
        try:
            for piece in pieces:
                got += splitter.feed(piece)
                assert len(splitter._buffer) < HEADER_SIZE + MAX_FRAME_SIZE
        except ProtocolError as exc:
            outcomes.append(type(exc))
            continue
        assert b"".join(got) == data[: sum(map(len, got))]
        assert _whole_frames(b"".join(got)) == got
        outcomes.append(got)
    assert outcomes[0] == outcomes[1], outcomes
    # DATAGRAM frames as the peer sent them (the pieces, then the whole input): read back as whole frames
    # only (the tunnel's decoder would otherwise take the next datagram as the rest of a cut one).
    end = DatagramEnd(DatagramPathStub())  # type: ignore[arg-type]
    datagrams = [*_pieces(data), data]
    for datagram in datagrams:
        end.deliver(datagram)
    assert len(end._queue) <= MAX_QUEUED
    _whole_frames(read_queued(end))
    # What one end writes, the other reads: the same frames (but empty ones), one DATAGRAM frame each.
    path = DatagramPathStub()
    sender, receiver = DatagramEnd(path), DatagramEnd(DatagramPathStub())  # type: ignore[arg-type]
    with contextlib.suppress(ProtocolError):
        _at_once(sender.write(data))
    if isinstance(outcomes[0], list):
        assert path.sent == [f for f in outcomes[0] if f != EMPTY_FRAME]
    for datagram in path.sent[:MAX_QUEUED]:
        receiver.deliver(datagram)
    assert read_queued(receiver) == b"".join(path.sent[:MAX_QUEUED])


def _datagram_seeds() -> list[bytes]:
    from pierce.p2p.datagrams import EMPTY_FRAME
    from pierce.protocol.frames import encode_frame
    from pierce.protocol.messages import UdpPacket

    frames = [
        encode_frame(UdpPacket(proxy="dns", peer_host="198.51.100.2", peer_port=53, data=b"\x00\x01q")),
        encode_frame(UdpPacket(proxy="game", peer_host="2001:db8::1", peer_port=27015, data=b"x" * 300)),
        encode_frame(UdpPacket(proxy="dns", peer_host="10.0.0.1", peer_port=5353, data=b"")),
    ]
    return [*frames, b"".join(frames), EMPTY_FRAME + frames[0], frames[1] + frames[0][:7]]


# -- config files and import-frp -----------------------------------------------------------------------


@functools.cache
def _scratch() -> Path:
    """A private directory for the files the file-reading targets need (one process, reused)."""
    base = Path(os.environ.get("PIERCE_FUZZ_TMP") or tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="pierce-fuzz-", dir=base))


def _config(data: bytes) -> None:
    from pierce import config

    path = _scratch() / "fuzz.toml"
    path.write_bytes(data)
    for kind in (config.ServerConfig, config.ClientConfig, config.MapConfig):
        with contextlib.suppress(ConfigError):
            config.load(path, kind)
    with contextlib.suppress(ConfigError):
        config.read_key(path, config.ClientConfig, "server_addr")


def _config_seeds() -> list[bytes]:
    paths = [
        *sorted((ROOT / "examples").glob("*.toml")),
        *sorted((ROOT / "tests/unit/invalid").glob("*.toml")),
    ]
    return [p.read_bytes() for p in paths]


@functools.cache
def _config_keys() -> tuple[bytes, ...]:
    import msgspec

    from pierce import config

    keys: set[str] = set()
    todo: list[type[msgspec.Struct]] = [config.ServerConfig, config.ClientConfig, config.MapConfig]
    seen: set[type] = set()
    while todo:
        kind = todo.pop()
        if kind in seen:
            continue
        seen.add(kind)
        for f in msgspec.structs.fields(kind):
            keys.add(f.encode_name)
            for sub in _structs_in(f.type):
                todo.append(sub)
        tag = kind.__struct_config__.tag
        if isinstance(tag, str):
            keys.add(tag)
    return tuple(sorted(k.encode() for k in keys))


def _structs_in(hint: object) -> list[type]:
    import typing

    import msgspec

    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return [hint]
    return [s for arg in typing.get_args(hint) for s in _structs_in(arg)]


#: The suffix an import-frp input is written with: its first byte picks one.
FRP_SUFFIXES = (".toml", ".yaml", ".json", ".ini", ".conf")


def _frp_import(data: bytes) -> None:
    from pierce.frpimport import convert_file, is_frp_file

    suffix = FRP_SUFFIXES[data[0] % len(FRP_SUFFIXES)] if data else ".toml"
    path = _scratch() / f"frp{suffix}"
    path.write_bytes(data[1:])
    is_frp_file(path)
    convert_file(path)


def _frp_seeds() -> list[bytes]:
    out = []
    for p in sorted((ROOT / "tests/unit/frp").iterdir()):
        out.append(bytes([FRP_SUFFIXES.index(p.suffix)]) + p.read_bytes())
    doc = {"serverAddr": "a", "proxies": [{"name": "s", "type": "tcp", "localPort": 22, "remotePort": 6000}]}
    out.append(bytes([FRP_SUFFIXES.index(".json")]) + json.dumps(doc).encode())
    out.append(
        bytes([FRP_SUFFIXES.index(".yaml")]) + b"bindPort: 7000\nallowPorts:\n  - start: 1\n    end: 9\n"
    )
    return out


#: frp's option names (current format and legacy), for the dictionary and the structured documents.
FRP_KEYS = [
    "serverAddr",
    "serverPort",
    "bindPort",
    "bindAddr",
    "proxies",
    "visitors",
    "name",
    "type",
    "localIP",
    "localPort",
    "remotePort",
    "customDomains",
    "subdomain",
    "locations",
    "httpUser",
    "httpPassword",
    "hostHeaderRewrite",
    "requestHeaders",
    "set",
    "transport",
    "tls",
    "enable",
    "poolCount",
    "tcpMux",
    "heartbeatInterval",
    "heartbeatTimeout",
    "auth",
    "token",
    "method",
    "allowPorts",
    "start",
    "end",
    "single",
    "vhostHTTPPort",
    "vhostHTTPSPort",
    "subDomainHost",
    "webServer",
    "addr",
    "port",
    "user",
    "password",
    "plugin",
    "secretKey",
    "serverName",
    "serverUser",
    "bindPort",
    "keepTunnelOpen",
    "fallbackTo",
    "fallbackTimeoutMs",
    "loadBalancer",
    "group",
    "groupKey",
    "healthCheck",
    "intervalSeconds",
    "timeoutSeconds",
    "maxFailed",
    "path",
    "proxyProtocolVersion",
    "bandwidthLimit",
    "bandwidthLimitMode",
    "useEncryption",
    "useCompression",
    "multiplexer",
    "routeByHTTPUser",
    "allowUsers",
    "natTraversal",
    "maxPortsPerClient",
    "log",
    "includes",
    "metadatas",
    "common",
    "server_addr",
    "server_port",
    "local_port",
    "remote_port",
    "local_ip",
    "custom_domains",
    "allow_ports",
    "tcp",
    "udp",
    "http",
    "https",
    "stcp",
    "sudp",
    "xtcp",
    "tcpmux",
]


# -- known_hosts -------------------------------------------------------------------------------------------

#: A certificate no file pins (its fingerprint is that of these bytes), and a server no file names.
_KNOWN_HOSTS_DER = b"0\x82 a certificate the fuzzer's files do not pin"
_KNOWN_HOSTS_NEW = ("new.fuzz.invalid", 7000)


def _known_hosts(data: bytes) -> None:
    from pierce.addr import HostPort, parse_host_port
    from pierce.known_hosts import CertificateChanged, KnownHosts, server_key
    from pierce.tls import certificate_fingerprint

    path = _scratch() / "known_hosts"
    path.write_bytes(data)
    hosts = KnownHosts(path)
    pins = hosts.load()
    before = {key: pin.fingerprint for key, pin in pins.items()}
    # A server is named in one form, which reads back as itself: what `check` writes, `load` finds again.
    for key in pins:
        assert server_key(parse_host_port(key)) == key, key
    got = certificate_fingerprint(_KNOWN_HOSTS_DER)
    first = next(iter(pins.values()), None)
    if first is not None:
        # Another certificate for a pinned server is refused, and the file is left as it was.
        try:
            recorded = hosts.check(parse_host_port(first.server), _KNOWN_HOSTS_DER)
            assert first.fingerprint == got and recorded is False, (
                f"{first.server}: another certificate accepted"
            )
        except CertificateChanged:
            assert first.fingerprint != got
        assert path.read_bytes() == data
    # A new server is recorded, every pin kept; it is then known.
    new = HostPort(*_KNOWN_HOSTS_NEW)
    if server_key(new) not in pins:
        assert hosts.check(new, _KNOWN_HOSTS_DER) is True
        after = {key: pin.fingerprint for key, pin in hosts.load().items()}
        assert after == {**before, server_key(new): got}, (before, after)
        assert hosts.check(new, _KNOWN_HOSTS_DER) is False
        path.write_bytes(data)
    # Forgetting a server removes its lines only.
    if first is not None:
        forgotten = hosts.forget(parse_host_port(first.server))
        assert forgotten is not None and forgotten.fingerprint == first.fingerprint
        after = {key: pin.fingerprint for key, pin in hosts.load().items()}
        assert after == {k: v for k, v in before.items() if k != first.server}, (before, after)


def _known_hosts_seeds() -> list[bytes]:
    from pierce.known_hosts import _HEADER
    from pierce.tls import certificate_fingerprint

    fp_a = certificate_fingerprint(b"certificate A")
    fp_b = certificate_fingerprint(b"certificate B")
    return [
        f"{_HEADER}my.vps.example:7000 {fp_a}\n[2001:db8::1]:7000 {fp_b}\n".encode(),
        f"# comment\n\n  Tunnel.Example:7000\tsha256:{fp_a.replace(':', '').upper()}  \r\n".encode(),
        f"a.example:1 {fp_a}\na.example:2 {fp_b}\nA.EXAMPLE:1 {fp_a}".encode(),
        f"198.51.100.7:443 {fp_b}\n[fe80::1%eth0]:7000 {fp_a}\n#[::1]:1 {fp_b}\n".encode(),
        b"",
    ]


_KNOWN_HOSTS_TOKENS = (b"sha256:", b"[", b"]:", b"::1", b":7000 ", b"# ", b"\r\n", b".example")


# -- PAKE verifiers (server.toml's [[users]]) ------------------------------------------------------------

#: The password the seed verifiers are made from: a login with it must succeed exactly against those.
_PAKE_PASSWORD = "correct horse battery staple"
_PAKE_USERS = ("alice", "bob", "default", "c.d-e_f")


@functools.lru_cache(maxsize=256)
def _pake_verifier_text(name: str, salt: bytes) -> str:
    """The verifier `pierce verifier` would print for ``name`` and `_PAKE_PASSWORD`, with ``salt``."""
    from pierce.protocol.pake import Verifier

    return Verifier(salt, _srp_verifier(name, salt, _PAKE_PASSWORD).to_bytes(256, "big").lstrip(b"\0")).text()


def _srp_verifier(name: str, salt: bytes, password: str) -> int:
    """``g^x mod N`` computed here, apart from the code under test (RFC 5054's x, SHA-256, 2048 bits)."""
    import hashlib

    from pierce.protocol.pake import _N

    inner = hashlib.sha256(f"{name}:{password}".encode()).digest()
    x = int.from_bytes(hashlib.sha256(salt + inner).digest(), "big")
    return pow(2, x, _N)


def _pake_verifier(data: bytes) -> None:
    from pierce import config
    from pierce.protocol.messages import DEFAULT_USER
    from pierce.protocol.pake import _N, PakeClient, PakeFailed, PakeServer, Verifier
    from pierce.server.app import user_verifiers

    path = _scratch() / "server.toml"
    path.write_bytes(data)
    cfg = config.load(path, config.ServerConfig)
    verifiers = user_verifiers(cfg)
    # Who logs in with what: a user with a token with it, a user with a stored verifier with the password
    # the seeds' verifiers are made from (so any other verifier must refuse it).
    passwords = {DEFAULT_USER: cfg.token} if cfg.token else {}
    stored = {}
    for user in cfg.users:
        passwords[user.name] = user.token or _PAKE_PASSWORD
        if user.verifier:
            stored[user.name] = Verifier.parse(user.verifier)
        else:
            stored.pop(user.name, None)
    assert set(verifiers) == set(passwords), (verifiers, passwords)
    for name, password in list(passwords.items())[:2]:
        verifier = verifiers[name]
        assert Verifier.parse(verifier.text()) == verifier
        if name in stored:
            assert verifier == stored[name]
            value = int.from_bytes(verifier.verifier, "big") % _N
            right = value == _srp_verifier(name, verifier.salt, password)
        else:
            right = True
        client = PakeClient(name, password)
        server = PakeServer(name, verifier, client.public)
        try:
            proof = client.answer(server.salt, server.public)
            hamk, key = server.verify(proof)
            assert client.confirm(hamk) == key
        except PakeFailed:
            assert not right, f"{name}: the right password was refused"
        else:
            assert right, f"{name}: a login with the wrong password succeeded"


def _pake_seeds() -> list[bytes]:
    alice = _pake_verifier_text("alice", b"s" * 16)
    bob = _pake_verifier_text("bob", bytes(range(1, 9)))
    return [
        f'allow_weak_token = true\n[[users]]\nname = "alice"\nverifier = "{alice}"\n'.encode(),
        (
            f'[[users]]\nname = "bob"\nverifier = "{bob.upper()}"\nmax_clients = 2\n'
            '[[users]]\nname = "alice"\ntoken = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"\n'
        ).encode(),
        f'token = "q7Vx2mR9tLp4Kz8wNc3Hs6Jd"\n[[users]]\nname = "bob"\nverifier = "{bob}"\n'.encode(),
        f'[[users]]\nname = "c.d-e_f"\nverifier = "{"01" * 8}:{"ff" * 256}"\n'.encode(),
    ]


def _pake_document(rng: random.Random) -> bytes:
    """A server.toml of a few users, each with a verifier made of right and wrong pieces, or a token."""
    doc: dict[str, object] = {"allow_weak_token": rng.random() < 0.5}
    if rng.random() < 0.2:
        doc["token"] = rng.choice(("q7Vx2mR9tLp4Kz8wNc3Hs6Jd", "x", ""))
    users = []
    for _ in range(rng.randrange(1, 4)):
        name = rng.choice(_PAKE_USERS) if rng.random() < 0.9 else rng.choice(_STRINGS)
        user: dict[str, object] = {"name": name}
        if rng.random() < 0.2:
            user["token"] = rng.choice(("q7Vx2mR9tLp4Kz8wNc3Hs6Jd", "t", _PAKE_PASSWORD))
        if rng.random() < 0.9:
            user["verifier"] = _verifier_text(rng, name)
        users.append(user)
    doc["users"] = users
    return _toml(doc)


def _verifier_text(rng: random.Random, name: str) -> str:
    from pierce.protocol.pake import _N

    salt = rng.randbytes(rng.choice((0, 7, 8, 16, 64, 65)))
    kind = rng.randrange(6)
    if kind == 0 and salt:
        return _pake_verifier_text(name, salt)
    value = rng.choice((0, 1, 2, _N - 1, _N, _N + 1, 2**2048 - 1, 2**2048, rng.getrandbits(2048)))
    body = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big").hex()
    salt_hex = salt.hex()
    if kind == 1:
        body = body.upper()
    elif kind == 2:
        salt_hex = " ".join(salt_hex[i : i + 2] for i in range(0, len(salt_hex), 2))
    elif kind == 3:
        body = body[: rng.randrange(len(body) + 1)] + rng.choice(("", "g", ":", "0", " ", "\u0660", "é"))
    elif kind == 4:
        return rng.choice(("", ":", salt_hex, f"{salt_hex}::{body}", f"{salt_hex}:{body}:{body}"))
    return f"{salt_hex}:{body}"


# -- structured documents -------------------------------------------------------------------------------

_STRINGS = (
    "", "a", "0", "-1", "x" * 300, "\x00", "é", "127.0.0.1", "127.0.0.1:0", "0.0.0.0:7000", "[::1]:80",
    "::1", "a.example", "*.example.com", "/", "/api", "1000-2000", "1000:2000", "5000", "tcp", "udp", "http",
    "https", "stcp", "sudp", "xtcp", "xudp", "tcpmux", "v1", "v2", "auto", "1MB", "10KB", "1.5", "true",
    "10.0.0.0/8", "secret", "%", "a b", "[common]",
)  # fmt: skip
_NUMBERS = (0, 1, -1, 22, 80, 443, 6000, 65535, 65536, 2**31, 2**63 - 1, -(2**63))


def _value(rng: random.Random, keys: tuple[str, ...], depth: int) -> object:
    kind = rng.randrange(9 if depth < 3 else 5)
    if kind == 0:
        return rng.choice(_NUMBERS)
    if kind == 1:
        return rng.choice(_STRINGS)
    if kind == 2:
        return rng.random() < 0.5
    if kind == 3:
        return rng.choice((0.5, -1.0, 1e300, float("inf"), float("nan")))
    if kind == 4:
        return rng.choice(keys)
    if kind in (5, 6):
        return _table(rng, keys, depth + 1)
    if kind == 7:
        return [_table(rng, keys, depth + 1) for _ in range(rng.randrange(1, 4))]
    return [_value(rng, keys, depth + 1) for _ in range(rng.randrange(4))]


def _table(rng: random.Random, keys: tuple[str, ...], depth: int = 0) -> dict[str, object]:
    names = [
        rng.choice(keys) if rng.random() < 0.95 else rng.choice(_STRINGS) for _ in range(rng.randrange(1, 7))
    ]
    return {name: _value(rng, keys, depth) for name in names}


def _toml(doc: dict[str, object]) -> bytes:
    from pierce.frpimport.emit import dumps

    return dumps(doc).encode()


def _config_document(rng: random.Random) -> bytes:
    keys = tuple(k.decode() for k in _config_keys())
    doc = _table(rng, keys)
    for _ in range(rng.randrange(3)):  # a few tables and arrays of tables the file kinds have
        name = rng.choice(
            ("rules", "proxies", "visitors", "users", "transport", "web", "p2p", "acme", "ddns")
        )
        doc[name] = _table(rng, keys, 1) if rng.random() < 0.3 else [_table(rng, keys, 1) for _ in range(2)]
    return _toml(doc)


def _frp_document(rng: random.Random) -> bytes:
    keys = tuple(FRP_KEYS)
    doc = _table(rng, keys)
    doc[rng.choice(("serverAddr", "bindPort"))] = rng.choice((_value(rng, keys, 2), "a", 7000))
    if rng.random() < 0.8:
        doc[rng.choice(("proxies", "visitors"))] = [_table(rng, keys, 1) for _ in range(rng.randrange(1, 4))]
    fmt = rng.randrange(4)
    if fmt == 0:
        return bytes([FRP_SUFFIXES.index(".json")]) + json.dumps(doc).encode()
    if fmt == 1:
        import yaml

        return bytes([FRP_SUFFIXES.index(".yaml")]) + yaml.safe_dump(doc).encode()
    if fmt == 2:
        return bytes([FRP_SUFFIXES.index(".toml")]) + _toml(doc)
    lines = ["[common]"]
    for key, value in doc.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, section in enumerate(value):
                lines.append(f"[{key}{i}]")
                lines += [f"{k} = {_ini(v)}" for k, v in section.items()]
        else:
            lines.append(f"{key} = {_ini(value)}")
    return bytes([FRP_SUFFIXES.index(".ini")]) + "\n".join(lines).encode()


def _ini(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_ini(v) for v in value)
    return str(value).replace("\n", " ")


# -- mutations of valid inputs ---------------------------------------------------------------------------

#: Values a length or count field is set to: zero, one, the top of each width, off by one around them.
_BOUNDARIES = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)

#: One mutation: (operation, position, amount, bytes); positions wrap around the input's length.
Mutation = tuple[int, int, int, bytes]


def mutate(seed: bytes, mutations: list[Mutation]) -> bytes:
    """``seed`` with ``mutations`` applied in order: bytes set or flipped, a cut, bytes inserted or
    deleted, a 1/2/4-byte big-endian field set to a boundary value (a length field set large), a slice
    repeated (a frame sent twice)."""
    data = bytearray(seed)
    for op, pos, amount, blob in mutations:
        at = pos % (len(data) + 1)
        if op == 0 and data:
            data[at % len(data)] = amount & 0xFF
        elif op == 1 and data:
            data[at % len(data)] ^= 1 << (amount % 8)
        elif op == 2:
            del data[at:]
        elif op == 3:
            data[at:at] = blob
        elif op == 4:
            del data[at : at + 1 + amount % 16]
        elif op == 5:
            width = (1, 2, 4)[amount % 3]
            value = _BOUNDARIES[(amount // 3) % len(_BOUNDARIES)] & ((1 << (8 * width)) - 1)
            data[at : at + width] = value.to_bytes(width, "big")
        elif op == 6:
            piece = data[at : at + 1 + amount % 64]
            data[at:at] = piece
    return bytes(data)


def random_mutations(rng: random.Random) -> list[Mutation]:
    return [
        (rng.randrange(7), rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randbytes(rng.randrange(1, 9)))
        for _ in range(rng.randrange(1, 5))
    ]


def random_input(target: Target, rng: random.Random) -> bytes:
    """One input for a plain random loop: a mutated seed, random bytes, or a structured document."""
    choice = rng.random()
    if target.structured is not None and choice < 0.4:
        return target.structured(rng)
    if choice < 0.85:
        return mutate(rng.choice(target.seeds()), random_mutations(rng))
    return rng.randbytes(rng.randrange(64))


def inputs(target: Target):  # type: ignore[no-untyped-def]
    """The hypothesis strategy of ``target``'s inputs: arbitrary bytes, mutated seeds and (where the
    target has them) structured documents."""
    from hypothesis import strategies as st

    mutation = st.tuples(
        st.integers(0, 6), st.integers(0, 1 << 16), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)
    )
    mutated = st.builds(mutate, st.sampled_from(target.seeds()), st.lists(mutation, min_size=1, max_size=4))
    strategies = [st.binary(max_size=512), mutated, mutated]
    if target.structured is not None:
        strategies.append(st.randoms(use_true_random=False).map(target.structured))
    return st.one_of(strategies)


# -- the table ---------------------------------------------------------------------------------------------


def _targets() -> dict[str, Target]:
    from pierce.known_hosts import KnownHostsError
    from pierce.nat.punch_wire import PunchWireError
    from pierce.nat.stun import StunParseError
    from pierce.portmap.natpmp import NatPmpParseError
    from pierce.portmap.pcp import PcpParseError
    from pierce.protocol.errors import ProtocolError
    from pierce.protocol.p2p import BadOffer
    from pierce.proxy_protocol import ProxyProtocolError
    from pierce.vhost.http_parse import Malformed
    from pierce.vhost.sni import SniError

    targets = [
        Target("frames", _frames, (ProtocolError,), _frame_seeds),
        Target("chunks", _chunks, (ProtocolError,), _chunk_seeds),
        Target("stun", _stun, (StunParseError,), _stun_seeds),
        Target("http", _http, (Malformed,), _http_seeds, _HTTP_TOKENS),
        Target("sni", _sni, (SniError,), lambda: list(_client_hellos())),
        Target("proxy_protocol", _proxy_protocol, (ProxyProtocolError,), _proxy_protocol_seeds),
        Target("natpmp", _natpmp, (NatPmpParseError,), _natpmp_seeds),
        Target("pcp", _pcp, (PcpParseError,), _pcp_seeds),
        Target("p2p_offer", _p2p_offer, (BadOffer,), _p2p_offer_seeds),
        Target("mux", _mux, (ProtocolError,), _mux_seeds),
        Target("punch", _punch, (PunchWireError,), _punch_seeds, _PUNCH_TOKENS),
        Target("datagrams", _datagrams, (ProtocolError,), _datagram_seeds),
        Target("config", _config, (ConfigError,), _config_seeds, (), _config_document),
        Target(
            "frp_import",
            _frp_import,
            (ConfigError,),
            _frp_seeds,
            tuple(k.encode() for k in FRP_KEYS),
            _frp_document,
        ),
        Target("known_hosts", _known_hosts, (KnownHostsError,), _known_hosts_seeds, _KNOWN_HOSTS_TOKENS),
        Target(
            "pake_verifier",
            _pake_verifier,
            (ConfigError,),
            _pake_seeds,
            (b"[[users]]", b"name", b"verifier", b"token", b"allow_weak_token", b'"', b":"),
            _pake_document,
        ),
    ]
    return {t.name: t for t in targets}


TARGETS: dict[str, Target] = _targets()


def tokens(target: Target) -> tuple[bytes, ...]:
    """The dictionary of ``target`` (config keys are read from the config Structs)."""
    return _config_keys() if target.name == "config" else target.tokens
