"""`Inspector`: which proxies of a client are recorded, their logs, and replaying a recorded request.

A proxy is recorded when it is an http proxy, or an https proxy with the https2http plugin (this client
sees its plain HTTP; without the plugin it relays TLS it cannot read), and its ``inspect`` says so;
unset, ``inspect`` follows ``admin_port``: recording only costs where someone can look at it. Each
recorded proxy keeps the last ``[inspector] requests`` exchanges (`pierce.inspect.record`).

A replay sends a recorded request again, head and body as recorded, to the proxy's local service the
way a work connection does (a PROXY protocol header first when the proxy sends one, with the original
visitor's address), reads the answer through a recorder of its own and is logged as a new exchange
marked ``replay_of``. Only requests whose head and whole body were recorded are replayed; a chunked
body goes again as one chunk. At most :data:`MAX_REPLAYS` run at once, each within
:data:`REPLAY_TIMEOUT_S`.

Every client has an `Inspector`; the recorder and its HTTP parser (llhttp) load only when a proxy is
recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pierce.addr import HostPort, format_sockaddr
from pierce.config import InspectorOptions
from pierce.dial import TargetUnreachable, connect_tcp
from pierce.logs import event
from pierce.protocol import StartWork
from pierce.proxies.http import HttpProxyConfig
from pierce.proxies.https import HttpsProxyConfig
from pierce.proxies.registry import ProxyConfig
from pierce.proxies.tcp import LOCAL_CONNECT_TIMEOUT, proxy_protocol_header
from pierce.relay import SocketEnd

if TYPE_CHECKING:
    from pierce.inspect.record import ConnectionRecorder, Exchange, RequestLog

log = logging.getLogger("pierce.client")

#: Replays running at once; more are refused (HTTP 429).
MAX_REPLAYS = 4
#: Seconds a replay may take from connecting the local service to the end of its answer.
REPLAY_TIMEOUT_S = 30.0
#: Read size of a replay's answer.
REPLAY_READ = 64 * 1024

InspectedConfig = HttpProxyConfig | HttpsProxyConfig


class InspectError(Exception):
    """A request of the inspector's API that cannot be done; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def inspects(config: ProxyConfig, *, admin_on: bool) -> bool:
    """Whether the inspector records ``config``'s requests (see the module docstring)."""
    if isinstance(config, HttpsProxyConfig):
        if config.plugin is None:
            return False
    elif not isinstance(config, HttpProxyConfig):
        return False
    return admin_on if config.inspect is None else config.inspect


def request_bytes(exchange: Exchange) -> bytes:
    """The recorded request as it goes again: its head as recorded, then its body (re-chunked)."""
    head = f"{exchange.method} {exchange.target} HTTP/{exchange.version}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in exchange.request.headers) + "\r\n"
    body = bytes(exchange.request.body.data)
    chunked = any(
        name.lower() == "transfer-encoding" and "chunked" in value.lower()
        for name, value in exchange.request.headers
    )
    if chunked:
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return head.encode("latin-1") + body


