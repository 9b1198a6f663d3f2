"""Framing and message codec: round trips, arbitrary splits, limits, and hostile input."""

from __future__ import annotations

import contextlib
import struct
import typing

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pierce.errors import RemoteError
from pierce.protocol import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    NONCE_SIZE,
    PRE_AUTH_MAX_FRAME_SIZE,
    PROOF_SIZE,
    PROTOCOL_VERSION,
    AuthOk,
    AuthResponse,
    Challenge,
    ClientMessage,
    CloseProxy,
    Error,
    ErrorCode,
    Feature,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    MalformedFrame,
    Message,
    NewProxy,
    Ping,
    Pong,
    ProtocolError,
    ProxyReady,
    ProxyRefused,
    ReqWorkConn,
    Role,
    SecretKind,
    ServerMessage,
    StartWork,
    UdpPacket,
    UnexpectedMessage,
    Visit,
    VisitAnswer,
    VisitChallenge,
    VisitorAnswer,
    VisitorCheck,
    VisitorVerdict,
    VisitReady,
    WorkReady,
    encode_frame,
)
from pierce.protocol.messages import DirectAddress, P2pAnswer, P2pOffer, P2pRequest, P2pResult, P2pStart
from pierce.proxies.http import HttpSpec
from pierce.proxies.https import HttpsSpec
from pierce.proxies.registry import decode_spec, encode_spec
from pierce.proxies.stcp import StcpSpec
from pierce.proxies.sudp import SudpSpec
from pierce.proxies.tcp import TcpSpec
from pierce.proxies.udp import UdpSpec

NONCE = bytes(range(NONCE_SIZE))
PROOF = b"\xaa" * PROOF_SIZE

SAMPLES: list[Message] = [
    Hello(
        version=PROTOCOL_VERSION,
        features=frozenset({Feature.UDP, Feature.ENCRYPT_DATA, "from_the_future"}),
        client_id="laptop",
        role=Role.CONTROL,
    ),
    Hello(version=PROTOCOL_VERSION, features=frozenset(), client_id="laptop", role=Role.WORK, run_id="r-1"),
    Hello(version=99, features=frozenset(), client_id="v", role=Role.VISITOR),
    AuthResponse(proof=PROOF, client_nonce=NONCE),
    NewProxy(name="ssh", spec=encode_spec(TcpSpec(remote_port=6000))),
    NewProxy(name="dns", spec=encode_spec(UdpSpec(remote_port=0))),
    NewProxy(
        name="nas",
        spec=encode_spec(
            HttpSpec(
                custom_domains=["nas.example.com", "*.dev.example.com"],
                locations=["/", "/api"],
                http_user="me",
                http_password="secret",
                request_headers={"X-From": "pierce"},
                https_auto=True,
            )
        ),
    ),
    NewProxy(name="web", spec=encode_spec(HttpsSpec(subdomain="web"))),
    NewProxy(name="ssh-secret", spec=encode_spec(StcpSpec())),
    NewProxy(name="dns-secret", spec=encode_spec(SudpSpec())),
    Visit(proxy="ssh-secret", kind=SecretKind.STCP, pake=b"\x01" * 256),
    Visit(
        proxy="dns-secret", kind=SecretKind.SUDP, ticket=b"t" * 16, nonce=NONCE, proof=PROOF, check_only=True
    ),
    VisitAnswer(proof=PROOF),
    Visit(proxy="game", kind=SecretKind.XUDP, ticket=b"t" * 16, nonce=NONCE, proof=PROOF, p2p=True),
    P2pOffer(offer=b"\x81\xa1c\x90", mac=PROOF),
    P2pAnswer(proxy="game", visit_id="ab" * 32, offer=b"o" * 4096, mac=PROOF),
    P2pAnswer(
        proxy="game", visit_id="ab" * 32, code=ErrorCode.LIMIT_REACHED, reason="64 direct paths already"
    ),
    P2pResult(path="direct udp", elapsed_ms=412, rtt_ms=0.37),
    P2pResult(path="relay", reason="both sides symmetric"),
    P2pRequest(proxy="game", visit_id="ab" * 32, offer=b"o", mac=PROOF, stun_port=3478),
    P2pStart(visit_id="ab" * 32, delay_ms=0, offer=b"o", mac=PROOF),
    P2pStart(visit_id="ab" * 32),
    VisitorVerdict(proxy="ssh-secret", check_id=7, salt=b"s" * 16, pake=b"\x02" * 256),
    VisitorVerdict(proxy="ssh-secret", check_id=7, proof=PROOF, ticket=b"t" * 16),
    VisitorVerdict(proxy="ssh-secret", check_id=7),
    VisitorVerdict(
        proxy="ssh-secret",
        check_id=8,
        code=ErrorCode.AUTH_FAILED,
        reason="wrong secret for proxy 'ssh-secret'",
    ),
    CloseProxy(name="ssh"),
    DirectAddress(name="ssh", address="198.51.100.7:6022"),
    DirectAddress(name="ssh"),
    Ping(seq=0),
    Ping(seq=2**63),
    UdpPacket(proxy="dns", peer_host="2001:db8::1", peer_port=53, data=b"\x00\x01query"),
    UdpPacket(proxy="dns", peer_host="203.0.113.7", peer_port=65535, data=b"\xff" * 65507),
    Challenge(server_nonce=NONCE, version=PROTOCOL_VERSION, features=frozenset({Feature.UDP})),
    Challenge(
        server_nonce=NONCE, version=PROTOCOL_VERSION, features=frozenset(), salt=b"s" * 16, pake=b"B" * 256
    ),
    AuthOk(run_id="r-1", server_proof=PROOF),
    AuthOk(run_id="r-1", server_proof=PROOF, binding=PROOF),
    ProxyReady(name="ssh", remote_port=6000),
    ProxyReady(name="nas", remote_port=80, urls=["http://nas.example.com/"]),
    ProxyRefused(name="ssh", code=ErrorCode.PORT_NOT_ALLOWED, reason="port 22 is outside 10000-20000"),
    StartWork(proxy="ssh", visitor_host="198.51.100.2", visitor_port=51234),
    StartWork(
        proxy="ssh", visitor_host="198.51.100.2", visitor_port=5, server_host="203.0.113.1", server_port=443
    ),
    StartWork(proxy="ssh", visitor_host="198.51.100.2", visitor_port=5, confirm=True),
    WorkReady(),
    VisitorCheck(
        proxy="ssh-secret",
        check_id=7,
        kind=SecretKind.STCP,
        visitor_user="alice",
        visitor_id="laptop",
        visitor_host="198.51.100.9",
        visitor_port=40000,
        visit_id="0f" * 16,
        ticket=b"t" * 16,
        nonce=NONCE,
        proof=PROOF,
    ),
    VisitorAnswer(proxy="ssh-secret", check_id=7, proof=PROOF),
    VisitChallenge(salt=b"s" * 16, pake=b"B" * 256),
    VisitReady(proxy="ssh-secret"),
    VisitReady(proxy="ssh-secret", proof=PROOF, ticket=b"t" * 16),
    Ping(seq=3),
    ReqWorkConn(count=3),
    Pong(seq=7),
    *(Error(code=code, reason=f"because {code.value}") for code in ErrorCode),
]

