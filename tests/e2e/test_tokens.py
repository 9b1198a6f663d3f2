"""Tokens and the state directory, with real processes: the server's generated token, where a client
takes its token from (--token, --token-file, PIERCE_TOKEN, the config, in that order), weak tokens
refused at config load, and loose modes of an existing state directory tightened at start.
"""

from __future__ import annotations

import stat
from pathlib import Path

from support.procs import PierceProcess, pierce_cli
from support.streams import free_port
from support.tunnel import TOKEN, StartPierce, start_client, start_server, write_toml


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_private_file(path: Path, text: str, file_mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(file_mode)
    return path


async def cli_client(
    pierce: StartPierce, port: int, *args: str, env: dict[str, str] | None = None
) -> PierceProcess:
    return await pierce("client", "--server", f"127.0.0.1:{port}", "--client-id", "cli", *args, env=env)


async def test_the_server_generates_a_token_prints_it_once_and_reuses_it(
    pierce: StartPierce, tmp_path: Path
) -> None:
    server, port = await start_server(pierce, tmp_path, token="", stun_port=0)
    token_file = tmp_path / "state" / "server" / "token"
    (noted,) = server.matching("server.token")
    assert (noted["path"], noted["generated"]) == (str(token_file), True)
    token = token_file.read_text().strip()
    assert len(token) >= 22 and mode(token_file) == 0o600
    printed = "\n".join(server.other_lines)
    assert f"    {token}\n" in printed + "\n"
    assert f'token = "{token}"' in printed
    assert str(token_file) in printed

    # A client reading it from a file logs in.
    client_token = write_private_file(tmp_path / "client-token", token + "\n", 0o600)
    client = await cli_client(pierce, port, "--token-file", str(client_token))
    await client.wait_event("client.connected")
    await client.stop()

    # The next start reuses it and does not print it again.
    await server.stop()
    again, port = await start_server(pierce, tmp_path, token="", stun_port=0)
    (noted,) = again.matching("server.token")
    assert (noted["path"], noted["generated"]) == (str(token_file), False)
    assert not any(token in line for line in again.other_lines)
    assert not any(token in str(e) for e in again.events)
    # A client taking it from the environment logs in.
    client = await cli_client(pierce, port, env={"PIERCE_TOKEN": token})
    await client.wait_event("client.connected")
    assert not client.matching("token.on_command_line")


async def test_where_a_client_takes_its_token_from(pierce: StartPierce, tmp_path: Path) -> None:
    """--token, then --token-file, then PIERCE_TOKEN, then the config file."""
    _, port = await start_server(pierce, tmp_path, stun_port=0)
    right = write_private_file(tmp_path / "right", TOKEN, 0o600)
    wrong = write_private_file(tmp_path / "wrong", "not-the-token", 0o600)
    conf = write_toml(
        tmp_path / "client.toml",
        {"server_addr": "127.0.0.1", "server_port": port, "token": "not-the-token", "client_id": "c"},
    )
    wrong_env = {"PIERCE_TOKEN": "not-the-token-either"}

    # Each its own client id: one user's live client ids are unique.
    by_file = await pierce(
        "client", "-c", str(conf), "--client-id", "c1", "--token-file", str(right), env=wrong_env
    )
    by_flag = await pierce(
        "client", "-c", str(conf), "--client-id", "c2", "--token-file", str(wrong), "--token", TOKEN
    )
    by_env = await pierce("client", "-c", str(conf), "--client-id", "c3", env={"PIERCE_TOKEN": TOKEN})
    for proc in (by_file, by_flag, by_env):
        await proc.wait_event("client.connected")
    (warning,) = by_flag.matching("token.on_command_line")
    assert warning["level"] == "warning" and "ps" in warning["msg"] and "--token-file" in warning["msg"]
    assert not by_file.matching("token.on_command_line")

    by_config = await pierce("client", "-c", str(conf), env={"PIERCE_TOKEN": ""})
    (failed,) = await by_config.wait_event("client.login_failed")
    assert "wrong token" in failed["error"]

    missing = await pierce("client", "-c", str(conf), "--token-file", str(tmp_path / "absent"))
    assert await missing.wait_exit() == 2


async def test_a_weak_server_token_is_refused_unless_allowed(pierce: StartPierce, tmp_path: Path) -> None:
    rc, _, err = await pierce_cli(
        "server", "--bind-addr", "127.0.0.1", "--bind-port", "0", "--token", "sunshine"
    )
    assert rc == 2
    assert "error: command line: token: this token is too easy to guess: about 5 bits estimated" in err
    assert "allow_weak_token = true" in err

    _, port = await start_server(pierce, tmp_path, token="sunshine", allow_weak_token=True, stun_port=0)
    client = await start_client(pierce, tmp_path, port, [], token="sunshine")
    await client.wait_event("client.connected")


async def test_loose_state_directories_are_tightened_at_start(pierce: StartPierce, tmp_path: Path) -> None:
    """Both roles: a state directory 0777 with key and token files 0644 becomes 0700 / 0600."""
    server_state = tmp_path / "state" / "server"
    token_file = write_private_file(server_state / "token", TOKEN + "\n", 0o644)
    acme_key = write_private_file(server_state / "acme" / "account.key", "key", 0o644)
    (server_state / "acme").chmod(0o755)
    server_state.chmod(0o777)
    client_state = tmp_path / "home-state" / "client"
    admin_token = write_private_file(client_state / "admin.token", "Kq7vB2mN9pL4sR8tW3zY6c\n", 0o644)
    client_state.chmod(0o777)

    server, port = await start_server(pierce, tmp_path, token="", stun_port=0)
    assert (mode(server_state), mode(server_state / "acme")) == (0o700, 0o700)
    assert (mode(token_file), mode(acme_key)) == (0o600, 0o600)
    tightened = {e["path"]: (e["old_mode"], e["new_mode"]) for e in server.matching("state.tightened")}
    assert tightened == {
        str(server_state): ("0777", "0700"),
        str(server_state / "acme"): ("0755", "0700"),
        str(token_file): ("0644", "0600"),
        str(acme_key): ("0644", "0600"),
    }
    assert server.matching("server.token")[0]["generated"] is False  # the token there is used

    client = await start_client(pierce, tmp_path, port, [], name="home", admin_port=free_port())
    await client.wait_event("admin.listening")
    assert (mode(client_state), mode(admin_token)) == (0o700, 0o600)
    tightened = {e["path"] for e in client.matching("state.tightened")}
    assert tightened == {str(client_state), str(admin_token)}
    rc, _, err = await pierce_cli(
        "client",
        "status",
        "-c",
        str(tmp_path / "home.toml"),
        env={"PIERCE_STATE_DIR": str(tmp_path / "home-state")},
    )
    assert rc == 0, err


async def test_a_new_state_directory_is_private(pierce: StartPierce, tmp_path: Path) -> None:
    server, _ = await start_server(pierce, tmp_path, stun_port=0)
    assert mode(tmp_path / "state" / "server") == 0o700
    assert mode(tmp_path / "state" / "server" / "server.key") == 0o600
    assert not server.matching("state.tightened")
