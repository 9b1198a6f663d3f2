"""The client's admin API and hot reload, with real `pierce server`/`pierce client` processes.

`pierce client reload|status|stop -c client.toml` run as real processes too. A long transfer through the
first proxy spans every reload and its bytes are checked with SHA-256 on both sides at the end.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.procs import PierceProcess, pierce_cli
from support.tunnel import TOKEN, start_server, write_toml
from test_map_tcp import CHUNK, echo, payload, send_all, tcp_server

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_proxy(name: str, local: str) -> dict[str, Any]:
    host, _, port = local.rpartition(":")
    return {"type": "tcp", "name": name, "local_ip": host, "local_port": int(port), "remote_port": 0}


@dataclass
class ClientSetup:
    path: Path
    settings: dict[str, Any]
    proc: PierceProcess

    def write(self, proxies: list[dict[str, Any]]) -> None:
        write_toml(self.path, {**self.settings, "proxies": proxies})


async def start_admin_client(
    pierce: Any, tmp_path: Path, server_port: int, proxies: list[dict[str, Any]], **extra: Any
) -> ClientSetup:
    settings = {
        "server_addr": "127.0.0.1",
        "server_port": server_port,
        "token": TOKEN,
        "client_id": "admin-test",
        "admin_addr": "127.0.0.1",
        "admin_port": free_port(),
        "state_dir": str(tmp_path / "client-state"),  # `pierce client status` finds the admin token here
        **extra,
    }
    path = tmp_path / "client.toml"
    write_toml(path, {**settings, "proxies": proxies})
    proc = await pierce("client", "-c", str(path))
    await proc.wait_event("admin.listening")
    return ClientSetup(path, settings, proc)


async def proxy_port(client: PierceProcess, name: str, count: int = 1) -> int:
    ready = await client.wait_event("proxy.ready", lambda e: e.get("proxy") == name, count=count)
    return int(ready[-1]["remote_port"])


async def echo_roundtrip(port: int, size: int = 256 * 1024, seed: int = 1) -> None:
    data = payload(size, seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await send_all(writer, data)
    writer.write_eof()
    back = await reader.read(-1)
    writer.close()
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()


@dataclass
class HashingEcho:
    """A local service that echoes and hashes what it receives; one digest per finished connection."""

    digests: asyncio.Queue[tuple[str, int]] = field(default_factory=asyncio.Queue)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h, total = hashlib.sha256(), 0
        try:
            while data := await reader.read(CHUNK):
                h.update(data)
                total += len(data)
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        finally:
            writer.close()
            self.digests.put_nowait((h.hexdigest(), total))


class LongTransfer:
    """A visitor connection that streams a payload in two halves and hashes the echo as it arrives."""

    def __init__(self, port: int, data: bytes) -> None:
        self.port, self.data = port, data
        self.received = 0
        self._progress = asyncio.Condition()
        self._hash = hashlib.sha256()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> tuple[str, int]:
        while chunk := await self.reader.read(CHUNK):
            self._hash.update(chunk)
            async with self._progress:
                self.received += len(chunk)
                self._progress.notify_all()
        return self._hash.hexdigest(), self.received

    async def send(self, start: int, end: int) -> None:
        await send_all(self.writer, self.data[start:end])
        async with asyncio.timeout(30), self._progress:
            await self._progress.wait_for(lambda: self.received >= end)

    async def finish(self) -> tuple[str, int]:
        self.writer.write_eof()
        async with asyncio.timeout(30):
            got = await self._reading
        self.writer.close()
        return got


@pytest.fixture
async def second_service() -> AsyncIterator[str]:
    async with tcp_server(echo) as local:
        yield local


async def test_reload_through_admin_api_during_a_transfer(
    pierce, tmp_path: Path, second_service: str
) -> None:
    size = 32 * MiB
    data = payload(size, 41)
    service = HashingEcho()
    async with tcp_server(service) as first_local:
        _, server_port = await start_server(pierce, tmp_path)
        first = tcp_proxy("first", first_local)
        setup = await start_admin_client(pierce, tmp_path, server_port, [first])
        client = setup.proc
        first_port = await proxy_port(client, "first")

        transfer = LongTransfer(first_port, data)
        await transfer.open()
        await transfer.send(0, size // 2)  # half of it is through, the connection stays open

        # Add a proxy: the CLI prints what changed, the new proxy becomes reachable.
        setup.write([first, tcp_proxy("second", second_service)])
        rc, out, err = await pierce_cli("client", "reload", "-c", str(setup.path))
        assert rc == 0, err
        assert json.loads(out) == {"added": ["second"], "removed": [], "changed": []}
        second_port = await proxy_port(client, "second")
        await echo_roundtrip(second_port, seed=2)

        # A broken file: exit code 1, the problem names the file and the key; the running config stays.
        setup.path.write_text(
            setup.path.read_text().replace(f"local_port = {first['local_port']}", 'local_port = "x"')
        )
        rc, out, err = await pierce_cli("client", "reload", "-c", str(setup.path))
        assert rc == 1
        assert f"{setup.path}: proxies[0].local_port: expected an integer" in err, err
        await client.wait_event("client.reload_failed")
        await echo_roundtrip(first_port, seed=3)
        await echo_roundtrip(second_port, seed=4)

        # status: JSON with both proxies running and the long transfer counted.
        rc, out, err = await pierce_cli("client", "status", "-c", str(setup.path))
        assert rc == 0, err
        status = json.loads(out)
        assert status["connected"] is True and status["run_id"]
        assert status["server"] == f"127.0.0.1:{server_port}"
        assert {p["name"]: (p["state"], p["remote_port"]) for p in status["proxies"]} == {
            "first": ("running", first_port),
            "second": ("running", second_port),
        }
        assert status["connections"] >= 1

        # The rest of the transfer, then both ends check every byte.
        await transfer.send(size // 2, size)
        got_back = await transfer.finish()
        async with asyncio.timeout(15):
            got_by_service = await service.digests.get()
            while got_by_service[1] != size:  # skip the short round trips through the same service
                got_by_service = await service.digests.get()
        want = (hashlib.sha256(data).hexdigest(), size)
        assert got_by_service == want
        assert got_back == want

        # stop: the client answers, then exits 0.
        rc, out, err = await pierce_cli("client", "stop", "-c", str(setup.path))
        assert rc == 0, err
        assert json.loads(out) == {"stopping": True}
        assert await client.wait_exit() == 0


async def test_sighup_reload_and_a_removed_proxy_frees_its_port(
    pierce, tmp_path: Path, second_service: str
) -> None:
    async with tcp_server(echo) as first_local:
        server, server_port = await start_server(pierce, tmp_path)
        first = tcp_proxy("first", first_local)
        setup = await start_admin_client(pierce, tmp_path, server_port, [first])
        client = setup.proc
        first_port = await proxy_port(client, "first")

        setup.write([first, tcp_proxy("second", second_service)])
        client.proc.send_signal(signal.SIGHUP)
        (reloaded,) = await client.wait_event("client.reloaded")
        assert reloaded["added"] == ["second"]
        second_port = await proxy_port(client, "second")
        await echo_roundtrip(second_port, seed=5)

        # A broken file on SIGHUP is logged, and nothing changes.
        setup.path.write_text("this is = not [toml\n")
        client.proc.send_signal(signal.SIGHUP)
        (failed,) = await client.wait_event("client.reload_failed")
        assert str(setup.path) in failed["error"]

        # Remove "second" through the API: the server closes its public port.
        setup.write([first])
        rc, out, err = await pierce_cli("client", "reload", "-c", str(setup.path))
        assert rc == 0, err
        assert json.loads(out) == {"added": [], "removed": ["second"], "changed": []}
        await server.wait_event("proxy.closed", lambda e: e.get("proxy") == "second")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", second_port)
        await echo_roundtrip(first_port, seed=6)


def admin_request(
    port: int, action: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request to the admin API (GET for status, POST otherwise): (status, headers, body)."""
    method = "GET" if action == "status" else "POST"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/{action}",
        method=method,
        data=b"" if method == "POST" else None,
        headers=headers or {},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_admin_api_refuses_web_pages(pierce, tmp_path: Path) -> None:
    _, server_port = await start_server(pierce, tmp_path)
    setup = await start_admin_client(pierce, tmp_path, server_port, [])
    port = setup.settings["admin_port"]
    token = (tmp_path / "client-state" / "admin.token").read_text().strip()
    good = {"Authorization": f"Bearer {token}"}

    async def post(headers: dict[str, str]) -> int:
        status, _, _ = await asyncio.to_thread(admin_request, port, "stop", {**good, **headers})
        return status

    assert await post({"Origin": "http://evil.example"}) == 403
    assert await post({"Host": "evil.example:80"}) == 403
    # An address literal that is neither loopback nor where the request arrived is no local caller either.
    assert await post({"Host": f"10.1.2.3:{port}"}) == 403
    assert setup.proc.proc.returncode is None
    rc, _, err = await pierce_cli("client", "status", "-c", str(setup.path))
    assert rc == 0, err