messages = st.sampled_from(SAMPLES) | st.builds(
    UdpPacket,
    proxy=st.text(min_size=1, max_size=20),
    peer_host=st.sampled_from(["127.0.0.1", "::1", "fe80::1%eth0"]),
    peer_port=st.integers(0, 65535),
    data=st.binary(max_size=2000),
)


def frames_of(msgs: list[Message]) -> bytes:
    return b"".join(encode_frame(m) for m in msgs)


def header(length: int) -> bytes:
    return struct.pack(">I", length)


def payload_frame(obj: object) -> bytes:
    payload = msgspec.msgpack.encode(obj)
    return header(len(payload)) + payload


# -- round trips ------------------------------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(typing.get_args(Message))


def test_directions_cover_every_message_and_share_only_udp_error_and_pings() -> None:
    client, server = set(typing.get_args(ClientMessage)), set(typing.get_args(ServerMessage))
    assert client | server == set(typing.get_args(Message))
    assert client & server == {UdpPacket, Error, Ping, Pong}


def test_tags_are_unique() -> None:
    tags = [cls.__struct_config__.tag for cls in typing.get_args(Message)]
    assert len(tags) == len(set(tags))


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_each_message(msg: Message) -> None:
    frame = encode_frame(msg)
    assert struct.unpack_from(">I", frame)[0] == len(frame) - HEADER_SIZE
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [msg]
    assert decoder.buffered == 0


def test_decoded_enums_and_features_are_typed() -> None:
    [hello] = FrameDecoder().feed(encode_frame(SAMPLES[0]))
    assert isinstance(hello, Hello)
    assert hello.role is Role.CONTROL
    assert Feature.UDP in hello.features
    assert "from_the_future" in hello.features


def test_messages_are_frozen_and_keyword_only() -> None:
    with pytest.raises(AttributeError):
        Ping(seq=1).seq = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Ping(1)  # type: ignore[call-arg]


