# -*- test-case-name: tests.test_parrot -*-
"""The parrot agent: a turn-taking demo that waits for the end of the caller's turn, then says it back.

A turn is what the speech detector (:mod:`voiceedge.media.speech`) calls one:
``min_speech_ms`` of voiced audio opens it (shorter blips are not a turn), and
``silence_ms`` of silence, or ``max_wait_ms`` since it began, closes it.  The
parrot records the turn (from ``prefix_padding_ms`` before its first voiced
frame, so soft onsets are kept, to the end of its last voiced frame; at most
``max_turn_ms``), then plays it back in short chunks so that it always knows how
much was played.  When the caller speaks while it plays (barge-in: the session's
``speech_started``, or its own detector), it stops, and records the new turn.

Each playback is a turn: the parrot says when it starts and ends
(:meth:`IAgentSession.start_turn`, :meth:`IAgentSession.end_turn`), so the
session's Realtime layer wraps it in ``response.created`` ... ``response.done``.
``response.create`` says the last turn back again (an empty response when
there is none yet). Its own events to the caller (``oai-events``):
``parrot.turn_started``, ``parrot.turn_ended`` (``duration_ms``, ``reason``),
``parrot.speaking`` (``duration_ms``), ``parrot.done``, ``parrot.interrupted``
(``played_ms``).

The caller tunes it with OpenAI Realtime's ``session.update``
(``session.audio.input.turn_detection``), which the layer validates:
``silence_duration_ms`` and ``prefix_padding_ms`` apply as they are,
``threshold`` (0..1) maps onto ``threshold_db`` (0.5 is the INI's value),
``semantic_vad``'s ``eagerness`` picks a silence (``low`` 1000 ms, ``high``
250 ms), ``create_response: false`` keeps it from answering on its own (only
``response.create`` makes it speak), ``interrupt_response: false`` lets it
finish over the caller, and ``turn_detection: null`` does both. Until a client
sets ``turn_detection``, the INI's ``[agent.parrot]`` values hold.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall
from zope.interface import implementer, provider

from voiceedge import config as c
from voiceedge.agents.interfaces import (
    AudioFrame,
    IAgent,
    IAgentFactory,
    IAgentSession,
    IAgentType,
    ITurnTakingAgent,
)
from voiceedge.media.detection import (
    DetectionSettings,
    DetectorName,
    DetectorUnavailable,
    make_speech_detector,
    parse_detector,
)
from voiceedge.media.speech import SpeechDetector, SpeechEvent, SpeechStarted, SpeechStopped
from voiceedge.media.turns import ProbabilityTurnDetector

__all__ = ["ParrotAgent", "ParrotAgentFactory", "TurnDetection", "agent_type"]

_UNSEEN = object()

RTP_CLOCK_RATE = 48000  # Opus RTP timestamps, whatever the PCM rate
# Playback goes out in chunks of CHUNK_MS, topped up while less than LEAD_MS is
# queued: enough ahead that a late timer never starves the shared tick, little
# enough that stopping is quick even when the session does not clear its queue.
CHUNK_MS = 100
LEAD_MS = 300
# A frame time that lags its arrival by more than this means the sender's RTP
# clock jumped (new stream, pause without timestamps): start timing afresh.
RESYNC_SECONDS = 1.0
# Hysteresis of the detector: less than the threshold, since the detector requires it.
HYSTERESIS_DB = 3.0
MAX_TURN_LIMIT_MS = 30_000


@dataclasses.dataclass(frozen=True, slots=True)
class TurnDetection:
    """When a turn starts and ends: which speech detector, its knobs, plus the pre-roll kept.

    With ``detector = "silero"``, ``silence_ms`` is the silence after an end that
    sounds neither final nor hesitant (see :mod:`voiceedge.media.turns`);
    ``threshold_db`` is the energy detector's only.
    """

    threshold_db: float = 12.0
    min_speech_ms: float = 150.0
    silence_ms: float = 600.0
    max_wait_ms: float | None = 15_000.0
    prefix_padding_ms: float = 100.0
    detector: DetectorName = "energy"

    def from_realtime(self, turn_detection: dict[str, Any]) -> TurnDetection:
        """A copy following a validated Realtime ``turn_detection`` object (server or semantic VAD).

        ``threshold`` 0.5 keeps this ``threshold_db``; 0 is 3 dB, 1 is twice it less 3 dB.
        """
        if turn_detection.get("type") == "semantic_vad":
            eagerness = turn_detection.get("eagerness", "auto")
            silence = {"low": 1000.0, "high": 250.0}.get(eagerness, self.silence_ms)
            return dataclasses.replace(self, silence_ms=silence)
        threshold = float(turn_detection.get("threshold", 0.5))
        return dataclasses.replace(
            self,
            threshold_db=max(1.0, 3.0 + threshold * 2 * (self.threshold_db - 3.0)),
            silence_ms=float(turn_detection.get("silence_duration_ms", self.silence_ms)),
            prefix_padding_ms=float(turn_detection.get("prefix_padding_ms", self.prefix_padding_ms)),
        )

    def make_detector(self, sample_rate: int) -> SpeechDetector | ProbabilityTurnDetector:
        """A new detector of the chosen kind with these knobs."""
        settings = DetectionSettings(self.detector)
        detector = make_speech_detector(settings, sample_rate)
        assert isinstance(detector, (SpeechDetector, ProbabilityTurnDetector))
        detector.update(**self.detector_parameters())
        return detector

    def detector_parameters(self) -> dict[str, float | None]:
        """Keywords for the detector's ``update``."""
        if self.detector == "silero":
            defaults = DetectionSettings("silero")
            return {
                "min_speech_ms": self.min_speech_ms,
                "final_silence_ms": min(defaults.final_silence_ms, self.silence_ms),
                "neutral_silence_ms": self.silence_ms,
                "hesitation_silence_ms": max(defaults.hesitation_silence_ms, self.silence_ms),
                "max_wait_ms": self.max_wait_ms,
            }
        return {
            "threshold_db": self.threshold_db,
            "hysteresis_db": min(HYSTERESIS_DB, self.threshold_db),
            "min_speech_ms": self.min_speech_ms,
            "silence_ms": self.silence_ms,
            "max_wait_ms": self.max_wait_ms,
        }


