# -*- test-case-name: tests.test_internal_api -*-
"""What the fleet needs of a transceiver, beyond what client signaling needs."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from zope.interface import Attribute

from voiceedge.config import Address
from voiceedge.signaling.interfaces import ISessionHost, OpenedSession, PatchedSession

__all__ = ["IFleetTransceiver"]


class IFleetTransceiver(ISessionHost):
    """A session host a front door drives through the internal API."""

    accepting = Attribute("False while draining: new offers are refused with 503.")

    def open_session(
        offer_sdp: str,
        settings: Mapping[str, Any] | None = None,
        client: str | None = None,
        *,
        candidate: Address | None = None,
        session_id: str | None = None,
    ) -> OpenedSession:
        """As :meth:`ISessionHost.open_session`, with the front door's choices.

        ``candidate`` is the relay address to put in the answer (the client's
        region's relay); ``session_id`` is the id to give the session (409
        if one by that id is open).
        """

    def close_session(session_id: str, reason: str) -> bool:
        """End a session; ``False`` if no such session exists (at once: it is in this process)."""

    def session_stats(session_id: str) -> dict[str, object] | None:
        """Live numbers of one session, or ``None`` (at once)."""

    def patch_session(session_id: str, media_type: str, body: str, if_match: str | None) -> PatchedSession:
        """As :meth:`ISessionHost.patch_session`, at once."""

    def sessions() -> Iterator[Any]:
        """Every open session (each with its ``session_id``): what front doors reconcile against."""