class Inspector:
    """The recorded proxies of one client and their logs.

    ``proxies`` returns the client's current proxies (it changes on reload); ``admin_on``: the admin API
    is served (the default of ``inspect``).
    """

    def __init__(
        self, options: InspectorOptions, proxies: Callable[[], Iterable[ProxyConfig]], *, admin_on: bool
    ) -> None:
        self.options = options
        self._proxies = proxies
        self.admin_on = admin_on
        self._logs: dict[str, RequestLog] = {}
        self._replays = 0

    def inspected(self) -> dict[str, InspectedConfig]:
        """The recorded proxies by name, in config order."""
        return {
            p.name: p
            for p in self._proxies()
            if isinstance(p, InspectedConfig) and inspects(p, admin_on=self.admin_on)
        }

    def logs(self) -> dict[str, RequestLog]:
        """The log of every recorded proxy (empty ones too); logs of proxies no longer recorded go."""
        names = self.inspected()
        for gone in [n for n in self._logs if n not in names]:
            del self._logs[gone]
        return {name: self._log(name) for name in names}

    def _log(self, name: str) -> RequestLog:
        found = self._logs.get(name)
        if found is None:
            from pierce.inspect.record import RequestLog  # with the first recorded proxy

            found = self._logs[name] = RequestLog(self.options.requests)
        return found

    def recorder(self, config: ProxyConfig, start: StartWork) -> ConnectionRecorder | None:
        """A recorder for one work connection of ``config``, or None when it is not recorded."""
        if not inspects(config, admin_on=self.admin_on):
            return None
        from pierce.inspect.record import ConnectionRecorder

        return ConnectionRecorder(
            self._log(config.name),
            remote=format_sockaddr((start.visitor_host, start.visitor_port)),
            body_limit=self.options.body_bytes,
            context=start,
        )

    def find(self, proxy: str, exchange_id: int) -> tuple[InspectedConfig, RequestLog, Exchange]:
        config = self.inspected().get(proxy)
        if config is None:
            raise InspectError(404, f"no recorded proxy {proxy!r}")
        requests = self._log(proxy)
        exchange = requests.get(exchange_id)
        if exchange is None:
            raise InspectError(404, f"proxy {proxy!r} has no request {exchange_id} (any more)")
        return config, requests, exchange

    async def replay(self, proxy: str, exchange_id: int) -> Exchange:
        """Send a recorded request again; the new exchange. Raises `InspectError` (404, 409, 429, 502)."""
        config, requests, original = self.find(proxy, exchange_id)
        refusal = original.replay_refusal()
        if refusal:
            raise InspectError(409, f"request {exchange_id} cannot be replayed: {refusal}")
        if self._replays >= MAX_REPLAYS:
            raise InspectError(429, f"{MAX_REPLAYS} replays are running; try again when one has ended")
        self._replays += 1
        try:
            exchange = await self._replay(config, requests, original)
        finally:
            self._replays -= 1
        event(
            log,
            logging.INFO,
            "inspect.replayed",
            f"{proxy}: replayed request {original.id} ({original.method} {original.target}) as "
            f"{exchange.id}: {exchange.status or exchange.state.value}",
            proxy=proxy,
            method=original.method,
            target=original.target,
            status=exchange.status,
        )
        return exchange

    async def _replay(self, config: InspectedConfig, requests: RequestLog, original: Exchange) -> Exchange:
        from pierce.inspect.record import ConnectionRecorder, State

        start = original.context if isinstance(original.context, StartWork) else None
        recorder = ConnectionRecorder(
            requests,
            remote=original.remote,
            body_limit=self.options.body_bytes,
            context=start,
            replay_of=original.id,
        )
        payload = request_bytes(original)
        local = HostPort(config.local_ip, config.local_port)
        header = proxy_protocol_header(config.proxy_protocol_version, start) if start is not None else b""
        recorder.request(payload)  # logged now; an unreachable service is said in its note
        exchange = recorder.last
        if exchange is None:
            raise InspectError(500, f"the recorded request did not parse again: {recorder.stop_reason}")
        try:
            sock = await connect_tcp(local, LOCAL_CONNECT_TIMEOUT)
        except TargetUnreachable as exc:
            exchange.note = f"local service {local} unreachable: {exc}"
            recorder.close()
            raise InspectError(502, exchange.note) from exc
        end = SocketEnd(sock)
        try:
            async with asyncio.timeout(REPLAY_TIMEOUT_S):
                await end.write(header + payload)
                while exchange.state is State.PENDING and not recorder.stopped:
                    data = await end.read(REPLAY_READ)
                    if not data:
                        break
                    recorder.response(data)
        except TimeoutError:
            exchange.note = exchange.note or f"no whole answer within {REPLAY_TIMEOUT_S:g} s"
        except OSError as exc:
            exchange.note = exchange.note or f"local service {local}: {exc}"
        finally:
            recorder.close()
            end.close()
        return exchange
