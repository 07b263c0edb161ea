"""Tests for voiceedge.media.silero: the shared model and per-stream voice probabilities, on espeak-ng speech."""

from __future__ import annotations

import numpy as np
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import speech_corpus


def require_silero() -> None:
    """Skip unless onnxruntime and the model are installed."""
    try:
        from voiceedge.media.silero import ModelUnavailable, find_model

        find_model()
        import onnxruntime  # noqa: F401
    except (ImportError, ModelUnavailable) as e:
        raise SkipTest(f"silero is not installed: {e}") from None


class SileroStreamTests(SynchronousTestCase):
    """Voice is likely in speech and unlikely in noise, at every session rate."""

    def setUp(self) -> None:
        require_silero()
        if not speech_corpus.available():
            raise SkipTest("espeak-ng and sox are needed")

    def probabilities(self, rate: int, noise: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        from voiceedge.media.silero import SileroStream

        recording = speech_corpus.make_recording(
            speech_corpus.TURNS[:2], rate=rate, noise=noise, snr_db=10 if noise else None
        )
        stream = SileroStream(rate)
        p = np.array([stream.feed_frame(f) for f in recording.frames()])
        return p, np.array(recording.voiced[: len(p)])

    def test_speech_and_silence_at_every_rate(self) -> None:
        """At 16, 24 and 48 kHz at least 90 % of frames are called right, in clean speech and in noise."""
        for rate in (16000, 24000, 48000):
            for noise in (None, "pinknoise"):
                p, voiced = self.probabilities(rate, noise)
                accuracy = float(np.mean((p >= 0.5) == voiced))
                self.assertGreater(accuracy, 0.9, (rate, noise, accuracy))
                self.assertLess(float(np.median(p[~voiced])), 0.2, (rate, noise))
                self.assertGreater(float(np.median(p[voiced])), 0.8, (rate, noise))

    def test_one_model_for_every_stream(self) -> None:
        """Streams share the process's model; a stream's reset forgets its state; bad frames are refused."""
        from voiceedge.media.silero import SileroModel, SileroStream

        a, b = SileroStream(24000), SileroStream(48000)
        self.assertIs(a._model, b._model)
        self.assertIs(SileroModel.shared(), a._model)
        first = [a.feed_frame(bytes(960)) for _ in range(10)]
        a.reset()
        self.assertEqual([a.feed_frame(bytes(960)) for _ in range(10)], first)
        self.assertEqual(a.windows_run, 12)  # 20 frames of 20 ms = 12 windows of 32 ms
        with self.assertRaises(ValueError):
            a.feed_frame(bytes(100))
        with self.assertRaises(ValueError):
            SileroStream(44101)


class PolyphaseResamplingTests(SynchronousTestCase):
    """The stream's strided low-pass gives what the full-rate filter and interpolation gave (tests/silero_reference.py)."""

    # The 16 kHz samples (full scale 1.0) may differ by float32 rounding only,
    # well under one PCM16 step (3e-5); measured: 9e-8 at most.
    SAMPLE_TOLERANCE = 1e-6
    # Silero's probabilities on the same speech, frame by frame; measured: 9e-7 at most.
    PROBABILITY_TOLERANCE = 1e-5

    class NoModel:
        """Stands in for the network where only the resampling is under test."""

        def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
            return 0.0, state

    def frames(self, rate: int) -> list[bytes]:
        """Real speech when espeak-ng is here, else a chirp with noise (hostile: full scale, clipping)."""
        if speech_corpus.available():
            recording = speech_corpus.make_recording(
                speech_corpus.TURNS[:2], rate=rate, noise="pinknoise", snr_db=10
            )
            return recording.frames()
        t = np.arange(rate * 3) / rate
        x = 40000 * np.sin(2 * np.pi * (100 + 2000 * t) * t) + np.random.default_rng(1).normal(0, 2000, len(t))
        pcm = x.clip(-32768, 32767).astype("<i2").tobytes()
        size = rate // 50 * 2
        return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]

    def test_same_samples_at_every_rate(self) -> None:
        """At 48, 44.1, 32, 24, 16, 12 and 8 kHz, every 16 kHz sample of every frame is the old one within
        SAMPLE_TOLERANCE, full-scale and silent frames included; a wrong frame length is refused."""
        from tests.silero_reference import ReferenceSileroStream
        from voiceedge.media.silero import SileroStream

        for rate in (48000, 44100, 32000, 24000, 16000, 12000, 8000):
            new = SileroStream(rate, model=self.NoModel())  # type: ignore[arg-type]
            old = ReferenceSileroStream(rate, model=self.NoModel())  # type: ignore[arg-type]
            size = rate // 50 * 2
            frames = [b"\x00\x80" * (size // 2), b"\xff\x7f" * (size // 2), bytes(size)] + self.frames(rate)
            worst = 0.0
            for frame in frames:
                a, b = new.resample(frame), old.resample(frame)
                self.assertEqual(a.shape, (320,), rate)
                self.assertEqual(a.dtype, np.float32, rate)
                worst = max(worst, float(np.abs(a - b).max()))
            self.assertLess(worst, self.SAMPLE_TOLERANCE, rate)
            with self.assertRaises(ValueError):
                new.resample(bytes(size - 2))

    def test_same_probabilities_on_speech(self) -> None:
        """Silero's probability per frame on espeak-ng speech in noise at 48 and 24 kHz is the old one
        within PROBABILITY_TOLERANCE, and the same number of windows run."""
        require_silero()
        if not speech_corpus.available():
            raise SkipTest("espeak-ng and sox are needed")
        from tests.silero_reference import ReferenceSileroStream
        from voiceedge.media.silero import SileroStream

        for rate in (48000, 24000):
            new, old = SileroStream(rate), ReferenceSileroStream(rate)
            frames = self.frames(rate)
            p = np.array([new.feed_frame(f) for f in frames])
            q = np.array([old.feed_frame(f) for f in frames])
            self.assertGreater(float(q.max()), 0.9, rate)  # the speech is heard at all
            self.assertLess(float(np.abs(p - q).max()), self.PROBABILITY_TOLERANCE, rate)
            self.assertEqual(new.windows_run, old.windows_run)
