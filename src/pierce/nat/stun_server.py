"""The STUN responder of ``pierce server``: Binding requests on UDP, with RFC 5780 behaviour discovery.

Four sockets at most: the primary address on ``port`` and ``port + 1`` (so CHANGE-REQUEST "change port"
works with one IP), and the same two ports on the alternate address when one is configured ("change IP").
A response leaves from the socket the request asked for and names it in RESPONSE-ORIGIN. OTHER-ADDRESS is
one fixed address for every response, the alternate IP with ``port + 1`` (the primary IP when there is no
alternate): clients such as coturn's natdiscovery reuse the OTHER-ADDRESS of their second response for
their third test, and an address relative to the receiving socket would make them misreport.

Only well-formed Binding requests are answered, with a response of about a hundred bytes: no reply to
anything else, no padding echoed, so the responder cannot amplify traffic. Malformed datagrams are counted
and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from pierce.addr import IPAddress
from pierce.errors import LocalError
from pierce.logs import event
from pierce.nat import stun
from pierce.nat.stun import Attr, Endpoint, StunParseError

log = logging.getLogger("pierce.stun")

SOFTWARE = "pierce"
#: Datagrams read per wake-up before yielding to the loop.
READ_BATCH = 64
#: Larger than any STUN request pierce answers (RFC 8489 keeps messages under the path MTU).
MAX_DATAGRAM = 2048
#: Attributes a request may carry that the responder understands or may safely ignore.
KNOWN_REQUEST_ATTRIBUTES = frozenset(
    {Attr.CHANGE_REQUEST, Attr.RESPONSE_PORT, Attr.PADDING, Attr.USERNAME, Attr.MESSAGE_INTEGRITY}
)

# Linux values; the socket module does not export IP_PKTINFO on every build.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex


@dataclass
class StunStats:
    """Counters since start: what arrived and what was done with it."""

    requests: int = 0
    answered: int = 0
    errors_sent: int = 0
    malformed: int = 0
    ignored: int = 0
    send_failures: int = 0


@dataclass(frozen=True)
class Reply:
    """What to send for one request: bytes, from which socket (ip index, port index) and address, to where."""

    data: bytes
    via: tuple[int, int]
    source_ip: IPAddress
    to: Endpoint
    error: bool = False


@dataclass
class Layout:
    """The responder's addresses. ``primary`` may be a wildcard; ``alternate`` never is."""

    primary: IPAddress
    port: int
    alternate: IPAddress | None = None
    software: str = SOFTWARE
    ports: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.ports = (self.port, self.port + 1)


def answer(
    data: bytes,
    source: Endpoint,
    arrived: tuple[int, int],
    local_ip: IPAddress,
    layout: Layout,
    primary_ip: Callable[[], IPAddress | None],
) -> Reply | None:
    """The reply to one datagram, or None when it gets none. Raises StunParseError for a malformed one.

    ``arrived`` says which socket got it (0 = primary / first port, 1 = alternate / second port) and
    ``local_ip`` is the address it was sent to. ``primary_ip()`` gives the concrete primary address, asked
    for only when a request on the alternate address wants an answer from the primary one (None: unknown).
    """
    request = stun.decode(data)
    if not request.is_binding_request:
        return None
    unknown = request.unknown_required(KNOWN_REQUEST_ATTRIBUTES)
    if unknown:
        if request.classic:
            return None
        reply = stun.binding_error(request, 420, "Unknown Attribute", unknown=unknown)
        return Reply(stun.encode(reply), arrived, local_ip, source, error=True)
    change_ip, change_port = request.change_request
    response_port = request.response_port
    via = (arrived[0] ^ int(change_ip), arrived[1] ^ int(change_port))
    origin_ip: IPAddress | None = local_ip
    if via[0] != arrived[0]:
        origin_ip = layout.alternate if via[0] == 1 else primary_ip()
    if origin_ip is None:
        # An RFC 3489 client counts any answer as "the change worked": stay silent for it.
        if request.classic:
            return None
        reply = stun.binding_error(request, 420, "Unknown Attribute: this server has no second address")
        return Reply(stun.encode(reply), arrived, local_ip, source, error=True)
    origin = Endpoint(origin_ip, layout.ports[via[1]])
    # With one address every request arrives on it, so local_ip is the primary address.
    other = Endpoint(layout.alternate or local_ip, layout.ports[1])
    reply = stun.binding_success(request, source, origin=origin, other=other, software=layout.software)
    to = Endpoint(source.ip, response_port) if response_port is not None else source
    return Reply(stun.encode(reply, fingerprint=not request.classic), via, origin_ip, to)


