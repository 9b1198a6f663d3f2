"""``pierce nat``: run the RFC 5780 behaviour tests against a STUN server and classify the NAT.

Tests (each socket is fresh, so one test's traffic cannot open another's filter):

- mapping, socket M: Binding to the primary address (test I), then to the other IP with the primary port
  (II) and to the other IP and port (III). With a one-address server, II goes to the other port and III
  is skipped.
- filtering, socket F: test I, then CHANGE-REQUEST "IP and port" and "port only" at once.
- hairpinning, after mapping: socket B learns its own mapping, M sends one datagram to it (so a filtering
  NAT lets B's answer in), and B sends to M's public address; did M get it?
- route trace for CGNAT (`pierce.nat.hops`), alongside.
- optionally, the mapping lifetime (`measure_lifetime`).

Requests are retransmitted RFC 8489 style (RTO doubling from ``rto``) until ``timeout`` per test; a test
whose answer is "nothing came back" therefore takes ``timeout`` seconds, which bounds the whole run.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import msgspec

from pierce.addr import HostPort, parse_host_port
from pierce.errors import LocalError
from pierce.nat import hops, stun
from pierce.nat.classify import NatReport, Observations, Outcome, classify
from pierce.nat.stun import Endpoint, Message, StunParseError

DEFAULT_TIMEOUT = 3.0
#: First retransmission timeout; RFC 8489 suggests 500 ms and doubling.
DEFAULT_RTO = 0.5
DEFAULT_LIFETIME_MAX = 120.0
DEFAULT_LIFETIME_RESOLUTION = 5.0
SOFTWARE = "pierce"


class Response(msgspec.Struct, frozen=True):
    message: Message
    source: Endpoint
    #: The socket it arrived on (not always the one that sent the request: RESPONSE-PORT).
    sock: socket.socket


class StunClient:
    """UDP sockets with outstanding STUN transactions, matched by transaction id across all sockets."""

    def __init__(self, family: int, *, rto: float = DEFAULT_RTO) -> None:
        self.family = family
        self.rto = rto
        self._loop = asyncio.get_running_loop()
        self._socks: list[socket.socket] = []
        self._pending: dict[bytes, asyncio.Future[Response]] = {}

    def open(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", 0))
        self._socks.append(sock)
        self._loop.add_reader(sock.fileno(), self._on_readable, sock)
        return sock

    def close(self) -> None:
        for sock in self._socks:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
        for future in self._pending.values():
            future.cancel()

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error from an earlier send: not an answer
            try:
                message = stun.decode(data)
            except StunParseError:
                continue
            future = self._pending.get(message.transaction_id)
            if future is not None and not future.done():
                future.set_result(Response(message, Endpoint.of(addr), sock))

    def send(self, sock: socket.socket, message: Message, dest: Endpoint) -> None:
        with contextlib.suppress(OSError):
            sock.sendto(stun.encode(message), self._sockaddr(dest))

    def _sockaddr(self, dest: Endpoint) -> tuple[str, int]:
        if self.family == socket.AF_INET6 and dest.ip.version == 4:
            return f"::ffff:{dest.ip}", dest.port
        return str(dest.ip), dest.port

    async def request(
        self, sock: socket.socket, message: Message, dest: Endpoint, timeout: float
    ) -> Response | None:
        """Send ``message`` (a request, or a probe another socket should receive) until answered or
        ``timeout``; None when nothing came back."""
        future: asyncio.Future[Response] = self._loop.create_future()
        self._pending[message.transaction_id] = future
        deadline = self._loop.time() + timeout
        wait = self.rto
        try:
            while True:
                self.send(sock, message, dest)
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wait, remaining)):
                        return await asyncio.shield(future)
                wait *= 2
        finally:
            self._pending.pop(message.transaction_id, None)


def local_endpoint(sock: socket.socket, towards: Endpoint) -> Endpoint:
    """``sock``'s port with the address the kernel routes from towards ``towards`` (no packet sent)."""
    with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
        target: tuple[str, int] = (str(towards.ip), towards.port)
        if sock.family == socket.AF_INET6 and towards.ip.version == 4:
            target = (f"::ffff:{towards.ip}", towards.port)
        probe.connect(target)
        ip = Endpoint.of(probe.getsockname()).ip
    return Endpoint(ip, Endpoint.of(sock.getsockname()).port)


async def resolve(server: HostPort) -> Endpoint:
    """The server's address; a name is resolved once, IPv4 preferred."""
    if server.ip is not None:
        return Endpoint(server.ip, server.port)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise LocalError(f"cannot resolve STUN server {server.host}: {exc.strerror or exc}") from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    host, port = infos[0][4][:2]
    return Endpoint.of((str(host), int(port)))


