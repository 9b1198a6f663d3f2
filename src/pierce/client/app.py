"""``pierce client``: dials out to the server, registers proxies, reconnects forever, reloads its config."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import random
import signal
import ssl
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from pierce import __version__
from pierce import config as config_mod
from pierce.addr import HostPort
from pierce.client.session import ClientSession, Dialer
from pierce.config import ClientConfig
from pierce.errors import ConfigError, PierceError
from pierce.handshake import AuthenticationFailed, WrongCredentials, resume_key
from pierce.logs import event
from pierce.protocol import ErrorCode, Refused
from pierce.protocol.messages import DEFAULT_USER
from pierce.proxies.base import ProxyType
from pierce.proxies.health import Health, HealthCheck
from pierce.proxies.registry import ProxyConfig, work_handler
from pierce.proxies.udp import UdpProxies
from pierce.snapshot import ClientProxyInfo, ClientSnapshot, ProxyState
from pierce.statedir import prepare_state_dir, state_dir_for
from pierce.tls import FingerprintMismatch

if TYPE_CHECKING:
    from pierce.client.direct import DirectProxies
    from pierce.client.visitor import Visitors
    from pierce.inspect.inspector import Inspector
    from pierce.p2p.owner import OwnerP2p
    from pierce.proxies.visitor_auth import OwnerExchanges

log = logging.getLogger("pierce.client")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 20.0
#: Visitor connections that end between two hand-backs of the memory they freed to the system, and the
#: seconds from the one that reaches the count to the hand-back (`pierce.runtime.release_free_memory`,
#: a few milliseconds; the server does the same after a crowd of logins). The allocator keeps freed
#: blocks on the heap for speed (`pierce.runtime.tune_allocator`), so without it a client under steady
#: churn creeps up to its heap's high-water mark as the heap fragments: +49 KiB/min over a 30-minute
#: `bench/soak.py`, all of it free memory in the heap (`malloc_trim` gave it back).
TRIM_AFTER = 32
TRIM_DELAY = 1.0


class ClientStatus(msgspec.Struct):
    connected: bool = False
    run_id: str = ""
    attempts: int = 0
    last_error: str = ""
    connected_since: float | None = None
    #: Every configured proxy as the client sees it (replaced, never changed in place).
    proxies: dict[str, ClientProxyInfo] = msgspec.field(default_factory=dict)


def default_client_id(config_path: Path | None) -> str:
    node = platform.node() or "client"
    if config_path is None:
        return node
    import hashlib

    digest = hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()[:6]
    return f"{node}-{digest}"


class Client:
    """Owns the reconnect loop, the current session, live relays, and the config."""

    def __init__(self, config: ClientConfig, *, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.client_id = config.client_id or default_client_id(config_path)
        self.status = ClientStatus()
        self.session: ClientSession | None = None
        # The owner sides of secret services, P2P and the inspector are made on first use (`exchanges`,
        # `p2p`, `inspector`): a client whose proxies never need them does not load their code.
        self._exchanges: OwnerExchanges | None = None
        self._inspector: Inspector | None = None
        self._p2p: OwnerP2p | None = None
        #: TLS contexts of https2http plugins on direct paths, by certificate and key file.
        self._tls_contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        #: The last session's run id and resume key: a reconnect proves it held that session.
        self._resume: tuple[str, bytes] | None = None
        self.active: set[asyncio.Task[None]] = set()
        self._ended = 0  # active tasks ended since freed memory was last handed back
        self._trim: asyncio.TimerHandle | None = None
        #: UDP proxies and their visitor flows, kept across reconnects like `active` relays.
        self.udp = UdpProxies()
        #: The ``[[visitors]]`` of the config: local ports reaching other clients' secret proxies (None
        #: without any: the visiting side's code, P2P included, then never loads).
        self.visitors: Visitors | None = None
        if config.visitors:
            from pierce.client.visitor import Visitors

            self.visitors = Visitors(config, self.client_id)
        self._visitors_started: asyncio.Task[None] | None = None
        #: ``[ddns]``: the task keeping the DNS name at the public address (`pierce.ddns.watch`), and the
        #: event that asks it to look again (set at every login).
        self._ddns: asyncio.Task[None] | None = None
        self._ddns_check = asyncio.Event()
        #: Proxies with ``direct = "auto"``: their listeners and router port mappings (None until one has
        #: it: `pierce.client.direct` and `pierce.portmap` load with the first).
        self.direct: DirectProxies | None = None
        #: Health checks of the proxies that have one, by proxy name (they outlive reconnects).
        self.health: dict[str, HealthCheck] = {}
        self._stop = asyncio.Event()
        #: Why the client stopped trying (its first login was refused for the credentials), or None.
        self.gave_up: WrongCredentials | None = None
        self._sync_states()

    # -- proxy bookkeeping -------------------------------------------------------------------------

    def _sync_states(self) -> None:
        states = {}
        for p in self.config.proxies:
            old = self.status.proxies.get(p.name)
            kind = ProxyType(str(type(p).__struct_config__.tag))
            states[p.name] = old or ClientProxyInfo(
                name=p.name, type=kind, local=f"{p.local_ip}:{p.local_port}", state=ProxyState.PENDING
            )
        self.status.proxies = states

    def _on_proxy_state(
        self, name: str, state: ProxyState, port: int | None, error: str, urls: Sequence[str] = ()
    ) -> None:
        proxy = self.status.proxies.get(name)
        if proxy is None or not self._ready(name):  # withdrawn since it was asked for: the answer is stale
            return
        proxy = self.status.proxies[name] = msgspec.structs.replace(
            proxy, state=state, remote_port=port, error=error, urls=list(urls)
        )
        if state is ProxyState.RUNNING:
            if proxy.direct:  # the server forgets it with the proxy: tell it again
                self._publish_direct(name, proxy.direct)
            host = self.config.server_addr
            where = "at " + (", ".join(urls) if urls else f"{host}:{port}")
            if not port and not urls:
                where = f"by visitors of {host} that know its secret (no public port)"
            event(
                log,
                logging.INFO,
                "proxy.ready",
                f"proxy {name}: {proxy.local} is reachable {where}",
                proxy=name,
                remote_port=port,
                server=host,
                urls=list(urls),
            )
        else:
            event(
                log,
                logging.ERROR,
                "proxy.refused",
                f"proxy {name}: refused by the server: {error}",
                proxy=name,
                error=error,
            )

    # -- direct (router port mappings) ------------------------------------------------------------

    async def _sync_direct(self) -> None:
        if self.direct is None:
            if not any(_direct_tcp_udp(p) for p in self.config.proxies):
                return
            from pierce.client.direct import DirectProxies

            self.direct = DirectProxies(self._direct_changed, self._spawn_active)
        await self.direct.sync(self.config.proxies, self.config.port_mapping)

    def _direct_changed(self, name: str, address: str, error: str) -> None:
        """A proxy's public mapped address came, changed or went (``error``: why there is none)."""
        info = self.status.proxies.get(name)
        if info is None:
            return
        self.status.proxies[name] = msgspec.structs.replace(info, direct=address, direct_error=error)
        if info.direct != address:
            self._publish_direct(name, address)

    def _publish_direct(self, name: str, address: str) -> None:
        session = self.session
        if session is None:
            return  # the next session tells the server when the proxy is ready

        async def send() -> None:
            with contextlib.suppress(PierceError, OSError):
                await session.publish_direct(name, address)

        self._spawn_active(send())

    # -- health checks -----------------------------------------------------------------------------

    def _ready(self, name: str) -> bool:
        """Whether proxy ``name`` may be registered: it has no health check, or its check passes."""
        check = self.health.get(name)
        return check is None or check.health is Health.UP

    async def _sync_health(self) -> None:
        """One running health check per configured proxy that has one; a check whose settings or local
        service changed starts over (its proxy waits for the first pass again)."""
        wanted: dict[str, HealthCheck] = {}
        for p in self.config.proxies:
            settings = getattr(p, "health_check", None)
            if settings is not None:
                wanted[p.name] = HealthCheck(
                    p.name, settings, HostPort(p.local_ip, p.local_port), self._health_changed
                )
        for name, check in list(self.health.items()):
            new = wanted.get(name)
            if new is not None and (new.config, new.local) == (check.config, check.local):
                wanted[name] = check
            else:
                del self.health[name]
                await check.close()
        for name, check in wanted.items():
            if name not in self.health:
                self.health[name] = check
                check.start()

    async def _health_changed(self, name: str, new: Health, old: Health) -> None:
        """A proxy's local service came up (register the proxy) or went down (withdraw it)."""
        proxy = next((p for p in self.config.proxies if p.name == name), None)
        info = self.status.proxies.get(name)
        if proxy is None or info is None:
            return
        session = self.session
        if new is Health.UP:
            self.status.proxies[name] = msgspec.structs.replace(info, state=ProxyState.PENDING, error="")
            if session is not None:
                await session.register(proxy)
        else:
            error = "its local service fails the health check"
            self.status.proxies[name] = msgspec.structs.replace(
                info, state=ProxyState.UNHEALTHY, error=error, remote_port=None, urls=[]
            )
            if session is not None:
                await session.unregister(name)

    @property
    def exchanges(self) -> OwnerExchanges:
        """Visitors' exchanges and tickets for this client's secret services (outlive reconnects)."""
        if self._exchanges is None:
            from pierce.proxies.visitor_auth import OwnerExchanges

            self._exchanges = OwnerExchanges()
        return self._exchanges

    @property
    def inspector(self) -> Inspector:
        """What the http proxies' visitors asked and got (the admin port's /inspect)."""
        if self._inspector is None:
            from pierce.inspect.inspector import Inspector

            self._inspector = Inspector(
                self.config.inspector, lambda: self.config.proxies, admin_on=bool(self.config.admin_port)
            )
        return self._inspector

    @property
    def p2p(self) -> OwnerP2p:
        """Direct paths to visitors of this client's xtcp/xudp proxies (they outlive reconnects)."""
        if self._p2p is None:
            from pierce.p2p.owner import OwnerP2p

            self._p2p = OwnerP2p(
                self.exchanges,
                lambda: {p.name: p for p in self.config.proxies},
                lambda config, start, end: work_handler(config, start, end, self._tls_contexts),
                server_host=self._server_host,
                options=self.config.p2p,
                state_dir=state_dir_for("client", self.config.state_dir),
                encrypt_data=lambda: self.config.transport.encrypt_data,
                port_mapping=self.config.port_mapping,
            )
        return self._p2p

    def _server_host(self) -> str:
        return self.session.dialer.server_ip() if self.session else self.config.server_addr

    def snapshot(self) -> ClientSnapshot:
        """What the client is doing now (the admin API and the demo read this)."""
        st = self.status
        direct = self._p2p.by_proxy() if self._p2p is not None else {}
        proxies = [
            msgspec.structs.replace(p, path=direct[p.name][-1].path, direct_paths=len(direct[p.name]))
            if p.name in direct
            else p
            for p in st.proxies.values()
        ]
        return ClientSnapshot(
            version=__version__,
            client_id=self.client_id,
            server=f"{self.config.server_addr}:{self.config.server_port}",
            connected=st.connected,
            run_id=st.run_id,
            connected_since=st.connected_since,
            attempts=st.attempts,
            last_error=st.last_error,
            proxies=proxies,
            connections=len(self.active),
            visitors=self.visitors.info() if self.visitors is not None else [],
        )

    def _spawn_active(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.active.add(task)
        task.add_done_callback(self._active_done)

    def _active_done(self, task: asyncio.Task[None]) -> None:
        self.active.discard(task)
        self._ended += 1
        if self._ended >= TRIM_AFTER and self._trim is None and not self._stop.is_set():
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._release_memory)

    def _release_memory(self) -> None:
        from pierce.runtime import release_free_memory

        self._trim = None
        ended, self._ended = self._ended, 0
        release_free_memory()
        event(
            log,
            logging.DEBUG,
            "client.memory_released",
            f"freed memory handed back to the system after {ended} connections ended",
            ended=ended,
        )

    # -- main loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, and reconnect with capped exponential backoff plus jitter, until stopped.

        Network failures are retried for ever. A first login the server refuses for the credentials
        (unknown user, wrong token) ends the loop with `gave_up` set: retrying cannot fix the config.
        Once logged in, the same refusal is retried (the server's users may be restored).
        """
        backoff = BACKOFF_FIRST
        dialer = Dialer(self.config, self.client_id)
        await self._sync_health()
        await self._sync_direct()
        if self.visitors is not None and self._visitors_started is None:
            self._visitors_started = asyncio.get_running_loop().create_task(self.visitors.start(strict=False))
        if self.config.ddns is not None and self._ddns is None:
            from pierce.ddns import DdnsUpdater, watch  # loads dnspython: only with [ddns]

            updater = DdnsUpdater(self.config.ddns)
            self._ddns = asyncio.get_running_loop().create_task(
                watch(updater, self._server_host, self._ddns_check)
            )
        while not self._stop.is_set():
            self.status.attempts += 1
            started, logged_in = time.monotonic(), False
            try:
                channel, run_id, key = await dialer.control(self._resume)
            except WrongCredentials as exc:
                self._failed(exc, fatal_hint=True)
                if self._resume is None:
                    self._give_up(exc, dialer)
                    break
            except (AuthenticationFailed, FingerprintMismatch) as exc:
                self._failed(exc, fatal_hint=True)
            except Refused as exc:
                self._failed(
                    exc, fatal_hint=exc.code in (ErrorCode.VERSION_MISMATCH, ErrorCode.FEATURE_MISMATCH)
                )
            except (PierceError, OSError, TimeoutError) as exc:
                self._failed(exc)
            else:
                logged_in = True
                self.status.connected, self.status.run_id = True, run_id
                self._resume = (run_id, resume_key(key, run_id))
                self.status.connected_since = time.time()
                event(
                    log,
                    logging.INFO,
                    "client.connected",
                    f"logged in to {dialer.server} as user {self.config.user or DEFAULT_USER}, client "
                    f"{self.client_id}",
                    server=str(dialer.server),
                    run_id=run_id,
                    user=self.config.user or DEFAULT_USER,
                )
                from pierce.runtime import release_free_memory

                release_free_memory()  # what starting and logging in freed goes back now
                self._ddns_check.set()  # a new login may come from a new public address
                self.session = ClientSession(
                    dialer,
                    channel,
                    run_id,
                    key,
                    {p.name: p for p in self.config.proxies},
                    self._on_proxy_state,
                    self._spawn_active,
                    udp=self.udp,
                    exchanges=lambda: self.exchanges,
                    p2p=lambda: self.p2p,
                    ready=self._ready,
                    inspector=lambda: self.inspector,
                )
                try:
                    await self.session.run()
                except (PierceError, OSError) as exc:
                    if not self._stop.is_set():  # not our own close: the server or the network went away
                        self.status.last_error = str(exc)
                        event(
                            log,
                            logging.WARNING,
                            "client.disconnected",
                            f"lost the server: {exc}",
                            error=str(exc),
                        )
                finally:
                    self.session = None
                    self.status.connected = False
                    for name, proxy in self.status.proxies.items():
                        if proxy.state is not ProxyState.UNHEALTHY:
                            self.status.proxies[name] = msgspec.structs.replace(
                                proxy, state=ProxyState.PENDING
                            )
                if time.monotonic() - started > BACKOFF_MAX:
                    backoff = BACKOFF_FIRST  # it was a healthy session: start the backoff over
            if self._stop.is_set():
                break
            # Attempts start `backoff` apart: a dial that hung until its timeout (a dead link drops the
            # SYNs) counts towards the wait, so the link found again is used within one backoff, not one
            # backoff plus DIAL_TIMEOUT. After a session the wait starts when it ended.
            backoff_s = backoff * random.uniform(0.8, 1.2)
            dialing = 0.0 if logged_in else time.monotonic() - started
            delay = max(0.0, backoff_s - dialing)
            event(
                log,
                logging.INFO,
                "client.retry",
                f"reconnecting in {delay:.1f}s",
                delay_s=round(delay, 2),
                backoff_s=round(backoff_s, 2),
            )
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _failed(self, exc: BaseException, *, fatal_hint: bool = False) -> None:
        self.status.last_error = str(exc)
        msg = f"cannot log in to {self.config.server_addr}:{self.config.server_port}: {exc}"
        event(
            log, logging.ERROR if fatal_hint else logging.WARNING, "client.login_failed", msg, error=str(exc)
        )

    def _give_up(self, exc: WrongCredentials, dialer: Dialer) -> None:
        self.gave_up = exc
        user = self.config.user or DEFAULT_USER
        event(
            log,
            logging.ERROR,
            "client.gave_up",
            f"giving up: {dialer.server} refused the first login of user {user}: {exc}; check user and "
            "token (a client that has logged in once keeps retrying instead)",
            error=str(exc),
            server=str(dialer.server),
            user=user,
        )

    def stop(self) -> None:
        self._stop.set()
        if self.session is not None:
            self.session.channel.close()

    async def close(self) -> None:
        self.stop()
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        tasks = list(self.active)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for check in self.health.values():
            await check.close()
        if self.direct is not None:
            await self.direct.close()
        await self.udp.close()
        if self._p2p is not None:
            await self._p2p.close()
        if self._ddns is not None:
            self._ddns.cancel()
            await asyncio.gather(self._ddns, return_exceptions=True)
        if self._visitors_started is not None:
            self._visitors_started.cancel()
            await asyncio.gather(self._visitors_started, return_exceptions=True)
        if self.visitors is not None:
            await self.visitors.close()

    # -- reload ------------------------------------------------------------------------------------

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the config file and apply proxy changes; unchanged proxies and live connections stay.

        Raises ConfigError (the running config is kept) when the file is invalid.
        """
        if self.config_path is None:
            raise ConfigError(["reload: this client was started without a config file"])
        new = config_mod.load(self.config_path, ClientConfig)
        old_by_name = {p.name: p for p in self.config.proxies}
        new_by_name = {p.name: p for p in new.proxies}
        removed = [n for n in old_by_name if n not in new_by_name]
        added = [n for n in new_by_name if n not in old_by_name]
        changed = [n for n in new_by_name if n in old_by_name and not _same(old_by_name[n], new_by_name[n])]
        self.config = msgspec.structs.replace(self.config, proxies=new.proxies, port_mapping=new.port_mapping)
        self._sync_states()
        await self._sync_direct()
        for name in removed + changed:  # a visitor's ticket never outlives the secret it proved
            if self._exchanges is not None:
                self._exchanges.forget(name)
        await self._sync_health()
        session = self.session
        if session is not None:
            for name in removed + changed:
                await session.unregister(name)
            for name in added + changed:
                if self._ready(name):
                    await session.register(new_by_name[name])
        result = {"added": added, "removed": removed, "changed": changed}
        event(
            log,
            logging.INFO,
            "client.reloaded",
            f"config reloaded: {len(added)} added, {len(removed)} removed, {len(changed)} changed",
            **result,
        )
        return result


def _direct_tcp_udp(p: ProxyConfig) -> bool:
    """A tcp or udp proxy with ``direct = "auto"`` (xtcp/xudp ones map per direct path: `pierce.p2p`)."""
    return type(p).__struct_config__.tag in ("tcp", "udp") and getattr(p, "direct", "off") == "auto"


def _same(a: ProxyConfig, b: ProxyConfig) -> bool:
    return type(a) is type(b) and msgspec.structs.asdict(a) == msgspec.structs.asdict(b)


def log_reload_failed(exc: ConfigError) -> None:
    for problem in exc.problems:
        event(
            log,
            logging.ERROR,
            "client.reload_failed",
            f"reload failed, keeping the running config: {problem}",
            error=problem,
        )


async def reload_logged(client: Client) -> dict[str, list[str]] | None:
    """Reload, logging (not raising) a bad file: the running config stays."""
    try:
        return await client.reload()
    except ConfigError as exc:
        log_reload_failed(exc)
        return None


async def run_client(config: ClientConfig, config_path: Path | None = None) -> int:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the config file. Returns the exit status: 1 when the
    client gave up (its first login was refused for the credentials), else 0."""
    from pierce.runtime import wait_for_stop_signal

    prepare_state_dir(state_dir_for("client", config.state_dir), log)
    client = Client(config, config_path=config_path)
    loop = asyncio.get_running_loop()
    admin = None
    if config.admin_port:
        from pierce.client.admin import AdminApi  # aiohttp loads only when admin_port is set

        admin = AdminApi(client)
        await admin.start()  # POST /api/stop ends client.run(), which ends this function

    reloads: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        task = loop.create_task(reload_logged(client))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, AttributeError, RuntimeError):  # Windows has no SIGHUP
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    runner = loop.create_task(client.run())
    stopper = loop.create_task(wait_for_stop_signal())
    try:
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            log.info("stopping on %s", stopper.result().name)
        elif not runner.cancelled() and (failure := runner.exception()) is not None:
            # A bug, not a network failure (those are retried in run()): said, and a failed exit (a
            # supervisor restarts the client) instead of a silent one.
            event(
                log,
                logging.ERROR,
                "client.crashed",
                f"client stopped by an unexpected error: {failure!r}",
                error=repr(failure),
            )
            log.error("where it happened:", exc_info=failure)
            return 1
    finally:
        stopper.cancel()
        await client.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        if admin is not None:
            await admin.close()
    return 1 if client.gave_up is not None else 0
