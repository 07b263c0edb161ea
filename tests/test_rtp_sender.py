"""The RTP sender: pacing without added delay, timestamps by slot, marker, MID, stop."""

from __future__ import annotations

import collections

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.audio_samples import tone_pcm

from voiceedge.transceiver.audio import SILENT, OutboundAudio, is_inaudible
from voiceedge.transceiver.rtp_sender import (
    MAX_CATCH_UP,
    PlayoutStarted,
    PlayoutStopped,
    RtpSender,
    mid_extension,
)
from voiceedge.wire.rtp import parse_rtp

ORIGIN = 1000.0


class FrameQueue:
    """An AudioSource of ready-made payloads (what a passthrough agent would queue)."""

    def __init__(self) -> None:
        self.frames: collections.deque[bytes] = collections.deque()
        self.popped = 0
        self.cuts: list[bool] = []
        self.restarts = 0

    def add(self, *frames: bytes) -> None:
        self.frames.extend(frames)

    def pop(self) -> bytes | None:
        if not self.frames:
            return None
        self.popped += 1
        return self.frames.popleft()

    def __bool__(self) -> bool:
        return bool(self.frames)

    def cut(self, ending: bool) -> tuple[int, list[bytes]]:
        dropped = len(self.frames) * 20
        self.frames.clear()
        self.cuts.append(ending)
        return dropped, [b"fade", b"quiet", b"quiet"] if ending else []

    def restart(self) -> None:
        self.restarts += 1

    def queued_ms(self) -> int:
        return len(self.frames) * 20


def sender(source: FrameQueue | OutboundAudio | None = None, **kwargs: object) -> RtpSender:
    return RtpSender(
        111, 0x1234, FrameQueue() if source is None else source, ORIGIN, sequence_number=100, timestamp_base=5000, **kwargs  # type: ignore[arg-type]
    )


def produce(s: RtpSender, now: float, *frames: bytes) -> list[bytes]:
    """What the session does when the agent queues audio: add, then poll."""
    source = s.source
    assert isinstance(source, FrameQueue)
    source.add(*frames)
    return s.poll(now)


