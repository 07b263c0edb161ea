# -*- test-case-name: tests.test_events_channel -*-
"""The oai-events channel: hostile messages and a client that stops listening never raise."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from voiceedge.transceiver.datachannel import ChannelState
from voiceedge.transceiver.events_channel import MAX_BUFFERED_BYTES, EventsChannel


class StubChannel:
    """A data channel whose state and send behaviour a test sets."""

    def __init__(self, state: ChannelState, fails: bool = False) -> None:
        self.state = state
        self.fails = fails
        self.sent: list[str] = []
        self.label = "oai-events"

    def send(self, text: str) -> None:
        if self.fails:
            raise ValueError("message too large")
        self.sent.append(text)


def make() -> tuple[EventsChannel, list[dict[str, Any]], list[str]]:
    """An events channel recording what it hands on."""
    events: list[dict[str, Any]] = []
    bad: list[str] = []
    return EventsChannel(lambda: None, events.append, bad.append), events, bad


class EventsChannelTests(SynchronousTestCase):
    """EventsChannel on stub data channels: bad input is reported, unsendable events are dropped and counted."""

    def test_deeply_nested_json_is_a_bad_event_not_a_crash(self) -> None:
        """'[[[[...' thousands deep makes json.loads recurse too far: reported, not raised."""
        channel, events, bad = make()
        channel._message("[" * 5000)
        channel._message("{\"no\": \"type\"}")
        channel._message(b"\xff\xfe")
        channel._message("{\"type\": \"ok\"}")
        self.assertEqual(bad, ["not JSON", "an event is a JSON object with a string 'type'", "not JSON"])
        self.assertEqual(events, [{"type": "ok"}])

    def test_sending_to_a_closing_or_failing_channel_drops_and_counts(self) -> None:
        """A channel the client is closing, or a message the channel refuses, is dropped."""
        channel, _, _ = make()
        for stub in (StubChannel(ChannelState.CLOSING), StubChannel(ChannelState.OPEN, fails=True)):
            channel._channel = stub  # type: ignore[assignment]
            channel.send_event({"type": "x"})
        self.assertEqual(channel.events_dropped, 2)
        self.assertEqual(channel.events_out, 0)
        good = StubChannel(ChannelState.OPEN)
        channel._channel = good  # type: ignore[assignment]
        channel.send_event({"type": "x"})
        self.assertEqual(good.sent, ['{"type":"x"}'])
        self.assertEqual(channel.events_out, 1)

    def test_a_client_that_takes_nothing_cannot_grow_the_queue(self) -> None:
        """Past MAX_BUFFERED_BYTES unacknowledged, events are dropped."""
        channel, _, _ = make()
        good = StubChannel(ChannelState.OPEN)
        channel._channel = good  # type: ignore[assignment]

        class Backlogged:
            buffered_amount = MAX_BUFFERED_BYTES + 1

        channel._association = Backlogged()  # type: ignore[assignment]
        channel.send_event({"type": "x"})
        self.assertEqual(good.sent, [])
        self.assertEqual(channel.events_dropped, 1)
