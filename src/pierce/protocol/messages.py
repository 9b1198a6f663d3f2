"""Every message of the tunnel control channel, one frozen msgspec Struct per message.

Messages are grouped by sender: `ClientMessage` and `ServerMessage`. `UdpPacket` and `Error` travel in
both directions, so they belong to both unions. On the wire each message is a MessagePack map whose
``"t"`` key holds the short tag given below; `pierce.protocol.frames` adds the length prefix.

Compatibility rules, so that any two versions can at least tell each other why they disagree:

- `Hello`, `Challenge` and `Error` are the handshake every version speaks. Their fields never change
  type and new fields get defaults, so an old server can still decode a new client's `Hello` and answer
  `Error(code=ErrorCode.VERSION_MISMATCH)` rather than drop the connection.
- Unknown fields are ignored (``forbid_unknown_fields=False``), so a minor addition with a default does
  not need a version bump. A new message, role or error code does: an older peer rejects it as a
  malformed frame.
- Optional behaviour is negotiated with `Feature` names in `Hello` / `Challenge`. Features travel as
  plain strings so that a peer's unknown feature is ignored rather than rejected.

Constraints on peer-controlled values (name lengths, port ranges, nonce sizes, work-connection counts)
are part of the types, so an out-of-range value fails to decode instead of reaching the roles.
"""

from __future__ import annotations

import enum
from typing import Annotated, TypeAlias

import msgspec

from pierce.protocol.auth import NONCE_SIZE, PROOF_SIZE
from pierce.protocol.p2p import MAX_OFFER_SIZE
from pierce.protocol.pake import MAX_PUBLIC_SIZE, SALT_SIZE

#: Sent in `Hello` and `Challenge`; peers with different versions refuse each other with a named error.
PROTOCOL_VERSION = 6

#: The longest proxy name, client id or run id accepted from a peer.
MAX_NAME_LENGTH = 255
#: The most work connections one `ReqWorkConn` may ask for; a client caps its pool below this anyway.
MAX_WORK_CONN_REQUEST = 256
#: Idle work connections the server keeps per client at most (it closes extras); a client's pool stays
#: within it.
MAX_IDLE_WORK_CONNS = 64
#: The longest software version a client may tell (`Hello.software`).
MAX_SOFTWARE_LENGTH = 64
#: Long enough for any IPv6 literal with a zone id (``fe80::...%eth0``).
MAX_HOST_LENGTH = 64

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
#: Domains and header values of http proxies (checked again by the server's router).
DomainName = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
PathPrefix = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern="^/")]
HeaderText = Annotated[str, msgspec.Meta(max_length=4096)]
#: Most domains / locations / set headers one proxy may carry.
MAX_DOMAINS = 64
MAX_HEADERS = 64
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=NONCE_SIZE, max_length=NONCE_SIZE)]
Proof = Annotated[bytes, msgspec.Meta(min_length=PROOF_SIZE, max_length=PROOF_SIZE)]
IpLiteral = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_HOST_LENGTH)]
#: The user of the single ``token`` (and of a client whose config names no ``user``).
DEFAULT_USER = "default"
#: A user name of ``[[users]]`` (empty in `Hello`: the default user of the single ``token``).
MAX_USER_LENGTH = 64
UserName = Annotated[str, msgspec.Meta(max_length=MAX_USER_LENGTH)]
#: An SRP public value (A or B); empty where the message carries none.
PakePublic = Annotated[bytes, msgspec.Meta(max_length=MAX_PUBLIC_SIZE)]
Salt = Annotated[bytes, msgspec.Meta(max_length=SALT_SIZE)]
#: A secret service's ticket: names the key a visitor and the owner share after one exchange.
TICKET_SIZE = 16
Ticket = Annotated[bytes, msgspec.Meta(max_length=TICKET_SIZE)]


class Feature(enum.StrEnum):
    """Optional behaviour a peer supports; both sides list theirs and use the intersection."""

    #: Data connections are encrypted end to end, on top of (or instead of) TLS.
    ENCRYPT_DATA = "encrypt_data"
    #: UDP proxies: datagrams travel as `UdpPacket` messages.
    UDP = "udp"
    #: Work connections are streams multiplexed over a few TLS connections (`pierce.mux`); used when
    #: both sides offer it (``transport.tcp_mux``), so either side may turn it off.
    MUX = "mux"
    #: The server takes `DirectAddress`: where a proxy is also reachable without the server.
    DIRECT = "direct"


