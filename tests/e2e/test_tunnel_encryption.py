"""`[transport] encrypt_data`: what actually crosses the wire between `pierce client` and `pierce server`.

A recording TCP forwarder sits between the client and the server's control port, which also carries the
work connections, so every byte the two exchange passes through it and is kept. A payload with a unique
marker goes through a tcp proxy to an echo service and back: the marker must show in the recording only
when both sides set ``encrypt_data = false``, and never with the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.streams import CHUNK, MiB, duplex_visit, echo, payload, tcp_server
from support.tunnel import start_client, start_server


@dataclass
class Recording:
    """Every byte the forwarder moved, per direction, and how many connections it carried."""

    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    connections: int = 0


@contextlib.asynccontextmanager
async def recording_forwarder(target_port: int) -> AsyncIterator[tuple[int, Recording]]:
    """A loopback TCP forwarder to ``127.0.0.1:target_port`` that records what it forwards; yields its
    port and the recording. Every connection it holds is closed when the block ends."""
    rec = Recording()
    writers: set[asyncio.StreamWriter] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, into: bytearray) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                into += data  # recorded before it is passed on
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        ends = [c_writer]
        writers.add(c_writer)
        rec.connections += 1
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", target_port)
            ends.append(s_writer)
            writers.add(s_writer)
            await asyncio.gather(
                pump(c_reader, s_writer, rec.to_server), pump(s_reader, c_writer, rec.to_client)
            )
        except OSError:
            pass
        finally:
            for w in ends:
                w.close()
                writers.discard(w)
            tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), rec
    finally:
        server.close()
        for w in list(writers):
            w.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await server.wait_closed()


@pytest.mark.parametrize("encrypt", [True, False], ids=["default-encrypted", "encrypt_data-false"])
async def test_encrypt_data_hides_the_payload_on_the_wire(pierce, tmp_path: Path, encrypt: bool) -> None:
    marker = f"PIERCE-WIRE-MARKER-{uuid.uuid4().hex}".encode()
    data = marker + payload(1 * MiB, 21) + marker + payload(64 * 1024, 22) + marker
    # Default config for the encrypted case: no [transport] table at all.
    settings = {} if encrypt else {"transport": {"encrypt_data": False}}
    async with tcp_server(echo) as local:
        server, control = await start_server(pierce, tmp_path, **settings)
        async with recording_forwarder(control) as (wire_port, wire):
            host, _, port = local.rpartition(":")
            proxy = {"type": "tcp", "name": "echo", "local_ip": host, "local_port": int(port)}
            client = await start_client(pierce, tmp_path, wire_port, [proxy], **settings)
            (ready,) = await client.wait_event("proxy.ready", lambda e: e.get("proxy") == "echo")
            # The visitor's bytes go server -> client over a work connection, the echo comes back.
            got = await duplex_visit("127.0.0.1", int(ready["remote_port"]), data)
            assert got == (hashlib.sha256(data).hexdigest(), len(data))  # end to end, byte for byte
            (closed,) = await server.wait_event("proxy.conn_close")
            assert (closed["up_bytes"], closed["down_bytes"]) == (len(data), len(data))

            # All of it crossed the recorded wire, both ways.
            assert wire.connections >= 2  # the control connection and at least one work connection
            assert len(wire.to_client) >= len(data) and len(wire.to_server) >= len(data)
            seen = (marker in wire.to_client, marker in wire.to_server)
            assert seen == ((False, False) if encrypt else (True, True)), seen
