"""Which routers lie between this host and the server: TTL-limited STUN requests, read back without root.

One UDP socket per TTL sends a Binding request with that hop limit. A router that drops it for its
expired TTL answers with ICMP time-exceeded; Linux queues that error on the sending socket when
IP_RECVERR is set, with the router's address as the "offender", and ``recvmsg(MSG_ERRQUEUE)`` reads it
without privileges. The first TTL the server answers ends the trace. Through a NAT the ICMP error of a
router beyond it is translated back like any reply, so the addresses of the carrier's routers show.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct

import msgspec

from pierce.addr import IPAddress
from pierce.nat import stun
from pierce.nat.stun import Endpoint

# Linux <linux/errqueue.h> / <linux/in.h> values; the socket module exports only some of them.
IP_RECVERR = 11
IPV6_RECVERR = 25
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED = 3, 11
ICMPV6_DEST_UNREACH, ICMPV6_TIME_EXCEED = 1, 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # errno, origin, type, code, pad, info, data
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)


class Trace(msgspec.Struct):
    """``hops[i]`` answered for TTL i + 1 (None: silent); ``reached`` is the TTL the server answered at."""

    hops: list[IPAddress | None]
    reached: int | None


class _Probe:
    def __init__(self, ttl: int, family: int, server: Endpoint) -> None:
        self.ttl = ttl
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            self.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        self.request = stun.encode(stun.binding_request())
        self.target = (str(server.ip), server.port)
        self.router: IPAddress | None = None
        self.reached = False

    @property
    def done(self) -> bool:
        return self.reached or self.router is not None

    def send(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(self.request, self.target)

    def on_readable(self, changed: asyncio.Event) -> None:
        while True:
            try:
                _, ancdata, _, _ = self.sock.recvmsg(512, 512, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            for _level, _kind, value in ancdata:
                kind, offender = _icmp_error(value)
                if kind == "time-exceeded":
                    self.router = offender
                elif kind == "unreachable":
                    self.reached = True  # the server's host (or a router next to it) refused: the end
        for _ in range(16):
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # a pending ICMP error is reported once here; its details came above
            with contextlib.suppress(stun.StunParseError):
                if stun.decode(data).transaction_id == stun.decode(self.request).transaction_id:
                    self.reached = True
        changed.set()


def _icmp_error(value: bytes) -> tuple[str, IPAddress | None]:
    """("time-exceeded", router) or ("unreachable", sender) from an IP_RECVERR control message."""
    if len(value) < _EXTENDED_ERR.size + 8:
        return "", None
    _errno, origin, kind, _code, _pad, _info, _data = _EXTENDED_ERR.unpack_from(value)
    offender = value[_EXTENDED_ERR.size :]
    address: IPAddress | None = None
    if origin == SO_EE_ORIGIN_ICMP:
        address = ipaddress.IPv4Address(offender[4:8])
        exceeded, unreachable = kind == ICMP_TIME_EXCEEDED, kind == ICMP_DEST_UNREACH
    elif origin == SO_EE_ORIGIN_ICMP6 and len(offender) >= 24:
        address = ipaddress.IPv6Address(offender[8:24])
        exceeded, unreachable = kind == ICMPV6_TIME_EXCEED, kind == ICMPV6_DEST_UNREACH
    else:
        return "", None
    return ("time-exceeded" if exceeded else "unreachable" if unreachable else ""), address


async def trace(server: Endpoint, *, max_hops: int = 8, timeout: float = 2.0, resend: float = 0.5) -> Trace:
    """Probe TTL 1..``max_hops`` at once; stop when the server has answered and every hop before it did.

    Raises OSError when the probe sockets cannot be set up (no IP_RECVERR on this system).
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if server.ip.version == 6 else socket.AF_INET
    changed = asyncio.Event()
    probes: list[_Probe] = []
    try:
        for ttl in range(1, max_hops + 1):
            probes.append(_Probe(ttl, family, server))
            loop.add_reader(probes[-1].sock.fileno(), probes[-1].on_readable, changed)
        for probe in probes:
            probe.send()
        deadline = loop.time() + timeout
        next_resend = loop.time() + resend
        while not _complete(probes):
            now = loop.time()
            if now >= deadline:
                break
            if now >= next_resend:
                for probe in probes:
                    if not probe.done:
                        probe.send()
                next_resend = now + resend * 2
            changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(deadline, next_resend) - now):
                    await changed.wait()
    finally:
        for probe in probes:
            with contextlib.suppress(Exception):
                loop.remove_reader(probe.sock.fileno())
            probe.sock.close()
    reached = next((p.ttl for p in probes if p.reached), None)
    last = (reached - 1) if reached is not None else max((p.ttl for p in probes if p.router), default=0)
    return Trace([p.router for p in probes[:last]], reached)


def _complete(probes: list[_Probe]) -> bool:
    reached = next((p.ttl for p in probes if p.reached), None)
    return reached is not None and all(p.done for p in probes[: reached - 1])