class Role(enum.Enum):
    """What a new connection to the server is for, announced in its `Hello`."""

    #: The long-lived control channel of one client: proxies, pings, work requests.
    CONTROL = "control"
    #: A pooled data connection that waits for `StartWork` and then carries one visitor's bytes.
    WORK = "work"
    #: A visitor reaching a proxy through the server (secret and P2P proxies).
    VISITOR = "visitor"
    #: A connection that carries the client's work connections as multiplexed streams (`pierce.mux`),
    #: joined to a session like a work connection. Sent only to a server that offered `Feature.MUX`.
    MUX = "mux"


class SecretKind(enum.Enum):
    """The kinds of secret proxy: no public port, reached by visitors that prove the proxy's secret."""

    #: A TCP service; each visitor connection becomes one stream.
    STCP = "stcp"
    #: A UDP service; a visitor's datagrams travel as `UdpPacket` frames inside one stream.
    SUDP = "sudp"
    #: A TCP service its visitors reach peer to peer where they can, else through the server.
    XTCP = "xtcp"
    #: A UDP service its visitors reach peer to peer where they can, else through the server.
    XUDP = "xudp"


class ErrorCode(enum.Enum):
    """Why a peer refused something; sent in `Error` and `ProxyRefused`."""

    AUTH_FAILED = "auth_failed"
    VERSION_MISMATCH = "version_mismatch"
    FEATURE_MISMATCH = "feature_mismatch"
    PORT_IN_USE = "port_in_use"
    PORT_NOT_ALLOWED = "port_not_allowed"
    DUPLICATE_NAME = "duplicate_name"
    #: Another live session of the same user already uses this client id.
    DUPLICATE_CLIENT = "duplicate_client"
    #: A secret service's ticket the owner no longer knows: run a fresh exchange.
    UNKNOWN_TICKET = "unknown_ticket"
    UNKNOWN_PROXY = "unknown_proxy"
    #: A work connection named a run id the server does not know (expired or never issued).
    UNKNOWN_SESSION = "unknown_session"
    LIMIT_REACHED = "limit_reached"
    #: A visitor's user is not in the secret proxy's ``allow_users``.
    NOT_ALLOWED = "not_allowed"
    #: Another proxy already serves this domain (and location).
    DOMAIN_TAKEN = "domain_taken"
    #: The server does not offer what was asked (e.g. no vhost port configured).
    NOT_AVAILABLE = "not_available"
    #: The peer sent a frame or message that breaks the protocol.
    BAD_MESSAGE = "bad_message"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", forbid_unknown_fields=False):
    """Base of all messages: frozen, keyword-only, tagged by ``"t"``.

    Subclasses repeat ``frozen=True`` for mypy, which does not inherit it through msgspec's dataclass
    transform, and ``kw_only=True`` because msgspec applies it only to fields of the class that says it.
    """


# -- client -> server -------------------------------------------------------------------------------


class Hello(_Message, frozen=True, kw_only=True, tag="hello"):
    """First message on every connection to the server: who is calling and what it speaks."""

    version: int
    features: frozenset[str]
    #: A stable name for the client within its user, used in logs and to replace a stale session.
    client_id: Name
    role: Role
    #: CONTROL: the run id of the previous session, to resume it (empty for a fresh start).
    #: WORK: the run id of the control session this connection joins. VISITOR: empty.
    run_id: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)] = ""
    #: Who logs in (CONTROL and VISITOR): a name of ``[[users]]``; empty for the default user.
    user: UserName = ""
    #: CONTROL and VISITOR: the client's SRP public value A (`pierce.protocol.pake`). WORK: empty.
    pake: PakePublic = b""
    #: CONTROL: the client's pierce version, for people (the server's dashboard); never compared.
    software: Annotated[str, msgspec.Meta(max_length=MAX_SOFTWARE_LENGTH)] = ""


class AuthResponse(_Message, frozen=True, kw_only=True, tag="auth"):
    """The client's answer to `Challenge`.

    A login (CONTROL, VISITOR): ``proof`` is SRP's M, ``binding`` proves the session key over the
    certificate the client saw, ``unbound_proof`` the same over no certificate (never accepted; it lets
    the server tell "wrong token" from "right token, but another certificate": a man in the middle), and
    ``resume`` proves that the client held the session it names in `Hello`. A work connection:
    ``proof`` is the HMAC of its session's work key (`pierce.protocol.auth.client_proof`).
    """

    proof: Proof
    client_nonce: Nonce
    unbound_proof: Proof | None = None
    binding: Proof | None = None
    resume: Proof | None = None


