# -*- test-case-name: tests.test_parrot -*-
"""Tests for voiceedge.agents.parrot: turn-taking on a fake session and task.Clock."""

from __future__ import annotations

import array
import math
import random
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.cases import case
from voiceedge import config as c
from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession, IAgentType
from voiceedge.agents.parrot import ParrotAgent, ParrotAgentFactory, agent_type
from voiceedge.media.detection import DetectionSettings, make_speech_detector
from voiceedge.media.speech import SpeechEvent, SpeechStarted, SpeechStopped

RATE = 16000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2
BYTES_PER_MS = RATE * 2 // 1000


@implementer(IAgentSession)


class FakeSession:
    """An IAgentSession whose playout runs on a task.Clock at real speed, with the session's one detector.

    :meth:`hear` is what the session does with a caller's frame: feed its
    speech detector, cut the agent's audio on speech (barge-in), tell the agent
    of speech events before the frame, and poll the detector at its deadline
    when no audio comes.
    """

    def __init__(self, clock: Clock, sample_rate: int = RATE, detection: DetectionSettings | None = None) -> None:
        self.session_id = "fake"
        self.sample_rate = sample_rate
        self.clock = clock
        self.sent: list[tuple[float, bytes]] = []
        self.events: list[dict[str, Any]] = []
        self.cleared: list[float] = []
        self.ended: str | None = None
        self._play_end = 0.0
        self.speech_detection = detection or DetectionSettings("energy")
        self.detector = make_speech_detector(self.speech_detection, sample_rate)
        self.agent: ParrotAgent | None = None
        self._timer: IDelayedCall | None = None

    def send_audio(self, pcm: bytes) -> None:
        """Queue PCM: it plays from the end of what is queued."""
        now = self.clock.seconds()
        self.sent.append((now, pcm))
        self._play_end = max(self._play_end, now) + len(pcm) / 2 / self.sample_rate

    def clear_audio(self) -> int:
        """Drop what is queued."""
        dropped = self.queued_audio_ms()
        self._play_end = self.clock.seconds()
        self.cleared.append(self.clock.seconds())
        return dropped

    def queued_audio_ms(self) -> int:
        """What is left to play."""
        return max(0, round((self._play_end - self.clock.seconds()) * 1000))

    def set_speech_detection(self, settings: DetectionSettings) -> None:
        """Change the detector's knobs, as the session does for the Realtime layer."""
        self.detector.update(**settings.parameters())
        self.speech_detection = settings
        self._arm()

    def send_event(self, event: dict[str, Any]) -> None:
        """Keep the event."""
        self.events.append(event)

    def end(self, reason: str) -> None:
        """Note the hang-up."""
        self.ended = reason

    def start_turn(self) -> None:
        """Note the turn, among the events."""
        self.events.append({"type": "<start_turn>"})

    def end_turn(self, interrupted: bool = False) -> None:
        """Note the turn's end, among the events."""
        self.events.append({"type": "<end_turn>", "interrupted": interrupted})

    def hear(self, frame: AudioFrame) -> None:
        """A caller's frame reaches the session."""
        for event in self.detector.feed(frame.pcm, frame.arrival):
            self._speech(event)
        assert self.agent is not None
        self.agent.audio_received(frame)
        self._arm()

    def close(self) -> None:
        """The call is over: no more polling."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _speech(self, event: SpeechEvent) -> None:
        assert self.agent is not None
        if isinstance(event, SpeechStarted):
            if self.queued_audio_ms():
                self.clear_audio()
            self.agent.speech_started(event.time)
        elif isinstance(event, SpeechStopped):
            self.agent.speech_stopped(event.time)

    def _arm(self) -> None:
        self.close()
        deadline = self.detector.deadline()
        if deadline is not None:
            self._timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._due)

    def _due(self) -> None:
        self._timer = None
        for event in self.detector.poll(self.clock.seconds()):
            self._speech(event)
        self._arm()

    def types(self) -> list[str]:
        """The types of the events sent so far."""
        return [e["type"] for e in self.events]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The events sent so far of one type."""
        return [e for e in self.events if e["type"] == kind]

    def audio(self, since: float = 0.0) -> bytes:
        """All PCM sent at or after ``since``."""
        return b"".join(pcm for at, pcm in self.sent if at >= since - 1e-9)


