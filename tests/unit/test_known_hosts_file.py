"""The known_hosts file of trust on first use: its format, its errors, how it is written."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from pierce.addr import HostPort
from pierce.known_hosts import (
    CertificateChanged,
    KnownHosts,
    KnownHostsError,
    Pin,
    parse,
    server_key,
)
from pierce.tls import FingerprintMismatch, certificate_fingerprint

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")

CERT_A = b"certificate A"
CERT_B = b"certificate B"
FP_A = certificate_fingerprint(CERT_A)
FP_B = certificate_fingerprint(CERT_B)
SERVER = HostPort("Tunnel.Example", 7000)


def test_parse_is_tolerant_of_form() -> None:
    hex_upper = FP_A.replace(":", "").upper()
    text = (
        "# a comment\n"
        "\n"
        f"   tunnel.example:7000   sha256:{hex_upper}   \n"
        f"[2001:DB8::1]:7000\t{FP_B}\r\n"
        f"tunnel.example:7000 {FP_A}\n"  # the same pin twice is harmless
    )
    assert parse(text, "f") == {
        "tunnel.example:7000": Pin("tunnel.example:7000", FP_A, 3),
        "[2001:db8::1]:7000": Pin("[2001:db8::1]:7000", FP_B, 4),
    }


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (
            "tunnel.example:7000",
            "line 2: expected HOST:PORT and a SHA-256 fingerprint, got 'tunnel.example:7000'",
        ),
        (f"tunnel.example:7000 {FP_A} extra", "line 2: expected HOST:PORT and a SHA-256 fingerprint"),
        (f"tunnel.example {FP_A}", 'line 2: expected "host:port", got "tunnel.example"'),
        ("tunnel.example:7000 ab:cd", "line 2: a SHA-256 fingerprint has 64 hex digits, got 4"),
        ("tunnel.example:7000 " + "zz" * 32, "line 2: a SHA-256 fingerprint is hex digits"),
        (f"tunnel.example:7000 {FP_B}", "line 2: tunnel.example:7000 is already pinned on line 1"),
    ],
)
def test_parse_errors_name_the_file_and_line(line: str, why: str) -> None:
    with pytest.raises(KnownHostsError) as info:
        parse(f"tunnel.example:7000 {FP_A}\n{line}\n", "/state/known_hosts")
    assert str(info.value).startswith("/state/known_hosts, "), info.value
    assert why in str(info.value)


def test_server_key_lowercases_names_and_brackets_ipv6() -> None:
    assert server_key(SERVER) == "tunnel.example:7000"
    assert server_key(HostPort("::1", 7000)) == "[::1]:7000"


@posix_only
def test_first_use_records_then_the_same_certificate_passes(tmp_path: Path) -> None:
    known = KnownHosts.in_state_dir(tmp_path / "state")
    assert known.check(SERVER, CERT_A) is True
    assert stat.S_IMODE(known.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(known.path.parent.stat().st_mode) == 0o700
    assert f"tunnel.example:7000 {FP_A}\n" in known.path.read_text()
    assert known.path.read_text().startswith("# pierce: server certificates pinned on first use")
    assert known.check(SERVER, CERT_A) is False
    assert known.check(HostPort("tunnel.example", 7001), CERT_B) is True  # another port, another server
    assert set(known.load()) == {"tunnel.example:7000", "tunnel.example:7001"}


def test_a_changed_certificate_is_refused_with_what_changed_and_how_to_accept(tmp_path: Path) -> None:
    known = KnownHosts.in_state_dir(tmp_path / "my state")
    known.check(SERVER, CERT_A)
    with pytest.raises(CertificateChanged) as info:
        known.check(SERVER, CERT_B)
    message = str(info.value)
    assert isinstance(info.value, FingerprintMismatch)  # the client treats it as a pinning failure
    assert f"recorded {FP_A} ({known.path}, line 3), now {FP_B}" in message
    assert f"pierce trust --forget tunnel.example:7000 --state-dir '{tmp_path / 'my state'}'" in message
    assert "nothing was sent" in message


def test_forget_keeps_comments_and_other_servers(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# mine\nother:1 {FP_B}\ntunnel.example:7000 {FP_A}\n# end")
    known = KnownHosts(path)
    assert known.forget(SERVER) == Pin("tunnel.example:7000", FP_A, 3)
    assert path.read_text() == f"# mine\nother:1 {FP_B}\n# end"
    assert known.forget(SERVER) is None
    assert known.check(SERVER, CERT_B) is True  # then recorded afresh
    assert path.read_text() == f"# mine\nother:1 {FP_B}\n# end\ntunnel.example:7000 {FP_B}\n"


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write leaves the old file whole and no temporary file behind."""
    known = KnownHosts(tmp_path / "known_hosts")
    known.check(SERVER, CERT_A)
    before = known.path.read_bytes()

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KnownHostsError, match="No space left on device"):
        known.check(HostPort("other", 1), CERT_B)
    assert known.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["known_hosts"]


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(KnownHostsError, match="not UTF-8 text"):
        KnownHosts(path).check(SERVER, CERT_A)
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(KnownHostsError, match="larger than"):
        KnownHosts(path).load()
    assert KnownHosts(tmp_path / "absent").load() == {}
