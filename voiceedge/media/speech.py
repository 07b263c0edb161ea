# -*- test-case-name: tests.test_speech -*-
"""An energy speech detector with an adaptive noise floor, for turn-taking on 20 ms PCM16 frames.

Why energy and not webrtcvad: the original ``webrtcvad`` is an sdist from 2017 that
needs a compiler; a fork with wheels exists (``webrtcvad-wheels``) but turn-taking
needs a start and a stop with sensible timing more than a per-frame speech/noise
classifier, and an energy detector with a noise floor does that with no dependency.

How it decides, frame by frame (20 ms each):

- **Level** is the frame's RMS in dBFS (digital silence counts as -100 dBFS).
- **Noise floor** is the minimum level over the last ``noise_window_ms`` (minimum
  statistics, in 100 ms blocks): speech always has short dips between syllables and
  words, so the minimum follows the background, whether it falls (at once) or rises
  (within ``noise_window_ms``, so a fan switched on stops counting as speech).  It is
  never taken below ``min_floor_db``, so hiss on a silent line is not speech.
- A frame is **voiced** when its level is at least ``threshold_db`` above the floor;
  once speech has started, ``hysteresis_db`` less is enough, so trailing, quieter
  sounds do not cut a turn short.
- :class:`SpeechStarted` is emitted once ``min_speech_ms`` of contiguous voiced
  audio has been seen; its ``time`` is the start of the first voiced frame.
- :class:`SpeechStopped` is emitted once ``silence_ms`` has passed since the end of
  the last voiced frame, which is its ``time``.  Time with no audio at all (a
  sender in DTX, a gap between calls of :meth:`SpeechDetector.feed`) counts as
  silence; :meth:`SpeechDetector.poll` applies that when no audio comes, and
  :meth:`SpeechDetector.deadline` says when to call it.
- ``max_wait_ms`` (optional) caps a turn: after that long since its start,
  :class:`SpeechStopped` is emitted with ``reason="max_wait"`` even if the audio is
  still voiced, so steady noise loud enough to pass for speech cannot hold the turn
  open forever; the next turn needs an unvoiced frame first.

All times are the caller's clock in seconds: ``now`` passed to
:meth:`~SpeechDetector.feed` is the time of the first sample of the PCM given
(derived from the RTP timestamp: :mod:`voiceedge.media.timeline`; arrival times
would make a backlog read late after a stall look like silence), so successive 20 ms frames fed at ``t``,
``t + 0.02``, ... are contiguous; up to one frame of timing jitter is tolerated,
a longer gap counts as silence.
"""

from __future__ import annotations

import array
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np
from zope.interface import implementer

from voiceedge.media.detection import ISpeechDetector

__all__ = ["SpeechDetector", "SpeechEvent", "SpeechStarted", "SpeechStopped", "frame_level_db"]

_FRAME_MS = 20
_BLOCK_FRAMES = 5  # the noise floor keeps one minimum per 100 ms
_SILENT_DB = -100.0
_FULL_SCALE_SQUARED = 32768.0 * 32768.0
_PCM16 = np.dtype("<i2")
_log10 = math.log10


@dataclass(slots=True, frozen=True)
class SpeechStarted:
    """Speech began at ``time`` (start of its first voiced frame); decided at ``at``.

    ``time`` and ``at`` are on the audio's timeline (see the module doc).
    ``arrival`` is ``time`` on the transceiver's clock, when the audio came in,
    for latency metrics; the detector knows no arrivals and leaves it ``None``
    (:class:`~voiceedge.transceiver.audio.InboundAudio` sets it). It is not
    part of the event's identity (equality).
    """

    time: float
    at: float
    arrival: float | None = field(default=None, compare=False)


@dataclass(slots=True, frozen=True)
class SpeechStopped:
    """Speech ended at ``time`` (end of its last voiced frame); decided at ``at``.

    ``reason`` is ``"silence"`` after ``silence_ms`` without speech, or
    ``"max_wait"`` when the turn reached ``max_wait_ms``. ``arrival`` is as
    in :class:`SpeechStarted`.
    """

    time: float
    at: float
    reason: Literal["silence", "max_wait"] = "silence"
    arrival: float | None = field(default=None, compare=False)


SpeechEvent = Union[SpeechStarted, SpeechStopped]

_PARAMETERS = frozenset(
    {
        "threshold_db",
        "min_speech_ms",
        "silence_ms",
        "max_wait_ms",
        "hysteresis_db",
        "min_floor_db",
        "noise_window_ms",
    }
)