def tone(ms: int, frequency: float = 300.0, db: float = -20.0) -> list[bytes]:
    """20 ms PCM16 frames of a sine at ``db`` dBFS RMS."""
    amplitude = 32768 * 10 ** (db / 20) * math.sqrt(2)
    samples = RATE * ms // 1000
    pcm = array.array(
        "h", (round(amplitude * math.sin(2 * math.pi * frequency * i / RATE)) for i in range(samples))
    ).tobytes()
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def quiet(ms: int, seed: int = 7) -> list[bytes]:
    """20 ms frames of background noise at about -60 dBFS."""
    rng = random.Random(seed)
    sigma = 32768 * 10 ** (-60 / 20)
    samples = RATE * ms // 1000
    pcm = array.array("h", (round(rng.gauss(0, sigma)) for _ in range(samples))).tobytes()
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


class Caller:
    """Sends 20 ms frames as the network would: each arrives once it has been spoken."""

    def __init__(self, session: FakeSession, clock: Clock) -> None:
        self.session = session
        self.clock = clock
        self.timestamp = 123456
        self.frames_sent = 0

    def say(self, frames: list[bytes]) -> None:
        """Advance the clock 20 ms per frame and deliver it."""
        for pcm in frames:
            self.clock.advance(FRAME_MS / 1000)
            frame = AudioFrame(pcm, RATE, self.timestamp & 0xFFFFFFFF, self.clock.seconds())
            self.timestamp += 960
            self.frames_sent += 1
            self.session.hear(frame)

    def wait(self, seconds: float) -> None:
        """Let time pass with no audio at all (a sender in DTX)."""
        for _ in range(round(seconds * 1000)):
            self.clock.advance(0.001)


def make(
    silence_ms: float = 500,
    min_speech_ms: float = 100,
    max_wait_ms: float | None = None,
    prefix_padding_ms: float = 100,
    max_turn_ms: int = 30_000,
) -> tuple[ParrotAgent, FakeSession, Caller, Clock]:
    """A parrot on a fake session running the energy detector, and a caller to talk to it."""
    clock = Clock()
    detection = DetectionSettings(
        "energy", threshold_db=12, min_speech_ms=min_speech_ms, silence_ms=silence_ms, max_wait_ms=max_wait_ms
    )
    session = FakeSession(clock, detection=detection)
    agent = ParrotAgent(session, prefix_padding_ms, max_turn_ms)
    session.agent = agent
    return agent, session, Caller(session, clock), clock


def first_audio_at(session: FakeSession, since: float = 0.0) -> float:
    """When the first PCM at or after ``since`` was sent."""
    return min(at for at, _ in session.sent if at >= since - 1e-9)


def realtime_config(turn_detection: dict[str, Any] | None) -> dict[str, Any]:
    """A session configuration as the Realtime layer gives it, with this ``turn_detection``."""
    return {"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}, "output": {"voice": "alloy"}}}


DEFAULT_VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
    "idle_timeout_ms": None,
}


def configure(agent: ParrotAgent, **fields: Any) -> None:
    """The layer's first configuration (its defaults), then a client's turn_detection with ``fields``."""
    agent.configure(realtime_config(DEFAULT_VAD))
    agent.configure(realtime_config({**DEFAULT_VAD, **fields}))


class ParrotAgentTypeTests(SynchronousTestCase):
    """The parrot's interfaces and its [agent.parrot] options."""

    def test_interfaces(self) -> None:
        """The fake session, the agent, its factory and its type provide their interfaces."""
        clock = Clock()
        session = FakeSession(clock)
        verifyObject(IAgentSession, session)
        factory = ParrotAgentFactory(RATE)
        verifyObject(IAgentFactory, factory)
        verifyObject(IAgent, factory.agent_for(session))
        verifyObject(IAgentType, agent_type)

    def test_ini_options_make_a_factory(self) -> None:
        """[agent.parrot] parses into a factory with those settings; bad values are errors; turns follow [speech]."""
        schema = {"agent.parrot": agent_type.options}
        conf = c.load_config(schema, text="[agent.parrot]\nprefix_padding_ms = 50\nmax_turn_ms = 5000\nsample_rate = 16000\n")
        factory = agent_type.make_factory(conf["agent.parrot"], Clock())
        self.assertIsInstance(factory, ParrotAgentFactory)
        self.assertEqual((factory.sample_rate, factory.prefix_padding_ms, factory.max_turn_ms), (16000, 50, 5000))
        defaults = agent_type.make_factory(c.load_config(schema)["agent.parrot"], Clock())
        self.assertIsInstance(defaults, ParrotAgentFactory)
        self.assertEqual((defaults.sample_rate, defaults.prefix_padding_ms, defaults.max_turn_ms), (24000, 100, 30000))
        for bad in ("detector = energy", "silence_ms = 500", "prefix_padding_ms = -1", "max_turn_ms = 99999", "sample_rate = 8000"):
            with case(bad), self.assertRaises(c.ConfigError):
                c.load_config(schema, text=f"[agent.parrot]\n{bad}\n")


