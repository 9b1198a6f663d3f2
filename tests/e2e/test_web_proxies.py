"""http and https proxies through real `pierce server` / `pierce client` processes, with curl and openssl."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.http_services import web_service as served
from support.streams import CHUNK, MiB, free_port, payload, send_all
from support.tunnel import start_client, start_server
from support.web import curl, http_proxy, https2http_proxy, ready, resolve, vhost_server

NAS, HA = "nas.example.com", "ha.example.com"


async def get_json(domain: str, port: int, path: str = "/", *extra: str) -> dict[str, Any]:
    code, out, err = await curl(*resolve(domain, port), *extra, f"http://{domain}:{port}{path}")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


async def status(domain: str, port: int, *extra: str) -> str:
    _, out, _ = await curl("-o", "/dev/null", "-w", "%{http_code}", *resolve(domain, port), *extra,
                           f"http://{domain}:{port}/")  # fmt: skip
    return out


async def test_two_domains_paths_auth_and_headers_on_one_port(pierce, tmp_path: Path) -> None:
    async with served("nas") as (nas, _), served("ha") as (ha, ha_seen), served("api") as (api, _):
        _, control, port = await vhost_server(pierce, tmp_path)
        home = await start_client(
            pierce,
            tmp_path,
            control,
            [
                http_proxy(
                    "nas",
                    nas,
                    custom_domains=[NAS],
                    host_header_rewrite="nas.internal",
                    request_headers={"set": {"X-From-Pierce": "yes"}},
                    response_headers={"set": {"X-Served-By": "pierce"}},
                ),
                http_proxy("ha", ha, custom_domains=[HA], http_user="me", http_password="s3cret"),
            ],
            name="home",
        )
        # A second client serves /api of the same domain: the longest location wins.
        lab = await start_client(
            pierce,
            tmp_path,
            control,
            [http_proxy("api", api, custom_domains=[NAS], locations=["/api"])],
            name="lab",
        )
        urls = (await ready(home, "nas"))["urls"]
        assert urls == [f"http://{NAS}:{port}/"]
        await ready(home, "ha")
        await ready(lab, "api")

        seen = await get_json(NAS, port, "/index.html")
        assert seen["service"] == "nas"
        assert seen["headers"]["host"] == "nas.internal"
        headers = seen["headers"]
        assert headers["x-from-pierce"] == "yes"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-real-ip"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-host"].startswith(NAS)
        assert (await get_json(NAS, port, "/api/items?x=1"))["service"] == "api"
        assert (await get_json(NAS, port, "/apiary"))["service"] == "nas"

        # One keep-alive browser connection, successive requests to different locations.
        code, out, err = await curl(
            "-v",
            *resolve(NAS, port),
            f"http://{NAS}:{port}/a",
            f"http://{NAS}:{port}/api/b",
            f"http://{NAS}:{port}/c",
        )
        assert code == 0, err
        services = [json.loads(part)["service"] for part in out.replace("}{", "}\n{").splitlines()]
        assert services == ["nas", "api", "nas"]
        assert "Re-using existing connection" in err or "Reusing existing" in err

        # Response header set by the proxy.
        code, out, _ = await curl("-D", "-", "-o", "/dev/null", *resolve(NAS, port), f"http://{NAS}:{port}/")
        assert "x-served-by: pierce" in out.lower()

        # Basic auth is answered by the server.
        code, out, _ = await curl("-D", "-", "-o", "/dev/null", *resolve(HA, port), f"http://{HA}:{port}/")
        assert out.startswith("HTTP/1.1 401")
        assert "www-authenticate: basic" in out.lower()
        assert await status(HA, port, "-u", "me:wrong") == "401"
        assert (await get_json(HA, port, "/", "-u", "me:s3cret"))["service"] == "ha"
        # Nothing reached the service before the password was right, and the password did not either.
        assert [r["path"] for r in ha_seen.requests] == ["/"]
        assert "authorization" not in ha_seen.requests[0]["headers"]

        # Unknown host: 404.
        assert await status("x.example.com", port) == "404"


async def test_subdomain_custom_404_and_bad_heads(pierce, tmp_path: Path) -> None:
    page = tmp_path / "404.html"
    page.write_text("<h1>nothing here</h1>")
    async with served("nas") as (nas, _):
        _, control, port = await vhost_server(
            pierce, tmp_path, subdomain_host="example.com", custom_404_file=str(page)
        )
        client = await start_client(pierce, tmp_path, control, [http_proxy("nas", nas, subdomain="nas")])
        await ready(client, "nas")
        assert (await get_json(NAS, port))["service"] == "nas"
        _, out, _ = await curl(*resolve("nope.example.com", port), f"http://nope.example.com:{port}/")
        assert "nothing here" in out

        async def raw(request: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
            return answer

        assert (await raw(b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n")).startswith(b"HTTP/1.1 400")
        huge = b"GET / HTTP/1.1\r\nHost: " + NAS.encode() + b"\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
        assert (await raw(huge)).startswith(b"HTTP/1.1 431")
        # The server is still fine.
        assert (await get_json(NAS, port))["service"] == "nas"


async def test_large_bodies_and_websocket(pierce, tmp_path: Path) -> None:
    size = 100 * MiB
    async with served("nas") as (nas, _):
        _, control, port = await vhost_server(pierce, tmp_path)
        client = await start_client(pierce, tmp_path, control, [http_proxy("nas", nas, custom_domains=[NAS])])
        await ready(client, "nas")
        out_file = tmp_path / "down.bin"
        code, _, err = await curl(
            *resolve(NAS, port), "-o", str(out_file), f"http://{NAS}:{port}/download?size={size}&seed=5"
        )
        assert code == 0, err
        assert hashlib.sha256(out_file.read_bytes()).digest() == hashlib.sha256(payload(size, 5)).digest()
        out_file.unlink()

        up = tmp_path / "up.bin"
        up.write_bytes(payload(size, 6))
        for mode in ("--data-binary", "chunked"):
            args = ["-H", "Transfer-Encoding: chunked", "--data-binary"] if mode == "chunked" else [mode]
            code, out, err = await curl(*resolve(NAS, port), *args, f"@{up}", f"http://{NAS}:{port}/upload")
            assert code == 0, err
            assert out.startswith("{"), (mode, out, err)
            got = json.loads(out)
            assert (got["sha256"], got["size"]) == (hashlib.sha256(up.read_bytes()).hexdigest(), size)
            assert got["chunked"] == (mode == "chunked")

        # A websocket through the vhost: the Upgrade passes and frames flow both ways.
        url = f"http://127.0.0.1:{port}/ws"
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers={"Host": NAS}) as ws:
            for i in range(20):
                await ws.send_str(f"hello {i}")
                assert (await ws.receive_str()) == f"nas:hello {i}"
            blob = payload(1 * MiB, 8)
            await ws.send_bytes(blob)
            assert (await ws.receive_bytes()) == blob


async def tls_echo(port: int, name: str, cert: Path, data: bytes) -> tuple[str, str, int]:
    """A TLS connection with SNI ``name`` to ``port``, verified against ``cert``: the line the service
    sends first, then the (sha256, size) of ``data`` echoed back while it is being sent."""
    ctx = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    try:
        first = (await asyncio.wait_for(reader.readline(), 30)).decode().strip()
        sending = asyncio.create_task(send_all(writer, data))
        h, size = hashlib.sha256(), 0
        async with asyncio.timeout(60):
            while size < len(data) and (chunk := await reader.read(CHUNK)):
                h.update(chunk)
                size += len(chunk)
            await sending
    finally:
        writer.close()
    return first, h.hexdigest(), size


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
async def test_https_routed_by_sni_without_terminating(pierce, tmp_path: Path) -> None:
    from support.certs import tls_service

    https_port = free_port()
    async with tls_service(tmp_path, "a.example.com") as a, tls_service(tmp_path, "b.example.com") as b:
        server, control = await start_server(pierce, tmp_path, vhost_https_port=https_port)
        client = await start_client(
            pierce,
            tmp_path,
            control,
            [
                {"type": "https", "name": "a", "local_port": a.port, "custom_domains": ["a.example.com"]},
                {"type": "https", "name": "b", "local_port": b.port, "custom_domains": ["b.example.com"]},
            ],
        )
        await ready(client, "a")
        await ready(client, "b")
        for seed, (name, service) in enumerate((("a.example.com", a), ("b.example.com", b))):
            pipe = asyncio.subprocess.PIPE
            proc = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", f"127.0.0.1:{https_port}", "-servername", name,
                stdin=pipe, stdout=pipe, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(b"Q\n"), 30)
            text = out.decode(errors="replace")
            assert f"subject=CN = {name}" in text or f"subject=CN={name}" in text, text[:2000]

            # Bytes through the TLS session, which ends at the service (its certificate verifies).
            data = payload(2 * MiB + seed, seed)
            want = (hashlib.sha256(data).hexdigest(), len(data))
            first, *echoed = await tls_echo(https_port, name, service.cert, data)
            assert first == name
            assert tuple(echoed) == want
            assert want in service.digests()
        # No SNI: closed, and logged.
        with socket.create_connection(("127.0.0.1", https_port)) as sock:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with pytest.raises((ssl.SSLError, OSError)):
                ctx.wrap_socket(sock).do_handshake()
        await server.wait_event("front.refused", lambda e: e["code"] == "no_sni" and e["front"] == "https")


async def test_automatic_https_with_acme(pierce, tmp_path: Path) -> None:
    """https_auto: the server gets a certificate from Pebble by HTTP-01 on its vhost port, then serves the
    domain over HTTPS (verified against Pebble's root) and forwards plain HTTP with X-Forwarded-Proto."""
    from helpers.acme_pebble import MISSING, running_pebble

    if MISSING is not None:
        pytest.skip(MISSING)
    http_port, https_port = free_port(), free_port()
    domain = "auto.example.com"
    with running_pebble(tmp_path / "pebble", http_port=http_port) as ca:
        root = tmp_path / "pebble-root.pem"
        root.write_bytes(ca.root_pem)
        async with served("auto") as (inside, _):
            server, control = await start_server(
                pierce,
                tmp_path,
                vhost_http_port=http_port,
                vhost_https_port=https_port,
                acme={
                    "email": "ops@example.com",
                    "directory_url": ca.directory_url,
                    "ca_file": str(ca.ca_bundle),
                },
            )
            client = await start_client(
                pierce,
                tmp_path,
                control,
                [http_proxy("auto", inside, custom_domains=[domain], https_auto=True)],
            )
            await ready(client, "auto")
            await server.wait_event("acme.issued", timeout=60)
            code, out, err = await curl(
                "--cacert", str(root), *resolve(domain, https_port), f"https://{domain}:{https_port}/secure"
            )
            assert code == 0, err
            seen = json.loads(out)
            assert seen["service"] == "auto"
            assert seen["headers"]["x-forwarded-proto"] == "https"
            assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
            # Plain HTTP keeps working on the same domain.
            assert (await get_json(domain, http_port, "/plain"))["service"] == "auto"


async def test_https2http_plugin_terminates_tls_on_the_client(pierce, tmp_path: Path) -> None:
    """The inside app speaks plain HTTP; the client holds the certificate and ends TLS itself."""
    domain = "plug.example.com"
    https_port = free_port()
    async with served("plain-app") as (inside, _):
        _, control = await start_server(pierce, tmp_path, vhost_https_port=https_port)
        proxy, crt = https2http_proxy(tmp_path, "plug", inside, domain)
        client = await start_client(pierce, tmp_path, control, [proxy])
        await ready(client, "plug")
        big = tmp_path / "up.bin"
        big.write_bytes(payload(8 * MiB, 3))
        for _ in range(2):  # the second request reuses the TLS work connection of the first
            code, out, err = await curl(
                "--cacert", str(crt), *resolve(domain, https_port), f"https://{domain}:{https_port}/hello"
            )
            assert code == 0, err
            assert json.loads(out)["service"] == "plain-app"
        code, out, err = await curl(
            "--cacert", str(crt), *resolve(domain, https_port), "--data-binary", f"@{big}",
            f"https://{domain}:{https_port}/upload",
        )  # fmt: skip
        assert code == 0, err
        got = json.loads(out)
        assert (got["sha256"], got["size"]) == (hashlib.sha256(big.read_bytes()).hexdigest(), 8 * MiB)


async def test_backend_streams_end_cleanly_when_browsers_leave(pierce, tmp_path: Path) -> None:
    """After each browser connection, the server ends its stream to the service with an end-of-data
    marker and waits for the service's, so the client sees a whole stream (no error) every time."""
    async with served("nas") as (nas, _):
        _, control, port = await vhost_server(pierce, tmp_path)
        client = await start_client(pierce, tmp_path, control, [http_proxy("nas", nas, custom_domains=[NAS])])
        await ready(client, "nas")
        for i in range(3):
            assert (await get_json(NAS, port, f"/visit/{i}"))["service"] == "nas"
        closed = await client.wait_event("proxy.conn_close", lambda e: e.get("proxy") == "nas", count=3)
    assert [e.get("error") for e in closed] == [None, None, None]
