"""The OpenAPI 3.1 document of the JSON API (served at ``/api/openapi.json``).

The paths are written here; every schema is generated from the response types in `pierce.web.api` (and
`pierce.snapshot`) by msgspec, so what the document promises is what the handlers encode.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pierce import __version__
from pierce.proxies.base import ProxyType
from pierce.snapshot import ClientInfo
from pierce.web import api

OPENAPI_PATH = "/api/openapi.json"

_REF = "#/components/schemas/{name}"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document(*, basic_auth: bool) -> dict[str, Any]:
    """The document; with ``basic_auth`` every operation requires HTTP basic auth (401 without)."""
    types = [
        api.ServerInfo,
        list[api.UserInfo],
        list[ClientInfo],
        list[api.ProxyInfo],
        api.ProxyInfo,
        api.ProxyTraffic,
        api.Removed,
        api.ApiError,
    ]
    (info, users, clients, proxies, proxy, traffic, removed, error), components = (
        msgspec.json.schema_components(types, ref_template=_REF)
    )
    unauthorized = {"401": _json(error, "Missing or wrong credentials")} if basic_auth else {}

    def get(operation_id: str, summary: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
        responses = {"200": _json(schema, summary), **extra.pop("responses", {}), **unauthorized}
        return {"get": {"operationId": operation_id, "summary": summary, "responses": responses, **extra}}

    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The proxy's name",
        "schema": {"type": "string", "minLength": 1},
    }
    not_found = {"404": _json(error, "No such proxy")}
    paths: dict[str, Any] = {
        "/api/serverinfo": get("serverInfo", "The server and its totals", info),
        "/api/users": get("listUsers", "The configured users and what their clients hold", users),
        "/api/clients": get("listClients", "The clients logged in now", clients),
        "/api/proxies": get(
            "listProxies",
            "The proxies open now and those seen earlier (offline), by name",
            proxies,
            parameters=[
                {
                    "name": "type",
                    "in": "query",
                    "required": False,
                    "description": "Only proxies of this type",
                    "schema": {"type": "string", "enum": [t.value for t in ProxyType]},
                }
            ],
            responses={"400": _json(error, "Unknown proxy type or query parameter")},
        ),
        "/api/proxies/{name}": get(
            "getProxy", "One proxy", proxy, parameters=[name_param], responses=not_found
        ),
        "/api/proxies/{name}/traffic": get(
            "getProxyTraffic",
            "Bytes per minute over the last day (minutes without traffic left out)",
            traffic,
            parameters=[name_param],
            responses={"404": _json(error, "No such proxy, or none kept for it")},
        ),
        "/api/proxies/offline": {
            # A proxy may be named "offline": GET on this path is /api/proxies/{name} for it.
            **get("getProxyNamedOffline", "The proxy named offline", proxy, responses=not_found),
            "delete": {
                "operationId": "forgetOfflineProxies",
                "summary": "Forget the proxies seen earlier that are gone",
                "responses": {"200": _json(removed, "The names forgotten"), **unauthorized},
            },
        },
    }
    listed = paths["/api/proxies"]["get"]["responses"]["200"]
    listed["links"] = {
        "GetProxy": {"operationId": "getProxy", "parameters": {"name": "$response.body#/0/name"}},
        "GetProxyTraffic": {
            "operationId": "getProxyTraffic",
            "parameters": {"name": "$response.body#/0/name"},
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "pierce server API", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }
    if basic_auth:
        doc["components"]["securitySchemes"] = {"basic": {"type": "http", "scheme": "basic"}}
        doc["security"] = [{"basic": []}]
    return doc
