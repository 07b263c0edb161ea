"""The conversation side: session events to the agent, the agent's calls to the session."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession, ITurnTakingAgent
from voiceedge.media.speech import SpeechStarted, SpeechStopped
from voiceedge.transceiver.conversation import Conversation
from voiceedge.transceiver.rtp_sender import PlayoutStarted, PlayoutStopped
from voiceedge.transceiver.settings import SpeechSettings
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
    speech = SpeechSettings()

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.playing = False
        self.sender = Sender()

    def agent_playing(self, now: float) -> bool:
        return self.playing

    def stop_audio(self, now: float, reason: str = "stopped") -> int:
        self.calls.append(("stop_audio", now) if reason == "stopped" else ("stop_audio", now, reason))
        return 40

    def send_audio(self, pcm: bytes, now: float) -> None:
        self.calls.append(("send_audio", len(pcm), now))

    def send_event(self, event: dict[str, Any], now: float) -> None:
        self.calls.append(("send_event", event["type"], now))

    def close(self, reason: EndReason, now: float) -> None:
        self.calls.append(("close", reason, now))

    def queued_audio_ms(self) -> int:
        return 60

    def update_speech(self, threshold_db: float, silence_ms: float, threshold: float | None = None) -> None:
        self.calls.append(("update_speech", threshold_db, silence_ms))


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


@implementer(ITurnTakingAgent)
class TurnTakingAgent(RecordingAgent):
    def __init__(self, answer: bool) -> None:
        super().__init__()
        self.answer = answer

    def configure(self, config: dict[str, Any]) -> None:
        self.seen.append(("configure", config))

    def create_response(self, request: dict[str, Any]) -> bool:
        self.seen.append(("create_response", request))
        return self.answer

    def cancel_response(self) -> None:
        self.seen.append(("cancel_response",))


@implementer(IAgentFactory)
class TurnTakingFactory:
    sample_rate = 24000

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.agents: list[TurnTakingAgent] = []

    def agent_for(self, session: IAgentSession) -> IAgent:
        self.agents.append(TurnTakingAgent(self.answer))
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
        """Speech while agent audio plays: speech_started, then the one seam stops the audio."""
        self.conversation.handle(Connected(10.0))
        self.conversation.handle(EventsChannelOpened(10.0))
        del self.session.calls[:]
        self.session.playing = True
        self.conversation.handle(SpeechStarted(9.9, 9.94))
        self.assertEqual(
            self.session.calls,
            [("send_event", "input_audio_buffer.speech_started", 10.0), ("stop_audio", 10.0, "barge_in")],
        )
        self.assertEqual(self.conversation.stats()["barge_in_ms"], [50.0])

    def test_the_agents_calls_are_stamped_and_flushed(self) -> None:
        """An agent that says nothing of turns: its first audio opens a response, before the audio is queued."""
        self.conversation.handle(Connected(10.0))
        self.conversation.handle(EventsChannelOpened(10.0))
        self.clock.advance(0.5)
        del self.session.calls[:]
        self.conversation.send_audio(b"\x00" * 480)
        self.conversation.send_event({"type": "x"})
        self.assertEqual(self.conversation.clear_audio(), 40)
        self.assertEqual(self.conversation.queued_audio_ms(), 60)
        self.conversation.end("bye")
        self.assertEqual(
            self.session.calls,
            [
                ("send_event", "response.created", 10.5),
                ("send_event", "response.output_item.added", 10.5),
                ("send_event", "conversation.item.added", 10.5),
                ("send_event", "response.content_part.added", 10.5),
                ("send_audio", 480, 10.5),
                ("send_event", "x", 10.5),
                ("stop_audio", 10.5),
                ("close", EndReason.AGENT, 10.5),
            ],
        )
        self.assertEqual(self.flushes, 9)

    def test_an_inferred_turn_ends_when_its_audio_has_drained(self) -> None:
        """The layer's deadline runs on the clock: the turn ends INFERRED_TURN_GAP after the last packet."""
        self.conversation.handle(Connected(10.0))
        self.conversation.handle(EventsChannelOpened(10.0))
        self.conversation.send_audio(b"\x00" * 960)
        self.conversation.handle(PlayoutStarted(10.0))
        self.conversation.handle(PlayoutStopped(10.06, 10.04, "drained"))
        del self.session.calls[:]
        self.clock.advance(0.28)
        self.assertEqual(self.session.calls, [])
        self.clock.advance(0.01)
        sent = [call[1] for call in self.session.calls]
        self.assertEqual(sent[-2:], ["response.done", "output_audio_buffer.stopped"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_response_create_asks_a_turn_taking_agent(self) -> None:
        """RequestTurn reaches create_response; a refusal completes the response at once, empty."""
        factory = TurnTakingFactory(answer=False)
        conversation = Conversation(self.session, factory, self.clock, self._flush)  # type: ignore[arg-type]
        conversation.handle(Connected(10.0))
        conversation.handle(EventsChannelOpened(10.0))
        del self.session.calls[:]
        agent = factory.agents[0]
        self.assertEqual(agent.seen[0][0], "configure")
        conversation.handle(ClientEvent({"type": "response.create", "event_id": "c1", "response": {"instructions": "hi"}}))
        self.assertEqual(agent.seen[-1], ("create_response", {"instructions": "hi"}))
        sent = [call[1] for call in self.session.calls if call[0] == "send_event"]
        self.assertEqual(sent, ["response.created", "response.done"])

    def test_session_update_tunes_the_detector_and_the_agent(self) -> None:
        """A new turn_detection reaches the session's detector and the agent's configure()."""
        factory = TurnTakingFactory(answer=True)
        conversation = Conversation(self.session, factory, self.clock, self._flush)  # type: ignore[arg-type]
        conversation.handle(Connected(10.0))
        update = {"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 900}}}}
        conversation.handle(ClientEvent({"type": "session.update", "session": update}))
        self.assertIn(("update_speech", 12.0, 900.0), self.session.calls)
        configured = [s for s in factory.agents[0].seen if s[0] == "configure"]
        self.assertEqual(configured[-1][1]["audio"]["input"]["turn_detection"]["silence_duration_ms"], 900)

    def test_a_client_secrets_settings_start_the_configuration(self) -> None:
        """Session.settings (from the ek_ that opened the call) are what session.created shows."""
        self.session.settings = {"type": "realtime", "instructions": "Be brief."}  # type: ignore[attr-defined]
        conversation = Conversation(self.session, self.factory, self.clock, self._flush)  # type: ignore[arg-type]
        assert conversation.realtime is not None
        self.assertEqual(conversation.realtime.config["instructions"], "Be brief.")

    def test_a_backend_that_speaks_realtime_takes_over(self) -> None:
        """speaks_realtime: no layer; events pass both ways unchanged, and no session.created."""
        self.factory.speaks_realtime = True  # type: ignore[attr-defined]
        conversation = Conversation(self.session, self.factory, self.clock, self._flush)  # type: ignore[arg-type]
        conversation.handle(Connected(10.0))
        conversation.handle(EventsChannelOpened(10.0))
        conversation.handle(ClientEvent({"type": "response.create"}))
        conversation.send_event({"type": "response.created"})
        self.assertEqual(self.factory.agents[-1].seen, [("event", "response.create")])
        self.assertEqual(self.session.calls, [("send_event", "response.created", 10.0)])

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
