# -*- test-case-name: tests.test_jitter -*-
"""Tests for voiceedge.media.jitter: the sans-I/O jitter buffer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import rel

from voiceedge.media.jitter import Frame, JitterBuffer

TICK = 0.020


def payload(seq: int) -> bytes:
    """A payload that names its packet."""
    return b"p%d" % seq


def push(buffer: JitterBuffer, seq: int, now: float) -> None:
    """Push packet ``seq`` with a timestamp 960 ticks per sequence number."""
    buffer.push(seq % 65536, (seq * 960) & 0xFFFFFFFF, payload(seq % 65536), now)


def drain(buffer: JitterBuffer, now: float) -> list[Frame]:
    """Pop until the buffer has nothing due."""
    out = []
    while (frame := buffer.pop(now)) is not None:
        out.append(frame)
    return out

DELAYS = (0.0, 0.0, 0.0, 0.001, 0.015, 0.03, 0.1)


@st.composite
def network(draw: st.DrawFn) -> tuple[int, list[tuple[int, float]]]:
    """A start sequence number and (seq, arrival time) of packets sent every 20 ms,
    with random loss, duplication and delay (so reordering) of up to 100 ms."""
    start = draw(st.integers(0, 65535))
    # Per packet: fate 0-1 lost, 2 duplicated, else sent once; and two delays.
    fates = draw(
        st.lists(
            st.tuples(st.integers(0, 19), st.sampled_from(DELAYS), st.sampled_from(DELAYS)),
            min_size=1,
            max_size=150,
        )
    )
    arrivals = []
    for i, (fate, delay, again) in enumerate(fates):
        if fate < 2:
            continue
        arrivals.append((start + i, i * TICK + delay))
        if fate == 2:
            arrivals.append((start + i, i * TICK + again))
    arrivals.sort(key=lambda a: a[1])
    return start, arrivals


class JitterBufferTests(SynchronousTestCase):
    """JitterBuffer on scripted arrivals: order, loss, reordering, duplicates, wrap and bounds."""

    def test_in_order_packets_pop_with_no_delay(self) -> None:
        """On a clean network every packet pops at the instant it was pushed."""
        buffer = JitterBuffer()
        for seq in range(100):
            now = seq * TICK
            push(buffer, seq, now)
            frame = buffer.pop(now)
            self.assertEqual(frame, Frame(seq, seq * 960, payload(seq)))
            self.assertIsNone(buffer.pop(now))
            self.assertIsNone(buffer.deadline())
        self.assertEqual(buffer.stats.played, 100)
        self.assertEqual(buffer.stats.lost, 0)
        self.assertEqual(len(buffer), 0)

    def test_nothing_before_first_packet(self) -> None:
        """An empty buffer has nothing to give and no deadline."""
        buffer = JitterBuffer()
        self.assertIsNone(buffer.pop(0.0))
        self.assertIsNone(buffer.deadline())

    def test_silence_is_not_loss(self) -> None:
        """A sender that stops (DTX, mute) produces no lost frames, however long."""
        buffer = JitterBuffer()
        push(buffer, 7, 0.0)
        self.assertIsNotNone(buffer.pop(0.0))
        for tick in range(1, 200):
            self.assertIsNone(buffer.pop(tick * TICK))
        push(buffer, 8, 4.0)
        self.assertEqual(buffer.pop(4.0), Frame(8, 8 * 960, payload(8)))
        self.assertEqual(buffer.stats.lost, 0)

    def test_loss_on_clean_network_is_marked_at_once(self) -> None:
        """With no reordering seen, a hole is lost as soon as a later packet shows it."""
        buffer = JitterBuffer()
        push(buffer, 1, 0.0)
        push(buffer, 2, 0.02)
        self.assertEqual([f.sequence_number for f in drain(buffer, 0.02)], [1, 2])
        push(buffer, 4, 0.06)
        self.assertEqual(buffer.deadline(), 0.06)
        lost = buffer.pop(0.06)
        self.assertEqual(lost, Frame(3, 3 * 960, b"", lost=True, next_payload=payload(4)))
        self.assertEqual(buffer.pop(0.06), Frame(4, 4 * 960, payload(4)))
        self.assertEqual(buffer.stats.lost, 1)

    def test_loss_run_marks_every_frame(self) -> None:
        """Each missing frame of a run is its own lost mark; only the last gets next_payload."""
        buffer = JitterBuffer()
        push(buffer, 10, 0.0)
        buffer.pop(0.0)
        push(buffer, 14, 0.1)
        frames = drain(buffer, 0.1)
        self.assertEqual([(f.sequence_number, f.lost) for f in frames], [
            (11, True),
            (12, True),
            (13, True),
            (14, False),
        ])
        self.assertEqual([f.next_payload for f in frames[:3]], [None, None, payload(14)])
        self.assertEqual([f.timestamp for f in frames], [11 * 960, 12 * 960, 13 * 960, 14 * 960])

    def test_reordering_is_recovered(self) -> None:
        """A packet overtaken before the tick is put back in order."""
        buffer = JitterBuffer()
        push(buffer, 1, 0.0)
        push(buffer, 3, 0.001)
        push(buffer, 2, 0.002)
        self.assertEqual([f.sequence_number for f in drain(buffer, 0.02)], [1, 2, 3])
        self.assertEqual(buffer.stats.reordered, 1)
        self.assertEqual(buffer.stats.lost, 0)

    def test_wait_adapts_to_observed_reordering(self) -> None:
        """After reordering is seen, a hole is waited for long enough to be filled."""
        buffer = JitterBuffer()
        push(buffer, 1, 0.0)
        push(buffer, 3, 0.000)
        push(buffer, 2, 0.010)  # 10 ms late
        drain(buffer, 0.010)
        self.assertApproximates(buffer.wait(0.010), 0.010 * 1.25 + 0.005, rel(0.010 * 1.25 + 0.005))
        push(buffer, 5, 0.100)
        self.assertIsNone(buffer.pop(0.100))  # 4 is awaited, not lost
        due = 0.100 + buffer.wait(0.100)
        self.assertApproximates(buffer.deadline(), due, rel(due))
        push(buffer, 4, 0.108)
        self.assertEqual([f.sequence_number for f in drain(buffer, 0.108)], [4, 5])
        self.assertEqual(buffer.stats.lost, 0)

    def test_loss_marked_after_bounded_wait(self) -> None:
        """However late reordered packets were, a hole is waited for at most max_wait."""
        buffer = JitterBuffer(max_wait=0.060)
        push(buffer, 1, 0.0)
        push(buffer, 3, 0.0)
        push(buffer, 2, 0.5)  # half a second late
        drain(buffer, 0.5)
        self.assertEqual(buffer.wait(0.5), 0.060)
        push(buffer, 5, 1.0)
        self.assertApproximates(buffer.deadline(), 1.060, rel(1.060))
        self.assertIsNone(buffer.pop(1.059))
        frame = buffer.pop(1.060)
        self.assertIsNotNone(frame)
        self.assertTrue(frame.lost)
        self.assertEqual(frame.sequence_number, 4)
        self.assertEqual(frame.next_payload, payload(5))

    def test_late_packet_is_dropped_and_lengthens_the_wait(self) -> None:
        """A packet arriving after its hole was declared lost is counted late, not played."""
        buffer = JitterBuffer()
        push(buffer, 1, 0.0)
        push(buffer, 3, 0.0)
        self.assertEqual([f.lost for f in drain(buffer, 0.0)], [False, True, False])
        push(buffer, 2, 0.030)
        self.assertIsNone(buffer.pop(0.030))
        self.assertEqual(buffer.stats.late, 1)
        self.assertApproximates(buffer.wait(0.030), 0.030 * 1.25 + 0.005, rel(0.030 * 1.25 + 0.005))

    def test_wait_fades_back_to_zero(self) -> None:
        """Once the network is clean again the buffer stops waiting."""
        buffer = JitterBuffer(half_life=10.0)
        push(buffer, 1, 0.0)
        push(buffer, 3, 0.0)
        push(buffer, 2, 0.04)
        drain(buffer, 0.04)
        self.assertGreater(buffer.wait(0.04), 0.05)
        self.assertLess(0, buffer.wait(10.04))
        self.assertLess(buffer.wait(10.04), buffer.wait(0.04))
        self.assertEqual(buffer.wait(200.0), 0.0)

    def test_duplicates_are_dropped_and_counted(self) -> None:
        """A packet seen twice, buffered or already played, comes out once."""
        buffer = JitterBuffer()
        push(buffer, 1, 0.0)
        push(buffer, 2, 0.0)
        push(buffer, 2, 0.0)
        self.assertEqual([f.sequence_number for f in drain(buffer, 0.0)], [1, 2])
        push(buffer, 1, 0.01)
        self.assertIsNone(buffer.pop(0.01))
        self.assertEqual(buffer.stats.duplicates, 2)

    def test_sequence_numbers_wrap(self) -> None:
        """Order, reordering and loss work across the 65535 -> 0 wrap."""
        buffer = JitterBuffer()
        seqs = [65532, 65533, 65535, 65534, 1, 2]  # 65534 overtaken, 0 lost
        for seq in seqs:
            push(buffer, seq, 0.0)
        frames = drain(buffer, 0.0)
        self.assertEqual([(f.sequence_number, f.lost) for f in frames], [
            (65532, False),
            (65533, False),
            (65534, False),
            (65535, False),
            (0, True),
            (1, False),
            (2, False),
        ])
        self.assertEqual(frames[4].timestamp, (65536 * 960) & 0xFFFFFFFF)
        self.assertEqual(frames[4].next_payload, payload(1))

    def test_lost_timestamp_wraps(self) -> None:
        """The estimated timestamp of a lost frame wraps at 2**32."""
        buffer = JitterBuffer()
        buffer.push(1, 0xFFFFFF00, b"a", 0.0)
        buffer.push(3, 0x00000380, b"c", 0.0)
        frames = drain(buffer, 0.0)
        self.assertEqual(frames[1].timestamp, (0xFFFFFF00 + 960) & 0xFFFFFFFF)
        self.assertEqual((0xFFFFFF00 + 960) & 0xFFFFFFFF, 0x2C0)

    def test_size_is_bounded(self) -> None:
        """Without pops the buffer keeps only the newest ``capacity`` frames."""
        buffer = JitterBuffer(capacity=10)
        for seq in range(25):
            push(buffer, seq, 0.0)
            self.assertLessEqual(len(buffer), 10)
        self.assertEqual(buffer.stats.overflow, 15)
        self.assertEqual([f.sequence_number for f in drain(buffer, 0.0)], list(range(15, 25)))

    def test_forward_jump_resynchronises(self) -> None:
        """A jump far ahead plays the new packet at once instead of a run of lost frames."""
        buffer = JitterBuffer(capacity=50)
        push(buffer, 1, 0.0)
        buffer.pop(0.0)
        push(buffer, 1000, 0.02)
        self.assertEqual(buffer.pop(0.02), Frame(1000, 1000 * 960, payload(1000)))
        self.assertEqual(buffer.stats.skipped, 998)
        self.assertEqual(buffer.stats.lost, 0)

    def test_sequence_restart_resets(self) -> None:
        """Two packets in sequence far behind mean the sender restarted: follow it."""
        buffer = JitterBuffer()
        push(buffer, 5000, 0.0)
        buffer.pop(0.0)
        push(buffer, 100, 0.02)
        self.assertIsNone(buffer.pop(0.02))
        self.assertEqual(buffer.stats.late, 1)
        push(buffer, 101, 0.04)
        self.assertEqual(buffer.pop(0.04), Frame(101, 101 * 960, payload(101)))
        self.assertEqual(buffer.stats.resets, 1)

    def test_rejects_bad_settings(self) -> None:
        """Nonsense settings are refused."""
        with self.assertRaises(ValueError):
            JitterBuffer(capacity=1)
        with self.assertRaises(ValueError):
            JitterBuffer(max_wait=-1)
        with self.assertRaises(ValueError):
            JitterBuffer(half_life=0)

    @settings(max_examples=150, deadline=None)
    @given(network())
    def test_output_is_in_order_and_complete(self, case: tuple[int, list[tuple[int, float]]]) -> None:
        """Whatever the network does, frames come out once each, contiguous and in order,
        every played frame carries its own payload, and the buffer stays bounded."""
        _, arrivals = case
        buffer = JitterBuffer(capacity=20)
        out: list[Frame] = []
        tick = 0.0
        for seq, arrival in arrivals:
            while tick <= arrival:
                out += drain(buffer, tick)
                tick += TICK
            push(buffer, seq, arrival)
            out += drain(buffer, arrival)
            self.assertLessEqual(len(buffer), 20)
        out += drain(buffer, tick + 1.0)
        self.assertEqual(len(buffer), 0)
        if not arrivals:
            self.assertEqual(out, [])
            return
        # The first packet to arrive sets the start; anything before it is late.
        first = arrivals[0][0] % 65536
        self.assertEqual(out[0].sequence_number, first)
        for i, frame in enumerate(out):
            self.assertEqual(frame.sequence_number, (first + i) % 65536)
            self.assertTrue(frame.lost or frame.payload == payload(frame.sequence_number))
            self.assertTrue(not frame.lost or frame.payload == b"")
        stats = buffer.stats
        self.assertEqual(stats.played + stats.lost, len(out))
        self.assertEqual(stats.skipped, stats.overflow)
        self.assertEqual(stats.overflow, stats.resets)
        self.assertEqual(stats.resets, 0)
        played = {f.sequence_number for f in out if not f.lost}
        sent = {seq % 65536 for seq, _ in arrivals}
        self.assertLessEqual(played, sent)
        self.assertGreaterEqual(len(played) + stats.late, len(sent))

    @settings(max_examples=150, deadline=None)
    @given(network())
    def test_push_next_is_push_then_pop(self, case: tuple[int, list[tuple[int, float]]]) -> None:
        """push_next() passes a packet through exactly when push() then pop() would, and leaves
        the buffer as they do: the same frames, stats and deadlines, whatever the network."""
        _, arrivals = case
        plain, fast = JitterBuffer(capacity=20), JitterBuffer(capacity=20)
        plain_out: list[tuple[int, int, bytes, bool]] = []
        fast_out: list[tuple[int, int, bytes, bool]] = []
        tick = 0.0
        for seq, arrival in arrivals:
            while tick <= arrival:
                plain_out += [(f.sequence_number, f.timestamp, f.payload, f.lost) for f in drain(plain, tick)]
                fast_out += [(f.sequence_number, f.timestamp, f.payload, f.lost) for f in drain(fast, tick)]
                tick += TICK
            push(plain, seq, arrival)
            plain_out += [(f.sequence_number, f.timestamp, f.payload, f.lost) for f in drain(plain, arrival)]
            number, timestamp = seq % 65536, (seq * 960) & 0xFFFFFFFF
            if fast.push_next(number, timestamp, payload(number), arrival):
                fast_out.append((number, timestamp, payload(number), False))
                self.assertIsNone(fast.pop(arrival))
            else:
                push(fast, seq, arrival)
                fast_out += [(f.sequence_number, f.timestamp, f.payload, f.lost) for f in drain(fast, arrival)]
            self.assertEqual(fast_out, plain_out)
            self.assertEqual(fast.stats, plain.stats)
            self.assertEqual(fast.deadline(), plain.deadline())
            self.assertEqual(len(fast), len(plain))
