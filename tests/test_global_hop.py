# -*- test-case-name: tests.test_global_hop -*-
"""The global hop on loopback, for real: an aiortc call whose client talks to cluster 1's relay, owned by cluster 2."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest
from twisted.trial.unittest import TestCase

from tests.support import NO_LOAD_LIMITS_INI, free_tcp_port, free_udp_port, running_service, scrape_metrics

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"


class GlobalHopCallTests(TestCase):
    """relay A (cluster 1) -> relay B (cluster 2) -> transceiver (cluster 2), and back."""

    timeout = 120

    def test_call_through_another_clusters_relay(self) -> None:
        from tests.aiortc_peer import echo_call

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        key = "1:" + base64.b64encode(os.urandom(32)).decode()
        public_a, public_b, global_b = free_udp_port(), free_udp_port(), free_udp_port()
        http_a, http_b, signaling = free_tcp_port(), free_tcp_port(), free_tcp_port()
        common = f"[token]\nkeys = {key}\n[redis]\nenabled = no\n"
        (tmp / "relay-a.ini").write_text(
            f"[relay]\npublic_listen = {LOOPBACK}:{public_a}\ncluster = 1\n{common}"
            f"[http]\nlisten = tcp:{http_a}:interface={LOOPBACK}\n"
            f"[global]\nnetworks = 127.0.0.0/8\nrelays = 2={LOOPBACK}:{global_b}\n"
            # One process: the counts below are read from its /metrics (a second worker
            # would carry the flow half the time, and worker 0's counters would say 0).
            "[process]\nworkers = 1\n"
        )
        (tmp / "relay-b.ini").write_text(
            f"[relay]\npublic_listen = {LOOPBACK}:{public_b}\ncluster = 2\n{common}"
            f"[http]\nlisten = tcp:{http_b}:interface={LOOPBACK}\n"
            f"[global]\nlisten = {LOOPBACK}:{global_b}\nnetworks = 127.0.0.0/8\n"
        )
        # The transceiver belongs to cluster 2, but its answers name relay A: the client's relay.
        (tmp / "transceiver.ini").write_text(
            f"[signaling]\nlisten = tcp:{signaling}:interface={LOOPBACK}\n"
            f"[transceiver]\nmedia_listen = {LOOPBACK}:0\nadvertised_address = {LOOPBACK}:{public_a}\n"
            f"relay_networks = 127.0.0.0/8\n{NO_LOAD_LIMITS_INI}[route]\nkeys = {key}\ncluster = 2\n[process]\nworkers = 1\n"
        )
        base = f"http://{LOOPBACK}:{signaling}"
        with running_service(["voiceedge-relay", "--config", str(tmp / "relay-a.ini")],
                             f"http://{LOOPBACK}:{http_a}/healthz", log_dir=tmp / "a"), \
                running_service(["voiceedge-relay", "--config", str(tmp / "relay-b.ini")],
                                f"http://{LOOPBACK}:{http_b}/healthz", log_dir=tmp / "b"), \
                running_service(["voiceedge-transceiver", "--config", str(tmp / "transceiver.ini")],
                                base + "/healthz", log_dir=tmp / "t"):
            result = asyncio.run(echo_call(base, seconds=3.0))
            metrics_a = scrape_metrics(f"http://{LOOPBACK}:{http_a}")
            metrics_b = scrape_metrics(f"http://{LOOPBACK}:{http_b}")
        print(f"connected through the global hop in {result.connected_after * 1000:.0f} ms;"
              f" {result.packets_received}/{result.packets_sent} packets echoed")
        self.assertGreater(result.frames_decoded, 100)
        self.assertGreaterEqual(result.packets_received, result.packets_sent * 0.9)
        self.assertEqual(result.delete_status, 204)
        hop_b = metrics_b["voiceedge_relay_global_hop_packets_total"]
        self.assertGreater(hop_b["direction=from_relay"], 100)
        self.assertGreater(hop_b["direction=to_relay"], 100)
        # Relay B never sent anything to a client itself: everything went back through A.
        self.assertEqual(metrics_b["voiceedge_relay_packets_total"]["direction=to_client"],
                         hop_b["direction=to_relay"])
        self.assertGreater(metrics_a["voiceedge_relay_packets_total"]["direction=to_client"], 100)
        self.assertEqual(metrics_a["voiceedge_relay_drops_total"].get("reason=wrong_cluster", 0), 0)
