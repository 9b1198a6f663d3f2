"""The STUN responder of ``pierce server``: Binding requests on UDP, with RFC 5780 behaviour discovery,
and on TCP at the primary address and port (`pierce.nat.stun_tcp`, for TCP reflexive addresses).

Four sockets at most: the primary address on ``port`` and ``port + 1`` (so CHANGE-REQUEST "change port"
works with one IP), and the same two ports on the alternate address when one is configured ("change IP").
A response leaves from the socket the request asked for and names it in RESPONSE-ORIGIN. OTHER-ADDRESS is
one fixed address for every response, the alternate IP with ``port + 1`` (the primary IP when there is no
alternate): clients such as coturn's natdiscovery reuse the OTHER-ADDRESS of their second response for
their third test, and an address relative to the receiving socket would make them misreport.

The source address of a UDP request can be forged, so the responder must not be worth using as a
reflector:

- Only well-formed Binding requests are answered, each with one small response and only the attributes
  the request needs (no SOFTWARE, no FINGERPRINT, no PADDING echoed; MAPPED-ADDRESS only for RFC 3489
  clients and RFC 5780 requests). `MAX_AMPLIFICATION` is the largest response / request size ratio.
- Answers are rate limited per source (an IPv4 address or an IPv6 /64) and in total (`StunPolicy`);
  requests over the limit are dropped and counted.
- RESPONSE-PORT, which sends the answer to another port of the (forgeable) source, is refused with
  420 Unknown Attribute (RFC 5780 section 5) unless ``allow_response_port`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable

import msgspec

from pierce.addr import IPAddress, source_of
from pierce.errors import LocalError
from pierce.logs import event
from pierce.nat import stun
from pierce.nat.stun import Attr, Endpoint, StunParseError
from pierce.nat.stun_policy import StunPolicy as StunPolicy
from pierce.nat.stun_tcp import StunTcpListener, StunTcpStats
from pierce.ratelimit import KeyedLimiter, Verdict

log = logging.getLogger("pierce.stun")

#: Datagrams read per wake-up before yielding to the loop.
READ_BATCH = 64
#: Larger than any STUN request pierce answers (RFC 8489 keeps messages under the path MTU).
MAX_DATAGRAM = 2048
#: Attributes a request may carry that the responder understands or may safely ignore (RESPONSE-PORT
#: only when it is allowed).
KNOWN_REQUEST_ATTRIBUTES = frozenset(
    {Attr.CHANGE_REQUEST, Attr.PADDING, Attr.USERNAME, Attr.MESSAGE_INTEGRITY}
)

#: Largest response / request size ratio: a 24-byte request with an empty PADDING gets XOR-MAPPED-,
#: MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS, 68 bytes over IPv4 and 116 over IPv6. A plain
#: 20-byte Binding request gets 56 and 92 bytes (2.8 and 4.6).
MAX_AMPLIFICATION = {4: 68 / 24, 6: 116 / 24}

# Linux values; the socket module does not export IP_PKTINFO on every build.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex


class StunStats(StunTcpStats):
    """Counters since start: what arrived and what was done with it (UDP; ``tcp_*`` for TCP)."""

    requests: int = 0
    answered: int = 0
    errors_sent: int = 0
    malformed: int = 0
    ignored: int = 0
    send_failures: int = 0
    #: Datagrams dropped unread because their source was over ``rate`` / ``burst``.
    dropped_rate_limited: int = 0
    #: Datagrams dropped unread because all sources together were over ``global_rate``.
    dropped_global_limit: int = 0


class Reply(msgspec.Struct, frozen=True):
    """What to send for one request: bytes, from which socket (ip index, port index) and address, to where."""

    data: bytes
    via: tuple[int, int]
    source_ip: IPAddress
    to: Endpoint
    error: bool = False


class Layout(msgspec.Struct):
    """The responder's addresses. ``primary`` may be a wildcard; ``alternate`` never is."""

    primary: IPAddress
    port: int
    alternate: IPAddress | None = None

    @property
    def ports(self) -> tuple[int, int]:
        return (self.port, self.port + 1)


