"""A session's agent audio: encoded when sent, a cut that fades into silence, a fresh encoder per talkspurt."""

from __future__ import annotations

import array
import math

from twisted.trial.unittest import SynchronousTestCase

from voiceedge.media.detection import DetectionSettings
from voiceedge.media.opus import OpusDecoder, OpusEncoder
from voiceedge.media.speech import SpeechStarted, SpeechStopped, frame_level_db
from voiceedge.transceiver.audio import MAX_TRIM_FRAMES, SILENCE_FRAMES, InboundAudio, OutboundAudio

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
        audio = OutboundAudio(RATE, stop_tail="silence")
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
        # What the caller's decoder conceals after it is silence, not a stretched syllable.
        self.assertLess(level(decoder.conceal()), -80)
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
        # Kept: the first frame of silence after the cut still carries the tone (the look-ahead).
        kept, decoder = OpusEncoder(RATE, complexity=5), OpusDecoder(RATE)
        for n in range(10):
            decoder.decode(kept.encode(loud[n * FRAME_BYTES : (n + 1) * FRAME_BYTES]))
        decoder.conceal(RATE // 50 * 3)  # the caller's decoder conceals through the gap
        burst = level(decoder.decode(kept.encode(bytes(FRAME_BYTES))))
        # Ours: the queue's encoder is replaced when the talkspurt is cut.
        audio, decoder = OutboundAudio(RATE, stop_tail="abrupt"), OpusDecoder(RATE)
        audio.add(loud)
        for _ in range(10):
            decoder.decode(audio.pop() or b"")
        audio.cut(True)
        decoder.conceal(RATE // 50 * 3)
        audio.add(bytes(FRAME_BYTES))
        clean = level(decoder.decode(audio.pop() or b""))
        self.assertEqual(audio.encoders_opened, 2)
        self.assertGreater(burst, -40)
        self.assertLess(clean, burst - 20)

    def test_restart_opens_a_new_encoder_only_when_audio_comes(self) -> None:
        audio = OutboundAudio(RATE)
        audio.add(tone(1))
        audio.pop()
        audio.restart()
        self.assertEqual(audio.encoders_opened, 1)
        audio.add(tone(1))
        audio.pop()
        self.assertEqual(audio.encoders_opened, 2)

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
