# -*- test-case-name: tests.test_bridge -*-
"""Unit tests of the bridge agent: its frame codec, its options, the agent and its WebSocket client."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.cases import case
from voiceedge import config as c
from voiceedge.agents import bridge_protocol as bp
from voiceedge.agents.bridge import (
    BackendClosed,
    BackendRejected,
    BridgeAgent,
    BridgeAgentFactory,
    BridgeLink,
    BridgeSettings,
    LinkState,
    WebSocketClient,
    agent_type,
    bearer_token,
    websocket_url,
)
from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession, IAgentType
from voiceedge.wire.errors import WireError

RATE = 24000
FRAME = b"\x01\x02" * (RATE // 50)


@implementer(IAgentSession)
class FakeSession:
    """Records what the agent asks of its session; end() calls back like the real one."""

    def __init__(self, clock: Clock) -> None:
        self.session_id = "sess-1"
        self.sample_rate = RATE
        self.clock = clock
        self.audio: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.ended: list[str] = []
        self.queued_ms = 0
        self.agent: IAgent | None = None

    def send_audio(self, pcm: bytes) -> None:
        self.audio.append(pcm)

    def clear_audio(self) -> int:
        self.calls.append("clear")
        return 0

    def queued_audio_ms(self) -> int:
        return self.queued_ms

    def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def end(self, reason: str) -> None:
        self.ended.append(reason)
        agent, self.agent = self.agent, None
        if agent is not None:
            agent.session_ended("agent")

    def start_turn(self) -> None:
        self.calls.append("start_turn")

    def end_turn(self, interrupted: bool = False) -> None:
        self.calls.append("end_turn interrupted" if interrupted else "end_turn")


class FakeWebSocket:
    """An in-memory WebSocketTransport: records what the agent sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.closed: int | None = None

    def sendTextMessage(self, text: str) -> None:  # noqa: N802
        assert self.closed is None, "sent after close"
        self.sent.append(("text", json.loads(text)))

    def sendBytesMessage(self, data: bytes) -> None:  # noqa: N802
        assert self.closed is None, "sent after close"
        self.sent.append(("bytes", data))

    def loseConnection(self, code: int = 1000) -> None:  # noqa: N802
        self.closed = code

    def texts(self) -> list[dict[str, Any]]:
        return [m for kind, m in self.sent if kind == "text"]


class FakeConnector:
    """Connects nothing: the test decides when the WebSocket opens or fails."""

    def __init__(self) -> None:
        self.link: BridgeLink | None = None
        self.deferred: Deferred[BridgeLink] | None = None
        self.cancelled = False

    def __call__(self, link: BridgeLink) -> Deferred[BridgeLink]:
        self.link = link

        def cancel(d: Deferred[BridgeLink]) -> None:
            self.cancelled = True

        self.deferred = Deferred(cancel)
        return self.deferred

    def open(self) -> FakeWebSocket:
        assert self.link is not None and self.deferred is not None
        ws = FakeWebSocket()
        self.link.negotiationStarted(ws)  # type: ignore[arg-type]
        self.deferred.callback(self.link)
        self.link.negotiationFinished()
        return ws


def make_agent(
    clock: Clock | None = None, **settings: Any
) -> tuple[BridgeAgent, FakeSession, FakeConnector, Clock]:
    """An agent on a fake session, a fake connector and a Clock at t=100."""
    if clock is None:
        clock = Clock()
        clock.advance(100)
    session = FakeSession(clock)
    connector = FakeConnector()
    options = {"url": websocket_url("ws://127.0.0.1:9/agent"), "sample_rate": RATE, **settings}
    factory = BridgeAgentFactory(BridgeSettings(**options), connector)
    agent = factory.agent_for(session)
    assert isinstance(agent, BridgeAgent)
    verifyObject(IAgent, agent)
    session.agent = agent
    return agent, session, connector, clock


def frame(at: float, ts: int = 960, lost: bool = False, pcm: bytes = FRAME) -> AudioFrame:
    """A caller frame that arrived at ``at``."""
    return AudioFrame(pcm, RATE, ts, at, lost)


def out_audio(pcm: bytes) -> bytes:
    """A backend's audio frame."""
    return bp.encode_audio(bp.AudioMessage(bp.KIND_OUTPUT_AUDIO, pcm))


