"""Identities: what one user owns no other user can take, route to, visit or disconnect, and one
user's own clients never kick each other off.

Real server and client processes on loopback, two users from ``[[users]]``, curl as the browser.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from helpers.http_services import web_service as served
from support.streams import echo, free_port, payload, tcp_server
from support.tunnel import start_client, start_server, write_toml
from support.web import curl

ALICE = {"name": "alice", "token": "alice-token-6b1e9f4c2a7d5e08"}
BOB = {"name": "bob", "token": "bob-token-0d3f8a1c7e2b9465"}
SECRET = "vault secret 51c3"
NAS = "nas.example.com"


def proxies(web_port: int, local: str, remote_port: int) -> list[dict[str, Any]]:
    host, _, port = local.rpartition(":")
    return [
        {"type": "tcp", "name": "ssh", "local_ip": host, "local_port": int(port), "remote_port": remote_port},
        {"type": "http", "name": "site", "local_port": web_port, "custom_domains": [NAS]},
        {
            "type": "stcp",
            "name": "vault",
            "local_ip": host,
            "local_port": int(port),
            "secret_key": SECRET,
            "allow_users": ["alice"],
        },
    ]


async def page(http_port: int) -> str:
    """Which service answers for NAS (or the status code when none does)."""
    code, out, err = await curl(
        "-w", "\n%{http_code}", "--resolve", f"{NAS}:{http_port}:127.0.0.1", f"http://{NAS}:{http_port}/"
    )
    assert code == 0, err
    body, _, status = out.rpartition("\n")
    return json.loads(body)["service"] if status == "200" else status


async def test_another_user_can_take_nothing_of_alices(pierce, tmp_path: Path) -> None:
    http_port, ssh_port = free_port(), free_port()
    async with (
        served("alice-site") as (alice_web, _),
        served("bob-site") as (bob_web, _),
        tcp_server(echo) as local,
    ):
        server, port = await start_server(
            pierce, tmp_path, stun_port=0, vhost_http_port=http_port, users=[ALICE, BOB]
        )
        alice = await start_client(
            pierce,
            tmp_path,
            port,
            proxies(alice_web, local, ssh_port),
            name="home",
            user="alice",
            token=ALICE["token"],
        )
        await alice.wait_event("proxy.ready", count=3)

        # Bob logs in with alice's client id and asks for her names, port and domain.
        bob_proxies = proxies(bob_web, local, ssh_port)
        bob_proxies.append(
            {"type": "http", "name": "bob-site", "local_port": bob_web, "custom_domains": [NAS]}
        )
        bob = await start_client(
            pierce, tmp_path, port, bob_proxies, name="home", user="bob", token=BOB["token"]
        )
        refused = {e["proxy"]: e for e in await bob.wait_event("proxy.refused", count=4)}
        for name in ("ssh", "site", "vault"):
            assert refused[name]["error"].startswith("duplicate_name: "), refused[name]
        assert "is taken by another user" in refused["ssh"]["error"]
        assert refused["bob-site"]["error"].startswith("domain_taken: ")
        for event in refused.values():  # nothing says whose it is
            assert "alice" not in event["error"] and "home" not in event["error"], event

        # Alice's session was not touched: no replacement, no disconnection, her site still hers.
        assert not server.matching("client.replaced")
        assert not alice.matching("client.disconnected")
        assert {await page(http_port) for _ in range(10)} == {"alice-site"}

        # Bob's visitor knows the secret but is not in allow_users: the user the server authenticated
        # counts, not the client id it chose ("home", alice's).
        visitor = await pierce(
                "visit", "--server", f"127.0.0.1:{port}", "--user", "bob", "--client-id", "home",
                "--name", "vault", "--secret", SECRET, env={"PIERCE_TOKEN": BOB["token"]},
            )  # fmt: skip
        assert await visitor.wait_exit() == 1
        (no,) = visitor.matching("visitor.refused")
        assert no["code"] == "not_allowed" and "'bob'" in no["reason"]

        # Alice goes away: her names, port and domain stay reserved for her (claim_hold_s).
        await alice.stop()
        await server.wait_event("client.gone", lambda e: e.get("client_id") == "home")
        await bob.stop()
        again = await start_client(
            pierce, tmp_path, port, bob_proxies, name="bob-2", user="bob", token=BOB["token"]
        )
        refused = {e["proxy"]: e for e in await again.wait_event("proxy.refused", count=4)}
        assert "reserved for another user" in refused["ssh"]["error"]
        assert "reserved for another user" in refused["bob-site"]["error"]
        assert not again.matching("proxy.ready")
        assert await page(http_port) == "404"  # nobody's page, certainly not bob's


async def test_one_users_clients_do_not_kick_each_other_off(pierce, tmp_path: Path) -> None:
    """A second device of the same user with the same client id is refused while the first answers; it
    takes over only once the first stops answering (here: stopped with SIGSTOP, its socket still open)."""
    async with tcp_server(echo) as local:
        host, _, lport = local.rpartition(":")
        tcp = [{"type": "tcp", "name": "echo", "local_ip": host, "local_port": int(lport), "remote_port": 0}]
        server, port = await start_server(pierce, tmp_path, stun_port=0, users=[ALICE])
        first = await start_client(
            pierce, tmp_path, port, tcp, name="laptop", user="alice", token=ALICE["token"]
        )
        (ready,) = await first.wait_event("proxy.ready")
        second = await start_client(
            pierce, tmp_path, port, tcp, name="laptop", user="alice", token=ALICE["token"]
        )
        (kicked,) = await second.wait_event("client.login_failed")
        assert "is already connected and answering" in kicked["error"]
        # The first client kept its session and its port the whole time.
        assert not server.matching("client.replaced")
        assert not first.matching("client.disconnected")
        assert await _echo(int(ready["remote_port"]))

        # The first stops answering (its TCP connection stays up): the second's next login probes it,
        # finds it silent and takes the client id over.
        first.proc.send_signal(signal.SIGSTOP)
        try:
            (replaced,) = await server.wait_event("client.replaced", timeout=40)
            assert replaced["client_id"] == "laptop" and replaced["user"] == "alice"
            (taken,) = await second.wait_event("proxy.ready", timeout=20)
            assert await _echo(int(taken["remote_port"]))
        finally:
            first.proc.send_signal(signal.SIGCONT)


async def _echo(port: int) -> bool:
    data = payload(64 * 1024, 5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    return hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


async def test_a_user_configured_by_verifier_logs_in_and_a_wrong_token_does_not(
    pierce, tmp_path: Path
) -> None:
    """`pierce verifier` prints what server.toml holds instead of the token; clients log in as before."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pierce", "verifier", "carol",
        env={**os.environ, "PIERCE_TOKEN": "carol-token-a81f3e6d29c4b705"},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    key, _, value = out.decode().strip().partition(" = ")
    assert key == "verifier" and "carol-token" not in value
    carol = {"name": "carol", "verifier": value.strip('"')}
    server, port = await start_server(pierce, tmp_path, stun_port=0, users=[carol], token="")
    async with tcp_server(echo) as local:
        host, _, lport = local.rpartition(":")
        tcp = [{"type": "tcp", "name": "echo", "local_ip": host, "local_port": int(lport), "remote_port": 0}]
        good = await start_client(
            pierce, tmp_path, port, tcp, name="good", user="carol", token="carol-token-a81f3e6d29c4b705"
        )
        (ready,) = await good.wait_event("proxy.ready")
        assert await _echo(int(ready["remote_port"]))
        bad = await start_client(
            pierce, tmp_path, port, tcp, name="bad", user="carol", token="carol-token-wrong"
        )
        (failed,) = await bad.wait_event("client.login_failed")
        assert "unknown user or wrong token" in failed["error"]
        (logged,) = await server.wait_event("auth.failed")
        assert "carol" in logged["error"]


