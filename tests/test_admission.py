# -*- test-case-name: tests.test_admission -*-
"""Admission by load: the meter and the decision on task.Clock; refusal and placement elsewhere over loopback HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import http_get
from tests.test_host import CLIENT_CERT, SERVER, SERVER_CERT, offer_sdp
from voiceedge.agents.echo import EchoAgentFactory
from voiceedge.fleet.drain import Drain
from voiceedge.fleet.frontdoor import FleetSessionHost
from voiceedge.fleet.internal_api import SESSIONS_PATH, OpenRequest, build_internal_site
from voiceedge.fleet.internal_client import InternalApiClient
from voiceedge.fleet.local import REGION, WorkerStore
from voiceedge.fleet.registry import RegistryView, TransceiverRecord
from voiceedge.fleet.settings import FleetSettings, RegionSettings
from voiceedge.fleet.steering import RegionMap, choose_transceiver
from voiceedge.signaling.interfaces import SessionRefused
from voiceedge.transceiver.admission import CPU, LOOP_LAG, Admission, LoadMeter, run_queue_wait
from voiceedge.transceiver.host import OVERLOAD_RETRY_AFTER, Transceiver
from voiceedge.transceiver.settings import TransceiverSettings

SECRET = "s" * 40
JSON = b"application/json"


class FakeCpu:
    """A process CPU counter that a test moves: ``share`` of a core for every second the clock advances."""

    def __init__(self, clock: Clock, share: float = 0.0) -> None:
        self.clock = clock
        self.share = share
        self.total = 0.0
        self._at = clock.seconds()

    def __call__(self) -> float:
        now = self.clock.seconds()
        self.total += (now - self._at) * self.share
        self._at = now
        return self.total


def run(clock: Clock, seconds: float, step: float = 0.1) -> None:
    """Advance ``clock`` ``seconds`` in steps of ``step`` (each step a timer that fires on time or late)."""
    for _ in range(round(seconds / step)):
        clock.advance(step)


def metered(share: float = 0.0, interval: float = 0.1, halflife: float = 1.0) -> tuple[Clock, FakeCpu, LoadMeter]:
    clock = Clock()
    cpu = FakeCpu(clock, share)
    meter = LoadMeter(clock, cpu, interval=interval, halflife=halflife, wait_time=lambda: 0.0)
    meter.start()
    return clock, cpu, meter


class LoadMeterTests(SynchronousTestCase):
    """The CPU share and the loop's lag, smoothed, on a fake clock and a fake CPU counter."""

    def test_cpu_share_converges_and_follows(self) -> None:
        clock, cpu, meter = metered(0.5)
        run(clock, 5)
        self.assertAlmostEqual(meter.cpu, 0.5, places=6)
        self.assertEqual(meter.loop_lag, 0.0)
        cpu.share = 1.0
        clock.advance(0.1)
        # One sample moves it by a fraction: a single busy moment does not swing the reading.
        self.assertGreater(meter.cpu, 0.5)
        self.assertLess(meter.cpu, 0.6)
        run(clock, 0.9)
        # After one half-life it is half way.
        self.assertAlmostEqual(meter.cpu, 0.75, places=2)
        run(clock, 10)
        self.assertAlmostEqual(meter.cpu, 1.0, places=2)

    def test_a_late_timer_is_lag(self) -> None:
        clock, _, meter = metered()
        run(clock, 1)
        self.assertEqual(meter.loop_lag, 0.0)
        # The loop was busy: the 100 ms timer fires 60 ms late, again and again.
        for _ in range(80):
            clock.advance(0.16)
        self.assertAlmostEqual(meter.last_lag, 0.06, places=6)
        self.assertAlmostEqual(meter.loop_lag, 0.06, places=3)
        self.assertAlmostEqual(meter.max_lag, 0.06, places=6)
        run(clock, 10)
        self.assertLess(meter.loop_lag, 0.001)
        self.assertAlmostEqual(meter.max_lag, 0.06, places=6)

    def test_a_late_sample_weighs_what_it_covers(self) -> None:
        """A 2 s stall at full CPU is not one tenth-of-a-second sample: it moves the reading most of the way."""
        clock, cpu, meter = metered(0.1)
        run(clock, 5)
        cpu.share = 1.0
        clock.advance(2.0)
        self.assertGreater(meter.cpu, 0.7)
        self.assertAlmostEqual(meter.last_lag, 1.9, places=6)

    def test_start_up_is_not_lag(self) -> None:
        """The first timer after start() may fire seconds late (the process was still starting): not counted."""
        clock, cpu, meter = metered(0.2)
        cpu.share = 1.0
        clock.advance(3.0)
        cpu.share = 0.2
        run(clock, 1)
        self.assertEqual((meter.loop_lag, meter.max_lag), (0.0, 0.0))
        self.assertAlmostEqual(meter.cpu, 0.2, places=6)

    def test_stop_leaves_no_timer(self) -> None:
        clock, _, meter = metered()
        run(clock, 1)
        meter.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        meter.start()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        meter.stop()


