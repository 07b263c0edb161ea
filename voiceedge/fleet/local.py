# -*- test-case-name: tests.test_workers -*-
"""One host's worker processes as a fleet with no Redis: the supervisor's registry is its workers' internal APIs.

With ``[process] workers`` above one, the process ``twistd voiceedge`` starts
is a front door (:class:`~voiceedge.fleet.frontdoor.FleetSessionHost`) over
its own workers, each a relay and a transceiver with an internal API on
loopback. :class:`WorkerStore` is the registry it reads: every second it asks
each worker ``GET /internal/v1/drain`` (state and sessions) and turns the
answers into :class:`~voiceedge.fleet.registry.TransceiverRecord` values; a
worker that does not answer is left out until it does, so no call is placed
on it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from twisted.internet import defer
from zope.interface import implementer

from voiceedge.config import Address
from voiceedge.fleet.internal_client import IInternalApi, InternalResponse
from voiceedge.fleet.registry import DRAINING, SERVING, IRegistryStore, TransceiverRecord

__all__ = ["DRAIN_PATH", "WorkerStore", "worker_id"]

DRAIN_PATH = "/internal/v1/drain"
REGION = "default"


def worker_id(index: int) -> str:
    """The registry id of worker ``index`` (the first part of its sessions' public ids)."""
    return f"w{index}"


@implementer(IRegistryStore)
class WorkerStore:
    """The records of this host's workers, read from their internal APIs (nothing is written)."""

    def __init__(
        self, api: IInternalApi, workers: Mapping[int, Address], relay: Address, cluster: int, capacity: int
    ) -> None:
        self.api = api
        self.workers = dict(workers)
        self.relay = relay
        self.cluster = cluster
        self.capacity = capacity

    def fetch(self) -> "defer.Deferred[dict[str, Any]]":
        """A record for every worker that answers."""
        reads: list[defer.Deferred[str | None]] = []
        for index, address in sorted(self.workers.items()):
            d: defer.Deferred[Any] = self.api.request(address, b"GET", DRAIN_PATH, None, None)
            d.addCallback(self._record, index, address)
            d.addErrback(lambda _: None)  # not up (yet, or any more): not chosen
            reads.append(d)

        def gather(results: list[tuple[bool, Any]]) -> dict[str, Any]:
            values = [value for ok, value in results if ok and value is not None]
            return {json.loads(value)["id"]: value for value in values}

        listed: defer.Deferred[Any] = defer.DeferredList(reads)
        return listed.addCallback(gather)

    def _record(self, response: InternalResponse, index: int, address: Address) -> str | None:
        if response.status != 200:
            return None
        state = json.loads(response.body)
        return TransceiverRecord(
            id=worker_id(index),
            region=REGION,
            cluster=self.cluster,
            api=address,
            media=self.relay,  # clients reach every worker through the one relay address
            sessions=int(state.get("sessions", 0)),
            capacity=self.capacity,
            cpu=0.0,
            state=SERVING if state.get("state") == "serving" else DRAINING,
        ).to_json()

    def put(self, record_id: str, value: str, ttl: float) -> "defer.Deferred[Any]":
        """Workers publish nothing: the supervisor asks them."""
        return defer.succeed(None)

    def remove(self, record_id: str) -> "defer.Deferred[Any]":
        """Nothing stored."""
        return defer.succeed(None)

    def publish_ended(self, record_id: str, session_id: str) -> "defer.Deferred[Any]":
        """No listeners on one host."""
        return defer.succeed(None)