class RecordingLink(BridgeLink):
    """A link that records instead of driving an agent."""

    def __init__(self) -> None:
        self.transport = None
        self.received: list[Any] = []

    def negotiationStarted(self, transport: WebSocketClient) -> None:  # noqa: N802
        self.transport = transport

    def textMessageReceived(self, message: str) -> None:  # noqa: N802
        self.received.append(message)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:  # noqa: N802
        self.received.append(bytes(data))

    def messageTooLarge(self, size: int) -> None:  # noqa: N802
        self.received.append(("too large", size))

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.received.append(reason)


def wire(token: bytes | None = b"s3cret", max_message: int = 1 << 20) -> tuple[
    WebSocketClient, StringTransport, WSConnection, RecordingLink, Deferred[BridgeLink], Request
]:
    """A client over a StringTransport and a wsproto server on the far side, upgrade read."""
    link = RecordingLink()
    done: Deferred[BridgeLink] = Deferred()
    headers = [(b"authorization", b"Bearer " + token)] if token else []
    client = WebSocketClient(websocket_url("ws://10.0.0.1:8765/agent?x=1"), headers, link, done, max_message)
    transport = StringTransport()
    client.makeConnection(transport)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(transport.value())
    transport.clear()
    (request,) = list(server.events())
    assert isinstance(request, Request)
    return client, transport, server, link, done, request


def pump(transport: StringTransport, server: WSConnection) -> list[Any]:
    """What the client wrote, as server-side events."""
    server.receive_data(transport.value())
    transport.clear()
    return list(server.events())


