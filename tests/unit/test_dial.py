"""Dialling out, in process over loopback: a connected socket handed to the loop (`open_stream`) is the
transport's alone, also when its connection dies as TLS starts."""

from __future__ import annotations

import asyncio
import gc
import os
import select
import socket
import ssl
import struct
from collections.abc import Callable

import pytest
import uvloop

from pierce.dial import open_stream

ANY_CERT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ANY_CERT.check_hostname = False
ANY_CERT.verify_mode = ssl.CERT_NONE

#: Both loops a client runs on (uvloop when installed): they take sockets over differently.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_reset_as_tls_starts_leaves_its_number_to_the_next_connection(loop: str) -> None:
    """A server going down resets the connection just as the ClientHello goes out. On uvloop the transport
    closed the descriptor before the socket object was attached to it: the object kept the number, its
    ``close`` did nothing, and when it was collected it closed the number again, by then the next
    connection's (which failed with EBADF)."""
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(reset_as_tls_starts())


async def reset_as_tls_starts() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, lsock.getsockname())
        conn, _ = lsock.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset
        arrived = select.poll()
        arrived.register(sock, select.POLLIN | select.POLLERR)
        assert arrived.poll(5000), "the reset did not arrive"
        number = sock.fileno()
        # Held, as a failed dial's traceback holds it (its frames keep the socket) until it is collected.
        with pytest.raises(OSError) as failed:
            await open_stream(sock, ssl=ANY_CERT, server_hostname="pierce")
        for _ in range(5):  # the transport closes on a later turn of the loop
            await asyncio.sleep(0)
        with pytest.raises(OSError):
            os.fstat(number)  # closed
        assert sock.fileno() == -1  # and the object does not claim the number any more
        with socket.socket() as fresh:  # the next connection may get the number
            del sock, failed
            gc.collect()
            fresh.getsockname()  # still open
