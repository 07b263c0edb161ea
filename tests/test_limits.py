# -*- test-case-name: tests.test_limits -*-
"""Tests for voiceedge.signaling.limits: token buckets on a Clock, counted caps, address keys."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voiceedge.signaling.limits import CountedCap, RateLimit, TokenBuckets, address_key


class TokenBucketsTests(SynchronousTestCase):
    """A burst, then one token per refill interval, per key, on the clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.buckets = TokenBuckets(self.clock, RateLimit(per_minute=60, burst=3))

    def test_burst_then_refusal_with_the_wait(self) -> None:
        """Three at once pass; the fourth is told to wait one second, and nothing was taken."""
        self.assertEqual([self.buckets.take("a") for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertAlmostEqual(self.buckets.take("a"), 1.0)
        self.assertAlmostEqual(self.buckets.take("a"), 1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.buckets.take("a"), 0.0)
        self.assertAlmostEqual(self.buckets.take("a"), 1.0)

    def test_keys_are_independent(self) -> None:
        """One key's use does not touch another's."""
        for _ in range(3):
            self.buckets.take("a")
        self.assertEqual(self.buckets.take("b"), 0.0)

    def test_refill_is_capped_at_the_burst(self) -> None:
        """A long quiet spell saves up no more than the burst."""
        self.buckets.take("a")
        self.clock.advance(3600)
        self.assertEqual([self.buckets.take("a") for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertGreater(self.buckets.take("a"), 0.0)

    def test_the_table_is_bounded(self) -> None:
        """Past max_keys the least recently used bucket is forgotten."""
        buckets = TokenBuckets(self.clock, RateLimit(60, 1), max_keys=100)
        for n in range(1000):
            buckets.take(f"k{n}")
        self.assertEqual(len(buckets), 100)

    def test_zero_rate_is_no_limit(self) -> None:
        """per_minute = 0 lets everything through and keeps nothing."""
        buckets = TokenBuckets(self.clock, RateLimit(0, 1))
        self.assertEqual([buckets.take("a") for _ in range(1000)], [0.0] * 1000)
        self.assertEqual(len(buckets), 0)

    def test_bad_limits_are_refused(self) -> None:
        """Negative numbers, or a burst below one, are configuration errors."""
        self.assertRaises(ValueError, RateLimit, -1, 5)
        self.assertRaises(ValueError, RateLimit, 60, 0.5)


class CountedCapTests(SynchronousTestCase):
    """At most ``limit`` held per key; released places come back; empty keys are forgotten."""

    def test_cap(self) -> None:
        """The third acquire at a cap of two fails and counts nothing."""
        cap = CountedCap(2)
        self.assertTrue(cap.acquire("k"))
        self.assertTrue(cap.acquire("k"))
        self.assertFalse(cap.acquire("k"))
        self.assertEqual(cap.count("k"), 2)
        cap.release("k")
        self.assertTrue(cap.acquire("k"))
        self.assertEqual(cap.total(), 2)

    def test_release_forgets_empty_keys(self) -> None:
        """A key with nothing held takes no memory; an extra release does no harm."""
        cap = CountedCap(5)
        cap.acquire("k")
        cap.release("k")
        cap.release("k")
        self.assertEqual(cap.count("k"), 0)
        self.assertEqual(cap._counts, {})

    def test_zero_is_no_cap(self) -> None:
        """limit = 0 never refuses."""
        cap = CountedCap(0)
        self.assertTrue(all(cap.acquire("k") for _ in range(10000)))


class AddressKeyTests(SynchronousTestCase):
    """Clients are limited by IPv4 address or IPv6 /64."""

    def test_ipv4(self) -> None:
        """An IPv4 address is its own key."""
        self.assertEqual(address_key("198.51.100.7"), "198.51.100.7")

    def test_ipv6_groups_by_64(self) -> None:
        """Two addresses of one /64 share a key; another /64 does not."""
        self.assertEqual(address_key("2001:db8:1:2::1"), address_key("2001:db8:1:2:ffff::9"))
        self.assertNotEqual(address_key("2001:db8:1:2::1"), address_key("2001:db8:1:3::1"))

    def test_mapped_ipv4(self) -> None:
        """An IPv4-mapped IPv6 address counts as the IPv4 address."""
        self.assertEqual(address_key("::ffff:198.51.100.7"), "198.51.100.7")

    def test_not_an_address(self) -> None:
        """A UNIX socket path (or anything else) is its own key."""
        self.assertEqual(address_key("/run/voiceedge.sock"), "/run/voiceedge.sock")