@implementer(ITurnTakingAgent)
class ParrotAgent:
    """Listens for a turn, then says it back; stops when the caller barges in.

    All time comes from ``session.clock``.  Frames are timed by their RTP
    timestamp, anchored to the earliest arrival seen, so network jitter does
    not look like gaps in the caller's speech.
    """

    def __init__(
        self,
        session: IAgentSession,
        turn_detection: TurnDetection,
        max_turn_ms: int = MAX_TURN_LIMIT_MS,
    ) -> None:
        self._session = session
        self._clock = session.clock
        self._rate: int = session.sample_rate
        self.turn_detection = turn_detection
        self._detector = turn_detection.make_detector(self._rate)
        self._bytes_per_ms = self._rate * 2 // 1000
        self._max_turn_bytes = max_turn_ms * self._bytes_per_ms
        self._closed = False
        # What the client's turn_detection allows (docs above).
        self.answers = True
        self.interruptible = True
        self._initial: TurnDetection = turn_detection
        self._seen_turn_detection: Any = _UNSEEN

        # Timing: frame time = RTP time since the first frame + the smallest
        # (arrival - RTP time) seen.
        self._rtp_base: int | None = None
        self._offset = 0.0

        # (start time, pcm) of recent frames, for the turn's prefix padding.
        self._recent: deque[tuple[float, bytes]] = deque()
        # (start time, pcm) of the open turn; None while no turn is open.
        self._turn: list[tuple[float, bytes]] | None = None
        self._turn_bytes = 0
        self._turn_start = 0.0
        self._detector_timer: IDelayedCall | None = None

        # Playback of the last turn.
        self._playback = b""
        self._played_upto = 0  # bytes handed to send_audio
        self._playback_started = 0.0
        self._playback_timer: IDelayedCall | None = None
        self._turn_open = False  # a turn started with start_turn and not ended yet
        self._last_turn = b""
        self.turns_played = 0

    # -- IAgent ---------------------------------------------------------------

    def audio_received(self, frame: AudioFrame) -> None:
        """Feed the caller's frame to the detector; keep it for the turn or its prefix."""
        if self._closed:
            return
        start = self._frame_time(frame)
        pcm = frame.pcm
        if self._turn is None:
            recent = self._recent
            recent.append((start, pcm))
            keep = (self.turn_detection.prefix_padding_ms + self.turn_detection.min_speech_ms) / 1000
            while recent and recent[0][0] < start - keep - 0.04:
                recent.popleft()
        else:
            self._record(start, pcm)
        self._handle(self._detector.feed(pcm, start))

    def speech_started(self, at: float) -> None:
        """The session heard the caller start: if the parrot is playing, that is a barge-in."""
        if not self._closed and self.playing and self.interruptible:
            self._interrupt()

    def speech_stopped(self, at: float) -> None:
        """Nothing to do: the parrot's own detector, with the caller's settings, ends turns."""

    def event_received(self, event: dict[str, Any]) -> None:
        """Nothing to do: the Realtime layer handles the protocol, and the parrot has no events of its own."""

    # -- ITurnTakingAgent ---------------------------------------------------------

    def configure(self, config: dict[str, Any]) -> None:
        """Follow the client's ``turn_detection`` once it sets one (the first configuration is the defaults)."""
        turn_detection = config.get("audio", {}).get("input", {}).get("turn_detection")
        first = self._seen_turn_detection is _UNSEEN
        if turn_detection == self._seen_turn_detection or self._closed:
            return
        self._seen_turn_detection = turn_detection
        if first:
            return
        if turn_detection is None:
            self.answers = self.interruptible = False
            return
        self.answers = bool(turn_detection.get("create_response", True))
        self.interruptible = bool(turn_detection.get("interrupt_response", True))
        self.turn_detection = self._initial.from_realtime(turn_detection)
        self._detector.update(**self.turn_detection.detector_parameters())
        # A shorter silence may end the open turn sooner than the timer set.
        self._cancel_detector_timer()
        self._arm_detector_timer()

    def create_response(self, request: dict[str, Any]) -> bool:
        """Say the last turn back again, if there is one and nothing plays."""
        if self._closed or self.playing or not self._last_turn:
            return False
        self._start_playback(self._last_turn)
        return True

    def cancel_response(self) -> None:
        """The turn was cancelled (its audio is dropped already): stop saying it."""
        if self.playing:
            self._turn_open = False  # the layer ended it already
            self._interrupt()

    def session_ended(self, reason: str) -> None:
        """Cancel the timers and drop all audio."""
        self._closed = True
        self._cancel_detector_timer()
        self._cancel_playback_timer()
        self._recent.clear()
        self._turn = None
        self._playback = b""

    # -- state ------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        """Whether a turn is being said back (sent, or queued in the session)."""
        return bool(self._playback)

    @property
    def listening(self) -> bool:
        """Whether a turn is open and being recorded."""
        return self._turn is not None

    # -- turns ------------------------------------------------------------------

    def _frame_time(self, frame: AudioFrame) -> float:
        """When the frame's first sample was spoken, on the session's clock."""
        if self._rtp_base is None:
            self._rtp_base = frame.rtp_timestamp
            self._offset = math.inf
        delta = (frame.rtp_timestamp - self._rtp_base) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        rtp_time = delta / RTP_CLOCK_RATE
        # A packet leaves once its frame has been spoken: the frame began one
        # frame's length before the earliest it can arrive.
        offset = frame.arrival - rtp_time - len(frame.pcm) / 2 / self._rate
        if offset < self._offset or offset > self._offset + RESYNC_SECONDS:
            self._offset = offset
        return rtp_time + self._offset

    def _record(self, start: float, pcm: bytes) -> None:
        assert self._turn is not None
        if self._turn_bytes + len(pcm) > self._max_turn_bytes:
            return  # bounded: the rest of an overlong turn is not said back
        self._turn.append((start, pcm))
        self._turn_bytes += len(pcm)

    def _handle(self, events: list[SpeechEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self._turn_started(event)
            elif isinstance(event, SpeechStopped):
                self._turn_ended(event)
        self._arm_detector_timer()

    def _turn_started(self, event: SpeechStarted) -> None:
        if self.playing and self.interruptible:
            self._interrupt()
        since = event.time - self.turn_detection.prefix_padding_ms / 1000 - 1e-6
        self._turn = []
        self._turn_bytes = 0
        self._turn_start = event.time
        for start, pcm in self._recent:
            if start >= since:
                self._record(start, pcm)
        self._recent.clear()
        self._session.send_event({"type": "parrot.turn_started"})

    def _turn_ended(self, event: SpeechStopped) -> None:
        turn, self._turn = self._turn, None
        self._turn_bytes = 0
        if turn is None:
            return
        # Keep up to the end of the last voiced frame: the silence that ended
        # the turn is not part of it.
        pcm = b"".join(p for start, p in turn if start < event.time - 1e-6)
        duration_ms = round((event.time - self._turn_start) * 1000)
        self._session.send_event(
            {"type": "parrot.turn_ended", "duration_ms": duration_ms, "reason": event.reason}
        )
        if pcm:
            self._last_turn = pcm
            if self.answers and not self.playing:
                self._start_playback(pcm)

    def _arm_detector_timer(self) -> None:
        """Make sure poll() runs at the detector's deadline, for when audio stops coming."""
        if self._closed or (self._detector_timer is not None and self._detector_timer.active()):
            return
        deadline = self._detector.deadline()
        if deadline is None:
            return
        delay = max(0.0, deadline - self._clock.seconds())
        self._detector_timer = self._clock.callLater(delay, self._detector_due)

    def _detector_due(self) -> None:
        self._detector_timer = None
        # The deadline only moves later while speech goes on: poll, and re-arm if still open.
        self._handle(self._detector.poll(self._clock.seconds()))

    def _cancel_detector_timer(self) -> None:
        if self._detector_timer is not None and self._detector_timer.active():
            self._detector_timer.cancel()
        self._detector_timer = None

    # -- playback ---------------------------------------------------------------

    def _start_playback(self, pcm: bytes) -> None:
        self._playback = pcm
        self._played_upto = 0
        self._playback_started = self._clock.seconds()
        self.turns_played += 1
        self._turn_open = True
        self._session.start_turn()
        self._session.send_event(
            {"type": "parrot.speaking", "duration_ms": len(pcm) // self._bytes_per_ms}
        )
        self._top_up()

    def _top_up(self) -> None:
        """Queue chunks until LEAD_MS waits in the session; come back when it runs low."""
        self._playback_timer = None
        session = self._session
        chunk = CHUNK_MS * self._bytes_per_ms
        queued = session.queued_audio_ms()
        while queued < LEAD_MS and self._played_upto < len(self._playback):
            piece = self._playback[self._played_upto : self._played_upto + chunk]
            session.send_audio(piece)
            self._played_upto += len(piece)
            queued += len(piece) // self._bytes_per_ms
        if self._turn_open and self._played_upto >= len(self._playback):
            # All of it is queued: the turn is over for the protocol, though it still plays.
            self._turn_open = False
            session.end_turn()
        if self._played_upto < len(self._playback):
            delay = max(CHUNK_MS, queued - LEAD_MS + CHUNK_MS) / 1000
        elif queued > 0:
            delay = queued / 1000
        else:
            self._finish_playback()
            return
        self._playback_timer = self._clock.callLater(delay, self._top_up)

    def _finish_playback(self) -> None:
        duration_ms = len(self._playback) // self._bytes_per_ms
        self._playback = b""
        self._played_upto = 0
        self._session.send_event({"type": "parrot.done", "duration_ms": duration_ms})

    def _interrupt(self) -> None:
        """Stop saying the turn back: nothing more is queued, and what is queued goes."""
        self._cancel_playback_timer()
        # The session has usually cleared its queue already; if it was told
        # not to, stopping is still the parrot's own choice.
        self._session.clear_audio()
        played_ms = min(
            len(self._playback) // self._bytes_per_ms,
            round((self._clock.seconds() - self._playback_started) * 1000),
        )
        self._playback = b""
        self._played_upto = 0
        if self._turn_open:
            self._turn_open = False
            self._session.end_turn(interrupted=True)
        self._session.send_event({"type": "parrot.interrupted", "played_ms": played_ms})

    def _cancel_playback_timer(self) -> None:
        if self._playback_timer is not None and self._playback_timer.active():
            self._playback_timer.cancel()
        self._playback_timer = None


@implementer(IAgentFactory)
class ParrotAgentFactory:
    """Builds a :class:`ParrotAgent` for every session, with the INI's turn detection."""

    def __init__(
        self,
        sample_rate: int = 24000,
        turn_detection: TurnDetection = TurnDetection(),
        max_turn_ms: int = MAX_TURN_LIMIT_MS,
    ) -> None:
        self.sample_rate = sample_rate
        self.turn_detection = turn_detection
        self.max_turn_ms = max_turn_ms

    def agent_for(self, session: IAgentSession) -> IAgent:
        """A parrot for ``session``."""
        return ParrotAgent(session, self.turn_detection, self.max_turn_ms)


def _decibels(minimum: float, maximum: float) -> Callable[[str], float]:
    """A parser for a level difference in dB in ``[minimum, maximum]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("not a number of dB") from None
        # Compare before isfinite(): a huge int (10**400) overflows a float.
        if not (minimum <= value <= maximum and math.isfinite(value)):
            raise ValueError(f"must be between {minimum:g} and {maximum:g} dB")
        return value

    return parse


@provider(IAgentType)
class agent_type:  # noqa: N801 - the module attribute AgentPlugin loads
    """The parrot agent's INI section ``[agent.parrot]``."""

    name = "parrot"
    description = "waits for the end of your turn, then repeats it"
    options = {
        "sample_rate": c.Key(c.choice(16000, 24000, 48000), "24000", "PCM rate of the parrot"),
        "detector": c.Key(
            parse_detector,
            "silero",
            "speech detector that ends turns: silero (neural VAD, adaptive end of turn) or energy",
        ),
        "threshold_db": c.Key(_decibels(1, 60), "12", "how far above the noise floor speech is"),
        "min_speech_ms": c.Key(c.integer(0, 5000), "150", "shorter sounds are not a turn"),
        "silence_ms": c.Key(c.integer(0, 10_000), "600", "the silence that ends a turn"),
        "max_wait_ms": c.Key(
            c.optional_integer(100, MAX_TURN_LIMIT_MS),
            "15000",
            "the longest turn before the parrot answers anyway (empty: no limit)",
        ),
        "prefix_padding_ms": c.Key(
            c.integer(0, 1000), "100", "audio kept from before the first voiced frame"
        ),
        "max_turn_ms": c.Key(
            c.integer(1000, MAX_TURN_LIMIT_MS), "30000", "the most of a turn recorded and said back"
        ),
    }

    @staticmethod
    def make_factory(options: dict[str, Any], reactor: Any) -> IAgentFactory:
        """A parrot factory from the parsed options."""
        detection = TurnDetection(
            threshold_db=options["threshold_db"],
            min_speech_ms=options["min_speech_ms"],
            silence_ms=options["silence_ms"],
            max_wait_ms=options["max_wait_ms"],
            prefix_padding_ms=options["prefix_padding_ms"],
            detector=options["detector"],
        )
        try:
            # Load the model now: a missing package stops start-up, not the first call.
            detection.make_detector(options["sample_rate"])
        except DetectorUnavailable as e:
            raise c.ConfigError(f"[agent.parrot] detector = {detection.detector}: {e}") from None
        return ParrotAgentFactory(options["sample_rate"], detection, options["max_turn_ms"])
