"""What every secret proxy (stcp, sudp, xtcp, xudp) shares: its config, the visit, the owner's verdict.

A secret proxy opens no public port. Its owner registers it; a visitor logs in on the server's control
port as a user (`Role.VISITOR`), names the proxy and proves that it knows the proxy's secret (`Visit`)
in an exchange with the owner that the server only relays (`pierce.proxies.visitor_auth`): the secret
never leaves either end, each side proves it to the other, and the server learns nothing. The owner
also checks ``allow_users`` against the user the server authenticated. Only after a final
`VisitorVerdict` without a code does the server pair the visitor's connection with a work connection of
the owner and relay the two:

    application -> visitor -> TLS -> server -> work connection -> owner's client -> local service

Both hops carry the data as chunks over TLS (or a plain work connection), so half-close passes end to
end. An stcp stream carries the application's bytes; an sudp stream carries `UdpPacket` frames.

Server side (`pierce.server.proxies.secret`): `SecretProxyServer` (a subclass per kind) and
`serve_visit`. Owner side, here: `check_visitor`
(the verdict, and the log line of a refused visitor); the kind modules serve accepted visitors.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

import msgspec

from pierce.addr import format_sockaddr
from pierce.errors import InvalidValue
from pierce.logs import event
from pierce.protocol import ErrorCode, SecretKind, VisitorAnswer, VisitorCheck, VisitorVerdict
from pierce.proxies.base import ProxySpec, check_bandwidth_limit, check_proxy, masked_repr

if TYPE_CHECKING:  # the owner's side of the exchange; a server, which only relays it, never loads it
    from pierce.proxies.visitor_auth import OwnerExchanges, Who

log = logging.getLogger("pierce.proxy")

#: Seconds the server waits for the owner's `VisitorVerdict`.
VISIT_CHECK_TIMEOUT = 10.0
#: The kinds whose visitors may ask for a direct path.
P2P_KINDS = frozenset({SecretKind.XTCP, SecretKind.XUDP})
#: Checks one proxy may have waiting for the owner's verdict; visitors beyond it are refused.
MAX_PENDING_CHECKS = 256


class SecretProxyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What the configs of secret proxies share (the kinds add their tag and options)."""

    #: The kind's secret kind, for `check_visitor`.
    secret_kind: ClassVar[SecretKind]

    name: str
    local_ip: str = "127.0.0.1"
    local_port: int
    #: Shared with the visitors; it never leaves this client (each side proves it in an SRP exchange).
    secret_key: str
    #: Users (the server's ``[[users]]`` names, as authenticated by the server) whose visitors may come
    #: in; empty or ``"*"`` lets in every user's visitor that knows the secret.
    allow_users: list[str] = []
    #: Most bytes per second each way, all visitors of the proxy together ("10MB", "512KB"; "" = none);
    #: the datagram kinds drop what is over it.
    bandwidth_limit: str = ""

    def __post_init__(self) -> None:
        check_proxy(self.name, self.local_port)
        if not self.secret_key:
            raise InvalidValue("secret_key", "expected a non-empty secret shared with the visitors")
        check_bandwidth_limit(self.bandwidth_limit)

    def __repr__(self) -> str:
        return masked_repr(self)


class SecretSpec(ProxySpec, frozen=True, kw_only=True):
    """Register a secret proxy: no public port; visitors reach it through the control port.

    The secret stays with the client, which checks each visitor's proof (`VisitorCheck`).
    """


# -- owner side -------------------------------------------------------------------------------------


def check_visitor(config: object, msg: VisitorCheck, exchanges: OwnerExchanges) -> VisitorVerdict:
    """The owner's answer to a visitor: kind and ``allow_users`` first, then the exchange (a challenge,
    or for a ticket the final verdict). A refusal is logged.

    ``config`` is the owner's config of the proxy the visitor names (None when there is none).
    """
    from pierce.proxies.visitor_auth import Who

    secret = config if isinstance(config, SecretProxyConfig) else None
    if secret is None or secret.secret_kind is not msg.kind:
        verdict = _no(
            msg, ErrorCode.UNKNOWN_PROXY, f"this client serves no {msg.kind.value} proxy {msg.proxy!r}"
        )
    elif secret.allow_users and "*" not in secret.allow_users and msg.visitor_user not in secret.allow_users:
        verdict = _no(
            msg,
            ErrorCode.NOT_ALLOWED,
            f"user {msg.visitor_user!r} is not in allow_users of proxy {msg.proxy!r}",
        )
    else:
        verdict = exchanges.start(msg, secret.secret_key)
    log_verdict(verdict, Who.of(msg))
    return verdict


def answer_visitor(msg: VisitorAnswer, exchanges: OwnerExchanges) -> VisitorVerdict:
    """The owner's final verdict on a fresh exchange, logged."""
    verdict, who = exchanges.finish(msg)
    log_verdict(verdict, who)
    return verdict


def log_verdict(verdict: VisitorVerdict, who: Who) -> None:
    """``visitor.refused`` for a refusal, ``visitor.accepted`` (debug) for a final yes."""
    address = format_sockaddr((who.host, who.port))
    fields = {"proxy": verdict.proxy, "visitor": address, "visitor_id": who.visitor_id, "user": who.user}
    if verdict.code is not None:
        event(
            log,
            logging.WARNING,
            "visitor.refused",
            f"proxy {verdict.proxy}: refused visitor {address} (user {who.user}, {who.visitor_id}): "
            f"{verdict.reason}",
            code=verdict.code.value,
            reason=verdict.reason,
            **fields,
        )
    elif not verdict.pake:
        event(
            log,
            logging.DEBUG,
            "visitor.accepted",
            f"proxy {verdict.proxy}: visitor {address} (user {who.user}, {who.visitor_id}) accepted",
            **fields,
        )


def _no(msg: VisitorCheck, code: ErrorCode, reason: str) -> VisitorVerdict:
    return VisitorVerdict(proxy=msg.proxy, check_id=msg.check_id, code=code, reason=reason)
