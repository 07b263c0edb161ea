# -*- test-case-name: tests.test_speech -*-
"""Tests for voiceedge.media.speech: the energy speech detector, on synthetic and real speech."""

from __future__ import annotations

import array
import math
import random
import shutil
import subprocess
import wave
from pathlib import Path

from av import AudioFrame, AudioResampler
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.cases import rel

from voiceedge.media.opus import OpusDecoder, OpusEncoder
from voiceedge.media.speech import (
    SpeechDetector,
    SpeechEvent,
    SpeechStarted,
    SpeechStopped,
    frame_level_db,
)

RATE = 16000
FRAME = RATE // 50


def signal(
    seconds: float,
    tone: list[tuple[float, float]] = [],
    tone_db: float = -20.0,
    noise_db: float = -60.0,
    rate: int = RATE,
    seed: int = 1,
) -> bytes:
    """PCM16: Gaussian noise at ``noise_db`` dBFS, plus a 300 Hz tone at ``tone_db``
    (RMS) during each (start, end) interval in seconds."""
    rng = random.Random(seed)
    sigma = 32768 * 10 ** (noise_db / 20)
    amplitude = 32768 * 10 ** (tone_db / 20) * math.sqrt(2)
    out = array.array("h")
    for i in range(int(seconds * rate)):
        t = i / rate
        x = rng.gauss(0.0, sigma)
        if any(start <= t < end for start, end in tone):
            x += amplitude * math.sin(2 * math.pi * 300 * t)
        out.append(max(-32768, min(32767, round(x))))
    return out.tobytes()


def run(
    detector: SpeechDetector, pcm: bytes, start: float = 0.0, chunk: int = FRAME
) -> list[SpeechEvent]:
    """Feed ``pcm`` in chunks of ``chunk`` samples, timed from ``start``."""
    events: list[SpeechEvent] = []
    rate = detector.sample_rate
    for offset in range(0, len(pcm), chunk * 2):
        events += detector.feed(pcm[offset : offset + chunk * 2], start + offset / 2 / rate)
    return events


def summary(events: list[SpeechEvent]) -> list[tuple[str, float, float]]:
    """Events as (kind, time, at), times rounded to the microsecond; a stop's kind is its reason."""
    return [
        ("start" if isinstance(e, SpeechStarted) else e.reason, round(e.time, 6), round(e.at, 6))
        for e in events
    ]


def espeak(testcase: SynchronousTestCase, text: str) -> tuple[int, array.array[int]]:
    """Speak ``text`` with espeak-ng into the test's own directory; return its sample rate and samples."""
    if shutil.which("espeak-ng") is None:
        raise SkipTest("espeak-ng is not installed")
    directory = Path(testcase.mktemp()).resolve()
    directory.mkdir(parents=True)
    path = directory / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return wav.getframerate(), array.array("h", wav.readframes(wav.getnframes()))


def padded(rate: int, speech: array.array[int], before: float, after: float) -> array.array[int]:
    """``speech`` between stretches of silence, all over a -60 dBFS background."""
    rng = random.Random(7)
    out = array.array("h", bytes(int(before * rate) * 2))
    out += speech
    out += array.array("h", bytes(int(after * rate) * 2))
    for i, x in enumerate(out):
        out[i] = max(-32768, min(32767, x + round(rng.gauss(0.0, 33.0))))
    return out


def bounds(rate: int, speech: array.array[int]) -> tuple[float, float]:
    """First and last instants where ``speech`` exceeds 1 % of full scale."""
    loud = [i for i, x in enumerate(speech) if abs(x) > 328]
    return loud[0] / rate, (loud[-1] + 1) / rate


