"""What the client's admin API and the server's web side share: serving an aiohttp app on a configured
address, and the Host check that keeps other sites' pages out of a credential-less local API."""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web

from pierce.errors import LocalError


async def start_site(
    app: web.Application, addr: str, port: int, what: str, **runner: Any
) -> tuple[web.AppRunner, str, int]:
    """Serve ``app`` on ``addr:port``; the runner, the bound ``host:port`` and its port. `LocalError`
    naming ``what`` (the config section) when the address cannot be bound."""
    app_runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner)
    await app_runner.setup()
    site = web.TCPSite(app_runner, addr, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await app_runner.cleanup()
        raise LocalError(f"{what}: cannot listen on {addr}:{port}: {exc.strerror or exc}") from exc
    host, bound = app_runner.addresses[0][:2]
    return app_runner, f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}", int(bound)


def host_header_allowed(host: str, local_address: str | None) -> bool:
    """True for ``localhost``, a loopback address, or `local_address` (where the request arrived).

    A page on another site can point its own name at this address (DNS rebinding), but the browser then
    sends that name as Host. An address literal that is neither loopback nor this connection's own
    address is refused too: nothing legitimate sends one.
    """
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name.lower() == "localhost":
        return True
    given = _ip(name)
    if given is None:
        return False
    if given.is_loopback:
        return True
    arrived = _ip(local_address) if local_address else None
    return arrived is not None and given == arrived


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
