# -*- test-case-name: tests.test_parrot -*-
"""The parrot agent: a turn-taking demo that waits for the end of the caller's turn, then says it back.

A turn is what the session's speech detector calls one: the call runs one
detector (``[speech]``, :mod:`voiceedge.media.detection`), whose events drive
barge-in, the agent's turns and the Realtime events alike.  The session's
``speech_started`` opens a turn and its ``speech_stopped`` closes it.  The parrot
records the turn (from ``prefix_padding_ms`` before its first voiced frame, so
soft onsets are kept, to the end of its last voiced frame; at most
``max_turn_ms``), then plays it back in short chunks so that it always knows how
much was played.  When the caller speaks while it plays (barge-in: the session
has already cut its audio), it stops, and records the new turn.

Each playback is a turn: the parrot says when it starts and ends
(:meth:`IAgentSession.start_turn`, :meth:`IAgentSession.end_turn`), so the
session's Realtime layer wraps it in ``response.created`` ... ``response.done``.
``response.create`` says the last turn back again (an empty response when
there is none yet). Its own events to the caller (``oai-events``):
``parrot.turn_started``, ``parrot.turn_ended`` (``duration_ms``),
``parrot.speaking`` (``duration_ms``), ``parrot.done``, ``parrot.interrupted``
(``played_ms``).

The caller tunes it with OpenAI Realtime's ``session.update``
(``session.audio.input.turn_detection``), which the layer validates; the
layer retunes the session's detector (threshold, silence), and the parrot
follows ``prefix_padding_ms``, ``create_response: false`` (only
``response.create`` makes it speak), ``interrupt_response: false`` (it
finishes over the caller) and ``turn_detection: null`` (both).
"""

from __future__ import annotations

from collections import deque
from typing import Any

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

__all__ = ["ParrotAgent", "ParrotAgentFactory", "agent_type"]

_UNSEEN = object()

# Playback goes out in chunks of CHUNK_MS, topped up while less than LEAD_MS is
# queued: enough ahead that a late timer never starves the shared tick, little
# enough that stopping is quick even when the session does not clear its queue.
CHUNK_MS = 100
LEAD_MS = 300
MAX_TURN_LIMIT_MS = 30_000
MAX_PREFIX_MS = 1000
# The session says a turn began once min_speech_ms of voice was heard, and a
# neural detector's voice lags the audio: frames this much older than the
# prefix are kept too, until a turn opens.
RECENT_KEEP_MS = 600


