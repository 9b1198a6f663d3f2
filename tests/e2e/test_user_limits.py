"""Per-user limits from ``[[users]]``: max_clients, max_proxies, allow_ports and bandwidth_limit, with
real `pierce server` / `pierce client` processes on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.http_services import web_service
from support.procs import PierceProcess
from support.streams import MiB, duplex_service, duplex_visit, echo, free_port, payload, tcp_server
from support.tunnel import start_client, start_server
from support.web import curl, http_proxy, ready, resolve, vhost_server
from test_server_web import get_json
from test_tunnel_tcp import tcp_proxy

from pierce.bandwidth import parse_rate

ALICE = {"name": "alice", "token": "alice-token-6b1e9f4c2a7d5e08"}


async def alice_client(
    pierce: Any, tmp_path: Path, port: int, proxies: list[dict[str, Any]], name: str
) -> PierceProcess:
    return await start_client(pierce, tmp_path, port, proxies, name=name, user="alice", token=ALICE["token"])


def is_proxy(name: str) -> Any:
    return lambda e: e.get("proxy") == name


async def test_a_client_over_max_clients_is_refused_and_keeps_trying_until_a_place_frees(
    pierce, tmp_path: Path
) -> None:
    server, port = await start_server(pierce, tmp_path, stun_port=0, users=[{**ALICE, "max_clients": 1}])
    first = await alice_client(pierce, tmp_path, port, [], "laptop")
    await first.wait_event("client.connected")

    second = await alice_client(pierce, tmp_path, port, [], "desktop")
    refused = await second.wait_event("client.login_failed", count=2, timeout=20)  # refused, and again
    for failed in refused:
        assert "already has 1 client(s) logged in (max_clients = 1)" in failed["error"], failed
    assert second.proc.returncode is None and not second.matching("client.gave_up")
    assert not second.matching("client.connected")
    logged, *_ = await server.wait_event("login.refused", lambda e: e.get("client_id") == "desktop")
    assert "max_clients = 1" in logged["error"]

    await first.stop()
    await server.wait_event("client.gone", lambda e: e.get("client_id") == "laptop")
    (connected,) = await second.wait_event("client.connected", timeout=30)
    assert connected["user"] == "alice"
    assert not first.matching("client.disconnected")  # the first was never kicked off
    assert not server.matching("login.blocked")  # refusals over the limit are not failed logins


async def test_max_proxies_counts_all_of_a_users_clients_and_the_api_shows_the_use(
    pierce, tmp_path: Path
) -> None:
    async with tcp_server(echo) as local:
        web_port = free_port()
        alice = {
            **ALICE,
            "max_proxies": 2,
            "max_clients": 3,
            "bandwidth_limit": "4MB",
            "allow_ports": ["20000-60000"],
        }
        _, port = await start_server(
            pierce, tmp_path, stun_port=0, users=[alice], web={"addr": "127.0.0.1", "port": web_port}
        )
        proxies = [tcp_proxy(name, local) for name in ("one", "two", "three")]
        first = await alice_client(pierce, tmp_path, port, proxies, "laptop")
        await first.wait_event("proxy.ready", count=2)
        (refused,) = await first.wait_event("proxy.refused")
        assert refused["proxy"] == "three"
        assert refused["error"].startswith("limit_reached: ") and "max_proxies = 2" in refused["error"]

        # The second client of the same user finds the two places taken; the default user has no limit.
        second = await alice_client(pierce, tmp_path, port, [tcp_proxy("four", local)], "desktop")
        (refused,) = await second.wait_event("proxy.refused")
        assert "max_proxies = 2" in refused["error"]
        other = await start_client(pierce, tmp_path, port, [tcp_proxy("five", local)], name="other")
        await other.wait_event("proxy.ready")

        users = {u["name"]: u for u in await get_json(f"http://127.0.0.1:{web_port}/api/users")}
    assert users["alice"] | {"connections": 0, "bytes_in": 0, "bytes_out": 0} == {
        "name": "alice",
        "clients": 2,
        "proxies": 2,
        "connections": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "max_clients": 3,
        "max_proxies": 2,
        "allow_ports": ["20000-60000"],
        "bandwidth_limit": 4 * MiB,
        "dropped_datagrams_in": 0,
        "dropped_datagrams_out": 0,
    }
    assert users["default"]["proxies"] == 1 and users["default"]["max_proxies"] == 0


async def test_a_users_allow_ports_narrow_the_servers(pierce, tmp_path: Path) -> None:
    outside, inside = free_port(), free_port()
    async with tcp_server(echo) as local:
        _, port = await start_server(
            pierce,
            tmp_path,
            stun_port=0,
            allow_ports=[str(outside), str(inside)],
            users=[{**ALICE, "allow_ports": [str(inside)]}],
        )
        proxies = [tcp_proxy("outside", local, outside), tcp_proxy("any", local)]
        alice = await alice_client(pierce, tmp_path, port, proxies, "laptop")
        (refused,) = await alice.wait_event("proxy.refused", is_proxy("outside"))
        assert refused["error"] == (
            f"port_not_allowed: port {outside} is not allowed for user 'alice' (its allow_ports: {inside})"
        )
        (ready,) = await alice.wait_event("proxy.ready", is_proxy("any"))
        assert ready["remote_port"] == inside  # port 0: picked from the ports both lists allow

        # Another user (no allow_ports of its own) may take the port alice may not.
        other = await start_client(pierce, tmp_path, port, [tcp_proxy("outside", local, outside)], name="o")
        (taken,) = await other.wait_event("proxy.ready")
        assert taken["remote_port"] == outside


RATE = "2MB"


@pytest.mark.parametrize("encrypt", [True, False], ids=["tls-data", "plain-data"])
async def test_a_users_bandwidth_is_shared_by_its_proxies_each_way(
    pierce, tmp_path: Path, encrypt: bool
) -> None:
    """Two proxies of one user with bandwidth_limit = 2 MiB/s move 6 MiB each way each at once: both
    directions together take their share of time, within 10 % of the rate, and every byte arrives.
    (The user's bucket holds 0.25 s of the rate, `pierce.bandwidth.DATAGRAM_BURST_S`: 12 MiB each way
    keep that burst well within the 10 %.)"""
    size = 6 * MiB
    downs = [payload(size, 51), payload(size, 52)]
    ups = [payload(size, 53), payload(size, 54)]
    (svc_a, got_a), (svc_b, got_b) = duplex_service(downs[0]), duplex_service(downs[1])
    async with tcp_server(svc_a) as local_a, tcp_server(svc_b) as local_b:
        transport = {"encrypt_data": encrypt}
        users = [{**ALICE, "bandwidth_limit": RATE}]
        _, port = await start_server(pierce, tmp_path, stun_port=0, users=users, transport=transport)
        client = await start_client(
            pierce,
            tmp_path,
            port,
            [tcp_proxy("a", local_a), tcp_proxy("b", local_b)],
            user="alice",
            token=ALICE["token"],
            transport=transport,
        )
        ready = await client.wait_event("proxy.ready", count=2)
        ports = {e["proxy"]: int(e["remote_port"]) for e in ready}
        uploaded: list[float] = []  # when each service had read its whole upload
        for got in (got_a, got_b):
            got.add_done_callback(lambda _: uploaded.append(time.monotonic()))
        started = time.monotonic()
        got_down = await asyncio.gather(
            duplex_visit("127.0.0.1", ports["a"], ups[0]), duplex_visit("127.0.0.1", ports["b"], ups[1])
        )
        down_s = time.monotonic() - started
        got_up = await asyncio.wait_for(asyncio.gather(got_a, got_b), 30)
        up_s = max(uploaded) - started
    assert list(got_down) == [(hashlib.sha256(d).hexdigest(), size) for d in downs]
    assert list(got_up) == [(hashlib.sha256(u).hexdigest(), size) for u in ups]
    rate, total = parse_rate(RATE), 2 * size
    print(f"down {total / down_s / rate:.3f}x, up {total / up_s / rate:.3f}x of the limit")
    # Shared: both proxies together stay at the user's rate (separate limits would give twice it). The
    # floor only says the limit is not far stricter than asked; a busy machine may run a little under it.
    assert 0.4 * rate <= total / down_s <= 1.1 * rate, total / down_s / rate
    assert 0.4 * rate <= total / up_s <= 1.1 * rate, total / up_s / rate


async def test_an_http_proxy_is_held_to_its_users_bandwidth_each_way(pierce, tmp_path: Path) -> None:
    """The HTTP engine moves the bytes itself: a download and an upload of 10 MiB through an http proxy
    of a user limited to 2 MiB/s each take their share of time (within 10 %), and arrive intact."""
    size, domain = 10 * MiB, "nas.example.com"
    async with web_service("nas") as (web_port, _):
        _, port, http_port = await vhost_server(
            pierce, tmp_path, stun_port=0, users=[{**ALICE, "bandwidth_limit": RATE}]
        )
        client = await alice_client(
            pierce, tmp_path, port, [http_proxy("nas", web_port, custom_domains=[domain])], "laptop"
        )
        await ready(client, "nas")
        base = f"http://{domain}:{http_port}"
        down_file, up_file = tmp_path / "down.bin", tmp_path / "up.bin"
        up_file.write_bytes(payload(size, 62))
        timing = ["-w", "\n%{time_pretransfer} %{time_total}", *resolve(domain, http_port)]
        code, out, err = await curl(*timing, "-o", str(down_file), f"{base}/download?size={size}&seed=61")
        assert code == 0, err
        down_s = transfer_s(out)
        up = ["-H", "Expect:", "--data-binary", f"@{up_file}"]  # no wait for "100 Continue"
        code, out, err = await curl(*timing, *up, f"{base}/upload")
        assert code == 0, err
        up_s = transfer_s(out)
        out = out.rpartition("\n")[0]
    assert hashlib.sha256(down_file.read_bytes()).digest() == hashlib.sha256(payload(size, 61)).digest()
    answer = json.loads(out)
    assert (answer["sha256"], answer["size"]) == (hashlib.sha256(up_file.read_bytes()).hexdigest(), size)
    rate = parse_rate(RATE)
    print(f"down {size / down_s / rate:.3f}x, up {size / up_s / rate:.3f}x of the limit")
    assert 0.9 * rate <= size / down_s <= 1.1 * rate, size / down_s / rate
    assert 0.9 * rate <= size / up_s <= 1.1 * rate, size / up_s / rate


def transfer_s(curl_out: str) -> float:
    """Seconds curl spent on the transfer itself (from ``-w "%{time_pretransfer} %{time_total}"``)."""
    pretransfer, total = curl_out.rpartition("\n")[2].split()
    return float(total) - float(pretransfer)
