"""The Host check of the client's admin API (DNS rebinding, stray address literals)."""

from __future__ import annotations

import pytest

from pierce.local_http import host_header_allowed


@pytest.mark.parametrize(
    ("host", "local", "allowed"),
    [
        ("127.0.0.1:7400", "127.0.0.1", True),
        ("localhost:7400", "127.0.0.1", True),
        ("LOCALHOST", "127.0.0.1", True),
        ("[::1]:7400", "::1", True),
        ("127.8.9.1:7400", "127.0.0.1", True),  # all of 127/8 is loopback
        ("192.168.1.5:7400", "192.168.1.5", True),  # the address the request arrived on
        ("192.168.1.5:7400", "::ffff:192.168.1.5", True),  # ... on a dual-stack socket
        ("[fe80::1%eth0]:7400", "fe80::1%eth0", True),
        ("10.1.2.3:7400", "192.168.1.5", False),  # any other address literal
        ("10.1.2.3:7400", "127.0.0.1", False),
        ("10.1.2.3:7400", None, False),
        ("evil.example:7400", "127.0.0.1", False),  # a name: DNS rebinding
        ("localhost.evil.example", "127.0.0.1", False),
        ("", "127.0.0.1", False),
    ],
)
def test_host_header(host: str, local: str | None, allowed: bool) -> None:
    assert host_header_allowed(host, local) is allowed
