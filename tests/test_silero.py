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
