# -*- test-case-name: tests.test_agents -*-
"""The echo agent: the caller hears their own audio back."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession


@implementer(IAgent)
class EchoAgent:
    """Sends every frame of the caller's audio straight back, payload untouched."""

    def __init__(self, session: IAgentSession) -> None:
        self._session = session

    def audio_received(self, frame: AudioFrame) -> None:
        """Queue the frame for the caller."""
        self._session.send_audio(frame.opus)

    def event_received(self, event: dict[str, Any]) -> None:
        """Echo events back too, so a client can test its data channel."""
        self._session.send_event({"type": "echo", "event": event})

    def session_ended(self, reason: str) -> None:
        """Nothing to free."""


@implementer(IAgentFactory)
class EchoAgentFactory:
    """Builds an :class:`EchoAgent` for every session."""

    name = "echo"

    def agent_for(self, session: IAgentSession) -> IAgent:
        """An echo agent for ``session``."""
        return EchoAgent(session)
