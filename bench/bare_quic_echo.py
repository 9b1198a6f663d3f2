#!/usr/bin/env python3
"""Bare aioquic over UDP, for measuring aioquic's own ceiling on a path: an echo server and a one-shot client.

No pierce code is on the data path: two `aioquic.quic.connection.QuicConnection`s, each driven by the least
code that moves a stream (an ``add_reader`` callback reading bursts, ``sendto`` of what aioquic hands
over, one timer on `time.monotonic`), on uvloop when installed. pierce's `Identity` only makes the
server's certificate and, with ``--pacer pierce``, `pierce.p2p.quic_core.CoarsePacer` replaces aioquic's
pacer on both ends. Both ends use pierce's receive windows (`quic_core.STREAM_WINDOW`,
`CONNECTION_WINDOW`), congestion control and datagram size, so only the layer above aioquic differs.

``server --port P``: prints ``READY P``, then echoes every stream of every connection (one connection per
client address) back on the same stream, FIN for FIN.

``client HOST:PORT --send FILE``: handshakes, opens one stream, writes the whole file with FIN at once,
reads the echo to its FIN and prints one JSON line: ``{"result": "ok", "sent": n, "received": m,
"sha256": ..., "seconds": t, "lost": k, "cpu_s": c}``: ``t`` from the first byte written to the last
byte read (the handshake is not counted, as a direct path is set up before a connection uses it), ``k``
the packets it sent that its loss recovery declared lost, ``c`` the CPU time it took meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from pierce.p2p import quic_core
from pierce.p2p.identity import Identity

Address = tuple[str, int]
READ_BURST = 256
SOCKET_BUFFER = 4 * 1024 * 1024


def config(is_client: bool, identity: Identity | None = None) -> QuicConfiguration:
    c = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=["bare-echo"],
        congestion_control_algorithm=quic_core.CONGESTION_CONTROL,
        max_datagram_size=quic_core.DEFAULT_DATAGRAM_SIZE,
        max_data=quic_core.CONNECTION_WINDOW,
        max_stream_data=quic_core.STREAM_WINDOW,
        connection_id_length=quic_core.CONNECTION_ID_LENGTH,
    )
    if is_client:
        c.verify_mode = 0
    else:
        assert identity is not None
        c.certificate, c.private_key = identity.certificate, identity.private_key
    return c


def udp_socket(bind: Address) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.bind(bind)
    sock.setblocking(False)
    return sock


class Driver:
    """Connections on one socket (keyed by peer address): read bursts, send what is due, one timer each."""

    def __init__(self, sock: socket.socket, on_event: Callable[[QuicConnection, events.QuicEvent], None]):
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.on_event = on_event
        self.conns: dict[Address, QuicConnection] = {}
        self.timers: dict[Address, asyncio.TimerHandle] = {}
        self.new_conn: Callable[[bytes, Address], QuicConnection | None] = lambda data, addr: None
        self.loop.add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        now = time.monotonic()
        touched: set[Address] = set()
        for _ in range(READ_BURST):
            try:
                data, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            conn = self.conns.get(addr)
            if conn is None:
                conn = self.new_conn(data, addr)
                if conn is None:
                    continue
                self.conns[addr] = conn
            conn.receive_datagram(data, addr, now)
            touched.add(addr)
        for addr in touched:
            self.process(addr)

    def process(self, addr: Address) -> None:
        conn = self.conns[addr]
        while (event := conn.next_event()) is not None:
            self.on_event(conn, event)
            if isinstance(event, events.ConnectionTerminated):  # done with this peer
                self.conns.pop(addr, None)
                if (timer := self.timers.pop(addr, None)) is not None:
                    timer.cancel()
                return
        self.transmit(addr)

    def transmit(self, addr: Address) -> None:
        conn = self.conns.get(addr)
        if conn is None:
            return
        for data, to in conn.datagrams_to_send(time.monotonic()):
            with contextlib.suppress(OSError):  # a full buffer: a loss, as on the wire
                self.sock.sendto(data, to)
        if (old := self.timers.pop(addr, None)) is not None:
            old.cancel()
        when = conn.get_timer()
        if when is not None:
            self.timers[addr] = self.loop.call_later(max(0.0, when - time.monotonic()), self.fire, addr)

    def fire(self, addr: Address) -> None:
        self.timers.pop(addr, None)
        conn = self.conns.get(addr)
        if conn is None:
            return
        conn.handle_timer(time.monotonic())
        self.process(addr)


def use_pacer(conn: QuicConnection, pacer: str) -> QuicConnection:
    if pacer == "pierce":
        conn._loss._pacer = quic_core.CoarsePacer(
            max_datagram_size=quic_core.DEFAULT_DATAGRAM_SIZE, congestion=conn._loss._cc
        )
    return conn


async def serve(port: int, pacer: str) -> None:
    identity = Identity.generate()
    sock = udp_socket(("0.0.0.0", port))

    def on_event(conn: QuicConnection, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            conn.send_stream_data(event.stream_id, event.data, end_stream=event.end_stream)

    driver = Driver(sock, on_event)

    def new_conn(data: bytes, addr: Address) -> QuicConnection | None:
        if len(data) < 1200 or not data[0] & 0x80:  # only a long-header Initial starts a connection
            return None
        dcid = data[6 : 6 + data[5]]
        return use_pacer(
            QuicConnection(configuration=config(False, identity), original_destination_connection_id=dcid),
            pacer,
        )

    driver.new_conn = new_conn
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


async def client(target: Address, payload: bytes, pacer: str, timeout: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    sock = udp_socket(("0.0.0.0", 0))
    connected: asyncio.Future[None] = loop.create_future()
    done: asyncio.Future[float] = loop.create_future()
    digest = hashlib.sha256()
    received = 0

    def on_event(conn: QuicConnection, event: events.QuicEvent) -> None:
        nonlocal received
        if isinstance(event, events.HandshakeCompleted) and not connected.done():
            connected.set_result(None)
        elif isinstance(event, events.StreamDataReceived):
            digest.update(event.data)
            received += len(event.data)
            if event.end_stream and not done.done():
                done.set_result(time.monotonic())

    driver = Driver(sock, on_event)
    conn = use_pacer(QuicConnection(configuration=config(True)), pacer)
    lost = 0
    on_packets_lost = conn._loss._on_packets_lost

    def count_lost(**kw: Any) -> None:  # what this end sent that its recovery declared lost
        nonlocal lost
        kw["packets"] = list(kw["packets"])
        lost += len(kw["packets"])
        on_packets_lost(**kw)

    conn._loss._on_packets_lost = count_lost  # type: ignore[method-assign]
    conn.connect(target, time.monotonic())
    driver.conns[target] = conn
    driver.transmit(target)
    async with asyncio.timeout(timeout):
        await connected
        cpu = time.process_time()
        start = time.monotonic()
        conn.send_stream_data(conn.get_next_available_stream_id(), payload, end_stream=True)
        driver.transmit(target)
        end = await done
        cpu = time.process_time() - cpu
    conn.close()
    driver.transmit(target)
    return {
        "result": "ok",
        "sent": len(payload),
        "received": received,
        "sha256": digest.hexdigest(),
        "seconds": end - start,
        "lost": lost,
        "cpu_s": cpu,
    }


def run(coro: object) -> object:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    p_server = sub.add_parser("server")
    p_server.add_argument("--port", type=int, default=0)
    p_client = sub.add_parser("client")
    p_client.add_argument("target")
    p_client.add_argument("--send", type=Path, required=True)
    p_client.add_argument("--timeout", type=float, default=120.0)
    for p in (p_server, p_client):
        p.add_argument("--pacer", choices=["aioquic", "pierce"], default="aioquic")
    args = parser.parse_args()
    if args.role == "server":
        run(serve(args.port, args.pacer))
        return
    host, _, port = args.target.rpartition(":")
    try:
        doc = run(client((host, int(port)), args.send.read_bytes(), args.pacer, args.timeout))
    except TimeoutError:
        doc = {"result": "error", "error": f"no echo within {args.timeout:g} s"}
    print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
