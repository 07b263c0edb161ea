# -*- test-case-name: tests.test_http_security -*-
"""Who opened each session: the callers that may manage it, and the calls each API key holds."""

from __future__ import annotations

from voiceedge.signaling.auth import Caller
from voiceedge.signaling.limits import CountedCap

__all__ = ["SessionLedger"]


class SessionLedger:
    """Session id -> its managers, and a cap on concurrent calls per API key.

    A POST first :meth:`reserve`\\ s a place under its key's cap (so parallel
    POSTs cannot overshoot it while the host answers), then either
    :meth:`opened` turns the place into a session, or :meth:`cancel` gives it
    back. :meth:`ended` must hear of every session's end, however it ends
    (the host's end listener): that is what frees the key's place.
    """

    def __init__(self, max_calls_per_key: int) -> None:
        self.calls_per_key = CountedCap(max_calls_per_key)
        self._sessions: dict[str, tuple[frozenset[str], str | None]] = {}

    def reserve(self, caller: Caller) -> bool:
        """Hold a place for one more call of ``caller``'s key; ``False`` at the cap."""
        if caller.key_name is None:
            return True
        return self.calls_per_key.acquire(caller.key_name)

    def cancel(self, caller: Caller) -> None:
        """Give back a reservation that did not become a session."""
        if caller.key_name is not None:
            self.calls_per_key.release(caller.key_name)

    def opened(self, session_id: str, caller: Caller) -> None:
        """The reservation became session ``session_id``."""
        self._sessions[session_id] = (caller.managers, caller.key_name)

    def ended(self, session_id: str) -> None:
        """Session ``session_id`` is gone; free its key's place."""
        entry = self._sessions.pop(session_id, None)
        if entry is not None and entry[1] is not None:
            self.calls_per_key.release(entry[1])

    def may_manage(self, session_id: str, caller: Caller) -> bool:
        """Whether ``caller`` opened ``session_id`` (or issued the secret that did)."""
        entry = self._sessions.get(session_id)
        return entry is not None and not entry[0].isdisjoint(caller.identities)

    def __len__(self) -> int:
        return len(self._sessions)
