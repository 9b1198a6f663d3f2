"""Dialling out: resolve a target (per connection, so DNS changes are followed) and connect with a timeout."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from pierce.addr import HostPort, format_sockaddr
from pierce.errors import LocalError
from pierce.listeners import set_nodelay


class TargetUnreachable(LocalError):
    """The target did not accept a connection (refused, timed out, no route, name not found)."""


async def resolve(target: HostPort, kind: socket.SocketKind) -> list[tuple[socket.AddressFamily, Any]]:
    """Addresses for ``target``; IP literals skip the resolver."""
    if target.ip is not None:
        return [(target.family, (target.host, target.port))]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=kind)
    except socket.gaierror as exc:
        raise TargetUnreachable(f"cannot resolve {target.host}: {exc.strerror}") from exc
    return [(family, addr) for family, _, _, _, addr in infos]


async def connect_tcp(target: HostPort, timeout: float) -> socket.socket:
    """Connect to ``target`` trying each resolved address in turn within ``timeout`` seconds overall."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    errors: list[str] = []
    for family, addr in await resolve(target, socket.SOCK_STREAM):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout_at(deadline):
                await loop.sock_connect(sock, addr)
        except TimeoutError:
            sock.close()
            raise TargetUnreachable(f"connect to {target} timed out after {timeout:g}s") from None
        except OSError as exc:
            sock.close()
            errors.append(f"{format_sockaddr(addr)}: {os.strerror(exc.errno) if exc.errno else exc}")
            continue
        except BaseException:
            sock.close()
            raise
        set_nodelay(sock)
        return sock
    raise TargetUnreachable(f"connect to {target} failed: {'; '.join(errors) or 'no address'}")
