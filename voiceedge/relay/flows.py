# -*- test-case-name: tests.test_relay_flows -*-
"""The relay's flow table: client address -> next hop, pending until the owner answers.

Sans-I/O: every method takes ``now`` (seconds from the caller's clock) and
nothing here touches a socket or a timer. The relay's datagram path reads the
``confirmed`` dict directly; everything that changes the table goes through
:class:`FlowTable` so the size bound and the indexes stay consistent.

Eviction rule (the table never holds more than ``max_flows`` entries):

* a new pending entry, when the table is full, evicts the *oldest pending*
  entry (by creation time);
* a pending entry never evicts a confirmed one: when the table is full of
  confirmed flows the new entry is refused (and counted);
* confirming an entry moves it from pending to confirmed and does not change
  the size;
* a confirmed entry restored from the Redis cache follows the same rule as a
  pending one (it may evict the oldest pending, never a confirmed flow).

Per-session bound: at most ``max_per_ufrag`` (:data:`MAX_FLOWS_PER_UFRAG`, 8)
flows, pending and confirmed together, carry the same server ufrag. The count
is kept per ufrag (O(1) on every add, remove, eviction, expiry and ufrag
change) so one session's token and ICE password, replayed from many spoofed
sources, cannot fill the table with flows its transceiver will confirm.
Flows with an unknown ufrag (restored from the cache) are not counted.

Expiry: a pending entry lives ``pending_timeout`` seconds from its creation
unless confirmed; a confirmed entry lives until the client has sent nothing
for ``idle_timeout`` seconds (packets from the transceiver do not keep it
alive: a client that went away must let its flow go).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

__all__ = ["MAX_FLOWS_PER_UFRAG", "Address", "Flow", "FlowTable"]

Address = tuple[str, int]

# A browser's session has a handful of candidate pairs (host, server-reflexive
# and relayed, per family), each a source address with the session's ufrag.
MAX_FLOWS_PER_UFRAG = 8


class Flow:
    """One client's route through the relay.

    ``client_packed`` and ``client_port`` index the flow for packets coming
    back from a transceiver (the encapsulation header carries the client's IP
    packed); ``header`` is the encapsulation header the relay puts in front
    of this client's packets, built once. ``ufrag`` is the server ufrag whose
    token created the flow (empty when unknown, e.g. restored from Redis).
    ``pending_hop`` is a second transceiver the client has started to check
    against (an ICE restart that moves the session), with ``pending_ufrag``,
    the server ufrag of that check, and ``pending_since``, when the move was
    accepted; it takes over only if it answers within the table's
    ``pending_timeout``. ``stored_at`` is when the flow was last written to
    the cache (``-inf``: never, or a write was skipped and is owed).
    ``return_via`` is set for a client that talks to another cluster's relay:
    the flow came from that relay over the global hop, and answers go back
    to it. ``foreign`` says its next hop is another worker's transceiver
    (the all-in-one's workers: its packets cross between processes);
    ``steered`` that this relay wrote or took the client's entry in the
    workers' steering map (:mod:`voiceedge.relay.reuseport`).
    """

    __slots__ = (
        "client",
        "client_packed",
        "client_port",
        "next_hop",
        "confirmed",
        "created",
        "last_seen",
        "ufrag",
        "header",
        "pending_hop",
        "pending_ufrag",
        "pending_since",
        "pending_route",
        "cluster",
        "stored_at",
        "return_via",
        "foreign",
        "steered",
        "route_key",
    )

    def __init__(
        self,
        client: Address,
        client_packed: bytes,
        next_hop: Address,
        now: float,
        ufrag: bytes = b"",
        header: bytes = b"",
        confirmed: bool = False,
    ) -> None:
        self.client = client
        self.client_packed = client_packed
        self.client_port = client[1]
        # Its key in the table's by_packed: one object for the flow's life, which the relay's batch helper
        # reuses for its lookups, so they match by identity instead of comparing tuples.
        self.route_key = (client_packed, client[1])
        self.next_hop = next_hop
        self.confirmed = confirmed
        self.created = now
        self.last_seen = now
        self.ufrag = ufrag
        self.header = header
        self.pending_hop: Address | None = None
        self.pending_ufrag = b""
        self.pending_since = float("-inf")
        # The pending move's route (relay or transceiver, and its cluster).
        self.pending_route: Any = None
        # The cluster its token named (None: unknown, e.g. an old cache entry).
        self.cluster: int | None = None
        self.stored_at = float("-inf")  # never stored
        # The relay this flow's client talks to, when it reached us through the
        # global hop: answers go back to it, encapsulated, not to the client.
        self.return_via: Address | None = None
        self.foreign = False
        self.steered = False

    def __repr__(self) -> str:
        state = "confirmed" if self.confirmed else "pending"
        return f"<Flow {self.client} -> {self.next_hop} {state}>"


class FlowTable:
    """Bounded client -> next-hop table with pending and confirmed entries.

    ``confirmed`` and ``pending`` map the client address to its
    :class:`Flow`; ``by_packed`` maps ``(packed client IP, port)`` to the
    same flows for the transceiver -> client direction. ``pending`` keeps
    insertion (= creation) order, which is the eviction and expiry order.
    ``per_ufrag`` counts the flows of each (non-empty) ufrag; change a
    flow's ufrag only through :meth:`set_ufrag` so it stays right.
    ``on_forget`` is called with every ``steered`` flow the table lets go
    (expiry, eviction, removal).
    """

    __slots__ = (
        "max_flows",
        "idle_timeout",
        "pending_timeout",
        "confirmed",
        "pending",
        "by_packed",
        "max_per_ufrag",
        "per_ufrag",
        "refused_ufrag",
        "created_pending",
        "created_restored",
        "created_steered",
        "confirmed_total",
        "evicted_pending",
        "refused_full",
        "expired_pending",
        "expired_confirmed",
        "on_forget",
    )

    def __init__(
        self,
        max_flows: int,
        idle_timeout: float,
        pending_timeout: float,
        max_per_ufrag: int = MAX_FLOWS_PER_UFRAG,
    ) -> None:
        if max_flows < 1 or max_per_ufrag < 1:
            raise ValueError("max_flows and max_per_ufrag must be at least 1")
        if pending_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.pending_timeout = pending_timeout
        self.confirmed: dict[Address, Flow] = {}
        self.pending: dict[Address, Flow] = {}
        # Never rebound: the relay's batch helper holds this dict (Batch.route_by) and reads it live.
        self.by_packed: dict[tuple[bytes, int], Flow] = {}
        self.max_per_ufrag = max_per_ufrag
        self.per_ufrag: dict[bytes, int] = {}
        self.refused_ufrag = 0
        self.created_pending = 0
        self.created_restored = 0
        self.created_steered = 0
        self.confirmed_total = 0
        self.evicted_pending = 0
        self.refused_full = 0
        self.expired_pending = 0
        self.expired_confirmed = 0
        self.on_forget: Callable[[Flow], None] | None = None

    def __len__(self) -> int:
        return len(self.confirmed) + len(self.pending)

    def __iter__(self) -> Iterator[Flow]:
        yield from list(self.confirmed.values())
        yield from list(self.pending.values())

    def get(self, client: Address) -> Flow | None:
        """The flow of ``client``, confirmed or pending, or None."""
        flow = self.confirmed.get(client)
        if flow is None:
            flow = self.pending.get(client)
        return flow

    def _make_room(self) -> bool:
        """Evict the oldest pending entry if the table is full; False if it cannot."""
        if len(self.confirmed) + len(self.pending) < self.max_flows:
            return True
        if not self.pending:
            self.refused_full += 1
            return False
        oldest = next(iter(self.pending))
        self._drop(self.pending.pop(oldest))
        self.evicted_pending += 1
        return True

    def ufrag_has_room(self, ufrag: bytes) -> bool:
        """Whether one more flow may carry ``ufrag`` (always, for the empty one)."""
        return not ufrag or self.per_ufrag.get(ufrag, 0) < self.max_per_ufrag

    def _count(self, ufrag: bytes) -> None:
        if ufrag:
            per_ufrag = self.per_ufrag
            per_ufrag[ufrag] = per_ufrag.get(ufrag, 0) + 1

    def _uncount(self, ufrag: bytes) -> None:
        if ufrag:
            per_ufrag = self.per_ufrag
            left = per_ufrag[ufrag] - 1
            if left:
                per_ufrag[ufrag] = left
            else:
                del per_ufrag[ufrag]

    def set_ufrag(self, flow: Flow, ufrag: bytes) -> bool:
        """Give ``flow`` (in the table) the server ufrag ``ufrag``; False if that ufrag is full."""
        if ufrag == flow.ufrag:
            return True
        if not self.ufrag_has_room(ufrag):
            self.refused_ufrag += 1
            return False
        self._uncount(flow.ufrag)
        self._count(ufrag)
        flow.ufrag = ufrag
        return True

    def _drop(self, flow: Flow) -> None:
        """Forget a flow just taken out of ``pending`` or ``confirmed``."""
        key = flow.route_key
        if self.by_packed.get(key) is flow:
            del self.by_packed[key]
        self._uncount(flow.ufrag)
        if flow.steered and self.on_forget is not None:
            self.on_forget(flow)

    def add_pending(self, flow: Flow) -> bool:
        """Insert a new pending ``flow`` (its client must have no flow); False if refused.

        Refused when the table is full of confirmed flows, or when
        ``max_per_ufrag`` flows already carry ``flow.ufrag`` (check
        :meth:`ufrag_has_room` first to tell the two apart).
        """
        if not self._insert(flow, confirmed=False):
            return False
        self.created_pending += 1
        return True

    def add_confirmed(self, flow: Flow, steered: bool = False) -> bool:
        """Insert a flow already known to be confirmed (restored from the cache, or ``steered`` here); False if refused."""
        if not self._insert(flow, confirmed=True):
            return False
        if steered:
            self.created_steered += 1
        else:
            self.created_restored += 1
        return True

    def _insert(self, flow: Flow, confirmed: bool) -> bool:
        if flow.client in self.confirmed or flow.client in self.pending:
            raise ValueError(f"{flow.client} already has a flow")
        if not self.ufrag_has_room(flow.ufrag):
            self.refused_ufrag += 1
            return False
        if not self._make_room():
            return False
        self._count(flow.ufrag)
        flow.confirmed = confirmed
        (self.confirmed if confirmed else self.pending)[flow.client] = flow
        self.by_packed[flow.route_key] = flow
        return True

    def confirm(self, flow: Flow, now: float) -> None:
        """Move a pending ``flow`` to confirmed: media may use it from now on."""
        if flow.confirmed:
            return
        if self.pending.pop(flow.client, None) is not flow:
            raise ValueError(f"{flow!r} is not in the table")
        flow.confirmed = True
        flow.last_seen = now
        self.confirmed[flow.client] = flow
        self.confirmed_total += 1

    def remove(self, flow: Flow) -> None:
        """Forget ``flow`` (no-op if it is already gone)."""
        table = self.confirmed if flow.confirmed else self.pending
        if table.get(flow.client) is flow:
            del table[flow.client]
            self._drop(flow)

    def sweep(self, now: float, refresh_interval: float | None = None) -> list[Flow]:
        """Expire what is due; return the confirmed flows due for a cache refresh.

        A confirmed flow is due when ``refresh_interval`` has passed since it
        was last stored and the client has been active since then (so an idle
        flow's cache entry is left to its TTL). Pending entries are visited in
        creation order and the walk stops at the first one still young, so
        their cost is the number that expire.
        """
        pending = self.pending
        deadline = now - self.pending_timeout
        while pending:
            client = next(iter(pending))
            flow = pending[client]
            if flow.created > deadline:
                break
            del pending[client]
            self._drop(flow)
            self.expired_pending += 1

        due: list[Flow] = []
        idle_before = now - self.idle_timeout
        expired = [f for f in self.confirmed.values() if f.last_seen <= idle_before]
        for flow in expired:
            del self.confirmed[flow.client]
            self._drop(flow)
            self.expired_confirmed += 1
        if refresh_interval is not None:
            stale_before = now - refresh_interval
            for flow in self.confirmed.values():
                stored = flow.stored_at
                if stored <= stale_before and flow.last_seen > stored:
                    due.append(flow)
        return due