class PacingTests(SynchronousTestCase):
    """A frame whose slot has come goes out when produced; a backlog waits for the tick."""

    def test_a_frame_goes_out_the_moment_it_is_produced(self) -> None:
        s = sender()
        (packet,) = produce(s, ORIGIN + 0.013, b"a")
        rtp = parse_rtp(packet)
        self.assertEqual((rtp.sequence_number, rtp.timestamp, rtp.marker, rtp.payload), (100, 5000, True, b"a"))
        self.assertEqual(s.last_sent_at, ORIGIN + 0.013)

    def test_a_second_frame_in_the_same_slot_waits_for_the_next(self) -> None:
        s = sender()
        self.assertEqual(len(produce(s, ORIGIN + 0.001, b"a", b"b")), 1)
        self.assertTrue(s.wants_tick())
        self.assertEqual(s.poll(ORIGIN + 0.019), [])
        (packet,) = s.poll(ORIGIN + 0.020)  # the shared tick at the next slot
        rtp = parse_rtp(packet)
        self.assertEqual((rtp.timestamp, rtp.marker), (5000 + 960, False))

    def test_a_steady_producer_gets_no_added_delay(self) -> None:
        """An echo producing one frame every 20 ms, off the tick's phase, sends each at once."""
        s = sender()
        for n in range(50):
            now = ORIGIN + 0.007 + n * 0.020
            (packet,) = produce(s, now, bytes([n]))
            self.assertEqual(parse_rtp(packet).timestamp, 5000 + 960 * n)
        self.assertEqual(s.stats.packet_count, 50)

    def test_a_late_tick_catches_up_a_few_frames(self) -> None:
        s = sender()
        produce(s, ORIGIN, *[bytes([n]) for n in range(20)])
        packets = s.poll(ORIGIN + 0.200)  # the reactor stalled for 200 ms
        self.assertEqual(len(packets), MAX_CATCH_UP)
        stamps = [parse_rtp(p).timestamp for p in packets]
        self.assertEqual(stamps, [5000 + 960 * slot for slot in range(6, 11)])
        self.assertEqual(len(s.poll(ORIGIN + 0.220)), 1)

    def test_an_echo_that_fell_behind_catches_up_at_once(self) -> None:
        """The caller's audio arrived in a burst after a 60 ms stall: the echoed frames that are
        overdue go out together, stamped with their own slots, and no delay stays behind."""
        s = sender()
        produce(s, ORIGIN + 0.001, b"0")
        for slot in (1, 2, 3):
            s.poll(ORIGIN + slot * 0.020)  # ticks: nothing to send
        packets = produce(s, ORIGIN + 0.081, b"1", b"2", b"3", b"4")  # slot 4
        self.assertEqual([parse_rtp(p).timestamp for p in packets], [5000 + 960 * n for n in (1, 2, 3, 4)])
        self.assertFalse(any(parse_rtp(p).marker for p in packets))
        (packet,) = produce(s, ORIGIN + 0.101, b"5")  # and the next one goes straight out
        self.assertEqual(parse_rtp(packet).timestamp, 5000 + 960 * 5)

    def test_a_pause_is_a_pause_in_the_timeline(self) -> None:
        """Past MAX_CATCH_UP slots with nothing to send, the next frame starts a new talkspurt
        in its own slot, with the marker bit."""
        s = sender()
        produce(s, ORIGIN, b"a")
        for slot in range(1, MAX_CATCH_UP + 2):
            s.poll(ORIGIN + slot * 0.020)
        (packet,) = produce(s, ORIGIN + 0.145, b"b")  # slot 7
        rtp = parse_rtp(packet)
        self.assertEqual((rtp.timestamp, rtp.marker), (5000 + 960 * 7, True))

    def test_rtp_time_maps_now_onto_the_stream(self) -> None:
        s = sender()
        self.assertIsNone(s.rtp_time(ORIGIN))
        produce(s, ORIGIN + 0.041, b"a")  # slot 2 is the stream's first
        self.assertEqual(s.rtp_time(ORIGIN + 0.040), 5000)
        self.assertEqual(s.rtp_time(ORIGIN + 1.040), 5000 + 48000)


class TalkspurtTests(SynchronousTestCase):
    """Marker bit and playout events: what the caller actually hears."""

    def test_playout_starts_and_drains(self) -> None:
        s = sender()
        produce(s, ORIGIN, b"a", b"b")
        self.assertEqual(s.take_events(), [PlayoutStarted(ORIGIN)])
        s.poll(ORIGIN + 0.020)
        for slot in range(2, 2 + MAX_CATCH_UP):  # a gap this short may still be jitter
            s.poll(ORIGIN + slot * 0.020)
        self.assertEqual(s.take_events(), [])
        self.assertTrue(s.wants_tick())
        end = ORIGIN + (2 + MAX_CATCH_UP) * 0.020
        s.poll(end)
        self.assertEqual(s.take_events(), [PlayoutStopped(end, ORIGIN + 0.020, "drained")])
        self.assertFalse(s.wants_tick())

    def test_tick_slot_is_the_first_slot_a_tick_has_work_in(self) -> None:
        """Every tick while frames wait; then only the slot that ends the talkspurt; then none."""
        s = sender()
        self.assertIsNone(s.tick_slot())
        produce(s, ORIGIN + 0.001, b"a", b"b")
        self.assertEqual(s.tick_slot(), 0)  # "b" waits for slot 1
        s.poll(ORIGIN + 0.020)
        self.assertEqual(s.tick_slot(), 1 + MAX_CATCH_UP + 1)
        # Polls before that slot find nothing to do; a frame that comes moves it on.
        for slot in range(2, 1 + MAX_CATCH_UP + 1):
            self.assertEqual(s.poll(ORIGIN + slot * 0.020), [])
        self.assertEqual(s.take_events(), [PlayoutStarted(ORIGIN + 0.001)])
        # In slot 6 (still the same talkspurt), "c" takes the talkspurt's next slot, 2.
        (packet,) = produce(s, ORIGIN + 0.121, b"c")
        self.assertEqual(parse_rtp(packet).timestamp, 5000 + 2 * 960)
        self.assertEqual(s.tick_slot(), 2 + MAX_CATCH_UP + 1)
        self.assertEqual(s.poll(ORIGIN + (2 + MAX_CATCH_UP) * 0.020), [])
        self.assertEqual(s.take_events(), [])
        end = ORIGIN + (2 + MAX_CATCH_UP + 1) * 0.020
        s.poll(end)
        self.assertEqual(s.take_events(), [PlayoutStopped(end, ORIGIN + 0.121, "drained")])
        self.assertIsNone(s.tick_slot())

    def test_tick_slot_while_a_cut_tail_plays(self) -> None:
        """A cut's silent frames go out on their slots: every tick until they are sent."""
        s = sender()
        produce(s, ORIGIN + 0.001, b"a")
        s.stop(ORIGIN + 0.005)
        s.poll(ORIGIN + 0.005)  # the fade
        self.assertEqual(s.tick_slot(), 0)
        s.poll(ORIGIN + 0.040)
        s.poll(ORIGIN + 0.060)
        self.assertIsNone(s.tick_slot())

    def test_a_drained_talkspurt_restarts_the_source(self) -> None:
        s = sender()
        produce(s, ORIGIN, b"a")
        source = s.source
        assert isinstance(source, FrameQueue)
        for n in range(1, MAX_CATCH_UP + 1):
            s.poll(ORIGIN + 0.020 * n)
        self.assertEqual(source.restarts, 0)
        s.poll(ORIGIN + 0.020 * (MAX_CATCH_UP + 1))
        self.assertEqual(source.restarts, 1)