class SpeechDetectorTests(SynchronousTestCase):
    """The energy detector on synthetic tones in noise: starts, stops, noise floor, timers, settings."""

    def test_frame_level(self) -> None:
        """Levels are RMS dBFS; digital silence is -100."""
        sine = array.array("h", (round(16384 * math.sin(2 * math.pi * i / 32)) for i in range(320)))
        self.assertApproximates(frame_level_db(sine), 20 * math.log10(0.5 / math.sqrt(2)), 0.05)
        self.assertApproximates(frame_level_db(array.array("h", [-32768] * 320)), 0.0, rel(0.0))
        self.assertEqual(frame_level_db(array.array("h", [0] * 320)), -100.0)

    def test_tone_burst_in_noise(self) -> None:
        """One start at the burst's first frame and one stop at its last, silence_ms later."""
        detector = SpeechDetector(RATE, threshold_db=12, min_speech_ms=100, silence_ms=500)
        events = run(detector, signal(3.0, [(1.0, 2.0)]))
        self.assertEqual(summary(events), [
            ("start", 1.0, 1.1),
            ("silence", 2.0, 2.5),
        ])
        self.assertFalse(detector.speaking)
        self.assertApproximates(detector.noise_floor_db, -60.0, 2.0)

    def test_odd_chunks_give_the_same_events(self) -> None:
        """Chunks of any size are reassembled into 20 ms frames with the right times."""
        pcm = signal(3.0, [(1.0, 2.0)])
        framed = summary(run(SpeechDetector(RATE), pcm))
        self.assertEqual(len(framed), 2)
        for chunk in (7, 333, 1000):
            self.assertEqual(summary(run(SpeechDetector(RATE), pcm, chunk=chunk)), framed)

    def test_short_click_is_not_speech(self) -> None:
        """Sound shorter than min_speech_ms starts no turn."""
        detector = SpeechDetector(RATE, min_speech_ms=100)
        self.assertEqual(run(detector, signal(2.0, [(1.0, 1.06)])), [])

    def test_short_pause_keeps_the_turn(self) -> None:
        """A pause shorter than silence_ms does not split the turn."""
        detector = SpeechDetector(RATE, silence_ms=500)
        events = run(detector, signal(4.0, [(1.0, 1.5), (1.8, 2.4)]))
        self.assertEqual([(kind, time) for kind, time, _ in summary(events)], [("start", 1.0), ("silence", 2.4)])

    def test_digital_silence_and_hiss_are_not_speech(self) -> None:
        """Zeros, or hiss below min_floor_db + threshold, never start a turn."""
        detector = SpeechDetector(RATE)
        self.assertEqual(run(detector, bytes(RATE * 2)), [])
        self.assertEqual(detector.noise_floor_db, -65.0)
        # -70 dBFS hiss after digital silence: still under the -65 dBFS floor.
        self.assertEqual(run(detector, signal(1.0, noise_db=-70.0), start=1.0), [])

    def test_noise_floor_follows_a_louder_background(self) -> None:
        """Steady noise that appears stops counting as speech within noise_window_ms,
        and speech above the new background is detected."""
        detector = SpeechDetector(RATE, noise_window_ms=3000)
        quiet = signal(1.0, noise_db=-60.0)
        loud = signal(9.0, [(7.0, 8.0)], tone_db=-15.0, noise_db=-35.0, seed=2)
        events = run(detector, quiet + loud)
        # The fan switched on at 1.0 may pass for speech until the floor catches up.
        late = [e for e in events if e.at > 5.0]
        self.assertEqual(summary(late), [
            ("start", 8.0, 8.1),
            ("silence", 9.0, 9.5),
        ])
        self.assertTrue(all(e.at < 4.6 for e in events if e not in late))
        self.assertApproximates(detector.noise_floor_db, -35.0, 2.0)

    def test_no_audio_counts_as_silence(self) -> None:
        """A sender that goes quiet (DTX) ends the turn through poll() at deadline()."""
        detector = SpeechDetector(RATE, silence_ms=400)
        events = run(detector, signal(1.5, [(1.0, 1.5)]))
        self.assertEqual([type(e) for e in events], [SpeechStarted])
        self.assertApproximates(detector.deadline(), 1.9, rel(1.9))
        self.assertEqual(detector.poll(1.8), [])
        self.assertEqual(summary(detector.poll(1.9)), [("silence", 1.5, 1.9)])
        self.assertIsNone(detector.deadline())
        self.assertEqual(detector.poll(5.0), [])

    def test_gap_in_audio_counts_as_silence(self) -> None:
        """Audio resuming after a gap longer than silence_ms is a new turn."""
        detector = SpeechDetector(RATE, silence_ms=400)
        first = run(detector, signal(1.5, [(1.0, 1.5)]))
        second = run(detector, signal(1.0, [(0.0, 0.5)], seed=3), start=3.0)
        self.assertEqual([type(e) for e in first], [SpeechStarted])
        self.assertEqual(summary(second), [
            ("silence", 1.5, 3.0),
            ("start", 3.0, 3.1),
            ("silence", 3.5, 3.9),
        ])

    def test_max_wait_caps_a_turn(self) -> None:
        """With max_wait_ms a never-ending sound closes its turn once, and speech after
        a pause opens a new one."""
        detector = SpeechDetector(RATE, max_wait_ms=2000, noise_window_ms=10000)
        events = run(detector, signal(8.0, [(1.0, 5.0), (6.0, 7.0)]))
        self.assertEqual(summary(events), [
            ("start", 1.0, 1.1),
            ("max_wait", 3.0, 3.0),
            ("start", 6.0, 6.1),
            ("silence", 7.0, 7.5),
        ])

    def test_update_at_run_time(self) -> None:
        """Parameters change between frames; bad ones are refused without a change."""
        detector = SpeechDetector(RATE, silence_ms=500)
        events = run(detector, signal(1.5, [(1.0, 1.5)]))
        self.assertEqual([type(e) for e in events], [SpeechStarted])
        detector.update(silence_ms=200)
        events = run(detector, signal(1.0, seed=4), start=1.5)
        self.assertEqual(summary(events), [("silence", 1.5, 1.7)])
        detector.update(threshold_db=60, hysteresis_db=0)
        self.assertEqual(run(detector, signal(1.0, [(0.0, 1.0)], seed=5), start=2.5), [])
        with self.assertRaises(TypeError):
            detector.update(loudness=3)
        with self.assertRaises(ValueError):
            detector.update(silence_ms=-1)
        with self.assertRaises(ValueError):
            detector.update(threshold_db=5, max_wait_ms=0)
        self.assertEqual(detector.threshold_db, 60)
        detector.update(noise_window_ms=500, max_wait_ms=None)
        self.assertEqual(detector.noise_window_ms, 500)

    def test_rejects_bad_input(self) -> None:
        """Odd byte counts and sample rates that do not split into 20 ms are refused."""
        with self.assertRaises(ValueError):
            SpeechDetector(44101)
        with self.assertRaises(ValueError):
            SpeechDetector(RATE).feed(b"\x00\x00\x00", 0.0)


