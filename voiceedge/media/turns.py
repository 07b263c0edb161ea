# -*- test-case-name: tests.test_turns -*-
"""A turn detector on voice probabilities, whose end-of-turn silence adapts to how the speech ended.

A source of voice probabilities (Silero VAD, see :mod:`voiceedge.media.silero`)
says, per 20 ms frame, how likely it is voice.  :class:`ProbabilityTurnDetector`
turns that into :class:`~voiceedge.media.speech.SpeechStarted` and
:class:`~voiceedge.media.speech.SpeechStopped` events, like the energy detector:

- A frame is **voiced** when its probability is at least ``threshold``; once a
  turn is open, ``threshold - 0.15`` is enough (hysteresis).
- ``min_speech_ms`` of contiguous voiced frames opens a turn; its ``time`` is the
  start of the first voiced frame.
- When the voice stops, the silence that ends the turn depends on how the
  speech before it ended, with no words involved:

  * a **hesitation**: the stretch of voice before the pause was short (under
    ``short_phrase_ms``: "um,", "well,", "uh,"), so the caller is likely to go
    on: wait ``hesitation_silence_ms``;
  * a **final fall**: the pitch of the last voiced frames fell well below the
    stretch's own median (final lowering, the usual end of a statement): wait
    only ``final_silence_ms``;
  * anything else: wait ``neutral_silence_ms``.

  :class:`SpeechStopped`'s ``time`` is the end of the last voiced frame, its
  ``at`` when the silence ran out; :attr:`ProbabilityTurnDetector.last_end`
  says which rule ended it.
- ``max_wait_ms`` caps a turn as in the energy detector.

Times are the caller's clock in seconds (``now`` given to :meth:`feed` is the
time of the frame's first sample); no audio at all counts as silence
(:meth:`poll` at :meth:`deadline`).

A source may give a frame's probability later (:class:`DeferredVoiceProbability`,
a Silero stream that batches its windows with other streams'): frames then wait
in order, and the events they cause come out of the first :meth:`feed` or
:meth:`poll` after their probabilities are in. Meanwhile :meth:`deadline` is the
start of the oldest waiting frame plus the source's ``wait`` (when the
probability will be in: at once when the wait is 0), or ``None`` when the source
says itself when they are in (its ``wait`` is ``None``: a Silero stream with an
``on_results`` callback, whose owner polls then), and :meth:`poll` counts no
silence, since audio is there.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections import deque
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from zope.interface import implementer

from voiceedge.media.detection import ISpeechDetector
from voiceedge.media.speech import SpeechEvent, SpeechStarted, SpeechStopped

__all__ = ["DeferredVoiceProbability", "EndKind", "ProbabilityTurnDetector", "VoiceProbability", "frame_pitch"]

_FRAME = 0.02
_HYSTERESIS = 0.15
# Voice separated by less than this is one stretch (a phrase) for the end rules.
_PHRASE_GAP_MS = 160.0
# The final fall: the median pitch of the last _TAIL_FRAMES pitched frames under
# _FALL_RATIO of the phrase's median pitch.
_TAIL_FRAMES = 4
_FALL_RATIO = 0.9
_MIN_PITCHED = 6
_PITCH_RANGE_HZ = (70.0, 400.0)
# Pitch is tracked at 16 kHz or less (a 400 Hz voice needs nothing above): a
# 48 kHz frame is summed down three to one first, a ninth of the work.
_PITCH_MAX_RATE = 16000
_CLARITY = 0.45

EndKind = Literal["hesitation", "final", "neutral", "max_wait"]


_PARAMETERS = frozenset(
    {
        "threshold",
        "min_speech_ms",
        "neutral_silence_ms",
        "final_silence_ms",
        "hesitation_silence_ms",
        "short_phrase_ms",
        "max_wait_ms",
    }
)


def _check(
    *,
    threshold: float,
    min_speech_ms: float,
    neutral_silence_ms: float,
    final_silence_ms: float,
    hesitation_silence_ms: float,
    short_phrase_ms: float,
    max_wait_ms: float | None,
) -> None:
    """Raise ValueError for knobs that do not make sense together."""
    if not isinstance(threshold, (int, float)) or not 0.2 <= threshold < 1:
        raise ValueError(f"threshold must be within 0.2..1, not {threshold!r}")
    for name, value in (
        ("min_speech_ms", min_speech_ms),
        ("short_phrase_ms", short_phrase_ms),
        ("final_silence_ms", final_silence_ms),
        ("neutral_silence_ms", neutral_silence_ms),
        ("hesitation_silence_ms", hesitation_silence_ms),
    ):
        if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    if not final_silence_ms <= neutral_silence_ms <= hesitation_silence_ms:
        raise ValueError("silences must be final_silence_ms <= neutral_silence_ms <= hesitation_silence_ms")
    if max_wait_ms is not None and (not isinstance(max_wait_ms, (int, float)) or not max_wait_ms > 0):
        raise ValueError(f"max_wait_ms must be positive or None, not {max_wait_ms!r}")


class VoiceProbability(Protocol):
    """Anything that gives a voice probability for each 20 ms frame it is fed."""

    sample_rate: int

    def feed_frame(self, pcm: bytes) -> float:
        """The voice probability (0..1) after this frame."""


@runtime_checkable
class DeferredVoiceProbability(Protocol):
    """A source whose probabilities may come after the frame (:class:`~voiceedge.media.silero.SileroStream`)."""

    sample_rate: int
    #: How long after a frame its probability may take to come (seconds); ``None`` when the
    #: source tells its owner when it comes (nothing to poll for meanwhile).
    wait: float | None

    def push_frame(self, pcm: bytes) -> int:
        """Take a frame; its ticket."""

    def ready(self, ticket: int) -> bool:
        """Whether the ticket's probability is in."""

    def take(self, ticket: int) -> float:
        """The ticket's probability (0..1), once ready."""

    def close(self) -> None:
        """No more frames come: forget those waiting."""


