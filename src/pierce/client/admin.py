"""The client's local admin API (status, reload, stop) and the CLI side that calls it.

`AdminApi` serves three JSON endpoints on ``admin_addr:admin_port`` (off unless ``admin_port`` is set):

- ``GET /api/status``: connection state, run id, attempts, last error, proxies and active connections.
- ``POST /api/reload``: re-read the config file; ``{"added", "removed", "changed"}``, or HTTP 400 with
  ``{"error", "problems"}`` when the file is invalid (the running config is kept).
- ``POST /api/stop``: answer, then stop the client (``run_client`` returns and the process exits 0).

The API has no password, so it only serves what cannot come from a web page: a request carrying an
``Origin`` header (every browser sends one on a cross-site POST) is refused, and so is a ``Host`` that
is not an address or ``localhost`` (DNS rebinding). Keep ``admin_addr`` on loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from pierce import config as config_mod
from pierce.config import ClientConfig
from pierce.errors import ConfigError, LocalError, PierceError
from pierce.logs import event

if TYPE_CHECKING:
    from pierce.client.app import Client

log = logging.getLogger("pierce.client")


class AdminApi:
    """The server side of the admin API for one running `Client`."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self.address = ""

    async def start(self) -> str:
        """Listen on ``admin_addr:admin_port``; returns the bound ``host:port``.

        Raises `LocalError` when the address cannot be bound (port in use, no such address).
        """
        cfg = self.client.config
        app = web.Application(middlewares=[_refuse_browsers])
        app.router.add_get("/api/status", self._status)
        app.router.add_post("/api/reload", self._reload)
        app.router.add_post("/api/stop", self._stop)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, cfg.admin_addr, cfg.admin_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise LocalError(
                f"admin API: cannot listen on {cfg.admin_addr}:{cfg.admin_port}: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        event(
            log,
            logging.INFO,
            "admin.listening",
            f"admin API on http://{self.address}/api/status",
            listen=self.address,
            port=port,
        )
        return self.address

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- endpoints ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The document ``GET /api/status`` returns: the client's snapshot."""
        doc: dict[str, Any] = msgspec.to_builtins(self.client.snapshot())
        return doc

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _reload(self, request: web.Request) -> web.Response:
        async with self._reload_lock:  # two reloads at once would diff against a half-applied config
            try:
                result = await self.client.reload()
            except ConfigError as exc:
                from pierce.client.app import log_reload_failed  # app imports this module

                log_reload_failed(exc)
                return web.json_response(
                    {"error": "invalid config; the running config is kept", "problems": exc.problems},
                    status=400,
                )
            except (PierceError, OSError) as exc:
                # The file was fine, but the server could not be told (the link dropped mid-reload): the
                # new config is in force and is registered again on the next login.
                return web.json_response({"error": f"reload applied locally: {exc}"}, status=503)
        return web.json_response(result)

    async def _stop(self, request: web.Request) -> web.StreamResponse:
        response = web.json_response({"stopping": True})
        await response.prepare(request)
        await response.write_eof()  # answer first: stopping closes this API
        event(log, logging.INFO, "client.stopping", "stop requested through the admin API")
        self.client.stop()
        return response


@web.middleware
async def _refuse_browsers(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.headers.get("Origin") is not None:
        return web.json_response({"error": "requests from web pages are not accepted"}, status=403)
    if not _local_host_header(request.host):
        return web.json_response({"error": f"unexpected Host header {request.host!r}"}, status=403)
    response: web.StreamResponse = await handler(request)
    return response


def _local_host_header(host: str) -> bool:
    """True for ``127.0.0.1:PORT``, ``[::1]:PORT``, ``localhost:PORT`` (any address literal)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# -- the CLI side --------------------------------------------------------------------------------------


def admin_endpoint(config_path: Path) -> tuple[str, int]:
    """``admin_addr`` and ``admin_port`` of a client.toml, read without checking the rest of the file.

    ``pierce client reload`` must reach the running client even when the edited file is broken, so the
    client can answer with what is wrong in it (and keep its running config).
    """
    doc = config_mod.load_toml(config_path)
    defaults = {f.name: f.default for f in msgspec.structs.fields(ClientConfig)}
    addr, port = doc.get("admin_addr", defaults["admin_addr"]), doc.get("admin_port", defaults["admin_port"])
    if not isinstance(addr, str):
        raise ConfigError([f"{config_path}: admin_addr: expected a string, got {addr!r}"])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError([f"{config_path}: admin_port: expected a port from 0 to 65535, got {port!r}"])
    return addr, port


def admin_url(addr: str, port: int, action: str) -> str:
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr, addr)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/api/{action}"


def call_admin(config_path: Path | None, action: str) -> int:
    """``pierce client reload|status|stop -c client.toml``: ask the running client through its admin API.

    Exit status 0 when the client did it; 1 when it refused (e.g. an invalid file on reload: the client
    says why and keeps its running config) or cannot be reached.
    """
    if config_path is None:
        raise ConfigError([f"client {action}: give -c client.toml (the running client's config)"])
    try:
        addr, port = admin_endpoint(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"error: {action}: cannot find the admin API in {config_path}", file=sys.stderr)
        return 1
    if not port:
        raise ConfigError(
            [f"{config_path}: admin_port: the admin API is off; set admin_port to use {action}"]
        )
    method = "GET" if action == "status" else "POST"
    url = admin_url(addr, port, action)
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read().decode()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            print(f"error: {action}: {doc.get('error', text)}", file=sys.stderr)
            for problem in doc.get("problems", []):
                print(f"error: {problem}", file=sys.stderr)
        else:
            print(f"error: {action}: HTTP {exc.code}: {text}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach the client's admin API at {url}: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(json.loads(body), indent=2))
    except ValueError:
        print(body)
    return 0
