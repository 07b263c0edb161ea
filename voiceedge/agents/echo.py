# -*- test-case-name: tests.test_agents -*-
"""The echo agent: the caller hears their own audio back, decoded and re-encoded (or, passthrough, as it came)."""

from __future__ import annotations

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
    IPassthroughAgent,
    IPassthroughAgentFactory,
    IPassthroughSession,
    OpusFrame,
)


@implementer(IAgent)
class EchoAgent:
    """Plays every frame of the caller's audio back after ``delay`` seconds.

    The audio goes through the real path both ways (Opus decode to PCM,
    PCM encode to Opus), so an echo call exercises the codec and pacing.
    Concealed frames are echoed too: they are what the caller's loss sounds like.
    Its audio is not made of turns (``turns = "none"``): ``response.create``
    completes at once, empty, and no response wraps the echo.
    """

    turns = "none"

    def __init__(self, session: IAgentSession, delay: float) -> None:
        self._session = session
        self._delay = delay
        self._pending: set[IDelayedCall] = set()

    def audio_received(self, frame: AudioFrame) -> None:
        """Queue the frame for the caller, now or after the delay."""
        if self._delay <= 0:
            self._session.send_audio(frame.pcm)
            return
        call: IDelayedCall

        def play() -> None:
            self._pending.discard(call)
            self._session.send_audio(frame.pcm)

        call = self._session.clock.callLater(self._delay, play)
        self._pending.add(call)

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


@implementer(IAgentFactory)
class EchoAgentFactory:
    """Builds an :class:`EchoAgent` for every session."""

    def __init__(self, sample_rate: int = 48000, delay: float = 0.0) -> None:
        self.sample_rate = sample_rate
        self.delay = delay

    def agent_for(self, session: IAgentSession) -> IAgent:
        """An echo agent for ``session``."""
        return EchoAgent(session, self.delay)


@implementer(IPassthroughAgent)
class PassthroughEchoAgent:
    """Sends every Opus payload of the caller straight back: no decode, no encode.

    The shape of an agent whose backend speaks Opus. A lost frame is not
    sent (its slot passes silent; the caller's decoder conceals it).
    """

    def __init__(self, session: IPassthroughSession) -> None:
        self._session = session

    def opus_received(self, frame: OpusFrame) -> None:
        """Queue the payload for the caller as it came."""
        if not frame.lost:
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


@implementer(IPassthroughAgentFactory)
class PassthroughEchoAgentFactory:
    """Builds a :class:`PassthroughEchoAgent` for every session: Opus both ways."""

    sample_rate = 48000

    def agent_for(self, session: IAgentSession) -> IPassthroughAgent:
        """A passthrough echo agent for ``session`` (which provides IPassthroughSession)."""
        return PassthroughEchoAgent(IPassthroughSession(session))


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
    }

    @staticmethod
    def make_factory(options: dict[str, Any], reactor: Any) -> IAgentFactory:
        """An echo factory from the parsed options."""
        if options["passthrough"]:
            return PassthroughEchoAgentFactory()
        return EchoAgentFactory(options["sample_rate"], options["delay_ms"] / 1000)
