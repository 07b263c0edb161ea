# -*- test-case-name: tests.test_workers -*-
"""Worker processes: they start, share the public port, and a worker's death costs its flows only their next packet.

Unit tests of :mod:`voiceedge.workers` (the ``workers`` value, port offsets),
then the relay service for real with ``[process] workers = 2`` and Redis:
sixteen clients from sixteen source ports make flows through it to a stand-in
transceiver that echoes their packets; both workers carry some of them; one
worker is killed with SIGKILL; every client then sends one packet at a time
until one comes back. The survivor drops exactly one packet per client of the
dead worker (the one that made it look their flow up in Redis, which it
finds), and the supervisor starts the worker again. No assertion about speed.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.redis_support import start_redis
from tests.support import (
    free_tcp_port,
    free_udp_port,
    http_get,
    running_service,
    wait_workers_serving,
    write_allinone_config,
)
from tests.test_relay_protocol import binding_request
from voiceedge.wire import encap
from voiceedge.wire.route_token import Route, RouteTokenCodec
from voiceedge.workers import AUTO, offset_port, offset_strport, parse_workers, process_count

LOOPBACK = "127.0.0.1"
CLIENTS = 16
WAIT = 2.0  # seconds one packet may take to come back before it counts as lost


class WorkersValueTests(SynchronousTestCase):
    """``workers``: auto or a count; what each worker takes of the configured ports."""

    def test_auto_is_one_per_core(self) -> None:
        self.assertEqual(parse_workers(" Auto "), AUTO)
        self.assertEqual(process_count(AUTO), os.cpu_count() or 1)
        self.assertEqual(process_count(parse_workers("3")), 3)

    def test_bad_counts_are_refused(self) -> None:
        for text in ("0", "-1", "257", "many", ""):
            self.assertRaises(ValueError, parse_workers, text)

    def test_ports_are_offset_by_the_worker_index(self) -> None:
        self.assertEqual(offset_port(("10.0.0.1", 4000), 2), ("10.0.0.1", 4002))
        self.assertEqual(offset_port(("10.0.0.1", 0), 2), ("10.0.0.1", 0))
        self.assertEqual(offset_strport("tcp:9090:interface=127.0.0.1", 1), "tcp:9091:interface=127.0.0.1")
        self.assertEqual(offset_strport("tcp:0:interface=127.0.0.1", 1), "tcp:0:interface=127.0.0.1")
        self.assertEqual(offset_strport("unix:/tmp/x", 1), "unix:/tmp/x")


def _free_tcp_pair() -> int:
    """A TCP port p with p + 1 free too (worker 0 and worker 1 listen on them)."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind((LOOPBACK, 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind((LOOPBACK, port + 1))
                except OSError:
                    continue
                return int(port)
    raise AssertionError("no two consecutive free TCP ports")


def _health(port: int) -> dict[str, str]:
    status, body = http_get(f"http://{LOOPBACK}:{port}/healthz", timeout=1.0)
    assert status == 200, body
    words = body.decode().split()[1:]
    return dict(w.partition("=")[::2] for w in words)


def _until(what: str, check: object, timeout: float = 20.0) -> object:
    """Poll ``check()`` until it returns something true (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()  # type: ignore[operator]
        except (OSError, AssertionError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


class EchoSink:
    """A stand-in transceiver: answers checks and echoes media back through the relay worker that sent it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)
        self.via: dict[tuple[str, int], tuple[str, int]] = {}  # client -> relay worker's internal socket

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()  # type: ignore[no-any-return]

    def pump(self) -> None:
        """Answer everything waiting."""
        while True:
            try:
                data, relay = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            envelope, payload = encap.decode(data)
            self.via[envelope.client] = relay
            reply = b"\x01\x01" + payload[2:] if payload[:2] == b"\x00\x01" else payload
            self.sock.sendto(encap.encode(envelope, reply), relay)