class AdmissionTests(SynchronousTestCase):
    """The decision: thresholds, hysteresis, a burst within one reading."""

    def test_cpu_over_its_limit_refuses_with_hysteresis(self) -> None:
        clock, cpu, meter = metered(0.5)
        admission = Admission(meter, 0.8, None, resume=0.85)
        run(clock, 3)
        self.assertIsNone(admission.refusal(10))
        cpu.share = 0.9
        run(clock, 10)
        self.assertEqual(admission.refusal(10), CPU)
        self.assertIn("CPU 90 % of a core is over its limit of 80 %", admission.describe(CPU, 10))
        # Just under the limit is not enough to take calls again: no flapping at the edge.
        cpu.share = 0.75
        run(clock, 8)
        self.assertAlmostEqual(meter.cpu, 0.75, places=2)
        self.assertEqual(admission.refusal(10), CPU)
        self.assertEqual(admission.report(10)["admitting"], False)
        # Under resume x limit (0.68) it admits again.
        cpu.share = 0.6
        run(clock, 12)
        self.assertIsNone(admission.refusal(10))
        self.assertEqual(admission.report(10), {"cpu": 0.6, "cpu_wait": 0.0, "loop_lag_ms": 0.0, "admitting": True})

    def test_loop_lag_over_its_limit_refuses(self) -> None:
        clock, _, meter = metered(0.2)
        admission = Admission(meter, 0.8, 0.04)
        run(clock, 2)
        self.assertIsNone(admission.refusal(3))
        for _ in range(80):
            clock.advance(0.15)  # every timer 50 ms late
        self.assertEqual(admission.refusal(3), LOOP_LAG)
        self.assertIn("runs 50 ms late, over its limit of 40 ms", admission.describe(LOOP_LAG, 3))
        run(clock, 10)
        self.assertIsNone(admission.refusal(3))

    def test_time_waited_for_a_core_counts(self) -> None:
        """A process that gets 40 % of a core and waits for one half the time is as full as one at 90 %."""
        clock = Clock()
        cpu, waited = FakeCpu(clock, 0.4), FakeCpu(clock, 0.1)
        meter = LoadMeter(clock, cpu, wait_time=waited)
        meter.start()
        admission = Admission(meter, 0.8, None)
        run(clock, 10)
        self.assertIsNone(admission.refusal(10))
        waited.share = 0.5
        run(clock, 10)
        self.assertAlmostEqual(meter.demand, 0.9, places=2)
        self.assertEqual(admission.refusal(10), CPU)
        self.assertIn("CPU 90 % of a core (it used 40 % and waited for a core 50 % of the time) is over its limit",
                      admission.describe(CPU, 10))
        self.assertEqual(admission.report(10)["cpu_wait"], 0.5)

    def test_the_run_queue_wait_of_this_process(self) -> None:
        """Linux says how long this thread waited for a core; elsewhere it reads 0."""
        first = run_queue_wait()
        self.assertGreaterEqual(first, 0.0)
        self.assertGreaterEqual(run_queue_wait(), first)

    def test_no_limits_never_refuse(self) -> None:
        clock, cpu, meter = metered(5.0)
        admission = Admission(meter, None, None)
        for _ in range(10):
            clock.advance(1.0)
        self.assertIsNone(admission.refusal(1000))

    def test_a_burst_is_counted_before_the_reading_shows_it(self) -> None:
        """Offers arriving together all see one reading: each admitted call counts at the average call's cost."""
        clock, cpu, meter = metered(0.4)
        admission = Admission(meter, 0.85, None, settle=2.0)
        run(clock, 5)
        self.assertAlmostEqual(meter.cpu, 0.4, places=6)
        admitted = 0
        # 10 sessions at 0.4: 0.04 of a core each; 0.45 of a core left: 11 more, the 12th would pass 0.85.
        while admission.refusal(10 + admitted) is None and admitted < 100:
            admission.admitted()
            admitted += 1
        self.assertEqual(admitted, 12)
        self.assertEqual(admission.refusal(22), CPU)
        # They start to cost what was foreseen; the projection holds, then rests on the reading alone.
        cpu.share = 0.4 + 12 * 0.04
        run(clock, 2.0)
        self.assertAlmostEqual(admission.unseen(), 0.0)
        self.assertEqual(admission.refusal(22), CPU)
        run(clock, 10)
        self.assertAlmostEqual(admission.projected_cpu(22), 0.88, places=2)
        self.assertEqual(admission.refusal(22), CPU)

    def test_the_first_calls_cost_the_default(self) -> None:
        clock, _, meter = metered(0.01)
        admission = Admission(meter, 0.5, None, default_cost=0.1)
        run(clock, 3)
        admitted = 0
        while admission.refusal(admitted) is None and admitted < 100:
            admission.admitted()
            admitted += 1
        # Before the reading shows any call, each costs the default (0.1 of a core).
        self.assertEqual(admitted, 5)

    def test_gauges(self) -> None:
        clock, _, meter = metered(0.3)
        admission = Admission(meter, 0.8, 0.05)
        run(clock, 3)
        samples = {name: value for _, name, _, _, value in admission.metrics(3)}
        self.assertAlmostEqual(float(samples["voiceedge_transceiver_cpu_ratio"]), 0.3)  # type: ignore[arg-type]
        self.assertEqual(samples["voiceedge_transceiver_admitting"], 1)
        self.assertEqual(samples["voiceedge_transceiver_max_cpu_ratio"], 0.8)
        self.assertEqual(samples["voiceedge_transceiver_max_loop_lag_seconds"], 0.05)
        self.assertEqual(samples["voiceedge_transceiver_loop_lag_seconds"], 0.0)


