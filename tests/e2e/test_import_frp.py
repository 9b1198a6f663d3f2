"""`pierce import-frp` round trip: frp configs converted, served by real pierce processes, bytes through."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.procs import pierce_cli
from support.streams import duplex_service, duplex_visit, payload, tcp_server
from support.tunnel import TOKEN

FRPS_TOML = f"""
bindAddr = "127.0.0.1"
bindPort = 0
transport.tls.force = true
auth.method = "token"
auth.token = "{TOKEN}"
"""

FRPC_INI = """
[common]
server_addr = 127.0.0.1
server_port = {server_port}
token = {token}

[svc]
type = tcp
local_ip = 127.0.0.1
local_port = {local_port}
remote_port = 0
use_encryption = true
use_compression = true
"""

FRPC_TOML = """
serverAddr = "127.0.0.1"
serverPort = {server_port}
auth.token = "{token}"

[[proxies]]
name = "svc"
type = "tcp"
localIP = "127.0.0.1"
localPort = {local_port}
transport.useCompression = true
"""


async def _convert(frp_file: Path) -> Path:
    code, out, err = await pierce_cli("import-frp", str(frp_file))
    assert code == 0, err
    converted = frp_file.with_name(f"{frp_file.stem}.pierce.toml")
    converted.write_text(out)
    return converted


@pytest.mark.parametrize("client_side", ["converted-ini", "frpc-toml-read-directly"])
async def test_converted_configs_carry_tcp_traffic(pierce, tmp_path: Path, client_side: str) -> None:
    frps = tmp_path / "frps.toml"
    frps.write_text(FRPS_TOML)
    server = await pierce("server", "-c", str(await _convert(frps)))
    (ready,) = await server.wait_event("server.listening")
    down, up = payload(1 << 20, 31), payload(1 << 20, 32)
    service, service_got = duplex_service(down)
    async with tcp_server(service) as local:
        fill = {"server_port": ready["port"], "token": TOKEN, "local_port": local.rpartition(":")[2]}
        if client_side == "converted-ini":
            frpc = tmp_path / "frpc.ini"
            frpc.write_text(FRPC_INI.format(**fill))
            client = await pierce("client", "-c", str(await _convert(frpc)))
        else:
            frpc = tmp_path / "frpc.toml"
            frpc.write_text(FRPC_TOML.format(**fill))
            client = await pierce("client", "-c", str(frpc))
        (proxy,) = await client.wait_event("proxy.ready", lambda e: e.get("proxy") == "svc")
        got_down = await duplex_visit("127.0.0.1", int(proxy["remote_port"]), up)
        got_up = await service_got
    assert got_down == (hashlib.sha256(down).hexdigest(), len(down))
    assert got_up == (hashlib.sha256(up).hexdigest(), len(up))
