"""Tests for voiceedge.relay.flows: pending and confirmed flows, expiry, the size bound."""

from __future__ import annotations

import socket

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voiceedge.relay.flows import MAX_FLOWS_PER_UFRAG, Flow, FlowTable

HOP = ("10.0.0.5", 4000)
OTHER_HOP = ("10.0.0.6", 4000)


def flow(i: int, now: float, hop: tuple[str, int] = HOP) -> Flow:
    """A flow for client 198.51.100.x:(10000 + i)."""
    client = (f"198.51.100.{i % 250 + 1}", 10000 + i)
    return Flow(client, socket.inet_aton(client[0]), hop, now, ufrag=b"u%d" % i)


def table(max_flows: int = 10) -> FlowTable:
    """A table with 40 s idle and 10 s pending timeouts."""
    return FlowTable(max_flows, idle_timeout=40.0, pending_timeout=10.0)


def session_flow(i: int, now: float, ufrag: bytes = b"S") -> Flow:
    """Flow ``i`` of one session: client 192.0.2.x, server ufrag ``ufrag``."""
    client = (f"192.0.2.{i % 250 + 1}", 20000 + i)
    return Flow(client, socket.inet_aton(client[0]), HOP, now, ufrag=ufrag)


class FlowLifecycleTests(SynchronousTestCase):
    """A flow is pending, then confirmed; sweeps on a Clock expire it, remove drops it, refreshes are reported."""

    def test_pending_then_confirmed(self) -> None:
        """A new flow is pending; confirming moves it to the confirmed index."""
        clock = Clock()
        t = table()
        f = flow(1, clock.seconds())
        self.assertTrue(t.add_pending(f))
        self.assertFalse(f.confirmed)
        self.assertIs(t.get(f.client), f)
        self.assertIn(f.client, t.pending)
        self.assertNotIn(f.client, t.confirmed)
        self.assertIs(t.by_packed[(f.client_packed, f.client_port)], f)
        clock.advance(1)
        t.confirm(f, clock.seconds())
        self.assertTrue(f.confirmed)
        self.assertIn(f.client, t.confirmed)
        self.assertNotIn(f.client, t.pending)
        self.assertEqual(f.last_seen, 1)
        self.assertEqual(len(t), 1)
        self.assertEqual(t.confirmed_total, 1)
        t.confirm(f, clock.seconds())  # idempotent
        self.assertEqual(t.confirmed_total, 1)

    def test_duplicate_client_is_an_error(self) -> None:
        """One client, one flow: a second insert is a caller bug."""
        t = table()
        self.assertTrue(t.add_pending(flow(1, 0)))
        with self.assertRaises(ValueError):
            t.add_pending(flow(1, 0))

    def test_pending_expires_after_pending_timeout(self) -> None:
        """An unconfirmed flow is swept pending_timeout after it was created."""
        clock = Clock()
        t = table()
        f = flow(1, clock.seconds())
        t.add_pending(f)
        clock.advance(9.5)
        t.sweep(clock.seconds())
        self.assertIs(t.get(f.client), f)
        clock.advance(0.5)
        t.sweep(clock.seconds())
        self.assertIsNone(t.get(f.client))
        self.assertFalse(t.by_packed)
        self.assertEqual(t.expired_pending, 1)

    def test_pending_sweep_is_in_creation_order(self) -> None:
        """Only the expired prefix of the pending entries goes."""
        clock = Clock()
        t = table()
        old = [flow(i, clock.seconds()) for i in range(3)]
        for f in old:
            t.add_pending(f)
        clock.advance(5)
        young = [flow(i, clock.seconds()) for i in range(3, 6)]
        for f in young:
            t.add_pending(f)
        clock.advance(5)
        t.sweep(clock.seconds())
        self.assertEqual(list(t.pending.values()), young)

    def test_confirmed_expires_when_idle(self) -> None:
        """A confirmed flow lives idle_timeout past its last client packet."""
        clock = Clock()
        t = table()
        f = flow(1, clock.seconds())
        t.add_pending(f)
        t.confirm(f, clock.seconds())
        clock.advance(30)
        f.last_seen = clock.seconds()  # what the relay does on every client packet
        clock.advance(39)
        t.sweep(clock.seconds())
        self.assertIs(t.get(f.client), f)
        clock.advance(1)
        t.sweep(clock.seconds())
        self.assertIsNone(t.get(f.client))
        self.assertEqual(t.expired_confirmed, 1)
        self.assertFalse(t.by_packed)

    def test_remove(self) -> None:
        """remove() forgets a flow from every index and tolerates a second call."""
        t = table()
        f = flow(1, 0)
        t.add_pending(f)
        t.confirm(f, 0)
        t.remove(f)
        t.remove(f)
        self.assertEqual(len(t), 0)
        self.assertFalse(t.by_packed)

    def test_sweep_reports_flows_due_for_refresh(self) -> None:
        """Active confirmed flows are due once refresh_interval passed since they were stored."""
        clock = Clock()
        t = table()
        active, idle = flow(1, 0), flow(2, 0)
        for f in (active, idle):
            t.add_pending(f)
            t.confirm(f, 0)
            f.stored_at = 0
        self.assertEqual(t.sweep(clock.seconds(), refresh_interval=10), [])
        clock.advance(10)
        active.last_seen = clock.seconds()
        self.assertEqual(t.sweep(clock.seconds(), refresh_interval=10), [active])
        never = flow(3, 10)
        t.add_pending(never)
        t.confirm(never, 10)
        self.assertIn(never, t.sweep(clock.seconds(), refresh_interval=10))  # never stored: due at once
        self.assertEqual(t.sweep(clock.seconds()), [])  # no cache: nothing is due


