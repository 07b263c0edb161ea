"""Tests for voiceedge.agents.parrot: turn-taking on a fake session and task.Clock."""

from __future__ import annotations

import array
import math
import random
from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from voiceedge import config as c
from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession, IAgentType
from voiceedge.agents.parrot import ParrotAgent, ParrotAgentFactory, TurnDetection, agent_type

RATE = 16000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2
BYTES_PER_MS = RATE * 2 // 1000


@implementer(IAgentSession)
class FakeSession:
    """An IAgentSession whose playout runs on a task.Clock at real speed."""

    def __init__(self, clock: Clock, sample_rate: int = RATE) -> None:
        self.session_id = "fake"
        self.sample_rate = sample_rate
        self.clock = clock
        self.sent: list[tuple[float, bytes]] = []
        self.events: list[dict[str, Any]] = []
        self.cleared: list[float] = []
        self.ended: str | None = None
        self._play_end = 0.0

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

    def __init__(self, agent: ParrotAgent, clock: Clock) -> None:
        self.agent = agent
        self.clock = clock
        self.timestamp = 123456
        self.frames_sent = 0

    def say(self, frames: list[bytes], jitter: random.Random | None = None) -> None:
        """Advance the clock 20 ms per frame and deliver it (late by up to 40 ms with ``jitter``)."""
        for pcm in frames:
            self.clock.advance(FRAME_MS / 1000)
            late = jitter.uniform(0, 0.04) if jitter else 0.0
            frame = AudioFrame(pcm, RATE, self.timestamp & 0xFFFFFFFF, self.clock.seconds() + late)
            self.timestamp += 960
            self.frames_sent += 1
            self.agent.audio_received(frame)

    def wait(self, seconds: float) -> None:
        """Let time pass with no audio at all (a sender in DTX)."""
        for _ in range(round(seconds * 1000)):
            self.clock.advance(0.001)


def make(
    silence_ms: float = 500,
    min_speech_ms: float = 100,
    max_wait_ms: float | None = None,
    prefix_padding_ms: float = 100,
) -> tuple[ParrotAgent, FakeSession, Caller, Clock]:
    """A parrot on a fake session, and a caller to talk to it."""
    clock = Clock()
    session = FakeSession(clock)
    detection = TurnDetection(
        threshold_db=12,
        min_speech_ms=min_speech_ms,
        silence_ms=silence_ms,
        max_wait_ms=max_wait_ms,
        prefix_padding_ms=prefix_padding_ms,
    )
    agent = ParrotAgent(session, detection)
    return agent, session, Caller(agent, clock), clock


def first_audio_at(session: FakeSession, since: float = 0.0) -> float:
    """When the first PCM at or after ``since`` was sent."""
    return min(at for at, _ in session.sent if at >= since - 1e-9)


def test_interfaces() -> None:
    """The fake session, the agent, its factory and its type provide their interfaces."""
    clock = Clock()
    session = FakeSession(clock)
    verifyObject(IAgentSession, session)
    factory = ParrotAgentFactory(RATE)
    verifyObject(IAgentFactory, factory)
    verifyObject(IAgent, factory.agent_for(session))
    verifyObject(IAgentType, agent_type)


def test_ini_options_make_a_factory() -> None:
    """[agent.parrot] parses into a factory with those settings; bad values are errors."""
    schema = {"agent.parrot": agent_type.options}
    conf = c.load_config(
        schema,
        text="[agent.parrot]\nsilence_ms = 800\nthreshold_db = 9.5\nmin_speech_ms = 250\n"
        "max_wait_ms =\nsample_rate = 16000\n",
    )
    factory = agent_type.make_factory(conf["agent.parrot"], Clock())
    assert isinstance(factory, ParrotAgentFactory)
    assert factory.sample_rate == 16000
    assert factory.turn_detection == TurnDetection(
        threshold_db=9.5, min_speech_ms=250, silence_ms=800, max_wait_ms=None, prefix_padding_ms=100,
        detector="silero",
    )
    defaults = agent_type.make_factory(c.load_config(schema)["agent.parrot"], Clock())
    assert isinstance(defaults, ParrotAgentFactory)
    # The shipped default is the neural detector (chosen by bench/vad.py); the code's is energy.
    assert defaults.turn_detection == TurnDetection(detector="silero")
    energy = c.load_config(schema, text="[agent.parrot]\ndetector = energy\n")["agent.parrot"]
    assert agent_type.make_factory(energy, Clock()).turn_detection == TurnDetection()
    for bad in ("detector = webrtc", "silence_ms = -1", "threshold_db = loud", "max_wait_ms = 99999", "sample_rate = 8000"):
        with pytest.raises(c.ConfigError):
            c.load_config(schema, text=f"[agent.parrot]\n{bad}\n")