class BridgeProtocolTests(SynchronousTestCase):
    """The bridge protocol's audio frames and JSON events, both ways; hostile input raises one type."""

    def test_audio_header_layout(self) -> None:
        """The header is 16 bytes: 0x11, flags, reserved, RTP timestamp, µs, big-endian."""
        data = bp.encode_audio(bp.AudioMessage(bp.KIND_INPUT_AUDIO, b"\xff\x7f", 0x01020304, 0x0A0B, True))
        self.assertEqual(data.hex(), "1101" "0000" "01020304" "0000000000000a0b" "ff7f")
        self.assertEqual(bp.AUDIO_HEADER_SIZE, 16)

    @given(
        kind=st.sampled_from([bp.KIND_INPUT_AUDIO, bp.KIND_OUTPUT_AUDIO]),
        samples=st.binary(max_size=400).map(lambda b: b[: len(b) & ~1]),
        rtp=st.integers(0, 2**32 - 1),
        arrival=st.integers(0, 2**64 - 1),
        lost=st.booleans(),
    )
    def test_audio_round_trip(self, kind: int, samples: bytes, rtp: int, arrival: int, lost: bool) -> None:
        """decode(encode(m)) == m."""
        message = bp.AudioMessage(kind, samples, rtp, arrival, lost)
        self.assertEqual(bp.decode_audio(bp.encode_audio(message)), message)

    @given(st.binary(max_size=64))
    def test_audio_decode_hostile_bytes_raise_one_type(self, data: bytes) -> None:
        """Random bytes parse or raise BridgeProtocolError, a WireError; nothing else."""
        try:
            bp.decode_audio(data)
        except bp.BridgeProtocolError as e:
            self.assertIsInstance(e, WireError)

    def test_audio_decode_rejects(self) -> None:
        """Short, other version, unknown kind, half a sample."""
        for data, why in [
            (b"\x12" * 15, "shorter"),
            (b"\x22" + bytes(15), "version 2"),
            (b"\x13" + bytes(15), "kind 3"),
            (b"\x12" + bytes(15) + b"\x00", "whole number"),
        ]:
            with case(why):
                with self.assertRaises(bp.BridgeProtocolError) as raised:
                    bp.decode_audio(data)
                self.assertRegex(str(raised.exception), why)

    def test_audio_encode_clamps_times(self) -> None:
        """A timestamp past 32 bits wraps; a negative arrival becomes 0."""
        decoded = bp.decode_audio(bp.encode_audio(bp.AudioMessage(1, b"", 2**32 + 5, -3)))
        self.assertEqual((decoded.rtp_timestamp, decoded.arrival_us), (5, 0))

    def test_backend_events_parse(self) -> None:
        """The three known events, an unknown one, and defaults of session.end."""
        self.assertEqual(bp.parse_backend_event('{"type":"output_audio.clear"}'), bp.ClearOutputAudio())
        self.assertEqual(bp.parse_backend_event('{"type":"client.event","event":{"a":[1]}}'), bp.ForwardClientEvent({"a": [1]}))
        self.assertEqual(bp.parse_backend_event('{"type":"session.end","reason":"bye"}'), bp.EndSession("bye"))
        self.assertEqual(
            bp.parse_backend_event('{"type":"session.end","drain":true}'), bp.EndSession(bp.DEFAULT_END_REASON, True)
        )
        self.assertEqual(
            bp.parse_backend_event('{"type":"response.created","x":1}'), bp.UnknownEvent("response.created")
        )

    def test_backend_events_reject(self) -> None:
        """Malformed events raise BridgeProtocolError."""
        for text in [
            "",
            "{",
            "[]",
            '"x"',
            "{}",
            '{"type":3}',
            '{"type":"client.event"}',
            '{"type":"client.event","event":[1]}',
            '{"type":"session.end","reason":5}',
            '{"type":"session.end","drain":"yes"}',
            "[" * 100_000,
            '{"type":"client.event","event":{"a":"' + "x" * (1 << 20) + '"}}',
        ]:
            with case(f"{text[:60]!r} ({len(text)} characters)"), self.assertRaises(bp.BridgeProtocolError):
                bp.parse_backend_event(text)

    @given(st.text(max_size=80))
    def test_backend_events_hostile_text_raises_one_type(self, text: str) -> None:
        """Random text parses or raises BridgeProtocolError; nothing else."""
        try:
            bp.parse_backend_event(text)
        except bp.BridgeProtocolError:
            pass

    def test_outgoing_events(self) -> None:
        """The JSON voiceedge sends, field by field."""
        self.assertEqual(json.loads(bp.session_start("s1", 16000)), {
            "type": "session.start",
            "protocol_version": 1,
            "session_id": "s1",
            "sample_rate": 16000,
            "audio_format": "pcm16le mono",
            "frame_ms": 20,
        })
        self.assertEqual(json.loads(bp.session_end("hangup")), {"type": "session.end", "reason": "hangup"})
        self.assertEqual(json.loads(bp.speech_started(5)), {"type": "input_audio.speech_started", "at_ms": 5})
        self.assertEqual(json.loads(bp.speech_stopped(9)), {"type": "input_audio.speech_stopped", "at_ms": 9})
        self.assertEqual(json.loads(bp.client_event({"é": None})), {"type": "client.event", "event": {"é": None}})

    def test_turn_events_parse_and_encode(self) -> None:
        """turn.start and turn.end from the backend; session.config, turn.request, turn.cancelled to it."""
        self.assertEqual(bp.parse_backend_event('{"type":"turn.start"}'), bp.StartTurn())
        self.assertEqual(bp.parse_backend_event('{"type":"turn.end"}'), bp.EndTurn(False))
        self.assertEqual(bp.parse_backend_event('{"type":"turn.end","interrupted":true}'), bp.EndTurn(True))
        with self.assertRaises(bp.BridgeProtocolError):
            bp.parse_backend_event('{"type":"turn.end","interrupted":"yes"}')
        self.assertEqual(json.loads(bp.turn_request("turn_1", {"instructions": "hi"})), {
            "type": "turn.request",
            "response_id": "turn_1",
            "response": {"instructions": "hi"},
        })
        self.assertEqual(json.loads(bp.turn_cancelled("turn_1")), {"type": "turn.cancelled", "response_id": "turn_1"})
        self.assertEqual(json.loads(bp.session_config({"type": "realtime"})), {"type": "session.config", "session": {"type": "realtime"}})