@pytest.mark.integration
class RelayWorkersTests(TestCase):
    """The relay service with two workers on one public port."""

    def test_workers_share_the_port_and_a_dead_workers_flows_continue(self) -> None:
        redis = start_redis(self)
        udp_port, http_port = free_udp_port(), _free_tcp_pair()
        secret = os.urandom(32)
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        ini = tmp / "relay.ini"
        ini.write_text(
            f"[relay]\npublic_listen = {LOOPBACK}:{udp_port}\ninternal_listen = {LOOPBACK}:0\n"
            f"[token]\nkeys = 1:{base64.b64encode(secret).decode()}\n"
            f"[redis]\nenabled = yes\naddress = {LOOPBACK}:{redis.port}\nlookup_rate = 1000\n"
            f"[http]\nlisten = tcp:{http_port}:interface={LOOPBACK}\n"
            # Not started again before the losses are counted: a new worker on the port
            # moves some clients once more (tested below, once it is back).
            "[process]\nworkers = 2\nrestart_delay = 10\n"
        )
        sink = EchoSink()
        self.addCleanup(sink.sock.close)
        clients = []
        for _ in range(CLIENTS):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.bind((LOOPBACK, 0))
            client.setblocking(False)
            self.addCleanup(client.close)
            clients.append(client)
        relay = (LOOPBACK, udp_port)
        codec = RouteTokenCodec({1: secret}, 1)

        def round_trip(client: socket.socket, packet: bytes) -> bool:
            """Send one packet; whether it came back (through relay and sink) within WAIT."""
            client.sendto(packet, relay)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                sink.pump()
                try:
                    if client.recv(65536)[2:] == packet[2:]:
                        return True
                except BlockingIOError:
                    time.sleep(0.005)
            return False

        health = f"http://{LOOPBACK}:{http_port}/healthz"
        with running_service(["voiceedge-relay", "--config", str(ini)], health, log_dir=tmp) as supervisor:
            pids = {i: int(_until(f"worker {i} up", lambda i=i: _health(http_port + i).get("pid"))) for i in (0, 1)}  # type: ignore[arg-type]
            self.assertEqual(len(set(pids.values()) | {supervisor.pid}), 3)
            # Every client makes a flow (a check answered through the relay) and sends media on it.
            for n, client in enumerate(clients):
                # A token each: one session's credentials make at most 8 flows.
                token = codec.issue(Route(0, sink.address))
                self.assertTrue(round_trip(client, binding_request(token)), f"client {n}: check not answered")
                self.assertTrue(round_trip(client, b"\x80\x6f" + os.urandom(40)), f"client {n}: media not echoed")
            names = {c.getsockname(): c for c in clients}
            before = {client: sink.via[name] for name, client in names.items()}
            workers_used = set(before.values())
            # The kernel spread the clients over both workers' shared port.
            self.assertEqual(len(workers_used), 2, workers_used)
            # The flows are in Redis before a worker dies (written on confirmation).
            _until("flows in Redis", lambda: int(redis.command("DBSIZE")[1:].split(b"\r")[0]) >= CLIENTS)

            os.kill(pids[1], signal.SIGKILL)
            _until("worker 1 gone", lambda: not _alive(pids[1]))
            # Every client sends one packet at a time until one comes back. The dead
            # worker's clients' packets now reach the survivor, which drops the first
            # of each (an unknown source), finds the flow in Redis, and carries on.
            before_counts = _counters(http_port)
            waiting = list(clients)
            for _ in range(10):
                waiting = _round(sink, waiting, relay)
                if not waiting:
                    break
            self.assertEqual(waiting, [], "media did not come back after the worker died")
            after_counts = _counters(http_port)
            moved = [c for c in clients if sink.via[c.getsockname()] != before[c]]
            stayed = [c for c in clients if c not in moved]
            dropped = after_counts["dropped"] - before_counts["dropped"]
            found = after_counts["found"] - before_counts["found"]
            print(f"\n{len(moved)} clients moved off the dead worker; the survivor dropped {dropped} packets"
                  f" as from unknown sources and found {found} flows in Redis; {len(stayed)} stayed")
            self.assertTrue(moved and stayed)
            # Exactly one packet per moved client: the one that made the survivor look it up.
            self.assertEqual((dropped, found), (len(moved), len(moved)))
            # The supervisor started worker 1 again.
            # restart_delay, doubled when the worker had lived less than the supervisor's
            # 10 s (its own start can take seconds on a loaded machine), then its start.
            new = int(_until("worker 1 back", lambda: _health(http_port + 1).get("pid"), timeout=50.0))  # type: ignore[arg-type]
            self.assertNotEqual(new, pids[1])
            survivors = [pids[0], new]
        # Stopping the supervisor stops its workers.
        for pid in survivors:
            _until(f"worker {pid} stopped", lambda pid=pid: not _alive(pid))


