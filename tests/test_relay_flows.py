"""Tests for voiceedge.relay.flows: pending and confirmed flows, expiry, the size bound."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.task import Clock

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


def test_pending_then_confirmed() -> None:
    """A new flow is pending; confirming moves it to the confirmed index."""
    clock = Clock()
    t = table()
    f = flow(1, clock.seconds())
    assert t.add_pending(f)
    assert not f.confirmed
    assert t.get(f.client) is f and f.client in t.pending and f.client not in t.confirmed
    assert t.by_packed[(f.client_packed, f.client_port)] is f
    clock.advance(1)
    t.confirm(f, clock.seconds())
    assert f.confirmed and f.client in t.confirmed and f.client not in t.pending
    assert f.last_seen == 1
    assert len(t) == 1 and t.confirmed_total == 1
    t.confirm(f, clock.seconds())  # idempotent
    assert t.confirmed_total == 1


def test_duplicate_client_is_an_error() -> None:
    """One client, one flow: a second insert is a caller bug."""
    t = table()
    assert t.add_pending(flow(1, 0))
    with pytest.raises(ValueError):
        t.add_pending(flow(1, 0))


def test_pending_expires_after_pending_timeout() -> None:
    """An unconfirmed flow is swept pending_timeout after it was created."""
    clock = Clock()
    t = table()
    f = flow(1, clock.seconds())
    t.add_pending(f)
    clock.advance(9.5)
    t.sweep(clock.seconds())
    assert t.get(f.client) is f
    clock.advance(0.5)
    t.sweep(clock.seconds())
    assert t.get(f.client) is None and not t.by_packed
    assert t.expired_pending == 1


def test_pending_sweep_is_in_creation_order() -> None:
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
    assert list(t.pending.values()) == young


def test_confirmed_expires_when_idle() -> None:
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
    assert t.get(f.client) is f
    clock.advance(1)
    t.sweep(clock.seconds())
    assert t.get(f.client) is None and t.expired_confirmed == 1
    assert not t.by_packed


def test_full_table_evicts_oldest_pending() -> None:
    """A new pending flow in a full table evicts the oldest pending one."""
    t = table(max_flows=3)
    flows = [flow(i, float(i)) for i in range(3)]
    for f in flows:
        assert t.add_pending(f)
    newcomer = flow(3, 3.0)
    assert t.add_pending(newcomer)
    assert len(t) == 3
    assert t.get(flows[0].client) is None
    assert (flows[0].client_packed, flows[0].client_port) not in t.by_packed
    assert t.evicted_pending == 1


def test_confirmed_flows_are_never_evicted_by_pending() -> None:
    """Pending flows evict pending flows only; with only confirmed flows the newcomer is refused."""
    t = table(max_flows=3)
    confirmed = [flow(i, 0) for i in range(2)]
    for f in confirmed:
        t.add_pending(f)
        t.confirm(f, 0)
    p = flow(2, 0)
    t.add_pending(p)
    for i in range(3, 50):
        assert t.add_pending(flow(i, float(i)))  # each evicts the previous pending one
        assert len(t) == 3
    assert all(t.get(f.client) is f for f in confirmed)
    t.confirm(t.pending[next(iter(t.pending))], 50)
    assert not t.add_pending(flow(99, 51))
    assert t.refused_full == 1 and len(t) == 3


def test_restored_confirmed_flow_obeys_the_bound() -> None:
    """A flow restored from the cache may evict a pending one, never a confirmed one."""
    t = table(max_flows=2)
    a, b = flow(1, 0), flow(2, 0)
    t.add_pending(a)
    t.add_pending(b)
    t.confirm(b, 0)
    restored = flow(3, 1)
    assert t.add_confirmed(restored)
    assert restored.confirmed and t.get(a.client) is None
    assert not t.add_confirmed(flow(4, 1))
    assert t.created_restored == 1 and t.refused_full == 1


def test_remove() -> None:
    """remove() forgets a flow from every index and tolerates a second call."""
    t = table()
    f = flow(1, 0)
    t.add_pending(f)
    t.confirm(f, 0)
    t.remove(f)
    t.remove(f)
    assert len(t) == 0 and not t.by_packed


def test_sweep_reports_flows_due_for_refresh() -> None:
    """Active confirmed flows are due once refresh_interval passed since they were stored."""
    clock = Clock()
    t = table()
    active, idle = flow(1, 0), flow(2, 0)
    for f in (active, idle):
        t.add_pending(f)
        t.confirm(f, 0)
        f.stored_at = 0
    assert t.sweep(clock.seconds(), refresh_interval=10) == []
    clock.advance(10)
    active.last_seen = clock.seconds()
    assert t.sweep(clock.seconds(), refresh_interval=10) == [active]
    never = flow(3, 10)
    t.add_pending(never)
    t.confirm(never, 10)
    assert never in t.sweep(clock.seconds(), refresh_interval=10)  # never stored: due at once
    assert t.sweep(clock.seconds()) == []  # no cache: nothing is due


def session_flow(i: int, now: float, ufrag: bytes = b"S") -> Flow:
    """Flow ``i`` of one session: client 192.0.2.x, server ufrag ``ufrag``."""
    client = (f"192.0.2.{i % 250 + 1}", 20000 + i)
    return Flow(client, socket.inet_aton(client[0]), HOP, now, ufrag=ufrag)


def test_flows_per_ufrag_are_bounded_and_counted() -> None:
    """At most max_per_ufrag flows carry one ufrag; the count follows every change."""
    t = table(max_flows=100)
    assert MAX_FLOWS_PER_UFRAG == 8 and t.max_per_ufrag == 8
    flows = [session_flow(i, 0) for i in range(8)]
    for f in flows:
        assert t.add_pending(f)
    assert not t.ufrag_has_room(b"S") and t.ufrag_has_room(b"T") and t.ufrag_has_room(b"")
    assert not t.add_pending(session_flow(8, 0))
    assert not t.add_confirmed(session_flow(9, 0))
    assert t.refused_ufrag == 2 and t.per_ufrag == {b"S": 8} and len(t) == 8
    t.confirm(flows[0], 1)  # confirming keeps the count
    t.remove(flows[0])  # remove
    assert t.per_ufrag == {b"S": 7}
    assert t.set_ufrag(flows[1], b"T")  # a ufrag change moves one unit
    assert t.per_ufrag == {b"S": 6, b"T": 1} and flows[1].ufrag == b"T"
    others = [session_flow(10 + i, 0, b"T") for i in range(7)]
    for f in others:
        assert t.add_pending(f)
    assert not t.set_ufrag(flows[2], b"T") and flows[2].ufrag == b"S"  # T is full
    assert t.set_ufrag(flows[2], b"S")  # unchanged: always allowed
    t.sweep(20)  # pending expiry
    assert t.per_ufrag == {} and len(t) == 0
    restored = session_flow(30, 20, b"")
    assert t.add_confirmed(restored)  # unknown ufrag: not counted, never refused
    assert t.per_ufrag == {}
    assert t.set_ufrag(restored, b"S") and t.per_ufrag == {b"S": 1}
    t.sweep(100)  # idle expiry
    assert t.per_ufrag == {}


def test_eviction_uncounts_the_ufrag() -> None:
    """A pending flow pushed out of a full table frees its ufrag's slot."""
    t = table(max_flows=2)
    a, b = session_flow(1, 0, b"A"), session_flow(2, 1, b"B")
    t.add_pending(a)
    t.add_pending(b)
    assert t.add_pending(session_flow(3, 2, b"C"))
    assert t.per_ufrag == {b"B": 1, b"C": 1}


def test_bad_parameters() -> None:
    """A table needs room for one flow and positive timeouts."""
    with pytest.raises(ValueError):
        FlowTable(0, 40, 10)
    with pytest.raises(ValueError):
        FlowTable(10, 40, 10, max_per_ufrag=0)
    with pytest.raises(ValueError):
        FlowTable(10, 40, 0)
