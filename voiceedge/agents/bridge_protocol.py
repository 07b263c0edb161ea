# -*- test-case-name: tests.test_bridge -*-
"""The bridge agent's wire format: audio frame headers and JSON events (docs/agent-protocol.md)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Union

from voiceedge.wire.errors import WireError

PROTOCOL_VERSION = 1
AUDIO_FORMAT = "pcm16le mono"

# byte 0 of every binary frame: version in the high nibble, kind in the low.
KIND_INPUT_AUDIO = 1  # caller -> backend
KIND_OUTPUT_AUDIO = 2  # backend -> caller
FLAG_LOST = 0x01  # the network lost this frame; the PCM is the decoder's concealment

# version/kind, flags, reserved, RTP timestamp (48 kHz), arrival in µs since session start.
AUDIO_HEADER = struct.Struct(">BBHIQ")
AUDIO_HEADER_SIZE = AUDIO_HEADER.size  # 16

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
# Larger text than this from a backend is not an event anyone meant to send.
MAX_EVENT_CHARS = 1 << 20


class BridgeProtocolError(WireError):
    """A frame or event from the backend that does not follow docs/agent-protocol.md."""


@dataclass(frozen=True, slots=True)
class AudioMessage:
    """One binary frame: a kind, flags, two times and PCM16LE mono."""

    kind: int
    pcm: bytes
    rtp_timestamp: int = 0
    arrival_us: int = 0
    lost: bool = False


def encode_audio(message: AudioMessage) -> bytes:
    """The binary frame for ``message``: the 16-byte header, then the PCM."""
    return (
        AUDIO_HEADER.pack(
            (PROTOCOL_VERSION << 4) | (message.kind & 0x0F),
            FLAG_LOST if message.lost else 0,
            0,
            message.rtp_timestamp & _U32,
            min(max(message.arrival_us, 0), _U64),
        )
        + message.pcm
    )


def decode_audio(data: bytes) -> AudioMessage:
    """Parse a binary frame; :class:`BridgeProtocolError` unless it is well formed.

    Well formed: at least the header, version 1, kind 1 or 2, and a whole
    number of 16-bit samples. Unknown flag bits and the reserved field are
    ignored so that later versions can use them.
    """
    if len(data) < AUDIO_HEADER_SIZE:
        raise BridgeProtocolError(f"binary frame of {len(data)} bytes is shorter than the header")
    first, flags, _reserved, rtp_timestamp, arrival_us = AUDIO_HEADER.unpack_from(data)
    version, kind = first >> 4, first & 0x0F
    if version != PROTOCOL_VERSION:
        raise BridgeProtocolError(f"binary frame of protocol version {version}, not {PROTOCOL_VERSION}")
    if kind not in (KIND_INPUT_AUDIO, KIND_OUTPUT_AUDIO):
        raise BridgeProtocolError(f"binary frame of unknown kind {kind}")
    pcm = bytes(data[AUDIO_HEADER_SIZE:])
    if len(pcm) % 2:
        raise BridgeProtocolError(f"{len(pcm)} bytes of PCM16 is not a whole number of samples")
    return AudioMessage(kind, pcm, rtp_timestamp, arrival_us, bool(flags & FLAG_LOST))


# -- voiceedge -> backend events ----------------------------------------------


def _dump(event: dict[str, Any]) -> str:
    """Compact ASCII JSON: a lone surrogate from a caller's event stays encodable as UTF-8.

    Raises :class:`BridgeProtocolError` for a value that is not JSON (NaN,
    a non-JSON type, nesting deep enough to exhaust the stack).
    """
    try:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as e:
        raise BridgeProtocolError(f"event is not JSON: {e}") from None


def session_start(session_id: str, sample_rate: int) -> str:
    """The first message on every connection."""
    return _dump(
        {
            "type": "session.start",
            "protocol_version": PROTOCOL_VERSION,
            "session_id": session_id,
            "sample_rate": sample_rate,
            "audio_format": AUDIO_FORMAT,
            "frame_ms": 20,
        }
    )


def session_end(reason: str) -> str:
    """The last message before voiceedge closes the connection."""
    return _dump({"type": "session.end", "reason": reason})


def speech_started(at_ms: int) -> str:
    """The caller started speaking ``at_ms`` after the session started."""
    return _dump({"type": "input_audio.speech_started", "at_ms": at_ms})


def speech_stopped(at_ms: int) -> str:
    """The caller stopped speaking ``at_ms`` after the session started."""
    return _dump({"type": "input_audio.speech_stopped", "at_ms": at_ms})


def client_event(event: dict[str, Any]) -> str:
    """What the caller sent on ``oai-events``, wrapped unchanged.

    Raises :class:`BridgeProtocolError` if ``event`` cannot be JSON.
    """
    return _dump({"type": "client.event", "event": event})


def session_config(config: dict[str, Any]) -> str:
    """The session's whole Realtime configuration, after it was made and after each change."""
    return _dump({"type": "session.config", "session": config})


