# -*- test-case-name: tests.test_conversation -*-
"""The conversation side of a call: the agent, its audio and events, barge-in, ``oai-events``.

A :class:`Conversation` is what an agent sees as its
:class:`~voiceedge.agents.interfaces.IAgentSession`. It takes the session's
conversation events (the caller's decoded audio, speech, the events
channel, playout) and turns them into agent calls; it turns the agent's
calls into session inputs, stamped with the clock, and asks its driver to
flush the session's outputs. Transport knows nothing of agents; this knows
nothing of sockets.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession
from voiceedge.media.speech import SpeechStarted, SpeechStopped
from voiceedge.transceiver.session import Session
from voiceedge.transceiver.session_events import (
    ClientEvent,
    ClientEventRejected,
    Closed,
    Connected,
    EndReason,
    EventsChannelOpened,
    SessionEvent,
)

__all__ = ["Conversation"]


@implementer(IAgentSession)
class Conversation:
    """The agent of one session, and the session as the agent sees it.

    ``flush`` is called after every input the agent gives the session (its
    driver sends the datagrams and handles the events that came of it).
    ``barge_in``: when the caller starts speaking while the agent's audio
    plays, the queued audio is dropped at once.
    """

    log = Logger()

    def __init__(
        self,
        session: Session,
        agent_factory: IAgentFactory,
        clock: IReactorTime,
        flush: Callable[[], None],
        barge_in: bool = True,
    ) -> None:
        self.session = session
        self.session_id = session.session_id
        self.sample_rate: int = agent_factory.sample_rate
        self.clock = clock
        self.barge_in = barge_in
        self._agent_factory = agent_factory
        self._flush = flush
        self.agent: IAgent | None = None
        self.barge_in_ms: list[float] = []
        self.ended = False

    # -- session events in --------------------------------------------------------

    def handle(self, event: SessionEvent) -> None:
        """One conversation event from the session (transport events are ignored)."""
        agent = self.agent
        # The caller's audio first: fifty of these a second.
        if isinstance(event, AudioFrame):
            if agent is not None:
                agent.audio_received(event)
        elif isinstance(event, SpeechStarted):
            if self.barge_in and self.session.agent_playing(event.at):
                self._barge_in(event)
            if agent is not None:
                agent.speech_started(event.time)
        elif isinstance(event, SpeechStopped):
            if agent is not None:
                agent.speech_stopped(event.time)
        elif isinstance(event, ClientEvent):
            if agent is not None:
                agent.event_received(event.event)
        elif isinstance(event, Connected):
            self.agent = self._agent_factory.agent_for(self)
        elif isinstance(event, EventsChannelOpened):
            self._session_created()
        elif isinstance(event, ClientEventRejected):
            self.send_event({"type": "error", "error": {"type": "invalid_request_error", "message": event.why}})
        elif isinstance(event, Closed):
            self._ended(event.reason)
        # PlayoutStarted and PlayoutStopped say what the caller hears: the
        # Realtime event layer's to report. Transport events are not ours.

    def _barge_in(self, event: SpeechStarted) -> None:
        """The caller talks over the agent: stop the agent's audio now."""
        sender = self.session.sender
        last = sender.last_sent_at if sender is not None else None
        self.session.stop_audio(event.at)
        # From the first voiced packet's arrival to the last agent packet sent.
        latency = 0.0 if last is None else max(0.0, last - event.time)
        self.barge_in_ms.append(round(latency * 1000, 1))

    def _session_created(self) -> None:
        self.send_event(
            {
                "type": "session.created",
                "event_id": "event_" + secrets.token_hex(8),
                "session": {
                    "id": self.session_id,
                    "object": "realtime.session",
                    "audio": {"sample_rate": self.sample_rate},
                },
            }
        )

    def _ended(self, reason: EndReason) -> None:
        if self.ended:
            return
        self.ended = True
        agent, self.agent = self.agent, None
        try:
            if agent is not None:
                agent.session_ended(reason.value)
        except Exception:
            # The agent's bug must not keep the session's routes alive.
            self.log.failure("session {id}: the agent failed to end", id=self.session_id)

    # -- the agent's side (IAgentSession) ----------------------------------------

    def send_audio(self, pcm: bytes) -> None:
        """Queue agent PCM; it goes out in paced 20 ms Opus frames."""
        if self.ended:
            return
        self.session.send_audio(pcm, self.clock.seconds())
        self._flush()

    def clear_audio(self) -> int:
        """Drop all queued agent audio; the milliseconds dropped."""
        if self.ended:
            return 0
        dropped = self.session.stop_audio(self.clock.seconds())
        self._flush()
        return dropped

    def queued_audio_ms(self) -> int:
        """Agent audio waiting to be sent, in milliseconds."""
        return self.session.queued_audio_ms()

    def send_event(self, event: dict[str, Any]) -> None:
        """Send a JSON event to the caller on ``oai-events``."""
        if self.ended:
            return
        self.session.send_event(event, self.clock.seconds())
        self._flush()

    def end(self, reason: str) -> None:
        """The agent hangs up."""
        if self.ended:
            return
        self.log.info("session {id}: agent ended the call: {why}", id=self.session_id, why=reason)
        self.session.close(EndReason.AGENT, self.clock.seconds())
        self._flush()

    def stats(self) -> dict[str, Any]:
        """The conversation's numbers for ``GET <Location>``."""
        return {"barge_in_ms": list(self.barge_in_ms)}
