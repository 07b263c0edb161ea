# -*- test-case-name: tests.test_workers -*-
"""One host's worker processes as a fleet with no Redis: the supervisor's registry is its workers' internal APIs.

With ``[process] workers`` above one, the process ``twistd voiceedge`` (or
``twistd voiceedge-transceiver``) starts is a front door
(:class:`~voiceedge.fleet.frontdoor.FleetSessionHost`, built by
:func:`build_front_door`) over its own workers, each a transceiver (and, in
the all-in-one, a relay) with an internal API. :class:`WorkerStore` is the
registry it reads: every second it asks each worker ``GET /internal/v1/drain``
(state, sessions and load: CPU share and whether it admits calls) and turns the answers into
:class:`~voiceedge.fleet.registry.TransceiverRecord` values; a worker that does
not answer is left out until it does, so no call is placed on it.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Callable, Iterable, Mapping, Sequence

from twisted.application import service, strports
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from voiceedge.config import Address
from voiceedge.fleet.frontdoor import FleetSessionHost, split_session_id
from voiceedge.fleet.internal_client import IInternalApi, InternalApiClient, InternalResponse
from voiceedge.fleet.registry import DRAINING, SERVING, IRegistryStore, RegistryView, TransceiverRecord
from voiceedge.fleet.session_ends import SessionEnds, SessionReconciler
from voiceedge.fleet.settings import FleetSettings, RegionSettings
from voiceedge.fleet.steering import RegionMap
from voiceedge.fleet.worker_metrics import WorkersMetricsResource
from voiceedge.metrics import Sample, SnapshotCollector, make_registry
from voiceedge.signaling.ownership import SessionLedger
from voiceedge.signaling.resource import build_site
from voiceedge.signaling.settings import SignalingSettings
from voiceedge.signaling.tap import ReadyResource

__all__ = [
    "DRAIN_PATH",
    "INTERNAL_SECRET_ENV",
    "WorkerStore",
    "build_front_door",
    "loopback_apis",
    "worker_id",
]

DRAIN_PATH = "/internal/v1/drain"
REGION = "default"
#: Where a worker finds the internal API's secret its supervisor made (when the INI names none).
INTERNAL_SECRET_ENV = "VOICEEDGE_WORKER_INTERNAL_SECRET"


def worker_id(index: int) -> str:
    """The registry id of worker ``index`` (the first part of its sessions' public ids)."""
    return f"w{index}"


@implementer(IRegistryStore)
class WorkerStore:
    """The records of this host's workers, read from their internal APIs (nothing is written).

    ``workers`` is each worker's internal API by index, ``media`` where clients
    reach each worker's media (the one relay address of the all-in-one, or
    each transceiver worker's own route address).
    """

    def __init__(
        self,
        api: IInternalApi,
        workers: Mapping[int, Address],
        media: Mapping[int, Address],
        cluster: int,
        capacity: int,
    ) -> None:
        self.api = api
        self.workers = dict(workers)
        self.media = dict(media)
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
            media=self.media[index],
            sessions=int(state.get("sessions", 0)),
            capacity=self.capacity,
            cpu=float(state.get("cpu", 0.0)),
            state=SERVING if state.get("state") == "serving" else DRAINING,
            admitting=state.get("admitting", True) is not False,
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


def loopback_apis(count: int, host: str = "127.0.0.1") -> dict[int, Address]:
    """An internal API address on ``host`` for each of ``count`` workers: ports free a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    apis = {}
    for index in range(count):
        with socket.socket(family) as sock:
            sock.bind((host, 0))
            apis[index] = (host, int(sock.getsockname()[1]))
    return apis


def build_front_door(
    signaling: SignalingSettings,
    apis: Mapping[int, Address],
    secret: str,
    media: Mapping[int, Address],
    cluster: int,
    capacity: int,
    clock: IReactorTime,
    parent: service.MultiService,
    *,
    relay: Address | None,
    draining: Callable[[], bool] | None = None,
    more_metrics: Sequence[Callable[[], Iterable[Sample]]] = (),
) -> FleetSessionHost:
    """Signaling on ``signaling.listen`` as the front door of a host's workers, added to ``parent``.

    ``apis`` are the workers' internal APIs (by index), ``secret`` their
    bearer secret. ``relay`` is the candidate of every answer (the
    all-in-one's shared relay port); ``None`` leaves each worker to name its
    own (``[transceiver] advertised_address``), as one transceiver does.
    Serves the API a transceiver serves, plus ``/readyz`` (503 until the
    workers have been read, and while ``draining()``) and ``/metrics`` as one
    process does (on ``metrics_listen`` when set, else behind the keys), with
    every worker's metrics labelled by its id
    (:class:`~voiceedge.fleet.worker_metrics.WorkersMetricsResource`).
    """
    fleet = FleetSettings(secret=secret, max_cpu=1000.0, avoid_failed=1.0)
    api = InternalApiClient(clock, secret, fleet.request_timeout)
    view: RegistryView[TransceiverRecord] = RegistryView(
        WorkerStore(api, apis, media, cluster, capacity), clock, fleet.refresh_interval, fleet.max_stale,
    )
    # The region's relay is only a placeholder when the workers name their own candidates.
    regions = RegionMap({REGION: RegionSettings(relay=relay or ("127.0.0.1", 0))}, REGION)
    host = FleetSessionHost(view, api, regions, clock, fleet, relay_candidate=relay is not None)
    _ViewService(view, api).setServiceParent(parent)
    # Calls end on the workers, which tell nobody: every registry read the front door compares
    # what it recorded (each key's live calls) with what each worker holds.
    ledger = SessionLedger(
        signaling.max_calls_per_key, clock, lambda session_id: (split_session_id(session_id) or (None,))[0]
    )
    reconciler = SessionReconciler(ledger, view, api, clock, host.session_ended, grace=1.0)
    ends = SessionEnds(None, reconciler, clock, fleet.refresh_interval, fleet.refresh_interval)
    ends.setServiceParent(parent)
    # As one process does it: /metrics on metrics_listen when set, else behind the keys;
    # with every worker's samples too (labelled worker="w<i>"), read from them at each scrape.
    registry = make_registry(host.metrics, view.metrics, ends.metrics, *more_metrics)
    metrics = WorkersMetricsResource(registry, api, {worker_id(index): address for index, address in apis.items()})
    site = build_site(
        host, signaling, ledger=ledger, admin={} if signaling.metrics_listen else {b"metrics": metrics},
        extra={b"readyz": ReadyResource(view, draining)}, reactor=clock,
    )
    registry.register(SnapshotCollector(site.metrics))
    strports.service(signaling.listen, site).setServiceParent(parent)
    if signaling.metrics_listen:
        root = Resource()
        root.putChild(b"metrics", metrics)
        strports.service(signaling.metrics_listen, server.Site(root)).setServiceParent(parent)
    return host


class _ViewService(service.Service):
    """Reads the workers' load while the application runs."""

    def __init__(self, view: RegistryView[TransceiverRecord], api: InternalApiClient) -> None:
        self.view = view
        self.api = api

    def startService(self) -> None:
        """Start reading the workers."""
        super().startService()
        self.view.start()

    def stopService(self) -> Any:
        """Stop reading; close the connections to the workers."""
        super().stopService()
        self.view.stop()
        return self.api.close()
