# -*- test-case-name: tests.test_relay_protocol -*-
"""The relay's routing logic: token-routed first packets, the flow table, both directions.

:class:`Relay` decides what happens to every datagram; the protocols in
:mod:`voiceedge.relay.protocol` only move bytes in and out of it. Time comes
from the injected clock: the hot path reads ``self.now``, which the sweep
(and every slow-path event) refreshes, so a forwarded packet costs no clock
call, no Deferred, no log line and no allocation beyond the memoryview slice
handed to ``sendto``.

The relay never answers a client itself. Every datagram it sends to a client
is the payload of a datagram a transceiver sent it for that client, and only
for a client that has a flow created from a valid token (or restored from the
cache) whose next hop is that transceiver. Garbage, forged tokens and unknown
sources get zero bytes back. What the relay cannot check is that a source
address is real: someone holding a session of their own (its token and ICE
password) can spoof checks from another address and make the transceiver
answer each with one STUN response to that address. That is reflection
without amplification, and it is bounded per session by
:data:`~voiceedge.relay.flows.MAX_FLOWS_PER_UFRAG` new flows. A confirmed flow
moves to another transceiver only after :data:`MOVE_IDLE` seconds without a
packet from its client, so such a spoofer cannot take a live call's flow away
(see docs/relay.md).
"""

from __future__ import annotations

import collections
import ipaddress
import mmap
import socket
from typing import Any, Callable, Iterator, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from voiceedge.metrics import Sample
from voiceedge.relay.flow_store import FlowCache
from voiceedge.relay.flows import Address, Flow, FlowTable
from voiceedge.relay.router import IRouter, NextHop, Router
from voiceedge.relay.settings import RelaySettings
from voiceedge.wire.encap import (
    FIRST_BYTE,
    FLAG_HOPS,
    MAX_HEADER_SIZE,
    MAX_HOPS,
    EncapError,
    header_length,
    hops,
    pack_header_into,
    peek_addresses,
    peek_client,
)
from voiceedge.wire.route_token import RouteTokenCodec, TokenError
from voiceedge.wire.stun import StunError, is_stun, peek_username

__all__ = ["DROP_REASONS", "MOVE_IDLE", "OFFSET", "BatchIO", "Relay", "ReturnBatchIO", "Steering", "not_started"]

log = Logger()

# Client payloads are received at this offset of the receive buffer, so the
# encapsulation header (at most 39 bytes) is written in front of them in place.
OFFSET = MAX_HEADER_SIZE
_BUFFER_SIZE = OFFSET + 65536  # larger than any UDP payload: never truncates
_SOURCE_CACHE_MAX = 4096
# Header length and client IP length by flags byte, for headers without a hop count (what
# transceivers send): the python backend's return path reads them inline.
_RETURN_SIZES = tuple(header_length(bytes((FIRST_BYTE, flags)) + bytes(MAX_HEADER_SIZE)) for flags in range(4))
_RETURN_IP_LEN = (4, 16, 4, 16)

# A confirmed flow moves to another transceiver (a check whose token names
# it) only when its client has sent nothing for this long. A call in progress
# sends media every 20 ms and so cannot be moved by a check spoofed from its
# address; a client whose path went quiet can.
MOVE_IDLE = 3.0

SendTo = Callable[[Any, Address], object]


class BatchIO(Protocol):
    """What the relay needs of :class:`voiceedge.relay._batchio.Batch` (the recvmmsg/sendmmsg helper)."""

    headroom: int
    stride: int

    @property
    def queued(self) -> int:
        """Datagrams waiting for :meth:`send`."""

    @property
    def received(self) -> int:
        """Datagrams the last receive took from the socket (queued or returned)."""

    @property
    def foreign(self) -> int:
        """Media :meth:`recv_media` and :meth:`media` queued for flows whose ``foreign`` is true (ever)."""

    def recv_media(
        self, fd: int, table: dict[Address, Flow], now: float, max_payload: int
    ) -> list[tuple[int, int, Address]]:
        """Receive; queue media on ``table``'s flows as :meth:`Relay.client_batch` would; return the rest."""

    def media(
        self, offset: int, length: int, source: Address, table: dict[Address, Flow], now: float, max_payload: int
    ) -> bool:
        """What :meth:`recv_media` does with the datagram at ``buffer[offset:offset + length]``: True if queued."""

    def queue(self, start: int, payload_start: int, end: int, addr: Address) -> None:
        """Queue ``buffer[start:end]`` (payload from ``payload_start``) for ``addr``."""

    def send(self, fd: int) -> tuple[int, int, int]:
        """Send the queue on ``fd`` and empty it: (sent, payload bytes sent, failed)."""


class ReturnBatchIO(BatchIO, Protocol):
    """A :class:`BatchIO` that also reads encapsulation headers and finds their flows (the return direction)."""

    def route_by(self, table: dict[tuple[bytes, int], Flow]) -> None:
        """Look route keys ``(client ip packed, client port)`` up in ``table`` (read only)."""

    def route(self, offset: int, length: int, source: Address) -> tuple[int, int, Address, Flow | None]:
        """What a receive gives for the datagram at ``buffer[offset:offset + length]``."""

    def recv_returns(self, fd: int, sources: dict[str, bool]) -> list[tuple[int, int, Address, Flow | None]]:
        """Receive; queue answers as :meth:`Relay.transceiver_batch` would; return the rest as :meth:`route` gives them."""

    def forward(
        self, offset: int, length: int, source: Address, sources: dict[str, bool]
    ) -> tuple[int, int, Address, Flow | None] | None:
        """What :meth:`recv_returns` does with one datagram: None if queued, else :meth:`route`'s item."""


