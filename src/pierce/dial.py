"""Dialling out: resolve a target (per connection, so DNS changes are followed) and connect with a timeout."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from pierce.addr import HostPort, format_sockaddr
from pierce.errors import LocalError
from pierce.listeners import open_file_limit, tune_tcp
from pierce.relay import wait_fd

if TYPE_CHECKING:
    import ssl as _ssl


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
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors (EMFILE, ENFILE) or memory: this connection fails
            what = exc.strerror or str(exc)
            if exc.errno == errno.EMFILE:
                what += f" (this process may open {open_file_limit()}: raise LimitNOFILE= or ulimit -n)"
            raise TargetUnreachable(f"cannot open a socket to connect to {target}: {what}") from exc
        sock.setblocking(False)
        try:
            async with asyncio.timeout_at(deadline):
                await _connect(loop, sock, addr)
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
        tune_tcp(sock)
        return sock
    raise TargetUnreachable(f"connect to {target} failed: {'; '.join(errors) or 'no address'}")


#: ``connect`` on a non-blocking socket: under way, readiness to write says when it is done.
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, addr: Any) -> None:
    """``loop.sock_connect`` for an address `resolve` gave: uvloop's resolves it once more, which loads the
    IDNA codec (and its Unicode tables) into every client for an IP literal. Elsewhere (Windows' proactor
    loop has no ``add_writer``) the loop's own."""
    if sys.platform == "win32":
        await loop.sock_connect(sock, addr)
        return
    err = sock.connect_ex(addr)
    if err in _IN_PROGRESS:
        await wait_fd(loop, sock.fileno(), writable=True)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


async def open_stream(
    sock: socket.socket,
    *,
    limit: int = 2**16,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection` on the connected ``sock`` (TLS with ``ssl``), which it takes over for
    good: from this call on only the transport closes the descriptor, also when the call fails or is
    cancelled; ``sock`` is closed or has let go of it by then, so nothing else closes that number later.

    asyncio's own loops keep this very socket object in the transport. uvloop takes the descriptor by
    number (libuv closes it) and detaches the object once its transport has closed, but a connection that
    dies in the loop turn between the transport's start and the end of this call (a reset that meets the
    TLS ClientHello, as from a server going down) is closed before uvloop attaches the object, which then
    keeps the number: ``close`` does nothing (uvloop marked it in use) and its finalizer closes the number
    whenever the object is collected, by then often another connection's descriptor (which then fails
    with EBADF). On such loops the object lets go of the number here, whatever the outcome.
    """
    loop = asyncio.get_running_loop()
    try:
        streams = await asyncio.open_connection(
            sock=sock, limit=limit, ssl=ssl, server_hostname=server_hostname
        )
    except BaseException:
        _let_go(loop, sock, failed=True)
        raise
    _let_go(loop, sock, failed=False)
    return streams


def _let_go(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, failed: bool) -> None:
    """``sock`` after the loop took it over (see `open_stream`)."""
    if not isinstance(loop, asyncio.BaseEventLoop):  # uvloop: the descriptor is libuv's now
        sock.detach()
    elif failed:  # the transport holds this object and closes it too: closing twice does nothing
        sock.close()
