# -*- test-case-name: tests.test_session_ends -*-
"""How front doors hear of session ends: the reconciler and the subscriber on a Clock with fakes, then real Redis."""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.fleet_fakes import MemoryRegistryStore
from tests.redis_support import start_redis
from tests.test_registry import record
from tests.test_redis_sentinel import sentinel_pair
from voiceedge.fleet.internal_api import SESSIONS_PATH
from voiceedge.fleet.internal_client import IInternalApi, InternalResponse
from voiceedge.fleet.registry import ENDED_CHANNEL, RegistryView
from voiceedge.fleet.session_ends import SessionEndsSubscriber, SessionReconciler, parse_end
from voiceedge.fleet.shared_ledger import RedisSessionLedger
from voiceedge.redis_connection import RedisClient, RedisConnectionSettings
from voiceedge.signaling.ownership import ILedgerIndex

GRACE = 4.0


@implementer(ILedgerIndex)
class FakeIndex:
    """Recorded calls by transceiver, as the Redis ledger keeps them; releasing one removes it."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, float]] = {}
        self.down = False

    def record(self, public_id: str, at: float) -> None:
        self.calls.setdefault(public_id.partition(".")[0], {})[public_id] = at

    def release(self, transceiver: str, session: str) -> None:
        calls = self.calls.get(transceiver, {})
        calls.pop(f"{transceiver}.{session}", None)
        if not calls:
            self.calls.pop(transceiver, None)

    def transceivers(self) -> "defer.Deferred[set[str]]":
        if self.down:
            return defer.fail(ConnectionError("redis is down"))
        return defer.succeed(set(self.calls))

    def sessions_on(self, transceiver_id: str) -> "defer.Deferred[dict[str, float]]":
        return defer.succeed(dict(self.calls.get(transceiver_id, {})))


@implementer(IInternalApi)
class ListingApi:
    """Transceivers' ``GET /internal/v1/sessions``: the ids each holds, by API address."""

    def __init__(self) -> None:
        self.holding: dict[Any, list[str]] = {}
        self.broken: set[Any] = set()
        self.answers: dict[Any, InternalResponse] = {}
        self.asked: list[Any] = []

    def request(
        self, api: Any, method: bytes, path: str, body: bytes | None = None,
        content_type: bytes | None = None, headers: Mapping[bytes, bytes] = {},
    ) -> "defer.Deferred[InternalResponse]":
        assert (method, path) == (b"GET", SESSIONS_PATH)
        self.asked.append(api)
        if api in self.broken:
            return defer.fail(ConnectionRefusedError())
        if api in self.answers:
            return defer.succeed(self.answers[api])
        return defer.succeed(InternalResponse(200, json.dumps({"sessions": self.holding.get(api, [])}).encode()))


A_API, B_API = ("10.0.0.1", 8081), ("10.0.0.2", 8081)