@functools.lru_cache(maxsize=8)
def _lag_plan(n: int, rate: int) -> tuple[int, int, int, np.ndarray]:
    """For ``n`` samples at ``rate``: the FFT size, the lag range, and each lag's overlap ``(n - lag) / n``."""
    low = max(1, int(rate / _PITCH_RANGE_HZ[1]))
    high = min(n - 1, int(rate / _PITCH_RANGE_HZ[0]))
    # Lags below ``high`` are exact in a circular autocorrelation of size n + high
    # (no wrapped products reach them): half the FFT of size 2n for a 40 ms window.
    size = 1 << (n + high).bit_length()
    return size, low, high, (n - np.arange(low, max(low, high))) / n


def frame_pitch(samples: np.ndarray, rate: int) -> float:
    """The fundamental frequency of ``samples`` in Hz by normalised autocorrelation, 0 if unpitched."""
    x = samples - samples.mean()
    energy = float(np.dot(x, x))
    if energy <= 0:
        return 0.0
    n = len(x)
    size, low, high, overlap = _lag_plan(n, rate)
    if high <= low:
        return 0.0
    spectrum = np.fft.rfft(x, size)
    ac = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, size)[:high]
    # Normalise by the overlap so long lags are not penalised.
    window = ac[low:high] / (ac[0] * overlap)
    peak = float(window.max())
    if peak < _CLARITY:
        return 0.0
    # The shortest lag that is a local peak nearly as good as the best: multiples
    # of the period score as well as the period itself (octave-low errors).
    good = np.nonzero(window[1:-1] >= 0.85 * peak)[0] + 1
    best = int(np.argmax(window))
    for i in good:
        if window[i] >= window[i - 1] and window[i] >= window[i + 1]:
            best = int(i)
            break
    return rate / (best + low)


def _pitch_step(rate: int) -> int:
    """The smallest whole step that brings ``rate`` to at most 16 kHz with whole 20 ms frames."""
    step = 1
    while rate // step > _PITCH_MAX_RATE or rate % step or (rate // step) % 50:
        step += 1
    return step


def _median(ordered: list[float]) -> float:
    """The median of an already sorted, non-empty list (the mean of the middle two for an even length)."""
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


