"""Running as a service: log lines a file or the journal can take, a client that gives up on a wrong
token but never on the network, and the systemd units shipped in the package."""

from __future__ import annotations

import re
from pathlib import Path

from support.streams import free_port
from support.tunnel import TOKEN, start_client, start_server, write_toml

#: A plain log line: date, time, level, message (nothing else may start a line).
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S")

#: Longer than any terminal: rich wraps such an event over several lines.
LONG_NAME = "a-proxy-with-a-name-longer-than-any-terminal-is-wide-" + "x" * 120


def tcp_proxy(name: str) -> dict[str, object]:
    return {"type": "tcp", "name": name, "local_ip": "127.0.0.1", "local_port": 9, "remote_port": 0}


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


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path
