# -*- test-case-name: tests.test_agents -*-
"""The echo agent: the caller hears their own audio back, decoded and re-encoded (or, passthrough, as it came)."""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from zope.interface import implementer, provider

from voiceedge import config as c
from voiceedge.agents.interfaces import (
    AudioFrame,
    IAgent,
    IAgentCounters,
    IAgentFactory,
    IAgentSession,
    IAgentType,
    IPassthroughAgent,
    IPassthroughAgentFactory,
    IPassthroughSession,
    OpusFrame,
)

#: The most agent audio an echo lets wait to be sent, unless configured. An echo is
#: live: audio waits only when the caller's came in a burst (the event loop was late,
#: a network stall), and sending all of it would add its length to every later
#: frame's delay for the rest of the call, and hold its PCM meanwhile (measured with
#: ``bench/memory.py``: 2.6 s of it per call after 5 s of a loop 200 ms late, 96 kB
#: a second at 48 kHz). 100 ms is the sender's own catch-up
#: (:data:`~voiceedge.transceiver.rtp_sender.MAX_CATCH_UP` frames).
DEFAULT_MAX_LAG_MS = 100
#: The counter (``voiceedge_agent_events{agent="echo"}``) of audio not echoed because
#: :data:`DEFAULT_MAX_LAG_MS` (or ``max_lag_ms``) of it was already waiting, in ms.
LATE_DROPPED = "late_audio_dropped_ms"


class _LagBound:
    """Whether an echo's next frame fits under its bound of queued audio; counts what does not."""

    __slots__ = ("_session", "_max_lag_ms", "_counters")

    def __init__(self, session: IAgentSession, max_lag_ms: int, counters: collections.Counter[str]) -> None:
        self._session = session
        self._max_lag_ms = max_lag_ms
        self._counters = counters

    def admits(self, ms: int) -> bool:
        """Whether ``ms`` more audio may be queued (0: no bound); if not, it is counted as dropped."""
        if not self._max_lag_ms or self._session.queued_audio_ms() + ms <= self._max_lag_ms:
            return True
        self._counters[LATE_DROPPED] += ms
        return False


