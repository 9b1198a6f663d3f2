"""curl, the real browser of the web-proxy tests, and the small pieces of their set-up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from support.procs import PierceProcess
from support.streams import free_port
from support.tunnel import StartPierce, start_client, start_server


async def curl(*args: str) -> tuple[int, str, str]:
    """Run curl; returns (exit code, stdout, stderr)."""
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "30", *args, stdout=pipe, stderr=pipe
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def http_proxy(name: str, port: int, **options: Any) -> dict[str, Any]:
    """A ``[[proxies]]`` table of an http proxy to a loopback port."""
    return {"type": "http", "name": name, "local_ip": "127.0.0.1", "local_port": port, **options}


def https2http_proxy(directory: Path, name: str, port: int, domain: str) -> tuple[dict[str, Any], Path]:
    """An https proxy whose TLS the client ends (plugin https2http) with a self-signed certificate for
    ``domain`` written into ``directory``; the proxy and the certificate (for curl's ``--cacert``)."""
    from support.certs import self_signed

    crt, key = self_signed(directory, domain)
    proxy = {
        "type": "https",
        "name": name,
        "local_port": port,
        "custom_domains": [domain],
        "plugin": "https2http",
        "plugin_crt_path": str(crt),
        "plugin_key_path": str(key),
    }
    return proxy, crt


async def ready(client: PierceProcess, name: str) -> dict[str, Any]:
    """The client's ``proxy.ready`` event of proxy ``name``, once it has come."""
    (event,) = await client.wait_event("proxy.ready", lambda e: e.get("proxy") == name)
    return event


def resolve(domain: str, port: int) -> list[str]:
    """curl arguments that send ``domain:port`` to 127.0.0.1."""
    return ["--resolve", f"{domain}:{port}:127.0.0.1"]


async def vhost_server(
    pierce: StartPierce, tmp_path: Path, **settings: Any
) -> tuple[PierceProcess, int, int]:
    """A server with a free vhost_http_port; returns it, its control port and its HTTP port."""
    http_port = free_port()
    server, control = await start_server(pierce, tmp_path, vhost_http_port=http_port, **settings)
    return server, control, http_port


#: Bytes of each body the inspector of `inspected_client` keeps.
INSPECT_BODY_BYTES = 1024


async def inspected_client(
    pierce: Any, tmp_path: Path, control: int, proxies: list[dict[str, Any]], **settings: Any
) -> tuple[int, dict[str, str]]:
    """A client with its admin API (the request inspector keeping `INSPECT_BODY_BYTES` of each body) and
    the given proxies; its admin port and bearer header."""
    admin_port = free_port()
    state = tmp_path / "client-state"
    client = await start_client(
        pierce,
        tmp_path,
        control,
        proxies,
        admin_port=admin_port,
        state_dir=str(state),
        inspector={"requests": 50, "body_bytes": INSPECT_BODY_BYTES},
        **settings,
    )
    await client.wait_event("admin.listening")
    for proxy in proxies:
        await ready(client, proxy["name"])
    token = (state / "admin.token").read_text().strip()
    return admin_port, {"Authorization": f"Bearer {token}"}
