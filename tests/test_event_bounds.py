"""Hostile caller events and unencodable agent events: bounded, dropped and counted, never raised."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, TypeVar

from twisted.trial.unittest import SynchronousTestCase

from voiceedge.agents import bridge_protocol as bp
from voiceedge.transceiver.datachannel import ChannelState
from voiceedge.transceiver.events_channel import MAX_EVENT_DEPTH, MAX_EVENT_SIZE, EventsChannel

T = TypeVar("T")


def at_stack_depth(spare: int, call: Callable[[], T]) -> T:
    """Run ``call`` with only about ``spare`` frames left before the recursion limit.

    The reactor calls the packet path some way down the stack; this puts a
    unit test where the issue's RecursionError happened.
    """
    depth = 0
    frame = sys._getframe()
    while frame.f_back is not None:
        depth += 1
        frame = frame.f_back

    def descend(n: int) -> T:
        return call() if n <= 0 else descend(n - 1)

    return descend(sys.getrecursionlimit() - depth - spare)


class RecordingChannel:
    """A data channel in the open state that records what is sent."""

    label = "oai-events"
    state = ChannelState.OPEN

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, text: str) -> None:
        text.encode("utf-8")  # what the SCTP layer does; raises on a lone surrogate
        self.sent.append(text)


def echoing_channel() -> tuple[EventsChannel, RecordingChannel, list[str]]:
    """An events channel whose agent echoes each event back, as the echo agent does."""
    bad: list[str] = []
    channel: EventsChannel

    def echo(event: dict[str, Any]) -> None:
        channel.send_event({"type": "echo", "event": event})

    def error(why: str) -> None:
        bad.append(why)
        channel.send_event({"type": "error", "error": {"type": "invalid_request_error", "message": why}})

    channel = EventsChannel(lambda: None, echo, error)
    recorder = RecordingChannel()
    channel._channel = recorder  # type: ignore[assignment]
    return channel, recorder, bad


def nested(depth: int) -> str:
    """An event whose ``a`` member is ``depth`` lists deep."""
    return '{"type":"x","a":' + "[" * depth + "]" * depth + "}"


class CallerEventTests(SynchronousTestCase):
    """What a caller sends on oai-events is bounded before any agent sees it."""

    def test_deep_nesting_through_the_echo_path(self) -> None:
        """968-deep JSON, received deep in the stack, gets an error event; nothing raises."""
        channel, recorder, bad = echoing_channel()
        at_stack_depth(120, lambda: channel._message(nested(968)))
        self.assertEqual(bad, [f"an event nests at most {MAX_EVENT_DEPTH} levels deep"])
        self.assertEqual(json.loads(recorder.sent[-1])["type"], "error")
        self.assertEqual(channel.events_in, 0)

    def test_nesting_at_the_limit_is_an_event(self) -> None:
        """An event exactly MAX_EVENT_DEPTH deep is accepted and echoed."""
        channel, recorder, bad = echoing_channel()
        # The object itself is level 1; its member adds the rest.
        channel._message(nested(MAX_EVENT_DEPTH - 1))
        self.assertEqual(bad, [])
        self.assertEqual(json.loads(recorder.sent[-1])["type"], "echo")
        channel._message(nested(MAX_EVENT_DEPTH))
        self.assertEqual(len(bad), 1)

    def test_oversized_event_is_refused_before_parsing(self) -> None:
        """A message over MAX_EVENT_SIZE is an error event."""
        channel, recorder, bad = echoing_channel()
        channel._message('{"type":"x","pad":"' + "a" * MAX_EVENT_SIZE + '"}')
        self.assertEqual(bad, [f"an event is at most {MAX_EVENT_SIZE} bytes"])

    def test_lone_surrogate_is_echoed_escaped(self) -> None:
        """A lone surrogate survives as a JSON escape, encodable as UTF-8."""
        channel, recorder, bad = echoing_channel()
        channel._message('{"type":"x","t":"\\ud800"}')
        self.assertEqual(bad, [])
        self.assertIn("\\ud800", recorder.sent[-1])


class AgentEventTests(SynchronousTestCase):
    """An agent's event that cannot be JSON is dropped and counted."""

    def test_unencodable_agent_events_are_dropped_and_counted(self) -> None:
        """NaN, a set, and a self-referencing dict: each dropped, counted, nothing raised."""
        channel, recorder, _ = echoing_channel()
        loop: dict[str, Any] = {"type": "loop"}
        loop["self"] = loop
        for event in ({"type": "nan", "v": float("nan")}, {"type": "set", "v": {1}}, loop):
            at_stack_depth(60, lambda event=event: channel.send_event(event))  # type: ignore[misc]
        self.assertEqual(channel.events_unencodable, 3)
        self.assertEqual(channel.events_dropped, 3)
        self.assertEqual(recorder.sent, [])

    def test_deep_agent_event_is_dropped_deep_in_the_stack(self) -> None:
        """An agent event too deep for json.dumps at this depth is dropped, not raised."""
        channel, recorder, _ = echoing_channel()
        value: Any = []
        for _ in range(900):
            value = [value]
        at_stack_depth(120, lambda: channel.send_event({"type": "deep", "v": value}))
        self.assertEqual(channel.events_unencodable, 1)


class BridgeEncodingTests(SynchronousTestCase):
    """The bridge protocol's text frames are always valid UTF-8 JSON."""

    def test_lone_surrogate_in_a_client_event(self) -> None:
        """client.event with "\\ud800" encodes to UTF-8 (it raised UnicodeEncodeError in wsproto)."""
        text = bp.client_event({"type": "x", "t": "\ud800"})
        text.encode("utf-8")
        self.assertEqual(json.loads(text)["event"]["t"], "\ud800")

    def test_non_json_client_event_is_a_protocol_error(self) -> None:
        """NaN or a non-JSON type raises BridgeProtocolError, the one error type."""
        for event in ({"type": "x", "v": float("inf")}, {"type": "x", "v": object()}):
            with self.assertRaises(bp.BridgeProtocolError):
                bp.client_event(event)


class DepthPrecheckTests(SynchronousTestCase):
    """The depth check before parsing: right answers, and linear in the size of the text."""

    def test_strings_do_not_count(self) -> None:
        """Brackets inside strings, escaped quotes included, are not nesting."""
        from voiceedge.transceiver.events_channel import text_depth_exceeds

        self.assertFalse(text_depth_exceeds('{"a":"[[[[[[[["}', 1))
        self.assertFalse(text_depth_exceeds('{"a":"x\\"[[[["}', 1))
        self.assertTrue(text_depth_exceeds('{"a":[[[1]]]}', 3))
        self.assertFalse(text_depth_exceeds('{"a":[[1]]}', 3))

    def test_unterminated_escaped_quotes_at_the_size_limit(self) -> None:
        """'"\\"\\"\\"...' of 256 KiB: was quadratic (hours; found by the oai_events fuzz target)."""
        channel, recorder, bad = echoing_channel()
        channel._message('"' + '\\"' * (MAX_EVENT_SIZE // 2 - 1))
        self.assertEqual(bad, ["not JSON"])
