"""``kill -9`` the tunnel server in the middle of a transfer, start it again: the client comes back by itself.

The client pins the server's certificate fingerprint, so its return also proves that the restarted server
kept its identity (same state directory, same generated certificate).
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from pathlib import Path

from support.streams import CHUNK, MiB, echo, free_port, payload, read_digest, send_all, tcp_server
from support.tunnel import start_client, start_server
from test_tunnel_tcp import tcp_proxy

#: The interrupted download: this block, this many times (generated lazily, never held in memory).
BLOCK = payload(MiB, 21)
STREAM_BLOCKS = 256
#: The client's backoff is 1 s doubling to 20 s plus 20% jitter; it must be back within this.
RECONNECT_WITHIN_S = 25.0


async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``stream\\n``: send BLOCK x STREAM_BLOCKS then EOF. ``echo\\n``: echo until EOF, then half-close."""
    try:
        command = await reader.readline()
        if command == b"stream\n":
            for _ in range(STREAM_BLOCKS):
                writer.write(BLOCK)
                await writer.drain()
        elif command == b"echo\n":
            await echo(reader, writer)
            return
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def read_until_end(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    """Everything until EOF or a reset, and which of the two ended it."""
    got = bytearray()
    try:
        while chunk := await reader.read(CHUNK):
            got += chunk
    except ConnectionResetError:
        return bytes(got), "reset"
    return bytes(got), "eof"


def stream_prefix_ok(data: bytes) -> bool:
    """``data`` is exactly the start of BLOCK repeated: nothing lost, reordered or invented before the cut."""
    view = memoryview(data)
    return all(view[i : i + MiB] == BLOCK[: len(view[i : i + MiB])] for i in range(0, len(data), MiB))


async def test_server_killed_mid_transfer_client_returns_after_restart(pierce, tmp_path: Path) -> None:
    public = free_port()
    async with tcp_server(service) as local:
        server, port = await start_server(pierce, tmp_path)
        (first_start,) = server.matching("server.listening")
        assert first_start["generated"] is True
        client = await start_client(
            pierce,
            tmp_path,
            port,
            [tcp_proxy("svc", local, remote_port=public)],
            server_fingerprint=first_start["fingerprint"],
        )
        (ready,) = await client.wait_event("proxy.ready")
        assert ready["remote_port"] == public

        # A download through the tunnel is under way (the first MiB arrived) when the server dies.
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"stream\n")
        head = await reader.readexactly(MiB)
        await server.wait_event("proxy.conn_open")
        server.proc.send_signal(signal.SIGKILL)
        assert await server.wait_exit() == -signal.SIGKILL
        rest, ending = await read_until_end(reader)
        writer.close()
        received = head + rest
        # It fails visibly: the stream ends (EOF or reset) well short of its length, and what did arrive is
        # an exact prefix of what was sent.
        assert len(received) < STREAM_BLOCKS * MiB, (len(received), ending)
        assert stream_prefix_ok(received), f"corrupted bytes in the first {len(received)} ({ending})"

        await client.wait_event("client.disconnected")
        # At least one attempt fails while the server is down; then it comes back on the same port.
        await client.wait_event("client.login_failed")
        await client.wait_event("client.retry", count=2)
        restarted, same_port = await start_server(pierce, tmp_path, bind_port=port)
        assert same_port == port
        (second_start,) = restarted.matching("server.listening")
        assert second_start["fingerprint"] == first_start["fingerprint"]
        assert second_start["generated"] is False

        connected = await client.wait_event("client.connected", count=2, timeout=RECONNECT_WITHIN_S + 5)
        assert connected[1]["ts"] - second_start["ts"] <= RECONNECT_WITHIN_S, (connected, second_start)
        ready_again = await client.wait_event("proxy.ready", count=2)
        assert ready_again[1]["remote_port"] == public
        (server_ready,) = await restarted.wait_event("proxy.ready")
        assert server_ready["remote_port"] == public

        # A fresh transfer on the same public port: both ways, half-closed, verified.
        data = payload(8 * MiB + 5, 22)
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"echo\n")

        async def upload() -> None:
            await send_all(writer, data)
            writer.write_eof()

        sending = asyncio.create_task(upload())
        got = await read_digest(reader)
        await sending
        writer.close()
    assert got == (hashlib.sha256(data).hexdigest(), len(data))
    (closed,) = await restarted.wait_event("proxy.conn_close")
    assert (closed["up_bytes"], closed["down_bytes"]) == (len(data) + len(b"echo\n"), len(data))
    assert client.proc.returncode is None
