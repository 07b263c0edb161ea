# -*- test-case-name: tests.test_rtp_stats -*-
"""Tests for voiceedge.transceiver.rtp_stats: RFC 3550 loss, jitter and RTT on scripted streams."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase

from tests.cases import rel
from voiceedge.transceiver.rtp_stats import (
    MAX_DROPOUT,
    ReceiveStatistics,
    SendStatistics,
    round_trip_time,
)
from voiceedge.wire.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderReport,
    build_rtcp,
    ntp_middle32,
    parse_rtcp,
    to_ntp,
)

CLOCK_RATE = 48000
PTIME = 0.02
SAMPLES = 960  # 20 ms at 48 kHz
T0 = 1_700_000_000.0
REMOTE_SSRC = 0xABCDEF01


def feed(
    stats: ReceiveStatistics,
    seqs: Iterable[int],
    first_seq: int = 0,
    delay: float = 0.05,
    first_timestamp: int = 1000,
) -> None:
    """Deliver packets ``seqs`` of a 20 ms stream; each one's send time follows from its sequence.

    Sequence numbers are given unwrapped (they may exceed 65535) and sent mod 2**16.
    """
    for seq in seqs:
        index = seq - first_seq
        timestamp = (first_timestamp + index * SAMPLES) & 0xFFFFFFFF
        stats.on_packet(seq & 0xFFFF, timestamp, T0 + index * PTIME + delay)


class ReceiveStatisticsTests(SynchronousTestCase):
    """RFC 3550 A.3 loss and sequence bookkeeping of a received stream."""

    def test_in_order_stream(self) -> None:
        """50 packets in order: nothing lost, every packet counted, zero jitter."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, range(1000, 1050), first_seq=1000)
        self.assertEqual(stats.packets_received, 50)
        self.assertEqual(stats.cumulative_lost, 0)
        block = stats.report_block(REMOTE_SSRC, T0 + 1.0)
        self.assertEqual(block, ReportBlock(REMOTE_SSRC, 0, 0, 1049, 0, 0, 0))
        self.assertEqual(stats.fraction_lost, 0.0)
        # Float arrival times around 1.7e9 s carry ~0.2 us of rounding.
        self.assertApproximates(stats.jitter_seconds, 0.0, 1e-6)

    def test_loss_over_two_intervals(self) -> None:
        """Hand-computed A.3 numbers: 6 of 100 then 2 of 100 lost."""
        stats = ReceiveStatistics(CLOCK_RATE)
        lost_first = {10, 20, 21, 22, 23, 24}
        feed(stats, (s for s in range(100) if s not in lost_first))
        self.assertEqual(stats.packets_received, 94)
        self.assertEqual(stats.cumulative_lost, 6)
        block = stats.report_block(REMOTE_SSRC, T0 + 2.0)
        self.assertEqual(block.cumulative_lost, 6)
        self.assertEqual(block.fraction_lost, (6 << 8) // 100)
        self.assertEqual((6 << 8) // 100, 15)
        self.assertEqual(block.highest_sequence, 99)
        self.assertApproximates(stats.fraction_lost, 0.06, rel(0.06))

        lost_second = {150, 151}
        feed(stats, (s for s in range(100, 200) if s not in lost_second))
        block = stats.report_block(REMOTE_SSRC, T0 + 4.0)
        self.assertEqual(block.cumulative_lost, 8)
        self.assertEqual(block.fraction_lost, (2 << 8) // 100)
        self.assertEqual((2 << 8) // 100, 5)
        self.assertApproximates(stats.fraction_lost, 0.02, rel(0.02))

        # An interval with no packets at all reports no loss fraction.
        block = stats.report_block(REMOTE_SSRC, T0 + 6.0)
        self.assertEqual(block.fraction_lost, 0)
        self.assertEqual(block.cumulative_lost, 8)

    def test_reordering_is_not_loss(self) -> None:
        """A late packet fills its gap; a loss counted at a report is taken back in the next."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, [0, 1, 2, 4])
        block = stats.report_block(REMOTE_SSRC, T0 + 1.0)
        self.assertEqual((block.cumulative_lost, block.fraction_lost, block.highest_sequence), (1, 256 // 5, 4))
        feed(stats, [3, 5, 7, 6])
        self.assertEqual(stats.packets_received, 8)
        self.assertEqual(stats.cumulative_lost, 0)
        block = stats.report_block(REMOTE_SSRC, T0 + 2.0)
        # 3 expected (5..7) and 4 received in this interval: negative loss clamps to 0.
        self.assertEqual((block.cumulative_lost, block.fraction_lost, block.highest_sequence), (0, 0, 7))

    def test_duplicates_make_cumulative_loss_negative(self) -> None:
        """RFC 3550 counts duplicates as received, so loss can go below zero."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, [0, 1, 2, 3, 4, 5, 5, 5, 6, 7, 8, 9])
        self.assertEqual(stats.packets_received, 12)
        self.assertEqual(stats.cumulative_lost, -2)
        block = stats.report_block(REMOTE_SSRC, T0 + 1.0)
        self.assertEqual(block.cumulative_lost, -2)
        self.assertEqual(block.fraction_lost, 0)
        self.assertEqual(block.highest_sequence, 9)

    def test_wraparound_at_65535(self) -> None:
        """Crossing 65535 -> 0 adds a cycle to the extended highest sequence, not a loss."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, range(65530, 65550), first_seq=65530)
        self.assertEqual(stats.packets_received, 20)
        self.assertEqual(stats.cumulative_lost, 0)
        block = stats.report_block(REMOTE_SSRC, T0 + 1.0)
        self.assertEqual(block.highest_sequence, 65536 + 13)
        self.assertEqual(block.cumulative_lost, 0)

    def test_loss_across_the_wrap(self) -> None:
        """Losing 65535 and 0 counts two packets, whatever the wrap."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, (s for s in range(65530, 65540) if s not in (65535, 65536)), first_seq=65530)
        block = stats.report_block(REMOTE_SSRC, T0 + 1.0)
        self.assertEqual(block.cumulative_lost, 2)
        self.assertEqual(block.fraction_lost, (2 << 8) // 10)
        self.assertEqual(block.highest_sequence, 65536 + 3)

    def test_probation_run_across_the_wrap(self) -> None:
        """A source whose first two packets are 65535 and 0 starts with consistent counts."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, range(65535, 65540), first_seq=65535)
        self.assertEqual(stats.packets_received, 5)
        self.assertEqual(stats.cumulative_lost, 0)
        self.assertEqual(stats.report_block(REMOTE_SSRC, T0).highest_sequence, 65536 + 3)

    def test_probation_discards_a_stray_first_packet(self) -> None:
        """A source is valid only after MIN_SEQUENTIAL in-sequence packets; strays before are not counted."""
        stats = ReceiveStatistics(CLOCK_RATE)
        stats.on_packet(100, 0, T0)
        self.assertEqual(stats.packets_received, 0)
        stats.on_packet(500, 0, T0 + 0.02)
        self.assertEqual(stats.packets_received, 0)
        stats.on_packet(501, 960, T0 + 0.04)
        self.assertEqual(stats.packets_received, 2)
        self.assertEqual(stats.cumulative_lost, 0)
        self.assertEqual(stats.report_block(REMOTE_SSRC, T0 + 1).highest_sequence, 501)

    def test_one_huge_jump_is_ignored(self) -> None:
        """A single packet far outside MAX_DROPOUT is dropped from the statistics."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, range(10))
        stats.on_packet(30000, 0, T0 + 0.5)
        feed(stats, range(10, 20))
        self.assertEqual(stats.packets_received, 20)
        self.assertEqual(stats.cumulative_lost, 0)
        self.assertEqual(stats.report_block(REMOTE_SSRC, T0 + 1).highest_sequence, 19)

    def test_two_sequential_packets_after_a_huge_jump_restart_the_source(self) -> None:
        """Two in sequence after a big jump mean the sender restarted: counts start over."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, range(10))
        stats.on_packet(30000, 0, T0 + 0.5)
        stats.on_packet(30001, 960, T0 + 0.52)
        stats.on_packet(30002, 1920, T0 + 0.54)
        self.assertEqual(stats.packets_received, 2)
        self.assertEqual(stats.cumulative_lost, 0)
        self.assertEqual(stats.report_block(REMOTE_SSRC, T0 + 1).highest_sequence, 30002)

    def test_gap_below_max_dropout_is_loss(self) -> None:
        """A forward jump smaller than MAX_DROPOUT is counted as lost packets."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, range(10))
        # From 9 to 9 + MAX_DROPOUT - 1 is the largest jump still taken as in order.
        feed(stats, range(9 + MAX_DROPOUT - 1, 19 + MAX_DROPOUT - 1))
        self.assertEqual(stats.packets_received, 20)
        self.assertEqual(stats.cumulative_lost, MAX_DROPOUT - 2)


class JitterTests(SynchronousTestCase):
    """RFC 3550 A.8 interarrival jitter."""

    def test_constant_delay_has_zero_jitter(self) -> None:
        """Every packet delayed by the same 80 ms: jitter stays 0, even across a timestamp wrap."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, range(500), delay=0.08, first_timestamp=0xFFFFFFFF - 100 * SAMPLES)
        self.assertApproximates(stats.jitter, 0.0, 0.05)
        self.assertEqual(stats.report_block(REMOTE_SSRC, T0 + 20).jitter, 0)

    def test_alternating_delay_jitter_converges(self) -> None:
        """Delays alternating 10 ms / 30 ms give |D| = 20 ms each packet; J -> 960 units (20 ms)."""
        stats = ReceiveStatistics(CLOCK_RATE)
        for index in range(400):
            delay = 0.01 if index % 2 == 0 else 0.03
            stats.on_packet(index, index * SAMPLES, T0 + index * PTIME + delay)
            if index == 3:
                # Packet 1 ends probation and is the first reference; 2 and 3 give two samples.
                expected = 960 / 16 + (960 - 960 / 16) / 16
                self.assertApproximates(stats.jitter, expected, rel(expected))
        self.assertApproximates(stats.jitter, 960, 0.01)
        self.assertApproximates(stats.jitter_seconds, 0.02, 1e-6)
        self.assertIn(stats.report_block(REMOTE_SSRC, T0 + 10).jitter, (959, 960))

    def test_jitter_exact_recurrence(self) -> None:
        """J(i) = J(i-1) + (|D| - J(i-1)) / 16, checked step by step for a 5 ms late packet."""
        stats = ReceiveStatistics(8000)
        stats.on_packet(0, 0, 10.0)
        stats.on_packet(1, 160, 10.02)
        self.assertApproximates(stats.jitter, 0.0, 1e-6)
        stats.on_packet(2, 320, 10.045)  # 5 ms late: |D| = 40 units
        self.assertApproximates(stats.jitter, 40 / 16, rel(40 / 16))
        stats.on_packet(3, 480, 10.06)  # back on time: |D| = 40 again
        expected = 40 / 16 + (40 - 40 / 16) / 16
        self.assertApproximates(stats.jitter, expected, rel(expected))


class ReportTests(SynchronousTestCase):
    """SR/RR report blocks and the round-trip time they give."""

    def test_round_trip_time_from_sr_rr_exchange(self) -> None:
        """Our SR goes out, the peer holds it 250 ms, its RR comes back: RTT is the 2 x 30 ms path."""
        sender = SendStatistics()
        for _ in range(50):
            sender.on_packet_sent(160)
        sent_at = T0 + 10.0
        sr = sender.sender_report(0x1111, sent_at, rtp_timestamp=480000)
        self.assertEqual((sr.packet_count, sr.octet_count), (50, 8000))

        # The peer's clock is 500 s off ours: DLSR is a difference, so it does not matter.
        peer_clock = 500.0
        peer = ReceiveStatistics(CLOCK_RATE)
        feed(peer, range(50))
        [received_sr] = parse_rtcp(build_rtcp([sr]))
        self.assertIsInstance(received_sr, SenderReport)
        peer.on_sender_report(received_sr, sent_at + 0.03 + peer_clock)
        rr_block = peer.report_block(0x1111, sent_at + 0.03 + 0.25 + peer_clock)
        self.assertEqual(rr_block.last_sr, ntp_middle32(to_ntp(sent_at)))
        self.assertEqual(rr_block.delay_since_last_sr, round(0.25 * 65536))

        [rr] = parse_rtcp(build_rtcp([ReceiverReport(0x2222, [rr_block])]))
        self.assertIsInstance(rr, ReceiverReport)
        rtt = round_trip_time(rr.reports[0], sent_at + 0.03 + 0.25 + 0.03)
        self.assertApproximates(rtt, 0.06, 2 / 65536)

    def test_round_trip_time_edge_cases(self) -> None:
        """No SR yet (LSR 0) gives None; a DLSR longer than the elapsed time gives 0, not negative."""
        now = T0 + 3.0
        self.assertIsNone(round_trip_time(ReportBlock(1, 0, 0, 0, 0, 0, 0), now))
        lsr = ntp_middle32(to_ntp(now - 0.1))
        self.assertEqual(round_trip_time(ReportBlock(1, 0, 0, 0, 0, lsr, 65536), now), 0.0)
        self.assertApproximates(round_trip_time(ReportBlock(1, 0, 0, 0, 0, lsr, 0), now), 0.1, 2 / 65536)

    def test_report_block_without_sender_report_has_no_lsr(self) -> None:
        """Before the source's first SR, LSR and DLSR are both zero."""
        stats = ReceiveStatistics(CLOCK_RATE)
        feed(stats, range(5))
        block = stats.report_block(REMOTE_SSRC, T0 + 5)
        self.assertEqual((block.last_sr, block.delay_since_last_sr), (0, 0))

    def test_report_block_before_any_packet(self) -> None:
        """A report about a source that has sent nothing valid is all zeros but the SSRC."""
        stats = ReceiveStatistics(CLOCK_RATE)
        block = stats.report_block(REMOTE_SSRC, T0)
        self.assertEqual((block.fraction_lost, block.cumulative_lost, block.jitter), (0, 0, 0))
        self.assertEqual(stats.packets_received, 0)
        self.assertEqual(stats.fraction_lost, 0.0)

    def test_sender_report_fields_and_counter_wrap(self) -> None:
        """The SR carries now as NTP, our RTP timestamp and 32-bit wrapping counters."""
        sender = SendStatistics()
        sender.octet_count = 0xFFFFFFFF - 10
        sender.on_packet_sent(20)
        block = ReportBlock(5, 0, 0, 0, 0, 0, 0)
        sr = sender.sender_report(7, T0, rtp_timestamp=(1 << 32) + 5, reports=[block])
        self.assertEqual(sr, SenderReport(7, to_ntp(T0), 5, 1, 9, [block]))

    def test_clock_rate_must_be_positive(self) -> None:
        """A zero clock rate is a programming error caught early."""
        with self.assertRaises(ValueError):
            ReceiveStatistics(0)