def test_turn_is_said_back_once_after_the_silence() -> None:
    """Tone then silence: exactly one playback, starting silence_ms after the tone, as long as the turn."""
    agent, session, caller, clock = make(silence_ms=500, min_speech_ms=100, prefix_padding_ms=100)
    background, speech = quiet(300), tone(1000)
    caller.say(background)
    tone_end = clock.seconds() + 1.0
    caller.say(speech)
    assert session.sent == []
    assert agent.listening
    caller.say(quiet(3000, seed=8))

    assert first_audio_at(session) == pytest.approx(tone_end + 0.5, abs=0.021)
    # The turn: 100 ms of prefix padding and the tone; not the silence after it.
    assert session.audio() == b"".join(background[-5:] + speech)
    assert session.types() == [
        "parrot.turn_started",
        "parrot.turn_ended",
        "<start_turn>",
        "parrot.speaking",
        "<end_turn>",
        "parrot.done",
    ]
    ended = session.of_type("parrot.turn_ended")[0]
    assert ended["duration_ms"] == pytest.approx(1000, abs=20)
    assert ended["reason"] == "silence"
    assert session.of_type("parrot.speaking")[0]["duration_ms"] == 1100
    assert agent.turns_played == 1
    assert not agent.playing
    assert clock.getDelayedCalls() == []


def test_playback_is_paced_in_chunks() -> None:
    """The parrot keeps only a short lead queued, so stopping is quick."""
    agent, session, caller, clock = make()
    # (A steady tone longer than the noise window, 3 s, would become the noise floor.)
    caller.say(quiet(200) + tone(2500) + quiet(100))
    caller.wait(5)
    assert len(session.audio()) == 2600 * BYTES_PER_MS
    assert max(len(pcm) for _, pcm in session.sent) <= 100 * BYTES_PER_MS
    # Topped up over the playback, not all at once.
    assert session.sent[-1][0] - session.sent[0][0] > 2.0
    assert clock.getDelayedCalls() == []
    assert session.types()[-1] == "parrot.done"


def test_turn_ends_when_audio_stops_coming() -> None:
    """A sender in DTX sends nothing: the timer ends the turn on time."""
    agent, session, caller, clock = make(silence_ms=400)
    caller.say(quiet(200) + tone(600))
    tone_end = clock.seconds()
    caller.wait(2)
    assert first_audio_at(session) == pytest.approx(tone_end + 0.4, abs=0.002)
    assert agent.turns_played == 1


@pytest.mark.parametrize("blip_ms", [20, 60, 100, 180])
def test_blips_shorter_than_min_speech_are_not_a_turn(blip_ms: int) -> None:
    """Sounds shorter than min_speech_ms are ignored: no events, no playback."""
    agent, session, caller, clock = make(min_speech_ms=200)
    caller.say(quiet(300))
    for seed in range(3):
        caller.say(tone(blip_ms))
        caller.say(quiet(700, seed=seed))
    assert session.sent == []
    assert session.events == []
    assert agent.turns_played == 0
    assert clock.getDelayedCalls() == []


def test_max_wait_forces_an_answer() -> None:
    """A turn that never falls silent is answered after max_wait_ms, once."""
    agent, session, caller, clock = make(max_wait_ms=1000, prefix_padding_ms=0)
    caller.say(quiet(300))
    start = clock.seconds()
    caller.say(tone(3000))
    caller.say(quiet(2000))
    assert first_audio_at(session) == pytest.approx(start + 1.0, abs=0.021)
    ended = session.of_type("parrot.turn_ended")
    assert [e["reason"] for e in ended] == ["max_wait"]
    assert ended[0]["duration_ms"] == pytest.approx(1000, abs=20)
    assert len(session.audio()) == pytest.approx(1000 * BYTES_PER_MS, abs=FRAME_BYTES)
    assert agent.turns_played == 1


def test_recording_is_bounded() -> None:
    """A turn longer than max_turn_ms is said back up to max_turn_ms only."""
    clock = Clock()
    session = FakeSession(clock)
    agent = ParrotAgent(session, TurnDetection(max_wait_ms=None, prefix_padding_ms=0), max_turn_ms=1000)
    caller = Caller(agent, clock)
    caller.say(quiet(200) + tone(2500) + quiet(1000))
    caller.wait(3)
    assert len(session.audio()) == 1000 * BYTES_PER_MS


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


