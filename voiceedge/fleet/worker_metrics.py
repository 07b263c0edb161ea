# -*- test-case-name: tests.test_worker_metrics -*-
"""A supervisor's ``/metrics``: its own samples and every worker's, each labelled ``worker="w<i>"``.

With ``[process] workers`` above one, the calls, packets, drops and relay
flows live in the workers; the process ``twistd`` started holds only the
front door. Prometheus scrapes that one address (the port the README and
the Kubernetes manifests name), so at each scrape the supervisor reads every
worker's ``/metrics`` from its internal API and serves them with its own,
one metric family per name (Prometheus refuses a family named twice).
``voiceedge_workers_scraped{worker}`` is 1 for a worker whose samples are
included and 0 for one that did not answer in time (its samples are then
absent for that scrape: a counter's rate is taken across the gap).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from voiceedge.config import Address
from voiceedge.fleet.internal_client import IInternalApi, InternalResponse

__all__ = ["WorkersMetricsResource", "merge_exposition"]

log = Logger()

METRICS_PATH = "/metrics"
WORKER_LABEL = "worker"


class _Families(Collector):
    """Metric families already built, handed to ``generate_latest``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        """The families, as they are."""
        return iter(self._families)


def merge_exposition(own: CollectorRegistry, workers: Mapping[str, str | None]) -> bytes:
    """One Prometheus text exposition of ``own`` and each worker's text (``None``: it did not answer).

    A worker's samples gain the label ``worker=<its id>`` and join the family
    of their name, wherever it came from first; a worker family whose type
    differs from the one already seen under its name, or a text that does
    not parse, is left out (and logged), never the whole scrape.
    """
    families: dict[str, Metric] = {}
    for family in own.collect():
        families[family.name] = family
    scraped = GaugeMetricFamily(
        "voiceedge_workers_scraped", "1 if the worker's metrics are in this scrape, 0 if it did not answer",
        labels=[WORKER_LABEL],
    )
    for worker, text in sorted(workers.items()):
        included = text is not None and _merge_worker(families, worker, text)
        scraped.add_metric([worker], 1 if included else 0)
    families[scraped.name] = scraped
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))
    return generate_latest(registry)


def _merge_worker(families: dict[str, Metric], worker: str, text: str) -> bool:
    """Add ``worker``'s samples to ``families``; whether its text parsed."""
    try:
        parsed = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as e:
        log.warn("worker {worker}: its /metrics does not parse ({e}); left out", worker=worker, e=e)
        return False
    for family in parsed:
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type)
        elif merged.type != family.type:
            log.warn(
                "worker {worker}: metric {name} is a {theirs} here but a {ours} already; left out",
                worker=worker, name=family.name, theirs=family.type, ours=merged.type,
            )
            continue
        for sample in family.samples:
            merged.samples.append(sample._replace(labels={**sample.labels, WORKER_LABEL: worker}))
    return True


class WorkersMetricsResource(Resource):
    """``GET /metrics`` of a supervisor: ``registry`` and the workers' own, read at each scrape.

    ``workers`` maps each worker's id (``w<i>``) to its internal API; ``api``
    sends the requests (with the workers' secret and the fleet's deadline).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, api: IInternalApi, workers: Mapping[str, Address]) -> None:
        super().__init__()
        self._registry = registry
        self._api = api
        self._workers = dict(workers)

    def render_GET(self, request: Request) -> int:
        """Read every worker's ``/metrics``, then answer with them and ours."""
        ids = sorted(self._workers)
        reads = [self._read(self._workers[worker]) for worker in ids]
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(results: list[str | None]) -> None:
            if gone:
                return  # the scraper hung up: nobody to answer
            body = merge_exposition(self._registry, dict(zip(ids, results)))
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            request.write(body)
            request.finish()

        def failed(reason: Failure) -> None:
            log.failure("supervisor /metrics failed", reason)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        gathered: defer.Deferred[list[str | None]] = defer.gatherResults(reads)
        gathered.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    def _read(self, api: Address) -> "defer.Deferred[str | None]":
        """A worker's metrics text, or ``None`` if it did not answer 200 in time."""
        def text(response: InternalResponse) -> str | None:
            if response.status != 200:
                return None
            return response.body.decode("utf-8", "replace")

        requested: defer.Deferred[InternalResponse] = self._api.request(api, b"GET", METRICS_PATH, None, None)
        read = requested.addCallback(text)
        read.addErrback(lambda _: None)
        return read