def answer(
    data: bytes,
    source: Endpoint,
    arrived: tuple[int, int],
    local_ip: IPAddress,
    layout: Layout,
    primary_ip: Callable[[], IPAddress | None],
    *,
    allow_response_port: bool = False,
) -> Reply | None:
    """The reply to one datagram, or None when it gets none. Raises StunParseError for a malformed one.

    ``arrived`` says which socket got it (0 = primary / first port, 1 = alternate / second port) and
    ``local_ip`` is the address it was sent to. ``primary_ip()`` gives the concrete primary address, asked
    for only when a request on the alternate address wants an answer from the primary one (None: unknown).
    Responses carry no FINGERPRINT: it is only needed when STUN shares a port with other traffic
    (RFC 5780 section 6.1), and it would add 8 bytes to every answer.
    """
    request = stun.decode(data)
    if not request.is_binding_request:
        return None
    known = KNOWN_REQUEST_ATTRIBUTES | ({Attr.RESPONSE_PORT} if allow_response_port else set())
    unknown = request.unknown_required(known)
    if unknown:
        if request.classic:
            return None
        # RFC 5780 section 5: a client must expect 420 for RESPONSE-PORT from a server without it.
        reply = stun.binding_error(request, 420, "Unknown Attribute", unknown=unknown)
        return Reply(stun.encode(reply, fingerprint=False), arrived, local_ip, source, error=True)
    change_ip, change_port = request.change_request
    response_port = request.response_port
    if response_port is not None and request.get(Attr.PADDING) is not None:
        # RFC 5780 section 6.1: RESPONSE-PORT with PADDING gets 400.
        reply = stun.binding_error(request, 400, "Bad Request")
        return Reply(stun.encode(reply, fingerprint=False), arrived, local_ip, source, error=True)
    via = (arrived[0] ^ int(change_ip), arrived[1] ^ int(change_port))
    origin_ip: IPAddress | None = local_ip
    if via[0] != arrived[0]:
        origin_ip = layout.alternate if via[0] == 1 else primary_ip()
    if origin_ip is None:
        # An RFC 3489 client counts any answer as "the change worked": stay silent for it.
        if request.classic:
            return None
        reply = stun.binding_error(request, 420, "No second address")
        return Reply(stun.encode(reply, fingerprint=False), arrived, local_ip, source, error=True)
    origin = Endpoint(origin_ip, layout.ports[via[1]])
    # With one address every request arrives on it, so local_ip is the primary address.
    other = Endpoint(layout.alternate or local_ip, layout.ports[1])
    reply = stun.binding_success(request, source, origin=origin, other=other)
    to = Endpoint(source.ip, response_port) if response_port is not None else source
    return Reply(stun.encode(reply, fingerprint=False), via, origin_ip, to)


class StunServer:
    """UDP STUN responder on ``port`` and ``port + 1`` of ``primary`` (and of ``alternate`` if given).

    ``start()`` binds every socket or none (raising LocalError); ``close()`` releases them. ``policy``
    sets the answer rates and whether RESPONSE-PORT is honoured; ``clock`` is for tests.
    """

    def __init__(
        self,
        primary: str,
        port: int,
        alternate: str | None = None,
        *,
        policy: StunPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= port <= 65534:
            raise LocalError(f"STUN port {port}: expected 1 to 65534 (the next port is used too)")
        primary_ip = ipaddress.ip_address(primary)
        alternate_ip = ipaddress.ip_address(alternate) if alternate else None
        if alternate_ip is not None and alternate_ip.version != primary_ip.version:
            raise LocalError(f"stun_alt_addr {alternate}: not the same address family as {primary}")
        self.layout = Layout(primary_ip, port, alternate_ip)
        self.policy = policy or StunPolicy()
        self.stats = StunStats()
        self._limiter = KeyedLimiter(
            rate=self.policy.rate, burst=self.policy.burst, global_rate=self.policy.global_rate
        )
        self._clock = clock
        self._wildcard = primary_ip.is_unspecified
        self._family = socket.AF_INET6 if primary_ip.version == 6 else socket.AF_INET
        self._socks: dict[tuple[int, int], socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The TCP listener on the primary address and port; None when that port was taken.
        self.tcp: StunTcpListener | None = None

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
        self._start_tcp()
        addresses = [str(a) for a in self.addresses]
        tcp = str(self.tcp.address) if self.tcp is not None else None
        event(
            log,
            logging.INFO,
            "stun.listening",
            f"STUN on UDP {', '.join(addresses)}"
            + (f" and TCP {tcp}" if tcp else "")
            + ("" if self.layout.alternate else " (one address: change-IP tests unavailable)"),
            addresses=addresses,
            ports=list(self.layout.ports),
            alt_addr=str(self.layout.alternate) if self.layout.alternate else None,
            listen=tcp,
        )

    def _start_tcp(self) -> None:
        """TCP STUN on the primary address and port; when that port is taken UDP STUN runs without it."""
        try:
            self.tcp = StunTcpListener.open(
                (str(self.layout.primary), self.layout.port),
                self._family,
                self._limiter,
                self._clock,
                self.stats,
            )
        except LocalError as exc:
            event(
                log,
                logging.WARNING,
                "stun.tcp_unavailable",
                f"STUN over TCP not started: {exc}",
                error=str(exc),
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
        if self.tcp is not None:
            self.tcp.close()
            self.tcp = None
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
        # Before any parsing: a flood costs as little as possible, whatever it contains.
        verdict = self._limiter.check(source_of(str(source.ip)), self._clock())
        if verdict is Verdict.KEY_LIMITED:
            self.stats.dropped_rate_limited += 1
            return
        if verdict is Verdict.GLOBAL_LIMITED:
            self.stats.dropped_global_limit += 1
            return
        local_ip = self._destination(ancdata, key)

        def primary_ip() -> IPAddress | None:
            if not self._wildcard:
                return self.layout.primary
            return _route_source(self._family, source, exclude=self.layout.alternate)

        try:
            reply = answer(
                data,
                source,
                key,
                local_ip,
                self.layout,
                primary_ip,
                allow_response_port=self.policy.allow_response_port,
            )
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
