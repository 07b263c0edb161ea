# -*- test-case-name: tests.test_transceiver_workers -*-
"""``twistd voiceedge-transceiver`` with ``[process] workers``: each worker a whole transceiver, the supervisor their front door.

Unit tests of what each worker takes (ports plus its index, its registry id)
and of the supervisor's drain on a fake process reactor; then the service for
real with two workers: Pion calls through the supervisor's signaling land on
both and get audio back; a worker killed with SIGKILL is replaced while the
other's calls go on; SIGTERM drains (no new call, the live one goes on, the
supervisor exits once its workers have); and in a fleet both workers are in
the Redis registry with their own ids, API and media ports.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.application import internet
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.redis_support import start_redis
from tests.support import NO_LOAD_LIMITS_INI, free_tcp_port, free_udp_run, http_get, running_service, scrape_metrics
from tests.test_workers import _alive, _children, _free_tcp_pair, _until
from voiceedge.fleet.local import INTERNAL_SECRET_ENV
from voiceedge.fleet.membership import Membership
from voiceedge.transceiver import tap as transceiver_tap
from voiceedge.workers import ParentWatch, SupervisorDrain, WorkerSupervisor

LOOPBACK = "127.0.0.1"
SECRET = "s" * 40
KEY = "1:" + "A" * 43 + "="


def _options(path: Path, *extra: str) -> transceiver_tap.Options:
    options = transceiver_tap.Options()
    options.parseOptions(["--config", str(path), *extra])
    return options


class WorkerSettingsTests(SynchronousTestCase):
    """What worker ``i`` takes of the transceiver's INI."""

    def ini(self, text: str) -> Path:
        path = Path(self.mktemp()).resolve()
        path.write_text(text)
        return path

    def test_each_worker_takes_its_ports_plus_its_index_and_its_own_id(self) -> None:
        path = self.ini(
            "[transceiver]\nmedia_listen = 10.0.0.5:3479\nadvertised_address = 10.0.0.1:3478\n"
            f"[route]\nkeys = {KEY}\naddress = 10.0.0.5:3479\n"
            f"[internal]\nlisten = tcp:8081:interface=10.0.0.5\nsecret = {SECRET}\n"
            "[registry]\nenabled = yes\nid = tx-a\n[process]\nworkers = 2\n"
        )
        settings = _options(path).settings
        worker = transceiver_tap.worker_settings(settings, 1, None, "")
        self.assertEqual(worker.transceiver.media_listen, ("10.0.0.5", 3480))
        # Behind relays, the candidate is the relay's: every worker names the same.
        self.assertEqual(worker.transceiver.advertised_address, ("10.0.0.1", 3478))
        self.assertEqual(worker.route.address, ("10.0.0.5", 3480))
        self.assertEqual(worker.internal.listen, "tcp:8082:interface=10.0.0.5")
        self.assertEqual(worker.internal.reachable_at, ("10.0.0.5", 8082))
        self.assertEqual(worker.registry.id, "tx-a-w1")
        self.assertEqual(
            transceiver_tap.worker_apis(settings.internal, 2), {0: ("10.0.0.5", 8081), 1: ("10.0.0.5", 8082)}
        )

    def test_without_route_keys_clients_reach_each_worker_directly(self) -> None:
        path = self.ini("[transceiver]\nmedia_listen = 0.0.0.0:3479\nadvertised_address = 192.0.2.7:3479\n")
        worker = transceiver_tap.worker_settings(_options(path).settings, 1, (LOOPBACK, 9001), "x" * 40)
        self.assertEqual(worker.transceiver.advertised_address, ("192.0.2.7", 3480))
        # No [internal] listen: the supervisor chose a loopback port and made the secret.
        self.assertEqual((worker.internal.listen, worker.internal.secret), ("tcp:9001:interface=127.0.0.1", "x" * 40))

    def test_an_internal_api_without_a_port_to_offset_is_refused(self) -> None:
        path = self.ini(
            f"[internal]\nlisten = tcp:0:interface=127.0.0.1\nsecret = {SECRET}\n[process]\nworkers = 2\n"
        )
        with self.assertRaisesRegex(usage.UsageError, r"\[internal\] listen: with \[process\] workers above 1"):
            _options(path)

    def test_the_supervisor_runs_workers_and_serves_signaling_only(self) -> None:
        path = self.ini("[transceiver]\nmedia_listen = 127.0.0.1:3479\n[process]\nworkers = 2\n")
        top = list(transceiver_tap.makeService(_options(path), MemoryReactorClock()))
        supervisor = next(s for s in top if isinstance(s, WorkerSupervisor))
        self.assertEqual(supervisor.count, 2)
        self.assertEqual(supervisor.stop_signal, signal.SIGINT)
        argv = supervisor.argv_for(1)
        self.assertEqual(argv[-6:-4], ["--config", str(path)])
        self.assertEqual((argv[-4], argv[-2:]), ("--internal", ["--worker", "1"]))
        self.assertFalse(any(isinstance(s, internet.UDPServer) for s in top))
        # A worker: its own media socket, no client-facing signaling, watching its supervisor.
        self.patch(os, "environ", {**os.environ, INTERNAL_SECRET_ENV: "x" * 40})
        worker = list(transceiver_tap.makeService(
            _options(path, "--worker", "1", "--internal", "127.0.0.1:9001"), MemoryReactorClock()
        ))
        (media,) = [s for s in worker if isinstance(s, internet.UDPServer)]
        self.assertEqual((media.kwargs["interface"], media.args[0]), (LOOPBACK, 3480))
        listeners = [s for s in worker if isinstance(s, internet.StreamServerEndpointService)]
        self.assertEqual(len(listeners), 1)  # the internal API only
        self.assertTrue(any(isinstance(s, Membership) for s in worker))
        self.assertTrue(any(isinstance(s, ParentWatch) for s in worker))


