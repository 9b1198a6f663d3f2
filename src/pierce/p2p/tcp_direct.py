"""The direct TCP path of a P2P (xtcp) rendezvous: TCP reflexive addresses, a LAN connect or a TCP
simultaneous open through both NATs, one socket both sides agree on, then an authenticated channel on it.

Theory of operation
-------------------
Each side has one fixed local port, ``local_port``. `tcp_reflexive` connects from it to the server's
STUN over TCP and learns the public address the NAT gave that TCP connection (a cone NAT such as Linux
MASQUERADE keeps it for every destination). Both sides exchange their candidates through the rendezvous
and call `connect_direct` with the peer's candidates and the same ``start_at`` (each in its own loop
time). Every socket is bound to ``local_port`` with SO_REUSEADDR / SO_REUSEPORT (`bind_reusable`), and a
listener on it accepts what arrives when no connect of ours is waiting (two hosts on one LAN).

Host candidates (a shared LAN, no NAT between): both sides connect from ``start_at``; refused, reset and
unreachable end only that attempt (a new SYN after `RETRY_PACING`), and a SYN unanswered for
`ATTEMPT_WINDOW` is replaced by a fresh one (closing a socket in SYN_SENT sends nothing).

Server-reflexive and predicted candidates (through both NATs) are hard because of the first SYN and
because NATs track TCP sequence numbers. Measured on Linux MASQUERADE routers (tests/natlab):

- A SYN that reaches the peer's NAT before that NAT has sent anything to us is answered with a RST by
  the router (which kills our attempt), and the unreplied conntrack entry it leaves makes the NAT map the
  peer's own SYN to another port for the next 10 s.
- A NAT that saw a SYN come in for an entry in SYN_SENT (a simultaneous open, conntrack's SYN_SENT2)
  lets out only an answer carrying exactly the sequence number of the last SYN it let out from inside.
  An answer from another socket (our listener's SYN-ACK, a new connect) has another ISN: conntrack
  ignores it, and the connection never completes. Whatever answers the peer's SYN must be the very socket
  whose SYN opened our NAT.

So the two roles differ. The *owner* opens its NAT: at ``start_at`` it connects with the first SYN at a
low IP TTL (``opening_ttl``, default 2: the SYN passes its NAT and dies at the next router, before the
visitor's NAT) and restores the normal TTL on the same socket at once, so that socket's retransmissions
and its answer to the visitor's SYN (a simultaneous open, RFC 9293 section 3.5) go all the way. The router
where the opening SYN died may send an ICMP time-exceeded that kills the socket; then a new one opens
again, `OPENING_INTERVAL` later (at most `MAX_OPENINGS`; routers rate-limit these ICMP errors: a Linux
router sends 6 in a burst to one destination, then one a second, so an opening socket soon survives). The
*visitor* sends normal SYNs from ``start_at + OPENING_LEAD`` on, and keeps one socket while it is
unanswered (the kernel retransmits the same SYN; a new socket would change the ISN the owner's NAT
already saw); only a RST or an ICMP error starts a new one, after `RETRY_PACING`. Its SYN finds the
owner's NAT open and the owner's socket in SYN_SENT, whose SYN-ACK goes back through both NATs.
``OPENING_LEAD`` is also the clock skew between the two sides tolerated. ``opening_ttl=None`` makes the
owner connect like the visitor (for NATs that need no opening).

Both sides may end up with several connected sockets (a LAN and a public path, or the listener and a
connect). The *visitor* decides: it sends `NOMINATE` (one byte) on the first socket that connects and
waits for `ACCEPT` on it; the *owner* sends nothing until it reads `NOMINATE` on a socket, accepts the
first socket nominated, answers `ACCEPT` on it and closes every other. A socket that answers anything else
(a stranger on a LAN address that is not the peer) is dropped and the visitor nominates the next one. The
bytes are not authenticated: whoever is on the chosen socket must still pass `secure_visitor` /
`secure_owner`.

Then `secure_owner` and `secure_visitor` authenticate the socket with the rendezvous key, and encrypt it
unless the proxy has ``encrypt_data = false``:

- TLS 1.3: the owner is the TLS server with its `Identity`; the visitor accepts exactly the certificate
  whose SHA-256 it pinned from the rendezvous (`FingerprintMismatch` otherwise, before it sends any
  data), then sends ``nonce (32) + p2p_client_proof`` first; the owner checks it (constant time, under a
  deadline) before anything else and answers `p2p_owner_proof` over the same nonce. Data then goes in
  chunks (`pierce.transport.FramedEnd`, as on an encrypted tunnel), which is what carries a half-close
  over TLS.
- plain (``encrypt=False``): the same two proofs on the raw socket, so the relay can splice it. The
  channel has no integrity: an on-path attacker who could replay a proof could as well take the TCP stream
  over, which is what ``encrypt_data = false`` accepts; the proofs keep off-path strangers and wrong peers
  out.

Scope: one direct TCP connection per rendezvous, carrying one `pierce.relay.End`. A proxy that has many
visitor connections over time multiplexes them on it (the caller's concern): a new simultaneous open per
visitor connection would need a new rendezvous each time.

The helpers here wait with ``add_reader`` / ``add_writer``: they need a selector event loop (Linux,
macOS; on Windows the selector policy), as the relay's socket fast paths do.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import os
import socket
import struct
import sys
from collections.abc import Coroutine
from typing import Any, Literal

import msgspec

from pierce.addr import HostPort
from pierce.dial import open_stream
from pierce.errors import LocalError, PierceError, RemoteError
from pierce.listeners import tune_tcp
from pierce.nat import stun
from pierce.nat.candidates import Candidate, CandidateKind, on_lan
from pierce.p2p.identity import COMMON_NAME, Identity, client_ssl_context, fingerprint_of
from pierce.protocol.auth import (
    NONCE_SIZE,
    PROOF_SIZE,
    new_nonce,
    p2p_client_proof,
    p2p_owner_proof,
    verify,
)
from pierce.relay import End, SocketEnd, wait_fd
from pierce.transport import FramedEnd

Role = Literal["visitor", "owner"]
#: "lan": the path goes to a host candidate; "tcp": a simultaneous open through the NATs.
PathKind = Literal["lan", "tcp"]

#: Seconds from ``start_at`` (the owner's first opening SYN) to the visitor's first SYN through the
#: NATs: the clock skew between the two sides tolerated.
OPENING_LEAD = 0.2
#: Seconds between two opening SYNs of the owner when an ICMP error killed the first one.
OPENING_INTERVAL = 0.002
#: Opening SYNs the owner sends towards one candidate at most.
MAX_OPENINGS = 100
#: Seconds before a new SYN after one was refused, reset or unreachable.
RETRY_PACING = 0.05
#: Seconds a SYN may go unanswered before a fresh one replaces it (the kernel would wait 1 s, then 3 s).
ATTEMPT_WINDOW = 0.5
#: Seconds the visitor waits for `ACCEPT` on the socket it nominated.
NOMINATION_TIMEOUT = 2.0
#: Times the visitor connects to a candidate again after a socket it nominated there was closed or
#: reset before the answer (both sides on fixed ports: the owner's own SYN towards us can cross our
#: connection to its listener and end it).
MAX_REDIALS = 2
#: Seconds for the TLS handshake and the proofs, on each side.
AUTH_TIMEOUT = 5.0
#: Peer candidates raced at most (the rest are ignored).
MAX_CANDIDATES = 16
#: Connected sockets waiting for a nomination at once, per side (more are closed).
MAX_PENDING = 16
#: Largest STUN response read by `tcp_reflexive`.
MAX_STUN_RESPONSE = 1024

NOMINATE = b"N"
ACCEPT = b"A"
#: The server name the visitor's TLS sends (the certificate is pinned by fingerprint, not by name).
TLS_SERVER_NAME = COMMON_NAME.replace(" ", "-")


class DirectPathError(PierceError):
    """The direct TCP path could not be set up."""


class NoDirectPath(DirectPathError):
    """No candidate connected (and was agreed on) before the deadline. ``attempts`` maps each candidate
    to what its last attempt ended with."""

    def __init__(self, seconds: float, attempts: dict[Candidate, str]) -> None:
        self.attempts = attempts
        tried = "; ".join(f"{c.host}:{c.port} ({c.kind.value}): {why}" for c, why in attempts.items())
        super().__init__(f"no direct TCP path within {seconds:.1f} s: {tried or 'no candidates'}")


class TcpReflexiveError(DirectPathError, LocalError):
    """The server's STUN over TCP gave no address for our TCP port."""


