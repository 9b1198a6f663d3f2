"""Running as a service: log lines a file or the journal can take, a client that gives up on a wrong
token but never on the network, and the systemd units shipped in the package."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

import pytest
from support.procs import pierce_cli
from support.streams import echo, free_port, tcp_server
from support.tunnel import TOKEN, start_client, start_server, write_toml

#: A plain log line: date, time, level, message (nothing else may start a line).
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S")

#: Longer than any terminal: rich wraps such an event over several lines.
LONG_NAME = "a-proxy-with-a-name-longer-than-any-terminal-is-wide-" + "x" * 120


#: The client's backoff is 1 s doubling to 20 s plus 20% jitter; a retry comes within this.
RETRY_WITHIN_S = 25.0
#: A refused login is answered within the dial timeout; the client then exits at once.
EXIT_WITHIN_S = 15.0
#: Another token of the strength the server requires.
OTHER_TOKEN = "other-token-Zx4nM8qR2vT6wY9bC3dF7h"


def tcp_proxy(name: str, local: str = "127.0.0.1:9", remote_port: int = 0) -> dict[str, object]:
    host, _, port = local.rpartition(":")
    return {
        "type": "tcp",
        "name": name,
        "local_ip": host,
        "local_port": int(port),
        "remote_port": remote_port,
    }


async def echo_through(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


async def test_logs_that_are_not_a_terminal_are_one_line_per_event(pierce, tmp_path: Path) -> None:
    port = free_port()
    plain = {"COLUMNS": ""}  # rich's width would otherwise come from the environment
    server = await pierce(
        "server", "--bind-addr", "127.0.0.1", "--bind-port", str(port), "--token-file",
        str(_token_file(tmp_path)), env=plain, json_logs=False,
    )  # fmt: skip
    await server.wait_line(lambda line: "listening" in line)
    conf = write_toml(
        tmp_path / "client.toml",
        {"server_addr": "127.0.0.1", "server_port": port, "token": TOKEN, "proxies": [tcp_proxy(LONG_NAME)]},
    )
    client = await pierce("client", "-c", str(conf), env=plain, json_logs=False)
    ready = await client.wait_line(lambda line: "is reachable" in line)
    assert f"proxy {LONG_NAME}: 127.0.0.1:9 is reachable at 127.0.0.1:" in ready
    await server.wait_line(lambda line: LONG_NAME in line)
    for proc in (server, client):
        await proc.stop()
        assert proc.other_lines, proc.argv
        for line in proc.other_lines:
            assert LINE.match(line), f"not one line per event: {proc.other_lines}"

    # --json-logs is unchanged: one JSON object per line, the long name whole.
    _, json_port = await start_server(pierce, tmp_path)
    client = await start_client(pierce, tmp_path, json_port, [tcp_proxy(LONG_NAME)], name="json")
    (ready_event,) = await client.wait_event("proxy.ready")
    assert ready_event["proxy"] == LONG_NAME and LONG_NAME in ready_event["msg"]
    assert client.other_lines == []


@pytest.mark.parametrize("who", [{"token": "not-the-token"}, {"user": "nobody"}], ids=["token", "user"])
async def test_a_first_login_refused_for_the_credentials_exits_1(pierce, tmp_path: Path, who) -> None:
    _, port = await start_server(pierce, tmp_path)
    started = time.monotonic()
    client = await start_client(pierce, tmp_path, port, [tcp_proxy("x")], **who)
    assert await client.wait_exit(EXIT_WITHIN_S) == 1
    assert time.monotonic() - started < EXIT_WITHIN_S
    (failed,) = client.matching("client.login_failed")
    assert "unknown user or wrong token" in failed["error"]
    (gave_up,) = client.matching("client.gave_up")
    assert gave_up["level"] == "error" and gave_up["server"] == f"127.0.0.1:{port}"
    assert gave_up["user"] == who.get("user", "default")
    assert "giving up" in gave_up["msg"] and "check user and token" in gave_up["msg"]
    assert client.matching("client.retry") == []


async def test_a_client_started_before_its_server_retries_until_it_is_up(pierce, tmp_path: Path) -> None:
    port, public = free_port(), free_port()
    async with tcp_server(echo) as local:
        client = await start_client(pierce, tmp_path, port, [tcp_proxy("svc", local, public)])
        # Nothing listens yet: refused, refused, ... and still running.
        failed = await client.wait_event("client.login_failed", count=2, timeout=RETRY_WITHIN_S)
        assert all("Connection refused" in e["error"] for e in failed)
        assert client.proc.returncode is None
        await start_server(pierce, tmp_path, bind_port=port)
        await client.wait_event("proxy.ready", timeout=RETRY_WITHIN_S)
        assert await echo_through(public, b"late server") == b"late server"


async def test_a_refusal_after_a_login_is_retried(pierce, tmp_path: Path) -> None:
    public = free_port()
    async with tcp_server(echo) as local:
        server, port = await start_server(pierce, tmp_path)
        client = await start_client(pierce, tmp_path, port, [tcp_proxy("svc", local, public)])
        await client.wait_event("proxy.ready")
        # The server comes back with another token: refused, logged, retried, not fatal.
        await server.stop()
        server, _ = await start_server(pierce, tmp_path, bind_port=port, token=OTHER_TOKEN)
        await server.wait_event("auth.failed", timeout=RETRY_WITHIN_S)
        (refused,) = await client.wait_event(
            "client.login_failed", lambda e: "wrong token" in e["error"], timeout=RETRY_WITHIN_S
        )
        await client.wait_event("client.retry", lambda e: e["ts"] > refused["ts"])
        assert client.proc.returncode is None and client.matching("client.gave_up") == []
        # ... and its own token again: back in.
        await server.stop()
        await start_server(pierce, tmp_path, bind_port=port)
        await client.wait_event("proxy.ready", count=2, timeout=2 * RETRY_WITHIN_S)
        assert await echo_through(public, b"back") == b"back"


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


#: What both units must say (the issue's list); ``None``: any value.
UNIT_MUST = {
    "Restart": "always",
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    "After": "network-online.target",
    "Wants": "network-online.target",
    "CapabilityBoundingSet": None,
    "AmbientCapabilities": None,
}
#: systemd-analyze security's overall exposure (0 safest, 10 worst) the units stay within.
MAX_EXPOSURE = 2.5


def directives(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.mark.parametrize("role", ["server", "client"])
async def test_systemd_units_verify_and_start_this_pierce(tmp_path: Path, role: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    rc, text, err = await pierce_cli("systemd-unit", role)
    assert rc == 0 and err == ""
    unit = directives(text)
    for key, value in UNIT_MUST.items():
        assert key in unit and (value is None or unit[key] == value), (key, unit.get(key))
    assert unit["StateDirectory"] == f"pierce-{role}"
    assert "--state-dir ${STATE_DIRECTORY}" in unit["ExecStart"]
    program = unit["ExecStart"].split()[0]
    assert Path(program).name == "pierce" and shutil.which(program), program  # the installed entry point
    assert unit["CapabilityBoundingSet"] == ("CAP_NET_BIND_SERVICE" if role == "server" else "")
    # A refused first login of the client, a server that cannot start (status 1): not retried by restarts
    assert unit["RestartPreventExitStatus"].split()[0] == "1"

    path = tmp_path / f"pierce-{role}.service"
    path.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        analyze,
        "verify",
        "--man=no",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, problems = await asyncio.wait_for(proc.communicate(), 60)
    complaints = [line for line in (out + problems).decode().splitlines() if path.name in line]
    assert proc.returncode == 0 and complaints == [], complaints

    proc = await asyncio.create_subprocess_exec(
        analyze,
        "security",
        "--offline=true",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    level = re.search(rb"Overall exposure level for \S+: ([0-9.]+)", out)
    assert level is not None, out[-500:]
    assert float(level.group(1)) <= MAX_EXPOSURE, out.decode()