class Steering(Protocol):
    """What the relay needs of :class:`voiceedge.relay.reuseport.OwnerSteering` (the workers' shared steering map).

    Every method may raise ``OSError`` (a ``bpf()`` call refused): the relay
    counts it and goes on without steering that flow.
    """

    def owner_of(self, hop: Address) -> int | None:
        """The index of the worker whose transceiver is at ``hop``, or None."""

    def steer(self, client: Address, owner: int, taken: bool) -> None:
        """Send ``client``'s datagrams to worker ``owner`` (``taken``: this is the owner's relay)."""

    def entry(self, client: Address) -> tuple[int, bool] | None:
        """``client``'s owner and whether the owner's relay took it, or None."""

    def unsteer(self, client: Address) -> bool:
        """Leave ``client`` to the kernel's hash again."""


DROP_REASONS = (
    # client side (public socket)
    "empty",  # zero-length datagram
    "too_big",  # larger than max_payload
    "not_stun_unknown_source",  # media or garbage from a source with no flow
    "pending_media",  # non-STUN from a source whose flow is not confirmed yet
    "stun_not_request",  # STUN, but not a Binding request
    "bad_stun",  # STUN-shaped but malformed
    "no_username",  # Binding request without USERNAME
    "bad_token",  # USERNAME's server ufrag is not a valid token
    "wrong_cluster",  # valid token for a cluster no relay is known for
    "route_outside_networks",  # token points outside transceiver_networks
    "table_full",  # flow table full of confirmed flows
    "too_many_sources",  # MAX_FLOWS_PER_UFRAG flows already carry this ufrag
    "flow_busy",  # a check would move a flow whose client sent something < MOVE_IDLE ago
    # transceiver side (internal socket)
    "outside_transceiver_networks",  # sender is not in transceiver_networks
    "bad_header",  # not a valid encapsulation header
    "no_flow",  # for a client with no flow
    "wrong_transceiver",  # for a client whose flow belongs to another transceiver
    # another relay (global-hop socket)
    "outside_peer_networks",  # sender is not a relay of the fleet
    "hop_limit",  # forwarding it on would pass max_hops relay-to-relay hops
    # either
    "send_failed",  # sendto raised (buffer full, unreachable)
    "restore_rejected",  # a cache entry for another cluster or outside the networks
)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Relay:
    """Routes client datagrams to transceivers and back.

    ``send_to_transceiver`` and ``send_to_client`` are ``sendto``-shaped
    callables (the internal and public sockets' ``sendto``, or a fake's
    ``write``) that :mod:`voiceedge.relay.protocol` binds when the ports
    start. They receive a memoryview into a reused buffer: a fake must copy.
    """

    def __init__(
        self,
        clock: IReactorTime,
        codec: RouteTokenCodec,
        settings: RelaySettings = RelaySettings(),
        *,
        router: IRouter | None = None,
        max_hops: int = 2,
        cache: FlowCache | None = None,
        sweep_interval: float = 1.0,
    ) -> None:
        self.clock = clock
        self.codec = codec
        self.settings = settings
        self.ingress = ingress = settings.ingress
        self._ingress_packed = socket.inet_pton(_family(ingress[0]), ingress[0])
        self.cluster = settings.cluster
        self.networks = settings.transceiver_networks
        self.max_payload = settings.max_payload
        self.internal_family = _family(settings.internal_listen[0])
        self.router: IRouter = router or Router(
            settings.cluster, settings.transceiver_networks, self.internal_family
        )
        if not 1 <= max_hops <= MAX_HOPS:
            raise ValueError(f"max_hops must be 1..{MAX_HOPS}")
        self.max_hops = max_hops
        self.flows = FlowTable(settings.max_flows, settings.flow_idle_timeout, settings.pending_timeout)
        self._confirmed_get = self.flows.confirmed.get
        self._by_packed_get = self.flows.by_packed.get
        self.cache = cache
        if cache is not None:
            cache.on_restore = self.restore
        if not 0 < sweep_interval < MOVE_IDLE:
            # The hot path stamps last_seen with the sweep's clock reading, so
            # an active flow's last_seen lags by up to one interval.
            raise ValueError(f"sweep_interval must be in (0, {MOVE_IDLE:g}) seconds")
        self.sweep_interval = sweep_interval
        self._sweeper: LoopingCall | None = None
        self.now = clock.seconds()

        self.rx = bytearray(_BUFFER_SIZE)
        self.rx_view = memoryview(self.rx)
        self.rx_payload = self.rx_view[OFFSET:]
        self._header_buffer = bytearray(MAX_HEADER_SIZE)
        # The batch backend (use_batch): its slots, and the internal socket's fd it sends on.
        self.batch: BatchIO | None = None
        self.batch_rx: bytearray | mmap.mmap = bytearray()
        self.batch_view = memoryview(self.batch_rx)
        self.transceiver_fd = -1
        # The same for the internal socket's reads (use_return_batch), sent on the public socket.
        self.return_batch: ReturnBatchIO | None = None
        self.return_rx: mmap.mmap | None = None
        self.client_fd = -1

        self.send_to_transceiver: SendTo = not_started
        self.send_to_client: SendTo = not_started
        # The global-hop socket: replies to flows that came from another relay leave from it.
        self.send_to_peer: SendTo = not_started

        self.to_transceiver_packets = 0
        self.to_transceiver_bytes = 0
        self.to_client_packets = 0
        self.to_client_bytes = 0
        self.from_peer_packets = 0
        self.to_peer_packets = 0
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        # Read rounds of the relay's sockets, by (port, polled): what the ports' polling under
        # load saves is wake-ups, and packets over rounds is datagrams per wake-up.
        self.read_rounds: collections.Counter[tuple[str, bool]] = collections.Counter()
        self._sources: dict[str, bool] = {}

        # Workers of the all-in-one (use_steering): this worker's index, its own transceiver's
        # address, and the steering map shared with the other workers (None: steering is off).
        self.worker = 0
        self.own_hop: Address | None = None
        self.steering: Steering | None = None
        self.cross_worker_packets = 0
        self._foreign_counted = 0  # the batch's foreign count already in cross_worker_packets
        self.steering_events: dict[str, int] = dict.fromkeys(("written", "taken", "removed", "error"), 0)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the sweep timer (which also probes and refreshes the cache)."""
        if self._sweeper is None:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(self.sweep_interval, now=True)

    def stop(self) -> None:
        """Stop the sweep timer."""
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def sweep(self) -> None:
        """Expire flows, refresh active confirmed flows in the cache, probe the cache."""
        now = self.now = self.clock.seconds()
        cache = self.cache
        due = self.flows.sweep(now, cache.ttl / 3 if cache is not None else None)
        if cache is not None:
            cache.poll(now)
            if cache.up:
                for flow in due:
                    if flow.return_via is None:
                        cache.store_flow(flow, now)

    # -- client -> transceiver ------------------------------------------------

    def use_batch(self, batch: BatchIO, buffer: bytearray | mmap.mmap) -> None:
        """Take client datagrams from ``batch`` (received into ``buffer``'s slots): see :meth:`client_batch`."""
        self.batch = batch
        self._foreign_counted = batch.foreign
        self.batch_rx = buffer
        self.batch_view = memoryview(buffer)

    def client_datagram(self, data: bytes, addr: Address) -> None:
        """A datagram from a client, as bytes, through the path the relay's port uses."""
        n = len(data)
        batch = self.batch
        if batch is not None:
            if n > batch.stride - batch.headroom:
                self._drop("too_big")
                return
            at = batch.headroom
            self.batch_view[at : at + n] = data
            queued = batch.media(at, n, addr, self.flows.confirmed, self.now, self.max_payload)
            if queued:
                self._count_crossed(batch)
            self.client_batch([] if queued else [(at, n, addr)])
            return
        if n > len(self.rx_payload):
            self._drop("too_big")
            return
        self.rx_payload[:n] = data
        self.client_received(n, addr)

    def read_client_batch(self, fd: int) -> list[tuple[int, int, Address]]:
        """One ``recvmmsg`` on the public socket ``fd``: media on confirmed flows queued by the helper, the rest returned.

        The helper queues a datagram exactly when :meth:`client_batch` would (a
        confirmed flow, not STUN, 1..``max_payload`` bytes), with the flow's
        header in front and ``last_seen`` stamped; from the first datagram it
        leaves, it returns that one and all after it, in order, for
        :meth:`client_batch`, which sends the queue first.
        """
        batch = self.batch
        assert batch is not None
        rest = batch.recv_media(fd, self.flows.confirmed, self.now, self.max_payload)
        if batch.foreign != self._foreign_counted:
            self._count_crossed(batch)
        return rest

    def _count_crossed(self, batch: BatchIO) -> None:
        """Add the media the helper queued to other workers' transceivers to ``cross_worker_packets``."""
        crossed = batch.foreign - self._foreign_counted
        self._foreign_counted = batch.foreign
        self.cross_worker_packets += crossed

    def client_batch(self, received: list[tuple[int, int, Address]]) -> None:
        """Datagrams ``(offset, length, source)`` a :class:`BatchIO` received into ``batch_rx``.

        The hot path of the batch backend: media on a confirmed flow gets its
        flow's header written in front of it in its slot and is queued; the
        queue goes out in one ``sendmmsg`` at the end (and before any other
        datagram, which takes the ordinary path, so order is kept). Each
        datagram's exceptions are caught: a bug is logged, the batch goes on.
        """
        batch = self.batch
        assert batch is not None
        queue = batch.queue
        confirmed_get = self._confirmed_get
        rx = self.batch_rx
        max_payload = self.max_payload
        now = self.now
        crossed = 0
        for at, n, addr in received:
            try:
                flow = confirmed_get(addr)
                if flow is not None and n and rx[at] > 3 and n <= max_payload:
                    header = flow.header
                    start = at - len(header)
                    rx[start:at] = header
                    queue(start, at, at + n, flow.next_hop)
                    flow.last_seen = now
                    if flow.foreign:
                        crossed += 1
                    continue
                if batch.queued:
                    self.flush_batch()
                if n <= len(self.rx_payload):
                    self.rx_payload[:n] = self.batch_view[at : at + n]
                self._client_slow(n, addr, flow)
                now = self.now
            except Exception:
                log.failure("relay: client datagram from {addr} failed", addr=addr)
        if crossed:
            self.cross_worker_packets += crossed
        if batch.queued:
            self.flush_batch()

    def flush_batch(self) -> None:
        """Send the batch's queue to the transceivers (one ``sendmmsg``), and count what went and what failed."""
        assert self.batch is not None
        sent, payload_bytes, failed = self.batch.send(self.transceiver_fd)
        self.to_transceiver_packets += sent
        self.to_transceiver_bytes += payload_bytes
        if failed:
            self.drops["send_failed"] += failed

    def client_received(self, n: int, addr: Address) -> None:
        """A datagram of ``n`` bytes from ``addr`` already sits at ``rx[OFFSET:]``.

        The hot path: a confirmed flow and a non-STUN packet (DTLS, SRTP)
        goes straight out with the flow's header written in front of it.
        """
        flow = self._confirmed_get(addr)
        if flow is not None and n and self.rx[OFFSET] > 3 and n <= self.max_payload:
            header = flow.header
            start = OFFSET - len(header)
            self.rx[start:OFFSET] = header
            try:
                self.send_to_transceiver(self.rx_view[start : OFFSET + n], flow.next_hop)
            except OSError:
                self._drop("send_failed")
                return
            flow.last_seen = self.now
            self.to_transceiver_packets += 1
            self.to_transceiver_bytes += n
            if flow.foreign:
                self.cross_worker_packets += 1
            return
        self._client_slow(n, addr, flow)

    def _send_received(self, flow: Flow, n: int, hop: Address) -> None:
        """Send the datagram in the receive buffer to ``hop`` with ``flow``'s header."""
        header = flow.header
        start = OFFSET - len(header)
        self.rx[start:OFFSET] = header
        try:
            self.send_to_transceiver(self.rx_view[start : OFFSET + n], hop)
        except OSError:
            self._drop("send_failed")
            return
        self.to_transceiver_packets += 1
        self.to_transceiver_bytes += n
        if self.own_hop is not None and hop != self.own_hop:
            self.cross_worker_packets += 1

    def _client_slow(self, n: int, addr: Address, flow: Flow | None) -> None:
        """Everything but media on a confirmed flow: STUN, unknown and pending sources."""
        now = self.now = self.clock.seconds()
        if n == 0:
            self._drop("empty")
            return
        if n > self.max_payload:
            self._drop("too_big")
            return
        data = bytes(self.rx[OFFSET : OFFSET + n])
        if flow is not None:
            self._confirmed_stun(flow, data, n, now)
            return
        pending = self.flows.pending.get(addr)
        if pending is None and self.steering is not None:
            steered = self._steered_here(addr, now)
            if steered is not None:
                self._confirmed_stun(steered, data, n, now)
                return
        if not is_stun(data):
            if pending is not None:
                self._drop("pending_media")
            else:
                self._drop("not_stun_unknown_source")
                if self.cache is not None:
                    self.cache.lookup(addr, now)
            return
        if data[0] != 0 or data[1] != 1:
            self._drop("stun_not_request")
            return
        try:
            username = peek_username(data)
        except StunError:
            self._drop("bad_stun")
            return
        if username is None:
            self._drop("no_username")
            return
        ufrag = username.partition(b":")[0]
        if pending is not None and ufrag == pending.ufrag:
            # The same, already checked token: no need to decode it again.
            self._send_received(pending, n, pending.next_hop)
            return
        hop = self._route(username)
        if hop is None:
            return
        if pending is not None:
            if not self.flows.set_ufrag(pending, ufrag):
                self._drop("too_many_sources")
                return
            pending.next_hop = hop.address
            self._mark_foreign(pending)
            pending.cluster = hop.cluster
            pending.header = self._header(pending.client_packed, pending.client_port, hop.via_relay)
            self._send_received(pending, n, hop.address)
            return
        if not self.flows.ufrag_has_room(ufrag):
            self._drop("too_many_sources")
            return
        new = self._new_flow(addr, hop, now, ufrag)
        if not self.flows.add_pending(new):
            self._drop("table_full")
            return
        self._send_received(new, n, hop.address)

    def _confirmed_stun(self, flow: Flow, data: bytes, n: int, now: float) -> None:
        """A STUN-range packet on a confirmed flow: usually a consent check.

        A Binding request whose server ufrag differs from the flow's is an
        ICE restart. If its token names another transceiver, the flow may
        move there, but only when the client has been idle for
        :data:`MOVE_IDLE` seconds (idleness is judged before this packet
        counts); otherwise the check is dropped as ``flow_busy``. An accepted
        move records ``pending_hop`` with the check's ufrag and the time;
        the move completes only if that transceiver answers within
        ``pending_timeout``. Until then media keeps going to the current
        owner and retransmissions of the check go to the pending one.
        """
        hop = flow.next_hop
        if is_stun(data) and data[0] == 0 and data[1] == 1:
            try:
                username = peek_username(data)
            except StunError:
                username = None
            if username is not None:
                ufrag = username.partition(b":")[0]
                if ufrag != flow.ufrag:
                    flows = self.flows
                    pending_hop = flow.pending_hop
                    if (
                        pending_hop is not None
                        and ufrag == flow.pending_ufrag
                        and now - flow.pending_since <= flows.pending_timeout
                    ):
                        hop = pending_hop  # the accepted move's check, again
                    else:
                        routed = self._route(username, count=False)
                        new_hop = routed.address if routed is not None else None
                        if new_hop == hop:
                            # A restart on the same transceiver. If the ufrag
                            # is full the check still goes to the owner, which
                            # verifies it; the flow just keeps its ufrag.
                            flows.set_ufrag(flow, ufrag)
                        elif new_hop is not None:
                            if now - flow.last_seen < MOVE_IDLE:
                                self._drop("flow_busy")
                                return
                            if not flows.ufrag_has_room(ufrag):
                                self._drop("too_many_sources")
                                return
                            flow.pending_hop = hop = new_hop
                            flow.pending_ufrag = ufrag
                            flow.pending_since = now
                            flow.pending_route = routed
        flow.last_seen = now
        self._send_received(flow, n, hop)

    def _route(self, username: bytes, count: bool = True) -> NextHop | None:
        """The next hop a USERNAME's token names (the router decides), or None (dropped and counted)."""
        try:
            route = self.codec.decode_username(username)
        except TokenError:
            if count:
                self._drop("bad_token")
            return None
        hop = self.router.route(route)
        if isinstance(hop, str):
            if count:
                self._drop(hop)
            return None
        return hop

    def _new_flow(self, client: Address, hop: NextHop, now: float, ufrag: bytes) -> Flow:
        """A Flow with the client's packed address and its header built once."""
        packed = socket.inet_pton(_family(client[0]), client[0])
        header = self._header(packed, client[1], hop.via_relay)
        flow = Flow(client, packed, hop.address, now, ufrag, header)
        flow.cluster = hop.cluster
        self._mark_foreign(flow)
        return flow

    def _header(self, client_packed: bytes, client_port: int, via_relay: bool) -> bytes:
        """The encapsulation header for a client's packets: with a first hop count toward a relay."""
        size = pack_header_into(
            self._header_buffer, client_packed, client_port, self._ingress_packed, self.ingress[1],
            1 if via_relay else None,
        )
        return bytes(self._header_buffer[:size])

    # -- transceiver -> client ------------------------------------------------

    def use_return_batch(self, batch: ReturnBatchIO, buffer: mmap.mmap) -> None:
        """Take transceiver datagrams from ``batch`` (received into ``buffer``'s slots): see :meth:`transceiver_batch`.

        ``batch`` looks route keys up in the flow table's ``by_packed`` (it only reads it).
        """
        if batch.headroom:
            raise ValueError("the return slots have no header room")
        batch.route_by(self.flows.by_packed)
        self.return_batch = batch
        self.return_rx = buffer

    def read_return_batch(self, fd: int) -> list[tuple[int, int, Address, Flow | None]]:
        """One ``recvmmsg`` on the internal socket ``fd``: answers on owned, confirmed flows queued by the helper, the rest returned.

        The helper queues a datagram exactly when :meth:`transceiver_batch`
        would (its flow confirmed, its next hop the sender, its client talking
        to this relay, the sender's host allowed in ``_sources``); from the
        first datagram it leaves, it returns that one and all after it, in
        order, for :meth:`transceiver_batch`, which sends the queue first.
        """
        assert self.return_batch is not None
        return self.return_batch.recv_returns(fd, self._sources)

    def transceiver_slot(self, at: int, n: int, addr: Address) -> None:
        """A transceiver datagram already at ``return_rx[at:at + n]``, through the helper's check as a receive would take it (tests, fakes)."""
        assert self.return_batch is not None
        item = self.return_batch.forward(at, n, addr, self._sources)
        self.transceiver_batch([] if item is None else [item])

    def transceiver_batch(self, received: list[tuple[int, int, Address, Flow | None]]) -> None:
        """Datagrams ``(offset, end, source, flow)`` a :class:`ReturnBatchIO` received into ``return_rx``.

        The helper has checked each header (as :mod:`voiceedge.wire.encap`
        does) and looked its client up in ``flows.by_packed``: for a version 1
        header without a hop count whose client has a flow, ``offset`` is the
        payload's and ``flow`` that flow; otherwise ``offset`` is the
        datagram's and ``flow`` None. The return hot path of the batch
        backend: a known transceiver's datagram for a confirmed flow it owns
        (and whose client talks to this relay) has its payload queued where
        it lies, and the queue goes to the clients in one ``sendmmsg`` at the
        end. Anything else is flushed behind the queue and taken whole as
        ``bytes`` by :meth:`transceiver_datagram`, which makes every check.
        Each datagram's exceptions are caught.
        """
        batch = self.return_batch
        rx = self.return_rx
        assert batch is not None and rx is not None
        queue = batch.queue
        stride = batch.stride
        sources_get = self._sources.get
        for at, end, addr, flow in received:
            try:
                if (
                    flow is not None
                    and flow.next_hop == addr
                    and flow.confirmed
                    and flow.return_via is None
                    and sources_get(addr[0])
                ):
                    queue(at, at, end, flow.client)
                    continue
                if batch.queued:
                    self.flush_return_batch()
                # The datagram starts at its slot's start (the return slots have no header room).
                self.transceiver_datagram(rx[at - at % stride : end], addr)
            except Exception:
                log.failure("relay: internal datagram from {addr} failed", addr=addr)
        if batch.queued:
            self.flush_return_batch()

    def flush_return_batch(self) -> None:
        """Send the return queue to the clients from the public socket, and count what went and what failed."""
        assert self.return_batch is not None
        sent, payload_bytes, failed = self.return_batch.send(self.client_fd)
        self.to_client_packets += sent
        self.to_client_bytes += payload_bytes
        if failed:
            self.drops["send_failed"] += failed

    def transceiver_datagram(self, data: bytes, addr: Address) -> None:
        """An encapsulated datagram from a transceiver on the internal socket.

        The hot path: a known transceiver answering a confirmed flow it owns;
        the payload goes to the client untouched from the public socket.
        """
        allowed = self._sources.get(addr[0])
        if allowed is None:
            allowed = self._source_allowed(addr[0])
        if not allowed:
            self._drop("outside_transceiver_networks")
            return
        # What transceivers send (version 1, no hop count) is read here, as peek_client would;
        # anything else goes through peek_client, which checks it all and says what is wrong.
        flags = data[1] if len(data) >= 2 and data[0] == FIRST_BYTE else FLAG_HOPS
        if flags < FLAG_HOPS and len(data) >= _RETURN_SIZES[flags]:
            size = _RETURN_SIZES[flags]
            ip = data[6 : 6 + _RETURN_IP_LEN[flags]]
            port = (data[2] << 8) | data[3]
        else:
            try:
                ip, port, size = peek_client(data)
            except EncapError:
                self._drop("bad_header")
                return
        flow = self._by_packed_get((ip, port))
        if flow is None or not flow.confirmed or flow.next_hop != addr:
            self._transceiver_slow(data, addr, flow, ip, port, size)
            return
        via = flow.return_via
        try:
            if via is None:
                self.send_to_client(memoryview(data)[size:], flow.client)
            else:
                # The client talks to another relay: the answer goes back the way it came, as it is.
                self.send_to_peer(data, via)
                self.to_peer_packets += 1
        except OSError:
            self._drop("send_failed")
            return
        self.to_client_packets += 1
        self.to_client_bytes += len(data) - size

    def _transceiver_slow(
        self, data: bytes, addr: Address, flow: Flow | None, ip: bytes, port: int, size: int
    ) -> None:
        """Confirmation, a session moving to another transceiver, or a drop."""
        now = self.now = self.clock.seconds()
        if flow is None:
            # Decided: a transceiver cannot create a flow, so it cannot make
            # the relay send to an address no client has routed through it.
            # After a relay restart its packets for a live client do start a
            # (rate-limited) cache lookup, like the client's media does.
            self._drop("no_flow")
            if self.cache is not None:
                family = socket.AF_INET6 if len(ip) == 16 else socket.AF_INET
                self.cache.lookup((socket.inet_ntop(family, ip), port), now)
            return
        if flow.next_hop == addr:
            if not flow.confirmed:
                # The same address, as the receive's own tuple: the batch helper's source tuples are
                # shared per sender, so its check of later answers matches by identity.
                flow.next_hop = addr
                self.flows.confirm(flow, now)
                if self.cache is not None and flow.return_via is None:
                    self.cache.store_flow(flow, now)
                self._steer(flow)
        elif flow.pending_hop == addr:
            # The move completes only within pending_timeout of the check
            # that started it, and takes that check's ufrag, so the client's
            # old ufrag does not move it back without the idle rule.
            flows = self.flows
            ufrag = flow.pending_ufrag
            flow.pending_hop = None
            flow.pending_ufrag = b""
            if now - flow.pending_since > flows.pending_timeout:
                self._drop("wrong_transceiver")
                return
            if not flows.set_ufrag(flow, ufrag):
                self._drop("too_many_sources")
                return
            flow.next_hop = addr
            self._mark_foreign(flow)
            route = flow.pending_route
            flow.pending_route = None
            if route is not None:
                flow.cluster = route.cluster
                if flow.return_via is None:
                    flow.header = self._header(flow.client_packed, flow.client_port, route.via_relay)
            if not flow.confirmed:
                flows.confirm(flow, now)
            if self.cache is not None and flow.return_via is None:
                self.cache.store_flow(flow, now)
            self._steer(flow)
        else:
            self._drop("wrong_transceiver")
            return
        via = flow.return_via
        try:
            if via is None:
                self.send_to_client(memoryview(data)[size:], flow.client)
            else:
                self.send_to_peer(data, via)
                self.to_peer_packets += 1
        except OSError:
            self._drop("send_failed")
            return
        self.to_client_packets += 1
        self.to_client_bytes += len(data) - size

    # -- another relay -> transceiver (the global hop) ---------------------------

    def peer_datagram(self, data: bytes, addr: Address) -> None:
        """An encapsulated client datagram from another cluster's relay, on the global-hop socket.

        The sending relay took the client's packet at its own public address
        (the header's ingress) and forwards it here because the token names
        this cluster. The hot path: a confirmed flow whose client came
        through that relay; the datagram goes on to the transceiver exactly
        as it came (the header already says who the client is and which
        address it talks to).
        """
        if not self.router.is_peer(addr[0]):
            self._drop("outside_peer_networks")
            return
        try:
            ip, port, size = peek_client(data)
        except EncapError:
            self._drop("bad_header")
            return
        flow = self._by_packed_get((ip, port))
        if (
            flow is not None
            and flow.confirmed
            and flow.return_via == addr
            and len(data) > size
            and data[size] > 3
        ):
            try:
                self.send_to_transceiver(data, flow.next_hop)
            except OSError:
                self._drop("send_failed")
                return
            flow.last_seen = self.now
            self.from_peer_packets += 1
            self.to_transceiver_packets += 1
            self.to_transceiver_bytes += len(data) - size
            return
        self._peer_slow(data, addr, flow, ip, size)

    def _peer_slow(self, data: bytes, addr: Address, flow: Flow | None, ip: bytes, size: int) -> None:
        """A check from another relay: route it by its token, make or update the flow."""
        now = self.now = self.clock.seconds()
        self.from_peer_packets += 1
        payload = data[size:]
        if not payload:
            self._drop("empty")
            return
        request = is_stun(payload) and payload[0] == 0 and payload[1] == 1
        ours = flow if flow is not None and flow.return_via == addr else None
        if not request:
            if ours is not None and is_stun(payload):
                # A STUN answer or indication on this peer's flow (the client's answer
                # to the transceiver's consent check): on to the owner, like local ones.
                self._forward_from_peer(data, ours, now, len(payload))
                return
            # Media before the owner answered, or with no flow here: the client's next check makes one.
            self._drop("pending_media" if ours is not None else "no_flow")
            return
        try:
            username = peek_username(payload)
        except StunError:
            self._drop("bad_stun")
            return
        if username is None:
            self._drop("no_username")
            return
        ufrag = username.partition(b":")[0]
        if ours is not None and ufrag == ours.ufrag:
            self._forward_from_peer(data, ours, now, len(payload))
            return
        hop = self._route(username)
        if hop is None:
            return
        hop_count = hops(data) or 0
        if hop.via_relay:
            # Another relay's cluster again: onward, with the count one higher and bounded.
            if hop_count + 1 > self.max_hops:
                self._drop("hop_limit")
                return
            data = self._onward_header(data, hop_count + 1) + payload
        flows = self.flows
        if flow is not None and (flow.next_hop != hop.address or flow.return_via != addr):
            # The same rule as a local move: only a client quiet for MOVE_IDLE, so a
            # check spoofed from a live client's address cannot take its flow away.
            if now - flow.last_seen < MOVE_IDLE:
                self._drop("flow_busy")
                return
            flows.remove(flow)
            flow = None
        if flow is None:
            if not flows.ufrag_has_room(ufrag):
                self._drop("too_many_sources")
                return
            family = socket.AF_INET6 if len(ip) == 16 else socket.AF_INET
            client = (socket.inet_ntop(family, ip), (data[2] << 8) | data[3])
            flow = Flow(client, ip, hop.address, now, ufrag, b"")
            flow.cluster = hop.cluster
            flow.return_via = addr
            if not flows.add_pending(flow):
                self._drop("table_full")
                return
        else:
            if flow.ufrag != ufrag and not flows.set_ufrag(flow, ufrag):
                self._drop("too_many_sources")
                return
            flow.last_seen = now
        try:
            self.send_to_transceiver(data, hop.address)
        except OSError:
            self._drop("send_failed")
            return
        self.to_transceiver_packets += 1
        self.to_transceiver_bytes += len(payload)

    def _forward_from_peer(self, data: bytes, flow: Flow, now: float, size: int) -> None:
        """Send a datagram from the flow's peer relay on to the flow's next hop, as it came."""
        flow.last_seen = now
        try:
            self.send_to_transceiver(data, flow.next_hop)
        except OSError:
            self._drop("send_failed")
            return
        self.to_transceiver_packets += 1
        self.to_transceiver_bytes += size

    @staticmethod
    def _onward_header(data: bytes, hop_count: int) -> bytes:
        """The header of ``data`` with its hop count set to ``hop_count`` (added if it had none)."""
        client_ip, client_port, ingress_ip, ingress_port, _ = peek_addresses(data)
        buffer = bytearray(MAX_HEADER_SIZE)
        n = pack_header_into(buffer, client_ip, client_port, ingress_ip, ingress_port, hop_count)
        return bytes(buffer[:n])

    # -- cache ---------------------------------------------------------------

    def restore(self, client: Address, cluster: int, hop: Address) -> None:
        """Install a confirmed flow found in the cache (a lookup hit)."""
        now = self.now = self.clock.seconds()
        if not self.router.may_restore(cluster, hop):
            self._drop("restore_rejected")
            return
        existing = self.flows.get(client)
        if existing is not None:
            if not existing.confirmed and existing.next_hop == hop:
                self.flows.confirm(existing, now)
                existing.stored_at = now
            return
        flow = self._new_flow(client, NextHop(hop, cluster != self.cluster, cluster), now, b"")
        flow.stored_at = now  # it is in the cache already
        if not self.flows.add_confirmed(flow):
            self._drop("table_full")
            return
        self._steer(flow)

    # -- steering (the all-in-one's workers) ------------------------------------

    def use_steering(self, steering: Steering | None, worker: int, own_hop: Address) -> None:
        """Be worker ``worker``, whose own transceiver is at ``own_hop``; steer with ``steering`` (None: off).

        Without steering the relay only counts the datagrams it forwards to
        another worker's transceiver (``cross_worker_packets``). With it,
        each local client's flow, once confirmed, gets an entry naming the
        worker that owns its next hop, so the kernel sends the client's next
        datagrams to that worker's public socket; that worker's relay takes
        the flow from the entry when the first of them arrives
        (:meth:`_steered_here`). An entry goes when the owner's relay forgets
        the flow, or when a relay that wrote it forgets its flow before the
        owner took it.
        """
        self.worker = worker
        self.own_hop = own_hop
        self.steering = steering
        self.flows.on_forget = self._forget_steered if steering is not None else None
        for flow in self.flows:
            self._mark_foreign(flow)

    def _mark_foreign(self, flow: Flow) -> None:
        own = self.own_hop
        flow.foreign = own is not None and flow.next_hop != own

    def _steer(self, flow: Flow) -> None:
        """Write the entry of a local client's confirmed ``flow``: its packets go to its owner's worker."""
        steering = self.steering
        if steering is None or flow.return_via is not None:
            return
        try:
            owner = steering.owner_of(flow.next_hop)
            if owner is None:
                return
            steering.steer(flow.client, owner, owner == self.worker)
        except OSError:
            self.steering_events["error"] += 1
            return
        flow.steered = True
        self.steering_events["written"] += 1

    def _steered_here(self, client: Address, now: float) -> Flow | None:
        """A confirmed flow to this worker's transceiver, if the steering map sends ``client`` here."""
        steering = self.steering
        own = self.own_hop
        assert steering is not None
        try:
            entry = steering.entry(client)
        except OSError:
            self.steering_events["error"] += 1
            return None
        if entry is None or entry[0] != self.worker or own is None:
            return None
        flow = self._new_flow(client, NextHop(own, cluster=self.cluster), now, b"")
        if not self.flows.add_confirmed(flow, steered=True):
            self._drop("table_full")
            return None
        flow.steered = True
        self.steering_events["taken"] += 1
        if not entry[1]:
            try:
                steering.steer(client, self.worker, True)
            except OSError:
                self.steering_events["error"] += 1
        return flow

    def _forget_steered(self, flow: Flow) -> None:
        """The table let a steered flow go: remove its entry if it is the owner's, or was never taken."""
        steering = self.steering
        if steering is None:
            return
        try:
            entry = steering.entry(flow.client)
            if entry is not None and (entry[0] == self.worker or not entry[1]):
                steering.unsteer(flow.client)
                self.steering_events["removed"] += 1
        except OSError:
            self.steering_events["error"] += 1

    def release_steering(self) -> None:
        """Remove the entries this worker's flows hold (it stops); the kernel's hash takes their clients."""
        for flow in self.flows:
            if flow.steered:
                self._forget_steered(flow)
                flow.steered = False

    # -- checks --------------------------------------------------------------

    def _in_networks(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def _source_allowed(self, host: str) -> bool:
        """Whether ``host`` may send on the internal socket (a transceiver, or a peer relay); cached."""
        allowed = self._in_networks(host) or self.router.is_peer(host)
        if len(self._sources) >= _SOURCE_CACHE_MAX:
            self._sources.clear()
        self._sources[host] = allowed
        return allowed

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1

    # -- metrics -------------------------------------------------------------

    def metrics(self) -> Iterator[Sample]:
        """Samples for ``GET /metrics`` (see docs/relay.md)."""
        p = "voiceedge_relay_"
        flows = self.flows
        yield ("counter", p + "packets", "Datagrams forwarded",
               {"direction": "to_transceiver"}, self.to_transceiver_packets)
        yield ("counter", p + "packets", "Datagrams forwarded",
               {"direction": "to_client"}, self.to_client_packets)
        yield ("counter", p + "bytes", "Payload bytes forwarded (without the header)",
               {"direction": "to_transceiver"}, self.to_transceiver_bytes)
        yield ("counter", p + "bytes", "Payload bytes forwarded (without the header)",
               {"direction": "to_client"}, self.to_client_bytes)
        yield ("counter", p + "global_hop_packets", "Datagrams over the global hop to or from other relays",
               {"direction": "from_relay"}, self.from_peer_packets)
        yield ("counter", p + "global_hop_packets", "Datagrams over the global hop to or from other relays",
               {"direction": "to_relay"}, self.to_peer_packets)
        for port in ("client", "transceiver", "peer"):
            for polled in (False, True):
                yield ("counter", p + "read_rounds",
                       "Read rounds of the relay's sockets, by port and by what began them (readable, or a poll under load)",
                       {"port": port, "trigger": "poll" if polled else "readable"}, self.read_rounds[port, polled])
        yield ("gauge", p + "batch_io", "How the public socket reads: recvmmsg/sendmmsg, or one datagram per call",
               {"backend": "python" if self.batch is None else "recvmmsg"}, 1)
        for direction, batch in (("to_transceiver", self.batch), ("to_client", self.return_batch)):
            yield ("counter", p + "gso_datagrams",
                   "Datagrams forwarded inside UDP_SEGMENT (GSO) sends: runs of equal datagrams to one address",
                   {"direction": direction}, getattr(batch, "segmented", 0))
        yield ("gauge", p + "flows", "Flows in the table", {"state": "pending"}, len(flows.pending))
        yield ("gauge", p + "flows", "Flows in the table",
               {"state": "confirmed"}, len(flows.confirmed))
        yield ("gauge", p + "flows_max", "Bound of the flow table", {}, flows.max_flows)
        yield ("counter", p + "flows_created", "New flows",
               {"origin": "token"}, flows.created_pending)
        yield ("counter", p + "flows_created", "New flows",
               {"origin": "cache"}, flows.created_restored)
        yield ("counter", p + "flows_created", "New flows",
               {"origin": "steering"}, flows.created_steered)
        yield ("counter", p + "flows_confirmed", "Pending flows confirmed by their transceiver",
               {}, flows.confirmed_total)
        yield ("counter", p + "flows_ended", "Flows removed",
               {"reason": "pending_expired"}, flows.expired_pending)
        yield ("counter", p + "flows_ended", "Flows removed",
               {"reason": "idle_expired"}, flows.expired_confirmed)
        yield ("counter", p + "flows_ended", "Flows removed",
               {"reason": "pending_evicted"}, flows.evicted_pending)
        yield ("gauge", p + "steering", "Whether client datagrams are steered to the worker owning their call",
               {"state": "on" if self.steering is not None else "off"}, 1)
        yield ("counter", p + "cross_worker_packets", "Client datagrams forwarded to another worker's transceiver",
               {}, self.cross_worker_packets)
        for event, count in self.steering_events.items():
            yield ("counter", p + "steering_entries", "Steering map entries this worker wrote, took, removed (or failed to)",
                   {"event": event}, count)
        for reason, count in self.drops.items():
            yield ("counter", p + "drops", "Datagrams dropped, by reason", {"reason": reason}, count)
        cache = self.cache
        yield ("gauge", p + "redis_enabled", "Whether the Redis flow cache is configured",
               {}, 0 if cache is None else 1)
        if cache is None:
            return
        yield ("gauge", p + "redis_up", "Whether Redis answered the last operation", {},
               1 if cache.up else 0)
        for result, count in (
            ("hit", cache.lookup_hits),
            ("miss", cache.lookup_misses),
            ("error", cache.lookup_errors),
            ("rate_limited", cache.lookup_rate_limited),
            ("negative_cached", cache.lookup_negative_cached),
            ("skipped", cache.lookup_skipped),
        ):
            yield ("counter", p + "redis_lookups", "Flow lookups after an unknown source",
                   {"result": result}, count)
        for result, count in (
            ("ok", cache.writes_ok),
            ("error", cache.write_errors),
            ("skipped", cache.writes_skipped),
        ):
            yield ("counter", p + "redis_writes", "Confirmed flows written or refreshed",
                   {"result": result}, count)
        yield ("gauge", p + "redis_in_flight", "Redis operations awaiting an answer",
               {}, cache.in_flight)


def not_started(data: Any, addr: Address) -> object:
    """The send function of a socket that is not open: every send fails (and is counted)."""
    raise OSError("relay port not started")