class ReconcilerTests(SynchronousTestCase):
    """SessionReconciler over a registry view, fake transceivers and a fake ledger index, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryRegistryStore(self.clock)
        self.store.put("tx-a", record("tx-a", api=A_API).to_json(), 3)
        self.store.put("tx-b", record("tx-b", api=B_API).to_json(), 3)
        self.view: RegistryView[Any] = RegistryView(self.store, self.clock, refresh_interval=1)
        self.view.refresh()
        self.index = FakeIndex()
        self.api = ListingApi()
        self.released: list[tuple[str, str]] = []

        def release(transceiver: str, session: str) -> None:
            self.released.append((transceiver, session))
            self.index.release(transceiver, session)

        self.reconciler = SessionReconciler(self.index, self.view, self.api, self.clock, release, GRACE)

    def test_interface(self) -> None:
        verifyObject(ILedgerIndex, self.index)

    def expire_b(self) -> None:
        """tx-b stops writing its record (tx-a goes on) until the record expires; then a registry read."""
        self.successResultOf(self.reconciler.release_gone())  # the reconciler has seen tx-b's address
        self.clock.advance(3)
        self.store.put("tx-a", record("tx-a", api=A_API).to_json(), 3)
        self.view.refresh()

    def test_a_killed_transceivers_calls_are_released_after_a_fresh_read(self) -> None:
        """kill -9: its record expires and nothing answers at its address: all its calls are released."""
        self.index.record("tx-a.s1", 900)
        self.index.record("tx-b.s2", 900)
        self.index.record("tx-b.s3", 901)
        self.api.broken.add(B_API)
        self.successResultOf(self.reconciler.release_gone())
        self.clock.advance(3)
        self.store.put("tx-a", record("tx-a", api=A_API).to_json(), 3)
        self.successResultOf(self.reconciler.release_gone())
        self.assertEqual(self.released, [], "not before a registry read says so")
        self.view.refresh()
        self.successResultOf(self.reconciler.release_gone())
        self.assertEqual(sorted(self.released), [("tx-b", "s2"), ("tx-b", "s3")])
        self.assertEqual(dict(self.reconciler.released), {"transceiver_gone": 2})
        self.assertEqual(self.api.asked, [B_API])

    def test_a_record_lost_to_a_redis_outage_is_not_a_death(self) -> None:
        """The record expired, but the transceiver answers: only the calls it no longer holds are released."""
        self.index.record("tx-b.s2", 900)
        self.index.record("tx-b.s3", 900)
        self.api.holding = {B_API: ["s2"]}
        self.expire_b()
        self.successResultOf(self.reconciler.release_gone())
        self.assertEqual(self.released, [("tx-b", "s3")])
        self.assertEqual(dict(self.reconciler.released), {"not_on_transceiver": 1})

    def test_a_call_newer_than_the_grace_waits(self) -> None:
        """A call recorded moments ago (another front door may have placed it) is left for a while."""
        self.api.broken.add(B_API)
        self.index.record("tx-b.s1", self.clock.seconds() + 2)
        self.expire_b()
        self.successResultOf(self.reconciler.release_gone())
        self.assertEqual(self.released, [])
        self.clock.advance(GRACE)
        self.view.refresh()
        self.successResultOf(self.reconciler.release_gone())
        self.assertEqual(self.released, [("tx-b", "s1")])

    def test_a_transceiver_never_seen_is_gone_after_a_minute(self) -> None:
        """Calls on a transceiver this front door never saw (started after it died): released once it stays missing."""
        self.index.record("tx-old.s1", 900)
        for _ in range(59):
            self.view.refresh()
            self.successResultOf(self.reconciler.release_gone())
            self.clock.advance(1)
        self.assertEqual(self.released, [])
        self.clock.advance(1)
        self.view.refresh()
        self.successResultOf(self.reconciler.release_gone())
        self.assertEqual(self.released, [("tx-old", "s1")])
        self.assertEqual(self.api.asked, [])

    def test_nothing_is_released_while_the_registry_cannot_be_read(self) -> None:
        """Redis away: no read is fresh, so no transceiver counts as gone."""
        self.index.record("tx-b.s2", 900)
        self.store.down = True
        self.clock.advance(40)  # past max_stale: the view drops its copy
        self.view.refresh()
        self.assertEqual(self.view.records, {})
        self.successResultOf(self.reconciler.release_gone())
        self.assertEqual(self.released, [])

    def test_reconcile_releases_what_a_transceiver_no_longer_holds(self) -> None:
        """Ends whose message was lost: compared with each transceiver's list, old enough ones are released."""
        self.index.record("tx-a.s1", 900)
        self.index.record("tx-a.s2", 900)
        self.index.record("tx-a.s3", self.clock.seconds() - 1)  # newer than the grace
        self.index.record("tx-b.s4", 900)
        self.api.holding = {A_API: ["s1"], B_API: ["s4", "s5"]}
        self.successResultOf(self.reconciler.reconcile())
        self.assertEqual(self.released, [("tx-a", "s2")])
        self.assertEqual(dict(self.reconciler.released), {"not_on_transceiver": 1})
        self.assertEqual(self.reconciler.runs["reconcile_ok"], 1)

    def test_reconcile_releases_nothing_on_an_unclear_answer(self) -> None:
        """A transceiver that does not answer, refuses, or says something else: nothing of its calls is released."""
        self.index.record("tx-a.s1", 900)
        self.index.record("tx-b.s2", 900)
        self.api.broken.add(A_API)
        self.api.answers[B_API] = InternalResponse(200, b'{"sessions": "s9"}')
        self.successResultOf(self.reconciler.reconcile())
        self.api.answers[B_API] = InternalResponse(404, b"not found\n")
        self.successResultOf(self.reconciler.reconcile())
        self.assertEqual(self.released, [])
        runs = self.reconciler.runs
        self.assertEqual((runs["transceiver_unreachable"], runs["transceiver_malformed"], runs["transceiver_refused"]),
                         (2, 1, 1))

    def test_a_reconcile_asked_for_during_one_runs_after_it(self) -> None:
        """Subscribed again while a run is going on: one more run follows it, with fresh lists."""
        self.index.record("tx-a.s1", 900)
        asked: list[defer.Deferred[InternalResponse]] = []

        def request(*args: Any, **kwargs: Any) -> "defer.Deferred[InternalResponse]":
            asked.append(defer.Deferred())
            return asked[-1]

        self.api.request = request  # type: ignore[method-assign]
        first = self.reconciler.reconcile()
        self.successResultOf(self.reconciler.reconcile())  # answered at once: a run is going on
        asked[0].callback(InternalResponse(200, b'{"sessions": ["s1"]}'))  # listed before s1 ended
        self.successResultOf(first)
        self.assertEqual(len(asked), 2, "a second run has begun")
        asked[1].callback(InternalResponse(200, b'{"sessions": []}'))
        self.assertEqual(self.released, [("tx-a", "s1")])
        self.assertEqual(self.reconciler.runs["reconcile_ok"], 2)

    def test_a_ledger_that_fails_is_counted_and_tried_again(self) -> None:
        """Redis away from the ledger: the step fails quietly and runs again next time."""
        self.index.record("tx-a.s2", 900)
        self.index.down = True
        self.successResultOf(self.reconciler.reconcile())
        self.assertEqual(self.reconciler.runs["reconcile_failed"], 1)
        self.index.down = False
        self.successResultOf(self.reconciler.reconcile())
        self.assertEqual(self.released, [("tx-a", "s2")])