def turn_request(response_id: str, response: dict[str, Any]) -> str:
    """The client asked for a turn (``response.create``); ``response`` is its request object."""
    return _dump({"type": "turn.request", "response_id": response_id, "response": response})


def turn_cancelled(response_id: str) -> str:
    """The turn under way is cancelled (barge-in, ``response.cancel``, ``output_audio_buffer.clear``)."""
    return _dump({"type": "turn.cancelled", "response_id": response_id})


# -- backend -> voiceedge events ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ClearOutputAudio:
    """``output_audio.clear``: drop the agent audio queued for the caller, now."""


@dataclass(frozen=True, slots=True)
class ForwardClientEvent:
    """``client.event``: send ``event`` to the caller on ``oai-events``, unchanged."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EndSession:
    """``session.end``: hang up, at once or once queued audio has played (``drain``)."""

    reason: str
    drain: bool = False


@dataclass(frozen=True, slots=True)
class StartTurn:
    """``turn.start``: the audio that follows is one turn (a Realtime response)."""


@dataclass(frozen=True, slots=True)
class EndTurn:
    """``turn.end``: the backend has sent all of its turn's audio (``interrupted``: it cut the turn short)."""

    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A well-formed event of a type this version does not know: ignored, counted."""

    type: str


BackendEvent = Union[ClearOutputAudio, ForwardClientEvent, EndSession, StartTurn, EndTurn, UnknownEvent]

DEFAULT_END_REASON = "backend ended the session"
MAX_REASON_CHARS = 200


def parse_backend_event(text: str) -> BackendEvent:
    """Parse a text frame from the backend; :class:`BridgeProtocolError` unless well formed."""
    if len(text) > MAX_EVENT_CHARS:
        raise BridgeProtocolError(f"event of {len(text)} characters is too long")
    try:
        event = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BridgeProtocolError(f"event is not JSON: {e}") from None
    if not isinstance(event, dict):
        raise BridgeProtocolError("event is not a JSON object")
    kind = event.get("type")
    if not isinstance(kind, str):
        raise BridgeProtocolError("event has no string 'type'")
    if kind == "output_audio.clear":
        return ClearOutputAudio()
    if kind == "client.event":
        inner = event.get("event")
        if not isinstance(inner, dict):
            raise BridgeProtocolError("client.event needs an 'event' object")
        return ForwardClientEvent(inner)
    if kind == "session.end":
        reason = event.get("reason", DEFAULT_END_REASON)
        drain = event.get("drain", False)
        if not isinstance(reason, str) or not isinstance(drain, bool):
            raise BridgeProtocolError("session.end needs a string 'reason' and a boolean 'drain'")
        return EndSession(reason[:MAX_REASON_CHARS] or DEFAULT_END_REASON, drain)
    if kind == "turn.start":
        return StartTurn()
    if kind == "turn.end":
        interrupted = event.get("interrupted", False)
        if not isinstance(interrupted, bool):
            raise BridgeProtocolError("turn.end needs a boolean 'interrupted'")
        return EndTurn(interrupted)
    return UnknownEvent(kind[:64])
