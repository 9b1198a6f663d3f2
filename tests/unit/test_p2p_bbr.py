"""`pierce.p2p.bbr`: BBR behind aioquic's congestion control interface, driven through a simulated link
(a bottleneck of a fixed rate and queue, a fixed delay each way, random loss before the bottleneck), in
simulated time."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

import pytest
from aioquic.quic.congestion.base import QuicCongestionControl, create_congestion_control
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch

from pierce.p2p import bbr
from pierce.p2p.quic_core import PACING_QUANTUM, CoarsePacer

MDS = 1200
RATE = 1_250_000  # bytes per second: 10 Mbit/s
DELAY = 0.05  # each way


@dataclass
class Link:
    """A sender with ``cc`` and its pacer, a bottleneck of ``rate`` bytes/s behind a queue of ``queue``
    bytes (tail drop), ``delay`` seconds each way, ``loss`` of the packets dropped at random on the way;
    every packet is acknowledged on arrival, a lost one declared lost when its acknowledgement is due."""

    cc: QuicCongestionControl
    rate: float = RATE
    delay: float = DELAY
    loss: float = 0.0
    queue: int = 1 << 30
    #: Acknowledgements held back and delivered together every this many seconds (0: as they arrive): a
    #: peer whose event loop takes long turns.
    ack_every: float = 0.0
    seed: int = 1
    now: float = 1000.0  # a monotonic clock, far from zero
    delivered: int = 0
    lost: int = 0
    rtts: list[float] = field(default_factory=list)
    _pn: int = 0
    _link_free: float = 0.0
    _next_send: float = 0.0
    _events: list[tuple[float, int, bool, QuicSentPacket]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.pacer = CoarsePacer(max_datagram_size=MDS, congestion=self.cc)

    def run(self, seconds: float, *, app_rate: float | None = None) -> None:
        """Send for ``seconds`` as fast as the window and pacer allow (or at ``app_rate`` bytes/s, an
        application with less to send: then the controller hears `on_app_limited`)."""
        end = self.now + seconds
        budget = 0.0
        while self.now < end:
            can_send = (
                self.cc.bytes_in_flight + MDS <= self.cc.congestion_window and self.now >= self._next_send
            )
            if app_rate is not None and can_send and budget < MDS:
                if isinstance(self.cc, bbr.BbrCongestionControl):
                    self.cc.on_app_limited()
                can_send = False
            if can_send:
                self._send()
                budget -= MDS
                continue
            wake = self._events[0][0] if self._events else end
            if self.cc.bytes_in_flight + MDS <= self.cc.congestion_window:
                wake = min(wake, max(self._next_send, self.now + 1e-4))
            step = min(wake, end) - self.now
            self.now += max(step, 0.0)
            if app_rate is not None:
                budget = min(budget + app_rate * max(step, 0.0), 4 * MDS)
            while self._events and self._events[0][0] <= self.now:
                _, _, arrived, packet = heapq.heappop(self._events)
                if arrived:
                    self._acked(packet)
                else:
                    self._lost(packet)

    def _send(self) -> None:
        packet = QuicSentPacket(
            epoch=Epoch.ONE_RTT, in_flight=True, is_ack_eliciting=True, is_crypto_packet=False,
            packet_number=self._pn, packet_type=QuicPacketType.ONE_RTT, sent_time=self.now, sent_bytes=MDS,
        )  # fmt: skip
        self._pn += 1
        self.cc.on_packet_sent(packet=packet)
        rate = self.pacer.packet_time
        self._next_send = self.now + (rate if rate is not None else 0.0)
        start = max(self.now, self._link_free)
        queued = (start - self.now) * self.rate
        if self._rng.random() < self.loss or queued > self.queue:
            heapq.heappush(
                self._events, (self.now + 2 * self.delay + 0.01, packet.packet_number, False, packet)
            )
            return
        self._link_free = start + MDS / self.rate
        acked_at = self._link_free + 2 * self.delay
        if self.ack_every:
            acked_at = math.ceil(acked_at / self.ack_every) * self.ack_every
        heapq.heappush(self._events, (acked_at, packet.packet_number, True, packet))

    def _acked(self, packet: QuicSentPacket) -> None:
        self.delivered += packet.sent_bytes
        self.cc.on_packet_acked(now=self.now, packet=packet)
        rtt = self.now - (packet.sent_time or 0.0)
        self.rtts.append(rtt)
        self.cc.on_rtt_measurement(now=self.now, rtt=rtt)
        self.pacer.update_rate(congestion_window=self.cc.congestion_window, smoothed_rtt=rtt)

    def _lost(self, packet: QuicSentPacket) -> None:
        self.lost += 1
        self.cc.on_packets_lost(now=self.now, packets=[packet])

    def goodput(self, seconds: float) -> float:
        """Bytes per second delivered over the next ``seconds`` of sending."""
        before = self.delivered
        self.run(seconds)
        return (self.delivered - before) / seconds


def new_bbr() -> bbr.BbrCongestionControl:
    cc = create_congestion_control(bbr.NAME, max_datagram_size=MDS)
    assert isinstance(cc, bbr.BbrCongestionControl)
    return cc


def test_without_loss_it_fills_the_bottleneck_and_keeps_the_queue_short() -> None:
    link = Link(new_bbr())
    link.run(3.0)
    assert link.cc.mode == bbr.PROBE_BW
    assert link.goodput(5.0) > 0.9 * RATE
    assert link.cc.bw == pytest.approx(RATE, rel=0.1)
    assert link.cc.min_rtt == pytest.approx(2 * DELAY, rel=0.05)
    assert max(link.rtts[-1000:]) < 2.5 * 2 * DELAY  # at most about one BDP queued


def test_random_loss_leaves_the_window_alone() -> None:
    for loss in (0.01, 0.05, 0.2):
        link = Link(new_bbr(), loss=loss)
        link.run(3.0)
        assert link.goodput(5.0) > 0.85 * RATE * (1 - loss), loss
        assert link.lost > 0


def test_cubic_on_the_same_link_is_held_down_by_random_loss() -> None:
    """What BBR replaces: aioquic's CUBIC cuts its window at each loss, whatever caused it."""
    link = Link(create_congestion_control("cubic", max_datagram_size=MDS), loss=0.01)
    link.run(3.0)
    assert link.goodput(5.0) < 0.5 * RATE


