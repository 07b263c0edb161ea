# -*- test-case-name: tests.test_events_channel -*-
"""The ``oai-events`` data channel of a session: SCTP over DTLS carrying JSON events."""

from __future__ import annotations

import json
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
        """Send a JSON event, or hold it (bounded) until the channel opens."""
        text = json.dumps(event, separators=(",", ":"))
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
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: "[[[[..." a few thousand deep.
            self._on_bad_event("not JSON")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._on_bad_event("an event is a JSON object with a string 'type'")
            return
        self.events_in += 1
        self._on_event(event)
