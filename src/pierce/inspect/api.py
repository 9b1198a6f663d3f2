"""The inspector on the client's admin port: JSON under ``/api/inspect`` and the page at ``/inspect``.

- ``GET /api/inspect``: every recorded proxy with its requests, newest first (summaries).
- ``GET /api/inspect/{proxy}``: one proxy's requests (summaries).
- ``GET /api/inspect/{proxy}/{id}``: one request with its header fields and body previews.
- ``POST /api/inspect/{proxy}/{id}/replay``: send it again (`Inspector.replay`); the new request, or
  ``{"error"}`` with 404 (no such request), 409 (not replayable: body not wholly recorded, upgrade),
  429 (too many replays at once) or 502 (local service unreachable).
- ``GET /inspect`` (and its script and style): the page, from the package, polling the API.

The admin API's middlewares (Host check, same-origin check, credential) cover all of it; see
`pierce.client.admin` for how a browser authenticates.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from aiohttp import web

from pierce.inspect.inspector import InspectError, Inspector

#: The page's files, served from the package (no CDN): path -> (file, content type).
PAGE_FILES = {
    "/inspect": ("inspect.html", "text/html"),
    "/inspect.js": ("inspect.js", "text/javascript"),
    "/inspect.css": ("inspect.css", "text/css"),
}
#: The page runs only its own script and style, talks only to this origin, and is never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_NO_STORE = {"Cache-Control": "no-store"}


def paths_for_browsers(path: str) -> bool:
    """The paths a browser uses (the page and what it calls): their 401 asks for basic auth."""
    return path in PAGE_FILES or path == "/api/inspect" or path.startswith("/api/inspect/")


class InspectApi:
    def __init__(self, inspector: Inspector) -> None:
        self.inspector = inspector
        self._files = {
            path: importlib.resources.files("pierce.inspect").joinpath("static", name).read_bytes()
            for path, (name, _) in PAGE_FILES.items()
        }

    def add_routes(self, app: web.Application) -> None:
        for path in PAGE_FILES:
            app.router.add_get(path, self._page)
        app.router.add_get("/api/inspect", self._all)
        app.router.add_get("/api/inspect/{proxy}", self._proxy)
        app.router.add_get("/api/inspect/{proxy}/{id}", self._one)
        app.router.add_post("/api/inspect/{proxy}/{id}/replay", self._replay)

    async def _page(self, request: web.Request) -> web.Response:
        _, content_type = PAGE_FILES[request.path]
        return web.Response(
            body=self._files[request.path], content_type=content_type, charset="utf-8", headers=PAGE_HEADERS
        )

    def _proxy_doc(self, name: str) -> dict[str, Any]:
        config = self.inspector.inspected()[name]
        requests = self.inspector.logs()[name]
        return {
            "name": name,
            "type": str(type(config).__struct_config__.tag),
            "kept": requests.size,
            "requests": [e.summary() for e in reversed(list(requests))],
        }

    async def _all(self, request: web.Request) -> web.Response:
        doc = {
            "body_bytes": self.inspector.options.body_bytes,
            "proxies": [self._proxy_doc(name) for name in self.inspector.logs()],
        }
        return web.json_response(doc, headers=_NO_STORE)

    async def _proxy(self, request: web.Request) -> web.Response:
        name = request.match_info["proxy"]
        if name not in self.inspector.logs():
            return _error(InspectError(404, f"no recorded proxy {name!r}"))
        return web.json_response(self._proxy_doc(name), headers=_NO_STORE)

    async def _one(self, request: web.Request) -> web.Response:
        try:
            _, _, exchange = self.inspector.find(request.match_info["proxy"], _id(request))
        except InspectError as exc:
            return _error(exc)
        return web.json_response(exchange.to_json(), headers=_NO_STORE)

    async def _replay(self, request: web.Request) -> web.Response:
        try:
            exchange = await self.inspector.replay(request.match_info["proxy"], _id(request))
        except InspectError as exc:
            return _error(exc)
        return web.json_response(exchange.to_json(), headers=_NO_STORE)


def _id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise InspectError(404, f"expected a request id (a number), got {text!r}")
    return int(text)


def _error(exc: InspectError) -> web.Response:
    return web.json_response({"error": str(exc)}, status=exc.status, headers=_NO_STORE)
