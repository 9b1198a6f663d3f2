"""`pierce status`: a running client's state from its admin API and a running server's from its JSON
API, as tables and as JSON, with real `pierce server`/`pierce client` processes on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from support.procs import pierce_cli
from support.streams import free_port
from support.tunnel import start_client, start_server
from test_server_web import WEB_PASSWORD, WEB_USER, echo_through, service, tcp_proxy  # noqa: F401

SENT = 123_457


async def test_status_of_client_and_server(pierce, tmp_path: Path, service: str) -> None:  # noqa: F811
    server, server_port = await start_server(
        pierce,
        tmp_path,
        stun_port=0,
        web={"addr": "127.0.0.1", "port": free_port(), "user": WEB_USER, "password": WEB_PASSWORD},
    )
    await server.wait_event("web.listening")
    admin_port = free_port()
    client = await start_client(
        pierce,
        tmp_path,
        server_port,
        [tcp_proxy("status-echo", service)],
        name="status-test",
        admin_addr="127.0.0.1",
        admin_port=admin_port,
        state_dir=str(tmp_path / "client-state"),
    )
    (ready,) = await client.wait_event("proxy.ready")
    remote_port = int(ready["remote_port"])
    await echo_through(remote_port, SENT)

    client_toml = str(tmp_path / "status-test.toml")
    rc, out, err = await pierce_cli("status", "-c", client_toml, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["client_id"] == "status-test" and doc["connected"] is True
    (proxy,) = doc["proxies"]
    assert (proxy["name"], proxy["state"], proxy["remote_port"]) == ("status-echo", "running", remote_port)

    rc, out, err = await pierce_cli("status", "-c", client_toml, env={"COLUMNS": "200"})
    assert rc == 0, err
    row = next(line for line in out.splitlines() if "status-echo" in line)
    assert "running" in row and f"127.0.0.1:{remote_port}" in row and "relay" in row, out
    assert "connected" in out and "status-test" in out

    server_toml = str(tmp_path / "server.toml")
    rc, out, err = await pierce_cli("status", "--server", "-c", server_toml, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["server"]["clients"] == 1
    (sproxy,) = doc["proxies"]
    assert sproxy["name"] == "status-echo" and sproxy["status"] == "online"
    assert sproxy["stats"]["bytes_in"] == SENT and sproxy["stats"]["bytes_out"] == SENT
    assert [c["client_id"] for c in doc["clients"]] == ["status-test"]
    assert [u["name"] for u in doc["users"]] == ["default"]

    rc, out, err = await pierce_cli("status", "--server", "-c", server_toml, env={"COLUMNS": "200"})
    assert rc == 0, err
    row = next(line for line in out.splitlines() if "status-echo" in line and "online" in line)
    assert "status-test" in row and "120.6 KiB" in row, out

    # --url with the password from the environment; a wrong one is refused with a clear error.
    (listening,) = server.matching("web.listening")
    web_url = f"http://{listening['listen']}"
    rc, out, err = await pierce_cli(
        "status",
        "--server",
        "--url",
        web_url,
        "--user",
        WEB_USER,
        "--json",
        env={"PIERCE_WEB_PASSWORD": WEB_PASSWORD},
    )
    assert rc == 0, err
    assert json.loads(out)["proxies"][0]["name"] == "status-echo"
    rc, out, err = await pierce_cli(
        "status", "--server", "--url", web_url, "--user", WEB_USER, env={"PIERCE_WEB_PASSWORD": "wrong"}
    )
    assert rc == 1 and "the credentials were refused (HTTP 401)" in err, err


async def test_status_says_what_is_missing(tmp_path: Path) -> None:
    conf = tmp_path / "client.toml"
    conf.write_text('server_addr = "127.0.0.1"\ntoken = "x"\n')
    rc, _, err = await pierce_cli("status", "-c", str(conf))
    assert rc == 2 and "admin_port: the admin API is off" in err, err
    server_conf = tmp_path / "server.toml"
    server_conf.write_text('token = "x"\n')
    rc, _, err = await pierce_cli("status", "--server", "-c", str(server_conf))
    assert rc == 2 and "web.port: the web API is off" in err, err
    rc, _, err = await pierce_cli("status", "--url", "http://127.0.0.1:1")
    assert rc == 2 and "--url: only with --server" in err, err
    port = free_port()  # nothing listens there
    rc, _, err = await pierce_cli("status", "--server", "--url", f"http://127.0.0.1:{port}")
    assert rc == 1 and f"cannot reach http://127.0.0.1:{port}/api/serverinfo" in err, err
