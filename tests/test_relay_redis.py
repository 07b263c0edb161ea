"""Tests for the relay's Redis flow cache (voiceedge.relay.flow_store), against a real redis-server."""

from __future__ import annotations

import socket
import time
from typing import Any, Generator, Iterator

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.redis_support import RedisProcess, start_redis
from tests.test_relay_protocol import (
    CLIENT,
    HOP,
    HOP2,
    INGRESS,
    NETS,
    Sent,
    binding_request,
    codec,
    srtp,
    token,
)
from voiceedge.relay.core import MOVE_IDLE, Relay
from voiceedge.relay.flow_store import (
    FlowCache,
    IFlowStore,
    RedisFlowStore,
    flow_key,
    format_value,
    parse_value,
)
from voiceedge.redis_connection import RedisClient, RedisConnectionSettings
from voiceedge.relay.flows import Flow
from voiceedge.relay.settings import RedisSettings, RelaySettings
from voiceedge.wire import encap
from voiceedge.wire.encap import Envelope


def redis_store(host: str, port: int, timeout: float = 1.0) -> RedisFlowStore:
    """A RedisFlowStore on one server."""
    return RedisFlowStore(RedisClient(RedisConnectionSettings(address=(host, port), timeout=timeout)))


def make_cache(store: Any, clock: Any, probe_interval: float = 2.0, **settings: Any) -> FlowCache:
    """A FlowCache through INGRESS; ``settings`` are [redis] keys."""
    return FlowCache(store, clock, INGRESS, RedisSettings(**settings), probe_interval=probe_interval)


def redis_command(server: RedisProcess, *args: str) -> bytes:
    """One command over a plain blocking socket; the raw RESP reply."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


class RelayUnderTest:
    """A Relay on the real reactor with a Redis cache and recording send functions."""

    def __init__(self, server: RedisProcess, **cache_args: Any) -> None:
        store = redis_store(server.host, server.port, timeout=0.5)
        args: dict[str, Any] = dict(ttl=60, lookup_rate=100, timeout=0.5, probe_interval=0.1)
        args.update(cache_args)
        self.cache = make_cache(store, reactor, **args)
        self.relay = Relay(
            reactor,
            codec(),
            RelaySettings(public_listen=INGRESS, transceiver_networks=NETS),
            cache=self.cache,
            sweep_interval=0.05,
        )
        self.to_transceiver: Sent = []
        self.to_client: Sent = []
        self.relay.send_to_transceiver = lambda d, a: self.to_transceiver.append((bytes(d), a))
        self.relay.send_to_client = lambda d, a: self.to_client.append((bytes(d), a))
        self.relay.start()

    def from_client(self, data: bytes, addr: tuple[str, int] = CLIENT) -> None:
        """A datagram on the public socket."""
        self.relay.client_datagram(data, addr)

    def from_transceiver(self, payload: bytes, client: tuple[str, int] = CLIENT) -> None:
        """The owning transceiver sends ``payload`` for ``client``."""
        self.relay.transceiver_datagram(encap.encode(Envelope(client, INGRESS), payload), HOP)

    @defer.inlineCallbacks
    def until(self, predicate: Any, timeout: float = 5.0) -> Generator[Any, Any, None]:
        """Let the reactor run until ``predicate()`` is true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition not met in time"
            yield deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def close(self) -> Generator[Any, Any, None]:
        """Stop the sweep and disconnect."""
        self.relay.stop()
        yield self.cache.close()


def metrics(relay: Relay) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The relay's samples by (name, labels)."""
    return {(n, tuple(sorted(lab.items()))): v for _, n, _, lab, v in relay.metrics()}


class FlowValueTests(SynchronousTestCase):
    """The stored flow value and key, and the Redis store's interface."""

    def test_value_format_round_trip(self) -> None:
        """The stored value parses back; anything else is a ValueError."""
        self.assertEqual(parse_value(format_value(3, ("10.0.0.5", 4000))), (3, ("10.0.0.5", 4000)))
        self.assertEqual(parse_value(format_value(0, ("fd00::5", 1)).encode()), (0, ("fd00::5", 1)))
        for bad in ("", "v2 0 1.2.3.4 5", "v1 0 1.2.3.4", "v1 x 1.2.3.4 5", "v1 0 h 0", 7):
            with self.assertRaises(ValueError):
                parse_value(bad)
        self.assertEqual(flow_key(("203.0.113.1", 3478), ("2001:db8::1", 5)), "voiceedge:relay:flow:203.0.113.1:3478/[2001:db8::1]:5")

    def test_redis_store_provides_interface(self) -> None:
        """RedisFlowStore is an IFlowStore (and opens nothing until used)."""
        store = redis_store("127.0.0.1", 1)
        self.assertTrue(verifyObject(IFlowStore, store))
        self.assertIsNone(store.client._connection)