def overloadable(clock: Clock, *, max_sessions: int = 10) -> tuple[Transceiver, FakeCpu]:
    """A transceiver on ``clock`` whose CPU counter the test drives, limited at 50 % of a core."""
    cpu = FakeCpu(clock, 0.1)
    transceiver = Transceiver(
        clock, SERVER_CERT, EchoAgentFactory(), TransceiverSettings(advertised_address=SERVER, max_sessions=max_sessions),
        admission=Admission(LoadMeter(clock, cpu, wait_time=lambda: 0.0), 0.5, 0.2),
    )
    transceiver.write = lambda data, dest: None
    transceiver.start()
    return transceiver, cpu


class TransceiverAdmissionTests(SynchronousTestCase):
    """The transceiver refuses new sessions while overloaded; its calls go on."""

    def test_overload_refuses_new_calls_only(self) -> None:
        clock = Clock()
        transceiver, cpu = overloadable(clock)
        self.addCleanup(transceiver.stop)
        run(clock, 2)
        first = transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        cpu.share = 0.9
        run(clock, 5)
        with self.assertRaises(SessionRefused) as refused:
            transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        self.assertEqual((refused.exception.status, refused.exception.retry_after), (503, OVERLOAD_RETRY_AFTER))
        self.assertIn("overloaded", refused.exception.reason)
        # The call already up is untouched, and health says so.
        self.assertIsNotNone(transceiver.session(first.session_id))
        self.assertEqual(transceiver.session_count(), 1)
        self.assertEqual(transceiver.load_report()["admitting"], False)
        samples = {(name, tuple(sorted(labels.items()))): value for _, name, _, labels, value in transceiver.metrics()}
        self.assertEqual(samples[("voiceedge_transceiver_sessions_refused", (("reason", "cpu"),))], 1)
        self.assertEqual(samples[("voiceedge_transceiver_offers_refused", (("status", "503"),))], 1)
        self.assertEqual(samples[("voiceedge_transceiver_admitting", ())], 0)
        # Back under the limit (with hysteresis), calls are taken again.
        cpu.share = 0.2
        run(clock, 6)
        transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        self.assertEqual(transceiver.session_count(), 2)

    def test_every_503_has_its_reason(self) -> None:
        clock = Clock()
        transceiver, cpu = overloadable(clock, max_sessions=1)
        self.addCleanup(transceiver.stop)
        run(clock, 2)
        transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        with self.assertRaises(SessionRefused):
            transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        transceiver.accepting = False
        with self.assertRaises(SessionRefused):
            transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        self.assertEqual(dict(transceiver.refused_by), {"max_sessions": 1, "draining": 1})

    def test_stop_stops_the_meter(self) -> None:
        clock = Clock()
        transceiver, _ = overloadable(clock)
        transceiver.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class SteeringTests(SynchronousTestCase):
    """A record that says it is not admitting is not chosen, and says so in the registry."""

    def test_not_admitting_is_skipped_and_round_trips(self) -> None:
        busy = TransceiverRecord("w0", REGION, 0, ("127.0.0.1", 1), ("127.0.0.1", 2), 0, 10, 0.95, admitting=False)
        idle = TransceiverRecord("w1", REGION, 0, ("127.0.0.1", 3), ("127.0.0.1", 4), 5, 10, 0.2)
        self.assertEqual(TransceiverRecord.from_json(busy.to_json()), busy)
        self.assertNotIn("admitting", idle.to_json())
        self.assertEqual(choose_transceiver([busy, idle], REGION), idle)
        self.assertIsNone(choose_transceiver([busy], REGION))
        with self.assertRaises(ValueError):
            TransceiverRecord.from_json(busy.to_json().replace("false", '"no"'))