class FingerprintMismatch(DirectPathError, RemoteError):
    """The peer's certificate is not the one pinned through the rendezvous."""

    def __init__(self, expected: bytes, got: bytes) -> None:
        super().__init__(
            f"the direct path's certificate has SHA-256 {got.hex()[:16]}..., the rendezvous pinned "
            f"{expected.hex()[:16]}...: not the owner; closed, nothing sent"
        )


class ProofMismatch(DirectPathError, RemoteError):
    """The peer does not hold the rendezvous key (or proved something else)."""


# -- sockets --------------------------------------------------------------------------------------------


def bind_reusable(host: str, port: int = 0) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` that shares the port with this process's other
    sockets: SO_REUSEADDR, and SO_REUSEPORT where the platform has it (Linux, the BSDs, macOS), which is
    what lets a listener and several connects use one local port.

    Windows has no SO_REUSEPORT; its SO_REUSEADDR alone lets several sockets bind one port (any process's,
    which is why Windows servers use SO_EXCLUSIVEADDRUSE; these sockets are short-lived P2P ones). An IPv6
    socket is IPv6-only, so ``::`` and ``0.0.0.0`` on one port coexist.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT") and sys.platform != "win32":
            with contextlib.suppress(OSError):  # an old kernel without it: SO_REUSEADDR must do
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise LocalError(f"cannot bind TCP {HostPort(host, port)}: {exc.strerror or exc}") from exc
    return sock


def _ttl_option(sock: socket.socket) -> tuple[int, int]:
    if sock.family == socket.AF_INET6:
        return socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS
    return socket.IPPROTO_IP, socket.IP_TTL


async def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from a non-blocking socket; ConnectionError on EOF before them."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except (BlockingIOError, InterruptedError):
            await wait_fd(loop, sock.fileno(), writable=False)
            continue
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def _send_all(sock: socket.socket, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except (BlockingIOError, InterruptedError):
            await wait_fd(loop, sock.fileno(), writable=True)


async def _connect(sock: socket.socket, address: tuple[str, int]) -> None:
    """Connect a non-blocking socket; OSError (with its errno) when the attempt fails."""
    code = sock.connect_ex(address)
    if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
        await wait_fd(asyncio.get_running_loop(), sock.fileno(), writable=True)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code not in (0, errno.EISCONN):
        raise OSError(code, os.strerror(code))


# -- TCP reflexive address ------------------------------------------------------------------------------


async def tcp_reflexive(stun_server: HostPort, local_port: int, timeout: float) -> tuple[str, int]:
    """The address the server's STUN sees for a TCP connection from ``local_port`` (RFC 8489 over TCP).

    The connection is closed again; with a NAT that keeps a mapping per local port (cone) this is the
    address the peer's SYNs must be sent to.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(stun_server.host, stun_server.port, type=socket.SOCK_STREAM)
            family, _, _, _, address = infos[0]
            sock = bind_reusable("::" if family == socket.AF_INET6 else "0.0.0.0", local_port)
            try:
                await _connect(sock, (str(address[0]), int(address[1])))
                request = stun.binding_request()
                await _send_all(sock, stun.encode(request, fingerprint=False))
                head = await _recv_exactly(sock, stun.HEADER_SIZE)
                (length,) = struct.unpack_from("!H", head, 2)
                if stun.HEADER_SIZE + length > MAX_STUN_RESPONSE:
                    raise stun.StunParseError(f"a {length}-byte STUN response")
                reply = stun.decode(head + await _recv_exactly(sock, length))
            finally:
                sock.close()
    except TimeoutError:
        raise TcpReflexiveError(f"no STUN over TCP answer from {stun_server} within {timeout} s") from None
    except OSError as exc:
        what = exc.strerror or str(exc)
        raise TcpReflexiveError(f"STUN over TCP to {stun_server} from port {local_port}: {what}") from exc
    mapped = reply.xor_mapped_address if reply.transaction_id == request.transaction_id else None
    if reply.cls is not stun.Class.SUCCESS or mapped is None:
        raise TcpReflexiveError(f"STUN over TCP to {stun_server}: no XOR-MAPPED-ADDRESS in the answer")
    return str(mapped.ip), mapped.port


# -- the race -------------------------------------------------------------------------------------------


async def connect_direct(
    role: Role,
    local_port: int,
    candidates: list[Candidate],
    *,
    start_at: float,
    deadline: float,
    opening_ttl: int | None = 2,
) -> tuple[socket.socket, Candidate, PathKind]:
    """One TCP connection to the peer, agreed on by both sides (see the module docstring).

    ``candidates`` are the peer's; ``start_at`` and ``deadline`` are event loop times. Returns the
    connected non-blocking socket, the candidate it reached (for the owner, a peer-reflexive one when the
    visitor's SYN came from an address it did not announce) and "lan" or "tcp". Raises `NoDirectPath`
    at the deadline. Cancel-safe: every socket but the returned one is closed on every path.
    """
    if role not in ("visitor", "owner"):
        raise ValueError(f"role must be visitor or owner, not {role!r}")
    if opening_ttl is not None and not 1 <= opening_ttl <= 255:
        raise ValueError("opening_ttl must be 1..255 or None")
    race = _Race(role, local_port, candidates[:MAX_CANDIDATES], start_at, opening_ttl)
    loop = asyncio.get_running_loop()
    begun = loop.time()
    try:
        async with asyncio.timeout_at(deadline):
            sock, candidate = await race.run()
    except TimeoutError:
        raise NoDirectPath(loop.time() - begun, race.outcomes) from None
    finally:
        await race.close()
    lan = candidate.kind is CandidateKind.HOST and on_lan(candidate.host)
    return sock, candidate, "lan" if lan else "tcp"


class _Race(msgspec.Struct, eq=False):
    role: Role
    port: int
    candidates: list[Candidate]
    start_at: float
    opening_ttl: int | None
    outcomes: dict[Candidate, str] = msgspec.field(default_factory=dict)
    _socks: set[socket.socket] = msgspec.field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = msgspec.field(default_factory=set)
    _connected: asyncio.Queue[tuple[socket.socket, Candidate]] = msgspec.field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop = msgspec.field(default_factory=asyncio.get_running_loop)

    def __post_init__(self) -> None:
        for c in self.candidates:
            self.outcomes[c] = "not tried"

    async def run(self) -> tuple[socket.socket, Candidate]:
        for version in sorted({c.version for c in self.candidates}):
            listener = self._socket("::" if version == 6 else "0.0.0.0")
            listener.listen(8)
            self._spawn(self._accept(listener))
        for candidate in self.candidates:
            self._spawn(self._dial(candidate))
        winner = await (self._nominate() if self.role == "visitor" else self._await_nomination())
        self._socks.discard(winner[0])
        return winner

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._socks:
            sock.close()
        self._socks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)

    def _socket(self, host: str) -> socket.socket:
        sock = bind_reusable(host, self.port)
        self._socks.add(sock)
        return sock

    def _discard(self, sock: socket.socket) -> None:
        self._socks.discard(sock)
        sock.close()

    def _found(self, sock: socket.socket, candidate: Candidate) -> None:
        if self._connected.qsize() >= MAX_PENDING:
            self._discard(sock)
            return
        self._connected.put_nowait((sock, candidate))

    # -- connecting ---------------------------------------------------------------------------------

    async def _dial(self, candidate: Candidate) -> None:
        await asyncio.sleep(max(0.0, self.start_at - self.loop.time()))
        through_nats = candidate.kind is not CandidateKind.HOST and self.opening_ttl is not None
        if through_nats and self.role == "owner":
            await self._open_our_nat(candidate)
        elif through_nats:
            await asyncio.sleep(max(0.0, self.start_at + OPENING_LEAD - self.loop.time()))
            await self._connect_until_connected(candidate, None)
        else:
            await self._connect_until_connected(candidate, ATTEMPT_WINDOW)

    async def _connect_until_connected(self, candidate: Candidate, window: float | None) -> None:
        """Connect from our port; a new SYN (socket) after an error, or after ``window`` seconds of
        silence (None: the kernel's retransmissions of the same SYN)."""
        host = "::" if candidate.version == 6 else "0.0.0.0"
        while True:
            sock = self._socket(host)
            began = self.loop.time()
            if await self._attempt(sock, candidate, None if window is None else began + window):
                self._found(sock, candidate)
                return
            self._discard(sock)
            await asyncio.sleep(max(0.0, began + RETRY_PACING - self.loop.time()))

    async def _open_our_nat(self, candidate: Candidate) -> None:
        """The owner towards a public candidate: a SYN whose first copy leaves with the opening TTL, on a
        socket kept open (its retransmissions and its answer to the visitor's SYN go with the normal
        TTL). When the router where it died kills it with an ICMP error, the next one follows."""
        host = "::" if candidate.version == 6 else "0.0.0.0"
        assert self.opening_ttl is not None
        opened = 0
        while opened < MAX_OPENINGS:
            sock = self._socket(host)
            level, option = _ttl_option(sock)
            default_ttl = sock.getsockopt(level, option)
            sock.setsockopt(level, option, self.opening_ttl)
            began = self.loop.time()
            code = sock.connect_ex(candidate.address)  # the opening SYN leaves now
            sock.setsockopt(level, option, default_ttl)
            opened += 1
            try:
                if code not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                    raise OSError(code, os.strerror(code))
                await wait_fd(self.loop, sock.fileno(), writable=True)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
            except OSError as exc:
                self.outcomes[candidate] = (
                    f"{opened} opening SYNs, the last: {(exc.strerror or str(exc)).lower()}"
                )
                self._discard(sock)
                await asyncio.sleep(max(0.0, began + OPENING_INTERVAL - self.loop.time()))
                continue
            self.outcomes[candidate] = "connected"
            self._found(sock, candidate)
            return

    async def _attempt(self, sock: socket.socket, candidate: Candidate, until: float | None) -> bool:
        try:
            async with asyncio.timeout_at(until):
                await _connect(sock, candidate.address)
        except TimeoutError:
            self.outcomes[candidate] = "no answer"
            return False
        except OSError as exc:
            self.outcomes[candidate] = (exc.strerror or str(exc)).lower()
            return False
        self.outcomes[candidate] = "connected"
        return True

    async def _accept(self, listener: socket.socket) -> None:
        by_address = {c.address: c for c in self.candidates}
        while True:
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                await wait_fd(self.loop, listener.fileno(), writable=False)
                continue
            except OSError:  # aborted before accept, out of descriptors
                await asyncio.sleep(RETRY_PACING)
                continue
            conn.setblocking(False)
            self._socks.add(conn)
            address = (str(addr[0]), int(addr[1]))
            candidate = by_address.get(address) or Candidate(CandidateKind.PRFLX, *address)
            self._found(conn, candidate)

    # -- agreeing on one socket ---------------------------------------------------------------------

    async def _nominate(self) -> tuple[socket.socket, Candidate]:
        """The visitor: nominate connected sockets one at a time until the owner accepts one. A socket
        closed or reset before the answer is replaced by a new connection to its candidate (at most
        `MAX_REDIALS` times per candidate)."""
        redials: dict[Candidate, int] = {}
        while True:
            sock, candidate = await self._connected.get()
            try:
                await _send_all(sock, NOMINATE)
                async with asyncio.timeout(NOMINATION_TIMEOUT):
                    answer = await _recv_exactly(sock, 1)
            except TimeoutError:
                self.outcomes[candidate] = "connected, the nomination got no answer"
            except OSError as exc:
                self.outcomes[candidate] = f"connected, then {(exc.strerror or str(exc)).lower()}"
                if redials.get(candidate, 0) < MAX_REDIALS and candidate in self.candidates:
                    redials[candidate] = redials.get(candidate, 0) + 1
                    window = ATTEMPT_WINDOW if candidate.kind is CandidateKind.HOST else None
                    self._spawn(self._connect_until_connected(candidate, window))
            else:
                if answer == ACCEPT:
                    return sock, candidate
                self.outcomes[candidate] = f"connected, answered {answer!r} to the nomination"
            self._discard(sock)

    async def _await_nomination(self) -> tuple[socket.socket, Candidate]:
        """The owner: the first socket the visitor nominates; the others are closed with the race."""
        won: asyncio.Future[tuple[socket.socket, Candidate]] = self.loop.create_future()

        async def listen(sock: socket.socket, candidate: Candidate) -> None:
            try:
                got = await _recv_exactly(sock, 1)
            except OSError:
                got = b""
            if got == NOMINATE and not won.done():
                won.set_result((sock, candidate))
            else:
                self.outcomes[candidate] = "connected, not nominated"
                self._discard(sock)

        async def collect() -> None:
            while True:
                self._spawn(listen(*await self._connected.get()))

        self._spawn(collect())
        sock, candidate = await won
        await _send_all(sock, ACCEPT)
        return sock, candidate


# -- authentication -------------------------------------------------------------------------------------


async def secure_visitor(sock: socket.socket, fingerprint: bytes, key: bytes, *, encrypt: bool = True) -> End:
    """The visitor's side of the channel on the agreed socket: TLS accepting only the pinned certificate
    (unless ``encrypt`` is false), then its proof; returns once the owner has proved the key back.

    Takes ``sock`` over: on failure it is closed. Raises `FingerprintMismatch` (nothing sent) or
    `ProofMismatch`; `DirectPathError` when the owner closes or the `AUTH_TIMEOUT` passes.
    """
    tune_tcp(sock)
    nonce = new_nonce()
    try:
        async with asyncio.timeout(AUTH_TIMEOUT):
            if not encrypt:
                await _send_all(
                    sock, nonce + p2p_client_proof(key, server_fingerprint=fingerprint, nonce=nonce)
                )
                answer = await _recv_exactly(sock, PROOF_SIZE)
                _check_owner(answer, key, fingerprint, nonce)
                return SocketEnd(sock)
            reader, writer = await open_stream(
                sock, ssl=client_ssl_context(), server_hostname=TLS_SERVER_NAME
            )
            try:
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
                got = fingerprint_of(der or b"")
                if not hmac.compare_digest(got, fingerprint):
                    raise FingerprintMismatch(fingerprint, got)
                writer.write(nonce + p2p_client_proof(key, server_fingerprint=fingerprint, nonce=nonce))
                await writer.drain()
                _check_owner(await reader.readexactly(PROOF_SIZE), key, fingerprint, nonce)
            except BaseException:
                writer.transport.abort()
                raise
            return FramedEnd(reader, writer)
    except TimeoutError:
        sock.close()
        raise DirectPathError(f"the direct path's handshake took longer than {AUTH_TIMEOUT} s") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        sock.close()
        raise DirectPathError(
            f"the direct path failed before the owner proved the rendezvous key: {exc}"
        ) from exc
    except BaseException:
        sock.close()
        raise


def _check_owner(answer: bytes, key: bytes, fingerprint: bytes, nonce: bytes) -> None:
    if not verify(p2p_owner_proof(key, server_fingerprint=fingerprint, nonce=nonce), answer):
        raise ProofMismatch("the owner's proof on the direct path does not match the rendezvous key")


async def secure_owner(sock: socket.socket, identity: Identity, key: bytes, *, encrypt: bool = True) -> End:
    """The owner's side: TLS server with ``identity`` (unless ``encrypt`` is false), then the visitor's
    proof is checked before anything else is read or sent, then the owner's proof goes back.

    Takes ``sock`` over: on failure it is closed. Raises `ProofMismatch` (nothing sent) when the visitor
    does not hold the key; `DirectPathError` when it closes or the `AUTH_TIMEOUT` passes.
    """
    loop = asyncio.get_running_loop()
    fingerprint = identity.fingerprint
    tune_tcp(sock)
    try:
        async with asyncio.timeout(AUTH_TIMEOUT):
            if not encrypt:
                hello = await _recv_exactly(sock, NONCE_SIZE + PROOF_SIZE)
                nonce = _check_visitor(hello, key, fingerprint)
                await _send_all(sock, p2p_owner_proof(key, server_fingerprint=fingerprint, nonce=nonce))
                return SocketEnd(sock)
            reader = asyncio.StreamReader(limit=2**16)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=identity.server_ssl_context()
            )
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            try:
                nonce = _check_visitor(await reader.readexactly(NONCE_SIZE + PROOF_SIZE), key, fingerprint)
                writer.write(p2p_owner_proof(key, server_fingerprint=fingerprint, nonce=nonce))
                await writer.drain()
            except BaseException:
                transport.abort()
                raise
            return FramedEnd(reader, writer)
    except TimeoutError:
        sock.close()
        raise DirectPathError(
            f"the visitor did not prove the rendezvous key within {AUTH_TIMEOUT} s"
        ) from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        sock.close()
        raise DirectPathError(f"the direct path failed before the visitor's proof: {exc}") from exc
    except BaseException:
        sock.close()
        raise


def _check_visitor(hello: bytes, key: bytes, fingerprint: bytes) -> bytes:
    nonce, proof = hello[:NONCE_SIZE], hello[NONCE_SIZE:]
    if not verify(p2p_client_proof(key, server_fingerprint=fingerprint, nonce=nonce), proof):
        raise ProofMismatch("the visitor's proof on the direct path does not match the rendezvous key")
    return nonce