class NewProxy(_Message, frozen=True, kw_only=True, tag="new_proxy"):
    """Ask the server to open a proxy. ``spec`` is the kind's own spec (`pierce.proxies`), MessagePack
    tagged by ``"type"``; the server decodes it with the table of kinds, so this module names none."""

    name: Name
    spec: msgspec.Raw


class CloseProxy(_Message, frozen=True, kw_only=True, tag="close_proxy"):
    """The client no longer serves this proxy; the server stops listening for it."""

    name: Name


#: The longest ``DirectAddress.address``: ``[IPv6]:port``.
MAX_DIRECT_ADDRESS = 64


class DirectAddress(_Message, frozen=True, kw_only=True, tag="direct"):
    """Proxy ``name`` is also reachable without the server at ``address`` (``ip:port`` or ``[ip]:port``:
    a port mapping on the client's router, `pierce.client.direct`); empty: no longer. The server shows it
    in its API as the client's claim, and sends nothing there. Sent only to a server that offered
    `Feature.DIRECT`."""

    name: Name
    address: Annotated[str, msgspec.Meta(max_length=MAX_DIRECT_ADDRESS)] = ""


class Visit(_Message, frozen=True, kw_only=True, tag="visit"):
    """A visitor connection (after `AuthOk`) asks for a secret proxy, and starts proving the secret.

    Either a fresh exchange with the owner: ``pake`` is the visitor's SRP value A for the secret
    (the server answers `VisitChallenge`); or a ticket from an earlier exchange: ``ticket``, ``nonce`` and
    ``proof`` (`pierce.protocol.auth.visit_proof` over the visit id the server issued in `AuthOk`). The
    server answers `VisitReady` (then the connection carries data) or `Error` (then it closes).
    """

    proxy: Name
    kind: SecretKind
    pake: PakePublic = b""
    ticket: Ticket = b""
    nonce: Annotated[bytes, msgspec.Meta(max_length=NONCE_SIZE)] = b""
    proof: Annotated[bytes, msgspec.Meta(max_length=PROOF_SIZE)] = b""
    #: Only check the secret and the permissions; no data follows (`pierce visit` does this at start).
    check_only: bool = False
    #: A P2P rendezvous: after `VisitReady` the connection carries `P2pOffer` / `P2pStart` /
    #: `P2pResult`, not data (xtcp and xudp proxies only).
    p2p: bool = False


class VisitAnswer(_Message, frozen=True, kw_only=True, tag="visit_answer"):
    """The visitor's SRP proof M, answering `VisitChallenge`."""

    proof: Proof


class VisitorVerdict(_Message, frozen=True, kw_only=True, tag="visitor_verdict"):
    """The owning client's answer to `VisitorCheck` or `VisitorAnswer`.

    ``code`` set: the visitor is refused. Otherwise, after a fresh `VisitorCheck`: the owner's SRP
    ``salt`` and ``pake`` (B), for the visitor to answer; after `VisitorAnswer` or a ticket check: the
    visitor may pass, with the owner's ``proof`` (SRP's HAMK, or `owner_proof`) and, after a fresh
    exchange, the ``ticket`` that names the shared key for later visits.
    """

    proxy: Name
    check_id: Annotated[int, msgspec.Meta(ge=0)]
    code: ErrorCode | None = None
    #: Why the visitor was refused, for the visitor and the server's log.
    reason: str = ""
    salt: Salt = b""
    pake: PakePublic = b""
    proof: Annotated[bytes, msgspec.Meta(max_length=PROOF_SIZE)] = b""
    ticket: Ticket = b""


class Ping(_Message, frozen=True, kw_only=True, tag="ping"):
    """Heartbeat: the client sends it every interval; the server sends one to check that a session is
    still alive before another login may take it over. The peer answers `Pong` with the same number."""

    seq: Annotated[int, msgspec.Meta(ge=0)]


# -- server -> client -------------------------------------------------------------------------------


class Challenge(_Message, frozen=True, kw_only=True, tag="challenge"):
    """The server's answer to `Hello`: a fresh nonce, what it speaks, and for a login its SRP values."""

    server_nonce: Nonce
    version: int
    features: frozenset[str]
    salt: Salt = b""
    pake: PakePublic = b""


