"""The conversation side: session events to the agent, the agent's calls to the session."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession
from voiceedge.media.speech import SpeechStarted, SpeechStopped
from voiceedge.transceiver.conversation import Conversation
from voiceedge.transceiver.session_events import (
    ClientEvent,
    ClientEventRejected,
    Closed,
    Connected,
    EndReason,
    EventsChannelOpened,
)


class Sender:
    last_sent_at: float | None = 9.95


class StubSession:
    """The part of a Session a Conversation uses, recording every call."""

    session_id = "abc"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.playing = False
        self.sender = Sender()

    def agent_playing(self, now: float) -> bool:
        return self.playing

    def stop_audio(self, now: float) -> int:
        self.calls.append(("stop_audio", now))
        return 40

    def send_audio(self, pcm: bytes, now: float) -> None:
        self.calls.append(("send_audio", len(pcm), now))

    def send_event(self, event: dict[str, Any], now: float) -> None:
        self.calls.append(("send_event", event["type"], now))

    def close(self, reason: EndReason, now: float) -> None:
        self.calls.append(("close", reason, now))

    def queued_audio_ms(self) -> int:
        return 60


@implementer(IAgent)
class RecordingAgent:
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def audio_received(self, frame: AudioFrame) -> None:
        self.seen.append(("audio", frame.rtp_timestamp))

    def speech_started(self, at: float) -> None:
        self.seen.append(("speech_started", at))

    def speech_stopped(self, at: float) -> None:
        self.seen.append(("speech_stopped", at))

    def event_received(self, event: dict[str, Any]) -> None:
        self.seen.append(("event", event["type"]))

    def session_ended(self, reason: str) -> None:
        self.seen.append(("ended", reason))


@implementer(IAgentFactory)
class Factory:
    sample_rate = 24000

    def __init__(self) -> None:
        self.agents: list[RecordingAgent] = []
        self.sessions: list[IAgentSession] = []

    def agent_for(self, session: IAgentSession) -> IAgent:
        self.sessions.append(session)
        self.agents.append(RecordingAgent())
        return self.agents[-1]


class ConversationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(10.0)
        self.session = StubSession()
        self.factory = Factory()
        self.flushes = 0
        self.conversation = Conversation(
            self.session, self.factory, self.clock, self._flush  # type: ignore[arg-type]
        )

    def _flush(self) -> None:
        self.flushes += 1

    def test_it_is_an_agent_session(self) -> None:
        verifyObject(IAgentSession, self.conversation)
        self.assertEqual(self.conversation.sample_rate, 24000)

    def test_events_reach_the_agent_once_connected(self) -> None:
        self.conversation.handle(AudioFrame(b"", 24000, 1, 0.0))  # before Connected: nobody to tell
        self.conversation.handle(Connected(10.0))
        self.assertEqual(self.factory.sessions, [self.conversation])
        agent = self.factory.agents[0]
        self.conversation.handle(AudioFrame(b"", 24000, 960, 10.0))
        self.conversation.handle(SpeechStarted(10.0, 10.04))
        self.conversation.handle(SpeechStopped(11.0, 11.5))
        self.conversation.handle(ClientEvent({"type": "ping"}))
        self.conversation.handle(Closed(EndReason.HANGUP))
        self.conversation.handle(Closed(EndReason.HANGUP))
        self.assertEqual(
            agent.seen,
            [("audio", 960), ("speech_started", 10.0), ("speech_stopped", 11.0), ("event", "ping"), ("ended", "hangup")],
        )

    def test_barge_in_stops_the_agent_audio(self) -> None:
        self.conversation.handle(Connected(10.0))
        self.session.playing = True
        self.conversation.handle(SpeechStarted(9.9, 9.94))
        self.assertEqual(self.session.calls, [("stop_audio", 9.94)])
        self.assertEqual(self.conversation.stats(), {"barge_in_ms": [50.0]})

    def test_the_agents_calls_are_stamped_and_flushed(self) -> None:
        self.conversation.handle(Connected(10.0))
        self.clock.advance(0.5)
        self.conversation.send_audio(b"\x00" * 480)
        self.conversation.send_event({"type": "x"})
        self.assertEqual(self.conversation.clear_audio(), 40)
        self.assertEqual(self.conversation.queued_audio_ms(), 60)
        self.conversation.end("bye")
        self.assertEqual(
            self.session.calls,
            [("send_audio", 480, 10.5), ("send_event", "x", 10.5), ("stop_audio", 10.5), ("close", EndReason.AGENT, 10.5)],
        )
        self.assertEqual(self.flushes, 4)

    def test_the_events_channel_opens_with_session_created_and_errors_are_answered(self) -> None:
        self.conversation.handle(EventsChannelOpened(10.0))
        self.conversation.handle(ClientEventRejected("not JSON"))
        self.assertEqual(
            self.session.calls, [("send_event", "session.created", 10.0), ("send_event", "error", 10.0)]
        )

    def test_nothing_after_the_end(self) -> None:
        self.conversation.handle(Closed(EndReason.SHUTDOWN))
        self.conversation.send_audio(b"\x00\x00")
        self.conversation.end("again")
        self.assertEqual(self.session.calls, [])
