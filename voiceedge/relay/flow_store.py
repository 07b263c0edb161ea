# -*- test-case-name: tests.test_relay_redis -*-
"""The relay's soft-state flow cache in Redis: write confirmed flows, look them up after a restart.

Nothing here is on the per-packet path. Writes happen when a flow is
confirmed and from the sweep (at most once per TTL/3 per active flow);
lookups happen for media from an unknown source, rate-limited by a token
bucket and short-circuited by a negative cache. Every operation has a
timeout and the number in flight is capped, so a dead or slow Redis never
holds the relay up: it only stops new lookups and writes until a probe
(``PING``, at every sweep while down) succeeds again. Up/down changes are
logged once each.

Key layout (see docs/relay.md)::

    voiceedge:relay:flow:<ingress host:port>/<client host:port>  ->  "v1 <cluster> <host> <port>"

with IPv6 hosts in brackets, and a TTL of ``ttl`` seconds.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from voiceedge.redis_connection import RedisClient
from voiceedge.relay.flows import Address, Flow
from voiceedge.relay.settings import RedisSettings

__all__ = [
    "KEY_PREFIX",
    "FlowCache",
    "IFlowStore",
    "RedisFlowStore",
    "flow_key",
    "format_address",
    "format_value",
    "parse_value",
]

KEY_PREFIX = "voiceedge:relay:flow:"
_VALUE_VERSION = "v1"
_NEGATIVE_MAX = 65536

log = Logger()


def format_address(address: Address) -> str:
    """``host:port``, or ``[v6]:port``."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def flow_key(ingress: Address, client: Address) -> str:
    """The Redis key of ``client``'s flow through ``ingress``."""
    return f"{KEY_PREFIX}{format_address(ingress)}/{format_address(client)}"


def format_value(cluster: int, next_hop: Address) -> str:
    """The stored value: version, cluster and the transceiver address."""
    return f"{_VALUE_VERSION} {cluster} {next_hop[0]} {next_hop[1]}"


def parse_value(value: object) -> tuple[int, Address]:
    """``(cluster, transceiver address)`` from a stored value; ValueError if malformed."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise ValueError(f"unexpected flow value {value!r}")
    parts = value.split(" ")
    if len(parts) != 4 or parts[0] != _VALUE_VERSION:
        raise ValueError(f"unexpected flow value {value!r}")
    cluster, host, port = int(parts[1]), parts[2], int(parts[3])
    if not 0 <= cluster <= 0xFFFF or not 1 <= port <= 0xFFFF:
        raise ValueError(f"unexpected flow value {value!r}")
    return cluster, (host, port)


class IFlowStore(Interface):
    """The three Redis commands the cache needs, each returning a Deferred."""

    def get(key: str) -> "defer.Deferred[Any]":
        """The value stored at ``key`` or None."""

    def set(key: str, value: str, ttl: int) -> "defer.Deferred[Any]":
        """Store ``value`` at ``key`` for ``ttl`` seconds."""

    def ping() -> "defer.Deferred[Any]":
        """Succeed if the server answers."""

    def close() -> "defer.Deferred[Any]":
        """Disconnect and stop reconnecting."""


@implementer(IFlowStore)
class RedisFlowStore:
    """:class:`IFlowStore` on a :class:`~voiceedge.redis_connection.RedisClient` (one server or Sentinel)."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    def get(self, key: str) -> "defer.Deferred[Any]":
        """GET key."""
        return defer.maybeDeferred(lambda: self.client.connection.get(key))

    def set(self, key: str, value: str, ttl: int) -> "defer.Deferred[Any]":
        """SET key value EX ttl."""
        return defer.maybeDeferred(lambda: self.client.connection.set(key, value, expire=ttl))

    def ping(self) -> "defer.Deferred[Any]":
        """PING; fails at once while no connection is live."""
        return self.client.ping()

    def close(self) -> "defer.Deferred[Any]":
        """Disconnect for good."""
        return self.client.close()


RestoreCallback = Callable[[Address, int, Address], None]


