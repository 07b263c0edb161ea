# -*- test-case-name: tests.test_local_fleet -*-
"""etc/local-fleet as it ships (ports moved to free ones): front door, relay, two transceivers and Redis.

Calls spread over the two transceivers; SIGTERM drains one (its call goes on, new calls go to the
other, it exits when its call ends); kill -9 of the other ends its calls and nothing else, and the
front door stops choosing it within the registry TTL (then 503 with Retry-After).
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.fleet_support import Caller, ready, wait_until
from tests.redis_support import start_redis
from tests.support import REPO_ROOT, free_tcp_port, free_udp_port, http_get, running_service

FLEET = REPO_ROOT / "etc" / "local-fleet"
UDP_PORTS = (3478, 3479, 3480)
TCP_PORTS = (8080, 9090, 8081, 8082, 8091, 8092)


def moved(text: str, ports: dict[int, int]) -> str:
    """``text`` with every 127.0.0.1:<port> and tcp:<port>: moved to its free port."""
    text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.get(int(m.group(1)), int(m.group(1)))}", text)
    return re.sub(r"tcp:(\d+):", lambda m: f"tcp:{ports.get(int(m.group(1)), int(m.group(1)))}:", text)


class LocalFleetTests(TestCase):
    """The four INI files of etc/local-fleet, run as four twistd processes."""

    timeout = 180

    def test_spread_drain_and_kill(self) -> None:
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        redis = start_redis(self)
        ports = {p: free_udp_port() for p in UDP_PORTS} | {p: free_tcp_port() for p in TCP_PORTS}
        ports[6379] = redis.port
        for name in ("signaling", "relay", "transceiver-a", "transceiver-b"):
            (tmp / f"{name}.ini").write_text(moved((FLEET / f"{name}.ini").read_text(), ports))
        url = f"http://127.0.0.1:{ports[8080]}"

        def service(plugin: str, name: str, health: str):  # type: ignore[no-untyped-def]
            return running_service(
                [plugin, "--config", str(tmp / f"{name}.ini")], health, log_dir=tmp / name,
                may_exit=plugin == "voiceedge-transceiver",
            )

        with service("voiceedge-relay", "relay", f"http://127.0.0.1:{ports[9090]}/healthz"), \
                service("voiceedge-transceiver", "transceiver-a", f"http://127.0.0.1:{ports[8081]}/readyz") as a, \
                service("voiceedge-transceiver", "transceiver-b", f"http://127.0.0.1:{ports[8082]}/readyz") as b, \
                service("voiceedge-signaling", "signaling", url + "/healthz"):
            wait_until(lambda: "serving=2" in ready(url), 15, "the front door sees both transceivers")
            processes = {"a": a, "b": b}

            # Spread: two calls land on the two transceivers.
            first, second = Caller(url, 60), Caller(url, 60)
            self.addCleanup(first.kill)
            self.addCleanup(second.kill)
            owners = {first.next_event(("connected",))["owner"], second.next_event(("connected",))["owner"]}
            self.assertEqual(owners, {"a", "b"})
            self.assertGreater(first.frames_after(2), 50)

            # Drain: SIGTERM the first call's transceiver.
            drained = first.events[0]["owner"]
            other = "b" if drained == "a" else "a"
            processes[drained].send_signal(signal.SIGTERM)
            wait_until(lambda: "serving=1" in ready(url), 5, "the front door sees the drain")
            third = Caller(url, 60)
            self.addCleanup(third.kill)
            self.assertEqual(third.next_event(("connected",))["owner"], other)
            self.assertGreater(first.frames_after(2), 50, "the draining transceiver's call goes on")
            status, stats = http_get(url + first.events[0]["location"])
            self.assertEqual(status, 200)
            self.assertIn(f'"transceiver": "{drained}"'.encode(), stats)
            first.process.send_signal(signal.SIGTERM)  # the caller hangs up...
            self.assertEqual(first.finish()["delete"], 204)
            wait_until(lambda: processes[drained].poll() is not None, 10, "the drained transceiver exits")
            self.assertEqual(processes[drained].returncode, 0)

            # kill -9 the other: its calls stop, the front door stops choosing it within the TTL.
            killed_at = time.monotonic()
            processes[other].send_signal(signal.SIGKILL)
            processes[other].wait(timeout=5)
            second.frames_after(1.5)  # what was in flight, and the report lag
            self.assertEqual(second.frames_after(2), 0, "a killed transceiver's call has no audio")
            wait_until(lambda: "transceivers=0" in ready(url), 3 + 1 + 2, "the dead transceiver's record expires")
            gone_after = time.monotonic() - killed_at
            refused = Caller(url, 5)
            self.addCleanup(refused.kill)
            event = refused.next_event(("refused",))
            self.assertEqual((event["status"], event["retry_after"]), (503, "2"))
            print(f"the front door stopped choosing the killed transceiver {gone_after:.1f} s after kill -9"
                  " (registry ttl 3 s, heartbeat 1 s, refresh 1 s)")