class OverloadedWorkerTests(TestCase):
    """Two transceivers' internal APIs on loopback and the front door a host runs over its workers.

    Each transceiver's timers run on its own Clock (its load is what the test
    says); HTTP is real.
    """

    timeout = 30

    def setUp(self) -> None:
        self.clocks = [Clock(), Clock()]
        self.workers: list[Transceiver] = []
        self.cpus: list[FakeCpu] = []
        apis = {}
        for index, clock in enumerate(self.clocks):
            transceiver, cpu = overloadable(clock)
            self.addCleanup(transceiver.stop)
            run(clock, 2)
            drain = Drain(clock, 60, transceiver.session_count, lambda: None, transceiver.stop, lambda: None)
            site = build_internal_site(
                transceiver, SECRET, drain, [transceiver.metrics], load=transceiver.load_report
            )
            port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(port.stopListening)
            apis[index] = ("127.0.0.1", port.getHost().port)
            self.workers.append(transceiver)
            self.cpus.append(cpu)
        self.apis = apis
        self.client = InternalApiClient(reactor, SECRET, timeout=5)
        self.addCleanup(self.client.close)
        store = WorkerStore(self.client, apis, {i: SERVER for i in apis}, 0, 10)
        self.view: RegistryView[TransceiverRecord] = RegistryView(store, reactor)
        settings = FleetSettings(secret=SECRET, max_cpu=1000.0, avoid_failed=1.0, retry_after=2)
        regions = RegionMap({REGION: RegionSettings(relay=SERVER)}, REGION)
        self.front = FleetSessionHost(self.view, self.client, regions, reactor, settings)

    def overload(self, index: int) -> None:
        self.cpus[index].share = 0.95
        run(self.clocks[index], 5)

    @defer.inlineCallbacks
    def test_refused_with_503_and_counted_then_placed_on_the_other(self) -> Any:
        """A worker over its CPU limit answers 503 with Retry-After; the front door places the call on the other."""
        # w1 holds a call, so w0 looks the less loaded of the two when the registry is read...
        self.workers[1].open_session(offer_sdp(CLIENT_CERT.fingerprint))
        yield self.view.refresh()
        # ...and then w0 overloads before the front door's next read.
        self.overload(0)
        opened = yield self.front.open_session(offer_sdp(CLIENT_CERT.fingerprint), client="127.0.0.1")
        self.assertTrue(opened.session_id.startswith("w1."), opened.session_id)
        self.assertEqual(self.workers[1].session_count(), 2)
        self.assertEqual(self.workers[0].session_count(), 0)
        self.assertEqual(self.workers[0].refused_by, {"cpu": 1})
        self.assertEqual((self.front.outcomes["transceiver_full"], self.front.outcomes["retried"]), (1, 1))

        # What w0 said, as the front door heard it: 503, Retry-After, the reason.
        body = OpenRequest(offer_sdp(CLIENT_CERT.fingerprint)).to_json()
        refused = yield self.client.request(self.apis[0], b"POST", SESSIONS_PATH, body, JSON)
        self.assertEqual(refused.status, 503)
        self.assertIn(b"overloaded", refused.body)
        metrics = yield self.client.request(self.apis[0], b"GET", "/metrics")
        self.assertIn(b'voiceedge_transceiver_sessions_refused_total{reason="cpu"} 2.0', metrics.body)
        # Healthy and ready all the same: it still carries its calls.
        ready = yield self.client.request(self.apis[0], b"GET", "/readyz")
        self.assertEqual(ready.status, 200)

        # Once the registry shows w0's load, the front door does not even ask it.
        yield self.view.refresh()
        state = yield self.client.request(self.apis[0], b"GET", "/internal/v1/drain")
        self.assertEqual(json.loads(state.body)["admitting"], False)
        self.assertEqual(self.view.get("w0").admitting, False)  # type: ignore[union-attr]
        gauges = {(name, tuple(labels.items())): value for _, name, _, labels, value in self.front.metrics()}
        self.assertEqual(gauges[("voiceedge_frontdoor_transceiver_admitting", (("transceiver", "w0"),))], 0)
        self.assertEqual(gauges[("voiceedge_frontdoor_transceiver_admitting", (("transceiver", "w1"),))], 1)
        self.assertGreater(gauges[("voiceedge_frontdoor_transceiver_cpu_ratio", (("transceiver", "w0"),))], 0.9)
        opened = yield self.front.open_session(offer_sdp(CLIENT_CERT.fingerprint), client="127.0.0.1")
        self.assertTrue(opened.session_id.startswith("w1."))
        self.assertEqual(self.workers[0].refused_by, {"cpu": 2})

    @defer.inlineCallbacks
    def test_both_overloaded_is_503_with_retry_after(self) -> Any:
        self.overload(0)
        self.overload(1)
        yield self.view.refresh()
        try:
            yield self.front.open_session(offer_sdp(CLIENT_CERT.fingerprint), client="127.0.0.1")
        except SessionRefused as refused:
            self.assertEqual((refused.status, refused.retry_after), (503, 2))
        else:
            self.fail("placed on an overloaded worker")
        self.assertEqual(self.front.outcomes["no_transceiver"], 1)


