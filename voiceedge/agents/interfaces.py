# -*- test-case-name: tests.test_agents -*-
"""The interfaces between a session and the agent that talks on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zope.interface import Attribute, Interface


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """20 ms of the caller's audio, decoded for the agent.

    ``pcm`` is signed 16-bit little-endian mono at the agent's sample rate.
    ``lost`` marks a frame the network lost and the decoder concealed.
    ``rtp_timestamp`` is on the 48 kHz Opus clock; ``arrival`` is the
    transceiver's clock when the packet came in (for a lost frame: when the
    loss was decided). ``time`` is where the frame's first sample sits on the
    timeline of the speech events' ``time``/``at`` (the RTP timestamp, anchored
    to the least-delayed arrival: :mod:`voiceedge.media.timeline`); ``None``
    from a source that has no such timeline, whose arrival then serves. Use
    :attr:`start` to time frames against speech events.
    """

    pcm: bytes
    sample_rate: int
    rtp_timestamp: int
    arrival: float
    lost: bool = False
    time: float | None = None

    @property
    def start(self) -> float:
        """The frame's first sample on the speech events' timeline (``time``, else ``arrival``)."""
        return self.arrival if self.time is None else self.time


@dataclass(frozen=True, slots=True)
class OpusFrame:
    """20 ms of the caller's audio as it came, an Opus payload, for a passthrough agent.

    Nothing is decoded: ``payload`` is the RTP payload, in order after the
    jitter buffer. ``lost`` marks a frame the network lost (``payload`` is then
    empty); the backend's decoder conceals it. ``rtp_timestamp`` and
    ``arrival`` are as in :class:`AudioFrame`.
    """

    payload: bytes
    rtp_timestamp: int
    arrival: float
    lost: bool = False


class IAgentSession(Interface):
    """What a session offers the agent behind it."""

    session_id = Attribute("The session's id, as in its signaling Location.")
    sample_rate = Attribute("The PCM rate of audio both ways: the agent factory's choice.")
    clock = Attribute("The session's IReactorTime: agents take time from it, never elsewhere.")

    def send_audio(pcm: bytes) -> None:
        """Queue PCM16 mono at ``sample_rate``, any length; the shared tick plays it in 20 ms frames."""

    def clear_audio() -> int:
        """Drop all queued agent audio at once; return how many milliseconds were dropped."""

    def queued_audio_ms() -> int:
        """How much agent audio waits to be played, in milliseconds."""

    def send_event(event: dict[str, Any]) -> None:
        """Send a JSON event to the caller on the ``oai-events`` data channel."""

    def end(reason: str) -> None:
        """Hang up the call."""

    def start_turn() -> None:
        """The agent starts a turn (a Realtime *response*): the audio it sends next belongs to it.

        Answering :meth:`ITurnTakingAgent.create_response` with ``True`` starts
        one too. An agent that never calls this still gets responses: one
        per burst of its audio (docs/realtime-events.md).
        """

    def end_turn(interrupted: bool = False) -> None:
        """The agent has queued all of its turn's audio; ``interrupted``: it cut the turn short instead.

        The turn's ``response.done`` goes out now; the caller may still be
        hearing its audio (``output_audio_buffer.stopped`` says when that ends).
        """


class IAgent(Interface):
    """What sits behind one session: audio and events in, audio and events out.

    The session's Realtime event layer (:mod:`voiceedge.transceiver.realtime`)
    speaks the protocol; an agent gives it audio and behaviour. An agent
    whose audio is not made of turns at all (the echo) says so with a class
    attribute ``turns = "none"``; otherwise each burst of its audio is a
    response, unless it provides :class:`ITurnTakingAgent` and says itself.
    """

    def audio_received(frame: AudioFrame) -> None:
        """A 20 ms frame of the caller's audio, in order, losses concealed."""

    def speech_started(at: float) -> None:
        """The caller started speaking; ``at`` is when the first voiced frame arrived.

        When agent audio was playing the session has already cleared it
        (barge-in), unless configured otherwise.
        """

    def speech_stopped(at: float) -> None:
        """The caller stopped speaking; ``at`` is the end of the last voiced frame."""

    def event_received(event: dict[str, Any]) -> None:
        """The caller sent a JSON event on ``oai-events``."""

    def session_ended(reason: str) -> None:
        """The call is over; free everything."""