def test_a_longer_path_is_learnt_within_a_few_round_trips() -> None:
    link = Link(new_bbr(), delay=0.001)
    link.run(2.0)
    assert link.cc.min_rtt < 0.01
    link.delay = DELAY
    link.run(1.5)
    assert link.cc.min_rtt == pytest.approx(2 * DELAY, rel=0.1)
    assert link.goodput(3.0) > 0.85 * RATE


def test_a_full_queue_makes_loss_and_bbr_still_fills_the_link_without_growing_it() -> None:
    link = Link(new_bbr(), queue=20 * MDS)
    link.run(3.0)
    assert link.goodput(5.0) > 0.85 * RATE
    assert link.cc.congestion_window < 4 * RATE * 2 * DELAY


def test_application_limited_rates_do_not_lower_the_bandwidth() -> None:
    link = Link(new_bbr())
    link.run(3.0)
    bw = link.cc.bw
    link.run(5.0, app_rate=RATE / 20)  # fifty round trips of a trickle
    assert link.cc.bw == bw
    assert link.goodput(1.0) > 0.85 * RATE  # and a new burst starts at the old pace, not from slow start


def test_persistent_congestion_drops_the_window_to_its_minimum() -> None:
    link = Link(new_bbr())
    link.run(3.0)
    link.cc.on_persistent_congestion()
    assert link.cc.congestion_window == bbr.MIN_CWND_PACKETS * MDS