class InMemoryIndexTests(SynchronousTestCase):
    """The in-memory ledger as an index, for a front door of its own workers."""

    def test_calls_by_owner(self) -> None:
        from tests.test_shared_stores import WEB
        from voiceedge.fleet.frontdoor import split_session_id
        from voiceedge.signaling.ownership import SessionLedger

        clock = Clock()
        clock.advance(50)
        ledger = SessionLedger(1, clock, lambda sid: (split_session_id(sid) or (None,))[0])
        verifyObject(ILedgerIndex, ledger)
        held = ledger.reserve(WEB)
        assert held is not None
        ledger.opened("w0.s1", held)
        self.assertEqual(self.successResultOf(ledger.transceivers()), {"w0"})
        self.assertEqual(self.successResultOf(ledger.sessions_on("w0")), {"w0.s1": 50.0})
        self.assertIsNone(ledger.reserve(WEB))
        released = SessionReconciler(ledger, RegistryView(MemoryRegistryStore(clock), clock), ListingApi(), clock,
                                     lambda t, s: ledger.ended(f"{t}.{s}"), GRACE)
        clock.advance(GRACE)
        released.view.refresh()
        self.successResultOf(released.release_gone())  # w0 is not in the (empty) registry, never seen
        self.assertEqual(self.successResultOf(ledger.transceivers()), {"w0"}, "a transceiver never seen waits")
        self.assertTrue(ledger.ended("w0.s1"))
        self.assertFalse(ledger.ended("w0.s1"))
        self.assertEqual(self.successResultOf(ledger.transceivers()), set())
        self.assertIsNotNone(ledger.reserve(WEB))
        self.assertRaises(ValueError, SessionLedger, 1, None, lambda sid: sid)


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class FakeSubscribedConnection:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.channels: list[str] = []

    def subscribe(self, channel: str) -> "defer.Deferred[Any]":
        self.channels.append(channel)
        return defer.succeed(["subscribe", channel, 1])