def _counters(http_port: int) -> dict[str, int]:
    """Worker 0's packets dropped as from unknown sources, and its Redis lookups that found a flow."""
    status, body = http_get(f"http://{LOOPBACK}:{http_port}/metrics", timeout=2.0)
    assert status == 200, body
    counts = {"dropped": 0, "found": 0}
    for line in body.decode().splitlines():
        if line.startswith("voiceedge_relay_redis_lookups_total") and 'result="hit"' in line:
            counts["found"] = int(float(line.rsplit(" ", 1)[1]))
        if line.startswith("voiceedge_relay_drops_total") and 'reason="not_stun_unknown_source"' in line:
            counts["dropped"] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def _round(sink: EchoSink, clients: list[socket.socket], relay: tuple[str, int]) -> list[socket.socket]:
    """Each client sends one packet; the clients whose packet did not come back within WAIT."""
    sent = {}
    for client in clients:
        packet = b"\x80\x6f" + os.urandom(40)
        client.sendto(packet, relay)
        sent[client] = packet
    deadline = time.monotonic() + WAIT
    while sent and time.monotonic() < deadline:
        sink.pump()
        for client in list(sent):
            try:
                while True:
                    if client.recv(65536) == sent[client]:
                        del sent[client]
                        break
            except BlockingIOError:
                pass
        time.sleep(0.005)
    return list(sent)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux: /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _worker(pid: int, index: int) -> int:
    """The pid of worker ``index`` of the supervisor ``pid`` (its argv ends ``--worker <index>``)."""
    for child in _children(pid):
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if argv[-3:-1] == [b"--worker", str(index).encode()]:
            return child
    raise AssertionError(f"no worker {index} under {pid}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.integration
class AllInOneWorkersTests(TestCase):
    """``twistd voiceedge`` with two workers behind its signaling."""

    def test_calls_spread_over_workers_and_a_dead_worker_is_replaced(self) -> None:
        from tests import pion_peer

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        http_port, media_port = free_tcp_port(), free_udp_port()
        ini = write_allinone_config(
            tmp, http_port, media_port, process={"workers": 2}, signaling={"calls_per_minute_per_address": 0}
        )
        base = f"http://{LOOPBACK}:{http_port}"

        def calls(n: int) -> list[dict[str, object]]:
            running = [
                pion_peer.spawn_call(base + "/v1/realtime/calls", seconds=3, datachannel="", audio="tone", log_dir=tmp)
                for _ in range(n)
            ]
            return [call.wait() for call in running]

        with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp, timeout=60) as proc:
            workers = _until("two workers", lambda: (lambda c: c if len(c) == 2 else None)(_children(proc.pid)))
            # Calls are placed once the front door has read both workers.
            results = _until("calls on both workers", lambda: (lambda r: r if _owners(r) == {"w0", "w1"} else None)(calls(4)), timeout=60)
            for result in results:  # type: ignore[union-attr]
                self.assertTrue(result["ok"], result["error"])
            os.kill(workers[1], signal.SIGKILL)  # type: ignore[index]
            _until("worker replaced", lambda: (lambda c: len(c) == 2 and workers[1] not in c)(_children(proc.pid)))  # type: ignore[index]
            # New calls go on, on both workers once the new one answers.
            results = _until("calls on both workers again", lambda: (lambda r: r if _owners(r) == {"w0", "w1"} else None)(calls(4)), timeout=60)
            for result in results:  # type: ignore[union-attr]
                self.assertTrue(result["ok"], result["error"])
            last = _children(proc.pid)
        # Stopping the supervisor stops its workers.
        for pid in last:
            _until(f"worker {pid} stopped", lambda pid=pid: not _alive(pid))


    def test_a_keys_calls_are_freed_however_they_end_on_a_worker(self) -> None:
        """With keys and one live call per key: the place comes back when the caller leaves, and when its worker dies.

        Workers tell the front door nothing: it compares each key's recorded calls with the
        workers' own lists at every read of their load (once a second).
        """
        from tests.fleet_support import Caller
        from tests.test_local_fleet import KEY, request
        from voiceedge.signaling import keys

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        (tmp / "api-keys").write_text(keys.hash_line("web", KEY) + "\n")
        http_port, media_port = free_tcp_port(), free_udp_port()
        ini = write_allinone_config(
            tmp, http_port, media_port, process={"workers": 2},
            signaling={"calls_per_minute_per_address": 0, "api_keys_file": tmp / "api-keys", "max_calls_per_key": 1},
        )
        base = f"http://{LOOPBACK}:{http_port}"

        def place_held() -> bool:
            # 429 while the key's one place is held; once free, the bogus offer reaches a worker (400).
            status, _ = request("POST", base + "/v1/realtime/calls", KEY, b"v=0\r\n", "application/sdp")
            self.assertIn(status, (429, 400))
            return status == 429

        with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp, timeout=60) as proc:
            _until("two workers", lambda: len(_children(proc.pid)) == 2)

            def connected() -> Caller | None:
                # 503 until the front door has read its workers once.
                attempt = Caller(base, 60, token=KEY, delete=False)
                self.addCleanup(attempt.kill)
                return attempt if attempt.next_event(("connected", "refused"))["event"] == "connected" else None

            caller = _until("a first call", connected)
            assert isinstance(caller, Caller)
            self.assertTrue(place_held())
            caller.process.send_signal(signal.SIGTERM)  # it leaves without a DELETE
            left = time.monotonic()
            caller.finish()
            _until("the place freed after the caller left", lambda: not place_held(), timeout=10)
            leave_freed = time.monotonic() - left

            second = Caller(base, 60, token=KEY)
            self.addCleanup(second.kill)
            owner = second.next_event(("connected",))["owner"]
            self.assertTrue(place_held())
            os.kill(_worker(proc.pid, int(str(owner)[1:])), signal.SIGKILL)
            killed = time.monotonic()
            _until("the place freed after its worker died", lambda: not place_held(), timeout=15)
            kill_freed = time.monotonic() - killed
            second.kill()
        print(f"all-in-one workers: a key's place freed {leave_freed:.1f} s after its caller left without DELETE,"
              f" {kill_freed:.1f} s after kill -9 of its worker")