class _Transport:
    def __init__(self, reactor: "_ProcessReactor", pid: int) -> None:
        self.reactor = reactor
        self.pid = pid

    def signalProcess(self, number: int) -> None:  # noqa: N802 - Twisted's name
        self.reactor.signals.append((self.pid, number))


class _ProcessReactor(MemoryReactorClock):
    """A clock that spawns pretend processes and records the signals sent to them."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Any] = []
        self.signals: list[tuple[int, int]] = []

    def spawnProcess(self, proto: Any, executable: Any, args: Any = (), env: Any = None, path: Any = None,  # noqa: N802
                     uid: Any = None, gid: Any = None, usePTY: Any = False, childFDs: Any = None) -> Any:  # noqa: N803
        proto.transport = _Transport(self, 100 + len(self.spawned))
        self.spawned.append(proto)
        return proto.transport


class SupervisorDrainTests(SynchronousTestCase):
    """SIGTERM on the supervisor: the first drains every worker, the second stops at once."""

    def setUp(self) -> None:
        from twisted.internet.interfaces import IReactorProcess
        from zope.interface import directlyProvides, providedBy

        self.reactor = _ProcessReactor()
        directlyProvides(self.reactor, providedBy(self.reactor), IReactorProcess)
        self.supervisor = WorkerSupervisor(self.reactor, 2, lambda i: ["worker", str(i)], {}, restart_delay=0.5)
        self.supervisor.startService()
        self.stopped: list[bool] = []
        self.drain = SupervisorDrain(self.supervisor, lambda: self.stopped.append(True))

    def end(self, proto: Any) -> None:
        from twisted.internet.error import ProcessDone
        from twisted.python.failure import Failure

        proto.processEnded(Failure(ProcessDone(0)))

    def test_first_sigterm_drains_and_the_supervisor_stops_when_every_worker_has_exited(self) -> None:
        first, second = self.reactor.spawned
        self.drain.sigterm()
        self.assertTrue(self.drain.draining)
        self.assertEqual(self.reactor.signals, [(100, signal.SIGTERM), (101, signal.SIGTERM)])
        self.end(first)
        self.reactor.advance(5)
        self.assertEqual(len(self.reactor.spawned), 2)  # a drained worker is not started again
        self.assertEqual(self.stopped, [])
        self.end(second)
        self.assertEqual(self.stopped, [True])

    def test_second_sigterm_stops_at_once(self) -> None:
        self.drain.sigterm()
        self.drain.sigterm()
        self.assertEqual(self.stopped, [True])

    def test_a_worker_that_dies_while_serving_is_started_again(self) -> None:
        self.end(self.reactor.spawned[1])
        self.reactor.advance(1.0)  # restart_delay, doubled: it died young
        self.assertEqual(len(self.reactor.spawned), 3)


def _owner(result: dict[str, Any]) -> str:
    """The worker (``w<i>``) a call was placed on, from its Location."""
    return str(result["location"]).rsplit("/", 1)[-1].split(".")[0]


def _workers(supervisor: int) -> dict[int, tuple[int, str, str]]:
    """Each worker of ``supervisor``: its pid, and the internal API and secret the supervisor handed it."""
    found = {}
    for pid in _children(supervisor):
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        environ = dict(
            e.decode().partition("=")[::2] for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e
        )
        api = argv[argv.index("--internal") + 1] if "--internal" in argv else ""
        found[int(argv[-2])] = (pid, api, environ.get(INTERNAL_SECRET_ENV, ""))
    return found


def _held(supervisor: int) -> dict[int, int]:
    """Calls each worker holds now, from its own internal API (the supervisor's view lags a second)."""
    held = {}
    for index, (_, api, secret) in _workers(supervisor).items():
        status, body = _request("GET", f"http://{api}/internal/v1/sessions", secret)
        assert status == 200, body
        held[index] = len(json.loads(body)["sessions"])
    return held


def _write(tmp: Path, http_port: int, media_port: int, extra: str = "") -> Path:
    ini = tmp / "transceiver.ini"
    ini.write_text(
        f"[signaling]\nlisten = tcp:{http_port}:interface={LOOPBACK}\ncalls_per_minute_per_address = 0\n"
        f"[transceiver]\nmedia_listen = {LOOPBACK}:{media_port}\n{NO_LOAD_LIMITS_INI}"
        "[speech]\ndetector = energy\n"
        "[process]\nworkers = 2\n" + extra
    )
    return ini


def _wait_serving(base: str, count: int) -> None:
    """Until the supervisor's /readyz says ``count`` workers serve."""
    _until(f"{count} workers serving", lambda: http_get(base + "/readyz", timeout=1.0)[1].endswith(
        f"serving={count}\n".encode()), timeout=60)


@pytest.mark.integration
class TransceiverWorkersTests(TestCase):
    """The transceiver service with two workers behind its own signaling."""

    def test_calls_on_both_a_killed_worker_is_replaced_and_sigterm_drains(self) -> None:
        from tests import pion_peer

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        http_port, media_port = free_tcp_port(), free_udp_run(2)
        ini = _write(tmp, http_port, media_port)
        base = f"http://{LOOPBACK}:{http_port}"
        offer = base + "/v1/realtime/calls"

        def spawn(seconds: float) -> Any:
            return pion_peer.spawn_call(offer, seconds=seconds, datachannel="", audio="tone", log_dir=tmp)

        with running_service(["voiceedge-transceiver", "--config", str(ini)], base + "/healthz",
                             log_dir=tmp, timeout=60, may_exit=True) as proc:
            _wait_serving(base, 2)
            self.assertEqual(len(_children(proc.pid)), 2)
            # Four short calls: the front door spreads them, each gets the echo back.
            results = [call.wait() for call in [spawn(3) for _ in range(4)]]
            for result in results:
                self.assertTrue(result["ok"], result["error"])
                self.assertGreater(result["in_packets"], 50, result)
            self.assertEqual({_owner(r) for r in results}, {"w0", "w1"})
            # The supervisor's /metrics carries each worker's own, labelled: both took calls.
            metrics = scrape_metrics(base)
            self.assertEqual(metrics["voiceedge_workers_scraped"], {"worker=w0": 1.0, "worker=w1": 1.0})
            packets = metrics["voiceedge_transceiver_packets_in_total"]
            self.assertGreater(min(packets["worker=w0"], packets["worker=w1"]), 100, packets)

            # Four longer calls, two on each worker; worker 1 is killed under its two.
            _until("the first calls gone from the front door's view", lambda: http_get(base + "/healthz")[1]
                   == b"ok sessions=0\n")
            calls = [spawn(8) for _ in range(4)]
            self.assertEqual(_until("four calls up", lambda: (lambda h: h if sum(h.values()) == 4 else None)(
                _held(proc.pid)), timeout=30), {0: 2, 1: 2})
            victim = _workers(proc.pid)[1][0]
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            _until("worker 1 replaced", lambda: (lambda c: len(c) == 2 and victim not in c)(_children(proc.pid)))
            replaced = time.monotonic() - killed
            results = [call.wait() for call in calls]
            survivors = [r for r in results if _owner(r) == "w0"]
            self.assertEqual(len(survivors), 2, [_owner(r) for r in results])
            for result in survivors:
                # Worker 0's calls went on to their end, echo and all.
                self.assertTrue(result["ok"], result["error"])
                self.assertGreater(result["last_inbound_rtp_ms"], result["duration_ms"] - 1500, result)
                self.assertGreater(result["in_packets"], 250, result)
            print(f"\nworker 1 killed under two calls: a new one started {replaced:.1f} s later;"
                  f" worker 0's calls received {[r['in_packets'] for r in survivors]} packets")
            _wait_serving(base, 2)

            # SIGTERM drains: /readyz fails and new calls are refused at once, the live call goes on.
            live = spawn(4)
            _until("a call up", lambda: sum(_held(proc.pid).values()) == 1, timeout=30)
            pids = _children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            _until("draining", lambda: http_get(base + "/readyz", timeout=1.0)[0] == 503, timeout=5)
            refused = pion_peer.call(offer, seconds=1, datachannel="", audio="tone", log_dir=tmp)
            self.assertEqual(refused["http_status"], 503, refused)
            result = live.wait()
            self.assertTrue(result["ok"], result["error"])
            self.assertGreater(result["last_inbound_rtp_ms"], result["duration_ms"] - 1500, result)
            # Its workers exit once they hold no call, and the supervisor after them.
            self.assertEqual(proc.wait(timeout=20), 0)
            for pid in pids:
                _until(f"worker {pid} gone", lambda pid=pid: not _alive(pid), timeout=5)

    def test_fleet_workers_are_in_the_registry_with_their_own_ids(self) -> None:
        redis = start_redis(self)
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        http_port, media_port, api_port = free_tcp_port(), free_udp_run(2), _free_tcp_pair()
        ini = _write(tmp, http_port, media_port, (
            f"[route]\nkeys = 1:{'B' * 43}=\n"
            f"[internal]\nlisten = tcp:{api_port}:interface={LOOPBACK}\nsecret = {SECRET}\n"
            f"[registry]\nenabled = yes\nid = tx\nheartbeat = 0.5\nttl = 2\n"
            f"[redis]\naddress = {LOOPBACK}:{redis.port}\n"
        ))
        base = f"http://{LOOPBACK}:{http_port}"

        def records() -> dict[str, dict[str, Any]]:
            found = {}
            for name in ("tx-w0", "tx-w1"):
                reply = redis.command("GET", f"voiceedge:transceiver:{name}")
                if reply.startswith(b"$-1"):
                    continue
                found[name] = json.loads(reply.split(b"\r\n")[1])
            return found

        with running_service(["voiceedge-transceiver", "--config", str(ini)], base + "/healthz",
                             log_dir=tmp, timeout=60, may_exit=True) as proc:
            _until("both workers registered", lambda: len(records()) == 2, timeout=60)
            found = records()
            self.assertEqual(
                {(r["id"], r["api"], r["media"], r["state"]) for r in found.values()},
                {("tx-w0", f"{LOOPBACK}:{api_port}", f"{LOOPBACK}:{media_port}", "serving"),
                 ("tx-w1", f"{LOOPBACK}:{api_port + 1}", f"{LOOPBACK}:{media_port + 1}", "serving")},
            )
            # Drain works per worker: worker 1 drains (its record says so), exits empty and is started again.
            old = _workers(proc.pid)[1][0]
            status, _ = _request("POST", f"http://{LOOPBACK}:{api_port + 1}/internal/v1/drain", SECRET)
            self.assertEqual(status, 202)
            _until("worker 1 started again", lambda: (lambda c: len(c) == 2 and old not in c)(_children(proc.pid)),
                   timeout=30)
            _until("worker 1 serving again", lambda: records().get("tx-w1", {}).get("state") == "serving", timeout=30)
            # SIGTERM on the supervisor: every worker drains, removes its record and exits.
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=20), 0)
            self.assertEqual(records(), {})


def _request(method: str, url: str, secret: str) -> tuple[int, bytes]:
    """An internal API request with the fleet secret: (status, body)."""
    request = urllib.request.Request(
        url, data=b"" if method == "POST" else None, method=method, headers={"Authorization": f"Bearer {secret}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2.0) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())