class CleanStopTests(SynchronousTestCase):
    """A cut talkspurt ends with the source's fade at once, then its silence on the grid."""

    def test_the_fade_goes_out_at_once_on_the_next_slot(self) -> None:
        s = sender()
        produce(s, ORIGIN + 0.001, b"a", b"b", b"c")
        s.take_events()
        self.assertEqual(s.stop(ORIGIN + 0.005, "barge_in"), 40)
        # The current slot is taken by "a": the fade is stamped on the next one, but sent now.
        (fade,) = s.poll(ORIGIN + 0.005)
        rtp = parse_rtp(fade)
        self.assertEqual((rtp.payload, rtp.timestamp, rtp.marker), (b"fade", 5000 + 960, False))
        self.assertEqual(s.last_sent_at, ORIGIN + 0.005)
        self.assertEqual(s.take_events(), [PlayoutStopped(ORIGIN + 0.005, ORIGIN + 0.005, "barge_in", 40)])
        self.assertFalse(s.talking)
        self.assertTrue(s.wants_tick())
        self.assertEqual(s.poll(ORIGIN + 0.020), [])  # slot 1 is the fade's
        quiet = s.poll(ORIGIN + 0.040) + s.poll(ORIGIN + 0.060)
        self.assertEqual([parse_rtp(p).payload for p in quiet], [b"quiet", b"quiet"])
        self.assertEqual([parse_rtp(p).timestamp for p in quiet], [5000 + 960 * 2, 5000 + 960 * 3])
        # The silence is not agent audio: no playout events, last_sent_at stays at the fade.
        self.assertEqual(s.last_sent_at, ORIGIN + 0.005)
        self.assertEqual(s.take_events(), [])
        self.assertFalse(s.wants_tick())
        self.assertEqual(s.stats.packet_count, 4)

    def test_new_audio_cuts_the_silence_short_and_is_marked(self) -> None:
        s = sender()
        produce(s, ORIGIN + 0.001, b"a", b"b")
        s.stop(ORIGIN + 0.025)
        (fade,) = s.poll(ORIGIN + 0.025)
        # "b" was never sent: the fade takes its slot, now.
        self.assertEqual(parse_rtp(fade).timestamp, 5000 + 960)
        (packet,) = produce(s, ORIGIN + 0.041, b"new")
        rtp = parse_rtp(packet)
        self.assertEqual((rtp.payload, rtp.marker, rtp.timestamp), (b"new", True, 5000 + 960 * 2))
        self.assertEqual([type(e) for e in s.take_events()], [PlayoutStarted, PlayoutStopped, PlayoutStarted])

    def test_new_audio_never_takes_a_slot_before_the_fade(self) -> None:
        s = sender()
        produce(s, ORIGIN + 0.001, b"a")
        s.stop(ORIGIN + 0.002)  # the fade is stamped on slot 1, ahead of now
        (fade,) = s.poll(ORIGIN + 0.002)
        self.assertEqual(produce(s, ORIGIN + 0.003, b"new"), [])
        self.assertEqual(s.poll(ORIGIN + 0.020), [])  # slot 1 is the fade's
        (packet,) = s.poll(ORIGIN + 0.040)
        self.assertEqual(parse_rtp(packet).timestamp, 5000 + 960 * 2)

    def test_no_ending_when_nothing_plays(self) -> None:
        s = sender()
        produce(s, ORIGIN, b"a")
        for n in range(1, MAX_CATCH_UP + 2):
            s.poll(ORIGIN + 0.020 * n)
        s.take_events()
        self.assertEqual(s.stop(ORIGIN + 0.2), 0)
        self.assertEqual(s.poll(ORIGIN + 0.2), [])
        self.assertEqual(s.take_events(), [])
        source = s.source
        assert isinstance(source, FrameQueue)
        self.assertEqual(source.cuts, [False])

    def test_stop_drops_the_queue_unencoded_and_marks_the_resume(self) -> None:
        audio = OutboundAudio(48000)
        s = sender(audio)
        audio.add(b"\x00\x10" * 960 * 10)  # 200 ms
        s.poll(ORIGIN)
        self.assertEqual(audio.frames_encoded, 1)
        self.assertEqual(s.stop(ORIGIN + 0.005), 180)
        # The fade and a silent frame are encoded (then a DTX frame, a TOC byte); the other eight never are.
        self.assertEqual(audio.frames_encoded, 3)
        self.assertEqual(
            s.take_events(),
            [PlayoutStarted(ORIGIN), PlayoutStopped(ORIGIN + 0.005, ORIGIN + 0.005, "stopped", 180)],
        )
        audio.add(b"\x00\x10" * 960)
        # The fade took slot 1; the new audio waits for slot 2 (the silence behind the fade is skipped).
        fade, new = s.poll(ORIGIN + 0.021) + s.poll(ORIGIN + 0.040)
        self.assertEqual([parse_rtp(p).marker for p in (fade, new)], [False, True])
        # The new talkspurt has an encoder of its own.
        self.assertEqual(audio.encoder_starts, 2)