class AuthOk(_Message, frozen=True, kw_only=True, tag="auth_ok"):
    """The client's proof was right; the server proves in turn that it knows the token."""

    #: The control session's id; work connections quote it in their `Hello`. On a visitor connection:
    #: a fresh random visit id, which a ticket proof covers (`Visit`).
    run_id: Name
    #: A login: SRP's HAMK (the server holds the user's verifier). A work connection: `server_proof`.
    server_proof: Proof
    #: A login: the server's proof of the session key over its own certificate.
    binding: Proof | None = None


class ProxyReady(_Message, frozen=True, kw_only=True, tag="proxy_ready"):
    """The server listens for this proxy; `remote_port` is the actual port (useful when 0 was asked)."""

    name: Name
    remote_port: Port
    #: Where visitors reach it, for logs (http/https proxies: one URL per domain).
    urls: Annotated[list[str], msgspec.Meta(max_length=MAX_DOMAINS)] = []


class ProxyRefused(_Message, frozen=True, kw_only=True, tag="proxy_refused"):
    """The server will not open this proxy; the rest of the session carries on."""

    name: Name
    code: ErrorCode
    #: Human-readable detail for logs, e.g. "port 22 is outside 10000-20000".
    reason: str


class StartWork(_Message, frozen=True, kw_only=True, tag="start_work"):
    """Sent on a pooled work connection: from now on it carries this visitor's bytes for `proxy`."""

    proxy: Name
    visitor_host: IpLiteral
    visitor_port: Port
    #: The server address the visitor connected to (the destination of a PROXY protocol header).
    server_host: Annotated[str, msgspec.Meta(max_length=MAX_HOST_LENGTH)] = ""
    server_port: Port = 0
    #: Answer `WorkReady` before any data: the server tells the visitor it is through only then (a
    #: pooled connection can be dead without a sign, e.g. after the owner's NAT forgot it).
    confirm: bool = False


class WorkReady(_Message, frozen=True, kw_only=True, tag="work_ready"):
    """The client's answer to a `StartWork` with ``confirm``: this work connection is alive; data
    follows."""


class VisitorCheck(_Message, frozen=True, kw_only=True, tag="visitor_check"):
    """A visitor asks for one of this client's secret proxies: run the exchange, check ``allow_users``.

    Carries the visitor's `Visit` values (a fresh SRP value, or a ticket and its proof). The client
    answers `VisitorVerdict` with the same ``check_id``; the server pairs the visitor with a work
    connection only after a final verdict without a code.
    """

    proxy: Name
    check_id: Annotated[int, msgspec.Meta(ge=0)]
    kind: SecretKind
    #: The user the visitor authenticated as (for ``allow_users``).
    visitor_user: UserName
    #: The client id the visitor named, for logs only.
    visitor_id: Name
    #: The visitor's address as the server sees it, for the owner's log.
    visitor_host: IpLiteral
    visitor_port: Port
    #: The visit id the server issued to that visitor connection (in its `AuthOk`).
    visit_id: Name
    pake: PakePublic = b""
    ticket: Ticket = b""
    nonce: Annotated[bytes, msgspec.Meta(max_length=NONCE_SIZE)] = b""
    proof: Annotated[bytes, msgspec.Meta(max_length=PROOF_SIZE)] = b""


class VisitorAnswer(_Message, frozen=True, kw_only=True, tag="visitor_answer"):
    """The visitor's SRP proof M for check ``check_id``, relayed to the owner."""

    proxy: Name
    check_id: Annotated[int, msgspec.Meta(ge=0)]
    proof: Proof


class VisitChallenge(_Message, frozen=True, kw_only=True, tag="visit_challenge"):
    """The owner's SRP salt and value B, relayed to the visitor, which answers `VisitAnswer`."""

    salt: Salt
    pake: PakePublic


class VisitReady(_Message, frozen=True, kw_only=True, tag="visit_ready"):
    """The visitor was accepted; after this message the connection carries its data (or, for a
    ``check_only`` visit, closes). ``proof`` is the owner's (the visitor checks it before any data) and
    ``ticket`` names the shared key for later visits, after a fresh exchange."""

    proxy: Name
    proof: Annotated[bytes, msgspec.Meta(max_length=PROOF_SIZE)] = b""
    ticket: Ticket = b""
    #: The server's STUN port (0: none), for a P2P visitor to learn its server-reflexive address.
    stun_port: Port = 0


