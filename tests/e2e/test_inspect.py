"""The request inspector on the client's admin port, with real `pierce server`/`pierce client` processes
and a local aiohttp service that counts what it is asked: requests made on the public vhost port appear
in ``/api/inspect``, a replay reaches the service again and is listed as a new request, a body larger
than the preview is marked truncated and its replay refused, and every path needs the admin credential."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
from helpers.http_services import web_service
from support.streams import free_port
from support.web import INSPECT_BODY_BYTES as BODY_BYTES
from support.web import http_proxy, inspected_client, vhost_server

NAS = "nas.example.com"


async def call(
    http: aiohttp.ClientSession, method: str, port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    async with http.request(method, f"http://127.0.0.1:{port}{path}", headers=headers or {}) as response:
        text = await response.text()
        try:
            doc: Any = json.loads(text)
        except ValueError:
            doc = text
        return response.status, doc, response.headers


async def test_requests_are_listed_with_details_and_replayed(pierce, tmp_path: Path) -> None:
    async with web_service("nas") as (service, seen):
        _, control, port = await vhost_server(pierce, tmp_path)
        admin, auth = await inspected_client(
            pierce, tmp_path, control, [http_proxy("nas", service, custom_domains=[NAS])]
        )
        async with aiohttp.ClientSession() as http:
            # Two requests on one kept-alive visitor connection, then a chunked upload.
            status, _, _ = await call(http, "GET", port, "/first?x=1", {"Host": NAS, "X-Test": "one"})
            assert status == 200
            status, doc, _ = await call(
                http, "POST", port, "/form", {"Host": NAS, "Content-Type": "application/json"}
            )
            assert status == 200
            async with http.post(
                f"http://127.0.0.1:{port}/echo", headers={"Host": NAS}, data=_chunks([b'{"a": ', b"1}"])
            ) as response:
                assert response.status == 200
                await response.read()
            assert len(seen.requests) == 3

            status, listing, _ = await call(http, "GET", admin, "/api/inspect", auth)
            assert status == 200
            (proxy,) = listing["proxies"]
            assert proxy["name"] == "nas" and proxy["type"] == "http" and proxy["kept"] == 50
            rows = proxy["requests"]
            assert [(r["method"], r["path"], r["status"], r["state"]) for r in rows] == [
                ("POST", "/echo", 200, "complete"),
                ("POST", "/form", 200, "complete"),
                ("GET", "/first?x=1", 200, "complete"),
            ]
            assert all(r["host"].startswith(NAS) and r["remote"].startswith("127.0.0.1:") for r in rows)
            assert all(r["duration_ms"] is not None and r["replayable"] for r in rows)

            status, one, _ = await call(http, "GET", admin, "/api/inspect/nas", auth)
            assert status == 200 and one["requests"] == rows

            first = rows[-1]["id"]
            status, detail, _ = await call(http, "GET", admin, f"/api/inspect/nas/{first}", auth)
            assert status == 200
            request_headers = {k.lower(): v for k, v in detail["request"]["headers"]}
            assert request_headers["x-test"] == "one"
            assert request_headers["x-forwarded-for"] == "127.0.0.1"  # what the service saw
            response_headers = {k.lower(): v for k, v in detail["response"]["headers"]}
            assert response_headers["x-service"] == "nas"
            assert response_headers["content-type"].startswith("application/json")
            body = detail["response"]["body"]
            assert body["complete"] and not body["truncated"] and not body["binary"]
            assert json.loads(body["data"])["path"] == "/first?x=1"
            assert detail["request"]["body"]["size"] == 0

            chunked = rows[0]["id"]
            status, detail, _ = await call(http, "GET", admin, f"/api/inspect/nas/{chunked}", auth)
            assert detail["request"]["body"]["data"] == '{"a": 1}'  # chunked framing removed

            # Replay the chunked upload: it reaches the service again and is a new request.
            status, replayed, _ = await call(http, "POST", admin, f"/api/inspect/nas/{chunked}/replay", auth)
            assert status == 200, replayed
            assert len(seen.requests) == 4
            assert seen.requests[-1]["path"] == "/echo" and seen.requests[-1]["method"] == "POST"
            assert replayed["replay_of"] == chunked and replayed["status"] == 200
            assert replayed["state"] == "complete" and replayed["id"] > chunked
            assert json.loads(replayed["response"]["body"]["data"])["path"] == "/echo"
            status, listing, _ = await call(http, "GET", admin, "/api/inspect/nas", auth)
            assert listing["requests"][0]["id"] == replayed["id"]
            assert listing["requests"][0]["replay_of"] == chunked

            status, doc, _ = await call(http, "GET", admin, "/api/inspect/nas/9999", auth)
            assert status == 404 and "no request 9999" in doc["error"]
            status, doc, _ = await call(http, "GET", admin, "/api/inspect/other", auth)
            assert status == 404


async def _chunks(pieces: list[bytes]) -> Any:
    for piece in pieces:
        yield piece


async def test_large_body_truncated_and_replay_refused(pierce, tmp_path: Path) -> None:
    async with web_service("nas") as (service, seen):
        _, control, port = await vhost_server(pierce, tmp_path)
        admin, auth = await inspected_client(
            pierce, tmp_path, control, [http_proxy("nas", service, custom_domains=[NAS])]
        )
        big = bytes(range(256)) * 64  # 16 KiB, binary
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/upload", data=big, headers={"Host": NAS}) as resp:
                assert resp.status == 200
                assert (await resp.json())["size"] == len(big)
            assert len(seen.requests) == 1
            status, listing, _ = await call(http, "GET", admin, "/api/inspect/nas", auth)
            (row,) = listing["requests"]
            assert row["request_size"] == len(big) and not row["replayable"]
            status, detail, _ = await call(http, "GET", admin, f"/api/inspect/nas/{row['id']}", auth)
            body = detail["request"]["body"]
            assert (body["size"], body["captured"], body["truncated"], body["complete"]) == (
                len(big),
                BODY_BYTES,
                True,
                True,
            )
            assert body["binary"] and base64.b64decode(body["data"]) == big[:BODY_BYTES]
            status, doc, _ = await call(http, "POST", admin, f"/api/inspect/nas/{row['id']}/replay", auth)
            assert status == 409 and "larger than the recorded preview" in doc["error"]
            assert len(seen.requests) == 1  # nothing was sent again


async def test_inspector_needs_the_admin_credential(pierce, tmp_path: Path) -> None:
    async with web_service("nas") as (service, seen):
        _, control, port = await vhost_server(pierce, tmp_path)
        admin, auth = await inspected_client(
            pierce,
            tmp_path,
            control,
            [
                http_proxy("nas", service, custom_domains=[NAS]),
                http_proxy("quiet", service, custom_domains=["quiet.example.com"], inspect=False),
            ],
        )
        token = auth["Authorization"].removeprefix("Bearer ")
        basic = {"Authorization": "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()}
        async with aiohttp.ClientSession() as http:
            await call(http, "GET", port, "/x", {"Host": NAS})
            await call(http, "GET", port, "/y", {"Host": "quiet.example.com"})
            assert len(seen.requests) == 2
            for method, path in [
                ("GET", "/inspect"),
                ("GET", "/inspect.js"),
                ("GET", "/api/inspect"),
                ("GET", "/api/inspect/nas"),
                ("GET", "/api/inspect/nas/1"),
                ("POST", "/api/inspect/nas/1/replay"),
            ]:
                status, _, headers = await call(http, method, admin, path)
                assert status == 401, path
                assert headers["WWW-Authenticate"].startswith("Basic "), path  # a browser prompts
                bad = {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()}
                assert (await call(http, method, admin, path, bad))[0] == 401
            assert len(seen.requests) == 2  # the refused replay sent nothing

            # A browser logs in with basic auth (the token as password) and gets the page.
            status, page, headers = await call(http, "GET", admin, "/inspect", basic)
            assert status == 200 and 'id="requests"' in page and "/inspect.js" in page
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            status, script, _ = await call(http, "GET", admin, "/inspect.js", basic)
            assert status == 200 and "/api/inspect" in script
            # Basic auth with the token is for the inspector only: it cannot stop or reload the client.
            assert (await call(http, "GET", admin, "/api/status", basic))[0] == 401
            assert (await call(http, "POST", admin, "/api/stop", basic))[0] == 401
            status, listing, _ = await call(http, "GET", admin, "/api/inspect", basic)
            assert [p["name"] for p in listing["proxies"]] == ["nas"]  # inspect = false: not recorded
            assert (await call(http, "GET", admin, "/api/inspect/quiet", basic))[0] == 404

            # The page's own POST (same origin) passes; another site's, or a rebound name, does not.
            first = listing["proxies"][0]["requests"][0]["id"]
            replay = f"/api/inspect/nas/{first}/replay"
            own = {**basic, "Origin": f"http://127.0.0.1:{admin}"}
            status, doc, _ = await call(http, "POST", admin, replay, own)
            assert status == 200, doc
            assert len(seen.requests) == 3
            other = {**basic, "Origin": "http://evil.example"}
            assert (await call(http, "POST", admin, replay, other))[0] == 403
            rebound = {**basic, "Host": f"evil.example:{admin}"}
            assert (await call(http, "GET", admin, "/api/inspect", rebound))[0] == 403
            assert (await call(http, "GET", admin, "/inspect", rebound))[0] == 403
            assert len(seen.requests) == 3


async def test_https2http_requests_are_recorded(pierce, tmp_path: Path) -> None:
    """With the https2http plugin the client ends TLS, so it sees (and records) plain HTTP."""
    from support.tunnel import start_server
    from support.web import curl, https2http_proxy, resolve

    domain = "plug.example.com"
    https_port = free_port()
    async with web_service("plain-app") as (inside, seen):
        _, control = await start_server(pierce, tmp_path, vhost_https_port=https_port)
        plugged, crt = https2http_proxy(tmp_path, "plug", inside, domain)
        passthrough = {
            "type": "https",
            "name": "tls",
            "local_port": inside,
            "custom_domains": ["tls.example.com"],
        }
        admin, auth = await inspected_client(pierce, tmp_path, control, [plugged, passthrough])
        url = f"https://{domain}:{https_port}/secure?q=1"
        code, out, err = await curl(
            "--cacert", str(crt), *resolve(domain, https_port), "-H", "X-Test: tls", url
        )
        assert code == 0, err
        assert json.loads(out)["service"] == "plain-app"
        async with aiohttp.ClientSession() as http:
            status, listing, _ = await call(http, "GET", admin, "/api/inspect", auth)
            assert [(p["name"], p["type"]) for p in listing["proxies"]] == [("plug", "https")]  # not "tls"
            (row,) = listing["proxies"][0]["requests"]
            assert (row["method"], row["path"], row["status"], row["state"]) == (
                "GET",
                "/secure?q=1",
                200,
                "complete",
            )
            status, replayed, _ = await call(
                http, "POST", admin, f"/api/inspect/plug/{row['id']}/replay", auth
            )
            assert status == 200 and replayed["status"] == 200 and replayed["replay_of"] == row["id"]
            assert [r["path"] for r in seen.requests] == ["/secure?q=1", "/secure?q=1"]