class FlowCache:
    """Confirmed flows in a shared store, with up/down tracking that never blocks.

    ``on_restore(client, cluster, next_hop)`` is called for a lookup hit.
    The cache counts what it does in plain integer attributes for metrics.
    """

    def __init__(
        self,
        store: IFlowStore,
        clock: IReactorTime,
        ingress: Address,
        settings: RedisSettings = RedisSettings(),
        *,
        cluster: int = 0,
        probe_interval: float = 2.0,
        max_in_flight: int = 1024,
        label: str = "redis",
    ) -> None:
        self.store = store
        self.clock = clock
        self.ingress = ingress
        self.settings = settings
        self.ttl = settings.ttl
        self.cluster = cluster
        self.negative_ttl = settings.negative_ttl
        self.timeout = settings.timeout
        self.probe_interval = probe_interval
        self.max_in_flight = max_in_flight
        self.label = label
        self.on_restore: RestoreCallback | None = None
        self.up: bool | None = None  # None until the first answer or failure
        self.in_flight = 0
        self._probing = False
        self._next_probe = float("-inf")
        self._looking_up: set[Address] = set()
        self._negative: dict[Address, float] = {}
        # Token bucket for lookups: ``lookup_rate`` per second, the same as burst.
        self._rate = float(settings.lookup_rate)
        self._burst = max(1.0, float(settings.lookup_rate))
        self._tokens = self._burst
        self._refilled = clock.seconds()
        self.lookup_hits = 0
        self.lookup_misses = 0
        self.lookup_errors = 0
        self.lookup_rate_limited = 0
        self.lookup_negative_cached = 0
        self.lookup_skipped = 0  # Redis down or too much in flight
        self.writes_ok = 0
        self.write_errors = 0
        self.writes_skipped = 0
        self.state_changes = 0

    # -- state -------------------------------------------------------------

    def _mark(self, up: bool, why: str = "") -> None:
        """Record the store's state; log only when it changes."""
        if self.up is up:
            return
        self.up = up
        self.state_changes += 1
        if up:
            log.info("{label} is up: flow cache on", label=self.label)
        else:
            log.warn(
                "{label} is down ({why}): existing flows keep forwarding, new sessions "
                "route by token, restarts lose their flows until it is back",
                label=self.label,
                why=why,
            )

    def _call(self, op: Callable[[], "defer.Deferred[Any]"]) -> "defer.Deferred[Any]":
        """Run one store operation with a timeout, counted as in flight."""
        self.in_flight += 1
        d = op()
        d.addTimeout(self.timeout, self.clock)

        def done(result: object) -> object:
            self.in_flight -= 1
            return result

        d.addBoth(done)
        return d

    def _failed(self, failure: Failure) -> None:
        if failure.check(defer.TimeoutError, defer.CancelledError):
            why = f"no answer within {self.timeout:g} s"
        else:
            why = failure.getErrorMessage() or getattr(failure.type, "__name__", "error")
        self._mark(False, why)

    def poll(self, now: float) -> None:
        """Probe the store when due, and purge the negative cache; called by the sweep."""
        negative = self._negative
        while negative:
            client = next(iter(negative))
            if negative[client] > now:
                break
            del negative[client]
        if self._probing or now < self._next_probe:
            return
        # While down, probe at every sweep: a PING without a live connection
        # fails at once (it costs nothing), and the cache is back within a
        # sweep of the client's reconnection instead of a probe interval.
        self._next_probe = now + (self.probe_interval if self.up else 0.0)
        self._probing = True
        d = self._call(self.store.ping)

        def ok(_: object) -> None:
            self._mark(True)

        def end(_: object) -> None:
            self._probing = False

        d.addCallbacks(ok, self._failed).addBoth(end)

    # -- writes --------------------------------------------------------------

    def store_flow(self, flow: Flow, now: float) -> None:
        """Write (or refresh) a confirmed flow with the TTL; skipped while down.

        A skipped or failed write marks the flow dirty (``stored_at`` =
        ``-inf``): the store may hold an older next hop (a flow that moved),
        so the first sweep after Redis is back rewrites it.
        """
        if not self.up or self.in_flight >= self.max_in_flight:
            self.writes_skipped += 1
            flow.stored_at = float("-inf")
            return
        # Marked now so the sweep does not queue it again while the write runs.
        flow.stored_at = now
        key = flow_key(self.ingress, flow.client)
        value = format_value(self.cluster if flow.cluster is None else flow.cluster, flow.next_hop)
        d = self._call(lambda: self.store.set(key, value, self.ttl))

        def ok(_: object) -> None:
            self.writes_ok += 1
            self._mark(True)

        def failed(failure: Failure) -> None:
            self.write_errors += 1
            if flow.stored_at == now:
                flow.stored_at = float("-inf")
            self._failed(failure)

        d.addCallbacks(ok, failed)

    # -- lookups -------------------------------------------------------------

    def lookup(self, client: Address, now: float) -> None:
        """Ask the store for ``client``'s flow, unless cached negative, rate-limited or down."""
        expires = self._negative.get(client)
        if expires is not None and expires > now:
            self.lookup_negative_cached += 1
            return
        if client in self._looking_up:
            return
        if not self.up or self.in_flight >= self.max_in_flight:
            self.lookup_skipped += 1
            return
        tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if tokens < 1.0:
            self._tokens = tokens
            self.lookup_rate_limited += 1
            return
        self._tokens = tokens - 1.0
        self._looking_up.add(client)
        key = flow_key(self.ingress, client)
        d = self._call(lambda: self.store.get(key))

        def answered(value: object) -> None:
            self._mark(True)
            if value is None:
                self.lookup_misses += 1
                self._remember_miss(client)
                return
            try:
                cluster, next_hop = parse_value(value)
            except ValueError:
                log.warn("ignoring malformed flow cache entry {key}", key=key)
                self.lookup_misses += 1
                self._remember_miss(client)
                return
            self.lookup_hits += 1
            if self.on_restore is not None:
                self.on_restore(client, cluster, next_hop)

        def failed(failure: Failure) -> None:
            self.lookup_errors += 1
            self._failed(failure)

        def end(_: object) -> None:
            self._looking_up.discard(client)

        d.addCallbacks(answered, failed).addBoth(end)

    def _remember_miss(self, client: Address) -> None:
        negative = self._negative
        negative.pop(client, None)
        if len(negative) >= _NEGATIVE_MAX:
            del negative[next(iter(negative))]
        negative[client] = self.clock.seconds() + self.negative_ttl

    def close(self) -> "defer.Deferred[Any]":
        """Disconnect from the store."""
        return self.store.close()
