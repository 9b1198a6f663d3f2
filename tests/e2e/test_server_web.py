"""The server's web side (``[web]``): the JSON API, its OpenAPI document and /metrics, with real
`pierce server`/`pierce client` processes on loopback.

The API is checked against its own OpenAPI document by schemathesis (its CLI, as a process, with a
bounded number of examples), /metrics is parsed with `prometheus_client.parser`, and the byte counters
are compared with the bytes a visitor sent through a tcp proxy.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.dashboard import (
    WEB_PASSWORD,
    WEB_USER,
    basic,
    echo_through,
    get_json,
    request,
    start_proxies,
    start_web_server,
    tcp_proxy,
)
from support.procs import pierce_cli
from support.streams import echo, free_port, tcp_server
from support.tunnel import TOKEN, start_client, write_toml

from pierce import __version__

SENT = 300_000 + 17


@pytest.fixture
async def service() -> AsyncIterator[str]:
    async with tcp_server(echo) as addr:
        yield addr


async def test_api_with_real_proxies(pierce, tmp_path: Path, service: str) -> None:
    server, port, base = await start_web_server(pierce, tmp_path)
    client, ports = await start_proxies(
        pierce, tmp_path, port, [tcp_proxy("web-a", service), tcp_proxy("web-b", service)]
    )
    await echo_through(ports["web-a"], SENT)

    info = await get_json(f"{base}/api/serverinfo")
    assert (info["clients"], info["proxies"], info["proxies_by_type"]["tcp"]) == (1, 2, 2)
    assert (info["bytes_in"], info["bytes_out"]) == (SENT, SENT)
    assert info["logins"]["logged_in"] >= 1
    assert info["ports"]["bind_port"] == port

    users = await get_json(f"{base}/api/users")
    assert [(u["name"], u["clients"], u["proxies"]) for u in users] == [("default", 1, 2)]
    clients = await get_json(f"{base}/api/clients")
    assert [(c["client_id"], sorted(c["proxies"])) for c in clients] == [("web-test", ["web-a", "web-b"])]
    assert (clients[0]["version"], clients[0]["path"]) == (__version__, "relay")

    listed = await get_json(f"{base}/api/proxies?type=tcp")
    assert [(p["name"], p["status"], p["remote_port"]) for p in listed] == [
        ("web-a", "online", ports["web-a"]),
        ("web-b", "online", ports["web-b"]),
    ]
    assert await get_json(f"{base}/api/proxies?type=udp") == []
    status, body = await request("GET", f"{base}/api/proxies?type=nope")
    assert status == 400 and "nope" in body["error"]
    status, body = await request("GET", f"{base}/api/proxies?typo=tcp")
    assert status == 400 and "typo" in body["error"]

    one = await get_json(f"{base}/api/proxies/web-a")
    assert (one["stats"]["bytes_in"], one["stats"]["bytes_out"], one["stats"]["total_connections"]) == (
        SENT,
        SENT,
        1,
    )
    traffic = await get_json(f"{base}/api/proxies/web-a/traffic")
    assert traffic["interval_s"] == 60
    assert sum(p["bytes_in"] for p in traffic["points"]) == SENT
    assert sum(p["bytes_out"] for p in traffic["points"]) == SENT
    assert (await request("GET", f"{base}/api/proxies/nothing-here"))[0] == 404

    # The client goes: its proxies stay listed as offline (with their counters) until forgotten.
    await client.stop()
    await server.wait_event("client.gone")
    listed = await get_json(f"{base}/api/proxies")
    assert [(p["name"], p["status"]) for p in listed] == [("web-a", "offline"), ("web-b", "offline")]
    assert listed[0]["stats"]["bytes_in"] == SENT
    status, body = await request("DELETE", f"{base}/api/proxies/offline")
    assert (status, body) == (200, {"removed": ["web-a", "web-b"]})
    assert await get_json(f"{base}/api/proxies") == []
    assert (await request("GET", f"{base}/api/proxies/web-a/traffic"))[0] == 404


async def test_metrics_count_the_bytes_sent(pierce, tmp_path: Path, service: str) -> None:
    server, port, base = await start_web_server(pierce, tmp_path)
    # One login with a wrong token first: it shows as an authentication failure.
    intruder = await start_client(pierce, tmp_path, port, [], name="intruder", token="wrong-" + TOKEN)
    await server.wait_event("auth.failed")
    await intruder.stop()
    client, ports = await start_proxies(pierce, tmp_path, port, [tcp_proxy("metered", service)])
    await echo_through(ports["metered"], SENT)

    status, text = await request("GET", f"{base}/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("proxy", "metered"), ("type", "tcp"), ("user", "default"))
    assert samples["pierce_proxy_bytes_in_total", labels] == SENT
    assert samples["pierce_proxy_bytes_out_total", labels] == SENT
    assert samples["pierce_proxy_accepted_connections_total", labels] == 1
    assert ("pierce_proxy_connections", labels) in samples  # 1 or 0: the server may not have seen the end yet
    assert samples["pierce_clients", ()] == 1
    assert samples["pierce_proxies", (("type", "tcp"),)] == 1
    assert samples["pierce_proxies", (("type", "udp"),)] == 0
    assert samples["pierce_auth_failures_total", ()] >= 1
    assert samples["pierce_refused_connections_total", (("reason", "blocked"),)] == 0
    assert samples["pierce_p2p_attempts_total", ()] == 0
    await client.stop()


async def test_credentials_are_required_when_set(pierce, tmp_path: Path) -> None:
    _, _, base = await start_web_server(pierce, tmp_path, user=WEB_USER, password=WEB_PASSWORD)
    good = basic(WEB_USER, WEB_PASSWORD)
    for path in ("/api/serverinfo", "/api/proxies", "/api/openapi.json", "/metrics"):
        for auth in (None, basic(WEB_USER, "wrong"), basic("other", WEB_PASSWORD), "Bearer x"):
            status, body = await request("GET", base + path, auth=auth)
            assert status == 401, (path, auth, body)
        assert (await request("GET", base + path, auth=good))[0] == 200
    status, _ = await request("DELETE", f"{base}/api/proxies/offline")
    assert status == 401
    document = await get_json(f"{base}/api/openapi.json", auth=good)
    assert document["security"] == [{"basic": []}]


async def test_without_credentials_pages_of_other_sites_are_refused(pierce, tmp_path: Path) -> None:
    _, _, base = await start_web_server(pierce, tmp_path)
    status, _ = await request("GET", f"{base}/api/serverinfo", headers={"Host": "attacker.example"})
    assert status == 403  # DNS rebinding
    status, _ = await request(
        "DELETE", f"{base}/api/proxies/offline", headers={"Origin": "https://attacker.example"}
    )
    assert status == 403  # a cross-site change


@pytest.mark.parametrize("credentials", [False, True], ids=["loopback", "basic-auth"])
async def test_schemathesis_against_the_served_openapi(
    pierce, tmp_path: Path, service: str, credentials: bool
) -> None:
    web = {"user": WEB_USER, "password": WEB_PASSWORD} if credentials else {}
    _, port, base = await start_web_server(pierce, tmp_path, **web)
    client, ports = await start_proxies(pierce, tmp_path, port, [tcp_proxy("fuzzed", service)])
    await echo_through(ports["fuzzed"], 1000)
    argv = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{base}/api/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--workers",
        "1",
        "--seed",
        "1",
        "--no-color",
        *(["--auth", f"{WEB_USER}:{WEB_PASSWORD}"] if credentials else []),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
    )
    async with asyncio.timeout(90):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "7/7" in text or "8/8" in text, text[-3000:]  # every operation was tested
    await client.stop()


async def test_non_loopback_addr_needs_credentials(tmp_path: Path) -> None:
    conf = write_toml(
        tmp_path / "server.toml",
        {"bind_addr": "127.0.0.1", "token": TOKEN, "web": {"addr": "0.0.0.0", "port": free_port()}},
    )
    rc, _, err = await pierce_cli("server", "-c", str(conf), env={"PIERCE_STATE_DIR": str(tmp_path / "s")})
    assert rc != 0
    assert f"{conf}: web.password: expected user and password" in err, err


async def next_state(content: aiohttp.StreamReader) -> Any:
    """The data of the next ``state`` server-sent event."""
    name = ""
    async with asyncio.timeout(15):
        while line := (await content.readline()).decode():
            if line.startswith("event: "):
                name = line.removeprefix("event: ").strip()
            elif line.startswith("data: ") and name == "state":
                return json.loads(line.removeprefix("data: "))
    raise AssertionError("the event stream ended")


async def test_dashboard_page_and_its_live_updates(pierce, tmp_path: Path, service: str) -> None:
    _, port, base = await start_web_server(pierce, tmp_path)
    client, ports = await start_proxies(pierce, tmp_path, port, [tcp_proxy("watched", service)])
    status, page = await request("GET", f"{base}/")
    assert status == 200 and '<script src="dashboard.js">' in page
    status, script = await request("GET", f"{base}/dashboard.js")
    assert status == 200 and 'new EventSource("api/events")' in script

    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{base}/api/events") as resp,
    ):
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        state = await next_state(resp.content)
        assert [(p["name"], p["stats"]["bytes_in"]) for p in state["proxies"]] == [("watched", 0)]
        assert [c["client_id"] for c in state["clients"]] == ["web-test"]
        await echo_through(ports["watched"], SENT)
        while state["proxies"][0]["stats"]["bytes_out"] != SENT:  # the next updates show the traffic
            state = await next_state(resp.content)
        assert state["serverinfo"]["bytes_in"] == SENT
    await client.stop()
