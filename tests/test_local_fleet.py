# -*- test-case-name: tests.test_local_fleet -*-
"""etc/local-fleet as it ships (ports moved to free ones): front door, relay, two transceivers and Redis.

Calls spread over the two transceivers; SIGTERM drains one (its call goes on, new calls go to the
other, it exits when its call ends); kill -9 of the other ends its calls and nothing else, and the
front door stops choosing it within the registry TTL (then 503 with Retry-After).

With API keys and two front doors on one Redis: a client secret minted through one opens a call
through the other, either reads and ends the other's calls, and a key's cap on live calls holds
across both and is freed however a call ends (the caller leaves, a DELETE through the other door,
kill -9 of its transceiver).
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from twisted.trial.unittest import TestCase

from tests.fleet_support import Caller, ready, wait_until
from tests.redis_support import RedisProcess, start_redis
from tests.support import NO_LOAD_LIMITS_INI, REPO_ROOT, free_tcp_port, free_udp_port, http_get, running_service
from voiceedge.signaling import keys

pytestmark = pytest.mark.integration

FLEET = REPO_ROOT / "etc" / "local-fleet"
UDP_PORTS = (3478, 3479, 3480)
TCP_PORTS = (8080, 9090, 8081, 8082, 8091, 8092)
KEY = "sk_" + "k" * 43


def moved(text: str, ports: dict[int, int]) -> str:
    """``text`` with every 127.0.0.1:<port> and tcp:<port>: moved to its free port (and no load limits)."""
    text = text.replace("[transceiver]\n", "[transceiver]\n" + NO_LOAD_LIMITS_INI)
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


def request(method: str, url: str, token: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
    """One HTTP request with ``Authorization: Bearer <token>``: (status, body), any status included."""
    req = urllib.request.Request(url, data=body or None, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def held(redis: RedisProcess, key: str) -> int:
    """Places key ``key`` holds in the shared ledger (its calls and reservations)."""
    reply = redis.command("ZCARD", f"voiceedge:calls-of-key:{key}")
    return int(reply[1:].strip() or 0)


class TwoFrontDoorsTests(TestCase):
    """Two front doors with API keys and max_calls_per_key = 1 over one Redis, relay and two transceivers."""

    timeout = 180

    def test_calls_and_secrets_are_shared_and_ends_free_the_key(self) -> None:
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        redis = start_redis(self)
        ports = {p: free_tcp_port() for p in TCP_PORTS} | {p: free_udp_port() for p in UDP_PORTS}
        ports[6379] = redis.port
        second_door = free_tcp_port()
        (tmp / "api-keys").write_text(keys.hash_line("web", KEY) + "\n")
        for name in ("relay", "transceiver-a", "transceiver-b"):
            (tmp / f"{name}.ini").write_text(moved((FLEET / f"{name}.ini").read_text(), ports))
        door = moved((FLEET / "signaling.ini").read_text(), ports).replace(
            "[signaling]\n",
            f"[signaling]\napi_keys_file = {tmp / 'api-keys'}\nmax_calls_per_key = 1\n"
            "calls_per_minute_per_address = 0\n",
        )
        (tmp / "door-1.ini").write_text(door)
        (tmp / "door-2.ini").write_text(door.replace(f"tcp:{ports[8080]}:", f"tcp:{second_door}:"))
        one, two = f"http://127.0.0.1:{ports[8080]}", f"http://127.0.0.1:{second_door}"

        def service(plugin: str, name: str, health: str):  # type: ignore[no-untyped-def]
            return running_service(
                [plugin, "--config", str(tmp / f"{name}.ini")], health, log_dir=tmp / name,
                may_exit=plugin == "voiceedge-transceiver",
            )

        with service("voiceedge-relay", "relay", f"http://127.0.0.1:{ports[9090]}/healthz"), \
                service("voiceedge-transceiver", "transceiver-a", f"http://127.0.0.1:{ports[8081]}/readyz") as a, \
                service("voiceedge-transceiver", "transceiver-b", f"http://127.0.0.1:{ports[8082]}/readyz") as b, \
                service("voiceedge-signaling", "door-1", one + "/healthz"), \
                service("voiceedge-signaling", "door-2", two + "/healthz"):
            for url in (one, two):
                wait_until(lambda: "serving=2" in ready(url), 15, "the front door sees both transceivers")
            processes = {"a": a, "b": b}

            # A client secret minted through door 1 opens a call through door 2.
            status, body = request("POST", one + "/v1/realtime/client_secrets", KEY)
            self.assertEqual(status, 200)
            secret = json.loads(body)["value"]
            first = Caller(two, 60, token=secret, delete=False)
            self.addCleanup(first.kill)
            location = first.next_event(("connected",))["location"]
            self.assertGreater(first.frames_after(1), 20)
            # Door 1 knows its owner (the secret, and the key that issued it), and nobody else.
            self.assertEqual(request("GET", one + location, secret)[0], 200)
            self.assertEqual(request("GET", one + location, KEY)[0], 200)
            self.assertEqual(request("GET", one + location, "sk_" + "x" * 43)[0], 401)
            # The key's one place is taken, seen from door 1 too (429 before any offer is read).
            status, _ = request("POST", one + "/v1/realtime/calls", KEY, b"v=0\r\n", "application/sdp")
            self.assertEqual(status, 429)
            self.assertEqual(request("POST", one + "/v1/realtime/calls", secret, b"v=0\r\n", "application/sdp")[0], 401)

            # The caller leaves without a DELETE: the transceiver ends the call, the doors hear it.
            first.process.send_signal(signal.SIGTERM)
            left = time.monotonic()
            self.assertIsNone(first.finish()["delete"])
            wait_until(lambda: held(redis, "web") == 0, 10, "the key's place is freed after the caller left")
            leave_freed = time.monotonic() - left

            # A call opened through door 1 is ended through door 2.
            second = Caller(one, 60, token=KEY)
            self.addCleanup(second.kill)
            location = second.next_event(("connected",))["location"]
            self.assertEqual(request("DELETE", two + location, KEY)[0], 204)
            self.assertEqual(held(redis, "web"), 0, "freed before the 204")
            self.assertEqual(request("DELETE", one + location, KEY)[0], 404)
            second.kill()

            # kill -9 of the transceiver that holds the key's call: its place is freed by the record's expiry.
            third = Caller(two, 60, token=KEY)
            self.addCleanup(third.kill)
            owner = third.next_event(("connected",))["owner"]
            self.assertGreater(third.frames_after(1), 20)
            self.assertEqual(held(redis, "web"), 1)
            processes[owner].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            processes[owner].wait(timeout=5)
            wait_until(lambda: held(redis, "web") == 0, 3 + 1 + 1 + 5, "the killed transceiver's call is released")
            kill_freed = time.monotonic() - killed
            third.kill()
            fourth = Caller(one, 30, token=KEY)
            self.addCleanup(fourth.kill)
            self.assertNotEqual(fourth.next_event(("connected",))["owner"], owner)
            fourth.kill()
            print(f"a key's place freed {leave_freed:.2f} s after its caller left without DELETE;"
                  f" {kill_freed:.1f} s after kill -9 of its transceiver (registry ttl 3 s, refresh 1 s)")
