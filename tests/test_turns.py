"""Tests for voiceedge.media.turns (adaptive end of turn) and voiceedge.media.detection (the one interface)."""

from __future__ import annotations

import math
import statistics

import numpy as np
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from voiceedge.media.detection import (
    DetectionSettings,
    ISpeechDetector,
    make_speech_detector,
    parse_detector,
)
from voiceedge.media.speech import SpeechDetector, SpeechEvent, SpeechStarted, SpeechStopped
from voiceedge.media.turns import ProbabilityTurnDetector, _median, frame_pitch
from tests.signals import speech_like

RATE = 16000
FRAME = RATE // 50


class ScriptedProbability:
    """A voice-probability source that says 1.0 for frames louder than -60 dBFS: the rules, not a model."""

    def __init__(self, sample_rate: int = RATE) -> None:
        self.sample_rate = sample_rate

    def feed_frame(self, pcm: bytes) -> float:
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        return 1.0 if np.sqrt(np.mean(x**2)) > 32 else 0.0


def voice(seconds: float, start_hz: float, end_hz: float | None = None, rate: int = RATE) -> bytes:
    """A buzzy voice-like tone gliding from ``start_hz`` to ``end_hz`` over its last 200 ms."""
    n = int(seconds * rate)
    end_hz = start_hz if end_hz is None else end_hz
    t = np.arange(n) / rate
    glide = np.clip((t - (seconds - 0.2)) / 0.2, 0, 1)
    f = start_hz + (end_hz - start_hz) * glide
    phase = 2 * np.pi * np.cumsum(f) / rate
    x = sum(np.sin(h * phase) / h for h in range(1, 6))
    return (3000 * x).astype("<i2").tobytes()


def silence(seconds: float, rate: int = RATE) -> bytes:
    """Digital silence."""
    return bytes(int(seconds * rate) * 2)


def run(
    detector: ProbabilityTurnDetector | SpeechDetector, pcm: bytes, start: float = 0.0, rate: int = RATE
) -> list[SpeechEvent]:
    """Feed ``pcm`` in 20 ms frames from ``start``."""
    events: list[SpeechEvent] = []
    frame = rate // 50
    for i in range(0, len(pcm) - frame * 2 + 1, frame * 2):
        events += detector.feed(pcm[i : i + frame * 2], start + i / 2 / rate)
    return events


def detector(**options: float | None) -> ProbabilityTurnDetector:
    """A detector on the scripted source with round silences."""
    knobs: dict[str, float | None] = {
        "min_speech_ms": 60,
        "final_silence_ms": 200,
        "neutral_silence_ms": 600,
        "hesitation_silence_ms": 1200,
        "short_phrase_ms": 500,
    }
    knobs.update(options)
    return ProbabilityTurnDetector(ScriptedProbability(), **knobs)  # type: ignore[arg-type]


def assert_near(case: SynchronousTestCase, value: float, expected: float, within: float) -> None:
    """``value`` within ``within`` of ``expected`` (trial's assertAlmostEqual has no delta)."""
    case.assertLessEqual(abs(value - expected), within, f"{value!r} is not within {within} of {expected!r}")