@implementer(ITurnTakingAgent)
class ParrotAgent:
    """Records the caller's turn as the session's detector marks it, then says it back.

    Frames are timed by ``AudioFrame.start`` (the RTP-timed place of the
    frame), the time base of the session's speech events, so a backlog read
    late after a stall is recorded where it was spoken; the playback's timer
    runs on ``session.clock``.
    """

    def __init__(
        self,
        session: IAgentSession,
        prefix_padding_ms: float = 100.0,
        max_turn_ms: int = MAX_TURN_LIMIT_MS,
    ) -> None:
        self._session = session
        self._clock = session.clock
        self._rate: int = session.sample_rate
        self.prefix_padding_ms = prefix_padding_ms
        self._initial_prefix_ms = prefix_padding_ms
        self._bytes_per_ms = self._rate * 2 // 1000
        self._max_turn_bytes = max_turn_ms * self._bytes_per_ms
        self._closed = False
        # What the client's turn_detection allows (docs above).
        self.answers = True
        self.interruptible = True
        self._seen_turn_detection: Any = _UNSEEN

        # (start, pcm) of recent frames, for the turn's prefix padding.
        self._recent: deque[tuple[float, bytes]] = deque()
        # (start, pcm) of the open turn; None while no turn is open.
        self._turn: list[tuple[float, bytes]] | None = None
        self._turn_bytes = 0
        self._turn_start = 0.0

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
        """Keep the caller's frame for the open turn, or for the next one's prefix."""
        if self._closed:
            return
        start, pcm = frame.start, frame.pcm
        if self._turn is not None:
            self._record(start, pcm)
            return
        recent = self._recent
        recent.append((start, pcm))
        keep = (self.prefix_padding_ms + RECENT_KEEP_MS) / 1000
        while recent and recent[0][0] < start - keep:
            recent.popleft()

    def speech_started(self, at: float) -> None:
        """The caller started speaking at ``at``: stop playing (barge-in) and open a turn."""
        if self._closed:
            return
        if self.playing and self.interruptible:
            self._interrupt()
        since = at - self.prefix_padding_ms / 1000 - 1e-6
        self._turn = []
        self._turn_bytes = 0
        self._turn_start = at
        for start, pcm in self._recent:
            if start >= since:
                self._record(start, pcm)
        self._recent.clear()
        self._session.send_event({"type": "parrot.turn_started"})

    def speech_stopped(self, at: float) -> None:
        """The caller's turn ended at ``at`` (the end of its last voiced frame): say it back."""
        turn, self._turn = self._turn, None
        self._turn_bytes = 0
        if self._closed or turn is None:
            return
        # Up to the end of the last voiced frame: the silence that ended the
        # turn is not part of it.
        pcm = b"".join(p for start, p in turn if start < at - 1e-6)
        self._session.send_event(
            {"type": "parrot.turn_ended", "duration_ms": round((at - self._turn_start) * 1000)}
        )
        if pcm:
            self._last_turn = pcm
            if self.answers and not self.playing:
                self._start_playback(pcm)

    def event_received(self, event: dict[str, Any]) -> None:
        """Nothing to do: the Realtime layer handles the protocol, and the parrot has no events of its own."""

    # -- ITurnTakingAgent ---------------------------------------------------------

    def configure(self, config: dict[str, Any]) -> None:
        """Follow the client's ``turn_detection`` once it sets one (the first configuration is the defaults).

        The session's detector is the layer's to retune; the parrot takes the
        prefix padding and whether it answers and may be interrupted.
        """
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
        self.prefix_padding_ms = float(turn_detection.get("prefix_padding_ms", self._initial_prefix_ms))

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
        """Cancel the timer and drop all audio."""
        self._closed = True
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

    def _record(self, start: float, pcm: bytes) -> None:
        assert self._turn is not None
        if self._turn_bytes + len(pcm) > self._max_turn_bytes:
            return  # bounded: the rest of an overlong turn is not said back
        self._turn.append((start, pcm))
        self._turn_bytes += len(pcm)

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
    """Builds a :class:`ParrotAgent` for every session."""

    def __init__(
        self,
        sample_rate: int = 24000,
        prefix_padding_ms: float = 100.0,
        max_turn_ms: int = MAX_TURN_LIMIT_MS,
    ) -> None:
        self.sample_rate = sample_rate
        self.prefix_padding_ms = prefix_padding_ms
        self.max_turn_ms = max_turn_ms

    def agent_for(self, session: IAgentSession) -> IAgent:
        """A parrot for ``session``."""
        return ParrotAgent(session, self.prefix_padding_ms, self.max_turn_ms)


@provider(IAgentType)
class agent_type:  # noqa: N801 - the module attribute AgentPlugin loads
    """The parrot agent's INI section ``[agent.parrot]``; its turns follow ``[speech]``."""

    name = "parrot"
    description = "waits for the end of your turn, then repeats it"
    options = {
        "sample_rate": c.Key(c.choice(16000, 24000, 48000), "24000", "PCM rate of the parrot"),
        "prefix_padding_ms": c.Key(
            c.integer(0, MAX_PREFIX_MS), "100", "audio kept from before the first voiced frame"
        ),
        "max_turn_ms": c.Key(
            c.integer(1000, MAX_TURN_LIMIT_MS), "30000", "the most of a turn recorded and said back"
        ),
    }

    @staticmethod
    def make_factory(options: dict[str, Any], reactor: Any) -> IAgentFactory:
        """A parrot factory from the parsed options."""
        return ParrotAgentFactory(options["sample_rate"], options["prefix_padding_ms"], options["max_turn_ms"])