def _owners(results: list[dict[str, object]]) -> set[str]:
    """The workers (first part of the public session id) the calls were placed on; only if every call went well."""
    if not all(r.get("ok") for r in results):
        return set()
    return {str(r["location"]).rsplit("/", 1)[-1].split(".")[0] for r in results}


def _worker_metrics(pid: int) -> dict[str, dict[str, float]]:
    """A worker's ``/metrics`` from its internal API (its argv's ``--internal``, its environment's secret)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from voiceedge.fleet.local import INTERNAL_SECRET_ENV

    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    address = argv[argv.index(b"--internal") + 1].decode()
    environ = dict(
        item.partition(b"=")[::2] for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if item
    )
    secret = environ[INTERNAL_SECRET_ENV.encode()].decode()
    request = urllib.request.Request(f"http://{address}/metrics", headers={"Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(request, timeout=2.0) as response:
        body = response.read().decode()
    result: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            result.setdefault(sample.name, {})[key] = sample.value
    return result


def _relay_counts(pids: list[int]) -> dict[str, float]:
    """The workers' relay counters that show steering, summed over the workers."""
    total = {"to_transceiver": 0.0, "cross_worker": 0.0, "written": 0.0, "taken": 0.0, "on": 0.0}
    for pid in pids:
        m = _worker_metrics(pid)
        total["to_transceiver"] += m["voiceedge_relay_packets_total"]["direction=to_transceiver"]
        total["cross_worker"] += m["voiceedge_relay_cross_worker_packets_total"][""]
        total["written"] += m["voiceedge_relay_steering_entries_total"]["event=written"]
        total["taken"] += m["voiceedge_relay_steering_entries_total"]["event=taken"]
        total["on"] += m["voiceedge_relay_steering"].get("state=on", 0.0)
    return total


