"""The client's local admin API (status, reload, stop) and the CLI side that calls it.

`AdminApi` serves these JSON endpoints on ``admin_addr:admin_port`` (off unless ``admin_port`` is set):

- ``GET /api/status``: connection state, run id, attempts, last error, proxies and active connections.
- ``POST /api/reload``: re-read the config file; ``{"added", "removed", "changed"}``, or HTTP 400 with
  ``{"error", "problems"}`` when the file is invalid (the running config is kept).
- ``POST /api/stop``: answer, then stop the client (``run_client`` returns and the process exits 0).

Every request must carry the admin credential, or it gets HTTP 401: ``Authorization: Bearer TOKEN``
with the token the client generates on first start in its state directory (``admin.token``, mode
0600, so only its owner can read it), or HTTP basic auth with ``admin_user``/``admin_password`` when
the config sets a password (then no token is generated). ``pierce client status|reload|stop`` read
the credential themselves. What cannot come from another site's page is refused before that: a request
carrying an ``Origin`` header other than this API's own (every browser sends one on a cross-site POST),
and a ``Host`` other than ``localhost``, a loopback address or the address the request arrived on (DNS
rebinding). Keep ``admin_addr`` on loopback.

The request inspector (`pierce.inspect.api`) is served here too, under the same checks; its page at
``/inspect`` is for browsers, which cannot send a bearer token: on the inspector's paths (the page and
``/api/inspect...``) basic auth is taken in both modes (``admin_user`` with ``admin_password``, or with
the token as the password when no password is set; elsewhere the token stays a bearer token), and a 401
there asks for basic auth, so the browser prompts once and then sends it with every request of the page
(same origin, so its POSTs pass the ``Origin`` check).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
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
from pierce.addr import listener_url
from pierce.config import ClientConfig
from pierce.errors import ConfigError, LocalError, PierceError
from pierce.inspect.api import InspectApi, paths_for_browsers
from pierce.local_http import host_header_allowed, start_site
from pierce.logs import event
from pierce.statedir import ensure_secret, read_secret, state_dir_for
from pierce.vhost.http_parse import basic_auth_matches

if TYPE_CHECKING:
    from pierce.client.app import Client

log = logging.getLogger("pierce.client")

#: The generated admin token's file name inside the client's state directory.
TOKEN_FILE_NAME = "admin.token"


class AdminApi:
    """The server side of the admin API for one running `Client`."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self.address = ""
        #: Where the generated token is kept; None when the config sets admin_user/admin_password.
        self.token_path: Path | None = None
        self._token = ""

    async def start(self) -> str:
        """Listen on ``admin_addr:admin_port``; returns the bound ``host:port``.

        Raises `LocalError` when the address cannot be bound (port in use, no such address).
        """
        cfg = self.client.config
        if not cfg.admin_password:
            self.token_path = state_dir_for("client", cfg.state_dir) / TOKEN_FILE_NAME
            self._token, _ = ensure_secret(self.token_path)
        app = web.Application(middlewares=[_refuse_other_sites, self._authenticate])
        app.router.add_get("/api/status", self._status)
        app.router.add_post("/api/reload", self._reload)
        app.router.add_post("/api/stop", self._stop)
        InspectApi(self.client.inspector).add_routes(app)
        self._runner, self.address, port = await start_site(app, cfg.admin_addr, cfg.admin_port, "admin API")
        how = (
            f"token in {self.token_path}" if self.token_path is not None else "admin_user and admin_password"
        )
        event(
            log,
            logging.INFO,
            "admin.listening",
            f"admin API on http://{self.address}/api/status (credential: {how})",
            listen=self.address,
            port=port,
            path=str(self.token_path) if self.token_path is not None else "",
        )
        return self.address

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        browser = paths_for_browsers(request.path)
        if not self._authorized(request.headers.get("Authorization"), browser=browser):
            scheme = "Bearer" if self.token_path is not None and not browser else "Basic"
            return web.json_response(
                {"error": "the admin API needs its credential (pierce client status|reload|stop send it)"},
                status=401,
                headers={"WWW-Authenticate": f'{scheme} realm="pierce client admin"'},
            )
        response: web.StreamResponse = await handler(request)
        return response

    def _authorized(self, header: str | None, *, browser: bool) -> bool:
        """``browser``: a path of the inspector, where basic auth with the token as the password is
        taken too (a browser cannot send a bearer token); elsewhere the token is a bearer token only."""
        if header is None:
            return False
        cfg = self.client.config
        if self.token_path is None:
            return basic_auth_matches(
                header.encode(errors="replace"), cfg.admin_user.encode(), cfg.admin_password.encode()
            )
        if browser and basic_auth_matches(
            header.encode(errors="replace"), cfg.admin_user.encode(), self._token.encode()
        ):
            return True
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(errors="replace"), self._token.encode())

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
async def _refuse_other_sites(request: web.Request, handler: Any) -> web.StreamResponse:
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    local = str(sockname[0]) if isinstance(sockname, tuple) and sockname else None
    if not host_header_allowed(request.host, local):
        return web.json_response({"error": f"unexpected Host header {request.host!r}"}, status=403)
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() != f"http://{request.host}".lower():
        # Another site's page (its POSTs carry its Origin); this API's own page (/inspect) is let in.
        return web.json_response({"error": "requests from other sites' pages are not accepted"}, status=403)
    response: web.StreamResponse = await handler(request)
    return response


