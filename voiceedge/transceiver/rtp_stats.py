# -*- test-case-name: tests.test_rtp_stats -*-
"""RFC 3550 statistics: receive-side sequence, loss and jitter; send-side counts; RTT from reports."""

from __future__ import annotations

from collections.abc import Iterable

from voiceedge.wire.rtcp import (
    ReportBlock,
    SenderReport,
    middle32_to_seconds,
    ntp_middle32,
    seconds_to_middle32,
    to_ntp,
)

__all__ = [
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "MIN_SEQUENTIAL",
    "ReceiveStatistics",
    "SendStatistics",
    "round_trip_time",
]

# RFC 3550 A.1 constants.
MIN_SEQUENTIAL = 2
MAX_DROPOUT = 3000
MAX_MISORDER = 100
RTP_SEQ_MOD = 1 << 16

_CUMULATIVE_LOST_MIN = -0x800000
_CUMULATIVE_LOST_MAX = 0x7FFFFF


class ReceiveStatistics:
    """Reception statistics for one remote RTP source (RFC 3550 A.1, A.3, A.8).

    Feed every received packet to :meth:`on_packet` and every SR from that
    source to :meth:`on_sender_report`; :meth:`report_block` builds the block
    for our next SR/RR and starts a new loss interval.

    A new source is on probation until ``MIN_SEQUENTIAL`` packets arrive in
    sequence. Unlike the literal A.1 code, which drops the probation packets
    from the counts, the packets of the run that ends probation are counted
    (``base_seq`` is the first of them), so ``packets_received`` is the number
    of packets actually received once the source is valid.
    """

    __slots__ = (
        "clock_rate",
        "_probation",
        "_max_seq",
        "_cycles",
        "_base_seq",
        "_bad_seq",
        "_received",
        "_expected_prior",
        "_received_prior",
        "_fraction_lost",
        "_jitter",
        "_last_arrival",
        "_last_timestamp",
        "_last_sr",
        "_last_sr_arrival",
        "_started",
    )

    def __init__(self, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.clock_rate = clock_rate
        self._started = False
        self._probation = MIN_SEQUENTIAL
        self._max_seq = 0
        self._cycles = 0
        self._base_seq = 0
        self._bad_seq = RTP_SEQ_MOD + 1
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._fraction_lost = 0.0
        self._jitter = 0.0  # in timestamp units, unscaled
        self._last_arrival: float | None = None
        self._last_timestamp = 0
        self._last_sr = 0
        self._last_sr_arrival = 0.0

    # -- A.1 -------------------------------------------------------------------

    def _init_seq(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = RTP_SEQ_MOD + 1
        self._cycles = 0
        self._received = 0
        self._received_prior = 0
        self._expected_prior = 0
        # After a restart the timestamps are unrelated to the last ones we saw.
        self._last_arrival = None

    def _update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1 ``update_seq``: False for a packet not (yet) counted."""
        max_seq = self._max_seq
        udelta = (seq - max_seq) & 0xFFFF
        if self._probation:
            if seq == (max_seq + 1) & 0xFFFF:
                self._probation -= 1
                self._max_seq = seq
                if self._probation == 0:
                    self._init_seq(seq)
                    # Count the whole in-sequence run that ended probation.
                    run = MIN_SEQUENTIAL - 1
                    self._base_seq = (seq - run) & 0xFFFF
                    if self._base_seq > seq:
                        # The run crossed the wrap: we are already one cycle on.
                        self._cycles = RTP_SEQ_MOD
                    self._received = run + 1
                    return True
            else:
                self._probation = MIN_SEQUENTIAL - 1
                self._max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            # In order, with a permissible gap.
            if seq < max_seq:
                self._cycles += RTP_SEQ_MOD
            self._max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            # A very large jump: two in sequence mean the sender restarted.
            if seq == self._bad_seq:
                self._init_seq(seq)
            else:
                self._bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: a duplicate or a reordered packet, counted as RFC 3550 does.
        self._received += 1
        return True

    def on_packet(self, sequence_number: int, timestamp: int, now: float) -> None:
        """Account one received RTP packet from this source, arriving at ``now``."""
        max_seq = self._max_seq
        if sequence_number == (max_seq + 1) & 0xFFFF and not self._probation and self._started:
            # The common packet, the next one: _update_seq's in-order branch, inline.
            if sequence_number < max_seq:
                self._cycles += RTP_SEQ_MOD
            self._max_seq = sequence_number
            self._received += 1
        else:
            if not self._started:
                self._started = True
                self._init_seq(sequence_number)
                self._max_seq = (sequence_number - 1) & 0xFFFF
                self._probation = MIN_SEQUENTIAL
            if not self._update_seq(sequence_number):
                return
        # A.8 interarrival jitter, with the timestamp difference taken modulo 2**32.
        last_arrival = self._last_arrival
        if last_arrival is not None:
            timestamp_delta = (
                (timestamp - self._last_timestamp + 0x80000000) & 0xFFFFFFFF
            ) - 0x80000000
            d = (now - last_arrival) * self.clock_rate - timestamp_delta
            if d < 0:
                d = -d
            self._jitter += (d - self._jitter) / 16.0
        self._last_arrival = now
        self._last_timestamp = timestamp

    def on_sender_report(self, sr: SenderReport, now: float) -> None:
        """Remember this source's latest SR (LSR) and when it arrived (for DLSR)."""
        self._last_sr = ntp_middle32(sr.ntp_timestamp)
        self._last_sr_arrival = now

    # -- A.3 -------------------------------------------------------------------

    @property
    def _expected(self) -> int:
        return self._cycles + self._max_seq - self._base_seq + 1

    @property
    def packets_received(self) -> int:
        """Packets counted since the source became valid (duplicates included, per RFC 3550)."""
        return self._received

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received since the source became valid; negative with duplicates."""
        if self._received == 0:
            return 0
        return self._expected - self._received

    @property
    def extended_highest_sequence(self) -> int:
        """Highest sequence number received, extended with the wraparound count."""
        return (self._cycles + self._max_seq) & 0xFFFFFFFF

    @property
    def fraction_lost(self) -> float:
        """Fraction (0..1) of packets lost in the interval closed by the last :meth:`report_block`."""
        return self._fraction_lost

    @property
    def jitter(self) -> float:
        """Interarrival jitter in RTP timestamp units."""
        return self._jitter

    @property
    def jitter_seconds(self) -> float:
        """Interarrival jitter in seconds."""
        return self._jitter / self.clock_rate

    def report_block(self, ssrc: int, now: float) -> ReportBlock:
        """Build the reception report block for source ``ssrc`` and start a new interval."""
        if self._received:
            expected = self._expected
            lost = expected - self._received
            expected_interval = expected - self._expected_prior
            received_interval = self._received - self._received_prior
            self._expected_prior = expected
            self._received_prior = self._received
            lost_interval = expected_interval - received_interval
        else:
            lost = expected_interval = lost_interval = 0
        if expected_interval <= 0 or lost_interval <= 0:
            fraction = 0
            self._fraction_lost = 0.0
        else:
            fraction = min((lost_interval << 8) // expected_interval, 255)
            self._fraction_lost = lost_interval / expected_interval
        if lost > _CUMULATIVE_LOST_MAX:
            lost = _CUMULATIVE_LOST_MAX
        elif lost < _CUMULATIVE_LOST_MIN:
            lost = _CUMULATIVE_LOST_MIN
        if self._last_sr:
            dlsr = seconds_to_middle32(now - self._last_sr_arrival)
        else:
            dlsr = 0
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=fraction,
            cumulative_lost=lost,
            highest_sequence=self.extended_highest_sequence,
            jitter=min(int(self._jitter), 0xFFFFFFFF),
            last_sr=self._last_sr,
            delay_since_last_sr=dlsr,
        )


class SendStatistics:
    """Counts for our own SRs: packets and payload octets sent (RFC 3550 §6.4.1)."""

    __slots__ = ("packet_count", "octet_count")

    def __init__(self) -> None:
        self.packet_count = 0
        self.octet_count = 0

    def on_packet_sent(self, payload_size: int) -> None:
        """Account one RTP packet sent with ``payload_size`` payload octets (no header, no padding)."""
        self.packet_count = (self.packet_count + 1) & 0xFFFFFFFF
        self.octet_count = (self.octet_count + payload_size) & 0xFFFFFFFF

    def sender_report(
        self, ssrc: int, now: float, rtp_timestamp: int, reports: Iterable[ReportBlock] = ()
    ) -> SenderReport:
        """An SR stamped ``now``; ``rtp_timestamp`` is the media clock at that same instant."""
        return SenderReport(
            ssrc=ssrc,
            ntp_timestamp=to_ntp(now),
            rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
            packet_count=self.packet_count,
            octet_count=self.octet_count,
            reports=list(reports),
        )


def round_trip_time(block: ReportBlock, now: float) -> float | None:
    """RTT in seconds from a report block about our stream, received at ``now`` (RFC 3550 §6.4.1).

    A - LSR - DLSR in the middle-32 NTP format, modulo 2**32. ``None`` when the
    peer has not yet received an SR from us (LSR 0); 0.0 rather than a
    negative value when clocks or rounding would make it negative.
    """
    if block.last_sr == 0:
        return None
    arrival = ntp_middle32(to_ntp(now))
    rtt = (arrival - block.last_sr - block.delay_since_last_sr) & 0xFFFFFFFF
    if rtt & 0x80000000:
        return 0.0
    return middle32_to_seconds(rtt)