async def discover(
    server: HostPort,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    rto: float = DEFAULT_RTO,
    lifetime: bool = False,
    lifetime_max: float = DEFAULT_LIFETIME_MAX,
    lifetime_resolution: float = DEFAULT_LIFETIME_RESOLUTION,
    trace_route: bool = True,
) -> NatReport:
    """Run every test against ``server`` and classify. Never raises for network trouble: what could not
    be learnt is None in the report, with the reason in ``why``."""
    primary = await resolve(server)
    family = socket.AF_INET6 if primary.ip.version == 6 else socket.AF_INET
    obs = Observations(server=primary)
    client = StunClient(family, rto=rto)
    try:
        main = client.open()
        with contextlib.suppress(OSError):
            obs.local = local_endpoint(main, primary)
        first = await client.request(main, _request(), primary, timeout)
        if first is None or first.message.cls is not stun.Class.SUCCESS:
            obs.notes.append(f"No STUN answer from {primary} within {timeout:g} s.")
            return classify(obs)
        try:
            obs.mapped = first.message.reflexive_address
            obs.other = first.message.other_address
        except StunParseError as exc:
            obs.notes.append(f"The server's answer was malformed: {exc}.")
            return classify(obs)
        if obs.mapped is None:
            obs.notes.append("The server's answer carried no mapped address.")
            return classify(obs)

        async def mapping_then_hairpin() -> None:
            await _mapping_tests(client, main, obs, timeout)
            if obs.local is not None and obs.mapped != obs.local:
                obs.hairpin = await _hairpin_test(client, main, obs, timeout)

        await asyncio.gather(
            mapping_then_hairpin(),
            _filtering_tests(client, obs, timeout),
            _trace(obs, timeout, enabled=trace_route and obs.mapped != obs.local),
        )
        if lifetime:
            if obs.local is not None and obs.mapped == obs.local:
                obs.lifetime_note = "No NAT, so there is no mapping lifetime to measure."
            else:
                obs.lifetime, obs.lifetime_note = await measure_lifetime(
                    client, primary, maximum=lifetime_max, resolution=lifetime_resolution, wait=timeout
                )
        return classify(obs)
    finally:
        client.close()


def _request(*, change_ip: bool = False, change_port: bool = False) -> Message:
    return stun.binding_request(software=SOFTWARE, change_ip=change_ip, change_port=change_port)


async def _mapping_tests(client: StunClient, sock: socket.socket, obs: Observations, timeout: float) -> None:
    other, primary = obs.other, obs.server
    if other is None or obs.mapped == obs.local:
        return
    second = Endpoint(primary.ip, other.port) if obs.one_address else Endpoint(other.ip, primary.port)
    reply = await client.request(sock, _request(), second, timeout)
    obs.mapped_2 = _reflexive(reply)
    if obs.one_address or obs.mapped_2 is None or obs.mapped_2 == obs.mapped:
        return
    obs.mapped_3 = _reflexive(await client.request(sock, _request(), other, timeout))


def _reflexive(reply: Response | None) -> Endpoint | None:
    if reply is None or reply.message.cls is not stun.Class.SUCCESS:
        return None
    try:
        return reply.message.reflexive_address
    except StunParseError:
        return None


async def _filtering_tests(client: StunClient, obs: Observations, timeout: float) -> None:
    if obs.other is None:
        return
    primary = obs.server
    sock = client.open()
    if await client.request(sock, _request(), primary, timeout) is None:
        obs.notes.append("The filtering test's first request got no answer.")
        return

    def changed_both(source: Endpoint) -> bool:
        return source.ip != primary.ip and source.port != primary.port

    def changed_port(source: Endpoint) -> bool:
        return source.ip == primary.ip and source.port != primary.port

    async def run(change_ip: bool, check: Callable[[Endpoint], bool]) -> Outcome:
        reply = await client.request(sock, _request(change_ip=change_ip, change_port=True), primary, timeout)
        if reply is None:
            return Outcome.SILENT
        if reply.message.cls is stun.Class.ERROR:
            return Outcome.REFUSED
        return Outcome.ANSWERED if check(reply.source) else Outcome.WRONG_SOURCE

    if obs.one_address:
        obs.change_port = await run(False, changed_port)
    else:
        obs.change_both, obs.change_port = await asyncio.gather(
            run(True, changed_both), run(False, changed_port)
        )


