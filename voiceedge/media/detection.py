# -*- test-case-name: tests.test_turns -*-
"""Speech detection behind one interface: which detector runs is a setting, not the session's concern.

A session (or an agent) holds an :class:`ISpeechDetector`: it feeds 20 ms PCM16
frames at its own rate with the time of each frame's first sample, gets
:class:`~voiceedge.media.speech.SpeechStarted` / ``SpeechStopped`` events with
times back, calls :meth:`~ISpeechDetector.poll` at
:meth:`~ISpeechDetector.deadline` when audio stops coming, and never knows which
detector runs.  :func:`make_speech_detector` builds one from
:class:`DetectionSettings`:

- ``energy``: :class:`voiceedge.media.speech.SpeechDetector`, an RMS level above
  an adaptive noise floor, and a fixed ``silence_ms`` that ends a turn.  No
  dependency; the fallback.
- ``silero``: Silero VAD's voice probability (:mod:`voiceedge.media.silero`, needs
  ``onnxruntime`` and a package shipping the model) with an end-of-turn silence
  that adapts to how the speech ended (:mod:`voiceedge.media.turns`); its windows
  run in batches across streams where a batcher is installed
  (:mod:`voiceedge.media.silero_batch`: the transceiver does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from voiceedge.media.silero_batch import SileroBatcher

__all__ = [
    "DETECTORS",
    "DetectionSettings",
    "DetectorUnavailable",
    "ISpeechDetector",
    "make_speech_detector",
    "parse_detector",
]

DetectorName = Literal["energy", "silero"]
DETECTORS: tuple[DetectorName, ...] = ("energy", "silero")


class ISpeechDetector(Interface):
    """Turns a stream of PCM16 mono audio into speech start/stop events, sans I/O.

    Audio is fed in any length (20 ms frames are the norm) at
    :attr:`sample_rate`; ``now`` is the caller's clock value for the first
    sample fed.  No method reads a clock or schedules anything.
    """

    sample_rate = Attribute("The PCM rate fed, in Hz.")
    speaking = Attribute("Whether a turn is open (SpeechStarted given, SpeechStopped not yet).")
    voice_probability = Attribute("How likely the last 20 ms frame fed was voice, 0..1.")

    def feed(pcm: bytes, now: float) -> list[Any]:
        """Take PCM16 mono little-endian audio whose first sample is at ``now``; return events."""

    def poll(now: float) -> list[Any]:
        """Apply the passage of time with no audio up to ``now``; return events."""

    def deadline() -> float | None:
        """When :meth:`poll` would end the open turn if nothing more came; None if none is open.

        A detector whose frames wait for a result computed later (Silero's
        batched windows) gives when that result is due while they wait
        (already past when the batch runs at the loop's next turn), or
        ``None`` when its ``on_results`` callback will say (see
        :func:`make_speech_detector`)."""

    def close() -> None:
        """The stream ended: let go of what is held for it elsewhere (windows queued in a batcher).
        Nothing more is fed then."""

    def update(**params: float | None) -> None:
        """Change knobs at run time (:meth:`DetectionSettings.parameters` gives them); ``ValueError``
        for a bad value, nothing changed then; an open turn goes on."""


def parse_detector(text: str) -> DetectorName:
    """An INI value naming a detector; ``ValueError`` names the choices."""
    for name in DETECTORS:
        if text.strip().lower() == name:
            return name
    raise ValueError(f"must be one of {', '.join(DETECTORS)}")


class DetectorUnavailable(RuntimeError):
    """The chosen detector cannot run here (a package is missing); the message says which."""


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    """Which detector, and its knobs.  Durations in ms; ``threshold`` is a probability.

    ``silence_ms`` and ``threshold_db`` are ``energy``'s; ``threshold`` (a voice
    probability) and the silences after a final fall, a neutral end and a
    hesitation are ``silero``'s (see :mod:`voiceedge.media.turns`).
    """

    detector: DetectorName = "energy"
    min_speech_ms: float = 40.0
    silence_ms: float = 500.0
    max_wait_ms: float | None = None
    threshold_db: float = 12.0
    threshold: float = 0.5
    final_silence_ms: float = 200.0
    neutral_silence_ms: float = 800.0
    hesitation_silence_ms: float = 1200.0
    short_phrase_ms: float = 600.0

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, not {self.detector!r}")

    def parameters(self) -> dict[str, float | None]:
        """The keywords of the chosen detector's ``update`` for these knobs."""
        if self.detector == "energy":
            return {
                "threshold_db": self.threshold_db,
                "hysteresis_db": min(3.0, self.threshold_db),
                "min_speech_ms": self.min_speech_ms,
                "silence_ms": self.silence_ms,
                "max_wait_ms": self.max_wait_ms,
            }
        return {
            "threshold": self.threshold,
            "min_speech_ms": self.min_speech_ms,
            "final_silence_ms": self.final_silence_ms,
            "neutral_silence_ms": self.neutral_silence_ms,
            "hesitation_silence_ms": self.hesitation_silence_ms,
            "short_phrase_ms": self.short_phrase_ms,
            "max_wait_ms": self.max_wait_ms,
        }


def make_speech_detector(
    settings: DetectionSettings,
    sample_rate: int,
    batcher: SileroBatcher | None = None,
    on_results: Callable[[], None] | None = None,
) -> ISpeechDetector:
    """A new detector for one stream at ``sample_rate``, as ``settings`` choose.

    A Silero detector runs its windows with ``batcher``'s other streams (the
    transceiver's: one inference for many calls), or alone without one. With
    ``on_results`` too, the batcher calls it once the stream's windows have run:
    the owner then polls (:meth:`ISpeechDetector.poll`) to take the frames'
    events, and the detector's deadline does not wake it for them.

    Raises :class:`DetectorUnavailable` when the detector's packages are not
    installed, and ``ValueError`` for a bad setting or rate.
    """
    if settings.detector == "energy":
        from voiceedge.media.speech import SpeechDetector

        return SpeechDetector(
            sample_rate,
            threshold_db=settings.threshold_db,
            min_speech_ms=settings.min_speech_ms,
            silence_ms=settings.silence_ms,
            max_wait_ms=settings.max_wait_ms,
            hysteresis_db=min(3.0, settings.threshold_db),
        )
    try:
        from voiceedge.media.silero import ModelUnavailable, SileroStream
    except ImportError as e:  # numpy missing
        raise DetectorUnavailable(f"the silero detector needs numpy and onnxruntime: {e}") from None
    from voiceedge.media.turns import ProbabilityTurnDetector

    try:
        source = SileroStream(sample_rate, batcher=batcher, on_results=on_results if batcher is not None else None)
    except ModelUnavailable as e:
        raise DetectorUnavailable(str(e)) from None
    return ProbabilityTurnDetector(
        source,
        threshold=settings.threshold,
        min_speech_ms=settings.min_speech_ms,
        final_silence_ms=settings.final_silence_ms,
        neutral_silence_ms=settings.neutral_silence_ms,
        hesitation_silence_ms=settings.hesitation_silence_ms,
        short_phrase_ms=settings.short_phrase_ms,
        max_wait_ms=settings.max_wait_ms,
    )