async def test_admin_api_needs_its_credential(pierce, tmp_path: Path) -> None:
    """Without the generated token (or with a wrong one) every endpoint answers 401 and does nothing."""
    _, server_port = await start_server(pierce, tmp_path)
    setup = await start_admin_client(pierce, tmp_path, server_port, [])
    port = setup.settings["admin_port"]
    token_file = tmp_path / "client-state" / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    (listening,) = setup.proc.matching("admin.listening")
    assert listening["path"] == str(token_file)
    token = token_file.read_text().strip()
    assert len(token) >= 22

    wrong = [
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": basic("admin", token)},  # the token is a bearer token, not a password
        {"Authorization": token},
    ]
    for action in ("status", "reload", "stop"):
        for headers in wrong:
            status, response_headers, body = await asyncio.to_thread(admin_request, port, action, headers)
            assert status == 401, (action, headers, body)
            assert response_headers["WWW-Authenticate"] == 'Bearer realm="pierce client admin"'
            assert b'"snapshot"' not in body and b"run_id" not in body
    assert setup.proc.proc.returncode is None
    assert not setup.proc.matching("client.stopping")

    status, _, body = await asyncio.to_thread(
        admin_request, port, "status", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200 and json.loads(body)["client_id"] == "admin-test"
    rc, out, err = await pierce_cli("client", "status", "-c", str(setup.path))
    assert rc == 0, err
    assert json.loads(out)["client_id"] == "admin-test"

    # The CLI finds the token in the state directory: a wrong one there is refused like any other.
    token_file.write_text("not-the-token\n")
    rc, out, err = await pierce_cli("client", "stop", "-c", str(setup.path))
    assert rc == 1
    assert "error: stop: the admin API needs its credential" in err
    token_file.write_text(token + "\n")
    rc, out, err = await pierce_cli("client", "stop", "-c", str(setup.path))
    assert rc == 0, err
    assert await setup.proc.wait_exit() == 0


async def test_admin_user_and_password_from_the_config(pierce, tmp_path: Path) -> None:
    """With ``admin_password`` set, HTTP basic auth with those credentials; no token is generated."""
    _, server_port = await start_server(pierce, tmp_path)
    setup = await start_admin_client(
        pierce, tmp_path, server_port, [], admin_user="ops", admin_password="correct-Kq7vB2mN9pL4"
    )
    port = setup.settings["admin_port"]
    assert not (tmp_path / "client-state" / "admin.token").exists()
    for headers in (
        {},
        {"Authorization": basic("ops", "wrong")},
        {"Authorization": basic("admin", "correct-Kq7vB2mN9pL4")},
    ):
        status, response_headers, _ = await asyncio.to_thread(admin_request, port, "status", headers)
        assert status == 401
        assert response_headers["WWW-Authenticate"] == 'Basic realm="pierce client admin"'
    status, _, _ = await asyncio.to_thread(
        admin_request, port, "status", {"Authorization": basic("ops", "correct-Kq7vB2mN9pL4")}
    )
    assert status == 200
    rc, out, err = await pierce_cli("client", "reload", "-c", str(setup.path))
    assert rc == 0, err
    assert json.loads(out) == {"added": [], "removed": [], "changed": []}