class FakePublisher:
    """What the subscriber needs of the front door's RedisClient to publish probes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        self.up = True
        self.connection = self

    def connected(self) -> bool:
        return self.up

    def publish(self, channel: str, message: str) -> "defer.Deferred[int]":
        self.published.append((channel, message))
        return defer.succeed(1)


class SubscriberLogicTests(SynchronousTestCase):
    """SessionEndsSubscriber's handling of messages, subscriptions and probes, without a connection."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.heard: list[tuple[str, str]] = []
        self.resubscribed: list[bool] = []
        self.publisher = FakePublisher()
        self.subscriber = SessionEndsSubscriber(
            RedisConnectionSettings(), self.publisher, self.clock,  # type: ignore[arg-type]
            lambda t, s: self.heard.append((t, s)), lambda: self.resubscribed.append(True), probe_interval=2,
        )
        self.connection = FakeSubscribedConnection()
        self.subscriber._connected(self.connection)

    def probes(self) -> None:
        from twisted.internet.task import LoopingCall

        loop = LoopingCall(self.subscriber._probe)
        loop.clock = self.clock
        loop.start(2, now=False)
        self.addCleanup(loop.stop)

    def test_parse_end(self) -> None:
        """Only "<transceiver id> <session id>" is an end."""
        self.assertEqual(parse_end(b"tx-a abc_DEF-123"), ("tx-a", "abc_DEF-123"))
        for bad in (b"", b"tx-a", b"tx a b", b"t\xffx s1", b". nonce 1", "x" * 300, None, 12):
            self.assertIsNone(parse_end(bad), bad)

    def test_subscribes_and_hands_on_ends(self) -> None:
        """Subscribed on connection (and told, to reconcile); ends go on, the rest is counted as malformed."""
        self.assertEqual(self.connection.channels, [ENDED_CHANNEL])
        self.assertTrue(self.subscriber.subscribed)
        self.assertEqual(self.resubscribed, [True])
        self.subscriber._message(b"tx-a s1")
        self.subscriber._message(b"garbage")
        self.assertEqual(self.heard, [("tx-a", "s1")])
        self.assertEqual((self.subscriber.counts["heard"], self.subscriber.counts["malformed"]), (1, 1))
        self.subscriber._lost(self.connection)
        self.assertFalse(self.subscriber.subscribed)

    def test_a_probe_not_heard_back_drops_the_subscription(self) -> None:
        """Probes that come back keep it; one that does not within an interval makes it reconnect."""
        self.probes()
        self.clock.advance(2)
        channel, probe = self.publisher.published[-1]
        self.assertEqual(channel, ENDED_CHANNEL)
        self.assertIsNone(parse_end(probe), "a probe is not an end to anyone")
        self.subscriber._message(probe.encode())
        self.clock.advance(2)
        self.assertFalse(self.connection.transport.aborted)
        self.assertEqual(len(self.publisher.published), 2)
        self.clock.advance(2)  # the second probe never came back
        self.assertTrue(self.connection.transport.aborted)
        self.assertFalse(self.subscriber.subscribed)
        self.assertEqual(self.subscriber.counts["probes_missed"], 1)
        self.assertEqual(self.heard, [])

    def test_another_front_doors_probe_is_ignored(self) -> None:
        """Probes of other front doors are neither ends nor ours."""
        self.subscriber._message(b". 0123456789abcdef 1")
        self.assertEqual((self.heard, self.subscriber.counts["malformed"]), ([], 0))

    def test_no_probe_while_the_publisher_cannot_reach_redis(self) -> None:
        """A probe that could not be sent proves nothing: the subscription is kept."""
        self.probes()
        self.publisher.up = False
        self.clock.advance(10)
        self.assertEqual(self.publisher.published, [])
        self.assertFalse(self.connection.transport.aborted)


