# -*- test-case-name: tests.test_fleet_netns -*-
"""A fleet over network namespaces: two regions, a shared front door and Redis with Sentinel, clients apart.

Region a (cluster 1) and region b (cluster 2) each have a relay and two transceivers. The front
door and Redis (a master, a replica and a Sentinel) are shared. Each region's relay reaches the
other's through a user-space UDP shim that adds 40 ms each way (the kernel has no netem). Clients
sit in namespaces of their own: one in region a's networks, one in region b's, and one at an
"edge" whose region has region b's relay but no transceivers (its calls fall back to region a, so
its packets cross the global hop). The test checks that calls land in their region and spread,
that an edge call connects through the global hop, that SIGTERM drains a transceiver while its
call goes on, that kill -9 of a transceiver ends its calls and nothing else, and that a Sentinel
failover in mid-call loses no call; it prints what it measured.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from twisted.trial.unittest import TestCase

from tests.fleet_support import Caller, ready, wait_until
from tests.netns import Host, Network, require_namespaces
from tests.redis_support import redis_command
from tests.support import NO_LOAD_LIMITS_INI, http_get

pytestmark = pytest.mark.integration

SECRET = "netns-fleet-secret-" + "x" * 24
HOP_DELAY_MS = 40


class TwoRegionFleetTests(TestCase):
    """One long scenario: starting eleven processes once is the expensive part."""

    timeout = 300

    def setUp(self) -> None:
        require_namespaces()
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir(parents=True)
        self.net = Network(self)

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def start_redis(self) -> tuple[Host, Host]:
        core, replica_host = self.net.host("redis", 0, 2), self.net.host("replica", 0, 3)
        for host, extra in ((core, []), (replica_host, ["--replicaof", core.ip, "6379"])):
            (self.tmp / host.name).mkdir()  # each its own --dir: a full sync writes an RDB file there
            host.start(["redis-server", "--port", "6379", "--bind", host.ip, "--save", "", "--appendonly", "no", "--protected-mode", "no",
                        "--replica-announce-ip", host.ip, "--dir", str(self.tmp / host.name), *extra], self.tmp / f"redis-{host.name}.log")
        wait_until(lambda: b"master_link_status:up" in redis_command(6379, "INFO", "replication", host=replica_host.ip),
                   15, "the replica syncs")
        conf = self.write("sentinel.conf",
                          f"port 26379\nbind {core.ip}\nprotected-mode no\ndir {self.tmp}\nsentinel monitor voiceedge {core.ip} 6379 1\n"
                          "sentinel down-after-milliseconds voiceedge 1000\nsentinel failover-timeout voiceedge 3000\n")
        self.sentinel = self.net.host("sentinel", 0, 4)
        conf.write_text(conf.read_text().replace(f"bind {core.ip}", f"bind {self.sentinel.ip}"))
        self.sentinel.start(["redis-server", str(conf), "--sentinel"], self.tmp / "sentinel.log")
        # A Sentinel learns of replicas from the master's INFO, which it reads every 10 s.
        wait_until(lambda: b"slaves=1" in redis_command(26379, "INFO", "sentinel", host=self.sentinel.ip),
                   40, "the Sentinel sees the replica")
        return core, replica_host

    def test_two_regions(self) -> None:
        net = self.net
        master, replica = self.start_redis()
        sentinels = f"{self.sentinel.ip}:26379"
        key = "1:" + base64.b64encode(os.urandom(32)).decode()
        shim = net.host("shim", 3, 1)
        relays = {"a": net.host("relay-a", 1, 1), "b": net.host("relay-b", 2, 1)}
        clusters = {"a": 1, "b": 2}
        # Each relay reaches the other region's relay through the shim (40 ms each way).
        shim_ports = {"a": 4001, "b": 4002}  # a's way to b, b's way to a
        for region, other in (("a", "b"), ("b", "a")):
            shim.start([sys.executable, "-m", "tests.impair", "--listen", f"{shim.ip}:{shim_ports[region]}",
                        "--upstream", f"{relays[other].ip}:3479", "--delay-ms", str(HOP_DELAY_MS)],
                       self.tmp / f"shim-{region}.log")
        for region, other in (("a", "b"), ("b", "a")):
            relay = relays[region]
            ini = self.write(f"relay-{region}.ini", (
                f"[relay]\npublic_listen = {relay.ip}:3478\ninternal_listen = {relay.ip}:0\n"
                f"transceiver_networks = {net.cidr}\ncluster = {clusters[region]}\n"
                f"[token]\nkeys = {key}\n[redis]\nenabled = yes\nsentinels = {sentinels}\n"
                f"[http]\nlisten = tcp:9090:interface={relay.ip}\n"
                f"[global]\nlisten = {relay.ip}:3479\nnetworks = {net.cidr}\n"
                f"relays = {clusters[other]}={shim.ip}:{shim_ports[region]}\n"))
            relay.twistd(["voiceedge-relay", "--config", str(ini)], self.tmp / f"relay-{region}.log")
        transceivers: dict[str, Host] = {}
        processes = {}
        for region, third in (("a", 1), ("b", 2)):
            for n in (1, 2):
                name = f"{region}{n}"
                host = net.host(f"tx-{name}", third, 10 + n)
                transceivers[name] = host
                ini = self.write(f"tx-{name}.ini", (
                    "[signaling]\nlisten = tcp:8080:interface=127.0.0.1\n"
                    f"[transceiver]\nmedia_listen = {host.ip}:3479\nadvertised_address = {relays[region].ip}:3478\n"
                    f"relay_networks = {net.cidr}\n{NO_LOAD_LIMITS_INI}[route]\nkeys = {key}\ncluster = {clusters[region]}\n"
                    f"[internal]\nlisten = tcp:8081:interface={host.ip}\nsecret = {SECRET}\n"
                    f"[registry]\nenabled = yes\nid = {name}\nregion = {region}\nheartbeat = 1\nttl = 3\n"
                    f"[redis]\nsentinels = {sentinels}\ntimeout = 0.5\n[drain]\ngrace_period = 120\n"
                    # One process each: the scenario drains and kills whole transceivers.
                    "[process]\nworkers = 1\n"))
                processes[name] = host.twistd(["voiceedge-transceiver", "--config", str(ini)], self.tmp / f"tx-{name}.log")
        door = net.host("door", 0, 10)
        clients = {"a": net.host("client-a", 4, 1), "b": net.host("client-b", 5, 1), "edge": net.host("client-edge", 6, 1)}
        ini = self.write("signaling.ini", (
            # Open on purpose: this test is about the fleet, tests/test_http_security.py about keys.
            f"[signaling]\nlisten = tcp:8080:interface={door.ip}\nauth = none\n"
            f"[fleet]\nsecret = {SECRET}\ndefault_region = a\nrefresh_interval = 0.5\n"
            f"[redis]\nsentinels = {sentinels}\ntimeout = 0.5\n"
            f"[region.a]\nrelay = {relays['a'].ip}:3478\nnetworks = {net.address(4, 0)}/24\n"
            f"[region.b]\nrelay = {relays['b'].ip}:3478\nnetworks = {net.address(5, 0)}/24\n"
            f"[region.edge]\nrelay = {relays['b'].ip}:3478\nnetworks = {net.address(6, 0)}/24\nfallback = a\n"))
        door.twistd(["voiceedge-signaling", "--config", str(ini)], self.tmp / "signaling.log")
        url = f"http://{door.ip}:8080"
        try:
            wait_until(lambda: "serving=4" in ready(url), 30, "the front door sees four transceivers")
        except AssertionError:
            self.dump()
            raise

        callers: list[Caller] = []

        def call(region: str, seconds: float = 120) -> Caller:
            caller = Caller(url, seconds, clients[region].prefix(), clients[region].ip)
            callers.append(caller)
            self.addCleanup(caller.kill)
            return caller

        try:
            self.scenario(url, call, relays, transceivers, processes, master, replica)
        except BaseException:
            self.dump()
            raise
        finally:
            for caller in callers:
                if caller.process.poll() is None:
                    caller.process.send_signal(signal.SIGTERM)

    def scenario(self, url, call, relays, transceivers, processes, master, replica) -> None:  # type: ignore[no-untyped-def]
        # Spread: each region's calls land there, one per transceiver, with their region's relay.
        a1, a2, b1, b2 = call("a"), call("a"), call("b"), call("b")
        connected = {c: c.next_event(("connected",), 40) for c in (a1, a2, b1, b2)}
        self.assertEqual({connected[a1]["owner"], connected[a2]["owner"]}, {"a1", "a2"})
        self.assertEqual({connected[b1]["owner"], connected[b2]["owner"]}, {"b1", "b2"})
        for c in (a1, a2):
            self.assertEqual(connected[c]["candidate"], f"{relays['a'].ip}:3478")
        for c in (b1, b2):
            self.assertEqual(connected[c]["candidate"], f"{relays['b'].ip}:3478")
        local_setup = sorted(connected[c]["after"] for c in (a1, a2, b1, b2))

        # The global hop: the edge client gets region b's relay, its call lives in region a.
        edge = call("edge")
        hop = edge.next_event(("connected",), 40)
        self.assertIn(hop["owner"], {"a1", "a2"})
        self.assertEqual(hop["candidate"], f"{relays['b'].ip}:3478")
        self.assertGreater(edge.frames_after(2), 60, "audio through the global hop")
        print(f"setup (offer to connected): same region {local_setup[0]:.3f}-{local_setup[-1]:.3f} s;"
              f" through the global hop with {HOP_DELAY_MS} ms each way between relays {hop['after']:.3f} s")
        metrics = {}
        status, body = http_get(f"http://{relays['b'].ip}:9090/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b'voiceedge_relay_global_hop_packets_total{direction="to_relay"}', body)

        # Drain: SIGTERM a1's owner; a new region-a call goes to the other; a1's call goes on.
        drained = connected[a1]["owner"]
        other = "a2" if drained == "a1" else "a1"
        processes[drained].send_signal(signal.SIGTERM)
        wait_until(lambda: "serving=3" in ready(url), 5, "the front door sees the drain")
        a3 = call("a")
        self.assertEqual(a3.next_event(("connected",), 40)["owner"], other)
        self.assertGreater(a1.frames_after(2), 60, "the draining transceiver's call goes on")

        # kill -9 b1's owner: its call loses audio, every other call goes on.
        killed = connected[b1]["owner"]
        killed_at = time.monotonic()
        processes[killed].send_signal(signal.SIGKILL)
        processes[killed].wait(timeout=5)
        wait_until(lambda: "transceivers=3" in ready(url), 6, "the killed transceiver's record expires")
        print(f"kill -9: the front door stopped choosing {killed} {time.monotonic() - killed_at:.1f} s after"
              " (ttl 3 s, heartbeat 1 s, refresh 0.5 s)")
        b1.frames_after(0.5)
        self.assertEqual(b1.frames_after(2), 0, "a killed transceiver's call has no audio")
        for c in (a1, a2, b2, edge):
            self.assertGreater(c.frames_after(1), 25, "the other calls go on")

        # Sentinel failover in mid-call: kill -9 the Redis master.
        live = (a1, a2, b2, edge)
        failover_at = time.monotonic()
        master.processes[0].kill()
        master.processes[0].wait(timeout=5)
        for c in live:
            self.assertGreater(c.frames_after(1), 25, "calls go on while Redis fails over")
        wait_until(lambda: b"role:master" in redis_command(6379, "INFO", "replication", host=replica.ip), 20,
                   "the Sentinel promotes the replica")
        promoted = time.monotonic() - failover_at
        accepted = None
        deadline = time.monotonic() + 30
        while accepted is None:
            self.assertLess(time.monotonic(), deadline, "no new call accepted after the failover")
            attempt = call("b", 5)
            event = attempt.next_event(("connected", "refused"), 40)
            if event["event"] == "connected":
                accepted = time.monotonic() - failover_at
            else:
                time.sleep(0.5)
        for c in live:
            self.assertGreater(c.frames_after(1), 25, "no call lost in the failover")
        print(f"sentinel failover mid-call: replica promoted {promoted:.1f} s after the master died;"
              f" a new call accepted {accepted:.1f} s after; {len(live)} live calls kept their audio")

        # Hang up: every live call ends cleanly with 204.
        for name, c in (("a1", a1), ("a2", a2), ("a3", a3), ("b2", b2), ("edge", edge)):
            c.process.send_signal(signal.SIGTERM)
            done = c.finish(60)
            self.assertEqual(done["delete"], 204, (name, c.events[0], done, ready(url)))
        wait_until(lambda: processes[drained].poll() is not None, 15, "the drained transceiver exits when empty")

    def dump(self) -> None:
        """Print the services' logs and the relays' drops (a failure's context)."""
        for name in ("relay-a", "relay-b"):
            host = self.net.hosts.get(name)
            if host is not None:
                try:
                    status, body = http_get(f"http://{host.ip}:9090/metrics")
                    lines = [l for l in body.decode().splitlines() if ("drops" in l or "packets" in l) and not l.startswith("#") and not l.endswith(" 0.0")]
                    print(f"----- {name} metrics -----\n" + "\n".join(lines))
                except OSError as e:
                    print(f"{name} metrics: {e}")
        for log in sorted(self.tmp.glob("*.log")):
            print(f"----- {log.name} -----\n{log.read_text()[-3000:]}")