@implementer(ISpeechDetector)
class ProbabilityTurnDetector:
    """Speech start/stop events from per-frame voice probabilities and pitch (see the module doc)."""

    def __init__(
        self,
        source: VoiceProbability,
        *,
        threshold: float = 0.5,
        min_speech_ms: float = 60.0,
        neutral_silence_ms: float = 800.0,
        final_silence_ms: float = 200.0,
        hesitation_silence_ms: float = 1200.0,
        short_phrase_ms: float = 600.0,
        max_wait_ms: float | None = None,
    ) -> None:
        _check(
            threshold=threshold,
            min_speech_ms=min_speech_ms,
            neutral_silence_ms=neutral_silence_ms,
            final_silence_ms=final_silence_ms,
            hesitation_silence_ms=hesitation_silence_ms,
            short_phrase_ms=short_phrase_ms,
            max_wait_ms=max_wait_ms,
        )
        self.sample_rate = source.sample_rate
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.neutral_silence_ms = neutral_silence_ms
        self.final_silence_ms = final_silence_ms
        self.hesitation_silence_ms = hesitation_silence_ms
        self.short_phrase_ms = short_phrase_ms
        self.max_wait_ms = max_wait_ms
        self._source = source
        self._deferred = source if isinstance(source, DeferredVoiceProbability) else None
        # Frames waiting for their probability: (pcm, start, ticket), oldest first.
        self._waiting: deque[tuple[bytes, float, int]] = deque()
        self._frame_bytes = self.sample_rate // 50 * 2
        self._pending = bytearray()
        self._pitch_step = _pitch_step(self.sample_rate)
        self._pitch_rate = self.sample_rate // self._pitch_step
        self._previous = np.zeros(self._pitch_rate // 50, dtype=np.float32)
        self._audio_end: float | None = None
        self._speaking = False
        self._armed = True
        self._run_start: float | None = None
        self._turn_start = 0.0
        self._voiced_end = 0.0
        self._phrase_start = 0.0
        self._pitches: list[float] = []  # the phrase's pitched frames, in order
        self._pitches_sorted: list[float] = []  # the same, sorted: its median without a sort per frame
        self._wait = neutral_silence_ms / 1000
        self._in_voice = False
        self.voice_probability = 0.0
        self.last_end: EndKind | None = None
        self._pending_kind: EndKind = "neutral"

    @property
    def speaking(self) -> bool:
        """Whether a turn is open."""
        return self._speaking

    def close(self) -> None:
        """The stream ended: its source lets go of what it holds elsewhere (a batcher's queue)."""
        if self._deferred is not None:
            self._deferred.close()
        self._waiting.clear()

    def update(self, **params: float | None) -> None:
        """Change knobs (the constructor's keywords but ``source``) at run time.

        All are checked before any is applied: an unknown name raises
        ``TypeError``, a bad value ``ValueError``; the open turn goes on.
        """
        unknown = set(params) - _PARAMETERS
        if unknown:
            raise TypeError(f"unknown turn detector parameters: {', '.join(sorted(unknown))}")
        merged = {name: getattr(self, name) for name in _PARAMETERS}
        merged.update(params)
        _check(**merged)
        for name, value in params.items():
            setattr(self, name, value)

    def feed(self, pcm: bytes, now: float) -> list[SpeechEvent]:
        """Take PCM16 mono little-endian audio whose first sample is at ``now``; return events."""
        if len(pcm) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        pending = self._pending
        start = now - len(pending) / 2 / self.sample_rate
        pending += pcm
        events: list[SpeechEvent] = []
        size = self._frame_bytes
        usable = len(pending) - len(pending) % size
        deferred = self._deferred
        for offset in range(0, usable, size):
            pcm = bytes(pending[offset : offset + size])
            if deferred is None:
                self._frame(pcm, self._source.feed_frame(pcm), start, events)
            else:
                self._waiting.append((pcm, start, deferred.push_frame(pcm)))
            start += _FRAME
        del pending[:usable]
        if self._waiting:
            self._release(events)
        return events

    def _release(self, events: list[SpeechEvent]) -> None:
        """Run the waiting frames whose probabilities are in, in order."""
        waiting = self._waiting
        source = self._deferred
        assert source is not None
        while waiting and source.ready(waiting[0][2]):
            pcm, start, ticket = waiting.popleft()
            self._frame(pcm, source.take(ticket), start, events)

    def poll(self, now: float) -> list[SpeechEvent]:
        """Apply the passage of time with no audio up to ``now``."""
        events: list[SpeechEvent] = []
        if self._waiting:
            self._release(events)
            if self._waiting:
                return events  # audio is still there: no silence to count
        if self._speaking and (self._audio_end is None or now >= self._audio_end):
            if self._in_voice:
                self._pause_began()
            self._check_stop(now, events)
        return events

    def deadline(self) -> float | None:
        """When :meth:`poll` would end the open turn if no more voice came; while frames wait for their
        probabilities, when the oldest's is due (``None`` if the source tells when: nothing ends a turn
        while audio waits)."""
        if self._waiting:
            assert self._deferred is not None
            wait = self._deferred.wait
            return None if wait is None else self._waiting[0][1] + wait
        if not self._speaking:
            return None
        when = self._voiced_end + (self._end_rule()[1] if self._in_voice else self._wait)
        if self.max_wait_ms is not None:
            when = min(when, self._turn_start + self.max_wait_ms / 1000)
        return when

    # -- frames ---------------------------------------------------------------

    def _frame(self, pcm: bytes, p: float, start: float, events: list[SpeechEvent]) -> None:
        end = start + _FRAME
        if self._audio_end is not None and start > self._audio_end + _FRAME:
            self._run_start = None
            if self._speaking:
                self._pause_began()
                self._check_stop(start, events)
        self._audio_end = end
        self.voice_probability = p
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        if self._pitch_step > 1:
            samples = samples.reshape(-1, self._pitch_step).sum(axis=1)  # the scale does not matter
        if self._speaking:
            if p >= self.threshold - _HYSTERESIS:
                if not self._in_voice and (start - self._voiced_end) * 1000 > _PHRASE_GAP_MS:
                    self._phrase_start = start
                    self._clear_pitches()
                self._in_voice = True
                self._voiced_end = end
                self._track_pitch(samples)
            elif self._in_voice:
                self._pause_began()
            self._previous = samples
            self._check_stop(end, events)
            return
        self._previous = samples
        if p < self.threshold:
            self._run_start = None
            self._armed = True
            return
        if not self._armed:
            return
        if self._run_start is None:
            self._run_start = start
            self._clear_pitches()
        self._track_pitch(samples)
        if (end - self._run_start) * 1000 >= self.min_speech_ms - 1e-6:
            self._speaking = True
            self._in_voice = True
            self._turn_start = self._phrase_start = self._run_start
            self._voiced_end = end
            self._run_start = None
            events.append(SpeechStarted(self._turn_start, end))

    def _track_pitch(self, samples: np.ndarray) -> None:
        pitch = frame_pitch(np.concatenate((self._previous, samples)), self._pitch_rate)
        if pitch > 0:
            self._pitches.append(pitch)
            bisect.insort(self._pitches_sorted, pitch)

    def _clear_pitches(self) -> None:
        self._pitches.clear()
        self._pitches_sorted.clear()

    def _pause_began(self) -> None:
        """The voice just stopped: choose the silence that will end the turn."""
        self._in_voice = False
        self._pending_kind, self._wait = self._end_rule()

    def _end_rule(self) -> tuple[EndKind, float]:
        """How the voice so far ended, and the silence (s) that would end the turn."""
        phrase_ms = (self._voiced_end - self._phrase_start) * 1000
        if phrase_ms < self.short_phrase_ms:
            return "hesitation", self.hesitation_silence_ms / 1000
        if self._final_fall():
            return "final", self.final_silence_ms / 1000
        return "neutral", self.neutral_silence_ms / 1000

    def _final_fall(self) -> bool:
        pitches = self._pitches
        if len(pitches) < _MIN_PITCHED:
            return False
        tail = _median(sorted(pitches[-_TAIL_FRAMES:]))
        return tail < _FALL_RATIO * _median(self._pitches_sorted)

    def _check_stop(self, now: float, events: list[SpeechEvent]) -> None:
        if not self._in_voice and (now - self._voiced_end) >= self._wait - 1e-6:
            self._speaking = False
            self.last_end = self._pending_kind
            events.append(SpeechStopped(self._voiced_end, now))
        elif self.max_wait_ms is not None and (now - self._turn_start) * 1000 >= self.max_wait_ms - 1e-6:
            self._speaking = False
            self._armed = False
            self._in_voice = False
            self.last_end = "max_wait"
            events.append(SpeechStopped(now, now, "max_wait"))

