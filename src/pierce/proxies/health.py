"""Health checks of a proxy's local service, run by its client (``health_check`` of a proxy).

Every ``interval_s`` the client tries the local service: ``tcp`` connects, ``http`` sends ``GET path``
and wants a 2xx or 3xx answer, each within ``timeout_s``. As in frp, a proxy with a health check is
registered with the server only while its service passes: at start once the first check passes,
withdrawn (`CloseProxy`) after ``max_failed`` failures in a row, registered again when a check passes.
In a group (`pierce.server.proxies.group`) the other members serve the visitors meanwhile.

`HealthState` is the sans-I/O part (results in, changes out); `HealthCheck` runs it on a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import socket
from collections.abc import Awaitable, Callable

import msgspec

from pierce.addr import HostPort
from pierce.dial import TargetUnreachable, connect_tcp, open_stream
from pierce.errors import InvalidValue, PierceError
from pierce.logs import event

log = logging.getLogger("pierce.proxy")

#: Longest ``interval_s`` and ``timeout_s`` (a day, a minute) and most ``max_failed``.
MAX_INTERVAL = 86400.0
MAX_TIMEOUT = 60.0
MAX_FAILED = 1000
#: The longest status line read from an http check's answer.
MAX_STATUS_LINE = 1024
_PATH = re.compile(r"/[\x21-\x7e]*")
_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: |\r?\n)")


class HealthCheckType(enum.Enum):
    TCP = "tcp"
    HTTP = "http"


class HealthCheckConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``health_check`` of a proxy."""

    type: HealthCheckType
    #: Seconds from the end of one check to the start of the next.
    interval_s: float = 10.0
    #: Seconds one check may take.
    timeout_s: float = 3.0
    #: Failures in a row that take the proxy off the server.
    max_failed: int = 1
    #: ``http``: the path asked for ("/" when empty).
    path: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.interval_s <= MAX_INTERVAL:
            raise InvalidValue("interval_s", f"expected seconds > 0, at most {MAX_INTERVAL:g}")
        if not 0 < self.timeout_s <= MAX_TIMEOUT:
            raise InvalidValue("timeout_s", f"expected seconds > 0, at most {MAX_TIMEOUT:g}")
        if not 1 <= self.max_failed <= MAX_FAILED:
            raise InvalidValue("max_failed", f"expected 1 to {MAX_FAILED}, got {self.max_failed}")
        if self.type is HealthCheckType.TCP and self.path:
            raise InvalidValue("path", 'expected no path: it is for type = "http"')
        if self.path and not _PATH.fullmatch(self.path):
            raise InvalidValue(
                "path",
                f'expected a path starting with "/" without spaces or control characters, got {self.path!r}',
            )


class Health(enum.Enum):
    #: No check has passed or failed ``max_failed`` times yet.
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class HealthState(msgspec.Struct):
    """The health of one local service, from the results of its checks."""

    max_failed: int
    health: Health = Health.UNKNOWN
    #: Failures in a row.
    failures: int = 0

    def record(self, passed: bool) -> Health | None:
        """Take one check's result; the new health when it changed, else None."""
        if passed:
            self.failures = 0
            new = Health.UP
        else:
            self.failures += 1
            if self.failures < self.max_failed:
                return None
            new = Health.DOWN
        if new is self.health:
            return None
        self.health = new
        return new


async def probe(config: HealthCheckConfig, local: HostPort) -> str | None:
    """Why ``local`` fails the check, or None when it passes."""
    try:
        async with asyncio.timeout(config.timeout_s):
            sock = await connect_tcp(local, config.timeout_s)
            if config.type is HealthCheckType.TCP:
                sock.close()
                return None
            return await _http_check(sock, local, config.path or "/")
    except TimeoutError:
        return f"no answer within {config.timeout_s:g}s"
    except (TargetUnreachable, OSError) as exc:
        return str(exc) or type(exc).__name__


async def _http_check(sock: socket.socket, local: HostPort, path: str) -> str | None:
    reader, writer = await open_stream(sock, limit=MAX_STATUS_LINE)  # closes the socket when it fails
    try:
        host = f"[{local.host}]" if ":" in local.host else local.host
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{local.port}\r\nUser-Agent: pierce-health-check\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            return "answered with an overlong status line"
        except asyncio.IncompleteReadError as exc:
            return "closed without answering" if not exc.partial else "answered with no HTTP status line"
        match = _STATUS.match(line)
        if match is None:
            return "answered with no HTTP status line"
        status = int(match.group(1))
        return None if 200 <= status < 400 else f"answered {status} to GET {path}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


OnChange = Callable[[str, Health, Health], Awaitable[None]]


class HealthCheck:
    """The checks of one proxy's local service, on a task of their own, reporting each change of health
    to ``on_change(proxy, new, old)``."""

    def __init__(self, proxy: str, config: HealthCheckConfig, local: HostPort, on_change: OnChange) -> None:
        self.proxy = proxy
        self.config = config
        self.local = local
        self.state = HealthState(config.max_failed)
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    @property
    def health(self) -> Health:
        return self.state.health

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"health {self.proxy}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            error = await probe(self.config, self.local)
            old = self.state.health
            new = self.state.record(error is None)
            if new is not None:
                self._log(new, old, error)
                # A session that is gone leaves it to the next one, which registers by the health it finds.
                with contextlib.suppress(PierceError, OSError):
                    await self._on_change(self.proxy, new, old)
            await asyncio.sleep(self.config.interval_s)

    def _log(self, new: Health, old: Health, error: str | None) -> None:
        target = str(self.local)
        if new is Health.UP:
            what = "passes" if old is Health.UNKNOWN else "passes again"
            event(
                log,
                logging.INFO,
                "proxy.health_recovered",
                f"proxy {self.proxy}: health check of {target} {what}; registering it with the server",
                proxy=self.proxy,
                target=target,
            )
            return
        failures = self.state.failures
        event(
            log,
            logging.WARNING,
            "proxy.health_failed",
            f"proxy {self.proxy}: health check of {target} failed {failures} time(s) in a row ({error}); "
            "off the server until it passes",
            proxy=self.proxy,
            target=target,
            error=error or "",
            failures=failures,
        )
