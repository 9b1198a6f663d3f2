"""Both sessions, client and server, joined by in-memory channels: no socket between them.

The server's `ControlSession` and the client's `ClientSession` run as they do in the processes, over
`pierce.transport.memory_pair` channels; a small dialer hands the client work connections the same way
(each logged in with the real handshake). Only the stcp visitor's local service is a loopback socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pierce.client.session import ClientSession, features_of
from pierce.client.visitor import open_visit
from pierce.config import ClientConfig, ServerConfig, StcpVisitorConfig
from pierce.handshake import client_login, client_work_login, server_login, server_work_login
from pierce.protocol import DirectAddress, ErrorCode, Hello, NewProxy, Refused, Role, Visit
from pierce.proxies.http import HttpProxyConfig
from pierce.proxies.stcp import StcpProxyConfig
from pierce.proxies.tcpmux import TcpMuxProxyConfig
from pierce.proxies.visitor_auth import VisitorTickets
from pierce.server.app import Server
from pierce.server.proxies.secret import serve_visit
from pierce.server.session import ControlSession
from pierce.server.workconn import WorkConn
from pierce.snapshot import ProxyState
from pierce.transport import MemoryChannel, memory_pair

TOKEN = "memory-token-Kq7vB2mN9pL4sR8t"
BINDING = b"m" * 32
SECRET = "stcp secret"


class MemoryDialer:
    """What `ClientSession` needs of a dialer: work connections, here in memory, logged in for real."""

    def __init__(self, config: ClientConfig, server: Server) -> None:
        self.config = config
        self.server = server
        self.opened = 0
        #: When set, every work connection fails (as when the server cannot be reached).
        self.broken = False
        #: Work connections are memory channels of their own, never streams of a multiplexed one.
        self.multiplexed = False
        #: What the server offered (`pierce.client.session.Dialer.server_features`).
        self.server_features = server.features

    async def work(self, run_id: str, key: bytes) -> MemoryChannel:
        if self.broken:
            raise OSError("work connections are broken in this test")
        client_end, server_end = memory_pair(("client", "server"))

        async def serve() -> None:
            hello = await server_end.recv()
            assert isinstance(hello, Hello) and hello.role is Role.WORK
            session = self.server.sessions[run_id]
            await server_work_login(
                server_end, hello, key=session.work_key, features=self.server.features, binding=BINDING
            )
            session.add_work_conn(WorkConn(server_end))

        served = asyncio.ensure_future(serve())
        await client_work_login(
            client_end,
            key=key,
            features=features_of(self.config),
            client_id="home",
            run_id=run_id,
            binding=BINDING,
        )
        await served
        self.opened += 1
        return client_end


class MemoryVisitorDialer:
    """What `open_visit` needs of a dialer: visitor connections to ``server``, already logged in (as the
    default user), each served by the server's real `serve_visit`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.serial = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def visitor(self) -> tuple[MemoryChannel, str]:
        self.serial += 1
        visit_id = f"visit-{self.serial}"
        visitor_end, server_end = memory_pair(("visitor", "server"))

        async def serve() -> None:
            visit = await server_end.recv()
            assert isinstance(visit, Visit)
            await serve_visit(
                self.server._secret_proxy,
                server_end,
                visit,
                visit_id=visit_id,
                visitor_user="default",
                visitor_id="laptop",
                visitor=("198.51.100.7", 40000 + self.serial),
            )

        self.tasks.append(asyncio.ensure_future(serve()))
        return visitor_end, visit_id

    async def served(self) -> None:
        await asyncio.gather(*self.tasks)
        self.tasks.clear()


@contextlib.asynccontextmanager
async def echo_service() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    service = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield service.sockets[0].getsockname()[1]
    finally:
        service.close()