class RedisFlowCacheTests(TestCase):
    """A relay with a Redis flow cache on the reactor, against a real redis-server."""

    timeout = 30

    @defer.inlineCallbacks
    def test_confirmed_flow_is_written_with_ttl(self) -> Iterator[Any]:
        """Confirmation writes the flow at once, with the configured TTL."""
        redis_server = start_redis(self)
        r = RelayUnderTest(redis_server)
        try:
            yield r.until(lambda: r.cache.up)
            r.from_client(binding_request(token()))
            key = flow_key(INGRESS, CLIENT)
            self.assertEqual(redis_command(redis_server, "EXISTS", key), b":0\r\n")  # pending: not stored
            r.from_transceiver(b"\x01\x01\x00\x00")
            yield r.until(lambda: r.cache.writes_ok == 1)
            self.assertEqual(redis_command(redis_server, "GET", key), b"$18\r\nv1 0 10.1.0.5 4000\r\n")
            ttl = int(redis_command(redis_server, "TTL", key)[1:-2])
            self.assertTrue(55 <= ttl <= 60)
        finally:
            yield r.close()

    @defer.inlineCallbacks
    def test_active_flow_is_refreshed_by_the_sweep(self) -> Iterator[Any]:
        """An active flow is rewritten once per TTL/3, not per packet."""
        redis_server = start_redis(self)
        r = RelayUnderTest(redis_server, ttl=3)  # refresh every second
        try:
            yield r.until(lambda: r.cache.up)
            r.from_client(binding_request(token()))
            r.from_transceiver(b"\x01\x01\x00\x00")
            start = time.monotonic()
            while time.monotonic() - start < 2.5:
                r.from_client(srtp())
                yield deferLater(reactor, 0.01, lambda: None)
            # ~250 packets, 1 write at confirmation and 2 refreshes (at most 3 with timing slack)
            self.assertTrue(2 <= r.cache.writes_ok <= 4)
            self.assertGreaterEqual(int(redis_command(redis_server, "TTL", flow_key(INGRESS, CLIENT))[1:-2]), 1)
        finally:
            yield r.close()

    @defer.inlineCallbacks
    def test_restarted_relay_restores_flow_from_media(self) -> Iterator[Any]:
        """A new relay instance that sees media from an unknown source looks it up and installs it."""
        redis_server = start_redis(self)
        first = RelayUnderTest(redis_server)
        try:
            yield first.until(lambda: first.cache.up)
            first.from_client(binding_request(token()))
            first.from_transceiver(b"\x01\x01\x00\x00")
            yield first.until(lambda: first.cache.writes_ok == 1)
        finally:
            yield first.close()

        second = RelayUnderTest(redis_server)
        try:
            yield second.until(lambda: second.cache.up)
            packet = srtp()
            second.from_client(packet)  # unknown source: dropped, starts the lookup
            self.assertEqual(second.to_transceiver, [])
            self.assertEqual(second.relay.drops["not_stun_unknown_source"], 1)
            yield second.until(lambda: CLIENT in second.relay.flows.confirmed)
            self.assertEqual(second.cache.lookup_hits, 1)
            flow = second.relay.flows.confirmed[CLIENT]
            self.assertEqual(flow.next_hop, HOP)
            second.from_client(packet)
            self.assertEqual(second.to_transceiver, [(encap.encode(Envelope(CLIENT, INGRESS), packet), HOP)])
            second.from_transceiver(b"\x80down")
            self.assertEqual(second.to_client, [(b"\x80down", CLIENT)])
            m = metrics(second.relay)
            self.assertEqual(m[("voiceedge_relay_flows_created", (("origin", "cache"),))], 1)
            self.assertEqual(m[("voiceedge_relay_redis_lookups", (("result", "hit"),))], 1)
        finally:
            yield second.close()

    @defer.inlineCallbacks
    def test_miss_is_negatively_cached(self) -> Iterator[Any]:
        """A miss is remembered: more media from that source does not ask again for a while."""
        redis_server = start_redis(self)
        r = RelayUnderTest(redis_server, negative_ttl=30)
        try:
            yield r.until(lambda: r.cache.up)
            r.from_client(srtp())
            yield r.until(lambda: r.cache.lookup_misses == 1)
            for _ in range(50):
                r.from_client(srtp())
            self.assertEqual(r.cache.lookup_misses, 1)
            self.assertEqual(r.cache.lookup_negative_cached, 50)
            self.assertEqual(r.to_transceiver, [])
            self.assertEqual(r.to_client, [])
        finally:
            yield r.close()

    @defer.inlineCallbacks
    def test_redis_killed_mid_run(self) -> Iterator[Any]:
        """Redis dies: flows keep forwarding, tokens still route, metrics say down, nothing blocks."""
        redis_server = start_redis(self)
        r = RelayUnderTest(redis_server)
        try:
            yield r.until(lambda: r.cache.up)
            r.from_client(binding_request(token()))
            r.from_transceiver(b"\x01\x01\x00\x00")
            yield r.until(lambda: r.cache.writes_ok == 1)
            redis_server.kill()
            yield r.until(lambda: r.cache.up is False)
            m = metrics(r.relay)
            self.assertEqual(m[("voiceedge_relay_redis_up", ())], 0)

            r.to_transceiver.clear()
            r.to_client.clear()
            started = time.monotonic()
            for _ in range(200):
                r.from_client(srtp())
                r.from_transceiver(b"\x80down")
            self.assertLess(time.monotonic() - started, 0.5)  # synchronous, never waits on Redis
            self.assertEqual(len(r.to_transceiver), 200)
            self.assertEqual(len(r.to_client), 200)

            other = ("198.51.100.8", 50001)
            r.from_client(binding_request(token()), other)
            r.from_transceiver(b"\x01\x01\x00\x00", other)
            self.assertIn(other, r.relay.flows.confirmed)
            self.assertEqual(r.to_client[-1], (b"\x01\x01\x00\x00", other))
            r.from_client(srtp(), ("192.0.2.50", 7))  # unknown source: no lookup while down
            self.assertGreaterEqual(r.cache.lookup_skipped, 1)
            yield deferLater(reactor, 0.3, lambda: None)  # sweeps and probes keep running
            self.assertIs(r.cache.up, False)
            self.assertLessEqual(r.cache.in_flight, 1)
            self.assertEqual(r.cache.state_changes, 2)  # logged once up, once down
        finally:
            yield r.close()