def test_the_first_configuration_keeps_the_ini_settings() -> None:
    """The layer's defaults are not the client's choice: the INI's turn detection holds until a client sets one."""
    agent, session, caller, clock = make(silence_ms=700, prefix_padding_ms=100)
    agent.configure(realtime_config(DEFAULT_VAD))
    agent.configure(realtime_config(DEFAULT_VAD))
    assert agent.turn_detection == TurnDetection(silence_ms=700, min_speech_ms=100, max_wait_ms=None, prefix_padding_ms=100)
    assert session.events == []


def test_client_turn_detection_changes_silence() -> None:
    """A client's silence_duration_ms is the silence the parrot waits for."""
    agent, session, caller, clock = make(silence_ms=500)
    configure(agent, silence_duration_ms=1000, prefix_padding_ms=100)
    assert agent.turn_detection.silence_ms == 1000
    assert agent.turn_detection.threshold_db == 12

    caller.say(quiet(300) + tone(800))
    tone_end = clock.seconds()
    caller.say(quiet(700))
    assert session.sent == []
    caller.say(quiet(1000, seed=9))
    assert first_audio_at(session) == pytest.approx(tone_end + 1.0, abs=0.021)


def test_client_turn_detection_shorter_silence_ends_open_turn_sooner() -> None:
    """Shortening the silence during a silent stretch ends the turn at once, by the timer."""
    agent, session, caller, clock = make(silence_ms=2000)
    agent.configure(realtime_config(DEFAULT_VAD))
    caller.say(quiet(200) + tone(500))
    caller.wait(0.5)
    assert session.sent == []
    agent.configure(realtime_config({**DEFAULT_VAD, "silence_duration_ms": 300}))
    clock.advance(0)
    assert session.sent
    assert agent.turns_played == 1


@pytest.mark.parametrize(
    ("threshold", "threshold_db"), [(0.5, 12.0), (0.0, 3.0), (1.0, 21.0), (0.25, 7.5)]
)
def test_threshold_maps_onto_decibels(threshold: float, threshold_db: float) -> None:
    """OpenAI's threshold (0..1) maps linearly onto dB above the noise floor; 0.5 is the INI's value."""
    agent, *_ = make()
    configure(agent, threshold=threshold)
    assert agent.turn_detection.threshold_db == pytest.approx(threshold_db)


def test_create_response_false_waits_for_response_create() -> None:
    """Without create_response the turn is recorded, not said; response.create says it."""
    agent, session, caller, clock = make()
    configure(agent, create_response=False, prefix_padding_ms=100)
    assert not agent.create_response({})  # nothing recorded yet
    caller.say(quiet(300) + tone(600) + quiet(1000))
    assert session.sent == []
    assert agent.create_response({})
    assert session.sent
    assert session.types()[-2:] == ["<start_turn>", "parrot.speaking"]
    assert not agent.create_response({})  # playing already


def test_turn_detection_null_neither_answers_nor_is_interrupted() -> None:
    """turn_detection null: no automatic answer, and the caller does not cut a playback short."""
    agent, session, caller, clock = make()
    agent.configure(realtime_config(DEFAULT_VAD))
    caller.say(quiet(300) + tone(600) + quiet(1000))
    assert agent.turns_played == 1
    caller.say(quiet(2000))
    agent.configure(realtime_config(None))
    assert agent.create_response({})
    agent.speech_started(clock.seconds())
    assert agent.playing


def test_each_playback_is_a_turn() -> None:
    """The turn starts with the playback and ends once all of it is queued; a cancel stops it."""
    agent, session, caller, clock = make()
    caller.say(quiet(300) + tone(1000) + quiet(600))
    assert session.types()[2:4] == ["<start_turn>", "parrot.speaking"]
    caller.say(quiet(2000))
    assert session.of_type("<end_turn>") == [{"type": "<end_turn>", "interrupted": False}]
    assert agent.create_response({})
    agent.cancel_response()
    assert not agent.playing
    # The layer ended the cancelled turn itself: the parrot does not end it again.
    assert len(session.of_type("<end_turn>")) == 1
    assert session.types()[-1] == "parrot.interrupted"


def test_other_events_are_ignored() -> None:
    """The Realtime layer answers the protocol: the parrot has nothing to say to events."""
    agent, session, caller, clock = make()
    agent.event_received({"type": "response.create"})
    agent.event_received({"type": "session.update", "session": {"turn_detection": None}})
    assert session.events == []


