# -*- test-case-name: tests.test_events_channel -*-
"""The ``oai-events`` data channel of a session: SCTP over DTLS carrying JSON events."""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from voiceedge.transceiver.datachannel import (
    ChannelClosed,
    ChannelOpened,
    ChannelState,
    DataChannel,
    DataChannelManager,
    MessageReceived,
)
from voiceedge.transceiver.sctp import SctpAssociation

EVENTS_LABEL = "oai-events"
# Events the agent sends before the client has opened the channel wait here.
MAX_PENDING_EVENTS = 256
# Bytes queued in SCTP towards a client that does not take them; past this,
# events are dropped rather than queued without end.
MAX_BUFFERED_BYTES = 1 << 20
# Realtime events nest a handful of levels; JSON far deeper than this only
# makes json and every agent that walks it recurse (RecursionError).
MAX_EVENT_DEPTH = 32
# Agent events wrap caller events (the echo agent adds two levels), so they may nest deeper.
MAX_OUTGOING_DEPTH = 2 * MAX_EVENT_DEPTH
# The largest event accepted from the client, in characters (or bytes).
MAX_EVENT_SIZE = 256 * 1024

# The closing quote is optional so that an unterminated string ends the
# match at the end of the text instead of failing and being tried again from
# every later quote: linear time, where a required quote was quadratic on
# '"\\"\\"\\"...' (found by the oai_events fuzz target).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")


class EventTooDeep(ValueError):
    """A JSON value nested deeper than :data:`MAX_EVENT_DEPTH`."""


def text_depth_exceeds(text: str, limit: int = MAX_EVENT_DEPTH) -> bool:
    """Whether JSON ``text`` nests deeper than ``limit``, decided before parsing.

    Strings are removed, then innermost bracket pairs, one level per pass:
    at most ``limit + 1`` passes of C regular expressions, whatever the
    size, and no recursion. Text that is not JSON may pass; the parser
    then refuses it.
    """
    skeleton = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(limit):
        if not skeleton:
            return False
        skeleton = _EMPTY_PAIR.sub("", skeleton)
    return bool(skeleton) and _EMPTY_PAIR.search(skeleton) is not None


def check_depth(value: object, limit: int = MAX_EVENT_DEPTH) -> None:
    """Raise :class:`EventTooDeep` if ``value`` nests lists and objects deeper than ``limit``.

    Iterative, so it cannot itself run out of stack.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise EventTooDeep(f"nested deeper than {limit}")
        stack.extend((child, depth + 1) for child in children)


def encode_event(event: dict[str, Any]) -> str | None:
    """``event`` as compact ASCII JSON, or ``None`` if it cannot be JSON.

    ASCII escapes keep a lone surrogate ("\\ud800") encodable; NaN and
    infinities are not JSON; too deep a value is refused before the encoder
    recurses.
    """
    try:
        check_depth(event, MAX_OUTGOING_DEPTH)
        return json.dumps(event, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return None


class EventsChannel:
    """SCTP packets in and out; JSON events to and from the client.

    It does not know DTLS: the session feeds it the DTLS application data
    and sends what :meth:`take_outgoing` returns through DTLS.
    """

    def __init__(
        self,
        on_open: Callable[[], None],
        on_event: Callable[[dict[str, Any]], None],
        on_bad_event: Callable[[str], None],
    ) -> None:
        self._association = SctpAssociation()
        self._channels = DataChannelManager(self._association, dtls_server=True)
        self._channel: DataChannel | None = None
        self._pending: list[str] = []
        self._on_open = on_open
        self._on_event = on_event
        self._on_bad_event = on_bad_event
        self.events_in = 0
        self.events_out = 0
        self.events_dropped = 0
        # Agent events that are not JSON (dropped, and counted in events_dropped too).
        self.events_unencodable = 0

    @property
    def is_open(self) -> bool:
        """Whether the client's ``oai-events`` channel is open."""
        return self._channel is not None

    def receive(self, packet: bytes, now: float) -> None:
        """One SCTP packet from the client (DTLS application data)."""
        self._association.receive(packet, now)
        self._handle_events()

    def handle_timeout(self, now: float) -> None:
        """SCTP retransmission, delayed SACK and heartbeat timers."""
        self._association.handle_timeout(now)
        self._handle_events()

    def deadline(self) -> float | None:
        """When :meth:`handle_timeout` is due."""
        return self._association.deadline()

    def take_outgoing(self) -> list[bytes]:
        """SCTP packets to send through DTLS."""
        return self._association.take_outgoing()

    def send_event(self, event: dict[str, Any]) -> None:
        """Send a JSON event, or hold it (bounded) until the channel opens.

        An event that cannot be encoded as JSON is dropped and counted
        (``events_unencodable``): never an exception into the caller.
        """
        text = encode_event(event)
        if text is None:
            self.events_unencodable += 1
            self.events_dropped += 1
            return
        if self._channel is None:
            if len(self._pending) >= MAX_PENDING_EVENTS:
                self.events_dropped += 1
                return
            self._pending.append(text)
            return
        self._send(self._channel, text)

    def _send(self, channel: DataChannel, text: str) -> None:
        """Send one event, or drop and count it: never raise into the caller.

        A channel the client is closing, an association shutting down, a
        message over the size limit, or a client not taking what we send
        are the client's doing, not the agent's error.
        """
        if channel.state is not ChannelState.OPEN or (
            self._association.buffered_amount > MAX_BUFFERED_BYTES
        ):
            self.events_dropped += 1
            return
        try:
            channel.send(text)
        except ValueError:
            self.events_dropped += 1
            return
        self.events_out += 1

    def _handle_events(self) -> None:
        for event in self._channels.take_events():
            if isinstance(event, ChannelOpened) and event.channel.label == EVENTS_LABEL:
                self._channel = event.channel
                self._on_open()
                pending, self._pending = self._pending, []
                for text in pending:
                    self._send(event.channel, text)
            elif isinstance(event, MessageReceived) and event.channel is self._channel:
                self._message(event.data)
            elif isinstance(event, ChannelClosed) and event.channel is self._channel:
                self._channel = None

    def _message(self, data: str | bytes) -> None:
        """One client message: an event for the agent, or a reason for an ``error`` event."""
        if len(data) > MAX_EVENT_SIZE:
            self._on_bad_event(f"an event is at most {MAX_EVENT_SIZE} bytes")
            return
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            if text_depth_exceeds(text):
                raise EventTooDeep(f"nested deeper than {MAX_EVENT_DEPTH}")
            event = json.loads(text)
        except EventTooDeep:
            self._on_bad_event(f"an event nests at most {MAX_EVENT_DEPTH} levels deep")
            return
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: "[[[[..." a few thousand deep.
            self._on_bad_event("not JSON")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._on_bad_event("an event is a JSON object with a string 'type'")
            return
        self.events_in += 1
        self._on_event(event)