class BridgeOptionsTests(SynchronousTestCase):
    """[agent.bridge] options: url, token, the schema, and the factory they make."""

    def test_url_option(self) -> None:
        """ws:// and wss:// parse with default ports and the target; others are refused."""
        url = websocket_url("wss://backend.example/v1/agent?model=x")
        self.assertEqual(
            (url.secure, url.host, url.port, url.target, url.host_header),
            (True, "backend.example", 443, "/v1/agent?model=x", "backend.example"),
        )
        url = websocket_url("ws://[::1]:9000")
        self.assertEqual((url.host, url.port, url.target, url.host_header), ("::1", 9000, "/", "[::1]:9000"))
        for bad, why in [
            ("", "required"),
            ("http://x/", "ws://"),
            ("ws://", "no host"),
            ("ws://u:p@x/", "credentials"),
            ("ws://x:99999/", "URL"),
            ("ws://x/#f", "fragment"),
        ]:
            with case(repr(bad)):
                with self.assertRaises(ValueError) as raised:
                    websocket_url(bad)
                self.assertRegex(str(raised.exception), why)

    def test_token_option(self) -> None:
        """A token is visible ASCII: no space, no line break that could forge a header."""
        self.assertEqual(bearer_token(""), "")
        self.assertEqual(bearer_token("sk-abc.DEF_123"), "sk-abc.DEF_123")
        for bad in ("a b", "a\r\nX-Evil: 1", "é"):
            with case(repr(bad)), self.assertRaises(ValueError):
                bearer_token(bad)

    def test_agent_type_options_validate_at_load_time(self) -> None:
        """The [agent.bridge] schema: url required, defaults for the rest."""
        verifyObject(IAgentType, agent_type)
        schema = {"agent.bridge": agent_type.options}
        with self.assertRaises(c.ConfigError) as raised:
            c.load_config(schema, text="[agent.bridge]\nsample_rate = 16000\n")
        self.assertRegex(str(raised.exception), r"\[agent.bridge\] url")
        with self.assertRaises(c.ConfigError) as raised:
            c.load_config(schema, text="[agent.bridge]\nurl = ws://127.0.0.1:1/\nsample_rate = 8000\n")
        self.assertRegex(str(raised.exception), "sample_rate")
        conf = c.load_config(schema, text="[agent.bridge]\nurl = ws://127.0.0.1:1/x\ntoken = t0k\n")
        factory = agent_type.make_factory(conf["agent.bridge"], Clock())
        verifyObject(IAgentFactory, factory)
        self.assertIsInstance(factory, BridgeAgentFactory)
        self.assertEqual(factory.sample_rate, 24000)
        self.assertEqual(factory.settings.connect_timeout, 5.0)
        self.assertEqual(factory.settings.token, "t0k")

    def test_a_backend_that_speaks_realtime_takes_over(self) -> None:
        """realtime = backend: the factory says so, and the session's layer steps aside."""
        settings = BridgeSettings(websocket_url("ws://127.0.0.1:9/agent"), realtime="backend")
        self.assertTrue(BridgeAgentFactory(settings, FakeConnector()).speaks_realtime)
        self.assertFalse(BridgeAgentFactory(BridgeSettings(websocket_url("ws://127.0.0.1:9/agent")), FakeConnector()).speaks_realtime)


