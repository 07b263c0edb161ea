"""Hostile traffic at the relay's public port while a real call runs through it."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import TestCase

from tests.ice_client import binding_request
from tests.support import (
    free_tcp_port,
    free_udp_port,
    health_sessions,
    running_service,
    scrape_metrics,
    write_allinone_config,
)
from voiceedge.wire.route_token import Route, RouteTokenCodec

MAX_FLOWS = 300


def metrics(base: str) -> dict[str, dict[str, float]]:
    """``/metrics`` of the all-in-one, parsed."""
    return scrape_metrics(base)


def transceiver_drops(snapshot: dict[str, dict[str, float]]) -> float:
    """Everything the transceiver has dropped, all reasons."""
    return sum(snapshot.get("voiceedge_transceiver_drops_total", {}).values())


def rss_kib(pid: int) -> int:
    """Resident memory of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def call_in_background(base: str, seconds: float) -> tuple[threading.Thread, list]:
    """Run an aiortc echo call in a thread; its result lands in the returned list."""
    from tests.aiortc_peer import echo_call

    results: list = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(echo_call(base, seconds))))
    thread.start()
    return thread, results


def stun_with_username(username: str) -> bytes:
    """A well-formed binding request whose integrity is keyed with a password nobody has."""
    return binding_request(username, base64.b64encode(os.urandom(18)).decode())