class SilenceTests(SynchronousTestCase):
    """Nothing is encoded or sent that nobody would hear; the caller's timeline still shows the gap."""

    def test_a_silent_slot_sends_nothing_and_the_resume_is_marked(self) -> None:
        s = sender()
        produce(s, ORIGIN, b"a", b"", b"", b"b")
        packets = [s.poll(ORIGIN + 0.020 * n) for n in range(1, 4)]
        self.assertEqual([len(p) for p in packets], [0, 0, 1])
        first = parse_rtp(produce(s, ORIGIN + 0.081, b"c")[0])
        resumed = parse_rtp(packets[2][0])
        # Sequence numbers stay contiguous (no loss); the timestamp jumps the gap.
        self.assertEqual((resumed.sequence_number, resumed.timestamp, resumed.marker), (101, 5000 + 960 * 3, True))
        self.assertEqual((first.sequence_number, first.timestamp, first.marker), (102, 5000 + 960 * 4, False))

    def test_silence_keeps_the_talkspurt_open_without_a_burst_after_it(self) -> None:
        s = sender()
        produce(s, ORIGIN, b"a", *[b""] * 10)
        for n in range(1, 11):
            self.assertEqual(s.poll(ORIGIN + 0.020 * n), [])
            self.assertTrue(s.talking)
        (packet,) = produce(s, ORIGIN + 0.221, b"b")
        self.assertEqual(parse_rtp(packet).timestamp, 5000 + 960 * 11)
        self.assertEqual(s.take_events(), [PlayoutStarted(ORIGIN)])

    def test_outbound_audio_encodes_one_inaudible_frame_then_skips(self) -> None:
        audio = OutboundAudio(48000)
        audio.add(tone_pcm(20) + bytes(1920 * 3) + tone_pcm(20))
        taken = [audio.pop() for _ in range(5)]
        self.assertEqual([bool(p) for p in taken[:4]], [True, True, False, False])
        self.assertEqual(taken[2:4], [SILENT, SILENT])
        self.assertTrue(taken[4])
        self.assertIsNone(audio.pop())
        self.assertEqual((audio.frames_encoded, audio.frames_silent), (3, 2))

    def test_quiet_noise_is_inaudible_and_speech_is_not(self) -> None:
        self.assertTrue(is_inaudible(bytes(1920)))
        self.assertTrue(is_inaudible(tone_pcm(20, amplitude=8)))  # about -72 dBFS RMS
        self.assertFalse(is_inaudible(tone_pcm(20, amplitude=20)))  # about -64 dBFS
        self.assertFalse(is_inaudible(tone_pcm(20, rate=16000)))

    def test_after_a_stop_the_first_inaudible_frame_is_sent_again(self) -> None:
        audio = OutboundAudio(48000)
        audio.add(tone_pcm(20) + bytes(1920))
        self.assertTrue(audio.pop())
        self.assertTrue(audio.pop())
        audio.clear()
        audio.add(bytes(1920))
        self.assertTrue(audio.pop())


