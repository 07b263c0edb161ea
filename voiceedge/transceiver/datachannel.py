# -*- test-case-name: tests.test_datachannel -*-
"""WebRTC data channels over an SCTP association: DCEP (RFC 8832) and channel bookkeeping (RFC 8831)."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Union

from voiceedge.transceiver.sctp import (
    Closed,
    DataReceived,
    Established,
    SctpAssociation,
    StreamsReset,
)
from voiceedge.wire.errors import WireError

__all__ = [
    "ChannelClosed",
    "ChannelOpened",
    "ChannelState",
    "DataChannel",
    "DataChannelEvent",
    "DataChannelManager",
    "DcepError",
    "DcepOpen",
    "MessageReceived",
    "build_dcep_ack",
    "parse_dcep",
]

PPID_DCEP = 50
PPID_STRING = 51
PPID_BINARY_PARTIAL = 52
PPID_BINARY = 53
PPID_STRING_PARTIAL = 54
PPID_STRING_EMPTY = 56
PPID_BINARY_EMPTY = 57

DCEP_ACK = 0x02
DCEP_OPEN = 0x03

# Channel types (RFC 8832 §5.1); the high bit means unordered.
CHANNEL_RELIABLE = 0x00
CHANNEL_RELIABLE_UNORDERED = 0x80
_UNORDERED_BIT = 0x80

_OPEN = struct.Struct("!BBHIHH")


class DcepError(WireError):
    """Bytes that are not a valid DCEP message."""


@dataclass(slots=True, frozen=True)
class DcepOpen:
    """DATA_CHANNEL_OPEN (RFC 8832 §5.1)."""

    channel_type: int
    priority: int
    reliability: int
    label: str
    protocol: str

    def encode(self) -> bytes:
        """The message bytes, sent with PPID 50."""
        label = self.label.encode("utf-8")
        protocol = self.protocol.encode("utf-8")
        try:
            head = _OPEN.pack(DCEP_OPEN, self.channel_type, self.priority, self.reliability, len(label), len(protocol))
        except struct.error as exc:
            raise DcepError("DATA_CHANNEL_OPEN field out of range") from exc
        return head + label + protocol

    @property
    def ordered(self) -> bool:
        """Whether the channel delivers in order."""
        return not self.channel_type & _UNORDERED_BIT


def build_dcep_ack() -> bytes:
    """DATA_CHANNEL_ACK (RFC 8832 §5.2)."""
    return bytes([DCEP_ACK])


def parse_dcep(data: bytes) -> DcepOpen | None:
    """Decode a DCEP message: a :class:`DcepOpen`, or None for an ACK; raise :class:`DcepError` otherwise."""
    if not data:
        raise DcepError("empty DCEP message")
    kind = data[0]
    if kind == DCEP_ACK:
        if len(data) != 1:
            raise DcepError("DATA_CHANNEL_ACK with trailing bytes")
        return None
    if kind != DCEP_OPEN:
        raise DcepError("unknown DCEP message type %d" % kind)
    if len(data) < _OPEN.size:
        raise DcepError("truncated DATA_CHANNEL_OPEN")
    _, ctype, priority, reliability, label_len, proto_len = _OPEN.unpack_from(data)
    if len(data) != _OPEN.size + label_len + proto_len:
        raise DcepError("DATA_CHANNEL_OPEN lengths do not match")
    pos = _OPEN.size
    try:
        label = data[pos : pos + label_len].decode("utf-8")
        protocol = data[pos + label_len :].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DcepError("DATA_CHANNEL_OPEN label or protocol is not UTF-8") from exc
    return DcepOpen(ctype, priority, reliability, label, protocol)


class ChannelState(str, enum.Enum):
    """RTCDataChannel.readyState values."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class DataChannel:
    """One data channel; created by :meth:`DataChannelManager.open_channel` or by the peer's OPEN."""

    __slots__ = (
        "_manager",
        "label",
        "protocol",
        "stream_id",
        "ordered",
        "channel_type",
        "state",
        "_held",
        "_out_reset",
        "_in_reset",
    )

    def __init__(
        self, manager: DataChannelManager, stream_id: int, label: str, protocol: str, channel_type: int
    ) -> None:
        self._manager = manager
        self.stream_id = stream_id
        self.label = label
        self.protocol = protocol
        self.channel_type = channel_type
        self.ordered = not channel_type & _UNORDERED_BIT
        self.state = ChannelState.CONNECTING
        self._held: list[tuple[int, bytes]] = []
        self._out_reset = False
        self._in_reset = False

    def send(self, data: str | bytes) -> None:
        """Send one message: ``str`` as UTF-8 text, ``bytes`` as binary (empty ones allowed)."""
        self._manager._send(self, data)

    def close(self) -> None:
        """Close by resetting our outgoing stream; ChannelClosed follows once both directions are reset."""
        self._manager._close(self)

    def __repr__(self) -> str:
        return "DataChannel(%d, %r, %s)" % (self.stream_id, self.label, self.state.value)