async def _hairpin_test(
    client: StunClient, main: socket.socket, obs: Observations, timeout: float
) -> bool | None:
    assert obs.mapped is not None
    other = client.open()
    reply = await client.request(other, _request(), obs.server, timeout)
    other_mapped = _reflexive(reply)
    if other_mapped is None:
        return None
    client.send(main, _request(), other_mapped)  # lets the answer through a filtering NAT
    probe = _request()
    got = await client.request(other, probe, obs.mapped, timeout)
    return got is not None and got.sock is main


async def _trace(obs: Observations, timeout: float, *, enabled: bool) -> None:
    if not enabled:
        return
    try:
        result = await hops.trace(obs.server, timeout=min(timeout, 2.0))
    except OSError as exc:
        obs.hops_note = f"TTL-limited probes are not available here: {exc.strerror or exc}"
        return
    if not any(hop is not None for hop in result.hops):
        obs.hops_note = "no router answered TTL-limited probes"
        return
    obs.hops = result.hops
    obs.hops_reached = result.reached is not None


async def measure_lifetime(
    client: StunClient,
    server: Endpoint,
    *,
    maximum: float,
    resolution: float,
    wait: float,
    rounds: int = 3,
    points: int = 3,
) -> tuple[float | None, str]:
    """A lower bound of how long an idle UDP mapping survives, by bisection on idle gaps.

    Each probe opens a fresh socket X (a new mapping), stays idle for the gap, then a second socket asks
    the server (RESPONSE-PORT, RFC 5780 section 4.6) to answer to X's public port: X hears it only if its
    mapping is still there. The first round tries gaps halving down from ``maximum`` all at once; later
    rounds split the interval between the longest gap survived and the shortest one not survived into
    ``points`` gaps, again at once, until it is narrower than ``resolution``.
    """
    asker = client.open()
    if await _mapping_alive(client, asker, server, 0.0, wait) is not True:
        return None, (
            "The server does not honour RESPONSE-PORT (on pierce server: stun_allow_response_port = true), "
            "so the mapping lifetime was not measured."
        )
    gaps = sorted({maximum / 2**i for i in range(8) if maximum / 2**i >= resolution} | {maximum})
    alive, dead = 0.0, None
    for _ in range(rounds):
        results = await _probe_gaps(client, asker, server, gaps, wait)
        alive = max([alive, *(g for g, ok in results.items() if ok)])
        dead_gaps = [g for g, ok in results.items() if ok is False and g > alive]
        if dead_gaps:
            dead = min([*dead_gaps, *([dead] if dead is not None else [])])
        if dead is None or dead - alive <= resolution:
            break
        step = (dead - alive) / (points + 1)
        gaps = [alive + step * (i + 1) for i in range(points)]
    bound = round(alive, 1)
    if dead is None:
        return bound, f"Idle UDP mappings survived the longest gap tried, {maximum:g} s."
    return bound, f"Idle UDP mappings survived {bound:g} s idle but not {dead:.1f} s."


async def _probe_gaps(
    client: StunClient, asker: socket.socket, server: Endpoint, gaps: list[float], wait: float
) -> dict[float, bool | None]:
    """Probe all gaps at once; once one is found dead, longer ones are not waited for."""
    tasks = {gap: asyncio.create_task(_mapping_alive(client, asker, server, gap, wait)) for gap in gaps}
    results: dict[float, bool | None] = {}
    try:
        for gap in sorted(gaps):
            results[gap] = await tasks[gap]
            if results[gap] is False:
                break
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return results


async def _mapping_alive(
    client: StunClient, asker: socket.socket, server: Endpoint, gap: float, wait: float
) -> bool | None:
    """True if a fresh mapping still receives after ``gap`` idle seconds; None if it never got one."""
    sock = client.open()
    mapped = _reflexive(await client.request(sock, _request(), server, wait))
    if mapped is None:
        return None
    if gap > 0:
        await asyncio.sleep(gap)
    reply = await client.request(asker, stun.binding_request(response_port=mapped.port), server, wait)
    return reply is not None and reply.sock is sock


def stun_server(text: str, *, default_port: int) -> HostPort:
    """``HOST[:PORT]``, ``[IPv6][:PORT]`` or a bare IPv6 address; ``default_port`` when none is given.

    Raises ValueError saying what was expected.
    """
    if text.endswith("]") or text.count(":") == 0:
        text = f"{text}:{default_port}"
    elif text.count(":") > 1 and not text.startswith("["):
        text = f"[{text}]:{default_port}"  # a bare IPv6 address
    return parse_host_port(text)
