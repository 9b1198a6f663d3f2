"""Every decoder of network or file bytes, fuzzed: nothing escapes but the module's own error type.

The harnesses are `support.fuzz_targets` (``bench/fuzz.py`` runs the same ones under atheris for a time
budget). Each gets arbitrary bytes, its valid inputs mutated (bytes flipped, cut, a length field set
large, a frame repeated) and, for the config formats, generated documents; each asserts the bounds its
module documents. The examples are bounded so the whole file stays within seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fuzz_targets import FRP_SUFFIXES, TARGETS, DatagramPathStub, inputs, read_queued

from pierce import config, proxy_protocol
from pierce.addr import HostPort
from pierce.errors import ConfigError
from pierce.frpimport import convert_file
from pierce.known_hosts import KnownHosts
from pierce.p2p import datagrams
from pierce.protocol import chunks, frames, mux
from pierce.protocol.errors import FrameTooLarge, ProtocolError
from pierce.protocol.messages import UdpPacket
from pierce.protocol.pake import PakeClient, PakeServer, Verifier
from pierce.proxy_protocol import ProxyProtocolError
from pierce.tls import certificate_fingerprint
from pierce.vhost import sni

#: Examples per target: the file-reading ones cost milliseconds each (pake_verifier's logins too), the
#: codecs microseconds.
EXAMPLES = {"config": 60, "frp_import": 120, "known_hosts": 120, "pake_verifier": 120}


@pytest.mark.parametrize("name", list(TARGETS))
def test_seeds_are_valid_inputs(name: str) -> None:
    target = TARGETS[name]
    seeds = target.seeds()
    assert seeds
    for seed in seeds:
        target.run(seed) if name not in ("config", "frp_import") else target.check(seed)


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name: str) -> None:
    target = TARGETS[name]

    @settings(
        max_examples=EXAMPLES.get(name, 250),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        target.check(data.draw(inputs(target)))

    run()


# -- bounds: a peer-controlled length is refused before its bytes are held -----------------------------


@pytest.mark.parametrize("limit", [frames.PRE_AUTH_MAX_FRAME_SIZE, frames.MAX_FRAME_SIZE])
def test_frame_length_over_the_limit_fails_at_its_header(limit: int) -> None:
    decoder = frames.FrameDecoder(limit)
    assert decoder.feed((limit).to_bytes(4, "big")[:3]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed((limit + 1).to_bytes(4, "big")[3:])
    assert decoder.buffered == 0
    with pytest.raises(FrameTooLarge):  # and the stream stays failed
        decoder.feed(b"\x00")


def test_chunk_length_over_the_limit_fails_at_its_header() -> None:
    for feed in ("feed", "header"):
        decoder = chunks.ChunkDecoder()
        with pytest.raises(ProtocolError, match="exceeds"):
            getattr(decoder, feed)(b"\xff\xff\xff\xff")
        assert decoder.left == 0


def test_mux_frame_length_over_the_limit_fails_at_its_header() -> None:
    state = mux.MuxState(initiator=True)
    with pytest.raises(ProtocolError, match="exceeds"):
        state.header(mux.HEADER.pack(mux.FrameType.DATA, 0, 2, mux.MAX_FRAME + 1))


def test_client_hello_longer_than_the_peek_limit_fails_at_its_header() -> None:
    record = bytes([sni.HANDSHAKE_RECORD, 3, 1]) + (sni.MAX_RECORD_PAYLOAD).to_bytes(2, "big")
    with pytest.raises(sni.HelloTooLarge):
        sni.collect_hello(record, limit=4096)
    hello = b"\x01" + (0xFFFFFF).to_bytes(3, "big") + b"\x03\x03"
    small = bytes([sni.HANDSHAKE_RECORD, 3, 1]) + len(hello).to_bytes(2, "big") + hello
    with pytest.raises(sni.HelloTooLarge):  # a hello announced over the limit, in a small record
        sni.collect_hello(small, limit=4096)


# -- regressions: inputs the fuzzers found --------------------------------------------------------------


def test_proxy_v1_line_with_a_bare_line_feed_is_refused_whole_as_in_pieces() -> None:
    # UNKNOWN took any rest of the line, a bare LF included, once the CRLF was in; the same bytes without
    # their last one were refused (a LF without CRLF). A header whose prefix fails must fail too.
    data = b"PROXY UNKNOWN 28::1 4711PR\x0f 44XY UN\rKNO\nWN\r\n"
    for end in (len(data), len(data) - 1):
        with pytest.raises(ProxyProtocolError, match="line feed"):
            proxy_protocol.parse(data[:end])
    TARGETS["proxy_protocol"].check(data)


def frp(suffix: str, text: str | bytes) -> bytes:
    return bytes([FRP_SUFFIXES.index(suffix)]) + (text.encode() if isinstance(text, str) else text)


PROXY = {"name": "s", "type": "tcp", "localPort": 22}
FRP_REGRESSIONS = {
    # A proxy without a name: None went into the result, which the TOML writer cannot write.
    "proxy without name": (
        frp(".json", json.dumps({"serverAddr": "a", "proxies": [{"type": "tcp", "localPort": 22}]})),
        "proxies[0].name: missing required key",
    ),
    # A YAML date where a port goes: the same, with a value of a type TOML writing does not know.
    "date as a port": (
        frp(".yaml", "serverAddr: a\nproxies:\n- name: s\n  type: tcp\n  localPort: 2024-01-01\n"),
        "proxies[0].local_port: a date value, which a pierce config cannot hold",
    ),
    # `start` listing a table: made into a set of names, which a dict cannot join.
    "start with a table": (
        frp(".json", json.dumps({"serverAddr": "a", "start": [{"a": 1}, "s"], "proxies": [PROXY]})),
        "start: entries that are not proxy or visitor names are ignored",
    ),
    # Legacy INI: a key set `transport` to a string, then tcp_mux wanted the table transport.tcpMux.
    "legacy key under a value": (
        frp(".ini", "[common]\nserver_addr = a\ntransport = x\ntcp_mux = true\n"),
        "[common] tcp_mux: not converted: [common] transport already set transport",
    ),
    # The other order overwrote the table silently, dropping tcp_mux without a warning.
    "legacy value over a table": (
        frp(".ini", "[common]\nserver_addr = a\ntcp_mux = true\ntransport = x\n"),
        "[common] transport: not converted: [common] tcp_mux already set transport",
    ),
}


@pytest.mark.parametrize("data,said", list(FRP_REGRESSIONS.values()), ids=list(FRP_REGRESSIONS))
def test_frp_import_regressions(data: bytes, said: str, tmp_path: Path) -> None:
    TARGETS["frp_import"].check(data)
    path = tmp_path / f"frp{FRP_SUFFIXES[data[0]]}"
    path.write_bytes(data[1:])
    converted = convert_file(path)
    assert any(said in line for line in converted.warnings + converted.problems), converted


def test_datagram_holding_a_cut_frame_is_dropped_not_joined_to_the_next() -> None:
    # A DATAGRAM frame was queued as it came: one holding an empty frame and the head of a 61-byte one
    # made the tunnel's decoder take the next datagram as the rest (what the fuzzer sent, in short).
    whole = frames.encode_frame(UdpPacket(proxy="dns", peer_host="10.0.0.1", peer_port=53, data=b"q"))
    cut = datagrams.EMPTY_FRAME + (61).to_bytes(4, "big") + b"\x85\xa1t\xa3udp"
    end = datagrams.DatagramEnd(DatagramPathStub())  # type: ignore[arg-type]
    for datagram in (cut, whole[:-1], whole + b"\x00", datagrams.EMPTY_FRAME, b"\x00\x00", whole):
        end.deliver(datagram)
    assert end.malformed == 5
    assert read_queued(end) == whole
    with pytest.raises(datagrams.DatagramFrameError, match="not one frame"):
        datagrams.frame_of(cut)
    TARGETS["datagrams"].check(cut + whole)


def test_datagram_stream_length_over_the_limit_is_a_protocol_error() -> None:
    # The splitter raised a bare ValueError, which the tunnel's writer does not expect from a peer.
    header = (frames.MAX_FRAME_SIZE + 1).to_bytes(4, "big")
    with pytest.raises(datagrams.DatagramFrameError, match="over"):
        datagrams.FrameSplitter().feed(header)
    assert issubclass(datagrams.DatagramFrameError, ProtocolError)
    TARGETS["datagrams"].check(header)


def test_known_hosts_names_a_server_in_a_form_that_reads_back(tmp_path: Path) -> None:
    # "İ" lowercases to "i" and a combining dot, which no host name holds: a server named with it was
    # recorded under a name the next load refused, so every later connection failed on a damaged file.
    fingerprint = certificate_fingerprint(b"certificate")
    data = f"İ.example:7000 {fingerprint}\n".encode()
    TARGETS["known_hosts"].check(data)
    hosts = KnownHosts(tmp_path / "known_hosts")
    assert hosts.check(HostPort("İ.Example", 7000), b"certificate") is True
    assert list(hosts.load()) == ["İ.example:7000"]
    assert hosts.check(HostPort("İ.EXAMPLE", 7000), b"certificate") is False


def test_verifier_with_a_salt_that_starts_with_zero_is_refused_at_load(tmp_path: Path) -> None:
    # A stored verifier whose salt starts with 0x00 loaded, and no login against it could succeed: the
    # srp package sends the salt without that byte, so the client hashed other bytes than the verifier's.
    salt = bytes(range(8))
    with pytest.raises(ValueError, match="zero byte"):
        Verifier.parse(f"{salt.hex()}:{'ab' * 256}")
    assert PakeServer("bob", Verifier(salt, b"\xab" * 256), PakeClient("bob", "x").public).salt == salt[1:]
    data = f'[[users]]\nname = "bob"\nverifier = "{salt.hex()}:{"ab" * 256}"\n'.encode()
    TARGETS["pake_verifier"].check(data)
    path = tmp_path / "server.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=r"users\[0\]\.verifier: the salt starts with a zero byte"):
        config.load(path, config.ServerConfig)