class ITurnTakingAgent(IAgent):
    """An agent that takes turns: it answers ``response.create``, says when its turns
    start and end (:meth:`IAgentSession.start_turn`, :meth:`IAgentSession.end_turn`),
    and follows the session's configuration."""

    def configure(config: dict[str, Any]) -> None:
        """The session's whole configuration (OpenAI's GA ``session`` object), validated.

        Called once when the agent is made and after every accepted
        ``session.update``. An agent applies what it can (turn detection,
        instructions, voice) and ignores the rest.
        """

    def create_response(request: dict[str, Any]) -> bool:
        """The client asked for a turn now (``response.create``; ``request`` is its ``response`` object).

        ``True``: the agent makes the turn (its audio follows, then
        :meth:`IAgentSession.end_turn`). ``False``: it has nothing to say, and
        the response completes at once, empty.
        """

    def cancel_response() -> None:
        """The turn under way is cancelled (barge-in, ``response.cancel``, ``output_audio_buffer.clear``).

        Its queued audio is already dropped; the agent must send no more of it.
        """


class IAgentFactory(Interface):
    """Makes the agent of each new session."""

    sample_rate = Attribute("PCM rate the agents want: 16000, 24000 or 48000.")

    def agent_for(session: IAgentSession) -> IAgent:
        """Build the agent for a session whose media is now flowing."""


class IPassthroughSession(IAgentSession):
    """The session as a passthrough agent sees it: it also takes Opus as it goes on the wire."""

    def send_opus(payload: bytes) -> None:
        """Queue one 20 ms Opus packet, sent paced and unchanged.

        A payload that is not one 20 ms Opus packet is dropped and counted
        (``opus_malformed``); so is any call on a session that is not passthrough.
        """


class IPassthroughAgent(IAgent):
    """An agent whose backend speaks Opus: it gets the caller's payloads as they came."""

    def opus_received(frame: OpusFrame) -> None:
        """A 20 ms Opus frame of the caller, in order, losses marked (``audio_received`` is not called)."""


class IPassthroughAgentFactory(IAgentFactory):
    """Makes :class:`IPassthroughAgent` agents: the session neither decodes nor encodes.

    ``agent_for`` is given a session that also provides :class:`IPassthroughSession`.
    Its agents get :class:`OpusFrame` in ``opus_received`` and send with
    :meth:`IAgentSession.send_opus`; the jitter buffer and the 20 ms pacing
    still apply. There is no speech detection (nothing is decoded), so no
    ``speech_started``/``speech_stopped`` and no automatic barge-in: the
    backend detects speech and calls ``clear_audio`` itself.
    ``sample_rate`` is 48000, Opus's RTP clock.
    """


class IAgentCounters(Interface):
    """An agent factory whose counters an operator should see on ``/metrics``."""

    name = Attribute("The agent's name, the metric's ``agent`` label.")
    counters = Attribute("A collections.Counter[str] of events over every session, by name.")


class IAgentType(Interface):
    """A kind of agent: its INI options and how to make its factory."""

    name = Attribute("The name an INI file's [agent] name chooses it by.")
    description = Attribute("One line for humans.")
    options = Attribute(
        "Mapping[str, voiceedge.config.Key]: the keys of its [agent.<name>] INI section."
    )

    def make_factory(options: dict[str, Any], reactor: Any) -> IAgentFactory:
        """A factory configured by the parsed ``[agent.<name>]`` section."""


class IAgentPlugin(Interface):
    """What a ``twisted/plugins`` module offers: a name, cheaply, and the agent type on demand.

    A package adds an agent by installing a plugin module that holds an
    :class:`voiceedge.agents.plugin.AgentPlugin`; importing it must stay
    cheap because every plugin module is imported to list them.
    """

    name = Attribute("The agent's name.")
    description = Attribute("One line for humans.")

    def load() -> IAgentType:
        """Import the agent's module and return its type."""