class RedisSubscriberTests(TestCase):
    """SessionEndsSubscriber against real redis-server processes."""

    timeout = 90

    def subscriber(self, settings: RedisConnectionSettings, publisher: RedisClient) -> SessionEndsSubscriber:
        self.heard: list[tuple[str, str]] = []
        self.subscriptions = 0

        def subscribed() -> None:
            self.subscriptions += 1

        subscriber = SessionEndsSubscriber(
            settings, publisher, reactor, lambda t, s: self.heard.append((t, s)), subscribed, probe_interval=0.5,
        )
        subscriber.start()
        self.addCleanup(subscriber.stop)
        return subscriber

    @defer.inlineCallbacks
    def until(self, predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
        """Let the reactor run until ``predicate()`` holds (bounded)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            self.assertLess(time.monotonic(), deadline, f"not within {timeout:g} s: {what}")
            yield deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_hears_ends_and_subscribes_again_after_a_restart(self) -> Any:
        """A transceiver's end is heard; Redis restarted on its port: subscribed again, told, and hearing."""
        redis = start_redis(self)
        settings = RedisConnectionSettings(address=redis.address, timeout=0.5)
        publisher = RedisClient(settings)
        self.addCleanup(publisher.close)
        subscriber = self.subscriber(settings, publisher)
        yield self.until(lambda: subscriber.subscribed, what="subscribed")
        yield publisher.connection.publish(ENDED_CHANNEL, "tx-a s1")
        yield self.until(lambda: self.heard == [("tx-a", "s1")], what="the end heard")

        redis.kill()
        yield self.until(lambda: not subscriber.subscribed, what="the loss noticed")
        start_redis(self, port=redis.port)
        yield self.until(lambda: subscriber.subscribed and self.subscriptions == 2, what="subscribed again")
        yield self.until(publisher.connected, what="the publisher back")
        yield publisher.connection.publish(ENDED_CHANNEL, "tx-b s2")
        yield self.until(lambda: ("tx-b", "s2") in self.heard, what="an end after the restart")
        yield deferLater(reactor, 1.5, lambda: None)  # probes go round meanwhile
        self.assertEqual(subscriber.counts["probes_missed"], 0)

    @defer.inlineCallbacks
    def test_follows_a_sentinel_failover(self) -> Any:
        """Master killed: the subscriber finds the promoted replica through the Sentinel and hears ends there."""
        master, replica, sentinel = sentinel_pair(self)
        settings = RedisConnectionSettings(sentinels=(sentinel.address,), sentinel_master="voiceedge", timeout=0.5)
        publisher = RedisClient(settings)
        self.addCleanup(publisher.close)
        subscriber = self.subscriber(settings, publisher)
        yield self.until(lambda: subscriber.subscribed and publisher.connected(), what="subscribed")
        killed = time.monotonic()
        master.kill()
        yield self.until(lambda: self.subscriptions >= 2 and subscriber.subscribed, 30, "subscribed to the new master")
        again = time.monotonic() - killed
        yield self.until(publisher.connected, 20, "the publisher on the new master")
        yield publisher.connection.publish(ENDED_CHANNEL, "tx-a s9")
        yield self.until(lambda: ("tx-a", "s9") in self.heard, what="an end after the failover")
        self.assertIn(b"role:master", replica.command("INFO", "replication"))
        print(f"session ends: subscribed to the promoted replica {again:.1f} s after the master was killed")


class RedisReconcileTests(TestCase):
    """The reconciler on the Redis ledger: a gone transceiver's calls leave Redis, and its key's places are freed."""

    timeout = 30

    @defer.inlineCallbacks
    def test_gone_transceiver_frees_its_keys_places(self) -> Any:
        from tests.test_shared_stores import WEB

        redis = start_redis(self)
        client = RedisClient(RedisConnectionSettings(address=redis.address))
        self.addCleanup(client.close)
        clock = Clock()
        clock.advance(1000)
        ledger = RedisSessionLedger(client, clock, max_calls_per_key=1)
        deadline = time.monotonic() + 10
        while not client.connected():
            self.assertLess(time.monotonic(), deadline)
            yield deferLater(reactor, 0.02, lambda: None)
        store = MemoryRegistryStore(clock)
        store.put("tx-a", record("tx-a", api=A_API).to_json(), 3)
        view: RegistryView[Any] = RegistryView(store, clock)
        view.refresh()
        held = yield ledger.reserve(WEB)
        yield ledger.opened("tx-a.s1", held)
        self.assertIsNone((yield ledger.reserve(WEB)))
        released: list[defer.Deferred[bool]] = []
        api = ListingApi()
        reconciler = SessionReconciler(
            ledger, view, api, clock, lambda t, s: released.append(ledger.ended(f"{t}.{s}")), GRACE
        )
        yield reconciler.release_gone()
        api.broken.add(A_API)
        clock.advance(10)  # tx-a was killed: no heartbeat, its record expires, nothing answers there
        view.refresh()
        yield reconciler.release_gone()
        yield defer.gatherResults(released)
        self.assertIsNotNone((yield ledger.reserve(WEB)))
        self.assertEqual((yield ledger.transceivers()), set())