@dataclass(slots=True, frozen=True)
class ChannelOpened:
    """A channel is open: the peer acknowledged ours, or the peer opened one."""

    channel: DataChannel


@dataclass(slots=True, frozen=True)
class MessageReceived:
    """A whole message arrived on ``channel``."""

    channel: DataChannel
    data: str | bytes


@dataclass(slots=True, frozen=True)
class ChannelClosed:
    """A channel is closed; its stream id is free again."""

    channel: DataChannel


DataChannelEvent = Union[ChannelOpened, MessageReceived, ChannelClosed, Established, Closed]


class DataChannelManager:
    """DCEP and channel bookkeeping over one :class:`SctpAssociation`.

    Feed the association as usual, then call :meth:`take_events` (which drains the association's
    events and turns them into channel events; Established and Closed pass through), then
    :meth:`SctpAssociation.take_outgoing` for what to send, DCEP ACKs included.
    ``dtls_server`` picks odd stream ids for our channels, else even ones (RFC 8832 §6).
    """

    def __init__(self, association: SctpAssociation, dtls_server: bool) -> None:
        self.association = association
        self.dtls_server = dtls_server
        self.channels: dict[int, DataChannel] = {}
        self.dropped_messages = 0
        self._events: list[DataChannelEvent] = []

    def open_channel(self, label: str, protocol: str = "", ordered: bool = True) -> DataChannel:
        """Announce a new channel to the peer with DATA_CHANNEL_OPEN; ChannelOpened follows its ACK."""
        sid = self._free_stream_id()
        ctype = CHANNEL_RELIABLE if ordered else CHANNEL_RELIABLE_UNORDERED
        message = DcepOpen(ctype, 0, 0, label, protocol).encode()
        channel = DataChannel(self, sid, label, protocol, ctype)
        # DCEP messages go ordered so that ordered data sent before the ACK follows the OPEN.
        self.association.send(sid, PPID_DCEP, message, ordered=True)
        self.channels[sid] = channel
        return channel

    def _free_stream_id(self) -> int:
        sid = 1 if self.dtls_server else 0
        while sid in self.channels:
            sid += 2
        if sid > 65534:
            raise ValueError("no free data channel stream id")
        return sid

    def take_events(self) -> list[DataChannelEvent]:
        """Process the association's events; return channel events (and Established/Closed)."""
        for event in self.association.take_events():
            if isinstance(event, DataReceived):
                self._on_message(event.stream_id, event.ppid, event.data)
            elif isinstance(event, StreamsReset):
                self._on_reset(event.stream_ids, event.incoming)
            elif isinstance(event, Established):
                self._events.append(event)
            elif isinstance(event, Closed):
                for channel in list(self.channels.values()):
                    self._finish(channel)
                self._events.append(event)
        events, self._events = self._events, []
        return events

    def _on_message(self, sid: int, ppid: int, data: bytes) -> None:
        channel = self.channels.get(sid)
        if ppid == PPID_DCEP:
            try:
                message = parse_dcep(data)
            except DcepError:
                self.dropped_messages += 1
                return
            if message is None:
                if channel is not None and channel.state is ChannelState.CONNECTING:
                    self._set_open(channel)
                return
            # The peer's ids have the other parity (RFC 8832 §6); a clash is a broken peer.
            if channel is not None or (sid % 2 == 1) == self.dtls_server:
                self.dropped_messages += 1
                return
            channel = DataChannel(self, sid, message.label, message.protocol, message.channel_type)
            self.channels[sid] = channel
            try:
                self.association.send(sid, PPID_DCEP, build_dcep_ack(), ordered=True)
            except ValueError:
                del self.channels[sid]
                self.dropped_messages += 1
                return
            self._set_open(channel)
            return
        if channel is None or channel.state is ChannelState.CLOSED:
            self.dropped_messages += 1
            return
        if channel.state is ChannelState.CONNECTING:
            # Data before the ACK means the peer has our OPEN (RFC 8832 §6).
            self._set_open(channel)
        payload: str | bytes
        if ppid in (PPID_STRING, PPID_STRING_PARTIAL):
            payload = data.decode("utf-8", errors="replace")
        elif ppid in (PPID_BINARY, PPID_BINARY_PARTIAL):
            payload = data
        elif ppid == PPID_STRING_EMPTY:
            payload = ""
        elif ppid == PPID_BINARY_EMPTY:
            payload = b""
        else:
            self.dropped_messages += 1
            return
        self._events.append(MessageReceived(channel, payload))

    def _set_open(self, channel: DataChannel) -> None:
        channel.state = ChannelState.OPEN
        self._events.append(ChannelOpened(channel))
        held, channel._held = channel._held, []
        for ppid, payload in held:
            try:
                self.association.send(channel.stream_id, ppid, payload, ordered=channel.ordered)
            except ValueError:  # the association is closing
                self.dropped_messages += 1

    def _send(self, channel: DataChannel, data: str | bytes) -> None:
        if channel.state not in (ChannelState.CONNECTING, ChannelState.OPEN):
            raise ValueError("data channel %d is %s" % (channel.stream_id, channel.state.value))
        if isinstance(data, str):
            ppid, payload = (PPID_STRING, data.encode("utf-8")) if data else (PPID_STRING_EMPTY, b"\x00")
        else:
            ppid, payload = (PPID_BINARY, bytes(data)) if data else (PPID_BINARY_EMPTY, b"\x00")
        if len(payload) > self.association.config.max_message_size:
            raise ValueError("message larger than %d bytes" % self.association.config.max_message_size)
        if channel.state is ChannelState.CONNECTING and not channel.ordered:
            # Unordered data could overtake the OPEN; it waits for the ACK.
            channel._held.append((ppid, payload))
            return
        self.association.send(channel.stream_id, ppid, payload, ordered=channel.ordered)

    def _close(self, channel: DataChannel) -> None:
        if channel.state in (ChannelState.CLOSING, ChannelState.CLOSED):
            return
        channel.state = ChannelState.CLOSING
        channel._held.clear()
        self.association.reset_streams([channel.stream_id])

    def _on_reset(self, stream_ids: tuple[int, ...], incoming: bool) -> None:
        for sid in stream_ids:
            channel = self.channels.get(sid)
            if channel is None:
                continue
            if incoming:
                channel._in_reset = True
                if channel.state is not ChannelState.CLOSING:
                    # The peer closed: reset our side too (RFC 8831 §6.7).
                    self._close(channel)
            else:
                channel._out_reset = True
            if channel._in_reset and channel._out_reset:
                self._finish(channel)

    def _finish(self, channel: DataChannel) -> None:
        if self.channels.get(channel.stream_id) is channel:
            del self.channels[channel.stream_id]
        channel.state = ChannelState.CLOSED
        self._events.append(ChannelClosed(channel))
