# -*- test-case-name: tests.test_worker_metrics -*-
"""A supervisor's /metrics: its own families and every worker's, one family per name, each worker labelled."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from voiceedge.fleet.internal_client import InternalResponse
from voiceedge.fleet.worker_metrics import WorkersMetricsResource, merge_exposition
from voiceedge.metrics import Histogram, make_registry

WORKER_TEXT = """\
# HELP voiceedge_transceiver_packets_in_total Datagrams received.
# TYPE voiceedge_transceiver_packets_in_total counter
voiceedge_transceiver_packets_in_total {n}.0
# HELP voiceedge_transceiver_drops_total Datagrams dropped, by reason.
# TYPE voiceedge_transceiver_drops_total counter
voiceedge_transceiver_drops_total{{reason="srtp_auth"}} 2.0
# HELP voiceedge_reactor_delayed_calls Timers pending
# TYPE voiceedge_reactor_delayed_calls gauge
voiceedge_reactor_delayed_calls 7.0
# HELP voiceedge_transceiver_turn_latency_seconds Turn latency.
# TYPE voiceedge_transceiver_turn_latency_seconds histogram
voiceedge_transceiver_turn_latency_seconds_bucket{{le="0.5"}} 1.0
voiceedge_transceiver_turn_latency_seconds_bucket{{le="+Inf"}} 2.0
voiceedge_transceiver_turn_latency_seconds_count 2.0
voiceedge_transceiver_turn_latency_seconds_sum 1.5
"""


def supervisor_registry() -> Any:
    """The supervisor's own samples: one gauge it shares a name with the workers, one of its own."""
    histogram = Histogram([0.1])
    histogram.observe(0.05)

    def samples() -> Any:
        yield ("gauge", "voiceedge_reactor_delayed_calls", "Timers pending", {}, 3)
        yield ("gauge", "voiceedge_workers_running", "Worker processes running", {}, 2)
        yield ("histogram", "voiceedge_frontdoor_seconds", "Front door.", {}, histogram)

    return make_registry(samples)


def parse(body: bytes) -> dict[str, dict[str, float]]:
    """{sample name: {"label=value,...": value}}, and each family's name seen once."""
    result: dict[str, dict[str, float]] = {}
    names: list[str] = []
    for family in text_string_to_metric_families(body.decode()):
        names.append(family.name)
        for sample in family.samples:
            key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            result.setdefault(sample.name, {})[key] = sample.value
    assert len(names) == len(set(names)), names
    return result


class MergeTests(SynchronousTestCase):
    """merge_exposition: sans-I/O, texts in, one exposition out."""

    def test_every_worker_labelled_in_one_family_per_name(self) -> None:
        """Counters, labelled counters, gauges and histograms of two workers join the supervisor's families."""
        body = merge_exposition(
            supervisor_registry(), {"w0": WORKER_TEXT.format(n=10), "w1": WORKER_TEXT.format(n=20)}
        )
        got = parse(body)
        self.assertEqual(got["voiceedge_transceiver_packets_in_total"], {"worker=w0": 10.0, "worker=w1": 20.0})
        self.assertEqual(
            got["voiceedge_transceiver_drops_total"], {"reason=srtp_auth,worker=w0": 2.0, "reason=srtp_auth,worker=w1": 2.0}
        )
        self.assertEqual(got["voiceedge_reactor_delayed_calls"], {"": 3.0, "worker=w0": 7.0, "worker=w1": 7.0})
        self.assertEqual(got["voiceedge_transceiver_turn_latency_seconds_bucket"]["le=+Inf,worker=w1"], 2.0)
        self.assertEqual(got["voiceedge_frontdoor_seconds_count"], {"": 1.0})
        self.assertEqual(got["voiceedge_workers_running"], {"": 2.0})
        self.assertEqual(got["voiceedge_workers_scraped"], {"worker=w0": 1.0, "worker=w1": 1.0})

    def test_a_silent_or_garbled_worker_is_left_out_and_said(self) -> None:
        """A worker that did not answer, or whose text does not parse, is scraped 0; the rest are served."""
        body = merge_exposition(
            supervisor_registry(),
            {"w0": WORKER_TEXT.format(n=10), "w1": None, "w2": "voiceedge_x{unterminated 1\n"},
        )
        got = parse(body)
        self.assertEqual(got["voiceedge_workers_scraped"], {"worker=w0": 1.0, "worker=w1": 0.0, "worker=w2": 0.0})
        self.assertEqual(got["voiceedge_transceiver_packets_in_total"], {"worker=w0": 10.0})

    def test_a_family_of_another_type_is_left_out(self) -> None:
        """A worker's family whose type differs from the one already served under its name is dropped, not mixed."""
        text = "# TYPE voiceedge_frontdoor_seconds gauge\nvoiceedge_frontdoor_seconds 5.0\n"
        got = parse(merge_exposition(supervisor_registry(), {"w0": text}))
        self.assertEqual(got["voiceedge_frontdoor_seconds_count"], {"": 1.0})
        self.assertNotIn("voiceedge_frontdoor_seconds", got)


