# -*- test-case-name: tests.test_session -*-
"""What a :class:`~voiceedge.transceiver.session.Session` tells its driver, besides datagrams.

A session's outputs are datagrams (to send), events (these) and a deadline.
The transceiver takes the *transport* events itself (routing, retired ufrags,
setup milestones, the end) and hands the rest to the session's conversation
side (:mod:`voiceedge.transceiver.conversation`): the caller's decoded audio
(:class:`~voiceedge.agents.interfaces.AudioFrame`, or ``OpusFrame`` for a
passthrough agent), speech events
(:class:`~voiceedge.media.speech.SpeechStarted`, ``SpeechStopped``), what the
caller actually hears (:class:`~voiceedge.transceiver.rtp_sender.PlayoutStarted`,
``PlayoutStopped``), and the ``oai-events`` channel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

from voiceedge.agents.interfaces import AudioFrame, OpusFrame
from voiceedge.media.speech import SpeechStarted, SpeechStopped
from voiceedge.transceiver.rtp_sender import PlayoutStarted, PlayoutStopped

__all__ = [
    "ClientEvent",
    "ClientEventRejected",
    "Closed",
    "Connected",
    "EndReason",
    "EventsChannelOpened",
    "MediaPathChanged",
    "PathInvalid",
    "PathValid",
    "SessionEvent",
    "SetupMilestone",
    "UfragRetired",
]

Address = tuple[str, int]


class EndReason(str, enum.Enum):
    """Why a session ended; the values appear in logs and metrics."""

    HANGUP = "hangup"
    CONSENT_EXPIRED = "consent_expired"
    CONSENT_REVOKED = "consent_revoked"
    DTLS_CLOSED = "dtls_closed"
    DTLS_FAILED = "dtls_failed"
    SETUP_TIMEOUT = "setup_timeout"
    AGENT = "agent"
    SHUTDOWN = "shutdown"


# -- transport: the transceiver takes these ------------------------------------


@dataclass(frozen=True, slots=True)
class PathValid:
    """``source`` passed an ICE check: route its datagrams to this session."""

    source: Address


@dataclass(frozen=True, slots=True)
class PathInvalid:
    """``source`` is no longer one of the session's paths: stop routing it here."""

    source: Address


@dataclass(frozen=True, slots=True)
class UfragRetired:
    """Checks under local ufrag ``ufrag`` are no longer accepted (an ICE restart completed)."""

    ufrag: str


@dataclass(frozen=True, slots=True)
class MediaPathChanged:
    """Media now goes to ``destination`` (a new nomination, or the client moved)."""

    destination: Address


@dataclass(frozen=True, slots=True)
class SetupMilestone:
    """A step of call setup was reached, ``seconds`` after the offer arrived.

    Names, in their usual order: ``answer``, ``first_check``, ``nomination``,
    ``dtls``, ``first_rtp_in``, ``first_rtp_out``, ``datachannel_open``.
    """

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Closed:
    """The session ended and freed its state; nothing more comes out of it."""

    reason: EndReason


# -- conversation: the agent's side takes these ----------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """DTLS is done and SRTP keyed at ``at``: media flows, the agent may start."""

    at: float


@dataclass(frozen=True, slots=True)
class EventsChannelOpened:
    """The client opened the ``oai-events`` data channel at ``at``."""

    at: float


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """A JSON event from the client on ``oai-events`` (an object with a string ``type``)."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClientEventRejected:
    """A message on ``oai-events`` that is not an event; ``why`` says what is wrong."""

    why: str


SessionEvent = Union[
    PathValid,
    PathInvalid,
    UfragRetired,
    MediaPathChanged,
    SetupMilestone,
    Closed,
    Connected,
    EventsChannelOpened,
    ClientEvent,
    ClientEventRejected,
    AudioFrame,
    OpusFrame,
    SpeechStarted,
    SpeechStopped,
    PlayoutStarted,
    PlayoutStopped,
]
