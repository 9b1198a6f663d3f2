"""Each user's limits on the server (``[[users]]``): clients, proxies, ports and bandwidth.

A `UserLimits` belongs to one user for the server's lifetime and is shared by all that user's sessions:

- ``max_clients``: a login beyond it is refused (`pierce.protocol.ErrorCode.LIMIT_REACHED`); the
  sessions already in keep their places. The slot is taken when the login is admitted (before the
  client hears it is in) and given back when its session ends, so two logins at once cannot both
  take the last one.
- ``max_proxies``: a `NewProxy` beyond it is refused, over all the user's clients.
- ``allow_ports``: a proxy's own public port must be in it as well as in the server's ``allow_ports``.
- ``bandwidth_limit``: one token bucket per direction (`pierce.bandwidth.Limits`) for all the user's
  traffic through the server: the relays between visitors and work connections read through it, and
  UDP proxies drop the datagrams it turns away (counted in `pierce.bandwidth.Throttle.dropped`).

Users without a ``[[users]]`` table (the top-level token's ``default``) have no limits beyond the
server-wide ones. Bookkeeping only: no sockets, no waiting.
"""

from __future__ import annotations

from pierce.bandwidth import DATAGRAM_BURST_S, Limits, parse_rate
from pierce.config import PortRange, ServerConfig, UserConfig, ports_allow
from pierce.protocol import ErrorCode, Refused
from pierce.snapshot import UserLimitsInfo


class UserLimits:
    """One user's limits and what its clients use of them now."""

    def __init__(
        self,
        name: str,
        *,
        max_clients: int = 0,
        max_proxies: int = 0,
        allow_ports: list[PortRange] | None = None,
        rate: int = 0,
    ) -> None:
        self.name = name
        self.max_clients = max_clients
        self.max_proxies = max_proxies
        self.allow_ports = allow_ports or []
        self.rate = rate
        #: The user's throttles (toward the services, toward the visitors); None without a limit. They
        #: may admit datagrams (its UDP proxies), so their bucket is the datagrams' larger one.
        self.bandwidth = Limits.of(rate, DATAGRAM_BURST_S) if rate else None
        #: Logins admitted and sessions open.
        self.clients = 0
        #: Proxies open over all the user's sessions.
        self.proxies = 0

    @classmethod
    def from_config(cls, user: UserConfig) -> UserLimits:
        return cls(
            user.name,
            max_clients=user.max_clients,
            max_proxies=user.max_proxies,
            allow_ports=list(user.allow_ports),
            rate=parse_rate(user.bandwidth_limit) if user.bandwidth_limit else 0,
        )

    def take_client(self) -> None:
        """Count a new login in; `Refused` when the user already has ``max_clients``."""
        if self.max_clients and self.clients >= self.max_clients:
            raise Refused(
                ErrorCode.LIMIT_REACHED,
                f"user {self.name!r} already has {self.clients} client(s) logged in "
                f"(max_clients = {self.max_clients})",
            )
        self.clients += 1

    def client_left(self) -> None:
        self.clients = max(0, self.clients - 1)

    def check_proxy(self) -> None:
        """`Refused` when the user already has ``max_proxies`` open."""
        if self.max_proxies and self.proxies >= self.max_proxies:
            raise Refused(
                ErrorCode.LIMIT_REACHED,
                f"user {self.name!r} already has {self.proxies} proxies open "
                f"(max_proxies = {self.max_proxies})",
            )

    def port_allowed(self, port: int) -> bool:
        return ports_allow(self.allow_ports, port)

    def port_refusal(self, port: int) -> Refused:
        allowed = ", ".join(str(r) for r in self.allow_ports)
        return Refused(
            ErrorCode.PORT_NOT_ALLOWED,
            f"port {port} is not allowed for user {self.name!r} (its allow_ports: {allowed})",
        )

    def info(self) -> UserLimitsInfo:
        bandwidth = self.bandwidth
        return UserLimitsInfo(
            max_clients=self.max_clients,
            max_proxies=self.max_proxies,
            allow_ports=[str(r) for r in self.allow_ports],
            bandwidth_limit=self.rate,
            dropped_datagrams_in=bandwidth.inbound.dropped if bandwidth is not None else 0,
            dropped_datagrams_out=bandwidth.outbound.dropped if bandwidth is not None else 0,
        )


class Users:
    """The `UserLimits` of every user the server knows (its config's, and ``default``)."""

    def __init__(self, config: ServerConfig) -> None:
        self._limits = {user.name: UserLimits.from_config(user) for user in config.users}

    def __getitem__(self, name: str) -> UserLimits:
        """The limits of ``name``, an authenticated user (so the table stays as small as the config)."""
        limits = self._limits.get(name)
        if limits is None:
            limits = self._limits[name] = UserLimits(name)
        return limits

    def info(self) -> dict[str, UserLimitsInfo]:
        return {name: limits.info() for name, limits in self._limits.items()}