def frame_level_db(samples: bytes | bytearray | memoryview | array.array[int] | np.ndarray) -> float:
    """Return the RMS level of PCM16 ``samples`` in dBFS (-100 for digital silence).

    ``samples`` is PCM16 little-endian bytes, or an ``array("h")`` / int16 array
    of native samples. One vectorised sum of squares: no Python loop per sample.
    """
    if isinstance(samples, np.ndarray):
        x = samples
    elif isinstance(samples, array.array):
        x = np.frombuffer(samples, dtype=np.int16)
    else:
        x = np.frombuffer(samples, dtype=_PCM16)
    if not x.size:
        return _SILENT_DB
    x = x.astype(np.float64)
    energy = float(np.dot(x, x))
    if not energy:
        return _SILENT_DB
    return max(_SILENT_DB, 10.0 * _log10(energy / x.size / _FULL_SCALE_SQUARED))


@implementer(ISpeechDetector)
class SpeechDetector:
    """Turns a stream of PCM16 mono little-endian audio into speech start/stop events.

    See the module docstring for the rules.  Parameters can be changed at any time
    with :meth:`update`.
    """

    __slots__ = (
        "sample_rate",
        "threshold_db",
        "min_speech_ms",
        "silence_ms",
        "max_wait_ms",
        "hysteresis_db",
        "min_floor_db",
        "noise_window_ms",
        "_frame_samples",
        "_frame_bytes",
        "_frame_seconds",
        "_pending",
        "_audio_end",
        "_block_min",
        "_block_count",
        "_block_mins",
        "_window_min",
        "_speaking",
        "_armed",
        "_run_start",
        "_turn_start",
        "_voiced_end",
        "voice_probability",
    )

    def __init__(
        self,
        sample_rate: int,
        threshold_db: float = 12.0,
        min_speech_ms: float = 100.0,
        silence_ms: float = 500.0,
        max_wait_ms: float | None = None,
        *,
        hysteresis_db: float = 3.0,
        min_floor_db: float = -65.0,
        noise_window_ms: float = 3000.0,
    ) -> None:
        if sample_rate <= 0 or sample_rate % 50:
            raise ValueError(
                f"sample rate must be a positive multiple of 50 Hz, not {sample_rate!r}"
            )
        self.sample_rate = sample_rate
        self._frame_samples = sample_rate * _FRAME_MS // 1000
        self._frame_bytes = self._frame_samples * 2
        self._frame_seconds = _FRAME_MS / 1000
        self.threshold_db = threshold_db
        self.min_speech_ms = min_speech_ms
        self.silence_ms = silence_ms
        self.max_wait_ms = max_wait_ms
        self.hysteresis_db = hysteresis_db
        self.min_floor_db = min_floor_db
        self.noise_window_ms = noise_window_ms
        self._block_mins: deque[float] = deque()
        self.update(
            threshold_db=threshold_db,
            min_speech_ms=min_speech_ms,
            silence_ms=silence_ms,
            max_wait_ms=max_wait_ms,
            hysteresis_db=hysteresis_db,
            min_floor_db=min_floor_db,
            noise_window_ms=noise_window_ms,
        )
        self._pending = bytearray()
        self._audio_end: float | None = None
        self._block_min = math.inf
        self._block_count = 0
        self._window_min = math.inf
        self._speaking = False
        # False after a max_wait stop, until an unvoiced frame re-arms detection.
        self._armed = True
        self._run_start: float | None = None
        self._turn_start = 0.0
        self._voiced_end = 0.0
        # 1.0 when the last frame counted as voice, else 0.0 (an energy detector has no probability).
        self.voice_probability = 0.0

    @property
    def speaking(self) -> bool:
        """Whether a turn is open (SpeechStarted emitted, SpeechStopped not yet)."""
        return self._speaking

    @property
    def noise_floor_db(self) -> float:
        """The current noise floor in dBFS (``min_floor_db`` before any audio)."""
        return max(self.min_floor_db, min(self._window_min, self._block_min))

    def close(self) -> None:
        """Nothing is held elsewhere: nothing to do."""

    def update(self, **params: float | None) -> None:
        """Change parameters (the constructor's keywords but ``sample_rate``) at run time.

        All are checked before any is applied: an unknown name raises ``TypeError``,
        a bad value ``ValueError``.
        """
        unknown = set(params) - _PARAMETERS
        if unknown:
            raise TypeError(f"unknown speech detector parameters: {', '.join(sorted(unknown))}")
        merged = {name: getattr(self, name) for name in _PARAMETERS}
        merged.update(params)
        for name in ("threshold_db", "min_speech_ms", "silence_ms", "hysteresis_db"):
            value = merged[name]
            if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if merged["hysteresis_db"] > merged["threshold_db"]:
            raise ValueError("hysteresis_db must not exceed threshold_db")
        max_wait = merged["max_wait_ms"]
        if max_wait is not None and (not isinstance(max_wait, (int, float)) or not max_wait > 0):
            raise ValueError(f"max_wait_ms must be positive or None, not {max_wait!r}")
        floor = merged["min_floor_db"]
        if not isinstance(floor, (int, float)) or not _SILENT_DB <= floor <= 0:
            raise ValueError(f"min_floor_db must be within -100..0 dBFS, not {floor!r}")
        window = merged["noise_window_ms"]
        shortest = _FRAME_MS * _BLOCK_FRAMES
        if not isinstance(window, (int, float)) or not shortest <= window < math.inf:
            raise ValueError(f"noise_window_ms must be at least 100, not {window!r}")
        for name, value in params.items():
            setattr(self, name, value)
        blocks = max(1, round(merged["noise_window_ms"] / (_FRAME_MS * _BLOCK_FRAMES)))
        if self._block_mins.maxlen != blocks:
            self._block_mins = deque(self._block_mins, maxlen=blocks)
            if self._block_mins:
                self._window_min = min(self._block_mins)

    def feed(self, pcm: bytes, now: float) -> list[SpeechEvent]:
        """Take PCM16 mono little-endian audio whose first sample is at ``now``; return events.

        Any length is accepted; audio is processed in whole 20 ms frames and the
        remainder waits for the next call.
        """
        if len(pcm) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        pending = self._pending
        events: list[SpeechEvent] = []
        size = self._frame_bytes
        step = self._frame_seconds
        if not pending and len(pcm) == size:
            # The usual case: one whole frame, nothing waiting. No copy.
            self._frame(frame_level_db(pcm), now, now + step, events)
            return events
        start = now - len(pending) / 2 / self.sample_rate
        pending += pcm
        usable = len(pending) - len(pending) % size
        for offset in range(0, usable, size):
            self._frame(frame_level_db(bytes(pending[offset : offset + size])), start, start + step, events)
            start += step
        del pending[:usable]
        return events

    def poll(self, now: float) -> list[SpeechEvent]:
        """Apply the passage of time with no audio up to ``now`` (a sender in DTX)."""
        events: list[SpeechEvent] = []
        if self._speaking and (self._audio_end is None or now >= self._audio_end):
            self._check_stop(now, events)
        return events

    def deadline(self) -> float | None:
        """Return when :meth:`poll` would end the open turn if no more speech came."""
        if not self._speaking:
            return None
        when = self._voiced_end + self.silence_ms / 1000
        if self.max_wait_ms is not None:
            when = min(when, self._turn_start + self.max_wait_ms / 1000)
        return when

    def _frame(self, level: float, start: float, end: float, events: list[SpeechEvent]) -> None:
        """Run one 20 ms frame of level ``level`` covering ``[start, end)``."""
        if self._audio_end is not None and start > self._audio_end + self._frame_seconds:
            # More than a frame with no audio (not mere timing jitter): silence.
            self._run_start = None
            if self._speaking:
                self._check_stop(start, events)
        self._audio_end = end
        floor = self._track_floor(level)
        if self._speaking:
            voiced = level >= floor + self.threshold_db - self.hysteresis_db
            self.voice_probability = 1.0 if voiced else 0.0
            if voiced:
                self._voiced_end = end
            self._check_stop(end, events)
            return
        self.voice_probability = 1.0 if level >= floor + self.threshold_db else 0.0
        if level < floor + self.threshold_db:
            self._run_start = None
            self._armed = True
            return
        if not self._armed:
            return
        if self._run_start is None:
            self._run_start = start
        if (end - self._run_start) * 1000 >= self.min_speech_ms - 1e-6:
            self._speaking = True
            self._turn_start = self._run_start
            self._voiced_end = end
            self._run_start = None
            events.append(SpeechStarted(self._turn_start, end))

    def _check_stop(self, now: float, events: list[SpeechEvent]) -> None:
        """End the open turn if ``now`` is past its silence or its max_wait."""
        if (now - self._voiced_end) * 1000 >= self.silence_ms - 1e-6:
            self._speaking = False
            events.append(SpeechStopped(self._voiced_end, now))
        elif (
            self.max_wait_ms is not None
            and (now - self._turn_start) * 1000 >= self.max_wait_ms - 1e-6
        ):
            self._speaking = False
            self._armed = False
            events.append(SpeechStopped(now, now, "max_wait"))

    def _track_floor(self, level: float) -> float:
        """Add a frame level to the minimum statistics; return the noise floor."""
        if level < self._block_min:
            self._block_min = level
        self._block_count += 1
        if self._block_count == _BLOCK_FRAMES:
            self._block_mins.append(self._block_min)
            self._window_min = min(self._block_mins)
            self._block_min = math.inf
            self._block_count = 0
        return max(self.min_floor_db, min(self._window_min, self._block_min))
