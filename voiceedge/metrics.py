# -*- test-case-name: tests.test_metrics -*-
"""Prometheus exposition of counters that the packet path keeps as plain integers."""

from __future__ import annotations

import bisect
from typing import Callable, Iterable, Iterator, Sequence, Union

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

# prometheus_client's own Counter takes a lock on every increment; the packet
# path instead bumps ints and dict entries, and this collector reads them
# only when someone scrapes.


class Histogram:
    """A histogram kept as plain counts (no lock): ``observe`` on the hot path, read at scrape time.

    ``buckets`` are the upper bounds, ascending; ``+Inf`` is added.
    """

    __slots__ = ("bounds", "counts", "count", "sum")

    def __init__(self, buckets: Sequence[float]) -> None:
        bounds = list(buckets)
        if not bounds or bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be distinct and ascending")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (upper bound as text, observations at or below it)."""
        total = 0
        result: list[tuple[str, float]] = []
        for bound, n in zip([*map(repr, self.bounds), "+Inf"], self.counts):
            total += n
            result.append((bound, float(total)))
        return result

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (``None`` when empty or past the last bound)."""
        if not self.count:
            return None
        rank = q * self.count
        total = 0
        for bound, n in zip(self.bounds, self.counts):
            total += n
            if total >= rank:
                return bound
        return None


# kind ("counter", "gauge" or "histogram"), name, help, labels, value
Sample = tuple[str, str, str, dict[str, str], Union[float, Histogram]]


class SnapshotCollector(Collector):
    """A collector that asks a function for every sample at scrape time."""

    def __init__(self, snapshot: Callable[[], Iterable[Sample]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Group the snapshot's samples into metric families."""
        families: dict[str, CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily] = {}
        for kind, name, help_text, labels, value in self._snapshot():
            family = families.get(name)
            if family is None:
                label_names = sorted(labels)
                if kind == "counter":
                    family = CounterMetricFamily(name, help_text, labels=label_names)
                elif kind == "histogram":
                    family = HistogramMetricFamily(name, help_text, labels=label_names)
                else:
                    family = GaugeMetricFamily(name, help_text, labels=label_names)
                families[name] = family
            label_values = [labels[k] for k in sorted(labels)]
            if isinstance(family, HistogramMetricFamily):
                assert isinstance(value, Histogram)
                family.add_metric(label_values, value.cumulative(), value.sum)
            else:
                assert not isinstance(value, Histogram)
                family.add_metric(label_values, value)
        yield from families.values()


def reactor_metrics(clock: IReactorTime) -> Callable[[], Iterator[Sample]]:
    """Samples of the event loop itself, counted at scrape time: its pending timers.

    ``voiceedge_reactor_delayed_calls`` is ``len(clock.getDelayedCalls())``:
    a count that grows with calls ended long ago is a leaked timer.
    """

    def samples() -> Iterator[Sample]:
        yield (
            "gauge",
            "voiceedge_reactor_delayed_calls",
            "Timers pending in the event loop (reactor.getDelayedCalls())",
            {},
            len(clock.getDelayedCalls()),
        )

    return samples


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
