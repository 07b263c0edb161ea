# -*- test-case-name: tests.test_signaling -*-
"""What HTTP signaling needs from whatever hosts the sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred
from zope.interface import Interface


class SessionRefused(Exception):
    """The host will not open a session for this offer.

    ``status`` is the HTTP status the signaling layer answers with and
    ``reason`` is a short sentence for the client.
    """

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        #: Seconds for ``Retry-After`` (a 503 when nobody can take a call now).
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class OpenedSession:
    """A session the host has allocated: its id and the SDP answer for it.

    ``etag`` names the session's current ICE credentials (an HTTP entity tag,
    quotes included): RFC 9725 clients send it back in ``If-Match``.
    """

    session_id: str
    answer_sdp: str
    etag: str = ""


#: PATCH media types (RFC 9725 §4.3): an ICE fragment (RFC 8840), or a whole re-offer.
SDPFRAG_TYPE = "application/trickle-ice-sdpfrag"
SDP_TYPE = "application/sdp"


@dataclass(frozen=True, slots=True)
class PatchedSession:
    """What a PATCH did: ``body`` of ``media_type`` (empty for 204) and the session's ``etag``."""

    status: int  # 200 with a body (an ICE restart), 204 without (trickled candidates)
    body: str
    media_type: str
    etag: str


class ISessionHost(Interface):
    """Opens and ends sessions for SDP offers (a transceiver, or a proxy to one).

    A host that is a proxy to another process (the fleet's front door,
    :class:`voiceedge.fleet.frontdoor.FleetSessionHost`) returns a Deferred
    of the same result from any method but :meth:`session_count` and
    :meth:`add_end_listener`, and fails it with :class:`SessionRefused`
    where the others raise it.
    """

    def open_session(
        offer_sdp: str, settings: Mapping[str, Any] | None = None, client: str | None = None
    ) -> OpenedSession | Deferred[OpenedSession]:
        """Parse ``offer_sdp``, allocate a session and return its answer.

        ``settings`` is the session configuration the caller's client secret
        carried (OpenAI's ``session`` object of ``POST
        /v1/realtime/client_secrets``), for the session to start with.
        ``client`` is the caller's IP address (after trusted proxies), for a
        host that places calls by where the caller is.

        Raises :class:`SessionRefused` (400 for an offer that does not parse
        or lacks what WebRTC needs, 406 when no Opus is offered, 503 at the
        session cap). Nothing stays allocated when it raises.
        """

    def close_session(session_id: str, reason: str) -> bool | Deferred[bool]:
        """End a session; ``False`` if no such session exists."""

    def session_stats(session_id: str) -> dict[str, object] | None | Deferred[dict[str, object] | None]:
        """Live numbers of one session (JSON-serialisable), or ``None`` if it is not open."""

    def session_count() -> int:
        """How many sessions are open now."""

    def patch_session(
        session_id: str, media_type: str, body: str, if_match: str | None
    ) -> PatchedSession | Deferred[PatchedSession]:
        """Apply a PATCH: trickled candidates, or an ICE restart (RFC 9725 §4.3).

        ``media_type`` is :data:`SDPFRAG_TYPE` or :data:`SDP_TYPE`. New ICE
        credentials in ``body`` restart ICE: the session answers with new
        ones of its own (a fragment, or a whole SDP answer for a re-offer),
        while DTLS, SRTP and the media carry on. Raises :class:`SessionRefused`:
        404 no such session, 400 a body that does not parse, 412 an
        ``If-Match`` that names other credentials, 422 a re-offer that
        changes more than ICE.
        """

    def add_end_listener(listener: Callable[[str], None]) -> None:
        """Call ``listener(session_id)`` whenever a session ends, however it ends.

        Signaling keeps who opened each session, and the calls each API key
        holds, until it hears of the end here.
        """
