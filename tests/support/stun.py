"""A ``pierce server`` answering STUN on free loopback ports, and a STUN exchange that retransmits.

127.0.0.1 and 127.0.0.2 are both on ``lo``, so a server with ``stun_alt_addr = "127.0.0.2"`` has the two
addresses RFC 5780 needs; any other 127.x address serves as one more client source.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

from pierce.nat import stun
from support.tunnel import StartPierce, start_server

PRIMARY, ALTERNATE = "127.0.0.1", "127.0.0.2"


def free_port_pair() -> int:
    """A UDP port P with P + 1 also free, on both loopback addresses, and TCP port P on the first."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((PRIMARY, 0))
            port = int(probe.getsockname()[1])
        if port >= 65534:
            continue
        taken = []
        try:
            for ip in (PRIMARY, ALTERNATE):
                for p in (port, port + 1):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    taken.append(sock)
                    sock.bind((ip, p))
            # STUN over TCP listens on the first port too.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            taken.append(sock)
            sock.bind((PRIMARY, port))
        except OSError:
            continue
        finally:
            for sock in taken:
                sock.close()
        return port
    raise RuntimeError("no free pair of UDP ports")


async def stun_server(pierce: StartPierce, tmp_path: Path, bind: str = PRIMARY, **settings: Any) -> int:
    """A ``pierce server`` answering STUN on a free port pair of both loopback addresses; its port.

    With ``bind = "0.0.0.0"`` the primary sockets are wildcards: answers must still leave from the
    address each request was sent to (and name it in RESPONSE-ORIGIN). ``settings`` go to server.toml.
    """
    port = free_port_pair()
    settings = {"stun_port": port, "stun_alt_addr": ALTERNATE, "bind_addr": bind, **settings}
    proc, _ = await start_server(pierce, tmp_path, **settings)
    (listening,) = await proc.wait_event("stun.listening")
    assert listening["ports"] == [port, port + 1]
    assert listening["listen"] is not None, proc.matching("stun.tcp_unavailable")
    return port


def udp_socket(ip: str = PRIMARY) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((ip, 0))
    return sock


async def exchange(
    send: socket.socket,
    request: stun.Message,
    dest: tuple[str, int],
    *,
    receive: socket.socket | None = None,
    fingerprint: bool = True,
    timeout: float = 10.0,
) -> bytes:
    """Send ``request`` from ``send`` every 0.2 s until its answer reaches ``receive`` (default: ``send``);
    the answer's bytes. Other datagrams arriving meanwhile are skipped."""
    loop = asyncio.get_running_loop()
    receive = receive or send
    data = stun.encode(request, fingerprint=fingerprint)
    async with asyncio.timeout(timeout):
        while True:
            send.sendto(data, dest)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    while True:
                        answer = await loop.sock_recv(receive, 2048)
                        if stun.decode(answer).transaction_id == request.transaction_id:
                            return answer