def test_the_pacer_paces_at_the_controllers_rate() -> None:
    cc = new_bbr()
    pacer = CoarsePacer(max_datagram_size=MDS, congestion=cc)
    cc.on_rtt_measurement(now=1.0, rtt=0.1)
    pacer.update_rate(congestion_window=cc.congestion_window, smoothed_rtt=0.1)
    rate = cc.pacing_rate()
    assert rate is not None and pacer.packet_time == pytest.approx(MDS / rate, rel=1e-9)
    assert pacer.bucket_max >= PACING_QUANTUM
    cubic = CoarsePacer(
        max_datagram_size=MDS, congestion=create_congestion_control("cubic", max_datagram_size=MDS)
    )
    cubic.update_rate(congestion_window=100 * MDS, smoothed_rtt=0.1)
    assert cubic.packet_time == pytest.approx(0.1 / 125, rel=1e-9)  # cwnd * 1.25 over the RTT


def test_the_first_rtt_sample_does_not_start_probe_rtt() -> None:
    """PROBE_RTT refreshes a minimum RTT that has aged: the first one has not (a clock far from zero)."""
    link = Link(new_bbr())
    link.run(0.15)
    assert link.cc.min_rtt < 1.0
    assert link.cc.mode == bbr.STARTUP
    assert link.cc.congestion_window > 10 * MDS


def test_probe_rtt_measures_the_minimum_again_at_half_the_rate_not_stalled() -> None:
    link = Link(new_bbr())
    link.run(2.0)
    link.delay = DELAY + 0.002  # the old minimum is not seen again: it expires after MIN_RTT_WINDOW
    for _ in range(int(bbr.MIN_RTT_WINDOW / 0.05) + 20):
        link.run(0.05)
        if link.cc.mode == bbr.PROBE_RTT:
            break
    assert link.cc.mode == bbr.PROBE_RTT
    link.run(0.15)  # what was in flight drains
    assert link.cc.mode == bbr.PROBE_RTT
    assert link.goodput(0.1) > 0.3 * RATE  # about half (4 packets, as BBR v1 held: 4 %)
    link.run(0.5)
    assert link.cc.mode == bbr.PROBE_BW
    assert link.cc.min_rtt == pytest.approx(2 * link.delay, rel=0.05)
    assert link.goodput(1.0) > 0.9 * RATE


def test_bursts_of_acknowledgements_do_not_hold_the_sender_to_a_window_per_burst() -> None:
    """A peer that acknowledges in batches every 20 ms on a 1 ms path (a busy event loop): the window
    gets the excess the batches deliver (`bbr.AGGREGATION_WINDOW_ROUNDS`), or the sender would wait each
    batch out with two bandwidth-delay products of the 1 ms path in flight, about half the link."""
    link = Link(new_bbr(), delay=0.0005, ack_every=0.02)
    link.run(3.0)
    assert link.cc.aggregation_allowance() > 0
    assert link.goodput(3.0) > 0.85 * RATE


def test_a_long_application_limited_stretch_does_not_age_the_bandwidth_out() -> None:
    """Rounds in which the sender had too little to send measure nothing: a hundred of them go by, and the
    first sample after them (a new burst's slow first round trip) does not stand for the path alone."""
    cc = new_bbr()
    for i in range(5):
        cc.round_count = i + 1
        cc._update_bw(RATE)
    cc.round_count = 200
    cc._update_bw(RATE / 100)
    assert cc.bw == RATE
    for i in range(bbr.BW_WINDOW_ROUNDS):  # ten rounds that measured the lower rate: it is the path's
        cc.round_count = 201 + i
        cc._update_bw(RATE / 100)
    assert cc.bw == RATE / 100


def test_pacing_never_falls_below_the_smallest_window_per_round_trip() -> None:
    """A bandwidth estimate that fell to a few packets a second (late samples from a starved CPU) would
    pace one packet a second or so, and climb back 1.25x per eight such round trips: minutes."""
    cc = new_bbr()
    cc.on_rtt_measurement(now=1.0, rtt=0.05)
    cc.bw = 2000.0
    rate = cc.pacing_rate()
    assert rate is not None and rate >= bbr.MIN_CWND_PACKETS * MDS / 0.05
