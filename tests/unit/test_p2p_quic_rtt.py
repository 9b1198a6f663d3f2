"""`pierce.p2p.quic_core.PathConnection` on a path whose delay grows: BBR's minimum RTT and aioquic's
follow it, so the probe timeout is sized for the path as it is. Two connections wired in memory, a
fixed delay each way, simulated time."""

from __future__ import annotations

import heapq
import itertools

from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import pull_quic_header

from pierce.p2p import bbr, quic_core
from pierce.p2p.identity import Identity
from pierce.p2p.quic_core import PathConnection

CLIENT, SERVER = ("192.0.2.1", 1000), ("192.0.2.2", 2000)


class Wire:
    """A visitor (client) and an owner (server) `PathConnection` with ``delay`` seconds each way; the
    owner reads everything it receives at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.now = 1000.0
        self.client = PathConnection(configuration=quic_core.configuration(is_client=True))
        self.server: PathConnection | None = None
        self._identity = Identity.generate()
        self._queue: list[tuple[float, int, tuple[str, int], bytes]] = []
        self._seq = itertools.count()
        self.received = 0
        self.client.connect(SERVER, self.now)

    def _conns(self) -> list[tuple[PathConnection, tuple[str, int]]]:
        conns = [(self.client, CLIENT)]
        if self.server is not None:
            conns.append((self.server, SERVER))
        return conns

    def run(self, until: float) -> None:
        while True:
            for conn, _ in self._conns():
                for data, to in conn.datagrams_to_send(self.now):
                    heapq.heappush(self._queue, (self.now + self.delay, next(self._seq), to, data))
            timers = [(t, conn) for conn, _ in self._conns() if (t := conn.get_timer()) is not None]
            wake = min([t for t, _ in timers] + ([self._queue[0][0]] if self._queue else []), default=until)
            if wake > until:
                self.now = until
                return
            self.now = max(self.now, wake)
            if self._queue and self._queue[0][0] <= self.now:
                _, _, to, data = heapq.heappop(self._queue)
                self._deliver(to, data)
            for t, conn in timers:
                if t <= self.now:
                    conn.handle_timer(self.now)

    def _deliver(self, to: tuple[str, int], data: bytes) -> None:
        if to == CLIENT:
            self.client.receive_datagram(data, SERVER, self.now)
            while self.client.next_event() is not None:
                pass
            return
        if self.server is None:
            header = pull_quic_header(Buffer(data=data), host_cid_length=quic_core.CONNECTION_ID_LENGTH)
            config = quic_core.configuration(is_client=False, identity=self._identity)
            self.server = PathConnection(
                configuration=config, original_destination_connection_id=header.destination_cid
            )
        self.server.receive_datagram(data, CLIENT, self.now)
        while (event := self.server.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self.received += len(event.data)
                self.server.consume(event.stream_id, len(event.data))


def test_a_path_that_grows_longer_gets_a_probe_timeout_for_its_new_length() -> None:
    wire = Wire(delay=0.001)
    wire.run(wire.now + 0.1)
    stream = wire.client.get_next_available_stream_id()
    wire.client.send_stream_data(stream, bytes(200_000))
    wire.run(wire.now + 0.5)
    assert wire.received == 200_000
    assert wire.client._loss._rtt_min < 0.005
    wire.delay = 0.05  # 100 ms round trip from now on
    wire.client.send_stream_data(stream, bytes(3_000_000))
    wire.run(wire.now + 3.0)
    assert wire.received == 3_200_000
    cc = wire.client._loss._cc
    assert isinstance(cc, bbr.BbrCongestionControl)
    assert 0.099 <= cc.min_rtt < 0.11
    assert wire.client._loss._rtt_min == cc.min_rtt
    assert wire.client._loss.get_probe_timeout() < 0.25  # 0.5 s with the 2 ms minimum kept
