# -*- test-case-name: tests.test_http_security -*-
"""Who opened each session: the callers that may manage it, and the calls each API key holds.

:class:`ISessionLedger` is what signaling asks; :class:`SessionLedger`
keeps it in this process's memory (a transceiver, the all-in-one). Front
doors share one in Redis (:class:`voiceedge.fleet.shared_ledger.RedisSessionLedger`),
so any of them may manage a call another opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from voiceedge.signaling.auth import Caller, Maybe
from voiceedge.signaling.limits import CountedCap

__all__ = ["ILedgerIndex", "ISessionLedger", "Reservation", "SessionLedger"]


@dataclass(frozen=True, slots=True)
class Reservation:
    """A place held under a key's cap for a call being opened by ``caller``.

    ``token`` names the place in a shared ledger (empty in memory).
    """

    caller: Caller
    token: str = ""


class ISessionLedger(Interface):
    """Session id -> the principals that may manage it; live calls per API key, capped.

    A POST first :meth:`reserve`\\ s a place under its key's cap (so parallel
    POSTs cannot overshoot it while the host answers), then either
    :meth:`opened` turns the place into a session, or :meth:`cancel` gives it
    back. :meth:`ended` must hear of every session's end, however it ends:
    that is what frees the key's place. It is idempotent: a session may be
    reported ended more than once (a DELETE, then the host's end listener).

    Each method answers at once, or with a Deferred (a ledger in Redis).
    """

    def reserve(caller: Caller) -> Maybe[Reservation | None]:
        """Hold a place for one more call of ``caller``'s key; ``None`` at the cap."""

    def cancel(reservation: Reservation) -> Maybe[None]:
        """Give back a reservation that did not become a session."""

    def opened(session_id: str, reservation: Reservation) -> Maybe[None]:
        """The reservation became session ``session_id``."""

    def ended(session_id: str) -> Maybe[bool]:
        """Session ``session_id`` is gone; free its key's place. Whether it was recorded (False the second time)."""

    def may_manage(session_id: str, caller: Caller) -> Maybe[bool]:
        """Whether ``caller`` opened ``session_id`` (or issued the secret that did)."""


class ILedgerIndex(Interface):
    """Which calls a ledger records on which owner (a transceiver), for reconciling with the owners.

    A front door whose calls live on other processes compares this with what
    each of them holds (:mod:`voiceedge.fleet.session_ends`).
    """

    def transceivers() -> "defer.Deferred[set[str]]":
        """The owners that hold recorded calls."""

    def sessions_on(transceiver_id: str) -> "defer.Deferred[dict[str, float]]":
        """The calls recorded on ``transceiver_id``: session id -> when it was recorded."""


@implementer(ISessionLedger, ILedgerIndex)
class SessionLedger:
    """:class:`ISessionLedger` in this process's memory; every answer at once.

    With ``owner_of`` (a session id -> the process that holds it, or None)
    and a ``clock``, it is also an :class:`ILedgerIndex`, for a front door of
    its own workers.
    """

    def __init__(
        self,
        max_calls_per_key: int,
        clock: IReactorTime | None = None,
        owner_of: Callable[[str], str | None] | None = None,
    ) -> None:
        if owner_of is not None and clock is None:
            raise ValueError("an indexed ledger needs a clock")
        self.calls_per_key = CountedCap(max_calls_per_key)
        self.clock = clock
        self.owner_of = owner_of
        self._sessions: dict[str, tuple[frozenset[str], str | None]] = {}
        self._by_owner: dict[str, dict[str, float]] = {}

    def reserve(self, caller: Caller) -> Reservation | None:
        """See :meth:`ISessionLedger.reserve`."""
        if caller.key_name is None:
            return Reservation(caller)
        return Reservation(caller) if self.calls_per_key.acquire(caller.key_name) else None

    def cancel(self, reservation: Reservation) -> None:
        """See :meth:`ISessionLedger.cancel`."""
        if reservation.caller.key_name is not None:
            self.calls_per_key.release(reservation.caller.key_name)

    def opened(self, session_id: str, reservation: Reservation) -> None:
        """See :meth:`ISessionLedger.opened`."""
        caller = reservation.caller
        self._sessions[session_id] = (caller.managers, caller.key_name)
        owner = self.owner_of(session_id) if self.owner_of is not None else None
        if owner is not None and self.clock is not None:
            self._by_owner.setdefault(owner, {})[session_id] = self.clock.seconds()

    def ended(self, session_id: str) -> bool:
        """See :meth:`ISessionLedger.ended`."""
        entry = self._sessions.pop(session_id, None)
        if entry is not None and entry[1] is not None:
            self.calls_per_key.release(entry[1])
        owner = self.owner_of(session_id) if self.owner_of is not None else None
        recorded = self._by_owner.get(owner) if owner is not None else None
        if recorded is not None:
            recorded.pop(session_id, None)
            if not recorded:
                del self._by_owner[owner]  # type: ignore[arg-type]
        return entry is not None

    def may_manage(self, session_id: str, caller: Caller) -> bool:
        """See :meth:`ISessionLedger.may_manage`."""
        entry = self._sessions.get(session_id)
        return entry is not None and not entry[0].isdisjoint(caller.identities)

    def transceivers(self) -> "defer.Deferred[set[str]]":
        """See :meth:`ILedgerIndex.transceivers` (empty without ``owner_of``)."""
        return defer.succeed(set(self._by_owner))

    def sessions_on(self, transceiver_id: str) -> "defer.Deferred[dict[str, float]]":
        """See :meth:`ILedgerIndex.sessions_on`."""
        return defer.succeed(dict(self._by_owner.get(transceiver_id, {})))

    def __len__(self) -> int:
        return len(self._sessions)
