# -*- test-case-name: tests.test_registry -*-
"""The transceiver registry: records, the heartbeat that writes them, the front door's view, and real Redis."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.fleet_fakes import MemoryRegistryStore
from tests.redis_support import start_redis
from voiceedge.fleet.registry import (
    DRAINING,
    INDEX_KEY,
    KEY_PREFIX,
    IRegistryStore,
    RedisRegistryStore,
    RegistryPublisher,
    RegistryView,
    TransceiverRecord,
    transceiver_id,
)
from voiceedge.redis_connection import RedisClient, RedisConnectionSettings


def record(id: str = "tx-a", **changes: Any) -> TransceiverRecord:
    """A serving record of region eu with room."""
    values: dict[str, Any] = dict(
        id=id, region="eu", cluster=1, api=("10.0.0.5", 8081), media=("10.0.0.5", 3479),
        sessions=3, capacity=100, cpu=0.25,
    )
    values.update(changes)
    return TransceiverRecord(**values)


class RecordTests(SynchronousTestCase):
    """The JSON in Redis round-trips; anything else is a ValueError."""

    def test_round_trip(self) -> None:
        for r in (record(), record(api=("fd00::5", 1), state=DRAINING, cpu=0)):
            self.assertEqual(TransceiverRecord.from_json(r.to_json()), r)
        self.assertEqual(record().load, 0.03)
        self.assertTrue(record().serving)
        self.assertFalse(record(state=DRAINING).serving)

    def test_malformed_values_are_value_errors(self) -> None:
        good = json.loads(record().to_json())
        bad: list[Any] = [
            "", "{", "[]", "null", json.dumps({**good, "v": 2}),
            json.dumps({**good, "state": "resting"}),
            json.dumps({**good, "sessions": -1}),
            json.dumps({**good, "sessions": True}),
            json.dumps({**good, "cpu": "high"}),
            json.dumps({**good, "api": "somewhere:1"}),
            json.dumps({**good, "id": "a.b"}),
            json.dumps({k: v for k, v in good.items() if k != "region"}),
            "x" * 5000,
        ]
        for value in bad:
            with self.assertRaises(ValueError, msg=value[:60]):
                TransceiverRecord.from_json(value)

    def test_ids(self) -> None:
        self.assertEqual(transceiver_id("tx-a_1"), "tx-a_1")
        for bad in ("", "a.b", "a b", "x" * 65, "é"):
            with self.assertRaises(ValueError):
                transceiver_id(bad)


class PublisherAndViewTests(SynchronousTestCase):
    """A heartbeat keeps a record alive; the view sees it, and stops seeing it once it expires."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryRegistryStore(self.clock)
        self.current = record()
        self.publisher = RegistryPublisher(self.store, self.clock, lambda: self.current, heartbeat=2, ttl=6)
        self.view = RegistryView(self.store, self.clock, refresh_interval=1, max_stale=30)

    def test_stores_provide_the_interface(self) -> None:
        verifyObject(IRegistryStore, self.store)
        verifyObject(IRegistryStore, RedisRegistryStore(RedisClient(RedisConnectionSettings())))

    def test_heartbeat_keeps_the_record_and_expiry_removes_it(self) -> None:
        self.publisher.start()
        self.view.start()
        self.assertEqual(self.view.get("tx-a"), self.current)
        self.clock.pump([1] * 20)
        self.assertEqual(self.view.get("tx-a"), self.current)
        self.assertTrue(self.publisher.up and self.view.up)
        # kill -9: the heartbeat stops, the record expires within the TTL (plus one refresh).
        assert self.publisher._loop is not None
        self.publisher._loop.stop()
        last_write = 1000 + 20 - (20 % 2)
        for _ in range(7):
            self.clock.advance(1)
            if self.view.get("tx-a") is None:
                break
        self.assertIsNone(self.view.get("tx-a"))
        self.assertLessEqual(self.clock.seconds() - last_write, 6 + 1)

    def test_state_changes_are_published_at_once(self) -> None:
        self.publisher.start()
        self.current = record(state=DRAINING)
        self.publisher.publish()
        self.view.refresh()
        self.assertFalse(self.view.get("tx-a").serving)  # type: ignore[union-attr]

    def test_session_ends_are_published(self) -> None:
        """Each session's end goes out on the ended channel, with the transceiver's id."""
        self.publisher.session_ended("tx-a", "s1")  # not started: nothing
        self.publisher.start()
        self.publisher.session_ended("tx-a", "s2")
        self.assertEqual(self.store.ended, [("tx-a", "s2")])
        self.assertEqual(self.publisher.ends_published, 1)

    def test_a_clean_stop_removes_the_record(self) -> None:
        self.publisher.start()
        self.publisher.stop()
        self.view.refresh()
        self.assertEqual(self.view.records, {})

    def test_redis_down_keeps_the_last_copy_for_max_stale(self) -> None:
        self.publisher.start()
        self.view.start()
        self.store.down = True
        self.clock.pump([1] * 29)
        self.assertIsNotNone(self.view.get("tx-a"))
        self.assertFalse(self.view.up)
        self.assertFalse(self.publisher.up)
        self.clock.pump([1] * 2)
        self.assertIsNone(self.view.get("tx-a"))
        self.store.down = False
        self.clock.pump([1] * 2)  # the heartbeat writes again, the view reads it
        self.assertIsNotNone(self.view.get("tx-a"))
        self.assertTrue(self.view.up and self.publisher.up)

    def test_a_hung_redis_times_out(self) -> None:
        self.publisher.start()
        self.view.start()
        self.store.hang = True
        self.clock.pump([0.5] * 10)
        self.assertFalse(self.view.up)
        self.assertFalse(self.publisher.up)
        # Each hung call was given up at its deadline, so the next one goes out.
        calls = self.store.calls
        self.clock.pump([0.5] * 4)
        self.assertGreater(self.store.calls, calls)

    def test_local_assignments_count_for_a_heartbeat(self) -> None:
        """Sessions placed here count on top of the registry's numbers until heartbeats carry them."""
        self.publisher.start()
        self.view.refresh()
        self.view.assigned("tx-a")
        self.view.assigned("tx-a")
        self.assertEqual([r.sessions for r in self.view.candidates()], [5])
        self.view.refresh()  # a read before the transceiver's next heartbeat changes nothing
        self.assertEqual([r.sessions for r in self.view.candidates()], [5])
        self.view.unassigned("tx-a")
        self.assertEqual([r.sessions for r in self.view.candidates()], [4])
        self.clock.advance(2.1)
        self.assertEqual([r.sessions for r in self.view.candidates()], [3])

    def test_malformed_records_are_skipped_and_counted(self) -> None:
        self.store.records["tx-b"] = ("{nope", 2000.0)
        self.store.records["tx-c"] = (record("tx-d").to_json(), 2000.0)
        self.publisher.start()
        self.view.refresh()
        self.assertEqual(set(self.view.records), {"tx-a"})
        self.assertEqual(self.view.malformed, 2)