class FlowBoundTests(SynchronousTestCase):
    """The table's size bound and the per-ufrag bound: what is evicted, what is refused, what is counted."""

    def test_full_table_evicts_oldest_pending(self) -> None:
        """A new pending flow in a full table evicts the oldest pending one."""
        t = table(max_flows=3)
        flows = [flow(i, float(i)) for i in range(3)]
        for f in flows:
            self.assertTrue(t.add_pending(f))
        newcomer = flow(3, 3.0)
        self.assertTrue(t.add_pending(newcomer))
        self.assertEqual(len(t), 3)
        self.assertIsNone(t.get(flows[0].client))
        self.assertNotIn((flows[0].client_packed, flows[0].client_port), t.by_packed)
        self.assertEqual(t.evicted_pending, 1)

    def test_confirmed_flows_are_never_evicted_by_pending(self) -> None:
        """Pending flows evict pending flows only; with only confirmed flows the newcomer is refused."""
        t = table(max_flows=3)
        confirmed = [flow(i, 0) for i in range(2)]
        for f in confirmed:
            t.add_pending(f)
            t.confirm(f, 0)
        p = flow(2, 0)
        t.add_pending(p)
        for i in range(3, 50):
            self.assertTrue(t.add_pending(flow(i, float(i))))  # each evicts the previous pending one
            self.assertEqual(len(t), 3)
        self.assertTrue(all(t.get(f.client) is f for f in confirmed))
        t.confirm(t.pending[next(iter(t.pending))], 50)
        self.assertFalse(t.add_pending(flow(99, 51)))
        self.assertEqual(t.refused_full, 1)
        self.assertEqual(len(t), 3)

    def test_restored_confirmed_flow_obeys_the_bound(self) -> None:
        """A flow restored from the cache may evict a pending one, never a confirmed one."""
        t = table(max_flows=2)
        a, b = flow(1, 0), flow(2, 0)
        t.add_pending(a)
        t.add_pending(b)
        t.confirm(b, 0)
        restored = flow(3, 1)
        self.assertTrue(t.add_confirmed(restored))
        self.assertTrue(restored.confirmed)
        self.assertIsNone(t.get(a.client))
        self.assertFalse(t.add_confirmed(flow(4, 1)))
        self.assertEqual(t.created_restored, 1)
        self.assertEqual(t.refused_full, 1)

    def test_flows_per_ufrag_are_bounded_and_counted(self) -> None:
        """At most max_per_ufrag flows carry one ufrag; the count follows every change."""
        t = table(max_flows=100)
        self.assertEqual(MAX_FLOWS_PER_UFRAG, 8)
        self.assertEqual(t.max_per_ufrag, 8)
        flows = [session_flow(i, 0) for i in range(8)]
        for f in flows:
            self.assertTrue(t.add_pending(f))
        self.assertFalse(t.ufrag_has_room(b"S"))
        self.assertTrue(t.ufrag_has_room(b"T"))
        self.assertTrue(t.ufrag_has_room(b""))
        self.assertFalse(t.add_pending(session_flow(8, 0)))
        self.assertFalse(t.add_confirmed(session_flow(9, 0)))
        self.assertEqual(t.refused_ufrag, 2)
        self.assertEqual(t.per_ufrag, {b"S": 8})
        self.assertEqual(len(t), 8)
        t.confirm(flows[0], 1)  # confirming keeps the count
        t.remove(flows[0])  # remove
        self.assertEqual(t.per_ufrag, {b"S": 7})
        self.assertTrue(t.set_ufrag(flows[1], b"T"))  # a ufrag change moves one unit
        self.assertEqual(t.per_ufrag, {b"S": 6, b"T": 1})
        self.assertEqual(flows[1].ufrag, b"T")
        others = [session_flow(10 + i, 0, b"T") for i in range(7)]
        for f in others:
            self.assertTrue(t.add_pending(f))
        self.assertFalse(t.set_ufrag(flows[2], b"T"))
        self.assertEqual(flows[2].ufrag, b"S")  # T is full
        self.assertTrue(t.set_ufrag(flows[2], b"S"))  # unchanged: always allowed
        t.sweep(20)  # pending expiry
        self.assertEqual(t.per_ufrag, {})
        self.assertEqual(len(t), 0)
        restored = session_flow(30, 20, b"")
        self.assertTrue(t.add_confirmed(restored))  # unknown ufrag: not counted, never refused
        self.assertEqual(t.per_ufrag, {})
        self.assertTrue(t.set_ufrag(restored, b"S"))
        self.assertEqual(t.per_ufrag, {b"S": 1})
        t.sweep(100)  # idle expiry
        self.assertEqual(t.per_ufrag, {})

    def test_eviction_uncounts_the_ufrag(self) -> None:
        """A pending flow pushed out of a full table frees its ufrag's slot."""
        t = table(max_flows=2)
        a, b = session_flow(1, 0, b"A"), session_flow(2, 1, b"B")
        t.add_pending(a)
        t.add_pending(b)
        self.assertTrue(t.add_pending(session_flow(3, 2, b"C")))
        self.assertEqual(t.per_ufrag, {b"B": 1, b"C": 1})

    def test_bad_parameters(self) -> None:
        """A table needs room for one flow and positive timeouts."""
        with self.assertRaises(ValueError):
            FlowTable(0, 40, 10)
        with self.assertRaises(ValueError):
            FlowTable(10, 40, 10, max_per_ufrag=0)
        with self.assertRaises(ValueError):
            FlowTable(10, 40, 0)