class RealSpeechTests(SynchronousTestCase):
    """espeak-ng's speech, padded with silence, directly and through Opus."""

    def test_real_speech(self) -> None:
        """"hello there" padded with silence: exactly one start and one stop, on time."""
        rate, speech = espeak(self, "hello there")
        onset, offset = bounds(rate, speech)
        audio = padded(rate, speech, before=1.0, after=1.5)
        detector = SpeechDetector(rate, threshold_db=12, min_speech_ms=100, silence_ms=500)
        events = run(detector, audio.tobytes(), chunk=rate // 50)
        self.assertEqual([type(e) for e in events], [SpeechStarted, SpeechStopped], events)
        started, stopped = events
        self.assertLessEqual(1.0 + onset - 0.02, started.time)
        self.assertLessEqual(started.time, 1.0 + onset + 0.06)
        self.assertLessEqual(1.0 + offset - 0.1, stopped.time)
        self.assertLessEqual(stopped.time, 1.0 + offset + 0.04)
        self.assertApproximates(stopped.at, stopped.time + 0.5, rel(stopped.time + 0.5))

    def test_real_speech_two_turns_through_opus(self) -> None:
        """Two utterances a second apart, through Opus at 24 kHz, are two turns."""
        rate, speech = espeak(self, "hello there")
        resampler = AudioResampler(format="s16", layout="mono", rate=24000)
        frame = AudioFrame(format="s16", layout="mono", samples=len(speech))
        frame.sample_rate = rate
        frame.planes[0].update(speech.tobytes())
        frames = [*resampler.resample(frame), *resampler.resample(None)]
        resampled = b"".join(bytes(f.planes[0])[: f.samples * 2] for f in frames)
        one = array.array("h", resampled)
        onset, offset = bounds(24000, one)
        turn = padded(24000, one, before=1.0, after=0.0)
        audio = (turn + turn + padded(24000, array.array("h"), 0.0, 1.5)).tobytes()
        audio += bytes(-len(audio) % 960)
        encoder, decoder = OpusEncoder(24000), OpusDecoder(24000)
        detector = SpeechDetector(24000, silence_ms=500)
        events: list[SpeechEvent] = []
        for i in range(0, len(audio), 960):
            pcm = decoder.decode(encoder.encode(audio[i : i + 960]))
            events += detector.feed(pcm, i / 2 / 24000)
        self.assertEqual([type(e) for e in events], [SpeechStarted, SpeechStopped] * 2, events)
        second = len(turn) / 24000
        # Opus adds its look-ahead (6.5 ms) and a resampling millisecond.
        for start, (started, stopped) in ((0.0, events[:2]), (second, events[2:])):
            self.assertLessEqual(start + 1.0 + onset - 0.02, started.time)
            self.assertLessEqual(started.time, start + 1.0 + onset + 0.08)
            self.assertLessEqual(start + 1.0 + offset - 0.1, stopped.time)
            self.assertLessEqual(stopped.time, start + 1.0 + offset + 0.06)