@pytest.mark.integration
class AllInOneSteeringTests(TestCase):
    """``twistd voiceedge`` with two workers steering by owner: after a call's first packets none crosses workers."""

    def test_steered_calls_packets_reach_their_owner(self) -> None:
        """After each flow's first packets none crosses workers; a killed worker's replacement steers again, the other's calls go on."""
        from tests import pion_peer
        from voiceedge.relay.bpf import bpf_available

        why = bpf_available()
        if why is not None:
            raise unittest.SkipTest(f"no steering here: {why}")
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        http_port, media_port = free_tcp_port(), free_udp_port()
        ini = write_allinone_config(
            tmp, http_port, media_port, process={"workers": 2}, relay={"steer_by_owner": "yes"},
            signaling={"calls_per_minute_per_address": 0},
        )
        base = f"http://{LOOPBACK}:{http_port}"
        calls = 8  # each first hashes to its owner's worker with odds 1/2: all 8 with odds 1/256
        with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp, timeout=60) as proc:
            pids = _until("two workers", lambda: (lambda c: c if len(c) == 2 else None)(_children(proc.pid)))
            assert isinstance(pids, list)
            _until("both workers steering", lambda: _relay_counts(pids)["on"] == 2)
            wait_workers_serving(base, 2)  # the front door places calls on both (503 before)
            running = [
                pion_peer.spawn_call(base + "/v1/realtime/calls", seconds=14, datachannel="", audio="tone", log_dir=tmp)
                for _ in range(calls)
            ]
            for call in running:
                self.addCleanup(call.stop)
            # Every call's flow confirmed and steered, then a second of media after that: the first packets are past.
            seen: list[dict[str, float]] = []

            def all_steered() -> dict[str, float] | None:
                counts = _relay_counts(pids)
                seen.append(counts)
                ended = [call for call in running if call.process.poll() is not None]
                if ended:  # not an AssertionError: _until stops at once
                    raise RuntimeError(f"a call ended before steady media: {ended[0].wait()}")
                return counts if counts["written"] >= calls else None

            try:
                steered = _until("every flow steered", all_steered, timeout=40)
            except AssertionError:
                raise unittest.FailTest(f"not every flow steered: {seen[-1:]}") from None
            assert isinstance(steered, dict)
            first = _until("media after steering", lambda: (lambda t: t if t["to_transceiver"] >= steered["to_transceiver"] + calls * 50 else None)(_relay_counts(pids)), timeout=20)
            assert isinstance(first, dict)
            second = _until("two more seconds of media", lambda: (lambda t: t if t["to_transceiver"] >= first["to_transceiver"] + calls * 100 else None)(_relay_counts(pids)), timeout=20)
            assert isinstance(second, dict)
            # Worker 1 dies mid-call: its socket leaves the sockarray (its clients fall to the hash; their
            # calls died with its transceiver), worker 0's clients stay steered to worker 0.
            killed = _worker(proc.pid, 1)
            os.kill(killed, signal.SIGKILL)
            replaced = _until("worker 1 replaced", lambda: (lambda c: c if len(c) == 2 and killed not in c else None)(_children(proc.pid)), timeout=40)
            assert isinstance(replaced, list)
            _until("the new worker 1 steering", lambda: _relay_counts(replaced)["on"] == 2, timeout=30)
            results = [call.wait() for call in running]
        on_w0 = [r for r in results if str(r.get("location") or "").rsplit("/", 1)[-1].startswith("w0.")]
        self.assertTrue(on_w0, results)
        for result in on_w0:
            self.assertTrue(result["ok"], result["error"])
        print(f"\nsteering: {first['written']:.0f} entries written, {first['taken']:.0f} flows taken by their owner"
              f" from the other worker; {first['cross_worker']:.0f} datagrams crossed workers before steering,"
              f" {second['cross_worker'] - first['cross_worker']:.0f} of"
              f" {second['to_transceiver'] - first['to_transceiver']:.0f} after")
        self.assertEqual(second["cross_worker"] - first["cross_worker"], 0)

    def test_without_bpf_auto_runs_as_before_and_yes_refuses_to_start(self) -> None:
        """Without CAP_BPF (setpriv drops it): ``auto`` serves calls by the hash, says so once; ``yes`` does not start."""
        from tests import pion_peer
        from tests.support import REPO_ROOT, twistd_command

        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise unittest.SkipTest("no setpriv (util-linux) to drop CAP_BPF")
        wrapper = [setpriv, "--bounding-set=-bpf,-sys_admin,-perfmon"]
        probe = subprocess.run(
            [*wrapper, sys.executable, "-c", "from voiceedge.relay.bpf import bpf_available; print(bpf_available())"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        )
        if probe.stdout.strip() == "None":
            raise unittest.SkipTest("bpf() is allowed even without CAP_BPF here (unprivileged BPF)")
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        http_port, media_port = free_tcp_port(), free_udp_port()

        ini = write_allinone_config(
            tmp, http_port, media_port, process={"workers": 2}, relay={"steer_by_owner": "yes"},
            signaling={"calls_per_minute_per_address": 0},
        )
        refused = subprocess.run(
            [*wrapper, *twistd_command(["voiceedge", "--config", str(ini)])],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        )
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("[relay] steer_by_owner = yes, but bpf() refused it: Operation not permitted",
                      refused.stdout + refused.stderr)

        ini = write_allinone_config(
            tmp, http_port, media_port, process={"workers": 2}, signaling={"calls_per_minute_per_address": 0},
        )
        base = f"http://{LOOPBACK}:{http_port}"
        with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp, timeout=60,
                             wrapper=wrapper) as proc:
            pids = _until("two workers", lambda: (lambda c: c if len(c) == 2 else None)(_children(proc.pid)))
            assert isinstance(pids, list)
            offs = _until("both workers report steering off", lambda: [
                m["voiceedge_relay_steering"] for m in map(_worker_metrics, pids)
            ])
            self.assertEqual(offs, [{"state=off": 1.0}] * 2)
            wait_workers_serving(base, 2)
            result = pion_peer.call(base + "/v1/realtime/calls", seconds=2, datachannel="", audio="tone", log_dir=tmp)
            self.assertTrue(result["ok"], result["error"])
        log = (tmp / "voiceedge.log").read_text()
        self.assertEqual(log.count("packets are not steered to the worker owning their call"), 1, log[-3000:])
