# -*- test-case-name: tests.test_metrics -*-
"""Prometheus exposition of counters that the packet path keeps as plain integers."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request

# prometheus_client's own Counter takes a lock on every increment; the packet
# path instead bumps ints and dict entries, and this collector reads them
# only when someone scrapes.
Sample = tuple[str, str, str, dict[str, str], float]  # kind, name, help, labels, value


class SnapshotCollector(Collector):
    """A collector that asks a function for every sample at scrape time."""

    def __init__(self, snapshot: Callable[[], Iterable[Sample]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Group the snapshot's samples into metric families."""
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for kind, name, help_text, labels, value in self._snapshot():
            family = families.get(name)
            if family is None:
                label_names = sorted(labels)
                if kind == "counter":
                    family = CounterMetricFamily(name, help_text, labels=label_names)
                else:
                    family = GaugeMetricFamily(name, help_text, labels=label_names)
                families[name] = family
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


def make_registry(*snapshots: Callable[[], Iterable[Sample]]) -> CollectorRegistry:
    """A registry of its own (not the process-global one) over ``snapshots``."""
    registry = CollectorRegistry(auto_describe=False)
    for snapshot in snapshots:
        registry.register(SnapshotCollector(snapshot))
    return registry


class MetricsResource(Resource):
    """``GET /metrics`` in the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """Render every metric of the registry."""
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return generate_latest(self._registry)
