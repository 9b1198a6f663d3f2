"""A BBR congestion controller for aioquic (registered as ``"bbr"``): the default of a direct QUIC path.

Why: aioquic has NewReno and CUBIC, both of which take every lost packet for congestion and cut their
window (CUBIC to 0.7 of it, at most once a round trip). On a path that drops packets at random, not from
a full queue, that holds the window to a few dozen packets: at 1 % loss and 100 ms round trip, about
1.2 Mbit/s each way whatever the link (the Mathis limit; pierce's QUIC measured there what the kernel's
TCP did with Reno, and a twentieth of the kernel's TCP with BBR, bench/bench_faults.py). CUBIC also falls
back to slow start from ten packets after two idle seconds, so each new burst starts from nothing.

What: BBR v1 as published (Cardwell et al., "BBR: Congestion-Based Congestion Control", ACM Queue 2016,
and draft-cardwell-iccrg-bbr-congestion-control-00), reduced to what a QUIC sender in Python needs:

- the bottleneck bandwidth is the largest delivery rate (draft-cheng-iccrg-delivery-rate-estimation)
  of the last `BW_WINDOW_ROUNDS` round trips; a sample taken while the sender had nothing to send
  (application-limited, `BbrCongestionControl.on_app_limited`) only counts when it is larger;
- the propagation delay is the smallest RTT of the last `MIN_RTT_WINDOW` seconds; when it has not been
  seen again for that long, PROBE_RTT holds half a bandwidth-delay product in flight for
  `PROBE_RTT_TIME` to measure it afresh (BBR v2's `PROBE_RTT_CWND_GAIN`; v1's 4 packets stalled a
  transfer meanwhile); a path that got longer (`STALE_MIN_RTT_ROUNDS` round trips far above it) is
  taken at once, not after those seconds (BBR v1 has no such rule);
- STARTUP doubles the sending rate each round trip until the bandwidth has not grown by a quarter in
  three rounds, DRAIN empties the queue that made, then PROBE_BW cycles its pacing gain through
  1.25, 0.75 and six times 1, one minimum RTT each;
- the window is ``cwnd_gain`` bandwidth-delay products, plus what bursts of acknowledgements deliver
  beyond the bandwidth (`AGGREGATION_WINDOW_ROUNDS`; Linux's ``extra_acked``): between two busy event
  loops acknowledgements come a loop turn at a time, and without it a thousand streams on one path on a
  busy machine ran window-bound at 7 MiB/s, with it 11.4;
- the pacing rate is ``pacing_gain`` times the bandwidth (`pierce.p2p.quic_core.CoarsePacer` asks
  `pacing_rate`), never less than the smallest window per round trip: a CPU starved for a while can
  feed the bandwidth filter ten rounds of low samples, and paced at those, BBR's 1.25x probing would
  take minutes to climb back. (Without this floor, the aggregation allowance and the filter aged by
  measuring rounds only, a 1,000-connection P2P load round beside the test suite stalled 991 of them
  for its last 150 s; with them it verified all 1,000, bench/bench_load.py.)

A lost packet leaves the window alone (BBR v1's packet conservation during recovery is left out: with
random loss every round trip would be a recovery); only persistent congestion (RFC 9002 section 7.6)
drops it to the minimum, from where it grows back by what is acknowledged. An idle path keeps its model
and resumes at the bandwidth it had, paced.

The interface is aioquic's `QuicCongestionControl` (per packet: sent, acknowledged, lost, expired; per
ACK with a new RTT sample: `on_rtt_measurement`), a public extension point
(`aioquic.quic.congestion.base.register_congestion_control`); nothing of aioquic is patched.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.packet_builder import QuicSentPacket

NAME = "bbr"
#: Pacing and window gain of STARTUP (2/ln 2: the rate doubles each round trip).
HIGH_GAIN = 2 / math.log(2)
#: Window gain of PROBE_BW (room for delayed and aggregated acknowledgements).
CWND_GAIN = 2.0
#: PROBE_BW's pacing gains, one minimum RTT each.
PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
#: Round trips (that measured the path: not application-limited) over which the largest delivery rate is
#: the bottleneck bandwidth.
BW_WINDOW_ROUNDS = 10
#: Seconds a minimum RTT stays valid before PROBE_RTT measures it again.
MIN_RTT_WINDOW = 10.0
#: Seconds PROBE_RTT holds the window down, and to what: half the bandwidth-delay product drains the
#: queue BBR itself keeps (at most one more BDP) and goes on at half the rate.
PROBE_RTT_TIME = 0.2
PROBE_RTT_CWND_GAIN = 0.5
#: Acknowledgements that come in bursts (the peer's event loop takes its turns, a busy CPU holds a
#: batch back) deliver more at once than the bandwidth explains; the window gets that excess on top of
#: its bandwidth-delay products, or the sender waits between bursts with the window full (Linux's BBR
#: does the same, ``extra_acked``). The excess is the largest of the last two windows of this many
#: rounds, at most one window and `AGGREGATION_MAX_TIME` seconds of the bandwidth.
AGGREGATION_WINDOW_ROUNDS = 5
AGGREGATION_MAX_TIME = 0.1
#: Smallest window, in packets.
MIN_CWND_PACKETS = 4
#: The bandwidth has stopped growing once three rounds grew it less than this factor: STARTUP ends.
FULL_BW_GROWTH = 1.25
FULL_BW_ROUNDS = 3
#: The minimum RTT is stale when every RTT of this many round trips in a row was more than this factor
#: above it, plus this margin (seconds): the path got longer (a route change; in the lab, a delay put on a
#: path already set up), and BBR's own queue never takes more than about one minimum RTT more. It is
#: then taken from the last round rather than held for up to `MIN_RTT_WINDOW` seconds, during which the
#: window would be sized for the short path.
STALE_MIN_RTT_ROUNDS = 3
STALE_MIN_RTT_FACTOR = 4.0
STALE_MIN_RTT_MARGIN = 0.02
#: Shortest round trip the window is sized for: on a path of a millisecond or less, the event loop's own
#: turns (a timer tick, a burst of reads) are longer than the network's, and a window of a literal
#: bandwidth-delay product would leave the sender waiting on them.
MIN_BDP_RTT = 0.005

STARTUP, DRAIN, PROBE_BW, PROBE_RTT = "startup", "drain", "probe_bw", "probe_rtt"


class BbrCongestionControl(QuicCongestionControl):
    """BBR v1 behind aioquic's congestion control interface (module docstring)."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._mds = max_datagram_size
        self.ssthresh = None
        self.mode = STARTUP
        self.pacing_gain = HIGH_GAIN
        self.cwnd_gain = HIGH_GAIN
        # Delivery rate estimation: bytes acknowledged so far, when the last was, and the send time of
        # the last packet acknowledged; each packet in flight keeps what these were when it was sent.
        self.delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited_until = 0  # `delivered` at which samples stop being application-limited
        self._sent: dict[int, tuple[int, float, float, bool]] = {}
        # The model.
        self.bw = 0.0  # bytes per second
        self._bw_rounds: deque[list[float]] = deque()  # [round, largest rate of that round]
        self.min_rtt = math.inf
        self._min_rtt_stamp = 0.0
        self._round_min_rtt = math.inf
        self._stale_rounds = 0
        self.round_count = 0
        self._next_round_delivered = 0
        self._full_bw = 0.0
        self._full_bw_count = 0
        self.filled_pipe = False
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self._probe_rtt_done = 0.0
        self._probe_rtt_round_done = False
        self._prior_cwnd = 0
        self._idle_restart = False
        # Acknowledgement aggregation: bytes acknowledged since the epoch began, when it began, and the
        # largest excess over what the bandwidth explains, in two alternating windows of rounds.
        self._epoch_acked = 0
        self._epoch_start = 0.0
        self._extra_acked = [0, 0]
        self._extra_index = 0
        self._extra_rounds = 0

    # -- what the pacer and the I/O layer ask ------------------------------------------------------

    def pacing_rate(self) -> float | None:
        """Bytes per second to pace at; None before any bandwidth or RTT sample (then the pacer falls back
        to the window over the smoothed RTT)."""
        if self.bw > 0:
            return max(self.pacing_gain * self.bw, self._min_pacing_rate())
        if self.min_rtt < math.inf:
            return self.pacing_gain * self.congestion_window / max(self.min_rtt, 0.001)
        return None

    def _min_pacing_rate(self) -> float:
        """The smallest window per round trip: however low the bandwidth estimate fell (a burst of late
        samples from a starved CPU), the sender never paces slower than a window-based one with its
        smallest window would go, so the estimate climbs back in round trips, not in seconds per packet."""
        rtt = max(self.min_rtt, MIN_BDP_RTT) if self.min_rtt < math.inf else 1.0
        return MIN_CWND_PACKETS * self._mds / rtt

    def on_app_limited(self) -> None:
        """The sender ran out of data with room left in the window: the delivery rates of what it sends
        until everything in flight now is acknowledged say nothing about the path."""
        self._app_limited_until = max(self.delivered + self.bytes_in_flight, 1)

    # -- aioquic's interface -----------------------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        sent_time = packet.sent_time or 0.0
        if self.bytes_in_flight == 0:
            # Nothing in flight: a rate measured from now on starts now, not at the last acknowledgement.
            self._first_sent_time = self._delivered_time = sent_time
            if self._app_limited_until and self.mode == PROBE_BW:
                self._idle_restart = True
                self.pacing_gain = 1.0
        self.bytes_in_flight += packet.sent_bytes
        self._sent[packet.packet_number] = (
            self.delivered,
            self._delivered_time,
            self._first_sent_time,
            self._app_limited_until > self.delivered,
        )

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self._idle_restart = False
        self.bytes_in_flight -= packet.sent_bytes
        self.delivered += packet.sent_bytes
        self._delivered_time = now
        state = self._sent.pop(packet.packet_number, None)
        if self._app_limited_until and self.delivered > self._app_limited_until:
            self._app_limited_until = 0
        if state is None:
            return
        prior_delivered, prior_time, first_sent_time, app_limited = state
        sent_time = packet.sent_time or now
        self._first_sent_time = sent_time
        # A new round trip starts when a packet sent after the previous round's start is acknowledged.
        round_start = prior_delivered >= self._next_round_delivered
        if round_start:
            self._next_round_delivered = self.delivered
            self.round_count += 1
            self._probe_rtt_round_done = True
            self._check_stale_min_rtt(now)
        # The delivery rate over the longer of the send and the acknowledgement intervals (a burst of
        # acknowledgements must not pass for bandwidth), and never over less than the minimum RTT.
        interval = max(sent_time - first_sent_time, now - prior_time)
        if interval >= self.min_rtt and interval > 0:
            rate = (self.delivered - prior_delivered) / interval
            if not app_limited or rate >= self.bw:
                self._update_bw(rate)
        self._update_aggregation(now, packet.sent_bytes, round_start)
        if round_start and not app_limited:
            self._check_full_pipe()
        self._update_mode(now)
        self._set_cwnd(packet.sent_bytes)

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop(packet.packet_number, None)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop(packet.packet_number, None)

    def on_persistent_congestion(self) -> None:
        self.congestion_window = MIN_CWND_PACKETS * self._mds

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        rtt = max(rtt, 0.001)
        if rtt < self._round_min_rtt:
            self._round_min_rtt = rtt
        expired = self.min_rtt < math.inf and now > self._min_rtt_stamp + MIN_RTT_WINDOW
        if rtt <= self.min_rtt or expired:
            self.min_rtt = rtt
            self._min_rtt_stamp = now
        if expired and not self._idle_restart and self.mode != PROBE_RTT:
            self.mode = PROBE_RTT
            self.pacing_gain = self.cwnd_gain = 1.0
            self._prior_cwnd = max(self._prior_cwnd, self.congestion_window)
            self._probe_rtt_done = 0.0

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data.update({"bbr_mode": self.mode, "bbr_bw": int(self.bw), "bbr_min_rtt": self.min_rtt})
        return data

    # -- the model -------------------------------------------------------------------------------

    def _update_bw(self, rate: float) -> None:
        rounds = self._bw_rounds
        if rounds and rounds[-1][0] == self.round_count:
            if rate > rounds[-1][1]:
                rounds[-1][1] = rate
        else:
            rounds.append([self.round_count, rate])
        # Aged by the rounds that measured the path, not by every round: rounds of an application-limited
        # sender (its samples set aside) go by quickly on a short path, and aging by them let the first
        # sample after such a stretch, say the slow start of a new burst, stand for the path alone.
        dropped = False
        while len(rounds) > BW_WINDOW_ROUNDS:
            rounds.popleft()
            dropped = True
        if dropped:
            self.bw = max(r[1] for r in rounds)
        elif rate > self.bw:
            self.bw = rate

    def _update_aggregation(self, now: float, acked: int, round_start: bool) -> None:
        if round_start:
            self._extra_rounds += 1
            if self._extra_rounds >= AGGREGATION_WINDOW_ROUNDS:
                self._extra_rounds = 0
                self._extra_index ^= 1
                self._extra_acked[self._extra_index] = 0
        expected = self.bw * (now - self._epoch_start)
        if self._epoch_acked <= expected:  # acknowledgements at or below the rate: a new epoch
            self._epoch_acked = 0
            self._epoch_start = now
            expected = 0.0
        self._epoch_acked += acked
        extra = min(int(self._epoch_acked - expected), self.congestion_window)
        if extra > self._extra_acked[self._extra_index]:
            self._extra_acked[self._extra_index] = extra

    def aggregation_allowance(self) -> int:
        """Bytes the window holds beyond its bandwidth-delay products for bursty acknowledgements."""
        if not self.filled_pipe:
            return 0
        return int(min(max(self._extra_acked), self.bw * AGGREGATION_MAX_TIME))

    def _check_stale_min_rtt(self, now: float) -> None:
        seen, self._round_min_rtt = self._round_min_rtt, math.inf
        if seen == math.inf or seen <= self.min_rtt * STALE_MIN_RTT_FACTOR + STALE_MIN_RTT_MARGIN:
            self._stale_rounds = 0
            return
        self._stale_rounds += 1
        if self._stale_rounds >= STALE_MIN_RTT_ROUNDS:
            self._stale_rounds = 0
            self.min_rtt = seen
            self._min_rtt_stamp = now

    def _bdp(self, gain: float) -> float:
        if self.bw <= 0 or self.min_rtt == math.inf:
            return 0.0
        return gain * self.bw * max(self.min_rtt, MIN_BDP_RTT)

    def _check_full_pipe(self) -> None:
        if self.filled_pipe:
            return
        if self.bw >= self._full_bw * FULL_BW_GROWTH:
            self._full_bw = self.bw
            self._full_bw_count = 0
            return
        self._full_bw_count += 1
        if self._full_bw_count >= FULL_BW_ROUNDS:
            self.filled_pipe = True

    def _update_mode(self, now: float) -> None:
        if self.mode == STARTUP and self.filled_pipe:
            self.mode = DRAIN
            self.pacing_gain = 1 / HIGH_GAIN
            self.cwnd_gain = HIGH_GAIN
        if self.mode == DRAIN and self.bytes_in_flight <= self._bdp(1.0):
            self._enter_probe_bw(now)
        if self.mode == PROBE_BW:
            gain = PROBE_BW_GAINS[self._cycle_index]
            elapsed = now - self._cycle_stamp > self.min_rtt
            if gain > 1:
                advance = elapsed and self.bytes_in_flight >= self._bdp(gain)
            elif gain < 1:
                advance = elapsed or self.bytes_in_flight <= self._bdp(1.0)
            else:
                advance = elapsed
            if advance:
                self._cycle_index = (self._cycle_index + 1) % len(PROBE_BW_GAINS)
                self._cycle_stamp = now
                self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
            elif gain != self.pacing_gain:
                self.pacing_gain = gain  # back from an idle restart
        if self.mode == PROBE_RTT:
            if not self._probe_rtt_done:
                if self.bytes_in_flight <= self._probe_rtt_cwnd():
                    self._probe_rtt_done = now + PROBE_RTT_TIME
                    self._probe_rtt_round_done = False
                    self._next_round_delivered = self.delivered
            elif self._probe_rtt_round_done and now >= self._probe_rtt_done:
                self._min_rtt_stamp = now
                self.congestion_window = max(self.congestion_window, self._prior_cwnd)
                self._prior_cwnd = 0
                if self.filled_pipe:
                    self._enter_probe_bw(now)
                else:
                    self.mode = STARTUP
                    self.pacing_gain = self.cwnd_gain = HIGH_GAIN

    def _probe_rtt_cwnd(self) -> int:
        return max(int(self._bdp(PROBE_RTT_CWND_GAIN)), MIN_CWND_PACKETS * self._mds)

    def _enter_probe_bw(self, now: float) -> None:
        self.mode = PROBE_BW
        self.cwnd_gain = CWND_GAIN
        self._cycle_index = 2  # start at gain 1 (the Linux code picks at random, never the 0.75 phase)
        self._cycle_stamp = now
        self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]

    def _set_cwnd(self, acked: int) -> None:
        floor = MIN_CWND_PACKETS * self._mds
        if self.mode == PROBE_RTT:
            self.congestion_window = self._probe_rtt_cwnd()
            return
        target = self._bdp(self.cwnd_gain) + self.aggregation_allowance() + 3 * self._mds
        cwnd = self.congestion_window
        if self.filled_pipe:
            cwnd = min(cwnd + acked, int(target))
        elif cwnd < target or self.delivered < 10 * self._mds:
            cwnd += acked
        self.congestion_window = max(cwnd, floor)


register_congestion_control(NAME, BbrCongestionControl)
