"""tcpmux proxies: many TCP services behind one public port, chosen by the host of an HTTP CONNECT.

Real clients only: OpenSSH through ``ProxyCommand="socat - PROXY:server:%h:%p,proxyport=PORT"`` reaching
two sshd instances by name (each pinned by its own host key, each echoing the bytes it is sent), and
``curl -p -x`` to a web service. Bytes are checked by SHA-256 both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers.http_services import web_service
from support.procs import PierceProcess
from support.streams import free_port, payload
from support.tunnel import StartPierce, start_client, start_server
from support.web import curl

SSHD = "/usr/sbin/sshd"
MISSING = [t for t in ("ssh", "ssh-keygen", "socat", "curl") if shutil.which(t) is None]
if not os.path.exists(SSHD):
    MISSING.append(SSHD)
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")


def tcpmux_proxy(name: str, port: int, *domains: str, **extra: object) -> dict[str, object]:
    return {
        "type": "tcpmux",
        "name": name,
        "multiplexer": "httpconnect",
        "local_port": port,
        "custom_domains": list(domains),
        **extra,
    }


async def mux_port(server: PierceProcess) -> int:
    (ready,) = await server.wait_event("front.listening", lambda e: e.get("front") == "tcpmux")
    return int(ready["port"])


async def tcpmux_setup(
    pierce: StartPierce, tmp_path: Path, proxies: list[dict[str, object]], **settings: object
) -> tuple[PierceProcess, int]:
    """A server with a tcpmux port and a client whose ``proxies`` are ready; the server and that port."""
    server, port = await start_server(pierce, tmp_path, tcpmux_httpconnect_port=free_port(), **settings)
    mux = await mux_port(server)
    client = await start_client(pierce, tmp_path, port, proxies)
    await client.wait_event("proxy.ready", count=len(proxies))
    return server, mux


@contextlib.asynccontextmanager
async def sshd(workdir: Path, label: str) -> AsyncIterator[tuple[int, Path]]:
    """A private sshd on loopback that answers every session with ``label`` and then what it is sent.

    Yields its port and a known_hosts file naming only its host key (for ``label``.example.com), so a
    client that reached another sshd fails host-key checking.
    """
    d = workdir / f"sshd-{label}"
    d.mkdir()
    for key in ("host_key", "user_key"):
        keygen = await asyncio.create_subprocess_exec(
            "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)
        )
        assert await keygen.wait() == 0
    (d / "authorized_keys").write_bytes((d / "user_key.pub").read_bytes())
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"ForceCommand printf {label}: && cat\nLogLevel ERROR\n"
    )
    with contextlib.suppress(OSError):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    check = await asyncio.create_subprocess_exec(SSHD, "-t", "-f", str(config))
    assert await check.wait() == 0, f"sshd refuses {config}"
    proc = await asyncio.create_subprocess_exec(SSHD, "-D", "-f", str(config), "-E", str(d / "sshd.log"))
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.02)
        host_key = (d / "host_key.pub").read_text().split()
        (d / "known_hosts").write_text(f"{label}.example.com {host_key[0]} {host_key[1]}\n")
        yield port, d
    finally:
        proc.terminate()
        await proc.wait()


async def ssh_through(mux: int, name: str, d: Path, data: bytes) -> tuple[int, bytes, bytes]:
    """ssh to ``name`` through the tcpmux port, sending ``data`` on stdin; (exit code, stdout, stderr)."""
    argv = [
        "ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "LogLevel=ERROR",
        "-o", f"ProxyCommand=socat - PROXY:127.0.0.1:%h:%p,proxyport={mux}",
        "-i", str(d / "user_key"), f"root@{name}",
    ]  # fmt: skip
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(*argv, stdin=pipe, stdout=pipe, stderr=pipe)
    out, err = await asyncio.wait_for(proc.communicate(data), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_ssh_reaches_two_sshd_by_name_and_unknown_names_get_404(pierce, tmp_path: Path) -> None:
    async with sshd(tmp_path, "alpha") as (alpha, alpha_dir), sshd(tmp_path, "beta") as (beta, beta_dir):
        proxies = [
            tcpmux_proxy("ssh-alpha", alpha, "alpha.example.com"),
            tcpmux_proxy("ssh-beta", beta, "beta.example.com"),
        ]
        server, mux = await tcpmux_setup(pierce, tmp_path, proxies)
        for label, d, seed in (("alpha", alpha_dir, 1), ("beta", beta_dir, 2)):
            data = payload(3 * 1024 * 1024 + 17, seed)
            code, out, err = await ssh_through(mux, f"{label}.example.com", d, data)
            assert code == 0, err.decode(errors="replace")
            assert out[: len(label) + 1] == f"{label}:".encode()
            assert hashlib.sha256(out[len(label) + 1 :]).hexdigest() == hashlib.sha256(data).hexdigest()
        # alpha's host key for beta's name: ssh refuses, so each name reached its own sshd above.
        (beta_dir / "known_hosts").write_text(
            (alpha_dir / "known_hosts").read_text().replace("alpha.example.com", "beta.example.com")
        )
        code, _, err = await ssh_through(mux, "beta.example.com", beta_dir, b"")
        assert code != 0 and b"host key" in err.lower(), err

        code, _, err = await ssh_through(mux, "gamma.example.com", alpha_dir, b"")
        assert code != 0
        (refused,) = await server.wait_event("front.refused", lambda e: e.get("code") == "unknown_name")
        assert refused["front"] == "tcpmux" and refused["server_name"] == "gamma.example.com"
        assert refused["visitor"].startswith("127.0.0.1:")
        opened = server.matching("proxy.conn_open")
        assert {e["proxy"] for e in opened} == {"ssh-alpha", "ssh-beta"}
        assert all(e["server_name"] in ("alpha.example.com", "beta.example.com") for e in opened)


async def test_curl_through_connect_to_a_web_service(pierce, tmp_path: Path) -> None:
    async with web_service("site") as (web_port, seen):
        proxies = [
            tcpmux_proxy("web", web_port, "web.example.com"),
            tcpmux_proxy("private", web_port, "*.private.example.com", http_user="me", http_password="pw"),
        ]
        server, mux = await tcpmux_setup(pierce, tmp_path, proxies)
        proxy = f"http://127.0.0.1:{mux}"

        # An upload through the tunnel the CONNECT opened (downloads: test_download_bytes_match).
        size = 5 * 1024 * 1024
        up = tmp_path / "up.bin"
        up.write_bytes(payload(size, 8))
        code, out, err = await curl(
            "-p", "-x", proxy, "--data-binary", f"@{up}", "http://web.example.com/upload"
        )
        assert code == 0, err
        doc = json.loads(out)
        assert doc["sha256"] == hashlib.sha256(up.read_bytes()).hexdigest() and doc["size"] == size

        # Proxy authentication, answered by the server: 407 without or with wrong credentials.
        code, out, err = await curl("-p", "-x", proxy, "http://a.private.example.com/")
        assert code != 0 and "407" in err, err
        code, out, err = await curl("-p", "-x", proxy, "-U", "me:wrong", "http://a.private.example.com/")
        assert code != 0 and "407" in err, err
        code, out, err = await curl("-p", "-x", proxy, "-U", "me:pw", "http://a.private.example.com/x")
        assert code == 0, err
        assert json.loads(out)["path"] == "/x"
        assert not any("proxy-authorization" in r.get("headers", {}) for r in seen.requests)

        # An unknown name: a 404 answer to the CONNECT, and a log line.
        code, out, err = await curl("-p", "-x", proxy, "http://nobody.example.com/")
        assert code != 0 and "404" in err, err
        await server.wait_event("front.refused", lambda e: e.get("code") == "unknown_name")


async def test_download_bytes_match(pierce, tmp_path: Path) -> None:
    """The download's bytes are the service's bytes (curl writes them to a file)."""
    async with web_service("site") as (web_port, _):
        _, mux = await tcpmux_setup(pierce, tmp_path, [tcpmux_proxy("web", web_port, "web.example.com")])
        size = 8 * 1024 * 1024 + 3
        target = tmp_path / "down.bin"
        url = f"http://web.example.com/download?size={size}&seed=9"
        code, _, err = await curl("-p", "-x", f"http://127.0.0.1:{mux}", "-o", str(target), url)
        assert code == 0, err
        assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(payload(size, 9)).hexdigest()


async def test_bad_requests_are_answered_and_the_server_carries_on(pierce, tmp_path: Path) -> None:
    async with web_service("site") as (web_port, _):
        server, mux = await tcpmux_setup(pierce, tmp_path, [tcpmux_proxy("web", web_port, "web.example.com")])

        async def raw(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", mux)
            writer.write(data)
            await writer.drain()
            try:
                return await asyncio.wait_for(reader.read(), 15)
            finally:
                writer.close()

        assert (await raw(b"GET / HTTP/1.1\r\nHost: web.example.com\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
        assert (await raw(b"\x16\x03\x01 not http at all\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        huge = b"CONNECT web.example.com:80 HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 40_000 + b"\r\n\r\n"
        assert (await raw(huge)).startswith(b"HTTP/1.1 400 ")
        codes = [e["code"] for e in await server.wait_event("front.refused", count=3)]
        assert sorted(codes) == ["bad_request", "bad_request", "not_connect"]
        # Early bytes after the CONNECT head reach the service: a whole request in one write.
        answer = await raw(
            b"CONNECT web.example.com:80 HTTP/1.1\r\nHost: web.example.com:80\r\n\r\n"
            b"GET /early HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK")
        assert b'"path": "/early"' in answer


async def test_slow_connects_are_cut_and_connections_per_address_capped(pierce, tmp_path: Path) -> None:
    """The tcpmux port takes the web ports' limits: a CONNECT head trickled a byte every 0.5 s is cut at
    the whole-head deadline (2 s here), and connections beyond ``vhost_max_conns_per_ip`` are reset."""
    async with web_service("site") as (web_port, _):
        server, mux = await tcpmux_setup(
            pierce,
            tmp_path,
            [tcpmux_proxy("web", web_port, "web.example.com")],
            vhost_header_timeout=2,
            vhost_max_conns_per_ip=3,
        )
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", mux)
        head = b"CONNECT web.example.com:80 HTTP/1.1\r\nHost: web.example.com:80\r\n\r\n"

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for i in range(len(head)):
                    writer.write(head[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0.5)  # the attack's pace, not a synchronisation

        started = loop.time()
        dripping = asyncio.create_task(drip())
        try:
            answer = await asyncio.wait_for(reader.read(), 2 + 3)
        finally:
            dripping.cancel()
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert loop.time() - started < 2 + 3
        await server.wait_event("front.refused", lambda e: e["code"] == "bad_request")  # and released

        held = [await asyncio.open_connection("127.0.0.1", mux) for _ in range(3)]
        with contextlib.suppress(ConnectionError):  # reset, even before the connect call returned
            extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", mux)
            try:
                assert await asyncio.wait_for(extra_reader.read(), 5) == b""  # no answer
            finally:
                extra_writer.close()
        for _, w in held:
            w.close()
        (over,) = await server.wait_event("front.refused", lambda e: e["code"] == "too_many_conns")
        assert over["front"] == "tcpmux"
        # Once they are gone (each logged as a request that never came, after the trickled one), a
        # CONNECT goes through again.
        await server.wait_event("front.refused", lambda e: e["code"] == "bad_request", count=1 + 3)
        reader, writer = await asyncio.open_connection("127.0.0.1", mux)
        writer.write(head + b"GET /after HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 15)
        writer.close()
        assert b'"path": "/after"' in answer


async def test_refused_without_a_tcpmux_port(pierce, tmp_path: Path) -> None:
    server, port = await start_server(pierce, tmp_path)
    client = await start_client(pierce, tmp_path, port, [tcpmux_proxy("web", 1, "web.example.com")])
    (refused,) = await client.wait_event("proxy.refused")
    assert "tcpmux_httpconnect_port" in refused["error"]
    assert server.matching("front.listening") == []
