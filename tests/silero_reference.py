"""Silero's stream as it was before the polyphase resampler: the reference its tests and bench/vad.py compare against.

:class:`ReferenceSileroStream` is the old ``SileroStream`` verbatim: a
full-rate low-pass (``np.convolve``) then ``np.interp`` at each 16 kHz
sample's position, and a window buffer rebuilt by concatenation.
"""

from __future__ import annotations

import math

import numpy as np

from voiceedge.media.silero import CONTEXT, MODEL_RATE, WINDOW, SileroModel, _lowpass, _STATE_SHAPE

__all__ = ["ReferenceSileroStream"]


class ReferenceSileroStream:
    """The old SileroStream: 20 ms PCM16 frames in, a voice probability per frame out."""

    __slots__ = (
        "sample_rate",
        "probability",
        "windows_run",
        "_model",
        "_frame_samples",
        "_filter",
        "_history",
        "_positions",
        "_buffer",
        "_state",
        "_context",
    )

    def __init__(self, sample_rate: int, model: SileroModel | None = None) -> None:
        if sample_rate < 8000 or sample_rate % 50:
            raise ValueError(f"sample rate must be a multiple of 50 Hz from 8 kHz up, not {sample_rate!r}")
        self.sample_rate = sample_rate
        self._model = model if model is not None else SileroModel.shared()
        self._frame_samples = sample_rate // 50
        out = MODEL_RATE // 50
        if sample_rate == MODEL_RATE:
            self._filter: np.ndarray | None = None
            self._positions: np.ndarray | None = None
        else:
            # Below 16 kHz there is nothing to remove; above, keep under 8 kHz.
            self._filter = _lowpass(sample_rate) if sample_rate > MODEL_RATE else None
            self._positions = np.arange(out) * (sample_rate / MODEL_RATE)
        taps = 0 if self._filter is None else len(self._filter)
        self._history = np.zeros(max(0, taps - 1), dtype=np.float32)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self.probability = 0.0
        self.windows_run = 0

    def reset(self) -> None:
        """Forget the stream (a new, unrelated one follows)."""
        self._history[:] = 0
        self._buffer = np.zeros(0, dtype=np.float32)
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self.probability = 0.0

    def feed_frame(self, pcm: bytes) -> float:
        """Take one 20 ms frame of PCM16 mono little-endian; return the latest voice probability."""
        if len(pcm) != self._frame_samples * 2:
            raise ValueError(f"a frame is {self._frame_samples * 2} bytes at {self.sample_rate} Hz, not {len(pcm)}")
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) * (1 / 32768)
        if self._filter is not None:
            joined = np.concatenate((self._history, x))
            self._history = joined[len(joined) - len(self._history) :]
            x = np.convolve(joined, self._filter, mode="valid")
        if self._positions is not None:
            x = np.interp(self._positions, np.arange(len(x)), x).astype(np.float32)
        buffer = np.concatenate((self._buffer, x)) if len(self._buffer) else x
        while len(buffer) >= WINDOW:
            window, buffer = buffer[:WINDOW], buffer[WINDOW:]
            joined = np.concatenate((self._context, window))[np.newaxis, :]
            self.probability, self._state = self._model.run(joined, self._state)
            self._context = window[-CONTEXT:]
            self.windows_run += 1
        self._buffer = buffer
        if not math.isfinite(self.probability):
            self.probability = 0.0
        return self.probability

    def resample(self, pcm: bytes) -> np.ndarray:
        """One frame's 16 kHz samples the old way (the filter's state advances)."""
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) * (1 / 32768)
        if self._filter is not None:
            joined = np.concatenate((self._history, x))
            self._history = joined[len(joined) - len(self._history) :]
            x = np.convolve(joined, self._filter, mode="valid")
        if self._positions is not None:
            x = np.interp(self._positions, np.arange(len(x)), x).astype(np.float32)
        return x