class MidExtensionTests(SynchronousTestCase):
    """RFC 8843 §15: every packet carries the MID when the client offered the extension."""

    def test_one_byte_form(self) -> None:
        block = mid_extension(4, "0")
        self.assertEqual(block, bytes.fromhex("bede0001") + bytes([0x40]) + b"0" + bytes(2))

    def test_two_byte_form_for_large_ids(self) -> None:
        block = mid_extension(15, "audio")
        self.assertEqual(block[:2], b"\x10\x00")
        self.assertEqual(block[4:11], bytes([15, 5]) + b"audio")

    def test_every_packet_carries_it(self) -> None:
        s = sender(header_extension=mid_extension(3, "0"))
        packets = produce(s, ORIGIN, b"a", b"b") + s.poll(ORIGIN + 0.02)
        for packet in packets:
            rtp = parse_rtp(packet)
            self.assertEqual(rtp.extension_profile, 0xBEDE)
            self.assertEqual(rtp.extension, bytes([0x30]) + b"0" + bytes(2))
        self.assertEqual([parse_rtp(p).payload for p in packets], [b"a", b"b"])

    def test_bad_values_are_refused(self) -> None:
        for ext_id, mid in ((0, "0"), (256, "0"), (1, ""), (1, "x" * 256)):
            with self.assertRaises(ValueError):
                mid_extension(ext_id, mid)


class ShortcutTests(SynchronousTestCase):
    """poll's shortcut for a frame in time sends what the general path (poll_slot) sends."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["frame", "silence", "two", "none", "stop"]),
                st.floats(min_value=0.0, max_value=0.15),
            ),
            max_size=60,
        )
    )
    def test_same_packets_events_and_state(self, steps: list[tuple[str, float]]) -> None:
        """Random producers, gaps and stops: both senders agree on every packet, event and slot."""
        fast, general = sender(), sender()
        now = ORIGIN + 0.003
        for i, (what, gap) in enumerate(steps):
            now += gap
            out = []
            for s, poll in ((fast, fast.poll), (general, lambda t, s=general: s.poll_slot(s.slot_at(t), t))):
                if what == "stop":
                    s.stop(now)
                source = s.source
                assert isinstance(source, FrameQueue)
                if what == "frame":
                    source.add(b"f%d" % i)
                elif what == "silence":
                    source.add(b"")
                elif what == "two":
                    source.add(b"a%d" % i, b"b%d" % i)
                out.append((poll(now), s.take_events(), s.tick_slot(), s.talking, s.last_sent_at))
            self.assertEqual(out[0], out[1])
