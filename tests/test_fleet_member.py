# -*- test-case-name: tests.test_fleet_member -*-
"""A transceiver's membership of a fleet, as its tap builds it from an INI file."""

from __future__ import annotations

from pathlib import Path

from twisted.application import internet
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from voiceedge.fleet.membership import CpuMeter, Membership
from voiceedge.fleet.registry import DRAINING
from voiceedge.transceiver import tap as transceiver_tap

SECRET = "f" * 40


class MembershipTests(SynchronousTestCase):
    """[internal], [registry] and [drain] of voiceedge-transceiver."""

    def options(self, text: str) -> transceiver_tap.Options:
        path = Path(self.mktemp()).resolve()
        # One process: the workers' own settings are tested in tests/test_workers.py.
        path.write_text(text + "[process]\nworkers = 1\n")
        options = transceiver_tap.Options()
        options.parseOptions(["--config", str(path)])
        return options

    def test_a_plain_transceiver_drains_but_has_no_registry(self) -> None:
        top = transceiver_tap.makeService(self.options("[transceiver]\nmedia_listen = 127.0.0.1:0\n"), MemoryReactorClock())
        membership = next(s for s in top if isinstance(s, Membership))
        self.assertIsNone(membership.publisher)
        self.assertFalse(membership.drain.draining)

    def test_fleet_member(self) -> None:
        options = self.options(
            "[transceiver]\nmedia_listen = 127.0.0.1:0\nmax_sessions = 7\n"
            "[route]\ncluster = 3\naddress = 10.0.0.5:3479\n"
            f"[internal]\nlisten = tcp:0:interface=127.0.0.1\naddress = 10.0.0.5:8081\nsecret = {SECRET}\n"
            "[registry]\nenabled = yes\nid = tx-a\nregion = eu\n"
        )
        clock = MemoryReactorClock()
        top = transceiver_tap.makeService(options, clock)
        membership = next(s for s in top if isinstance(s, Membership))
        assert membership.publisher is not None
        record = membership.publisher.describe()
        self.assertEqual(
            (record.id, record.region, record.cluster, record.api, record.media, record.capacity, record.state),
            ("tx-a", "eu", 3, ("10.0.0.5", 8081), ("10.0.0.5", 3479), 7, "serving"),
        )
        membership.drain.start("test")
        self.assertEqual(membership.publisher.describe().state, DRAINING)
        self.assertFalse(membership.transceiver.accepting)
        # The internal API listens too.
        self.assertEqual(sum(1 for s in top if isinstance(s, internet.StreamServerEndpointService)), 2)

    def test_the_record_says_whether_it_admits_calls(self) -> None:
        """[transceiver] max_cpu_percent and max_loop_lag_ms become the admission's limits; the record carries its decision."""
        options = self.options(
            "[transceiver]\nmedia_listen = 127.0.0.1:0\nmax_cpu_percent = 50\nmax_loop_lag_ms = 40\n"
            "[route]\naddress = 10.0.0.5:3479\n"
            f"[internal]\nlisten = tcp:0:interface=127.0.0.1\naddress = 10.0.0.5:8081\nsecret = {SECRET}\n"
            "[registry]\nenabled = yes\nid = tx-a\n"
        )
        top = transceiver_tap.makeService(options, MemoryReactorClock())
        membership = next(s for s in top if isinstance(s, Membership))
        assert membership.publisher is not None
        admission = membership.transceiver.admission
        assert admission is not None
        self.assertEqual((admission.max_cpu, admission.max_loop_lag), (0.5, 0.04))
        self.assertTrue(membership.publisher.describe().admitting)
        admission.meter.cpu = 0.7  # as a reading over the limit would leave it
        record = membership.publisher.describe()
        self.assertEqual((record.admitting, record.cpu), (False, 0.7))
        self.assertIn('"admitting":false', record.to_json())

    def test_no_limits(self) -> None:
        top = transceiver_tap.makeService(
            self.options("[transceiver]\nmedia_listen = 127.0.0.1:0\nmax_cpu_percent = 0\nmax_loop_lag_ms = 0\n"),
            MemoryReactorClock(),
        )
        admission = next(s for s in top if isinstance(s, Membership)).transceiver.admission
        assert admission is not None
        self.assertEqual((admission.max_cpu, admission.max_loop_lag), (None, None))

    def test_registry_needs_a_reachable_internal_api(self) -> None:
        with self.assertRaisesRegex(usage.UsageError, r"\[registry\] enabled: the registry needs"):
            self.options("[registry]\nenabled = yes\n")
        with self.assertRaisesRegex(usage.UsageError, r"\[internal\] secret: required"):
            self.options("[internal]\nlisten = tcp:8081\n")
        with self.assertRaisesRegex(usage.UsageError, r"\[internal\] secret = \(secret\): must be at least 32"):
            self.options("[internal]\nsecret = short\n")
        with self.assertRaisesRegex(usage.UsageError, r"\[registry\] ttl: must be longer"):
            self.options("[registry]\nheartbeat = 5\nttl = 5\n")

    def test_cpu_meter(self) -> None:
        clock = Clock()
        cpu = [0.0]
        meter = CpuMeter(clock, lambda: cpu[0])
        clock.advance(2)
        cpu[0] = 0.5
        self.assertEqual(meter.read(), 0.25)
        self.assertEqual(meter.read(), 0.25)  # no time passed: the last share