class StunServer:
    """UDP STUN responder on ``port`` and ``port + 1`` of ``primary`` (and of ``alternate`` if given).

    ``start()`` binds every socket or none (raising LocalError); ``close()`` releases them.
    """

    def __init__(self, primary: str, port: int, alternate: str | None = None) -> None:
        if not 1 <= port <= 65534:
            raise LocalError(f"STUN port {port}: expected 1 to 65534 (the next port is used too)")
        primary_ip = ipaddress.ip_address(primary)
        alternate_ip = ipaddress.ip_address(alternate) if alternate else None
        if alternate_ip is not None and alternate_ip.version != primary_ip.version:
            raise LocalError(f"stun_alt_addr {alternate}: not the same address family as {primary}")
        self.layout = Layout(primary_ip, port, alternate_ip)
        self.stats = StunStats()
        self._wildcard = primary_ip.is_unspecified
        self._family = socket.AF_INET6 if primary_ip.version == 6 else socket.AF_INET
        self._socks: dict[tuple[int, int], socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def addresses(self) -> list[Endpoint]:
        """The bound addresses: primary port, primary port + 1, then the alternate's."""
        return [Endpoint.of(sock.getsockname()) for _, sock in sorted(self._socks.items())]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ips: list[IPAddress] = [self.layout.primary]
        if self.layout.alternate is not None:
            ips.append(self.layout.alternate)
        try:
            for ip_index, ip in enumerate(ips):
                for port_index, port in enumerate(self.layout.ports):
                    self._socks[ip_index, port_index] = self._bind(ip, port)
        except LocalError:
            self._close_sockets()
            raise
        for key, sock in self._socks.items():
            self._loop.add_reader(sock.fileno(), self._on_readable, key)
        addresses = [str(a) for a in self.addresses]
        event(
            log,
            logging.INFO,
            "stun.listening",
            f"STUN on UDP {', '.join(addresses)}"
            + ("" if self.layout.alternate else " (one address: change-IP tests unavailable)"),
            addresses=addresses,
            ports=list(self.layout.ports),
            alt_addr=str(self.layout.alternate) if self.layout.alternate else None,
        )

    def _bind(self, ip: IPAddress, port: int) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            # A wildcard primary and a specific alternate share port numbers.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            sock.bind((str(ip), port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            what = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise LocalError(f"cannot listen for STUN on UDP {Endpoint(ip, port)}: {what}") from exc
        return sock

    def close(self) -> None:
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self._socks.values():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    # -- datagrams ---------------------------------------------------------------------------------------

    def _on_readable(self, key: tuple[int, int]) -> None:
        sock = self._socks.get(key)
        if sock is None:
            return
        for _ in range(READ_BATCH):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(MAX_DATAGRAM, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._handle(key, sock, data, ancdata, addr)

    def _handle(
        self,
        key: tuple[int, int],
        sock: socket.socket,
        data: bytes,
        ancdata: list[tuple[int, int, bytes]],
        addr: tuple[str, int] | tuple[str, int, int, int],
    ) -> None:
        source = Endpoint.of(addr)
        local_ip = self._destination(ancdata, key)

        def primary_ip() -> IPAddress | None:
            if not self._wildcard:
                return self.layout.primary
            return _route_source(self._family, source, exclude=self.layout.alternate)

        try:
            reply = answer(data, source, key, local_ip, self.layout, primary_ip)
        except StunParseError:
            self.stats.malformed += 1
            return
        if reply is None:
            self.stats.ignored += 1
            return
        self.stats.requests += 1
        # A wildcard socket would pick its source address by route: name the address explicitly.
        from_ip = reply.source_ip if reply.via[0] == 0 and self._wildcard else None
        try:
            self._send(self._socks[reply.via], reply, from_ip)
        except OSError:
            self.stats.send_failures += 1
            return
        if reply.error:
            self.stats.errors_sent += 1
        else:
            self.stats.answered += 1

    def _destination(self, ancdata: list[tuple[int, int, bytes]], key: tuple[int, int]) -> IPAddress:
        """The address a datagram was sent to (from IP_PKTINFO), or the socket's own address."""
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(value) >= _IN_PKTINFO.size:
                return ipaddress.IPv4Address(_IN_PKTINFO.unpack_from(value)[2])
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(value) >= 16:
                return Endpoint.of((str(ipaddress.IPv6Address(value[:16])), 0)).ip
        return self.layout.alternate if key[0] == 1 and self.layout.alternate else self.layout.primary

    def _send(self, sock: socket.socket, reply: Reply, from_ip: IPAddress | None) -> None:
        to = _sockaddr(self._family, reply.to)
        if from_ip is None:
            sock.sendto(reply.data, to)
            return
        if self._family == socket.AF_INET:
            info = _IN_PKTINFO.pack(0, from_ip.packed, b"\0" * 4)
            sock.sendmsg([reply.data], [(socket.IPPROTO_IP, _IP_PKTINFO, info)], 0, to)
        else:
            v6 = from_ip if from_ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{from_ip}")
            info = _IN6_PKTINFO.pack(v6.packed, 0)
            sock.sendmsg([reply.data], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)], 0, to)


def _sockaddr(family: int, endpoint: Endpoint) -> tuple[str, int]:
    if family == socket.AF_INET6 and endpoint.ip.version == 4:
        return f"::ffff:{endpoint.ip}", endpoint.port
    return str(endpoint.ip), endpoint.port


def _route_source(family: int, peer: Endpoint, exclude: IPAddress | None) -> IPAddress | None:
    """The local address the kernel would send from to reach ``peer`` (no packet is sent)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(_sockaddr(family, peer))
            ip = Endpoint.of(probe.getsockname()).ip
    except OSError:
        return None
    return None if ip == exclude else ip