def test_pre_auth_messages_fit_the_pre_auth_limit() -> None:
    for msg in SAMPLES:
        if isinstance(msg, Hello | AuthResponse | Challenge | AuthOk | Error):
            assert len(encode_frame(msg)) - HEADER_SIZE <= PRE_AUTH_MAX_FRAME_SIZE


def test_largest_udp_datagram_fits() -> None:
    msg = UdpPacket(proxy="p" * 255, peer_host="f" * 64, peer_port=65535, data=bytes(65527))
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(msg)) == [msg]


def test_encode_refuses_a_frame_no_peer_accepts() -> None:
    with pytest.raises(ValueError, match="frame limit"):
        encode_frame(UdpPacket(proxy="p", peer_host="::1", peer_port=1, data=bytes(MAX_FRAME_SIZE)))


def test_unknown_fields_are_ignored() -> None:
    frame = payload_frame({"t": "ping", "seq": 5, "added_in_v2": [1, {"x": b"y"}]})
    assert FrameDecoder().feed(frame) == [Ping(seq=5)]


# -- splitting --------------------------------------------------------------------------------------


@given(st.lists(messages, min_size=1, max_size=20), st.data())
def test_any_split_yields_the_same_messages(msgs: list[Message], data: st.DataObject) -> None:
    blob = frames_of(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=30)))
    decoder = FrameDecoder()
    got: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(blob)], strict=True):
        got += decoder.feed(blob[start:end])
    assert got == msgs
    assert decoder.buffered == 0


def test_one_byte_at_a_time() -> None:
    blob = frames_of(SAMPLES[:10])
    decoder = FrameDecoder()
    got: list[Message] = []
    for i in range(len(blob)):
        got += decoder.feed(memoryview(blob)[i : i + 1])
    assert got == SAMPLES[:10]


def test_accepts_bytearray_and_memoryview() -> None:
    blob = frames_of(SAMPLES[:3])
    assert FrameDecoder().feed(bytearray(blob)) == SAMPLES[:3]
    assert FrameDecoder().feed(memoryview(blob)) == SAMPLES[:3]


@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_truncated_input_yields_nothing_and_no_error(msgs: list[Message], data: st.DataObject) -> None:
    blob = frames_of(msgs)
    last = encode_frame(msgs[-1])
    keep = len(blob) - data.draw(st.integers(1, len(last)))
    decoder = FrameDecoder()
    assert decoder.feed(blob[:keep]) == msgs[:-1]
    assert decoder.buffered == keep - (len(blob) - len(last))
    assert decoder.feed(b"") == []
    assert decoder.feed(blob[keep:]) == [msgs[-1]]


# -- limits and malformed input ---------------------------------------------------------------------


def test_oversized_length_raises_right_after_the_header() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(header(MAX_FRAME_SIZE + 1)[:3]) == []
    with pytest.raises(
        FrameTooLarge, match=f"frame of {MAX_FRAME_SIZE + 1} bytes exceeds the 131072-byte limit"
    ):
        decoder.feed(header(MAX_FRAME_SIZE + 1)[3:])


def test_a_frame_exactly_at_the_limit_is_accepted() -> None:
    msg = Ping(seq=1)
    frame = encode_frame(msg)
    assert FrameDecoder(max_frame_size=len(frame) - HEADER_SIZE).feed(frame) == [msg]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame_size=len(frame) - HEADER_SIZE - 1).feed(frame)


def test_huge_length_does_not_buffer() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge, match="4294967295"):
        decoder.feed(header(0xFFFFFFFF) + b"x" * 100)
    assert decoder.buffered == 0


def test_zero_length_raises() -> None:
    with pytest.raises(MalformedFrame, match="length of 0"):
        FrameDecoder().feed(header(0))


def test_error_after_good_frames_in_the_same_feed() -> None:
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(encode_frame(Ping(seq=1)) + header(0))


def test_decoder_stays_dead_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge) as first:
        decoder.feed(header(MAX_FRAME_SIZE + 1))
    for follow_up in (encode_frame(Ping(seq=1)), b""):
        with pytest.raises(FrameTooLarge) as again:
            decoder.feed(follow_up)
        assert str(again.value) == str(first.value)


def test_lowering_and_raising_the_limit() -> None:
    big = encode_frame(UdpPacket(proxy="p", peer_host="::1", peer_port=1, data=bytes(10_000)))
    decoder = FrameDecoder(max_frame_size=PRE_AUTH_MAX_FRAME_SIZE)
    assert decoder.feed(big[: HEADER_SIZE - 1]) == []
    decoder.max_frame_size = MAX_FRAME_SIZE  # authenticated
    assert decoder.feed(big[HEADER_SIZE - 1 :]) != []

    decoder.feed(big[:100])
    decoder.max_frame_size = PRE_AUTH_MAX_FRAME_SIZE  # the pending frame is checked against the new limit
    with pytest.raises(FrameTooLarge, match="4096-byte limit"):
        decoder.feed(big[100:])


