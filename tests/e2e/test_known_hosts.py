"""Trust on first use: a client that pins nothing records the server's certificate at its first
connection and refuses another certificate on the same address until the owner accepts it.

Two real servers with certificates of their own (separate state directories) take turns on one port.
"""

from __future__ import annotations

from pathlib import Path

from support.procs import PierceProcess, pierce_cli
from support.tunnel import TOKEN, StartPierce, start_client, start_server

#: The client's backoff is 1 s doubling to 20 s plus 20% jitter; the next attempt comes within this.
RETRY_WITHIN_S = 30.0


def fresh_dir(path: Path) -> Path:
    path.mkdir()
    return path


async def server_in(
    pierce: StartPierce, directory: Path, **settings: object
) -> tuple[PierceProcess, int, str]:
    """A server with a state directory (and so a certificate) of its own: (process, port, fingerprint)."""
    proc, port = await start_server(pierce, fresh_dir(directory), stun_port=0, **settings)
    (listening,) = proc.matching("server.listening")
    return proc, port, str(listening["fingerprint"])


async def test_a_changed_certificate_is_refused_until_accepted(pierce: StartPierce, tmp_path: Path) -> None:
    first, port, first_fp = await server_in(pierce, tmp_path / "first")
    client = await start_client(pierce, tmp_path, port, [], name="home")
    state = tmp_path / "home-state" / "client"
    known_hosts = state / "known_hosts"

    (pinned,) = await client.wait_event("tls.pinned")
    assert (pinned["server"], pinned["fingerprint"], pinned["path"]) == (
        f"127.0.0.1:{port}",
        first_fp,
        str(known_hosts),
    )
    await client.wait_event("client.connected")
    assert f"127.0.0.1:{port} {first_fp}\n" in known_hosts.read_text()

    # A visitor from the same state directory checks the same pin (and passes it).
    visit_env = {"PIERCE_STATE_DIR": str(tmp_path / "home-state"), "PIERCE_TOKEN": TOKEN}
    ok_visit = await pierce(
        "visit", "--server", f"127.0.0.1:{port}", "--name", "x", "--secret", "s", env=visit_env
    )
    assert await ok_visit.wait_exit() == 1  # no proxy "x": refused by the server, after the login
    assert ok_visit.matching("visitor.refused")

    # Another server, with another certificate, on the same port.
    await first.stop()
    await client.wait_event("client.disconnected")
    second, second_port, second_fp = await server_in(pierce, tmp_path / "second", bind_port=port)
    assert second_port == port and second_fp != first_fp

    (failed,) = await client.wait_event(
        "client.login_failed", lambda e: "has changed" in e["error"], timeout=RETRY_WITHIN_S
    )
    error = failed["error"]
    assert f"the certificate of server 127.0.0.1:{port} has changed since it was first seen" in error
    assert f"recorded {first_fp} ({known_hosts}, line 3), now {second_fp}" in error
    assert f"pierce trust --forget 127.0.0.1:{port} --state-dir {state}" in error
    assert failed["level"] == "error"
    # The check comes before the login: the second server never saw one.
    assert not second.matching("client.login") and not second.matching("auth.failed")

    bad_visit = await pierce(
        "visit", "--server", f"127.0.0.1:{port}", "--name", "x", "--secret", "s", env=visit_env
    )
    assert await bad_visit.wait_exit() == 1
    (visit_failed,) = bad_visit.matching("visitor.failed")
    assert f"recorded {first_fp}" in visit_failed["error"] and f"now {second_fp}" in visit_failed["error"]

    # The owner accepts the new certificate with the command the message names.
    rc, out, err = await pierce_cli("trust", "--forget", f"127.0.0.1:{port}", "--state-dir", str(state))
    assert rc == 0, err
    assert f"forgot certificate {first_fp} of 127.0.0.1:{port}" in out
    rc, _, err = await pierce_cli("trust", "--forget", f"127.0.0.1:{port}", "--state-dir", str(state))
    assert rc == 1 and "has no pinned certificate" in err

    repinned = await client.wait_event("tls.pinned", count=2, timeout=RETRY_WITHIN_S)
    assert repinned[-1]["fingerprint"] == second_fp
    await client.wait_event("client.connected", count=2, timeout=RETRY_WITHIN_S)
    await second.wait_event("client.login")
    rc, out, _ = await pierce_cli("trust", "--list", "--state-dir", str(state))
    assert (rc, out) == (0, f"127.0.0.1:{port} {second_fp}\n")


async def test_a_pinned_fingerprint_in_the_config_replaces_trust_on_first_use(
    pierce: StartPierce, tmp_path: Path
) -> None:
    _, port, fingerprint = await server_in(pierce, tmp_path / "server")
    client = await start_client(pierce, tmp_path, port, [], name="home", server_fingerprint=fingerprint)
    await client.wait_event("client.connected")
    assert not client.matching("tls.pinned")
    assert not (tmp_path / "home-state" / "client" / "known_hosts").exists()
