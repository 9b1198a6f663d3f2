"""``pierce status``: a running client's state from its admin API, or with ``--server`` a running server's
from its JSON API (``[web]``), as tables for a person or as JSON (``--json``) for a script.

Both read only the public APIs, decoded into their own types (`pierce.snapshot`, `pierce.web.api`), so
what this prints is what any other tool sees. A newer peer's extra fields are ignored; a missing one is an
error that names the endpoint.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TypeVar

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pierce.addr import listener_url
from pierce.errors import ConfigError, LocalError
from pierce.logs import human_bytes
from pierce.snapshot import ClientInfo, ClientSnapshot, ConnectionPath, ProxyState
from pierce.web.api import ProxyInfo, ProxyStatus, ServerInfo, UserInfo

T = TypeVar("T")

#: Seconds a request to an API may take.
TIMEOUT_S = 10.0
#: Largest answer read from an API.
MAX_ANSWER = 16 * 1024 * 1024


class ServerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``pierce status --server --json``: the server's JSON API answers, together."""

    server: ServerInfo
    users: list[UserInfo]
    clients: list[ClientInfo]
    proxies: list[ProxyInfo]


# -- fetching ------------------------------------------------------------------------------------------


def fetch_json(url: str, authorization: str | None, kind: type[T]) -> T:
    """GET ``url`` and decode its JSON as ``kind``; `LocalError` saying what failed."""
    headers = {"Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            body = resp.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        text = exc.read(4096).decode(errors="replace").strip()
        if exc.code == 401:
            raise LocalError(f"{url}: the credentials were refused (HTTP 401)") from None
        raise LocalError(f"{url}: HTTP {exc.code}: {text[:200]}") from None
    except OSError as exc:
        raise LocalError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    if len(body) > MAX_ANSWER:
        raise LocalError(f"{url}: the answer is larger than {MAX_ANSWER} bytes")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:
        raise LocalError(f"{url}: unexpected answer: {exc}") from None


def client_status(config_path: Path, *, state_dir: str | None = None) -> ClientSnapshot:
    """The snapshot of the client running ``config_path``, from its admin API."""
    from pierce.client.admin import admin_endpoint, admin_url

    endpoint = admin_endpoint(config_path, state_dir=state_dir)
    if not endpoint.port:
        raise ConfigError([f"{config_path}: admin_port: the admin API is off; set admin_port to use status"])
    url = admin_url(endpoint.addr, endpoint.port, "status")
    return fetch_json(url, endpoint.authorization, ClientSnapshot)


class WebEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Where a server's JSON API is, and the ``Authorization`` to send (None: none configured)."""

    base: str
    authorization: str | None


def web_endpoint(
    config_path: Path | None, *, url: str | None = None, user: str | None = None, password: str | None = None
) -> WebEndpoint:
    """The JSON API of a server: ``url`` if given, else ``[web]`` of its server.toml (read without checking
    the rest of the file, as `pierce.client.admin.admin_endpoint` does). ``user``/``password`` override
    the file's credentials."""
    file_user = file_password = ""
    if url is None:
        if config_path is None:
            raise ConfigError(["status --server: give -c server.toml or --url http://HOST:PORT"])
        from pierce.config import load_toml

        doc = load_toml(config_path)
        web = doc.get("web", {})
        if not isinstance(web, dict):
            raise ConfigError([f"{config_path}: web: expected a table [web]"])
        addr, port = web.get("addr", "127.0.0.1"), web.get("port", 0)
        file_user, file_password = web.get("user", ""), web.get("password", "")
        problems = [
            f"{config_path}: web.{key}: expected a string, got {value!r}"
            for key, value in (("addr", addr), ("user", file_user), ("password", file_password))
            if not isinstance(value, str)
        ]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            problems.append(f"{config_path}: web.port: expected a port from 0 to 65535, got {port!r}")
        if problems:
            raise ConfigError(problems)
        if not port:
            raise ConfigError([f"{config_path}: web.port: the web API is off; set [web] port to use status"])
        url = listener_url(addr, port)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError([f'--url: expected http://HOST:PORT or https://HOST:PORT, got "{url}"'])
    user = file_user if user is None else user
    password = file_password if password is None else password
    authorization = None
    if password:
        pair = f"{user}:{password}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode()
    return WebEndpoint(base=url.rstrip("/"), authorization=authorization)


def server_status(endpoint: WebEndpoint) -> ServerStatus:
    """The server's state from its JSON API (four requests)."""

    def get(path: str, kind: type[T]) -> T:
        return fetch_json(endpoint.base + path, endpoint.authorization, kind)

    return ServerStatus(
        server=get("/api/serverinfo", ServerInfo),
        users=get("/api/users", list[UserInfo]),
        clients=get("/api/clients", list[ClientInfo]),
        proxies=get("/api/proxies", list[ProxyInfo]),
    )


# -- printing ------------------------------------------------------------------------------------------


def as_json(status: ClientSnapshot | ServerStatus) -> str:
    return json.dumps(msgspec.to_builtins(status), indent=2)


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "-"
    s = max(0, int(now - t))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m ago"
    return f"{s // 86400}d {s % 86400 // 3600}h ago"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _path(path: ConnectionPath) -> Text:
    return Text(str(path), style="green" if path.direct else "")


def _public(remote_port: int | None, urls: list[str], host: str = "") -> str:
    if urls:
        return "\n".join(urls)
    return f"{host}:{remote_port}" if remote_port else "-"


def render_client(snap: ClientSnapshot, console: Console, now: float | None = None) -> None:
    now = time.time() if now is None else now
    state = Text("connected", style="green") if snap.connected else Text("not connected", style="red")
    head = Text.assemble(
        ("client ", "bold"),
        (snap.client_id, "bold"),
        f"  pierce {snap.version}  server {snap.server}  ",
        state,
    )
    if snap.connected:
        head.append(f" since {_ago(snap.connected_since, now)}")
    console.print(head)
    details = f"{_count(snap.connections, 'connection')} open, {_count(snap.attempts, 'login attempt')}"
    if snap.last_error:
        details += f", last error: {snap.last_error}"
    console.print(details)
    server_host = snap.server.rpartition(":")[0]
    proxies = Table(title="proxies", title_justify="left")
    for col in ("name", "type", "local", "state", "public", "path"):
        proxies.add_column(col)
    for p in snap.proxies:
        style = {ProxyState.RUNNING: "green", ProxyState.REFUSED: "red"}.get(p.state, "yellow")
        state_text = Text(str(p.state), style=style)
        if p.error:
            state_text.append(f": {p.error}")
        public = _public(p.remote_port, p.urls, server_host)
        if p.direct:
            public += f"\ndirect {p.direct}"
        proxies.add_row(p.name, str(p.type), p.local, state_text, public, _path(p.path))
    console.print(proxies)
    if snap.visitors:
        visitors = Table(title="visitors", title_justify="left")
        for col in ("name", "type", "proxy", "listen", "path", "rtt"):
            visitors.add_column(col)
        for v in snap.visitors:
            path = _path(v.path)
            if v.reason:
                path.append(f" ({v.reason})")
            rtt = f"{v.rtt_ms:.1f} ms" if v.path.direct else "-"
            visitors.add_row(v.name, v.type, v.proxy, v.listen, path, rtt)
        console.print(visitors)


def render_server(status: ServerStatus, console: Console) -> None:
    now = time.time()
    info = status.server
    console.print(
        Text.assemble(
            ("server ", "bold"),
            (info.address, "bold"),
            f"  pierce {info.version}  up {_ago(info.started_at, now).removesuffix(' ago')}",
        )
    )
    console.print(
        f"{_count(info.clients, 'client')}, {_count(info.proxies, 'proxy').replace('proxys', 'proxies')}, "
        f"{_count(info.connections, 'connection')} open, "
        f"{human_bytes(info.bytes_in)} in / {human_bytes(info.bytes_out)} out"
    )
    users = Table(title="users", title_justify="left")
    for col in ("user", "clients", "proxies", "connections", "in", "out"):
        users.add_column(col, justify="left" if col == "user" else "right")
    for u in status.users:
        users.add_row(
            u.name,
            str(u.clients),
            str(u.proxies),
            str(u.connections),
            human_bytes(u.bytes_in),
            human_bytes(u.bytes_out),
        )
    console.print(users)
    clients = Table(title="clients", title_justify="left")
    for col in ("client", "user", "address", "connected", "proxies", "idle pool"):
        clients.add_column(col)
    for c in status.clients:
        clients.add_row(
            c.client_id,
            c.user,
            c.address,
            _ago(c.connected_since, now),
            ", ".join(c.proxies) or "-",
            str(c.idle_work_conns),
        )
    console.print(clients)
    proxies = Table(title="proxies", title_justify="left")
    for col in ("name", "type", "status", "user", "client", "public", "path", "conns", "in", "out"):
        proxies.add_column(col, justify="right" if col in ("conns", "in", "out") else "left")
    for p in status.proxies:
        online = p.status is ProxyStatus.ONLINE
        proxies.add_row(
            p.name,
            str(p.type),
            Text(str(p.status), style="green" if online else "dim"),
            p.user,
            p.client_id,
            _public(p.remote_port, p.urls) + (f"\ndirect {p.direct}" if p.direct else ""),
            _path(p.path),
            str(p.stats.connections),
            human_bytes(p.stats.bytes_in),
            human_bytes(p.stats.bytes_out),
        )
    console.print(proxies)


def print_status(
    status: ClientSnapshot | ServerStatus, *, json_out: bool, console: Console | None = None
) -> None:
    if json_out:
        print(as_json(status))
        return
    console = console or Console(highlight=False)
    if isinstance(status, ServerStatus):
        render_server(status, console)
    else:
        render_client(status, console)