class BridgeAgentTests(SynchronousTestCase):
    """The agent on a fake session and a fake connector: messages both ways, connecting, ending, failures, turns."""

    def test_session_start_is_the_first_message(self) -> None:
        """On connect the backend gets session.start before anything else."""
        agent, session, connector, clock = make_agent()
        ws = connector.open()
        self.assertIs(agent.state, LinkState.OPEN)
        self.assertEqual(ws.sent, [
            (
                "text",
                {
                    "type": "session.start",
                    "protocol_version": 1,
                    "session_id": "sess-1",
                    "sample_rate": RATE,
                    "audio_format": "pcm16le mono",
                    "frame_ms": 20,
                },
            )
        ])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_caller_audio_goes_with_its_header(self) -> None:
        """Each frame: kind 1, LOST flag, RTP timestamp, µs since the agent started, PCM."""
        agent, session, connector, clock = make_agent()
        ws = connector.open()
        agent.audio_received(frame(100.0205, ts=123456))
        agent.audio_received(frame(100.0407, ts=124416, lost=True))
        (_, first), (_, second) = ws.sent[1:]
        self.assertEqual(bp.decode_audio(first), bp.AudioMessage(1, FRAME, 123456, 20500, False))
        self.assertEqual(bp.decode_audio(second), bp.AudioMessage(1, FRAME, 124416, 40700, True))
        self.assertEqual(first[:2], b"\x11\x00")
        self.assertEqual(second[:2], b"\x11\x01")

    def test_events_both_ways(self) -> None:
        """Speech and client events go out; client.event, clear and audio come in."""
        agent, session, connector, clock = make_agent()
        ws = connector.open()
        agent.speech_started(101.5)
        agent.speech_stopped(102.25)
        agent.event_received({"type": "response.create", "n": [1, 2]})
        self.assertEqual(ws.texts()[1:], [
            {"type": "input_audio.speech_started", "at_ms": 1500},
            {"type": "input_audio.speech_stopped", "at_ms": 2250},
            {"type": "client.event", "event": {"type": "response.create", "n": [1, 2]}},
        ])
        self.assertIsNotNone(connector.link)
        connector.link.textMessageReceived('{"type":"client.event","event":{"type":"hello","x":1}}')
        connector.link.bytesMessageReceived(out_audio(b"\x05\x00" * 10))
        connector.link.bytesMessageReceived(out_audio(b""))
        connector.link.textMessageReceived('{"type":"output_audio.clear"}')
        self.assertEqual(session.events, [{"type": "hello", "x": 1}])
        self.assertEqual(session.audio, [b"\x05\x00" * 10])
        self.assertEqual(session.calls, ["clear"])
        self.assertEqual(agent.counters, {})

    def test_malformed_and_unknown_are_counted_not_fatal(self) -> None:
        """Bad frames and unknown events bump counters; the call goes on."""
        agent, session, connector, clock = make_agent()
        connector.open()
        link = connector.link
        self.assertIsNotNone(link)
        link.textMessageReceived("not json")
        link.textMessageReceived('{"type":"client.event","event":"x"}')
        link.bytesMessageReceived(b"\x12\x00")
        link.bytesMessageReceived(bp.encode_audio(bp.AudioMessage(bp.KIND_INPUT_AUDIO, b"\x00\x00")))
        link.messageTooLarge(10 << 20)
        link.textMessageReceived('{"type":"response.audio.delta"}')
        self.assertEqual(agent.counters, {"malformed_frames": 5, "unknown_events": 1})
        self.assertIs(agent.state, LinkState.OPEN)
        self.assertEqual(session.ended, [])
        self.assertEqual(session.audio, [])
        self.assertEqual(session.events, [])

    def test_audio_and_events_wait_while_connecting(self) -> None:
        """Before the socket opens, frames and events queue in order behind session.start."""
        agent, session, connector, clock = make_agent()
        agent.audio_received(frame(100.02, ts=1))
        agent.event_received({"type": "x"})
        agent.audio_received(frame(100.04, ts=2))
        ws = connector.open()
        kinds = [(kind, m["type"] if kind == "text" else bp.decode_audio(m).rtp_timestamp) for kind, m in ws.sent]
        self.assertEqual(kinds, [("text", "session.start"), ("bytes", 1), ("text", "client.event"), ("bytes", 2)])

    def test_connect_buffer_drops_oldest_audio(self) -> None:
        """Over buffer_ms of audio, the oldest frames go first and are counted; events stay."""
        agent, session, connector, clock = make_agent(buffer_ms=100)
        agent.event_received({"type": "early"})
        for i in range(8):  # 160 ms of 20 ms frames
            agent.audio_received(frame(100 + i * 0.02, ts=i))
        ws = connector.open()
        self.assertEqual(agent.counters, {"audio_dropped_connecting": 3})
        stamps = [bp.decode_audio(m).rtp_timestamp for kind, m in ws.sent if kind == "bytes"]
        self.assertEqual(stamps, [3, 4, 5, 6, 7])
        self.assertEqual(ws.texts()[1], {"type": "client.event", "event": {"type": "early"}})

    def test_caller_hangs_up(self) -> None:
        """session_ended sends session.end and closes with 1000; later input is ignored."""
        agent, session, connector, clock = make_agent()
        ws = connector.open()
        agent.session_ended("hangup")
        self.assertEqual(ws.texts()[-1], {"type": "session.end", "reason": "hangup"})
        self.assertEqual(ws.closed, 1000)
        agent.audio_received(frame(101))
        agent.session_ended("hangup")
        self.assertIsNotNone(connector.link)
        connector.link.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(session.events, [])
        self.assertEqual(session.ended, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_caller_hangs_up_while_connecting(self) -> None:
        """The pending connect is cancelled and its timer with it."""
        agent, session, connector, clock = make_agent()
        agent.audio_received(frame(100.02))
        agent.session_ended("hangup")
        self.assertTrue(connector.cancelled)
        self.assertIs(agent.state, LinkState.CLOSED)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(session.events, [])
        self.assertEqual(session.ended, [])

    def test_backend_ends_the_session(self) -> None:
        """session.end from the backend hangs up with its reason and closes the socket."""
        agent, session, connector, clock = make_agent()
        ws = connector.open()
        self.assertIsNotNone(connector.link)
        connector.link.textMessageReceived('{"type":"session.end","reason":"goodbye"}')
        self.assertEqual(session.ended, ["goodbye"])
        self.assertEqual(ws.closed, 1000)
        self.assertEqual(ws.texts()[-1]["type"], "session.start")  # no session.end echoed back
        self.assertEqual(session.events, [])
        self.assertIs(agent.state, LinkState.CLOSED)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_backend_ends_after_queued_audio(self) -> None:
        """With drain, the hang-up waits for the queued audio to play."""
        agent, session, connector, clock = make_agent()
        ws = connector.open()
        session.queued_ms = 1500
        self.assertIsNotNone(connector.link)
        connector.link.textMessageReceived('{"type":"session.end","reason":"bye","drain":true}')
        self.assertEqual(ws.closed, 1000)
        self.assertEqual(session.ended, [])
        connector.link.connectionLost(Failure(ConnectionDone()))
        clock.advance(1.4)
        self.assertEqual(session.ended, [])
        clock.advance(0.1)
        self.assertEqual(session.ended, ["bye"])
        self.assertEqual(session.events, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_caller_hangs_up_while_draining(self) -> None:
        """A hang-up during the drain cancels its timer."""
        agent, session, connector, clock = make_agent()
        connector.open()
        session.queued_ms = 1000
        self.assertIsNotNone(connector.link)
        connector.link.textMessageReceived('{"type":"session.end","drain":true}')
        agent.session_ended("hangup")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connect_timeout(self) -> None:
        """No connection within connect_timeout: error event, end, connect cancelled, no timers."""
        agent, session, connector, clock = make_agent(connect_timeout=2.0)
        agent.audio_received(frame(100.02))
        clock.advance(1.9)
        self.assertEqual(session.ended, [])
        clock.advance(0.1)
        self.assertTrue(connector.cancelled)
        self.assertEqual([e["error"]["code"] for e in session.events], ["backend_unavailable"])
        self.assertEqual(session.events[0]["type"], "error")
        self.assertIn("within 2 s", session.events[0]["error"]["message"])
        self.assertEqual(len(session.ended), 1)
        self.assertTrue(session.ended[0].startswith("backend_unavailable"))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(agent.counters["backend_unavailable"], 1)

    def test_connect_refused(self) -> None:
        """A failed connect ends the session the same way, at once."""
        agent, session, connector, clock = make_agent()
        self.assertIsNotNone(connector.deferred)
        connector.deferred.errback(ConnectionRefusedError())
        self.assertEqual(session.events[0]["error"]["code"], "backend_unavailable")
        self.assertIn("refused", session.events[0]["error"]["message"])
        self.assertEqual(len(session.ended), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connect_that_fails_at_once_ends_on_the_next_turn(self) -> None:
        """A connector failing synchronously does not end the session inside agent_for()."""
        clock = Clock()
        session = FakeSession(clock)

        def failing(link: BridgeLink) -> Deferred[BridgeLink]:
            d: Deferred[BridgeLink] = Deferred()
            d.errback(ConnectionRefusedError())
            return d

        agent = BridgeAgent(session, BridgeSettings(websocket_url("ws://127.0.0.1:9/")), failing)
        session.agent = agent
        self.assertEqual(session.ended, [])
        clock.advance(0)
        self.assertEqual(len(session.ended), 1)
        self.assertEqual(session.events[0]["type"], "error")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_backend_closes_mid_call(self) -> None:
        """The socket closing under a live call: error event, end, no timers left."""
        agent, session, connector, clock = make_agent()
        connector.open()
        agent.audio_received(frame(100.02))
        self.assertIsNotNone(connector.link)
        connector.link.connectionLost(Failure(BackendClosed(1011, "oops")))
        self.assertEqual(session.events, [
            {
                "type": "error",
                "error": {
                    "code": "backend_unavailable",
                    "message": "backend connection lost: backend closed the connection (code 1011: oops)",
                },
            }
        ])
        self.assertEqual(len(session.ended), 1)
        self.assertIs(agent.state, LinkState.CLOSED)
        self.assertEqual(clock.getDelayedCalls(), [])
        # Late messages from a dead link change nothing.
        connector.link.bytesMessageReceived(out_audio(b"\x00\x00"))
        self.assertEqual(session.audio, [])

    def test_connect_result_after_timeout_is_closed(self) -> None:
        """A socket that shows up after the agent gave up is closed at once, unused."""
        agent, session, connector, clock = make_agent(connect_timeout=1.0)
        clock.advance(1.0)
        self.assertIsNotNone(connector.link)
        self.assertIsNotNone(connector.deferred)
        self.assertTrue(connector.deferred.called)  # cancelled
        ws = FakeWebSocket()
        connector.link.negotiationStarted(ws)  # type: ignore[arg-type]
        self.assertEqual(ws.closed, 1000)
        self.assertEqual(ws.sent, [])

    def test_backend_failure_ends_the_session_even_if_the_error_event_cannot_be_sent(self) -> None:
        """The caller's channel may refuse the error event; the session still ends."""
        agent, session, connector, clock = make_agent(connect_timeout=2.0)

        def refuse(event: dict[str, Any]) -> None:
            raise ValueError("channel closing")

        session.send_event = refuse  # type: ignore[method-assign]
        with self.assertRaises(ValueError):
            clock.advance(2.0)
        self.assertEqual(len(session.ended), 1)
        self.assertTrue(session.ended[0].startswith("backend_unavailable"))

    def test_turns_between_the_layer_and_the_backend(self) -> None:
        """A requested turn goes to the backend; its turn.start/turn.end reach the session; cancel is passed on."""
        agent, session, connector, clock = make_agent(turn_timeout=1.0)
        ws = connector.open()
        agent.configure({"type": "realtime"})
        self.assertTrue(agent.create_response({"instructions": "hi"}))
        agent.text_received('{"type":"turn.start"}')
        agent.bytes_received(out_audio(b"\x01\x00" * 480))
        agent.text_received('{"type":"turn.end"}')
        self.assertEqual(session.calls, ["start_turn", "end_turn"])
        self.assertEqual(session.audio, [b"\x01\x00" * 480])
        self.assertTrue(agent.create_response({}))
        agent.cancel_response()
        agent.cancel_response()  # once is enough
        sent = [message for kind, message in ws.sent[1:] if kind == "text"]
        self.assertEqual([m["type"] for m in sent], ["session.config", "turn.request", "turn.request", "turn.cancelled"])
        self.assertEqual(sent[3]["response_id"], sent[2]["response_id"])
        self.assertEqual(sent[2]["response_id"], "turn_2")
        clock.advance(5)
        self.assertEqual(session.calls, ["start_turn", "end_turn"])  # the cancelled turn has no timer left
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_backend_that_ignores_turn_requests_times_out_empty(self) -> None:
        """An older backend never answers turn.request: after turn_timeout the turn ends, counted."""
        agent, session, connector, clock = make_agent(turn_timeout=1.0)
        connector.open()
        self.assertTrue(agent.create_response({}))
        clock.advance(0.9)
        self.assertEqual(session.calls, [])
        clock.advance(0.1)
        self.assertEqual(session.calls, ["end_turn"])
        self.assertEqual(agent.counters["turns_timed_out"], 1)
        agent.session_ended("hangup")
        self.assertFalse(agent.create_response({}))


class WebSocketClientTests(SynchronousTestCase):
    """WebSocketClient over a StringTransport, against a wsproto server."""

    def test_client_upgrade_carries_host_target_and_token(self) -> None:
        """The upgrade request: Host with port, path and query, Authorization."""
        client, transport, server, link, done, request = wire()
        self.assertEqual(request.host, "10.0.0.1:8765")
        self.assertEqual(request.target, "/agent?x=1")
        self.assertIn((b"authorization", b"Bearer s3cret"), list(request.extra_headers))
        self.assertIs(link.transport, client)
        self.assertFalse(done.called)

    def test_client_messages_both_ways(self) -> None:
        """After 101: text and bytes out; fragmented text and bytes in, reassembled; ping answered."""
        client, transport, server, link, done, request = wire(token=None)
        client.dataReceived(server.send(AcceptConnection()))
        self.assertIs(done.result, link)
        client.sendTextMessage('{"type":"session.start"}')
        client.sendBytesMessage(b"\x11\x00abc")
        events = pump(transport, server)
        self.assertEqual([(type(e), e.data) for e in events], [
            (TextMessage, '{"type":"session.start"}'),
            (BytesMessage, b"\x11\x00abc"),
        ])
        data = server.send(TextMessage("hé", message_finished=False)) + server.send(TextMessage("llo"))
        data += server.send(BytesMessage(b"\x01", message_finished=False)) + server.send(BytesMessage(b"\x02"))
        data += server.send(Ping(b"p"))
        for i in range(len(data)):  # byte by byte: framing survives any split
            client.dataReceived(data[i : i + 1])
        self.assertEqual(link.received, ["héllo", b"\x01\x02"])
        self.assertEqual([type(e) for e in pump(transport, server)], [Pong])

    def test_client_drops_oversize_messages(self) -> None:
        """A message over the bound is dropped and reported; the next one gets through."""
        client, transport, server, link, done, request = wire(max_message=10)
        client.dataReceived(server.send(AcceptConnection()))
        client.dataReceived(server.send(BytesMessage(b"x" * 8, message_finished=False)))
        client.dataReceived(server.send(BytesMessage(b"x" * 8)))
        client.dataReceived(server.send(TextMessage("ok")))
        self.assertEqual(link.received, [("too large", 16), "ok"])

    def test_client_server_close_reports_code(self) -> None:
        """A Close from the server is answered; the link learns the code and reason."""
        client, transport, server, link, done, request = wire()
        client.dataReceived(server.send(AcceptConnection()))
        client.dataReceived(server.send(CloseConnection(1011, "backend crashed")))
        self.assertTrue(transport.disconnecting)
        self.assertEqual([type(e) for e in pump(transport, server)], [CloseConnection])
        client.connectionLost(Failure(ConnectionDone()))
        (reason,) = link.received
        self.assertIsInstance(reason.value, BackendClosed)
        self.assertEqual(reason.value.code, 1011)
        client.sendTextMessage("late")  # after close: dropped, no exception
        self.assertEqual(transport.value(), b"")

    def test_client_local_close_sends_close_frame(self) -> None:
        """loseConnection sends Close(1000) then closes TCP."""
        client, transport, server, link, done, request = wire()
        client.dataReceived(server.send(AcceptConnection()))
        client.loseConnection()
        (event,) = pump(transport, server)
        self.assertIsInstance(event, CloseConnection)
        self.assertEqual(event.code, 1000)
        self.assertTrue(transport.disconnecting)

    def test_client_rejected_upgrade_fails_the_connect(self) -> None:
        """An HTTP 401 answer fails the Deferred with BackendRejected and aborts."""
        client, transport, server, link, done, request = wire()
        client.dataReceived(server.send(RejectConnection(status_code=401)))
        failure = []
        done.addErrback(failure.append)
        self.assertTrue(failure[0].check(BackendRejected))
        self.assertEqual(failure[0].value.status, 401)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(link.received, [])

    def test_client_tcp_lost_during_upgrade_fails_the_connect(self) -> None:
        """TCP closing before the 101 fails the Deferred (Twisted's own client would hang)."""
        client, transport, server, link, done, request = wire()
        client.connectionLost(Failure(ConnectionDone()))
        failure = []
        done.addErrback(failure.append)
        self.assertTrue(failure[0].check(ConnectionDone))

    def test_client_garbage_answer_aborts(self) -> None:
        """A non-HTTP answer to the upgrade aborts the connection and fails the connect."""
        client, transport, server, link, done, request = wire()
        client.dataReceived(b"\x00\x01garbage\r\n\r\n")
        self.assertTrue(transport.disconnecting or getattr(transport, "aborted", False))
        client.connectionLost(Failure(ConnectionDone()))
        failure = []
        done.addErrback(failure.append)
        self.assertTrue(failure)
        self.assertEqual(link.received, [])

    def test_client_tcp_lost_after_upgrade_is_abnormal_closure(self) -> None:
        """TCP dropping without a Close frame reaches the link as code 1006."""
        client, transport, server, link, done, request = wire()
        client.dataReceived(server.send(AcceptConnection()))
        client.connectionLost(Failure(ConnectionDone()))
        (reason,) = link.received
        self.assertIsInstance(reason.value, BackendClosed)
        self.assertEqual(reason.value.code, 1006)


class AgentProtocolDocTests(SynchronousTestCase):
    """docs/agent-protocol.md shows the backend the tests run."""

    def test_doc_example_is_the_tested_backend(self) -> None:
        """docs/agent-protocol.md shows the very backend the integration tests run."""
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        example = (root / "tests" / "fixtures" / "bridge" / "echo_backend.py").read_text("utf-8")
        doc = (root / "docs" / "agent-protocol.md").read_text("utf-8")
        self.assertIn(f"```python\n{example}```", doc)