class PitchTests(SynchronousTestCase):
    """frame_pitch finds the fundamental of a voice-like tone, and nothing in noise."""

    def test_tones(self) -> None:
        for hz in (90.0, 140.0, 220.0, 330.0):
            x = np.frombuffer(voice(0.04, hz), dtype="<i2").astype(np.float32)
            assert_near(self, frame_pitch(x, RATE), hz, hz * 0.04)

    def test_noise_and_silence_are_unpitched(self) -> None:
        rng = np.random.default_rng(1)
        self.assertEqual(frame_pitch(rng.normal(0, 1000, 640).astype(np.float32), RATE), 0.0)
        self.assertEqual(frame_pitch(np.zeros(640, dtype=np.float32), RATE), 0.0)

    def test_the_short_fft_gives_the_full_autocorrelation_s_answer(self) -> None:
        """The FFT is only as long as the lags searched need: the same pitch as the linear autocorrelation's."""

        def reference(x: np.ndarray, rate: int) -> float:
            x = x - x.mean()
            if float(np.dot(x, x)) <= 0:
                return 0.0
            n = len(x)
            ac = np.correlate(x, x, "full")[n - 1 :]
            low, high = max(1, int(rate / 400)), min(n - 1, int(rate / 70))
            window = ac[low:high] / (ac[0] * (n - np.arange(low, high)) / n)
            peak = float(window.max())
            if peak < 0.45:
                return 0.0
            best = int(np.argmax(window))
            for i in np.nonzero(window[1:-1] >= 0.85 * peak)[0] + 1:
                if window[i] >= window[i - 1] and window[i] >= window[i + 1]:
                    best = int(i)
                    break
            return rate / (best + low)

        rng = np.random.default_rng(2)
        for rate in (8000, 12000, 16000):
            frames = [np.frombuffer(f, dtype="<i2").astype(np.float32) for f in speech_like(rate, 40, pauses=True)]
            windows = [np.concatenate(pair) for pair in zip(frames, frames[1:])]
            windows += [rng.normal(0, 300, rate // 25).astype(np.float32) + w for w in windows[:5]]
            pitched = 0
            for window in windows:
                self.assertAlmostEqual(frame_pitch(window, rate), reference(window, rate), places=6)
                pitched += frame_pitch(window, rate) > 0
            self.assertGreater(pitched, 10)

    def test_median(self) -> None:
        rng = np.random.default_rng(3)
        for n in range(1, 12):
            values = sorted(float(v) for v in rng.uniform(70, 400, n))
            self.assertEqual(_median(values), statistics.median(values))


class EndOfTurnTests(SynchronousTestCase):
    """The silence that ends a turn depends on how the voice before it ended."""

    def test_final_fall_ends_soon(self) -> None:
        """A phrase whose pitch falls at its end is a final end: final_silence_ms."""
        d = detector()
        events = run(d, silence(0.5) + voice(1.2, 160, 110) + silence(1.5))
        self.assertEqual([type(e) for e in events], [SpeechStarted, SpeechStopped])
        started, stopped = events
        assert_near(self, started.time, 0.5, 0.001)
        assert_near(self, stopped.time, 1.7, 0.021)
        assert_near(self, stopped.at - stopped.time, 0.2, 0.021)
        self.assertEqual(d.last_end, "final")

    def test_level_end_waits_the_neutral_silence(self) -> None:
        """A phrase that ends on a held or rising pitch waits neutral_silence_ms."""
        for end_hz in (160.0, 200.0):
            d = detector()
            events = run(d, silence(0.5) + voice(1.2, 160, end_hz) + silence(1.5))
            self.assertEqual([type(e) for e in events], [SpeechStarted, SpeechStopped])
            assert_near(self, events[1].at - events[1].time, 0.6, 0.021)
            self.assertEqual(d.last_end, "neutral")

    def test_hesitation_is_not_cut_off(self) -> None:
        """A short fragment ("um,") then 900 ms of silence then more: one turn, ended after the rest."""
        d = detector()
        audio = silence(0.5) + voice(1.0, 160) + silence(0.25) + voice(0.3, 150) + silence(0.9)
        audio += voice(1.0, 160, 110) + silence(1.5)
        events = run(d, audio)
        self.assertEqual([type(e) for e in events], [SpeechStarted, SpeechStopped])
        assert_near(self, events[1].time, 0.5 + 1.0 + 0.25 + 0.3 + 0.9 + 1.0, 0.021)
        self.assertEqual(d.last_end, "final")

    def test_hesitation_alone_ends_after_its_silence(self) -> None:
        """A short fragment that nobody continues ends after hesitation_silence_ms."""
        d = detector()
        events = run(d, silence(0.5) + voice(0.3, 150) + silence(2.0))
        self.assertEqual([type(e) for e in events], [SpeechStarted, SpeechStopped])
        assert_near(self, events[1].at - events[1].time, 1.2, 0.021)
        self.assertEqual(d.last_end, "hesitation")

    def test_short_blip_is_not_speech(self) -> None:
        """Voice shorter than min_speech_ms opens no turn."""
        self.assertEqual(run(detector(), silence(0.5) + voice(0.04, 150) + silence(1.0)), [])

    def test_no_audio_counts_as_silence(self) -> None:
        """A sender that stops sending (DTX) ends the turn through poll() at deadline()."""
        d = detector()
        events = run(d, silence(0.5) + voice(1.0, 160))
        self.assertEqual([type(e) for e in events], [SpeechStarted])
        deadline = d.deadline()
        assert deadline is not None
        # A held pitch: the neutral silence, counted from the last voiced frame.
        assert_near(self, deadline, 1.5 + 0.6, 0.001)
        self.assertEqual(d.poll(deadline - 0.1), [])
        stopped = d.poll(deadline)
        self.assertEqual([type(e) for e in stopped], [SpeechStopped])
        self.assertIsNone(d.deadline())

    def test_max_wait_caps_a_turn(self) -> None:
        """Endless voice is cut at max_wait_ms, and the next turn needs a pause first."""
        d = detector(max_wait_ms=1000)
        events = run(d, silence(0.2) + voice(2.0, 150) + silence(0.3) + voice(0.5, 150, 100) + silence(1.0))
        self.assertEqual(
            [(type(e).__name__, getattr(e, "reason", None)) for e in events],
            [("SpeechStarted", None), ("SpeechStopped", "max_wait"), ("SpeechStarted", None), ("SpeechStopped", "silence")],
        )
        assert_near(self, events[1].at, 1.2, 0.021)

    def test_update_checks_everything_first(self) -> None:
        """Bad knobs are refused and nothing changes; good ones apply mid-turn."""
        d = detector()
        with self.assertRaises(TypeError):
            d.update(loudness=3)
        with self.assertRaises(ValueError):
            d.update(final_silence_ms=900)  # above neutral
        with self.assertRaises(ValueError):
            d.update(threshold=1.5)
        self.assertEqual(d.final_silence_ms, 200)
        run(d, silence(0.5) + voice(1.0, 160))
        d.update(neutral_silence_ms=300)
        events = run(d, silence(1.0), start=1.5)
        self.assertEqual([type(e) for e in events], [SpeechStopped])
        assert_near(self, events[0].at - events[0].time, 0.3, 0.021)
        with self.assertRaises(ValueError):
            ProbabilityTurnDetector(ScriptedProbability(), threshold=0.1)

    def test_odd_byte_count_is_refused(self) -> None:
        """PCM16 has an even number of bytes."""
        with self.assertRaises(ValueError):
            detector().feed(b"\x00", 0.0)


class SessionRateTests(SynchronousTestCase):
    """At 24 and 48 kHz the pitch is tracked at 12 and 16 kHz: the same end rules as at 16 kHz."""

    def test_final_fall_and_level_end_at_every_rate(self) -> None:
        for rate in (24000, 48000):
            for end_hz, kind in ((110.0, "final"), (160.0, "neutral"), (200.0, "neutral")):
                d = ProbabilityTurnDetector(
                    ScriptedProbability(rate),
                    min_speech_ms=60,
                    final_silence_ms=200,
                    neutral_silence_ms=600,
                    hesitation_silence_ms=1200,
                    short_phrase_ms=500,
                )
                pcm = silence(0.5, rate) + voice(1.2, 160, end_hz, rate) + silence(1.5, rate)
                events = run(d, pcm, rate=rate)
                self.assertEqual([type(e) for e in events], [SpeechStarted, SpeechStopped], (rate, end_hz))
                self.assertEqual(d.last_end, kind, (rate, end_hz))


class InterfaceTests(SynchronousTestCase):
    """Every detector provides ISpeechDetector and is built from settings."""

    def test_energy(self) -> None:
        energy = make_speech_detector(DetectionSettings("energy", silence_ms=300), 24000)
        self.assertIsInstance(energy, SpeechDetector)
        verifyObject(ISpeechDetector, energy)
        self.assertEqual(energy.sample_rate, 24000)

    def test_probability_detector(self) -> None:
        verifyObject(ISpeechDetector, detector())

    def test_silero(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise self.skipTest("onnxruntime is not installed") from None  # type: ignore[misc]
        silero = make_speech_detector(DetectionSettings("silero"), 48000)
        verifyObject(ISpeechDetector, silero)
        self.assertIsInstance(silero, ProbabilityTurnDetector)
        self.assertEqual(silero.feed(bytes(1920), 0.0), [])
        self.assertTrue(0 <= silero.voice_probability <= 1)
        self.assertFalse(math.isnan(silero.voice_probability))

    def test_settings_are_checked(self) -> None:
        with self.assertRaises(ValueError):
            DetectionSettings("webrtc")  # type: ignore[arg-type]
        self.assertEqual(parse_detector(" Silero "), "silero")
        with self.assertRaises(ValueError):
            parse_detector("neural")