def test_barge_in_stops_playback_and_records_the_new_turn() -> None:
    """speech_started while playing: playback stops at once; the new turn is recorded and said back."""
    agent, session, caller, clock = make(silence_ms=500, min_speech_ms=100, prefix_padding_ms=100)
    caller.say(quiet(300) + tone(2000))
    caller.say(quiet(500))
    playback_start = first_audio_at(session)
    assert agent.playing
    caller.say(quiet(400, seed=3))
    background = quiet(200, seed=4)
    caller.say(background)
    second = tone(600, frequency=500)

    # The session hears the first voiced frame, clears its queue, then tells the agent.
    caller.say(second[:1])
    barge_in = clock.seconds()
    session.clear_audio()
    agent.speech_started(barge_in)
    assert not agent.playing
    assert session.queued_audio_ms() == 0
    [interrupted] = session.of_type("parrot.interrupted")
    assert interrupted["played_ms"] == pytest.approx((barge_in - playback_start) * 1000, abs=1)
    assert interrupted["played_ms"] < 2100

    caller.say(second[1:])
    second_end = clock.seconds()
    caller.say(quiet(2000, seed=5))
    # Nothing was sent from the barge-in until the new turn ended.
    assert [at for at, _ in session.sent if barge_in - 1e-9 <= at < second_end + 0.48] == []
    assert first_audio_at(session, barge_in) == pytest.approx(second_end + 0.5, abs=0.021)
    assert session.audio(barge_in) == b"".join(background[-5:] + second)
    assert agent.turns_played == 2
    assert session.types()[-8:] == [
        "<end_turn>",
        "parrot.interrupted",
        "parrot.turn_started",
        "parrot.turn_ended",
        "<start_turn>",
        "parrot.speaking",
        "<end_turn>",
        "parrot.done",
    ]
    assert session.of_type("<end_turn>")[0]["interrupted"] is True


def test_own_detector_barges_in_when_the_session_does_not() -> None:
    """Without the session's speech_started, the parrot's own detector still stops playback."""
    agent, session, caller, clock = make(min_speech_ms=100)
    caller.say(quiet(200) + tone(2000) + quiet(700))
    assert agent.playing
    caller.say(tone(100, frequency=500))
    assert not agent.playing
    assert session.cleared  # the parrot cleared the queue itself
    assert agent.listening


def test_speech_started_while_silent_does_nothing() -> None:
    """A speech_started when not playing sends nothing and clears nothing."""
    agent, session, caller, clock = make()
    agent.speech_started(clock.seconds())
    agent.speech_stopped(clock.seconds())
    assert session.events == [] and session.cleared == []


def test_jittery_arrival_is_still_one_turn() -> None:
    """Packets up to 40 ms late (RTP timestamps regular) make one turn of the right length."""
    agent, session, caller, clock = make(silence_ms=300, prefix_padding_ms=0)
    jitter = random.Random(3)
    caller.say(quiet(300), jitter)
    caller.say(tone(1500), jitter)
    caller.say(quiet(1500), jitter)
    caller.wait(2)
    assert agent.turns_played == 1
    assert len(session.audio()) == pytest.approx(1500 * BYTES_PER_MS, abs=2 * FRAME_BYTES)


@pytest.mark.parametrize("when", ["listening", "playing", "idle"])
def test_session_ended_leaves_no_delayed_calls(when: str) -> None:
    """session_ended cancels every timer, whatever the parrot was doing, and ignores later calls."""
    agent, session, caller, clock = make()
    caller.say(quiet(200))
    if when in ("listening", "playing"):
        caller.say(tone(800))
    if when == "playing":
        caller.say(quiet(600))
        assert agent.playing
    else:
        assert clock.getDelayedCalls() or when == "idle"
    agent.session_ended("hangup")
    assert clock.getDelayedCalls() == []
    assert not agent.playing and not agent.listening
    sent, events = len(session.sent), len(session.events)
    caller.say(tone(800) + quiet(1000))
    agent.event_received({"type": "session.update", "session": {}})
    agent.speech_started(clock.seconds())
    assert (len(session.sent), len(session.events)) == (sent, events)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("jump", [10**9, -(10**8), 3 * 48000])
def test_rtp_timestamp_jump_is_resynchronised(jump: int) -> None:
    """A sender whose RTP timestamps jump (a new stream) still gets its next turn on time."""
    agent, session, caller, clock = make(silence_ms=400, prefix_padding_ms=0)
    caller.say(quiet(200) + tone(500) + quiet(1000))
    assert agent.turns_played == 1
    caller.timestamp += jump
    caller.say(quiet(200, seed=2))
    turn_at = clock.seconds()
    caller.say(tone(700, frequency=400))
    tone_end = clock.seconds()
    caller.say(quiet(1000, seed=3))
    assert agent.turns_played == 2
    assert first_audio_at(session, turn_at) == pytest.approx(tone_end + 0.4, abs=0.021)
    assert len(session.audio(turn_at)) == 700 * BYTES_PER_MS
