"""Work connections on the server side: authenticated data connections a client keeps ready."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from pierce.protocol import ReqWorkConn, StartWork, UnexpectedMessage, WorkReady
from pierce.protocol.messages import MAX_IDLE_WORK_CONNS
from pierce.relay import End
from pierce.transport import ConnectionClosed, MessageChannel

#: Seconds a work connection has to answer a `StartWork` that asks for `WorkReady`.
CONFIRM_TIMEOUT = 3.0


class WorkConn:
    """One pooled data connection: TLS (framed data) or plain (raw socket, spliceable)."""

    def __init__(self, channel: MessageChannel) -> None:
        self.channel = channel
        #: The pool it came from; a TLS connection whose visitor ended cleanly goes back to it.
        self.pool: WorkConnPool | None = None
        #: Number of this connection within its client session (in logs: reuse shows as repeats).
        self.serial = 0

    def alive(self) -> bool:
        """False when the client closed it while it sat in the pool."""
        return self.channel.alive()

    async def start(self, msg: StartWork) -> End:
        """Hand the connection a visitor; return the relay end for its data. With ``msg.confirm``,
        only once the client answered `WorkReady` (ConnectionClosed when it does not in
        `CONFIRM_TIMEOUT` seconds: a dead connection)."""
        await self.channel.send(msg)
        if msg.confirm:
            try:
                async with asyncio.timeout(CONFIRM_TIMEOUT):
                    answer = await self.channel.recv()
            except TimeoutError:
                raise ConnectionClosed(f"no answer on the work connection in {CONFIRM_TIMEOUT:g}s") from None
            if not isinstance(answer, WorkReady):
                raise UnexpectedMessage(answer, "WorkReady")
        return self.channel.into_end(on_reuse=self._reuse)

    def _reuse(self) -> None:
        if self.pool is None:
            self.close()
        else:
            self.pool.put(self)

    def close(self) -> None:
        self.channel.close()


class WorkConnPool:
    """Idle work connections of one client, and visitors waiting for one."""

    def __init__(self, control: MessageChannel) -> None:
        self._control = control
        self._idle: deque[WorkConn] = deque()
        self._waiters: deque[asyncio.Future[WorkConn]] = deque()
        self.closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    def put(self, conn: WorkConn) -> None:
        conn.pool = self
        if self.closed:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(self._idle) >= MAX_IDLE_WORK_CONNS:
            conn.close()
            return
        self._idle.append(conn)

    async def get(self, timeout: float) -> WorkConn:
        """An idle connection, asking the client for more when the pool runs dry."""
        while self._idle:
            conn = self._idle.popleft()
            if conn.alive():
                return conn
            conn.close()
        waiter: asyncio.Future[WorkConn] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        with contextlib.suppress(Exception):
            self._control.send_nowait(ReqWorkConn(count=1))
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def drop_idle(self) -> int:
        """Close every idle connection (one was found dead: the others likely went with it); the next
        `get` asks the client for fresh ones. How many were closed."""
        dropped = len(self._idle)
        while self._idle:
            self._idle.popleft().close()
        return dropped

    def close(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.popleft().close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.cancel()