class FakeApi:
    """An IInternalApi whose answers the test gives, per worker address."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, int], defer.Deferred[InternalResponse]] = {}
        self.paths: list[str] = []

    def request(self, api: tuple[str, int], method: bytes, path: str, body: Any, content_type: Any = None,
                headers: Any = {}) -> defer.Deferred[InternalResponse]:
        self.paths.append(path)
        d: defer.Deferred[InternalResponse] = defer.Deferred()
        self.pending[api] = d
        return d


class ResourceTests(SynchronousTestCase):
    """WorkersMetricsResource reads the workers at each scrape and answers once they have."""

    def setUp(self) -> None:
        self.api = FakeApi()
        self.resource = WorkersMetricsResource(
            supervisor_registry(), self.api, {"w0": ("127.0.0.1", 1), "w1": ("127.0.0.1", 2)}  # type: ignore[arg-type]
        )

    def test_answers_with_every_worker_once_all_have_answered(self) -> None:
        """Nothing is written until the last worker answers (or fails); a non-200 counts as not scraped."""
        request = DummyRequest([b"metrics"])
        self.assertEqual(self.resource.render_GET(request), NOT_DONE_YET)  # type: ignore[arg-type]
        self.assertEqual(self.api.paths, ["/metrics", "/metrics"])
        self.api.pending[("127.0.0.1", 1)].callback(InternalResponse(200, WORKER_TEXT.format(n=4).encode()))
        self.assertEqual(request.written, [])
        self.api.pending[("127.0.0.1", 2)].callback(InternalResponse(503, b"draining"))
        self.assertEqual(request.finished, 1)
        got = parse(b"".join(request.written))
        self.assertEqual(got["voiceedge_transceiver_packets_in_total"], {"worker=w0": 4.0})
        self.assertEqual(got["voiceedge_workers_scraped"], {"worker=w0": 1.0, "worker=w1": 0.0})
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))

    def test_a_worker_that_fails_does_not_fail_the_scrape(self) -> None:
        """A connection error or deadline is a worker not scraped."""
        request = DummyRequest([b"metrics"])
        self.resource.render_GET(request)  # type: ignore[arg-type]
        self.api.pending[("127.0.0.1", 1)].errback(ConnectionRefusedError())
        self.api.pending[("127.0.0.1", 2)].errback(defer.TimeoutError())
        self.assertEqual(request.finished, 1)
        self.assertEqual(parse(b"".join(request.written))["voiceedge_workers_scraped"], {"worker=w0": 0.0, "worker=w1": 0.0})

    def test_a_scraper_that_hung_up_gets_nothing_written(self) -> None:
        """The answer is dropped, not written to a closed request."""
        request = DummyRequest([b"metrics"])
        self.resource.render_GET(request)  # type: ignore[arg-type]
        request.processingFailed(Exception("gone"))  # type: ignore[no-untyped-call]
        written = list(request.written)
        for d in self.api.pending.values():
            d.callback(InternalResponse(200, WORKER_TEXT.format(n=1).encode()))
        self.assertEqual(request.written, written)