async def test_a_visitor_logs_in_once_and_then_proves_its_session_key(pierce, tmp_path: Path) -> None:
    """Only a visitor's first connection runs the SRP login; later ones prove a key derived from it."""
    conf = write_toml(
        tmp_path / "server.toml",
        {"bind_addr": "127.0.0.1", "bind_port": 0, "stun_port": 0, "users": [ALICE, BOB]},
    )
    server = await pierce(
        "server", "--log-level", "debug", "-c", str(conf), env={"PIERCE_STATE_DIR": str(tmp_path / "state")}
    )
    port = int((await server.wait_event("server.listening"))[0]["port"])
    async with tcp_server(echo) as local:
        owner = await start_client(
            pierce, tmp_path, port, proxies(1, local, 0)[2:], name="home", user="alice", token=ALICE["token"]
        )
        await owner.wait_event("proxy.ready")
        visitor = await pierce(
            "visit", "--server", f"127.0.0.1:{port}", "--user", "alice", "--name", "vault",
            "--secret", SECRET, env={"PIERCE_TOKEN": ALICE["token"]},
        )  # fmt: skip
        (listening,) = await visitor.wait_event("visitor.listening")
        for _ in range(3):
            assert await _echo(int(listening["port"]))
        logins = await server.wait_event("visitor.login", count=4)
        assert [e["fresh"] for e in logins] == [True, False, False, False]
        assert {e["user"] for e in logins} == {"alice"}