# -- the CLI side --------------------------------------------------------------------------------------


class AdminEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Where a running client's admin API is and how to authenticate to it."""

    addr: str
    port: int
    #: The ``Authorization`` header value to send.
    authorization: str


def admin_endpoint(config_path: Path, *, state_dir: str | None = None) -> AdminEndpoint:
    """The admin API of a client.toml, read without checking the rest of the file.

    ``pierce client reload`` must reach the running client even when the edited file is broken, so the
    client can answer with what is wrong in it (and keep its running config). The credential is the
    file's ``admin_user``/``admin_password``, or else the token in the state directory (`state_dir`,
    else the file's ``state_dir``, else the default).
    """
    doc = config_mod.load_toml(config_path)
    defaults = {f.name: f.default for f in msgspec.structs.fields(ClientConfig)}
    values = {
        key: doc.get(key, defaults[key])
        for key in ("admin_addr", "state_dir", "admin_user", "admin_password")
    }
    problems = [
        f"{config_path}: {key}: expected a string, got {value!r}"
        for key, value in values.items()
        if not isinstance(value, str)
    ]
    port = doc.get("admin_port", defaults["admin_port"])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems.append(f"{config_path}: admin_port: expected a port from 0 to 65535, got {port!r}")
    if problems:
        raise ConfigError(problems)
    if not port:  # the admin API is off: no credential to find (callers say so)
        return AdminEndpoint(addr=values["admin_addr"], port=0, authorization="")
    if values["admin_password"]:
        pair = f"{values['admin_user']}:{values['admin_password']}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode()
    else:
        path = state_dir_for("client", state_dir or values["state_dir"]) / TOKEN_FILE_NAME
        token = read_secret(path)
        if token is None:
            raise LocalError(
                f"no admin token at {path}: the client writes it when its admin API starts (is it running "
                "with this config and state directory, as this user?)"
            )
        authorization = f"Bearer {token}"
    return AdminEndpoint(addr=values["admin_addr"], port=port, authorization=authorization)


def admin_url(addr: str, port: int, action: str) -> str:
    return f"{listener_url(addr, port)}/api/{action}"


def call_admin(config_path: Path | None, action: str, *, state_dir: str | None = None) -> int:
    """``pierce client reload|status|stop -c client.toml``: ask the running client through its admin API.

    Exit status 0 when the client did it; 1 when it refused (e.g. an invalid file on reload: the client
    says why and keeps its running config) or cannot be reached.
    """
    if config_path is None:
        raise ConfigError([f"client {action}: give -c client.toml (the running client's config)"])
    try:
        endpoint = admin_endpoint(config_path, state_dir=state_dir)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"error: {action}: cannot find the admin API in {config_path}", file=sys.stderr)
        return 1
    except LocalError as exc:
        print(f"error: {action}: {exc}", file=sys.stderr)
        return 1
    if not endpoint.port:
        raise ConfigError(
            [f"{config_path}: admin_port: the admin API is off; set admin_port to use {action}"]
        )
    method = "GET" if action == "status" else "POST"
    url = admin_url(endpoint.addr, endpoint.port, action)
    req = urllib.request.Request(
        url,
        method=method,
        data=b"" if method == "POST" else None,
        headers={"Authorization": endpoint.authorization},
    )
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