@pytest.mark.parametrize("bad", [0, -1, 2**32])
def test_max_frame_size_must_be_sane(bad: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameDecoder(max_frame_size=bad)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xc1", "undecodable"),  # a reserved MessagePack byte
        (msgspec.msgpack.encode({"t": "ping", "seq": 1}) + b"\x00", "undecodable"),  # trailing bytes
        (msgspec.msgpack.encode([1, 2, 3]), "invalid message"),
        (msgspec.msgpack.encode({"t": "teleport", "seq": 1}), "invalid message"),
        (msgspec.msgpack.encode({"seq": 1}), "invalid message"),
        (msgspec.msgpack.encode({"t": "ping"}), r"missing required field `seq`"),
        (msgspec.msgpack.encode({"t": "ping", "seq": "one"}), r"\$\.seq"),
        (msgspec.msgpack.encode({"t": "ping", "seq": -1}), r"\$\.seq"),
        (msgspec.msgpack.encode({"t": "error", "code": "gremlins", "reason": ""}), r"\$\.code"),
        (msgspec.msgpack.encode({"t": "new_proxy", "name": "x"}), r"missing required field `spec`"),
        (msgspec.msgpack.encode({"t": "new_proxy", "name": "", "spec": {}}), r"\$\.name"),
        (msgspec.msgpack.encode({"t": "req_work", "count": 10**6}), r"\$\.count"),
        (msgspec.msgpack.encode({"t": "auth", "proof": b"short", "client_nonce": NONCE}), r"\$\.proof"),
        (msgspec.msgpack.encode({"t": "auth", "proof": PROOF, "client_nonce": "text"}), r"client_nonce"),
        (b"\x82\xa1t\xa4ping\xa3seq" + b"\x91" * 100_000 + b"\x01", "nested too deeply|invalid message"),
        (b"\x83\xa1t\xa4ping\xa3seq\x01\xa1x" + b"\x91" * 100_000 + b"\xc0", "nested too deeply"),
    ],
)
def test_malformed_payloads(payload: bytes, match: str) -> None:
    with pytest.raises(MalformedFrame, match=match) as info:
        FrameDecoder().feed(header(len(payload)) + payload)
    assert isinstance(info.value, RemoteError)
    assert info.value.code is ErrorCode.BAD_MESSAGE


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(blob: bytes) -> None:
    decoder = FrameDecoder(max_frame_size=PRE_AUTH_MAX_FRAME_SIZE)
    with contextlib.suppress(ProtocolError):
        decoder.feed(blob)


@given(st.binary(min_size=1, max_size=300))
def test_random_payloads_raise_only_protocol_errors(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        FrameDecoder().feed(header(len(payload)) + payload)


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10,
)
field_names = st.sampled_from(
    sorted({"t"}.union(*(cls.__struct_fields__ for cls in typing.get_args(Message))))
)
tags = st.sampled_from([cls.__struct_config__.tag for cls in typing.get_args(Message)])


@given(tags, st.dictionaries(field_names, wire_values, max_size=8))
def test_near_miss_messages_raise_only_protocol_errors(tag: object, fields: dict[str, object]) -> None:
    try:
        msgs = FrameDecoder().feed(payload_frame({**fields, "t": tag}))
    except ProtocolError:
        return
    [msg] = msgs
    assert msg.__struct_config__.tag == tag
    assert FrameDecoder().feed(encode_frame(msg)) == [msg]


def test_unexpected_message_names_both() -> None:
    err = UnexpectedMessage(Ping(seq=1), expected="AuthResponse")
    assert str(err) == "expected AuthResponse, got Ping"
    assert isinstance(err, ProtocolError)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"type": "tcp", "remote_port": 65536}, r"remote_port"),
        ({"type": "teleport"}, r"Invalid value 'teleport'"),
        ({"remote_port": 1}, r"missing required field `type`"),
        ({"type": "http", "custom_domains": ["x"] * 65}, r"custom_domains"),
    ],
)
def test_bad_proxy_specs_are_protocol_errors(spec: dict[str, object], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_spec(msgspec.Raw(msgspec.msgpack.encode(spec)))


def test_proxy_specs_round_trip() -> None:
    spec = HttpSpec(custom_domains=["a.example.com"], locations=["/api"], https_auto=True)
    assert decode_spec(encode_spec(spec)) == spec
