"""The vhost ports against hostile visitors, through real `pierce server` / `pierce client` processes.

- A protected location cannot be reached through a path that routes one way and is served another.
- Slow heads and ClientHellos are cut at a whole deadline; per-address and pending connection caps.
- Underscore spellings of the forwarding headers pierce sets never reach a service.
- On TLS ended by the server (automatic HTTPS), a Host outside the connection's certificate gets 421.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from helpers.http_services import Response, file_service, read_responses, request_line_service
from helpers.http_services import web_service as served
from support.certs import self_signed
from support.streams import free_port
from support.tunnel import start_client
from support.web import curl, http_proxy, ready, resolve, vhost_server

from pierce.vhost.acme import ca_dir_name

SITE = "site.example.com"
ECHO = "echo.example.com"
SECRET = b"the admin's secret\n"
PUBLIC = b"public page\n"
ADMIN_AUTH = "Basic " + base64.b64encode(b"admin:pw").decode()
#: Time allowed past a deadline before the test calls it missed (process scheduling on a busy machine).
SLACK = 1.5


def request(target: str, host: str = SITE, *fields: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *fields, "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def exchange(port: int, data: bytes, count: int = 1) -> list[Response]:
    """Send ``data`` on a new connection and read ``count`` responses (fewer if the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(15):
            return await read_responses(reader, count)
    finally:
        writer.close()


async def get(port: int, target: str, *fields: str) -> Response:
    responses = await exchange(port, request(target, SITE, *fields))
    assert responses, f"{target}: no response"
    return responses[0]


# -- 1. one path for routing and forwarding ------------------------------------------------------------

#: Request targets, and the target the service receives for each.
FORWARDED = {
    "/plain/path?q=%2e%2e/..": b"/plain/path?q=%2e%2e/..",
    "/x/../%70ublic.txt?a=1": b"/public.txt?a=1",
    "//a///b/./": b"/a/b/",
    "/caf%c3%a9/%7euser": b"/caf%C3%A9/~user",
    "/a%20b": b"/a%20b",
    "http://echo.example.com/a/./b?c": b"/a/b?c",
}

#: Ways to ask for /admin/secret.txt without going through the /admin location, each answered by some
#: server somewhere: a fragment the router resolved across, encoded dots and slashes, backslashes,
#: doubled slashes, double encoding, ``..;`` (a dot-segment to Tomcat), an absolute-form target.
BYPASSES = [
    "/admin/secret.txt#/../../x",
    "/admin/secret.txt?#/../../x",
    "/public.txt#/../admin/secret.txt",
    "/x/../admin/secret.txt",
    "/./admin/secret.txt",
    "//admin/secret.txt",
    "///admin//secret.txt",
    "/%61dmin/secret.txt",
    "/x/%2e%2e/admin/secret.txt",
    "/x/%2E./admin/secret.txt",
    "/x/.%2e/admin/secret.txt",
    "/%2e%2e/admin/secret.txt",
    "/../admin/secret.txt",
    "/x/..%2fadmin/secret.txt",
    "/admin%2fsecret.txt",
    "/admin%2Fsecret.txt",
    "/x/..%5cadmin/secret.txt",
    "/x\\..\\admin/secret.txt",
    "/x/..\\admin/secret.txt",
    "/adm%2569n/secret.txt",
    "/x/..;/admin/secret.txt",
    "/x/..%3b/admin/secret.txt",
    "/admin%00/secret.txt",
    "http://site.example.com/x/../admin/secret.txt",
    "http://site.example.com//admin/secret.txt",
]


async def test_a_protected_location_cannot_be_reached_by_another_path(pierce, tmp_path: Path) -> None:
    """``/`` is open, ``/admin`` needs a password; both go to one static file server (Python's
    ``http.server``, which decodes and normalises paths as many do). No spelling of the protected file's
    path gets it without the password: the admin location answers 401, or the request is refused."""
    root = tmp_path / "www"
    (root / "admin").mkdir(parents=True)
    (root / "admin" / "secret.txt").write_bytes(SECRET)
    (root / "public.txt").write_bytes(PUBLIC)
    async with file_service(root) as files, request_line_service() as lines:
        _, control, port = await vhost_server(pierce, tmp_path)
        client = await start_client(
            pierce,
            tmp_path,
            control,
            [
                http_proxy("echo", lines, custom_domains=[ECHO]),
                http_proxy("site", files, custom_domains=[SITE]),
                http_proxy(
                    "site-admin",
                    files,
                    custom_domains=[SITE],
                    locations=["/admin"],
                    http_user="admin",
                    http_password="pw",
                ),
            ],
        )
        await ready(client, "echo")
        await ready(client, "site")
        await ready(client, "site-admin")

        # The service receives the canonical target, the one that was routed.
        for sent, received in FORWARDED.items():
            (resp,) = await exchange(port, request(sent, ECHO))
            assert resp.body == b"GET " + received + b" HTTP/1.1", sent

        assert (await get(port, "/public.txt")).body == PUBLIC
        assert (await get(port, "/admin/secret.txt")).status == 401
        assert (await get(port, "/admin/secret.txt", f"Authorization: {ADMIN_AUTH}")).body == SECRET
        # What is normalised is forwarded normalised: the service gets the path that was routed.
        assert (await get(port, "/x/../%70ublic.txt")).body == PUBLIC
        assert (await get(port, "/x/..//admin/./secret.txt", f"Authorization: {ADMIN_AUTH}")).body == SECRET
        # Locations are case-sensitive, as paths are to this service: /Admin is another (missing) file.
        assert (await get(port, "/%41dmin/secret.txt")).status == 404

        answers = {}
        for target in BYPASSES:
            resp = await get(port, target)
            answers[target] = resp.status
            assert SECRET not in resp.body, f"{target} served the protected file"
        assert set(answers.values()) <= {400, 401}, answers


# -- 2. slow heads, slow ClientHellos, too many connections ----------------------------------------------


def client_hello(name: str) -> bytes:
    """The bytes of a real TLS ClientHello for ``name`` (the ssl module's, made in memory)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def read_to_close(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def trickle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, every: float, limit: float
) -> tuple[float, bytes]:
    """Send ``data`` one byte every ``every`` seconds until the server closes the connection.

    Returns the seconds from the first byte to the close, and what the server sent; fails when the
    connection is still open after ``limit`` seconds.
    """
    loop = asyncio.get_running_loop()

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(every)  # the attack's pace, not a synchronisation

    start = loop.time()
    dripping = asyncio.create_task(drip())
    try:
        async with asyncio.timeout(limit):
            answer = await read_to_close(reader)
    except TimeoutError:
        raise AssertionError(f"still open after {limit} s of a byte every {every} s") from None
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
    return loop.time() - start, answer


SLOW_HEAD = request("/", SITE, "User-Agent: " + "slow" * 20)


async def test_slow_heads_and_client_hellos_are_cut_at_the_deadline(pierce, tmp_path: Path) -> None:
    """A byte every 0.5 s keeps every read well inside the idle timeout; the whole-head deadline of 2 s
    still ends the head (408), on a new connection and on a kept-alive one, and the ClientHello on the
    HTTPS port."""
    https_port = free_port()
    async with served("site") as (site, _):
        _, control, port = await vhost_server(
            pierce, tmp_path, vhost_https_port=https_port, vhost_header_timeout=2
        )
        client = await start_client(
            pierce, tmp_path, control, [http_proxy("site", site, custom_domains=[SITE])]
        )
        await ready(client, "site")

        # The first head of a connection.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        _, answer = await trickle(reader, writer, SLOW_HEAD, 0.5, 2 + SLACK)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]

        # The second head on a kept-alive connection, after a request that went through: trickled at
        # once, or begun after an idle while longer than the deadline (inside the idle timeout) and then
        # left there (no read returns before the deadline).
        for idle, every in ((0.0, 0.5), (2.5, 60.0)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request("/first"))
            (first,) = await read_responses(reader, 1)
            assert json.loads(first.body)["path"] == "/first"
            await asyncio.sleep(idle)  # the visitor's idle time, part of the scenario
            _, answer = await trickle(reader, writer, SLOW_HEAD, every, 2 + SLACK)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]

        # The ClientHello on the HTTPS port.
        reader, writer = await asyncio.open_connection("127.0.0.1", https_port)
        await trickle(reader, writer, client_hello(SITE), 0.5, 2 + SLACK)

        # Nothing else was hurt.
        code, out, err = await curl(*resolve(SITE, port), f"http://{SITE}:{port}/after")
        assert code == 0 and json.loads(out)["path"] == "/after", err


async def refused(port: int) -> bool:
    """True when a new connection is closed by the server without a byte, at once."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionResetError:
        return True  # reset before the connect call had returned
    try:
        async with asyncio.timeout(5):
            return await read_to_close(reader) == b""
    except TimeoutError:
        return False
    finally:
        writer.close()


async def test_connections_per_address_are_capped(pierce, tmp_path: Path) -> None:
    """With ``vhost_max_conns_per_ip = 4`` the fifth to eighth connection from 127.0.0.1 are reset at
    once, logged once; when the first four are gone, requests go through again."""
    async with served("site") as (site, _):
        server, control, port = await vhost_server(
            pierce, tmp_path, vhost_max_conns_per_ip=4, vhost_header_timeout=60
        )
        client = await start_client(
            pierce, tmp_path, control, [http_proxy("site", site, custom_domains=[SITE])]
        )
        await ready(client, "site")
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        assert [await refused(port) for _ in range(4)] == [True] * 4
        # The four held connections each make one last request; the server closes them after it.
        for i, (reader, writer) in enumerate(held):
            writer.write(request(f"/held/{i}", SITE, "Connection: close"))
            (resp,) = await read_responses(reader, 1, to_eof=True)
            assert json.loads(resp.body)["path"] == f"/held/{i}"
            writer.close()
        code, out, err = await curl(*resolve(SITE, port), f"http://{SITE}:{port}/after")
        assert code == 0 and json.loads(out)["path"] == "/after", err
        await server.stop()
    over = server.matching("front.refused", lambda e: e["code"] == "too_many_conns")
    assert len(over) == 1 and over[0]["visitor"].startswith("127.0.0.1:"), over


async def test_connections_without_a_first_head_are_capped(pierce, tmp_path: Path) -> None:
    """With ``vhost_max_pending_conns = 3``, three connections that have sent nothing hold the pending
    slots: a fourth is reset. Once one of them has sent its head, a new connection is served."""
    async with served("site") as (site, _):
        server, control, port = await vhost_server(
            pierce, tmp_path, vhost_max_pending_conns=3, vhost_header_timeout=60
        )
        client = await start_client(
            pierce, tmp_path, control, [http_proxy("site", site, custom_domains=[SITE])]
        )
        await ready(client, "site")
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        assert await refused(port)
        reader, writer = held[0]
        writer.write(request("/first"))
        (resp,) = await read_responses(reader, 1)
        assert json.loads(resp.body)["path"] == "/first"
        assert json.loads((await get(port, "/next")).body)["path"] == "/next"
        for _, writer in held:
            writer.close()
        await server.wait_event("front.refused", lambda e: e["code"] == "too_many_pending")


# -- 4. underscore spellings of the forwarding headers ---------------------------------------------------


async def test_underscore_spellings_of_forwarding_headers_are_dropped(pierce, tmp_path: Path) -> None:
    """Servers that map ``-`` and ``_`` to one name (CGI, WSGI, PHP, many frameworks) would take
    ``X_Real_IP`` for the ``X-Real-IP`` the server sets; such fields are dropped, others pass."""
    async with served("site") as (site, seen):
        _, control, port = await vhost_server(pierce, tmp_path)
        proxy = http_proxy(
            "site", site, custom_domains=[SITE], request_headers={"set": {"X-From-Pierce": "yes"}}
        )
        client = await start_client(pierce, tmp_path, control, [proxy])
        await ready(client, "site")
        forged = [
            "X_Real_IP: 6.6.6.6",
            "x_forwarded_for: 6.6.6.6",
            "X_FORWARDED_PROTO: gopher",
            "X_Forwarded-Host: evil.example.com",
            "X-Real_Ip: 6.6.6.6",
            "X_From_Pierce: forged",
            "X_Custom: kept",
        ]
        resp = await get(port, "/headers", *forged)
        names = [name.lower() for name, _ in json.loads(resp.body)["header_list"]]
        assert "x_custom" in names
        assert not [n for n in names if "_" in n and n != "x_custom"], names
        headers = seen.requests[-1]["headers"]
        assert headers["x-real-ip"] == "127.0.0.1"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-from-pierce"] == "yes"


# -- 5. Host and SNI agree on TLS ended by the server ----------------------------------------------------

DIRECTORY = "https://127.0.0.1:9/directory"  # never asked: the certificates on disk are current


def install_certificate(state: Path, name: str, tmp_path: Path) -> Path:
    """Put a certificate for ``name`` where the server's ACME manager loads it at start; returns the
    certificate to verify against."""
    crt, key = self_signed(tmp_path, name)
    certs = state / "acme" / ca_dir_name(DIRECTORY) / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (certs / f"{name}.pem").write_bytes(pem + crt.read_bytes())
    return crt


async def tls_exchange(port: int, sni: str, cafile: Path, data: bytes, count: int = 1) -> list[Response]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    try:
        writer.write(data)
        async with asyncio.timeout(15):
            return await read_responses(reader, count)
    finally:
        writer.close()


async def test_host_outside_the_connections_certificate_is_misdirected(pierce, tmp_path: Path) -> None:
    """Two https_auto proxies with a certificate each: on a TLS connection for a.example.com, a request
    for b.example.com (Host or absolute form) gets 421, while a.example.com's own requests go through.
    The TLS handshake itself is held to the head deadline."""
    a, b = "a.example.com", "b.example.com"
    state = tmp_path / "server-state"
    certs = {name: install_certificate(state, name, tmp_path) for name in (a, b)}
    https_port = free_port()
    acme: dict[str, Any] = {"email": "ops@example.com", "directory_url": DIRECTORY, "renew_before_days": 0.01}
    async with served("a") as (site_a, _), served("b") as (site_b, _):
        _, control, _ = await vhost_server(
            pierce,
            tmp_path,
            vhost_https_port=https_port,
            vhost_header_timeout=2,
            state_dir=str(state),
            acme=acme,
        )
        client = await start_client(
            pierce,
            tmp_path,
            control,
            [
                http_proxy("a", site_a, custom_domains=[a], https_auto=True),
                http_proxy("b", site_b, custom_domains=[b], https_auto=True),
            ],
        )
        await ready(client, "a")
        await ready(client, "b")

        (ok,) = await tls_exchange(https_port, a, certs[a], request("/", a))
        assert ok.status == 200 and json.loads(ok.body)["service"] == "a"
        (ok,) = await tls_exchange(https_port, b, certs[b], request("/", b))
        assert ok.status == 200 and json.loads(ok.body)["service"] == "b"

        # SNI a.example.com, Host b.example.com: 421, also after a request that was a's own.
        (wrong,) = await tls_exchange(https_port, a, certs[a], request("/", b))
        assert wrong.status == 421, wrong
        first, second = await tls_exchange(https_port, a, certs[a], request("/", a) + request("/", b), 2)
        assert (first.status, second.status) == (200, 421)
        absolute = b"GET https://b.example.com/ HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
        (wrong,) = await tls_exchange(https_port, a, certs[a], absolute)
        assert wrong.status == 421
        (wrong,) = await tls_exchange(https_port, a, certs[a], request("/", "B.Example.Com.:443"))
        assert wrong.status == 421

        # A ClientHello, then silence: the handshake ends at the deadline.
        sock = socket.create_connection(("127.0.0.1", https_port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(client_hello(a))
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(2 + SLACK):
            await read_to_close(reader)
        writer.close()
        assert loop.time() - start <= 2 + SLACK
