"""Start a real pierce server and client for tunnel tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from support.procs import PierceProcess

StartPierce = Callable[..., Awaitable[PierceProcess]]

#: A token of the strength the server requires (about 130 bits estimated).
TOKEN = "test-token-Kq7vB2mN9pL4sR8tW3zY6c"


def write_toml(path: Path, doc: dict[str, Any]) -> Path:
    """A tiny TOML writer for the flat tables the tests need."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in doc.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {_toml(value)}")
    for key, table in tables:
        lines.append(f"[{key}]")
        lines.extend(f"{k} = {_toml(v)}" for k, v in table.items())
    for key, items in arrays:
        for item in items:
            lines.append(f"[[{key}]]")
            lines.extend(f"{k} = {_toml(v)}" for k, v in item.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


async def start_server(
    pierce: StartPierce,
    tmp_path: Path,
    *,
    prefix: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    **settings: Any,
) -> tuple[PierceProcess, int]:
    """A server on 127.0.0.1 with a free control port; returns it and the port. ``prefix``: a command it
    runs under (`PierceProcess.start`); ``env``: on top of the test's environment."""
    doc: dict[str, Any] = {"bind_addr": "127.0.0.1", "bind_port": 0, "token": TOKEN, **settings}
    conf = write_toml(tmp_path / "server.toml", doc)
    proc = await pierce(
        "server",
        "-c",
        str(conf),
        env={"PIERCE_STATE_DIR": str(tmp_path / "state"), **(env or {})},
        prefix=prefix,
    )
    (ready,) = await proc.wait_event("server.listening")
    return proc, int(ready["port"])


async def start_client(
    pierce: StartPierce,
    tmp_path: Path,
    server_port: int,
    proxies: list[dict[str, Any]],
    *,
    name: str = "client",
    prefix: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    **settings: Any,
) -> PierceProcess:
    conf = client_config(tmp_path, server_port, proxies, name=name, **settings)
    env = {"PIERCE_STATE_DIR": str(tmp_path / f"{name}-state"), **(env or {})}
    return await pierce("client", "-c", str(conf), env=env, prefix=prefix)


def client_config(
    tmp_path: Path, server_port: int, proxies: list[dict[str, Any]], *, name: str = "client", **settings: Any
) -> Path:
    """Write the config file `start_client` starts client ``name`` with (again, for a reload)."""
    doc: dict[str, Any] = {
        "server_addr": "127.0.0.1",
        "server_port": server_port,
        "token": TOKEN,
        "client_id": name,
        **settings,
        "proxies": proxies,
    }
    return write_toml(tmp_path / f"{name}.toml", doc)
