# -*- test-case-name: tests.test_limits -*-
"""Per-caller limits: token buckets on an injected clock, and counted caps (calls per key, connections per address)."""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

__all__ = ["RateLimit", "TokenBuckets", "CountedCap", "address_key"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``per_minute`` tokens a minute, at most ``burst`` saved up; ``per_minute = 0`` is no limit."""

    per_minute: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_minute < 0 or self.burst < 0:
            raise ValueError("a rate limit cannot be negative")
        if self.per_minute > 0 and self.burst < 1:
            raise ValueError("a rate limit's burst must allow at least one request")

    @property
    def unlimited(self) -> bool:
        """Whether this limit lets everything through."""
        return self.per_minute == 0


class TokenBuckets:
    """One token bucket per key (a client address, an API key), on an injected clock.

    A bucket holds up to ``burst`` tokens and refills at ``per_minute / 60``
    a second; each allowed request takes one. The table is bounded: past
    ``max_keys`` the least recently used bucket is forgotten (a forgotten
    bucket comes back full, which only helps a caller with more addresses
    than the table holds, and such a caller is not stopped per address anyway).
    """

    def __init__(self, clock: IReactorTime, limit: RateLimit, max_keys: int = 65536) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self.clock = clock
        self.limit = limit
        self.max_keys = max_keys
        self._rate = limit.per_minute / 60.0
        # key -> (tokens, when they were counted)
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, key: str) -> float:
        """Take a token for ``key``: ``0.0`` when allowed, else the seconds until one is there.

        A refused request takes nothing, so a caller that waits the returned
        time is then let through.
        """
        if self.limit.unlimited:
            return 0.0
        now = self.clock.seconds()
        burst = self.limit.burst
        entry = self._buckets.pop(key, None)
        if entry is None:
            tokens = burst
        else:
            saved, at = entry
            tokens = min(burst, saved + max(0.0, now - at) * self._rate)
        if tokens >= 1.0:
            self._remember(key, tokens - 1.0, now)
            return 0.0
        self._remember(key, tokens, now)
        return (1.0 - tokens) / self._rate

    def _remember(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class CountedCap:
    """At most ``limit`` things held at once per key (calls per API key, connections per address).

    ``limit = 0`` is no cap. Keys whose count falls to zero are forgotten,
    so the table holds only keys with something open.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("a cap cannot be negative")
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        """Count one more for ``key``; ``False`` (and nothing counted) when at the cap."""
        count = self._counts.get(key, 0)
        if self.limit and count >= self.limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        """Count one less for ``key``."""
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def count(self, key: str) -> int:
        """How many ``key`` holds now."""
        return self._counts.get(key, 0)

    def total(self) -> int:
        """How many are held over every key."""
        return sum(self._counts.values())


def address_key(host: str) -> str:
    """The key a client address is limited by: the IPv4 address, or the IPv6 /64.

    One IPv6 subscriber usually has a whole /64, so limiting single v6
    addresses would limit nothing. An IPv4-mapped v6 address counts as the
    v4 address. Anything that is not an IP address (a UNIX socket) is its
    own key.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True, slots=True)
class CallLimits:
    """How many calls a caller may open: rates per client address and per API key, and live calls per key."""

    per_address: RateLimit = RateLimit(60, 20)
    per_key: RateLimit = RateLimit(600, 100)
    #: Calls one API key (with the client secrets it issued) holds open at once; 0 is no cap.
    max_calls_per_key: int = 100
    #: What ``Retry-After`` says when a key is at its cap (when a call ends is unknown).
    retry_after_at_cap: int = 5
