#!/usr/bin/env python3
"""Benchmark `pierce.p2p.quic.QuicPath` against bare aioquic, on loopback, in one run, interleaved.

(a) bare: two aioquic `QuicConnection`s on two UDP sockets, the least code that moves one stream
    (``add_reader`` bursts, ``sendto``, one timer, the whole payload handed over at once), with
    aioquic's own pacer;
(a') bare_paced: the same with QuicPath's pacer (`pierce.p2p.quic_core.CoarsePacer`), which isolates
    the cost of QuicPath's own layer;
(b) path: `QuicPath.connect`/`accept` on two UDP sockets, one stream, written in 256 KiB pieces with
    backpressure, read in 256 KiB pieces by the owner's ``on_stream``.

Both ends of each run share one process and one event loop (uvloop when installed, ``--loop asyncio``
for the standard one), so a figure is what one CPU does for sender and receiver together; all use the
same congestion control, datagram size and receive windows. Each run moves ``--mib`` MiB (default 64);
the order rotates every round; medians and the paired medians of (b)/(a) and (b)/(a') are printed.
``--profile`` runs each once under cProfile and prints where the time goes.

Usage: ``python3 bench/bench_quic.py [--mib 64] [--rounds 3] [--cc bbr|cubic|reno] [--datagram-size 1200]
[--loop uvloop|asyncio] [--profile] [--json]``.

Where the time goes (``--profile``: cProfile, 32 MiB, 1200-byte datagrams, sender and receiver in one
process; cProfile inflates pure-Python parts): about 38 % parsing received packets and frames
(``receive_datagram`` and the frame handlers, pure Python), 27 % building packets and frames
(``_write_application``, the packet builder), 14 % packet protection (AES-GCM and header protection in
``cryptography``: fast C, but two calls a packet each way), 7 % ACKs, loss recovery and congestion
control, 3 % ``sendto``/``recvfrom``; QuicPath's own layer is about 3-5 % on top, and in its runs the
event loop's share grows from 7 % to about 20 % (tasks and futures of the stream reads and writes).
Every cost is per packet, hence the gain from larger datagrams.

Figures (2-CPU VM, uvloop, 64 MiB, 3 rounds): bare aioquic 121 Mbit/s, bare aioquic with QuicPath's
pacer 262, QuicPath 244: 2.0x bare aioquic, 0.94x bare with the same pacer. aioquic's own pacer stalls
on uvloop because ``loop.time()`` there moves in whole milliseconds (see `pierce.p2p.quic._clock`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import socket
import statistics
import time
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from pierce.p2p import quic_core
from pierce.p2p.identity import Identity
from pierce.p2p.quic import QuicPath, QuicStreamEnd
from pierce.p2p.settings import PathSettings

CHUNK = 256 * 1024
KEY = bytes(32)


def udp_pair() -> tuple[socket.socket, socket.socket]:
    socks = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        socks.append(sock)
    return socks[0], socks[1]


class BareEnd:
    """One aioquic connection on one socket: read bursts, send what is due, arm the timer."""

    def __init__(self, conn: QuicConnection, sock: socket.socket, on_event: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.conn, self.sock, self.on_event = conn, sock, on_event
        self.timer: asyncio.TimerHandle | None = None
        self.loop.add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        now = time.monotonic()
        for _ in range(256):
            try:
                data, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            self.conn.receive_datagram(data, addr, now)
        self.process()

    def process(self) -> None:
        while (event := self.conn.next_event()) is not None:
            self.on_event(event)
        self.transmit()

    def transmit(self) -> None:
        for data, addr in self.conn.datagrams_to_send(time.monotonic()):
            with contextlib.suppress(BlockingIOError):
                self.sock.sendto(data, addr)
        if self.timer is not None:
            self.timer.cancel()
        when = self.conn.get_timer()
        # loop.time() is whole milliseconds on uvloop: too coarse for aioquic's pacer (see pierce.p2p.quic)
        self.timer = (
            self.loop.call_later(max(0.0, when - time.monotonic()), self.fire) if when is not None else None
        )

    def fire(self) -> None:
        self.timer = None
        self.conn.handle_timer(time.monotonic())
        self.process()

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        if self.timer is not None:
            self.timer.cancel()


async def run_bare_paced(payload: bytes, identity: Identity, cc: str, size: int) -> float:
    return await run_bare(payload, identity, cc, size, paced=True)


async def run_bare(payload: bytes, identity: Identity, cc: str, size: int, *, paced: bool = False) -> float:
    def config(is_client: bool) -> QuicConfiguration:
        c = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=["bench"],
            congestion_control_algorithm=cc,
            max_datagram_size=size,
            max_data=quic_core.CONNECTION_WINDOW,
            max_stream_data=quic_core.STREAM_WINDOW,
        )
        if is_client:
            c.verify_mode = 0
        else:
            c.certificate, c.private_key = identity.certificate, identity.private_key
        return c

    loop = asyncio.get_running_loop()
    a, b = udp_pair()
    done = loop.create_future()
    connected = loop.create_future()
    received = 0
    server_end: BareEnd | None = None

    def on_server(event: events.QuicEvent) -> None:
        nonlocal received
        if isinstance(event, events.StreamDataReceived):
            received += len(event.data)
            if event.end_stream and not done.done():
                done.set_result(time.monotonic())

    def on_client(event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted) and not connected.done():
            connected.set_result(None)

    def server_readable() -> None:  # the server connection is made on the first Initial
        nonlocal server_end
        data, addr = b.recvfrom(2048)
        header_cid = data[6 : 6 + data[5]]
        conn = QuicConnection(configuration=config(False), original_destination_connection_id=header_cid)
        conn.receive_datagram(data, addr, time.monotonic())
        loop.remove_reader(b.fileno())
        server_end = BareEnd(conn, b, on_server)
        server_end.process()

    loop.add_reader(b.fileno(), server_readable)
    client_conn = QuicConnection(configuration=config(True))
    if paced:  # QuicPath's pacer (pierce.p2p.quic_core.CoarsePacer) on the sending side
        client_conn._loss._pacer = quic_core.CoarsePacer(
            max_datagram_size=size, congestion=client_conn._loss._cc
        )
    client_conn.connect(b.getsockname(), time.monotonic())
    client = BareEnd(client_conn, a, on_client)
    client.transmit()
    await asyncio.wait_for(connected, 10)
    start = time.monotonic()
    client_conn.send_stream_data(client_conn.get_next_available_stream_id(), payload, end_stream=True)
    client.transmit()
    end = await asyncio.wait_for(done, 300)
    assert received == len(payload)
    client.close()
    if server_end is not None:
        server_end.close()
    a.close()
    b.close()
    return len(payload) * 8 / (end - start) / 1e6


async def run_path(payload: bytes, identity: Identity, cc: str, size: int) -> float:
    loop = asyncio.get_running_loop()
    a, b = udp_pair()
    done = loop.create_future()
    settings = PathSettings(congestion_control=cc, max_datagram_size=size)

    async def on_stream(end: QuicStreamEnd) -> None:
        got = 0
        while data := await end.read(CHUNK):
            got += len(data)
        done.set_result((time.monotonic(), got))

    owner_task = asyncio.ensure_future(
        QuicPath.accept(
            b, a.getsockname(), identity=identity, key=KEY, on_stream=on_stream, settings=settings
        )
    )
    visitor = await QuicPath.connect(
        a, b.getsockname(), fingerprint=identity.fingerprint, key=KEY, settings=settings
    )
    owner = await owner_task
    end = await visitor.open_stream()
    start = time.monotonic()
    view = memoryview(payload)
    for i in range(0, len(payload), CHUNK):
        await end.write(view[i : i + CHUNK])
    end.write_eof()
    finish, got = await asyncio.wait_for(done, 300)
    assert got == len(payload)
    visitor.close()
    owner.close()
    await asyncio.gather(visitor.wait_closed(), owner.wait_closed())
    a.close()
    b.close()
    return len(payload) * 8 / (finish - start) / 1e6


#: How --profile sums time by kind of work: the first rule whose fragment is in ``file:function`` wins.
CATEGORIES = [
    ("packet protection (AEAD, header protection)", ("_crypto.py", "crypto.py", "AESGCM", "CipherContext")),
    ("syscalls (sendto, recvfrom)", ("'sendto'", "'recvfrom'")),
    ("pierce's layer (pierce.p2p, the bench's own driver)", ("pierce/p2p", "bench_quic.py")),
    ("ACKs, loss recovery, congestion control", ("recovery.py", "congestion", "_write_ack", "ack_frame")),
    ("building packets and frames", ("packet_builder.py", "_write_", "get_frame", "datagrams_to_send")),
    (
        "parsing received packets and frames",
        ("connection.py", "packet.py", "stream.py", "rangeset.py", "buffer"),
    ),
    ("event loop and the rest", ("",)),
]


def categories(stats: pstats.Stats) -> list[tuple[str, float]]:
    totals = dict.fromkeys((kind for kind, _ in CATEGORIES), 0.0)
    for (filename, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{filename}:{function}"
        kind = next(kind for kind, fragments in CATEGORIES if any(f in where for f in fragments))
        totals[kind] += row[2]  # tottime
    whole = sum(totals.values()) or 1.0
    return [(kind, t / whole) for kind, t in totals.items()]


LOOP = "uvloop"


def run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro) if LOOP == "uvloop" else asyncio.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cc", default=quic_core.CONGESTION_CONTROL, choices=["bbr", "cubic", "reno"])
    parser.add_argument("--datagram-size", type=int, default=quic_core.DEFAULT_DATAGRAM_SIZE)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    args = parser.parse_args()
    global LOOP
    LOOP = args.loop
    payload = os.urandom(args.mib * 1024 * 1024)
    identity = Identity.generate()

    variants: dict[str, Any] = {"bare": run_bare, "bare_paced": run_bare_paced, "path": run_path}
    if args.profile:
        for name, fn in variants.items():
            prof = cProfile.Profile()
            prof.enable()
            mbit = run(fn(payload, identity, args.cc, args.datagram_size))
            prof.disable()
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out)
            stats.sort_stats("tottime").print_stats(30)
            print(f"== {name}: {mbit:.0f} Mbit/s under cProfile ==")
            print(out.getvalue())
            print("   share of the time by kind of work:")
            for kind, share in categories(stats):
                print(f"   {share:5.1%}  {kind}")
        return

    runs: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order every round
            runs[name].append(run(variants[name](payload, identity, args.cc, args.datagram_size)))
            time.sleep(0.2)
    result: dict[str, Any] = {
        "mib": args.mib,
        "cc": args.cc,
        "datagram_size": args.datagram_size,
        "loop": LOOP,
    }
    for name, values in runs.items():
        result[f"{name}_mbit_s"] = statistics.median(values)
        result[f"{name}_runs"] = values
    for base in ("bare", "bare_paced"):
        ratios = [p / b for p, b in zip(runs["path"], runs[base], strict=True)]
        result[f"ratio_path_to_{base}"] = statistics.median(ratios)
    if args.json:
        print(json.dumps(result))
        return
    setup = f"{args.mib} MiB, {args.cc}, {args.datagram_size}-byte datagrams, {LOOP}"
    print(f"{setup}, {args.rounds} rounds (medians)")
    labels = {"bare": "bare aioquic", "bare_paced": "bare + QuicPath's pacer", "path": "QuicPath"}
    for name, label in labels.items():
        values = ", ".join(f"{x:.0f}" for x in runs[name])
        print(f"  {label:24}: {result[f'{name}_mbit_s']:6.0f} Mbit/s  (runs {values})")
    print(f"  QuicPath / bare aioquic            : {result['ratio_path_to_bare']:.2f}")
    print(f"  QuicPath / bare with the same pacer: {result['ratio_path_to_bare_paced']:.2f}")


if __name__ == "__main__":
    main()
