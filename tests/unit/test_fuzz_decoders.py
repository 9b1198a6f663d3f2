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
from support.fuzz_targets import FRP_SUFFIXES, TARGETS, inputs

from pierce import proxy_protocol
from pierce.frpimport import convert_file
from pierce.protocol import chunks, frames, mux
from pierce.protocol.errors import FrameTooLarge, ProtocolError
from pierce.proxy_protocol import ProxyProtocolError
from pierce.vhost import sni

#: Examples per target: the file-reading ones cost milliseconds each, the codecs microseconds.
EXAMPLES = {"config": 60, "frp_import": 120}


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
