"""A session's audio: the agent's encoded when sent, a cut that fades into silence, a fresh encoder per
talkspurt; the caller's heard by its RTP time."""

from __future__ import annotations

import array
import collections
import math

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voiceedge.agents.interfaces import AudioFrame
from voiceedge.media.detection import DetectionSettings
from voiceedge.media.opus import OpusDecoder, OpusEncoder
from voiceedge.media.speech import SpeechStarted, SpeechStopped, frame_level_db
from voiceedge.media.timeline import MediaTimeline
from tests.signals import speech_like
from voiceedge.transceiver.audio import (
    DEFAULT_APPLICATION,
    MAX_TRIM_FRAMES,
    SILENCE_FRAMES,
    InboundAudio,
    OutboundAudio,
)

RATE = 24000
FRAME_BYTES = RATE // 50 * 2


def tone(frames: int, hz: float = 220.0, amplitude: int = 10000) -> bytes:
    """A sine at ``hz``: speech-loud, never silent."""
    samples = array.array(
        "h", (int(amplitude * math.sin(2 * math.pi * hz * n / RATE)) for n in range(frames * RATE // 50))
    )
    return samples.tobytes()


def level(pcm: bytes) -> float:
    return frame_level_db(array.array("h", pcm))


class OutboundAudioTests(SynchronousTestCase):
    """Encode on pop; cut; trim; restart."""

    def test_a_cut_fades_the_next_frame_into_silence(self) -> None:
        # What the caller's decoder conceals after the ending is silence, not a
        # stretched syllable (the abrupt cut below: above -30 dB). CELT's decoder
        # fades out through its own floor, about -65 to -70 dBFS; SILK's is exact.
        for application, concealed_below in (("lowdelay", -65), ("voip", -80)):
            audio = OutboundAudio(RATE, application=application, stop_tail="silence")
            audio.add(tone(10))
            decoder = OpusDecoder(RATE)
            for _ in range(3):
                self.assertGreater(level(decoder.decode(audio.pop() or b"")), -20)
            dropped, frames = audio.cut(True)
            self.assertEqual(dropped, 140)
            self.assertEqual(len(frames), 1 + SILENCE_FRAMES)
            # Three frames heard and one faded: the other six were never encoded.
            self.assertEqual(audio.frames_encoded, 3 + 1 + SILENCE_FRAMES)
            fade = decoder.decode(frames[0])
            # The fade's first milliseconds are the word going on (no click), its end is near silence.
            quarter = len(fade) // 4
            self.assertGreater(level(fade[:quarter]), -20)
            self.assertLess(level(fade[-quarter:]), -40)
            for frame in frames[1:]:
                self.assertLess(level(decoder.decode(frame)), -55)
            self.assertLess(level(decoder.conceal()), concealed_below, application)
            self.assertFalse(audio)
            self.assertEqual(audio.queued_ms(), 0)

    def test_the_abrupt_cut_leaves_the_decoder_concealing_a_word(self) -> None:
        """For comparison: what a cut without an ending leaves the caller's decoder with."""
        audio = OutboundAudio(RATE, stop_tail="abrupt")
        audio.add(tone(10))
        decoder = OpusDecoder(RATE)
        for _ in range(3):
            decoder.decode(audio.pop() or b"")
        self.assertEqual(audio.cut(True), (140, []))
        self.assertGreater(level(decoder.conceal()), -30)

    def test_dtx_ends_with_a_toc_only_frame(self) -> None:
        audio = OutboundAudio(RATE, stop_tail="dtx")
        audio.add(tone(3))
        first = audio.pop()
        assert first is not None
        _, frames = audio.cut(True)
        self.assertEqual(len(frames), 3)  # fade, one silent frame, DTX
        self.assertEqual(frames[-1], bytes([frames[-2][0] & 0xFC]))
        decoder = OpusDecoder(RATE)
        for frame in (first, *frames):
            decoder.decode(frame)

    def test_nothing_to_end_when_nothing_was_heard(self) -> None:
        audio = OutboundAudio(RATE)
        audio.add(tone(2))
        self.assertEqual(audio.cut(True), (40, []))
        audio.add(tone(2))
        audio.pop()
        self.assertEqual(audio.cut(False), (20, []))
        self.assertEqual(audio.frames_encoded, 1)

    def test_the_fade_is_made_of_the_partial_frame_when_no_whole_one_waits(self) -> None:
        audio = OutboundAudio(RATE)
        audio.add(tone(1))
        audio.pop()
        audio.add(tone(1)[: FRAME_BYTES // 2])
        self.assertEqual(audio.queued_ms(), 10)
        dropped, frames = audio.cut(True)
        self.assertEqual((dropped, len(frames)), (10, 1 + SILENCE_FRAMES))

    def test_every_talkspurt_starts_from_a_fresh_encoder(self) -> None:
        """The burst: an encoder kept across a cut starts the next reply with the cut word's last milliseconds."""
        loud = tone(10)
        # The first 5 ms of the first frame after a gap are the caller's decoder
        # overlapping what it concealed, whatever the encoder did: compared after them.
        after_overlap = RATE // 200 * 2
        for application in ("lowdelay", "voip"):
            # Kept: the first frame of silence after the cut still carries the tone.
            kept, decoder = OpusEncoder(RATE, complexity=5, application=application), OpusDecoder(RATE)
            for n in range(10):
                decoder.decode(kept.encode(loud[n * FRAME_BYTES : (n + 1) * FRAME_BYTES]))
            decoder.conceal(RATE // 50 * 3)  # the caller's decoder conceals through the gap
            burst = level(decoder.decode(kept.encode(bytes(FRAME_BYTES)))[after_overlap:])
            # Ours: the queue's encoder starts over when the talkspurt is cut.
            audio = OutboundAudio(RATE, application=application, stop_tail="abrupt")
            decoder = OpusDecoder(RATE)
            audio.add(loud)
            for _ in range(10):
                decoder.decode(audio.pop() or b"")
            audio.cut(True)
            decoder.conceal(RATE // 50 * 3)
            audio.add(bytes(FRAME_BYTES))
            clean = level(decoder.decode(audio.pop() or b"")[after_overlap:])
            self.assertEqual(audio.encoder_starts, 2)
            self.assertGreater(burst, -55, application)
            self.assertLess(clean, burst - 20, application)

    def test_restart_starts_the_encoder_over_only_when_audio_comes(self) -> None:
        audio = OutboundAudio(RATE)
        audio.add(tone(1))
        audio.pop()
        encoder = audio._encoder
        audio.restart()
        self.assertEqual(audio.encoder_starts, 1)
        audio.add(tone(1))
        audio.pop()
        self.assertEqual(audio.encoder_starts, 2)
        # One encoder for the call, reset per talkspurt rather than opened again.
        self.assertIs(audio._encoder, encoder)

    def test_a_restarted_encoder_codes_as_a_fresh_one(self) -> None:
        speech = speech_like(RATE, 20)
        audio = OutboundAudio(RATE)
        for frame in speech[:10]:
            audio.add(frame)
            audio.pop()
        audio.restart()
        fresh = OutboundAudio(RATE)
        for frame in speech[10:]:
            audio.add(frame)
            fresh.add(frame)
            self.assertEqual(audio.pop(), fresh.pop())

    def test_the_application_decides_the_opus_mode(self) -> None:
        """``lowdelay`` (the default) codes speech with CELT alone; ``voip`` with SILK or hybrid (RFC 6716 §3.1)."""
        speech = speech_like(RATE, 25)

        def configs(audio: OutboundAudio) -> set[int]:
            seen = set()
            for frame in speech:
                audio.add(frame)
                payload = audio.pop()
                assert payload
                seen.add(payload[0] >> 3)
            return seen

        self.assertEqual(OutboundAudio(RATE).application, "lowdelay")
        self.assertTrue(all(config >= 16 for config in configs(OutboundAudio(RATE))))
        self.assertTrue(all(config < 16 for config in configs(OutboundAudio(RATE, application="voip"))))

    def test_bad_application(self) -> None:
        with self.assertRaises(ValueError):
            OutboundAudio(RATE, application="music")

    def test_leading_silence_is_trimmed_at_the_start_of_a_talkspurt_only(self) -> None:
        audio = OutboundAudio(RATE)
        quiet = bytes(FRAME_BYTES * 5)
        audio.add(quiet + tone(2) + quiet, trim=True)
        self.assertEqual((audio.frames_trimmed, audio.queued_ms()), (5, 140))
        # More audio while frames wait, or without trim: silence inside a reply is kept.
        audio.add(quiet, trim=True)
        self.assertEqual(audio.queued_ms(), 240)
        audio.cut(False)
        audio.add(quiet[:-2], trim=True)
        self.assertEqual((audio.frames_trimmed, audio.queued_ms()), (9, 19))

    def test_a_stream_of_silence_is_trimmed_for_200_ms_only(self) -> None:
        audio = OutboundAudio(RATE)
        for _ in range(40):
            audio.add(bytes(FRAME_BYTES), trim=not audio)
        self.assertEqual((audio.frames_trimmed, audio.queued_ms()), (MAX_TRIM_FRAMES, 800 - 20 * MAX_TRIM_FRAMES))
        audio.restart()
        audio.cut(False)
        audio.add(bytes(FRAME_BYTES), trim=True)
        self.assertEqual(audio.frames_trimmed, MAX_TRIM_FRAMES + 1)

    def test_bad_stop_tail(self) -> None:
        with self.assertRaises(ValueError):
            OutboundAudio(RATE, stop_tail="quiet")  # type: ignore[arg-type]


class InboundDetectionTests(SynchronousTestCase):
    """The call's one detector: built from settings, changed per call."""

    def make(self, settings: DetectionSettings) -> tuple[InboundAudio, list[object]]:
        events: list[object] = []
        return InboundAudio(RATE, settings, lambda frame: None, events.append), events

    def feed(self, inbound: InboundAudio, pcm: bytes, start: float) -> None:
        detector = inbound._detector
        for n in range(len(pcm) // FRAME_BYTES):
            for event in detector.feed(pcm[n * FRAME_BYTES : (n + 1) * FRAME_BYTES], start + n * 0.02):
                inbound._on_speech(event)

    def test_knobs_change_in_place_and_a_new_kind_ends_the_open_turn(self) -> None:
        inbound, events = self.make(DetectionSettings("energy", silence_ms=500))
        self.feed(inbound, bytes(FRAME_BYTES * 10) + tone(10), 0.0)
        self.assertEqual([type(e) for e in events], [SpeechStarted])
        detector = inbound._detector
        inbound.set_detection(DetectionSettings("energy", silence_ms=900), 0.4)
        self.assertIs(inbound._detector, detector)
        self.assertEqual(detector.deadline(), 0.4 + 0.9)
        with self.assertRaises(ValueError):
            inbound.set_detection(DetectionSettings("energy", threshold_db=-5), 0.4)
        self.assertEqual(inbound.detection.silence_ms, 900)
        inbound.set_detection(DetectionSettings("silero"), 0.45)
        self.assertIsNot(inbound._detector, detector)
        self.assertEqual(events[-1], SpeechStopped(0.45, 0.45))
        self.assertEqual(inbound.detection.detector, "silero")


class _Call:
    """An InboundAudio driven as the host drives it: one timer at its deadline, on a Clock."""

    def __init__(self, first_timestamp: int = 0) -> None:
        self.clock = Clock()
        self.events: list[object] = []
        self.frames: list[AudioFrame] = []
        self.inbound = InboundAudio(RATE, DetectionSettings("energy", silence_ms=500), self.frames.append, self.events.append)
        self.encoder = OpusEncoder(RATE)
        self.speech = tone(1)
        self.first_timestamp = first_timestamp
        self.timer: IDelayedCall | None = None

    def arm(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        due = self.inbound.deadline()
        if due is not None:
            self.timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self.fire)

    def fire(self) -> None:
        self.timer = None
        self.inbound.drain(self.clock.seconds())
        self.arm()

    def packet(self, sequence: int, frame: int) -> None:
        """The packet ``sequence`` carrying frame ``frame`` of the caller's audio (its RTP time) comes in now."""
        timestamp = (self.first_timestamp + frame * 960) & 0xFFFFFFFF
        # A quiet lead-in first: the detector's noise floor.
        payload = self.encoder.encode(self.speech if frame >= 10 else bytes(FRAME_BYTES))
        self.inbound.packet_received(sequence & 0xFFFF, timestamp, payload, self.clock.seconds())
        self.arm()

    def live(self, sequences: range, frame_offset: int = 0) -> None:
        """Packets one per 20 ms, as a caller sends them."""
        for sequence in sequences:
            self.packet(sequence, sequence + frame_offset)
            self.clock.advance(0.02)

    def wait(self, seconds: float) -> None:
        """Time passes, the loop on time: the timer fires when due."""
        self.clock.pump([0.01] * round(seconds / 0.01))

    def stall(self, seconds: float, backlog: range, frame_offset: int = 0) -> None:
        """The event loop is held up ``seconds``; then its overdue timer runs, then it reads ``backlog`` at once."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
            self.timer = None
            self.clock.advance(seconds)
            self.fire()
        else:
            self.clock.advance(seconds)
        for sequence in backlog:
            self.packet(sequence, sequence + frame_offset)
        self.clock.advance(0.02)


class InboundTimelineTests(SynchronousTestCase):
    """The detector hears the caller's audio by its RTP time, not by when the event loop got to it."""

    def kinds(self, call: _Call) -> list[type]:
        return [type(e) for e in call.events]

    def test_a_backlog_read_after_a_stall_is_the_caller_talking_on(self) -> None:
        # 1 s of speech, the loop stalls 600 ms (longer than silence_ms) with
        # the caller's next 600 ms queued, then it reads them all at once and
        # the sentence goes on for 1 s more.
        call = _Call(first_timestamp=0xFFFFFFFF - 960 * 20)  # and the timestamps wrap mid-sentence
        call.live(range(50))
        call.stall(0.58, range(50, 80))
        self.assertEqual(self.kinds(call), [SpeechStarted])
        call.live(range(80, 130))
        self.assertEqual(self.kinds(call), [SpeechStarted])
        call.wait(1.0)
        self.assertEqual(self.kinds(call), [SpeechStarted, SpeechStopped])
        stopped = call.events[-1]
        assert isinstance(stopped, SpeechStopped)
        # The turn ends 500 ms after the last voiced frame's end, on the audio's timeline...
        self.assertAlmostEqual(stopped.time, 130 * 0.02, places=6)
        self.assertLessEqual(abs(stopped.at - (130 * 0.02 + 0.5)), 0.011)  # the Clock steps 10 ms
        # ...which is the clock where nothing was late.
        assert stopped.arrival is not None
        self.assertAlmostEqual(stopped.arrival, 130 * 0.02, places=6)
        # The backlog's frames are where they were spoken, and say when they came.
        self.assertAlmostEqual(call.frames[60].start, 1.2, places=6)
        self.assertAlmostEqual(call.frames[60].arrival, 1.58, places=6)
        self.assertEqual(call.inbound.timeline.reanchors, 0)

    def test_a_real_gap_in_the_timestamps_still_ends_the_turn(self) -> None:
        # The same arrivals, but the packets read after the stall are audio
        # from 600 ms later: the caller paused.
        call = _Call()
        call.live(range(50))
        call.stall(0.58, range(50, 80), frame_offset=30)
        self.assertEqual(self.kinds(call)[:2], [SpeechStarted, SpeechStopped])
        stopped = call.events[1]
        assert isinstance(stopped, SpeechStopped)
        self.assertAlmostEqual(stopped.time, 1.0, places=6)
        call.live(range(80, 130), frame_offset=30)
        call.wait(1.0)
        self.assertEqual(self.kinds(call), [SpeechStarted, SpeechStopped] * 2)

    def test_a_stall_with_nothing_queued_ends_the_turn_a_moment_late(self) -> None:
        call = _Call()
        call.live(range(50))
        call.stall(0.58, range(0))
        self.assertEqual(self.kinds(call), [SpeechStarted, SpeechStopped])
        stopped = call.events[1]
        assert isinstance(stopped, SpeechStopped)
        self.assertAlmostEqual(stopped.time, 1.0, places=6)


class InboundLossTests(SynchronousTestCase):
    """A lost packet is recovered from the next one's in-band FEC when it is already here, concealed otherwise."""

    def inbound(self) -> tuple[InboundAudio, list[AudioFrame]]:
        frames: list[AudioFrame] = []
        return InboundAudio(RATE, DetectionSettings("energy"), frames.append, lambda event: None), frames

    def test_a_lost_packet_is_recovered_from_the_next_ones_fec(self) -> None:
        encoder = OpusEncoder(RATE, packet_loss_percent=20)
        payloads = [encoder.encode(frame) for frame in speech_like(RATE, 10)]
        inbound, frames = self.inbound()
        reference = OpusDecoder(RATE)
        for sequence in (0, 1, 2, 3, 4, 5, 7):  # 6 is lost; 7 carries its redundant copy
            inbound.packet_received(sequence, sequence * 960, payloads[sequence], sequence * 0.02)
        for payload in payloads[:6]:
            reference.decode(payload)
        self.assertEqual([f.lost for f in frames], [False] * 6 + [True, False])
        self.assertEqual(frames[6].pcm, reference.decode_fec(payloads[7]))
        self.assertNotEqual(frames[6].pcm, OpusDecoder(RATE).conceal())
        self.assertEqual(frames[7].pcm, reference.decode(payloads[7]))
        self.assertEqual((inbound.frames_decoded, inbound.frames_concealed, inbound.decode_errors), (7, 1, 0))
        if reference.carries_fec(payloads[7]) is None:  # a libopus before 1.5
            self.assertEqual((inbound.frames_recovered, inbound.repairs), (0, {"fec_or_plc": 1}))
        else:
            self.assertEqual((inbound.frames_recovered, inbound.repairs), (1, {"fec": 1}))

    def test_a_loss_with_no_fec_in_the_next_packet_is_concealed_and_counted(self) -> None:
        encoder = OpusEncoder(RATE)  # FEC off, as a sender may have it
        payloads = [encoder.encode(frame) for frame in speech_like(RATE, 4)]
        repairs: collections.Counter[str] = collections.Counter()
        frames: list[AudioFrame] = []
        inbound = InboundAudio(RATE, DetectionSettings("energy"), frames.append, lambda event: None, repairs)
        for sequence in (0, 1, 3):
            inbound.packet_received(sequence, sequence * 960, payloads[sequence], sequence * 0.02)
        reference = OpusDecoder(RATE)
        for payload in payloads[:2]:
            reference.decode(payload)
        self.assertEqual(frames[2].pcm, reference.conceal())
        expected = "plc" if reference.carries_fec(payloads[3]) is False else "fec_or_plc"
        # The process's counter (shared by its sessions) is the one handed in.
        self.assertEqual((inbound.frames_recovered, repairs), (0, {expected: 1}))

    def test_a_malformed_next_packet_leaves_the_loss_concealed(self) -> None:
        encoder = OpusEncoder(RATE, packet_loss_percent=20)
        payloads = [encoder.encode(frame) for frame in speech_like(RATE, 4)]
        inbound, frames = self.inbound()
        for sequence, payload in ((0, payloads[0]), (1, payloads[1]), (3, b"\x0b\x03" + bytes(10))):
            inbound.packet_received(sequence, sequence * 960, payload, sequence * 0.02)
        self.assertEqual([(f.lost, len(f.pcm)) for f in frames], [(False, FRAME_BYTES)] * 2 + [(True, FRAME_BYTES), (False, FRAME_BYTES)])
        self.assertEqual((inbound.frames_decoded, inbound.frames_concealed, inbound.decode_errors), (2, 2, 1))
        # The loss before the malformed packet, and the malformed packet itself.
        self.assertEqual(sum(inbound.repairs.values()), 2)
        self.assertEqual(inbound.repairs["fec"], 0)


class MediaTimelineTests(SynchronousTestCase):
    """RTP timestamps to the audio's timeline."""

    def test_contiguous_frames_read_late_stay_contiguous(self) -> None:
        timeline = MediaTimeline()
        self.assertEqual(timeline.place(1000, 10.0), 10.0)
        self.assertAlmostEqual(timeline.place(1960, 10.02), 10.02)
        # Two frames read together 100 ms late.
        self.assertAlmostEqual(timeline.place(2920, 10.14), 10.04)
        self.assertAlmostEqual(timeline.lag, 0.10)
        self.assertAlmostEqual(timeline.place(3880, 10.14), 10.06)
        self.assertAlmostEqual(timeline.lag, 0.08)
        self.assertAlmostEqual(timeline.media_time(10.2), 10.12)
        self.assertAlmostEqual(timeline.clock_time(10.5), 10.58)

    def test_the_least_delayed_frame_anchors(self) -> None:
        timeline = MediaTimeline()
        timeline.place(0, 5.03)  # the first frame was held up 30 ms
        self.assertAlmostEqual(timeline.place(960, 5.02), 5.02)
        self.assertAlmostEqual(timeline.lag, 0.0)

    def test_timestamps_wrap(self) -> None:
        timeline = MediaTimeline()
        timeline.place(0xFFFFFC40, 1.0)  # 960 before the wrap
        self.assertAlmostEqual(timeline.place(0, 1.02), 1.02)
        self.assertAlmostEqual(timeline.place(960, 1.04), 1.04)
        self.assertEqual(timeline.reanchors, 0)

    def test_a_sender_restarting_its_timestamps_reanchors(self) -> None:
        timeline = MediaTimeline()
        timeline.place(500_000, 1.0)
        timeline.place(500_960, 1.02)
        # A new stream whose timestamps start lower: placed at its arrival, not in the past.
        self.assertEqual(timeline.place(7, 1.5), 1.5)
        self.assertAlmostEqual(timeline.place(967, 1.52), 1.52)
        self.assertEqual(timeline.reanchors, 1)
        # One far behind the clock (a huge jump back, or a new stream with the same timestamps).
        self.assertEqual(timeline.place(967 + 960, 9.0), 9.0)
        self.assertEqual(timeline.reanchors, 2)

    def test_a_jump_forward_is_a_gap(self) -> None:
        timeline = MediaTimeline()
        timeline.place(0, 1.0)
        self.assertAlmostEqual(timeline.place(48000 * 3, 1.6), 1.6)
        self.assertEqual(timeline.reanchors, 0)


class OpusFrameConstructionTests(SynchronousTestCase):
    """The passthrough receiver builds its OpusFrames without their __init__: the same frames."""

    def test_a_frame_built_fast_is_an_opus_frame(self) -> None:
        from voiceedge.agents.interfaces import OpusFrame
        from voiceedge.transceiver.audio import _opus_frame

        fast, plain = _opus_frame(b"\x78\x01", 960, 12.5), OpusFrame(b"\x78\x01", 960, 12.5)
        self.assertIs(type(fast), OpusFrame)
        self.assertEqual(fast, plain)
        self.assertEqual(hash(fast), hash(plain))
        self.assertEqual(repr(fast), repr(plain))
        self.assertFalse(fast.lost)
        with self.assertRaises(AttributeError):  # still frozen (FrozenInstanceError)
            fast.payload = b""  # type: ignore[misc]