class ReqWorkConn(_Message, frozen=True, kw_only=True, tag="req_work"):
    """The server wants `count` more work connections in the pool of this control session."""

    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_WORK_CONN_REQUEST)]


class Pong(_Message, frozen=True, kw_only=True, tag="pong"):
    """Answer to `Ping`, echoing its sequence number."""

    seq: Annotated[int, msgspec.Meta(ge=0)]


class P2pRequest(_Message, frozen=True, kw_only=True, tag="p2p_request"):
    """A visitor the owner accepted (visit ``visit_id``) wants a direct path: its sealed offer
    (`pierce.protocol.p2p`). The owner answers `P2pAnswer` with the same ``visit_id``."""

    proxy: Name
    visit_id: Name
    offer: Annotated[bytes, msgspec.Meta(max_length=MAX_OFFER_SIZE)]
    mac: Proof
    #: The server's STUN port (0: none), for the owner's server-reflexive address.
    stun_port: Port = 0


class P2pStart(_Message, frozen=True, kw_only=True, tag="p2p_start"):
    """Both sides start punching ``delay_ms`` after this arrives. To the visitor it carries the owner's
    sealed offer; to the owner (which sent it) it carries none."""

    visit_id: Name
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0
    offer: Annotated[bytes, msgspec.Meta(max_length=MAX_OFFER_SIZE)] = b""
    mac: Annotated[bytes, msgspec.Meta(max_length=PROOF_SIZE)] = b""


# -- both directions --------------------------------------------------------------------------------


class UdpPacket(_Message, frozen=True, kw_only=True, tag="udp"):
    """One datagram of a UDP proxy, to or from the remote peer at `peer_host`:`peer_port`."""

    proxy: Name
    peer_host: IpLiteral
    peer_port: Port
    data: bytes


class P2pOffer(_Message, frozen=True, kw_only=True, tag="p2p_offer"):
    """The visitor's sealed offer, on a P2P visit after `VisitReady`."""

    offer: Annotated[bytes, msgspec.Meta(max_length=MAX_OFFER_SIZE)]
    mac: Proof


class P2pAnswer(_Message, frozen=True, kw_only=True, tag="p2p_answer"):
    """The owner's answer to `P2pRequest`: its sealed offer, or ``code`` and ``reason`` when it will not
    try (then the visitor stays on the relay)."""

    proxy: Name
    visit_id: Name
    offer: Annotated[bytes, msgspec.Meta(max_length=MAX_OFFER_SIZE)] = b""
    mac: Annotated[bytes, msgspec.Meta(max_length=PROOF_SIZE)] = b""
    code: ErrorCode | None = None
    reason: Annotated[str, msgspec.Meta(max_length=512)] = ""


class P2pResult(_Message, frozen=True, kw_only=True, tag="p2p_result"):
    """How the visitor's attempt ended, for the server's counters: ``path`` is a
    `pierce.snapshot.ConnectionPath` value ("relay" when nothing direct answered)."""

    path: Annotated[str, msgspec.Meta(max_length=32)]
    elapsed_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    rtt_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    reason: Annotated[str, msgspec.Meta(max_length=512)] = ""


class Error(_Message, frozen=True, kw_only=True, tag="error"):
    """The sender is about to close the connection, and says why."""

    code: ErrorCode
    #: Human-readable detail for logs, e.g. "client speaks protocol 2, server speaks 1".
    reason: str


ClientMessage: TypeAlias = (
    Hello
    | AuthResponse
    | NewProxy
    | CloseProxy
    | DirectAddress
    | Visit
    | VisitAnswer
    | VisitorVerdict
    | P2pOffer
    | P2pAnswer
    | P2pResult
    | Ping
    | Pong
    | UdpPacket
    | WorkReady
    | Error
)

ServerMessage: TypeAlias = (
    Challenge
    | AuthOk
    | ProxyReady
    | ProxyRefused
    | StartWork
    | VisitorCheck
    | VisitorAnswer
    | VisitChallenge
    | VisitReady
    | ReqWorkConn
    | P2pRequest
    | P2pStart
    | Ping
    | Pong
    | UdpPacket
    | Error
)

#: Everything that can appear on the wire, in either direction.
Message: TypeAlias = ClientMessage | ServerMessage
