# -*- test-case-name: tests.test_frontdoor -*-
"""The front door's session host: each offer goes to a transceiver chosen from the registry, through its internal API.

:class:`FleetSessionHost` is an ``ISessionHost`` whose sessions live on
other processes. A new call goes to the least-loaded serving transceiver of
the client's region (:mod:`voiceedge.fleet.steering`), with the region's
relay address as the answer's candidate. A transceiver that fails (no
connection, no answer within the deadline, a 5xx) or is full (503) is
retried once elsewhere; one that failed is also avoided for a while, and
the session id the front door chose for it is deleted there, so nothing is
left allocated. The public session id is ``<transceiver id>.<session id>``:
later requests find the owner from the id alone, with no shared state.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import secrets
from typing import Any, Callable, Iterator, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from voiceedge.fleet.internal_api import SESSIONS_PATH, OpenRequest
from voiceedge.fleet.settings import FleetSettings
from voiceedge.fleet.internal_client import IInternalApi, InternalResponse
from voiceedge.fleet.registry import RegistryView, TransceiverRecord
from voiceedge.fleet.steering import RegionMap, choose_transceiver
from voiceedge.signaling.client_address import IPAddress
from voiceedge.metrics import Sample
from voiceedge.signaling.interfaces import ISessionHost, OpenedSession, PatchedSession, SessionRefused

__all__ = ["FleetSessionHost", "split_session_id"]

log = Logger()

_JSON = b"application/json"


def split_session_id(public_id: str) -> tuple[str, str] | None:
    """``(transceiver id, session id)`` of a public id, or None when it is not one."""
    transceiver, dot, session = public_id.partition(".")
    if not dot or not transceiver or not session:
        return None
    return transceiver, session


@implementer(ISessionHost)
class FleetSessionHost:
    """Sessions opened on, read from and ended at the transceivers that own them."""

    def __init__(
        self,
        view: RegistryView,
        api: IInternalApi,
        regions: RegionMap,
        clock: IReactorTime,
        settings: FleetSettings,
        *,
        relay_candidate: bool = True,
    ) -> None:
        self.view = view
        # False: each transceiver's answer names its own address (a host's workers reached directly).
        self.relay_candidate = relay_candidate
        self.api = api
        self.regions = regions
        self.clock = clock
        self.settings = settings
        self._avoid: dict[str, float] = {}
        self._end_listeners: list[Callable[[str], None]] = []
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.placed: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- opening -------------------------------------------------------------

    def open_session(
        self, offer_sdp: str, settings: Mapping[str, Any] | None = None, client: str | None = None
    ) -> "defer.Deferred[OpenedSession]":
        """Place the offer on a transceiver of the client's region, retrying once elsewhere.

        ``client`` is the caller's IP address; ``settings`` the session
        settings a client secret carried, passed on to the transceiver.
        """
        try:
            address: IPAddress | None = ipaddress.ip_address(client) if client else None
        except ValueError:
            address = None
        return defer.ensureDeferred(self._open(offer_sdp, settings, address))

    async def _open(
        self, offer: str, settings: Mapping[str, Any] | None, client: IPAddress | None
    ) -> OpenedSession:
        region = self.regions.region_for(client)
        candidate = self.regions.relay_for(region) if self.relay_candidate else None
        tried: set[str] = set()
        for attempt in range(2):
            record = choose_transceiver(
                self.view.candidates(), region,
                spill=self.settings.spill, max_cpu=self.settings.max_cpu,
                exclude=tried | self._avoided(), fallback=self.regions.fallback_for(region),
            )
            if record is None:
                break
            tried.add(record.id)
            if attempt:
                self.outcomes["retried"] += 1
            session_id = secrets.token_urlsafe(16)
            body = OpenRequest(offer, session_id, candidate, settings).to_json()
            # Counted now, not at the answer: offers that arrive together must not all
            # pick the transceiver that looked least loaded.
            self.view.assigned(record.id)
            try:
                response = await self.api.request(record.api, b"POST", SESSIONS_PATH, body, _JSON, {})
            except Exception as e:  # connection refused, reset, deadline
                self.view.unassigned(record.id)
                self._failed(record, session_id, f"{type(e).__name__}: {e}")
                continue
            if response.status != 201:
                self.view.unassigned(record.id)
            if response.status == 201:
                self.outcomes["opened"] += 1
                self.placed[(region, record.region)] += 1
                etag = response.etag.decode("ascii", "replace") if response.etag else ""
                return OpenedSession(f"{record.id}.{session_id}", response.body.decode("utf-8"), etag)
            if response.status == 503:
                self.outcomes["transceiver_full"] += 1
                continue
            if response.status >= 500:
                self._failed(record, session_id, f"HTTP {response.status}")
                continue
            # The offer's own fault (400, 406, 413, ...): another transceiver would say the same.
            self.outcomes[f"refused_{response.status}"] += 1
            raise SessionRefused(response.status, _reason(response))
        self.outcomes["no_transceiver"] += 1
        raise SessionRefused(503, "no transceiver can take the call now", self.settings.retry_after)

    def _failed(self, record: TransceiverRecord, session_id: str, why: str) -> None:
        """Avoid ``record`` for a while, and delete what it may have allocated before it failed."""
        self.outcomes["transceiver_failed"] += 1
        self._avoid[record.id] = self.clock.seconds() + self.settings.avoid_failed
        log.warn("transceiver {id} failed a request ({why}); avoided for {s:g} s",
                 id=record.id, why=why, s=self.settings.avoid_failed)
        d = self.api.request(record.api, b"DELETE", f"{SESSIONS_PATH}/{session_id}", None, None)
        d.addErrback(lambda _: None)  # it is gone, or will end the session at its setup timeout

    def _avoided(self) -> set[str]:
        now = self.clock.seconds()
        for record_id in [i for i, until in self._avoid.items() if until <= now]:
            del self._avoid[record_id]
        return set(self._avoid)

    # -- existing sessions ------------------------------------------------------

    def _owner(self, public_id: str) -> tuple[TransceiverRecord, str] | None:
        parts = split_session_id(public_id)
        if parts is None:
            return None
        record = self.view.get(parts[0])
        return None if record is None else (record, parts[1])

    def close_session(self, session_id: str, reason: str) -> "defer.Deferred[bool]":
        """DELETE at the owner: True if it was open."""
        owner = self._owner(session_id)
        if owner is None:
            return defer.succeed(False)
        record, local = owner
        d = self.api.request(record.api, b"DELETE", f"{SESSIONS_PATH}/{local}", None, None)

        def done(response: InternalResponse) -> bool:
            if response.status == 204:
                self._ended(session_id)
                return True
            if response.status == 404:
                return False
            raise RuntimeError(f"transceiver {record.id} answered DELETE with {response.status}")

        return d.addCallback(done)

    def session_stats(self, session_id: str) -> "defer.Deferred[dict[str, object] | None]":
        """GET at the owner: its numbers, or None when it is not open."""
        owner = self._owner(session_id)
        if owner is None:
            return defer.succeed(None)
        record, local = owner
        d = self.api.request(record.api, b"GET", f"{SESSIONS_PATH}/{local}", None, None)

        def done(response: InternalResponse) -> dict[str, object] | None:
            if response.status == 404:
                return None
            if response.status != 200:
                raise RuntimeError(f"transceiver {record.id} answered GET with {response.status}")
            stats = json.loads(response.body)
            if isinstance(stats, dict):
                stats["transceiver"] = record.id
                stats["region"] = record.region
            return stats

        return d.addCallback(done)

    def patch_session(
        self, session_id: str, media_type: str, body: str, if_match: str | None
    ) -> "defer.Deferred[PatchedSession]":
        """The client's PATCH (ICE restart) at the owner, its answer back."""
        owner = self._owner(session_id)
        if owner is None:
            return defer.fail(SessionRefused(404, "no such session"))
        record, local = owner
        headers = {} if if_match is None else {b"if-match": if_match.encode("latin-1")}
        d = self.api.request(
            record.api, b"PATCH", f"{SESSIONS_PATH}/{local}", body.encode("utf-8"),
            media_type.encode("ascii"), headers,
        )

        def done(response: InternalResponse) -> PatchedSession:
            if response.status >= 400:
                raise SessionRefused(response.status, _reason(response))
            etag = response.etag.decode("ascii", "replace") if response.etag else ""
            return PatchedSession(
                response.status, response.body.decode("utf-8"),
                response.content_type.decode("ascii", "replace"), etag,
            )

        return d.addCallback(done)

    def session_count(self) -> int:
        """Sessions open across the fleet, as the registry last said."""
        return sum(r.sessions for r in self.view.records.values())

    def add_end_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(public id)`` when a session ends."""
        self._end_listeners.append(listener)

    def session_ended(self, transceiver_id: str, session_id: str) -> None:
        """A transceiver reported (through Redis) that one of its sessions ended."""
        self._ended(f"{transceiver_id}.{session_id}")

    def _ended(self, public_id: str) -> None:
        for listener in list(self._end_listeners):
            try:
                listener(public_id)
            except Exception:
                log.failure("a session end listener failed")

    # -- metrics ---------------------------------------------------------------

    def metrics(self) -> Iterator[Sample]:
        """Samples for ``/metrics``."""
        p = "voiceedge_frontdoor_"
        for outcome, n in sorted(self.outcomes.items()):
            yield ("counter", p + "offers", "Offers by outcome", {"outcome": outcome}, n)
        for (client_region, region), n in sorted(self.placed.items()):
            yield ("counter", p + "placed", "Sessions opened, by client region and transceiver region",
                   {"client_region": client_region, "region": region}, n)
        yield ("gauge", p + "avoided", "Transceivers avoided after a failed request", {}, len(self._avoided()))
        # Each transceiver's load as its record says: with a host's workers, the only place it is seen.
        for record in sorted(self.view.records.values(), key=lambda r: r.id):
            labels = {"transceiver": record.id}
            yield ("gauge", p + "transceiver_cpu_ratio", "A transceiver's share of a core, as its record says",
                   labels, record.cpu)
            yield ("gauge", p + "transceiver_admitting", "1 while a transceiver admits calls by its load",
                   labels, 1 if record.admitting else 0)


def _reason(response: InternalResponse) -> str:
    text = response.body.decode("utf-8", "replace").strip()
    return text[:200] or f"HTTP {response.status}"
