"""Metrics exposition: counters, gauges and lock-free histograms read at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest
from twisted.trial.unittest import SynchronousTestCase

from voiceedge.metrics import Histogram, Sample, make_registry


class HistogramTests(SynchronousTestCase):
    def test_buckets_sum_and_count(self) -> None:
        histogram = Histogram([0.01, 0.1, 1.0])
        for value in (0.005, 0.01, 0.05, 2.0):
            histogram.observe(value)
        self.assertEqual(histogram.cumulative(), [("0.01", 2.0), ("0.1", 3.0), ("1.0", 3.0), ("+Inf", 4.0)])
        self.assertEqual(histogram.count, 4)
        self.assertAlmostEqual(histogram.sum, 2.065)
        self.assertEqual(histogram.quantile(0.5), 0.01)
        self.assertIsNone(histogram.quantile(0.99))
        self.assertIsNone(Histogram([1.0]).quantile(0.5))

    def test_bad_buckets(self) -> None:
        for buckets in ([], [1.0, 0.5], [1.0, 1.0]):
            with self.assertRaises(ValueError):
                Histogram(buckets)

    def test_exposition(self) -> None:
        histogram = Histogram([0.01, 0.1])
        histogram.observe(0.02)

        def samples() -> list[Sample]:
            return [
                ("counter", "x_total", "Xs.", {"a": "1"}, 3),
                ("histogram", "setup_seconds", "Setup.", {"milestone": "dtls"}, histogram),
            ]

        text = generate_latest(make_registry(samples)).decode()
        self.assertIn('x_total{a="1"} 3.0', text)
        self.assertIn('setup_seconds_bucket{le="0.01",milestone="dtls"} 0.0', text)
        self.assertIn('setup_seconds_bucket{le="0.1",milestone="dtls"} 1.0', text)
        self.assertIn('setup_seconds_bucket{le="+Inf",milestone="dtls"} 1.0', text)
        self.assertIn('setup_seconds_count{milestone="dtls"} 1.0', text)


class ReactorMetricsTests(SynchronousTestCase):
    def test_pending_timers_counted_at_scrape_time(self) -> None:
        """The gauge follows the clock's delayed calls as they are added, fire and are cancelled."""
        from twisted.internet.task import Clock

        from voiceedge.metrics import reactor_metrics

        clock = Clock()
        registry = make_registry(reactor_metrics(clock))

        def scraped() -> str:
            return generate_latest(registry).decode()

        self.assertIn("voiceedge_reactor_delayed_calls 0.0", scraped())
        first = clock.callLater(1.0, lambda: None)
        clock.callLater(2.0, lambda: None)
        self.assertIn("voiceedge_reactor_delayed_calls 2.0", scraped())
        clock.advance(1.5)
        self.assertIn("voiceedge_reactor_delayed_calls 1.0", scraped())
        self.assertFalse(first.active())
        clock.advance(1.0)
        self.assertIn("voiceedge_reactor_delayed_calls 0.0", scraped())
