# -*- test-case-name: tests.test_agents -*-
"""The interfaces between a session and the agent that talks on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zope.interface import Attribute, Interface


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One 20 ms frame of the caller's audio as it arrived.

    ``opus`` is the RTP payload; ``rtp_timestamp`` is on the 48 kHz Opus
    clock; ``arrival`` is the transceiver's clock when the packet came in.
    """

    opus: bytes
    sequence_number: int
    rtp_timestamp: int
    arrival: float


class IAgentSession(Interface):
    """What a session offers the agent behind it."""

    session_id = Attribute("The session's id, as in its signaling Location.")

    def send_audio(opus: bytes) -> None:
        """Queue one 20 ms Opus frame for the caller; the shared tick paces it."""

    def clear_audio() -> None:
        """Drop every queued frame at once (for barge-in)."""

    def send_event(event: dict[str, Any]) -> None:
        """Send a JSON event to the caller (the data channel, once there is one)."""

    def end(reason: str) -> None:
        """Hang up the call."""


class IAgent(Interface):
    """What sits behind one session: audio and events in, audio and events out."""

    def audio_received(frame: AudioFrame) -> None:
        """A frame of the caller's audio arrived."""

    def event_received(event: dict[str, Any]) -> None:
        """The caller sent a JSON event."""

    def session_ended(reason: str) -> None:
        """The call is over; free everything."""


class IAgentFactory(Interface):
    """Makes an agent for each new session."""

    name = Attribute("The name INI files use to choose this agent.")

    def agent_for(session: IAgentSession) -> IAgent:
        """Build the agent for a session whose media is now flowing."""
