# -*- test-case-name: tests.test_signaling -*-
"""What HTTP signaling needs from whatever hosts the sessions."""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Interface


class SessionRefused(Exception):
    """The host will not open a session for this offer.

    ``status`` is the HTTP status the signaling layer answers with and
    ``reason`` is a short sentence for the client.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OpenedSession:
    """A session the host has allocated: its id and the SDP answer for it."""

    session_id: str
    answer_sdp: str


class ISessionHost(Interface):
    """Opens and ends sessions for SDP offers (a transceiver, or a proxy to one)."""

    def open_session(offer_sdp: str) -> OpenedSession:
        """Parse ``offer_sdp``, allocate a session and return its answer.

        Raises :class:`SessionRefused` (400 for an offer that does not parse
        or lacks what WebRTC needs, 406 when no Opus is offered, 503 at the
        session cap). Nothing stays allocated when it raises.
        """

    def close_session(session_id: str, reason: str) -> bool:
        """End a session; ``False`` if no such session exists."""

    def session_stats(session_id: str) -> dict[str, object] | None:
        """Live numbers of one session (JSON-serialisable), or ``None`` if it is not open."""

    def session_count() -> int:
        """How many sessions are open now."""