class TurnTakingTests(SynchronousTestCase):
    """A caller's turn is said back once it ends; blips, endless and overlong turns; barge-in."""

    def test_turn_is_said_back_once_after_the_silence(self) -> None:
        """Tone then silence: exactly one playback, starting silence_ms after the tone, as long as the turn."""
        agent, session, caller, clock = make(silence_ms=500, min_speech_ms=100, prefix_padding_ms=100)
        background, speech = quiet(300), tone(1000)
        caller.say(background)
        tone_end = clock.seconds() + 1.0
        caller.say(speech)
        self.assertEqual(session.sent, [])
        self.assertTrue(agent.listening)
        caller.say(quiet(3000, seed=8))

        self.assertApproximates(first_audio_at(session), tone_end + 0.5, 0.021)
        # The turn: 100 ms of prefix padding and the tone; not the silence after it.
        self.assertEqual(session.audio(), b"".join(background[-5:] + speech))
        self.assertEqual(session.types(), [
            "parrot.turn_started",
            "parrot.turn_ended",
            "<start_turn>",
            "parrot.speaking",
            "<end_turn>",
            "parrot.done",
        ])
        ended = session.of_type("parrot.turn_ended")[0]
        self.assertApproximates(ended["duration_ms"], 1000, 20)
        self.assertEqual(session.of_type("parrot.speaking")[0]["duration_ms"], 1100)
        self.assertEqual(agent.turns_played, 1)
        self.assertFalse(agent.playing)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_turn_is_recorded_by_the_frames_rtp_time_not_their_arrival(self) -> None:
        """A backlog read late (all at 1 s) is recorded where it was spoken, the speech events' time base."""
        agent, session, caller, clock = make(prefix_padding_ms=0)
        speech = tone(1000)
        agent.speech_started(0.0)
        for n, pcm in enumerate(speech):
            agent.audio_received(AudioFrame(pcm, RATE, n * 960, 1.0, time=n * 0.02))
        agent.speech_stopped(0.5)
        clock.advance(0.02)
        caller.wait(1.0)
        self.assertEqual(session.audio(), b"".join(speech[:25]))

    def test_playback_is_paced_in_chunks(self) -> None:
        """The parrot keeps only a short lead queued, so stopping is quick."""
        agent, session, caller, clock = make()
        # (A steady tone longer than the noise window, 3 s, would become the noise floor.)
        caller.say(quiet(200) + tone(2500) + quiet(100))
        caller.wait(5)
        self.assertEqual(len(session.audio()), 2600 * BYTES_PER_MS)
        self.assertLessEqual(max(len(pcm) for _, pcm in session.sent), 100 * BYTES_PER_MS)
        # Topped up over the playback, not all at once.
        self.assertGreater(session.sent[-1][0] - session.sent[0][0], 2.0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(session.types()[-1], "parrot.done")

    def test_turn_ends_when_audio_stops_coming(self) -> None:
        """A sender in DTX sends nothing: the timer ends the turn on time."""
        agent, session, caller, clock = make(silence_ms=400)
        caller.say(quiet(200) + tone(600))
        tone_end = clock.seconds()
        caller.wait(2)
        # The session's detector times a frame from its arrival: the last voiced frame ends 20 ms later.
        self.assertApproximates(first_audio_at(session), tone_end + 0.02 + 0.4, 0.002)
        self.assertEqual(agent.turns_played, 1)

    def test_blips_shorter_than_min_speech_are_not_a_turn(self) -> None:
        """Sounds shorter than min_speech_ms are ignored: no events, no playback."""
        for blip_ms in (20, 60, 100, 180):
            with case(f"{blip_ms} ms blips"):
                agent, session, caller, clock = make(min_speech_ms=200)
                caller.say(quiet(300))
                for seed in range(3):
                    caller.say(tone(blip_ms))
                    caller.say(quiet(700, seed=seed))
                self.assertEqual(session.sent, [])
                self.assertEqual(session.events, [])
                self.assertEqual(agent.turns_played, 0)
                self.assertEqual(clock.getDelayedCalls(), [])

    def test_max_wait_forces_an_answer(self) -> None:
        """A turn that never falls silent is answered after the session's max_wait_ms, once."""
        agent, session, caller, clock = make(max_wait_ms=1000, prefix_padding_ms=0)
        caller.say(quiet(300))
        start = clock.seconds()
        caller.say(tone(3000))
        caller.say(quiet(2000))
        self.assertApproximates(first_audio_at(session), start + 1.0, 0.021)
        ended = session.of_type("parrot.turn_ended")
        self.assertEqual(len(ended), 1)
        self.assertApproximates(ended[0]["duration_ms"], 1000, 20)
        self.assertApproximates(len(session.audio()), 1000 * BYTES_PER_MS, FRAME_BYTES)
        self.assertEqual(agent.turns_played, 1)

    def test_recording_is_bounded(self) -> None:
        """A turn longer than max_turn_ms is said back up to max_turn_ms only."""
        agent, session, caller, clock = make(prefix_padding_ms=0, max_turn_ms=1000)
        caller.say(quiet(200) + tone(2500) + quiet(1000))
        caller.wait(3)
        self.assertEqual(len(session.audio()), 1000 * BYTES_PER_MS)

    def test_barge_in_stops_playback_and_records_the_new_turn(self) -> None:
        """The session's speech_started while playing: playback stops at once; the new turn is recorded and said back."""
        agent, session, caller, clock = make(silence_ms=500, min_speech_ms=100, prefix_padding_ms=100)
        caller.say(quiet(300) + tone(2000))
        caller.say(quiet(500))
        playback_start = first_audio_at(session)
        self.assertTrue(agent.playing)
        caller.say(quiet(400, seed=3))
        background = quiet(200, seed=4)
        caller.say(background)
        second = tone(600, frequency=500)

        # min_speech_ms of voice: the session cuts its queue, then tells the agent.
        caller.say(second[:5])
        barge_in = clock.seconds()
        self.assertEqual(session.cleared[0], barge_in)
        self.assertFalse(agent.playing)
        self.assertEqual(session.queued_audio_ms(), 0)
        [interrupted] = session.of_type("parrot.interrupted")
        self.assertApproximates(interrupted["played_ms"], (barge_in - playback_start) * 1000, 1)
        self.assertLess(interrupted["played_ms"], 2100)

        caller.say(second[5:])
        second_end = clock.seconds()
        caller.say(quiet(2000, seed=5))
        # Nothing was sent from the barge-in until the new turn ended (a top-up due at
        # the barge-in's own tick went out just before it).
        after = barge_in + 1e-6
        self.assertEqual([at for at, _ in session.sent if after <= at < second_end + 0.48], [])
        self.assertApproximates(first_audio_at(session, after), second_end + 0.02 + 0.5, 0.021)
        self.assertEqual(session.audio(after), b"".join(background[-5:] + second))
        self.assertEqual(agent.turns_played, 2)
        self.assertEqual(session.types()[-8:], [
            "<end_turn>",
            "parrot.interrupted",
            "parrot.turn_started",
            "parrot.turn_ended",
            "<start_turn>",
            "parrot.speaking",
            "<end_turn>",
            "parrot.done",
        ])
        self.assertIs(session.of_type("<end_turn>")[0]["interrupted"], True)

    def test_an_empty_turn_is_not_said_back(self) -> None:
        """speech_started when not playing clears nothing; a turn with no audio in it plays nothing."""
        agent, session, caller, clock = make()
        agent.speech_started(clock.seconds())
        agent.speech_stopped(clock.seconds())
        agent.speech_stopped(clock.seconds())  # no turn open: ignored
        self.assertEqual(session.types(), ["parrot.turn_started", "parrot.turn_ended"])
        self.assertEqual(session.cleared, [])
        self.assertEqual(session.sent, [])


class RealtimeControlTests(SynchronousTestCase):
    """What the Realtime layer sets (turn_detection, create_response, cancel) and how the parrot follows."""

    def test_the_first_configuration_keeps_the_ini_settings(self) -> None:
        """The layer's defaults are not the client's choice: the INI's prefix padding holds until a client sets one."""
        agent, session, caller, clock = make(prefix_padding_ms=100)
        agent.configure(realtime_config(DEFAULT_VAD))
        agent.configure(realtime_config(DEFAULT_VAD))
        self.assertEqual(agent.prefix_padding_ms, 100)
        self.assertEqual(session.events, [])

    def test_client_prefix_padding_is_kept_before_the_turn(self) -> None:
        """A client's prefix_padding_ms is how much audio before the first voiced frame the turn keeps."""
        agent, session, caller, clock = make(prefix_padding_ms=100)
        configure(agent, prefix_padding_ms=200)
        self.assertEqual(agent.prefix_padding_ms, 200)
        background, speech = quiet(400), tone(600)
        caller.say(background + speech + quiet(800))
        caller.wait(2)
        self.assertEqual(session.audio(), b"".join(background[-10:] + speech))

    def test_the_session_detector_decides_the_silence(self) -> None:
        """The silence is the session's detector's: retuned there (the Realtime layer does), the parrot follows."""
        agent, session, caller, clock = make(silence_ms=500)
        session.set_speech_detection(DetectionSettings("energy", min_speech_ms=100, silence_ms=1000))
        caller.say(quiet(300) + tone(800))
        tone_end = clock.seconds()
        caller.say(quiet(700))
        self.assertEqual(session.sent, [])
        caller.say(quiet(1000, seed=9))
        self.assertApproximates(first_audio_at(session), tone_end + 0.02 + 1.0, 0.021)

    def test_create_response_false_waits_for_response_create(self) -> None:
        """Without create_response the turn is recorded, not said; response.create says it."""
        agent, session, caller, clock = make()
        configure(agent, create_response=False, prefix_padding_ms=100)
        self.assertFalse(agent.create_response({}))  # nothing recorded yet
        caller.say(quiet(300) + tone(600) + quiet(1000))
        self.assertEqual(session.sent, [])
        self.assertTrue(agent.create_response({}))
        self.assertTrue(session.sent)
        self.assertEqual(session.types()[-2:], ["<start_turn>", "parrot.speaking"])
        self.assertFalse(agent.create_response({}))  # playing already

    def test_turn_detection_null_neither_answers_nor_is_interrupted(self) -> None:
        """turn_detection null: no automatic answer, and the caller does not cut a playback short."""
        agent, session, caller, clock = make()
        agent.configure(realtime_config(DEFAULT_VAD))
        caller.say(quiet(300) + tone(600) + quiet(1000))
        self.assertEqual(agent.turns_played, 1)
        caller.say(quiet(2000))
        agent.configure(realtime_config(None))
        self.assertTrue(agent.create_response({}))
        agent.speech_started(clock.seconds())
        self.assertTrue(agent.playing)

    def test_each_playback_is_a_turn(self) -> None:
        """The turn starts with the playback and ends once all of it is queued; a cancel stops it."""
        agent, session, caller, clock = make()
        caller.say(quiet(300) + tone(1000) + quiet(600))
        self.assertEqual(session.types()[2:4], ["<start_turn>", "parrot.speaking"])
        caller.say(quiet(2000))
        self.assertEqual(session.of_type("<end_turn>"), [{"type": "<end_turn>", "interrupted": False}])
        self.assertTrue(agent.create_response({}))
        agent.cancel_response()
        self.assertFalse(agent.playing)
        # The layer ended the cancelled turn itself: the parrot does not end it again.
        self.assertEqual(len(session.of_type("<end_turn>")), 1)
        self.assertEqual(session.types()[-1], "parrot.interrupted")

    def test_other_events_are_ignored(self) -> None:
        """The Realtime layer answers the protocol: the parrot has nothing to say to events."""
        agent, session, caller, clock = make()
        agent.event_received({"type": "response.create"})
        agent.event_received({"type": "session.update", "session": {"turn_detection": None}})
        self.assertEqual(session.events, [])


class SessionEndTests(SynchronousTestCase):
    """Ending the session, whatever the parrot is doing, leaves nothing behind."""

    def test_session_ended_while_listening_leaves_no_delayed_calls(self) -> None:
        """session_ended during the caller's turn cancels every timer and ignores later calls."""
        self.end_session_and_check("listening")

    def test_session_ended_while_playing_leaves_no_delayed_calls(self) -> None:
        """session_ended during a playback cancels every timer and ignores later calls."""
        self.end_session_and_check("playing")

    def test_session_ended_when_idle_leaves_no_delayed_calls(self) -> None:
        """session_ended with nothing going on leaves no timer and ignores later calls."""
        self.end_session_and_check("idle")

    def end_session_and_check(self, when: str) -> None:
        """session_ended cancels every timer, whatever the parrot was doing (``when``), and ignores later calls."""
        agent, session, caller, clock = make()
        caller.say(quiet(200))
        if when in ("listening", "playing"):
            caller.say(tone(800))
        if when == "playing":
            caller.say(quiet(600))
            self.assertTrue(agent.playing)
        else:
            self.assertTrue(clock.getDelayedCalls() or when == "idle")
        agent.session_ended("hangup")
        session.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(agent.playing)
        self.assertFalse(agent.listening)
        sent, events = len(session.sent), len(session.events)
        caller.say(tone(800) + quiet(1000))
        agent.event_received({"type": "session.update", "session": {}})
        agent.speech_started(clock.seconds())
        self.assertEqual((len(session.sent), len(session.events)), (sent, events))
        self.assertEqual(clock.getDelayedCalls(), [])