async def test_sessions_register_refuse_visit_and_close_in_memory(tmp_path: Path) -> None:
    server = Server(
        ServerConfig(token=TOKEN, bind_addr="127.0.0.1", bind_port=0, stun_port=0, user_conn_timeout=0.5)
    )
    async with echo_service() as echo_port:
        proxies = {
            "secret": StcpProxyConfig(name="secret", local_port=echo_port, secret_key=SECRET),
            "web": HttpProxyConfig(name="web", local_port=80, custom_domains=["web.example.com"]),
            "mux": TcpMuxProxyConfig(name="mux", local_port=22, custom_domains=["ssh.example.com"]),
        }
        config = ClientConfig(server_addr="memory", token=TOKEN, pool_count=0)
        client_end, server_end = memory_pair(("client", "server"))

        async def login() -> ControlSession:
            hello = await server_end.recv()
            assert isinstance(hello, Hello)
            login = await server_login(
                server_end,
                hello,
                verifier=server.verifiers.get,
                features=server.features,
                binding=BINDING,
                run_id="run-1",
            )
            session = ControlSession(
                server,
                server_end,
                user=login.user,
                client_id=hello.client_id,
                run_id="run-1",
                peer="mem",
                key=login.key,
            )
            server.sessions["run-1"] = session
            return session

        logging_in = asyncio.ensure_future(login())
        run_id, key, _, _ = await client_login(
            client_end, user="", token=TOKEN, features=features_of(config), client_id="home",
            role=Role.CONTROL, binding=BINDING,
        )  # fmt: skip
        control = await logging_in
        states: dict[str, tuple[ProxyState, str]] = {}
        changed = asyncio.Event()

        def on_state(name: str, state: ProxyState, port: int | None, error: str, urls: Any) -> None:
            states[name] = (state, error)
            changed.set()

        active: set[asyncio.Task[None]] = set()

        def spawn(coro: Coroutine[Any, Any, None]) -> None:
            active.add(asyncio.ensure_future(coro))

        dialer = MemoryDialer(config, server)
        client = ClientSession(dialer, client_end, run_id, key, proxies, on_state, spawn)  # type: ignore[arg-type]
        tasks = [asyncio.ensure_future(control.run()), asyncio.ensure_future(client.run())]
        try:
            async with asyncio.timeout(10):
                while len(states) < 3:
                    await changed.wait()
                    changed.clear()
            # A secret proxy opens without a port; web kinds need fronts this server lacks.
            assert states["secret"] == (ProxyState.RUNNING, "")
            assert states["web"][0] is ProxyState.REFUSED and "vhost_http_port" in states["web"][1]
            assert states["mux"][0] is ProxyState.REFUSED and "tcpmux_httpconnect_port" in states["mux"][1]
            snap = server.snapshot()
            assert [c.client_id for c in snap.clients] == ["home"]
            assert [(p.name, p.type.value, p.remote_port) for p in snap.proxies] == [("secret", "stcp", 0)]

            # A visitor of the secret proxy: it and the owner run the exchange through the server, a
            # work connection is asked for (the pool starts empty) and opened in memory, and the bytes
            # come back from the service.
            visitors = MemoryVisitorDialer(server)
            tickets = VisitorTickets()
            secret_visitor = StcpVisitorConfig(name="v", server_name="secret", secret_key=SECRET, bind_port=0)
            async with asyncio.timeout(10):
                visitor_end = await open_visit(visitors, secret_visitor, tickets)  # type: ignore[arg-type]
                assert tickets.get("secret") is not None  # the fresh exchange left a ticket
                data = bytes(range(256)) * 2048
                end = visitor_end.into_end()
                await end.write(data)
                end.write_eof()
                got = bytearray()
                while chunk := await end.read(1 << 16):
                    got += chunk
                await visitors.served()
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            assert dialer.opened >= 1
            (secret,) = server.snapshot().proxies
            assert secret.stats.total_connections == 1 and secret.stats.connections == 0
            assert secret.stats.bytes_in == secret.stats.bytes_out == len(data)

            # A wrong secret is refused by the owner, and the visitor hears why.
            wrong = msgspec.structs.replace(secret_visitor, secret_key="not the secret")
            with pytest.raises(Refused) as refused:
                async with asyncio.timeout(10):
                    await open_visit(visitors, wrong, VisitorTickets())  # type: ignore[arg-type]
            await visitors.served()
            assert refused.value.code is ErrorCode.AUTH_FAILED

            # No work connection comes in time: the visitor (now on its ticket) hears why and the proxy
            # counts a failure.
            dialer.broken = True
            for _ in range(control.pool.idle):  # the connections left from the first visitor
                (await control.pool.get(1)).close()
            with pytest.raises(Refused) as refused:
                async with asyncio.timeout(10):
                    await open_visit(visitors, secret_visitor, tickets)  # type: ignore[arg-type]
            await visitors.served()
            assert refused.value.code is ErrorCode.TIMEOUT
            (secret,) = server.snapshot().proxies
            assert secret.stats.failed_connections == 1 and secret.stats.total_connections == 2
            dialer.broken = False

            # A spec no kind decodes is refused by name, and the session carries on.
            await client_end.send(
                NewProxy(name="junk", spec=msgspec.Raw(msgspec.msgpack.encode({"type": "x"})))
            )
            async with asyncio.timeout(10):
                while "junk" not in states:
                    await changed.wait()
                    changed.clear()
            assert states["junk"][0] is ProxyState.REFUSED and "bad_message" in states["junk"][1]

            # Where the client says a proxy is reachable without the server: shown with that proxy; a
            # claim about a proxy this session does not hold is ignored, and "" withdraws it.
            async def direct_shown() -> str:
                for _ in range(1000):  # the memory channels deliver within a few turns of the loop
                    await asyncio.sleep(0)
                    if control.direct.get("secret", "") == wanted:
                        break
                (proxy,) = server.snapshot().proxies
                return proxy.direct

            await client.publish_direct("ghost", "198.51.100.7:1")
            wanted = "198.51.100.7:6022"
            await client.publish_direct("secret", wanted)
            assert await direct_shown() == wanted and "ghost" not in control.direct
            wanted = ""
            await client.publish_direct("secret", wanted)
            assert await direct_shown() == ""

            # An address that is not ip:port breaks the protocol: the session ends, saying why.
            await client_end.send(DirectAddress(name="secret", address="not an address"))
            async with asyncio.timeout(10):
                await tasks[0]
            assert "secret" not in control.direct
        finally:
            client_end.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            await control.close("test over")
            for task in active:
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)
        # Closing the session closed its proxies.
        assert control.proxies == {} and server.proxy_owners == {}