@implementer(IAgent)
class EchoAgent:
    """Plays every frame of the caller's audio back after ``delay`` seconds.

    The audio goes through the real path both ways (Opus decode to PCM,
    PCM encode to Opus), so an echo call exercises the codec and pacing.
    Concealed frames are echoed too: they are what the caller's loss sounds like.
    Its audio is not made of turns (``turns = "none"``): ``response.create``
    completes at once, empty, and no response wraps the echo. At most
    ``max_lag_ms`` of it waits to be sent (0: no bound): a frame that would
    wait longer is dropped and counted (:data:`LATE_DROPPED`).
    """

    turns = "none"

    def __init__(
        self,
        session: IAgentSession,
        delay: float,
        max_lag_ms: int = DEFAULT_MAX_LAG_MS,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        self._session = session
        self._delay = delay
        self._pending: set[IDelayedCall] = set()
        self._bound = _LagBound(session, max_lag_ms, collections.Counter() if counters is None else counters)

    def audio_received(self, frame: AudioFrame) -> None:
        """Queue the frame for the caller, now or after the delay."""
        if self._delay <= 0:
            self._play(frame.pcm)
            return
        call: IDelayedCall

        def play() -> None:
            self._pending.discard(call)
            self._play(frame.pcm)

        call = self._session.clock.callLater(self._delay, play)
        self._pending.add(call)

    def _play(self, pcm: bytes) -> None:
        if self._bound.admits(len(pcm) * 500 // self._session.sample_rate):
            self._session.send_audio(pcm)

    def speech_started(self, at: float) -> None:
        """Nothing to do: an echo talks over anyone."""

    def speech_stopped(self, at: float) -> None:
        """Nothing to do."""

    def event_received(self, event: dict[str, Any]) -> None:
        """Echo events back too, so a client can test its data channel."""
        self._session.send_event({"type": "echo", "event": event})

    def session_ended(self, reason: str) -> None:
        """Cancel audio still waiting out its delay."""
        for call in self._pending:
            if call.active():
                call.cancel()
        self._pending.clear()


@implementer(IAgentFactory, IAgentCounters)
class EchoAgentFactory:
    """Builds an :class:`EchoAgent` for every session; counts their dropped audio."""

    name = "echo"

    def __init__(self, sample_rate: int = 48000, delay: float = 0.0, max_lag_ms: int = DEFAULT_MAX_LAG_MS) -> None:
        self.sample_rate = sample_rate
        self.delay = delay
        self.max_lag_ms = max_lag_ms
        self.counters: collections.Counter[str] = collections.Counter()

    def agent_for(self, session: IAgentSession) -> IAgent:
        """An echo agent for ``session``."""
        return EchoAgent(session, self.delay, self.max_lag_ms, self.counters)


@implementer(IPassthroughAgent)
class PassthroughEchoAgent:
    """Sends every Opus payload of the caller straight back: no decode, no encode.

    The shape of an agent whose backend speaks Opus. A lost frame is not
    sent (its slot passes silent; the caller's decoder conceals it). At most
    ``max_lag_ms`` waits to be sent, as for :class:`EchoAgent`.
    """

    def __init__(
        self,
        session: IPassthroughSession,
        max_lag_ms: int = DEFAULT_MAX_LAG_MS,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        self._session = session
        self._bound = _LagBound(session, max_lag_ms, collections.Counter() if counters is None else counters)

    def opus_received(self, frame: OpusFrame) -> None:
        """Queue the payload for the caller as it came (every payload is 20 ms: the receiver checks it)."""
        if not frame.lost and self._bound.admits(20):
            self._session.send_opus(frame.payload)

    def audio_received(self, frame: AudioFrame) -> None:
        """Not called: the session decodes nothing for a passthrough agent."""

    def speech_started(self, at: float) -> None:
        """Not called: a passthrough session detects no speech."""

    def speech_stopped(self, at: float) -> None:
        """Not called."""

    def event_received(self, event: dict[str, Any]) -> None:
        """Echo events back too."""
        self._session.send_event({"type": "echo", "event": event})

    def session_ended(self, reason: str) -> None:
        """Nothing held."""


@implementer(IPassthroughAgentFactory, IAgentCounters)
class PassthroughEchoAgentFactory:
    """Builds a :class:`PassthroughEchoAgent` for every session: Opus both ways; counts their dropped audio."""

    name = "echo"
    sample_rate = 48000

    def __init__(self, max_lag_ms: int = DEFAULT_MAX_LAG_MS) -> None:
        self.max_lag_ms = max_lag_ms
        self.counters: collections.Counter[str] = collections.Counter()

    def agent_for(self, session: IAgentSession) -> IPassthroughAgent:
        """A passthrough echo agent for ``session`` (which provides IPassthroughSession)."""
        return PassthroughEchoAgent(IPassthroughSession(session), self.max_lag_ms, self.counters)


@provider(IAgentType)
class agent_type:  # noqa: N801 - the module attribute AgentPlugin loads
    """The echo agent's INI section ``[agent.echo]``."""

    name = "echo"
    description = "says back what it hears, through the codec"
    options = {
        "delay_ms": c.Key(c.integer(0, 10_000), "0", "how long after it is heard audio is played back"),
        "sample_rate": c.Key(c.choice(16000, 24000, 48000), "48000", "PCM rate of the echo path"),
        "passthrough": c.Key(
            c.boolean, "no", "echo the Opus payloads as they came: no decode, no encode, no delay_ms"
        ),
        "max_lag_ms": c.Key(
            c.integer(0, 60_000),
            str(DEFAULT_MAX_LAG_MS),
            "most echoed audio waiting to be sent (a burst after the event loop or the network was late):"
            " more is dropped and counted, not sent late; 0: no bound",
        ),
    }

    @staticmethod
    def make_factory(options: dict[str, Any], reactor: Any) -> IAgentFactory:
        """An echo factory from the parsed options."""
        if options["passthrough"]:
            return PassthroughEchoAgentFactory(options["max_lag_ms"])
        return EchoAgentFactory(options["sample_rate"], options["delay_ms"] / 1000, options["max_lag_ms"])
