# -*- test-case-name: tests.test_sctp -*-
"""What an SCTP association tells its user: established, a message, streams reset, closed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

__all__ = ["Closed", "DataReceived", "Established", "SctpEvent", "StreamsReset"]


@dataclass(slots=True, frozen=True)
class Established:
    """The association is up; data can flow."""


@dataclass(slots=True, frozen=True)
class DataReceived:
    """A whole user message arrived on ``stream_id``."""

    stream_id: int
    ppid: int
    data: bytes


@dataclass(slots=True, frozen=True)
class StreamsReset:
    """Streams were reset: ``incoming`` by the peer's request, else our own request completed."""

    stream_ids: tuple[int, ...]
    incoming: bool


@dataclass(slots=True, frozen=True)
class Closed:
    """The association ended; nothing more is sent or delivered."""

    reason: str


SctpEvent = Union[Established, DataReceived, StreamsReset, Closed]
