# -*- test-case-name: tests.test_steering -*-
"""Steering: the client's address behind trusted proxies, its region, and the transceiver chosen."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_registry import record
from voiceedge.config import SettingError
from voiceedge.fleet.registry import DRAINING
from voiceedge.fleet.settings import RegionSettings
from voiceedge.fleet.steering import RegionMap, choose_transceiver
from voiceedge.signaling.client_address import client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


class ClientAddressTests(SynchronousTestCase):
    """X-Forwarded-For is believed only as far as trusted proxies wrote it."""

    def test_direct_client(self) -> None:
        self.assertEqual(client_address("198.51.100.7", [], PROXIES), ip("198.51.100.7"))

    def test_untrusted_peer_cannot_choose_its_address(self) -> None:
        self.assertEqual(client_address("198.51.100.7", [b"203.0.113.9"], PROXIES), ip("198.51.100.7"))

    def test_walks_left_through_trusted_proxies_only(self) -> None:
        # The client wrote a fake first entry; the LB (10.1.1.1) appended the real one.
        headers = [b"192.0.2.66, 203.0.113.9", b"10.9.9.9"]
        self.assertEqual(client_address("10.1.1.1", headers, PROXIES), ip("203.0.113.9"))
        self.assertEqual(client_address("10.1.1.1", [b"10.2.2.2, 10.3.3.3"], PROXIES), ip("10.2.2.2"))

    def test_garbage_stops_at_the_proxy(self) -> None:
        self.assertEqual(client_address("10.1.1.1", [b"nonsense"], PROXIES), ip("10.1.1.1"))
        self.assertEqual(client_address("10.1.1.1", [b"203.0.113.9, unknown"], PROXIES), ip("10.1.1.1"))

    def test_ipv6_and_mapped(self) -> None:
        self.assertEqual(client_address("fd00::1", [b"2001:db8::5"], PROXIES), ip("2001:db8::5"))
        self.assertEqual(client_address("10.1.1.1", [b"::ffff:203.0.113.9"], PROXIES), ip("203.0.113.9"))
        self.assertIsNone(client_address("/run/voiceedge.sock", [], PROXIES))


class RegionTests(SynchronousTestCase):
    """Longest prefix wins; the default takes the rest."""

    def setUp(self) -> None:
        self.regions = RegionMap(
            {
                "eu": RegionSettings(("192.0.2.1", 3478), (ipaddress.ip_network("10.1.0.0/16"),)),
                "us": RegionSettings(("192.0.2.2", 3478), (ipaddress.ip_network("10.0.0.0/8"),)),
            },
            default="us",
        )

    def test_region_for(self) -> None:
        self.assertEqual(self.regions.region_for(ip("10.1.2.3")), "eu")
        self.assertEqual(self.regions.region_for(ip("10.2.2.3")), "us")
        self.assertEqual(self.regions.region_for(ip("198.51.100.1")), "us")
        self.assertEqual(self.regions.region_for(ip("fd00::1")), "us")
        self.assertEqual(self.regions.region_for(None), "us")
        self.assertEqual(self.regions.relay_for("eu"), ("192.0.2.1", 3478))

    def test_default_must_exist(self) -> None:
        with self.assertRaises(SettingError):
            RegionMap({}, default="mars")


class ChooseTests(SynchronousTestCase):
    """The least-loaded serving transceiver with room in the region; spill elsewhere when allowed."""

    def test_least_loaded_in_region(self) -> None:
        records = [
            record("a", sessions=10), record("b", sessions=2), record("c", sessions=1, region="us"),
        ]
        self.assertEqual(choose_transceiver(records, "eu").id, "b")  # type: ignore[union-attr]

    def test_the_limit_nearest_decides(self) -> None:
        """Fewer sessions on a busier core lose to more sessions on an idle one: load is the nearer limit."""
        records = [record("a", sessions=5, cpu=0.8), record("b", sessions=40, cpu=0.2)]
        self.assertEqual(choose_transceiver(records, "eu").id, "b")  # type: ignore[union-attr]
        # Idle, the CPU's small wander does not outweigh a session.
        records = [record("a", sessions=1, cpu=0.01), record("b", sessions=0, cpu=0.04)]
        self.assertEqual(choose_transceiver(records, "eu").id, "b")  # type: ignore[union-attr]
        # Nearly full of sessions, the CPU no longer saves it.
        records = [record("a", sessions=5, cpu=0.8), record("b", sessions=95, cpu=0.2)]
        self.assertEqual(choose_transceiver(records, "eu").id, "a")  # type: ignore[union-attr]

    def test_skips_draining_full_overloaded_and_excluded(self) -> None:
        records = [
            record("a", state=DRAINING, sessions=0),
            record("b", sessions=100),
            record("c", cpu=0.95, sessions=0),
            record("d", sessions=50),
            record("e", sessions=1),
        ]
        self.assertEqual(choose_transceiver(records, "eu", exclude={"e"}).id, "d")  # type: ignore[union-attr]

    def test_spill(self) -> None:
        records = [record("a", region="us")]
        self.assertEqual(choose_transceiver(records, "eu").id, "a")  # type: ignore[union-attr]
        self.assertIsNone(choose_transceiver(records, "eu", spill=False))
        self.assertIsNone(choose_transceiver([], "eu"))

    def test_ties_are_random(self) -> None:
        records = [record("a"), record("b")]
        chosen = {choose_transceiver(records, "eu", rng=random.Random(seed)).id for seed in range(20)}  # type: ignore[union-attr]
        self.assertEqual(chosen, {"a", "b"})