@pytest.mark.integration
class RelayAbuseTests(TestCase):
    """Forged, random and spoofed traffic at the all-in-one's relay port while a real aiortc call runs."""

    timeout = 120
    backend = "python"  # the relay's public port: VOICEEDGE_RELAY_BATCH_IO (the subclass runs recvmmsg)

    def setUp(self) -> None:
        """Skip where this backend cannot run."""
        from tests.relay_support import require_backend

        require_backend(self.backend)

    def start_allinone(self) -> tuple[str, tuple[str, int], int]:
        """The all-in-one with a small flow table, stopped at cleanup: (base URL, relay address, pid)."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        http_port, media_port = free_tcp_port(), free_udp_port()
        # The test opens 60 sessions from one address at once: past the per-address call limit.
        ini = write_allinone_config(
            tmp_path, http_port, media_port, relay={"max_flows": MAX_FLOWS},
            signaling={"calls_per_minute_per_address": 0},
        )
        base = f"http://127.0.0.1:{http_port}"
        service = running_service(
            ["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp_path,
            env={"VOICEEDGE_RELAY_BATCH_IO": self.backend},
        )
        proc = service.__enter__()
        self.addCleanup(service.__exit__, None, None, None)
        self.assertEqual(metrics(base)["voiceedge_relay_batch_io"], {f"backend={self.backend}": 1.0})
        return base, ("127.0.0.1", media_port), proc.pid

    def test_forged_tokens_and_garbage_reach_no_transceiver_and_get_no_reply(self) -> None:
        """Thousands of random and forged tokens and non-STUN datagrams: nothing forwarded, nothing back."""
        base, relay, _ = self.start_allinone()
        # The call outlasts the attack, and the transceiver's counters are read while it is up:
        # its own setup and its last packets after hangup are the transceiver's to drop, not
        # the attacker's.
        call_seconds = 12.0
        thread, results = call_in_background(base, call_seconds)
        started = time.monotonic()
        deadline = started + 10
        while health_sessions(base + "/healthz") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # past DTLS: the caller's early datagrams are not the attack's
        before = metrics(base)

        def drops_since(before: Any, after: Any = None) -> float:
            after = after if after is not None else metrics(base)
            return float(sum(after.get("voiceedge_relay_drops_total", {}).values()) - sum(
                before.get("voiceedge_relay_drops_total", {}).values()
            ))

        rng = random.Random(7)
        forger = RouteTokenCodec({1: os.urandom(32)}, 1)  # the right format, the wrong fleet secret
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.1", 0))
        sent = 0
        try:
            for i in range(3000):
                kind = i % 4
                if kind == 0:  # random ufrag
                    packet = stun_with_username(base64.b64encode(rng.randbytes(27)).decode() + ":abcd")
                elif kind == 1:  # a token sealed with another fleet's key, naming a loopback "transceiver"
                    token = forger.issue(Route(0, ("127.0.0.1", rng.randrange(1024, 65535))))
                    packet = stun_with_username(token + ":abcd")
                elif kind == 2:  # random bytes that look like nothing
                    packet = bytes([rng.randrange(64, 256)]) + rng.randbytes(rng.randrange(0, 300))
                else:  # random bytes in STUN's first-byte range
                    packet = bytes([rng.randrange(0, 4)]) + rng.randbytes(rng.randrange(0, 300))
                attacker.sendto(packet, relay)
                sent += 1
                if sent % 200 == 0:
                    # Paced by the relay itself: the next batch waits until this one is read, so
                    # the kernel's socket buffer never drops any, however loaded the machine is.
                    deadline = time.monotonic() + 10
                    while drops_since(before) < sent and time.monotonic() < deadline:
                        time.sleep(0.01)
            attacker.settimeout(1.0)
            with self.assertRaises(socket.timeout):
                attacker.recvfrom(2048)  # zero bytes come back
        finally:
            attacker.close()
        during = metrics(base)
        self.assertLess(time.monotonic() - started, call_seconds, "the attack outlasted the call")
        thread.join(30)
        after = metrics(base)
        # The relay dropped them all, and counted why...
        self.assertGreaterEqual(drops_since(before, after), sent)
        # ...so the transceiver saw none of them.
        self.assertEqual(transceiver_drops(during), transceiver_drops(before))
        (result,) = results
        self.assertGreaterEqual(result.packets_received, 0.95 * result.packets_sent, result)
        self.assertEqual(health_sessions(base + "/healthz"), 0)

    def test_spoofed_sources_with_valid_tokens_stay_within_the_flow_bound(self) -> None:
        """Many sources presenting real sessions' tokens, none able to confirm a flow: the table
        stays within its bound (pending flows evicted oldest first), each token within its
        per-ufrag cap, and a live call is unaffected."""
        base, relay, pid = self.start_allinone()
        import urllib.request

        from tests.test_host import CLIENT_CERT, offer_sdp

        # Real, valid tokens: the ufrags of answers to offers of our own.
        ufrags = []
        for _ in range(60):
            request = urllib.request.Request(
                base + "/v1/realtime/calls", data=offer_sdp(CLIENT_CERT.fingerprint).encode(),
                headers={"Content-Type": "application/sdp"}, method="POST",
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                answer = response.read().decode()
            ufrags.append(next(l.split(":", 1)[1] for l in answer.splitlines() if l.startswith("a=ice-ufrag:")))

        thread, results = call_in_background(base, 6.0)
        rss_before = rss_kib(pid)
        flows_seen = []
        sent = 0
        for n, ufrag in enumerate(ufrags):
            for i in range(10):  # two more sources than a token may have flows
                source = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                source.bind((f"127.{1 + n}.{i}.{1 + i}", 0))
                source.sendto(stun_with_username(f"{ufrag}:x{i}"), relay)
                source.close()
                sent += 1
            time.sleep(0.005)
            if n % 10 == 9:
                flows_seen.append(sum(metrics(base)["voiceedge_relay_flows"].values()))
        thread.join(30)
        after = metrics(base)
        self.assertLessEqual(max(flows_seen), MAX_FLOWS, flows_seen)
        self.assertEqual(after["voiceedge_relay_flows_max"][""], MAX_FLOWS)
        drops = after["voiceedge_relay_drops_total"]
        # 8 flows per token were made (480 > 300: the oldest pending ones were evicted)...
        self.assertGreaterEqual(sum(after["voiceedge_relay_flows_created_total"].values()), 60 * 8)
        # ...and the 2 extra sources of each token refused.
        self.assertGreaterEqual(drops["reason=too_many_sources"], 60 * 2)
        self.assertLess(rss_kib(pid) - rss_before, 50 * 1024)
        (result,) = results
        self.assertGreaterEqual(result.packets_received, 0.95 * result.packets_sent, result)


class RelayAbuseTestsRecvmmsg(RelayAbuseTests):
    """The same attacks at a relay reading with recvmmsg/sendmmsg (the compiled helper)."""

    backend = "recvmmsg"