class RedisRegistryTests(TestCase):
    """RedisRegistryStore against a real redis-server: TTLs, the index, pruning."""

    timeout = 30

    @defer.inlineCallbacks
    def test_put_fetch_expire_remove(self) -> Any:
        server = start_redis(self)
        store = RedisRegistryStore(RedisClient(RedisConnectionSettings(address=server.address, timeout=1)))
        self.addCleanup(store.close)
        yield store.put("tx-a", record().to_json(), 0.3)
        yield store.put("tx-b", record("tx-b").to_json(), 30)
        found = yield store.fetch()
        self.assertEqual(set(found), {"tx-a", "tx-b"})
        self.assertEqual(TransceiverRecord.from_json(found["tx-b"]), record("tx-b"))
        ttl = int(server.command("PTTL", KEY_PREFIX + "tx-b").strip(b":\r\n"))
        self.assertTrue(25_000 < ttl <= 30_000, ttl)
        yield deferLater(reactor, 0.4, lambda: None)
        found = yield store.fetch()
        self.assertEqual(set(found), {"tx-b"})
        # The expired id was pruned from the index.
        self.assertNotIn(b"tx-a", server.command("SMEMBERS", INDEX_KEY))
        yield store.remove("tx-b")
        found = yield store.fetch()
        self.assertEqual(found, {})
        yield store.publish_ended("tx-b", "s" * 22)