@implementer(IFlowStore)
class FakeStore:
    """An IFlowStore whose answers the test controls."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.gets: list[str] = []
        self.hang = False
        self.fail = False

    def _answer(self, value: Any) -> "defer.Deferred[Any]":
        if self.hang:
            return defer.Deferred()
        if self.fail:
            return defer.fail(ConnectionError("Lost connection"))
        return defer.succeed(value)

    def get(self, key: str) -> "defer.Deferred[Any]":
        """Record and answer."""
        self.gets.append(key)
        return self._answer(self.data.get(key))

    def set(self, key: str, value: str, ttl: int) -> "defer.Deferred[Any]":
        """Store and answer."""
        if not (self.hang or self.fail):
            self.data[key] = value
        return self._answer(True)

    def ping(self) -> "defer.Deferred[Any]":
        """Answer PONG."""
        return self._answer("PONG")

    def close(self) -> "defer.Deferred[Any]":
        """Nothing to close."""
        return defer.succeed(None)


class FlowCacheTests(SynchronousTestCase):
    """FlowCache on a Clock with a store whose answers the test controls: rate limits, timeouts, writes owed."""

    def test_lookups_are_rate_limited(self) -> None:
        """A flood of unknown sources costs at most lookup_rate lookups a second."""
        clock = Clock()
        store = FakeStore()
        verifyObject(IFlowStore, store)
        cache = make_cache(store, clock, ttl=60, lookup_rate=10, negative_ttl=5)
        cache.poll(clock.seconds())
        self.assertTrue(cache.up)
        for i in range(1000):
            cache.lookup(("192.0.2.1", 1000 + i), clock.seconds())
        self.assertEqual(len(store.gets), 10)
        self.assertEqual(cache.lookup_rate_limited, 990)
        clock.advance(0.5)
        for i in range(1000):
            cache.lookup(("192.0.2.2", 1000 + i), clock.seconds())
        self.assertEqual(len(store.gets), 15)
        # misses are remembered for negative_ttl, then asked again
        cache.lookup(("192.0.2.1", 1000), clock.seconds())
        self.assertEqual(len(store.gets), 15)
        self.assertEqual(cache.lookup_negative_cached, 1)
        clock.advance(5)
        cache.poll(clock.seconds())
        cache.lookup(("192.0.2.1", 1000), clock.seconds())
        self.assertEqual(len(store.gets), 16)

    def test_hung_store_times_out_and_is_marked_down(self) -> None:
        """A store that never answers: operations time out, the cache says down and stops asking."""
        clock = Clock()
        store = FakeStore()
        cache = make_cache(store, clock, ttl=60, lookup_rate=100, timeout=1, probe_interval=2)
        cache.poll(clock.seconds())
        store.hang = True
        cache.lookup(CLIENT, clock.seconds())
        self.assertEqual(cache.in_flight, 1)
        clock.advance(1)
        self.assertIs(cache.up, False)
        self.assertEqual(cache.in_flight, 0)
        self.assertEqual(cache.lookup_errors, 1)
        cache.lookup(("192.0.2.9", 9), clock.seconds())
        self.assertEqual(len(store.gets), 1)
        self.assertEqual(cache.lookup_skipped, 1)
        store.hang = False
        clock.advance(2)
        cache.poll(clock.seconds())
        self.assertIs(cache.up, True)
        self.assertEqual(cache.state_changes, 3)  # up, down, up

    def test_move_while_down_is_rewritten_when_redis_is_back(self) -> None:
        """A write skipped while Redis is down marks the flow dirty: the first sweep after rewrites it.

        Before, a skipped write left ``stored_at`` at the last successful write,
        so a flow that moved while Redis was down kept its old next hop in Redis
        until the next TTL/3 refresh.
        """
        clock = Clock()
        clock.advance(1000)
        store = FakeStore()
        cache = make_cache(store, clock, ttl=60, lookup_rate=10, probe_interval=2)
        relay = Relay(clock, codec(), RelaySettings(public_listen=INGRESS, transceiver_networks=NETS), cache=cache)
        relay.send_to_transceiver = lambda d, a: None
        relay.send_to_client = lambda d, a: None
        relay.sweep()
        self.assertTrue(cache.up)
        relay.client_datagram(binding_request(token()), CLIENT)
        relay.transceiver_datagram(encap.encode(Envelope(CLIENT, INGRESS), b"\x01\x01\x00\x00"), HOP)
        key = flow_key(INGRESS, CLIENT)
        self.assertEqual(store.data[key], format_value(0, HOP))

        store.fail = True
        clock.advance(2)
        relay.sweep()
        self.assertIs(cache.up, False)
        clock.advance(MOVE_IDLE)  # the client went quiet; its restart moves it to HOP2
        relay.client_datagram(binding_request(token(HOP2)), CLIENT)
        relay.transceiver_datagram(encap.encode(Envelope(CLIENT, INGRESS), b"\x01\x01\x00\x00"), HOP2)
        flow = relay.flows.confirmed[CLIENT]
        self.assertEqual(flow.next_hop, HOP2)
        self.assertEqual(cache.writes_skipped, 1)
        self.assertEqual(flow.stored_at, float("-inf"))

        store.fail = False
        clock.advance(2)
        relay.sweep()  # the probe succeeds, the dirty flow is rewritten in the same sweep
        self.assertTrue(cache.up)
        self.assertEqual(store.data[key], format_value(0, HOP2))

    def test_failed_write_marks_the_flow_dirty(self) -> None:
        """A write that fails is owed too: stored_at goes to -inf, not back to the previous write."""
        clock = Clock()
        store = FakeStore()
        cache = make_cache(store, clock, ttl=60, lookup_rate=10)
        cache.poll(clock.seconds())
        flow = Flow(CLIENT, socket.inet_aton(CLIENT[0]), HOP, 0.0, confirmed=True)
        cache.store_flow(flow, 1.0)
        self.assertEqual(flow.stored_at, 1.0)
        store.fail = True
        cache.store_flow(flow, 2.0)
        self.assertEqual(flow.stored_at, float("-inf"))
        self.assertEqual(cache.write_errors, 1)


def free_tcp_port() -> int:
    """A TCP port nothing listens on (bound once, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class DeadRedisTests(TestCase):
    """Probes of a Redis that is not there, on the reactor."""

    timeout = 30

    @defer.inlineCallbacks
    def test_probes_of_a_dead_redis_do_not_pile_up(self) -> Iterator[Any]:
        """PING probes while Redis is unreachable leave no cancelled Deferreds behind in txredisapi.

        txredisapi's ``PeekableQueue.peek`` has no canceller: every timed-out
        probe used to stay in the pool's ``peekers`` until a reconnect (about
        43,000 a day at one probe every 2 s).
        """
        store = redis_store("127.0.0.1", free_tcp_port(), timeout=0.05)
        cache = make_cache(store, reactor, ttl=60, lookup_rate=10, timeout=0.05,
                          probe_interval=0.0)
        try:
            for _ in range(12):
                cache.poll(reactor.seconds())
                yield deferLater(reactor, 0.08, lambda: None)
            self.assertIs(cache.up, False)
            self.assertLessEqual(len(store.client._connection._factory.connectionQueue.peekers), 1)
            self.assertEqual(cache.in_flight, 0)
        finally:
            yield cache.close()