class OverloadedServiceTests(TestCase):
    """``twistd voiceedge`` (one process) whose CPU limit is forced to almost nothing: offers get 503."""

    timeout = 90

    def test_refused_with_503_retry_after_and_counted(self) -> None:
        import urllib.error
        import urllib.request
        from pathlib import Path

        from tests.support import free_tcp_port, free_udp_port, running_service, scrape_metrics, write_allinone_config

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        http_port, media_port = free_tcp_port(), free_udp_port()
        # 0.01 % of a core: the idle process's own 20 ms tick is over it.
        ini = write_allinone_config(
            tmp, http_port, media_port, transceiver={"max_cpu_percent": 0.01, "max_loop_lag_ms": 0},
            signaling={"calls_per_minute_per_address": 0},
        )
        base = f"http://127.0.0.1:{http_port}"

        def post() -> tuple[int, str | None, bytes]:
            req = urllib.request.Request(
                base + "/v1/realtime/calls", data=offer_sdp(CLIENT_CERT.fingerprint).encode(), method="POST",
                headers={"Content-Type": "application/sdp"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return int(resp.status), resp.headers.get("Retry-After"), bytes(resp.read())
            except urllib.error.HTTPError as e:
                return int(e.code), e.headers.get("Retry-After"), bytes(e.read())

        with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp, timeout=60):
            answered = []
            # The first reading comes a few timer ticks after start-up: until then an offer may open.
            for _ in range(50):
                answered.append(post())
                if answered[-1][0] == 503:
                    break
                time.sleep(0.2)
            status, retry_after, body = answered[-1]
            self.assertEqual((status, retry_after), (503, "2"), answered)
            self.assertIn(b"this transceiver is overloaded: CPU", body)
            self.assertEqual({s for s, _, _ in answered[:-1]}, {201} if answered[:-1] else set())
            metrics = scrape_metrics(base)
            self.assertEqual(metrics["voiceedge_transceiver_sessions_refused_total"], {"reason=cpu": 1.0})
            self.assertEqual(metrics["voiceedge_transceiver_admitting"], {"": 0.0})
            self.assertGreater(metrics["voiceedge_transceiver_cpu_ratio"][""], 0.0001)
            # Still healthy: it carries what it carries.
            self.assertEqual(http_get(base + "/healthz")[0], 200)
