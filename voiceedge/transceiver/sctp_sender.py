# -*- test-case-name: tests.test_sctp_parts -*-
"""The outbound half of an SCTP association: send queue, windows, T3 and fast retransmission (RFC 9260 §6-7)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from voiceedge.transceiver.sctp_rto import RtoEstimator
from voiceedge.transceiver.sctp_tsn import TSN_MASK, unwrap_tsn
from voiceedge.wire import sctp_chunks as sc
from voiceedge.wire.sctp_chunks import DataChunk

__all__ = ["OutboundChunk", "SctpSender"]


@dataclass(slots=True)
class OutboundChunk:
    """A DATA chunk we sent or will send, with its retransmission bookkeeping."""

    tsn: int  # unwrapped
    stream_id: int
    size: int
    wire: bytes
    sent_count: int = 0
    sent_time: float = 0.0
    acked: bool = False
    in_flight: bool = False
    retransmit: bool = False
    misses: int = 0
    fast_retransmitted: bool = False
    timed: bool = True  # may give an RTT sample: never marked for retransmission (Karn)


class SctpSender:
    """Fragment user messages into DATA chunks and get them acknowledged.

    Sans-I/O: :meth:`enqueue` queues a message; :meth:`chunks_to_send` picks retransmissions, then
    new DATA, within the congestion window (§7.2), the peer's receiver window (§6.1) and
    Max.Burst; :meth:`on_ack` takes a SACK's cumulative TSN and gap blocks (or a SHUTDOWN's);
    :meth:`on_t3_expired` runs the retransmission timer when :attr:`t3_at` passes. RTT samples
    go to, and timers come from, the association's shared :class:`RtoEstimator`.
    """

    def __init__(
        self,
        initial_tsn: int,
        max_packet_size: int,
        receive_window: int,
        fast_retransmit_threshold: int,
        max_burst: int,
        rto: RtoEstimator,
    ) -> None:
        self._mtu = max_packet_size
        self._max_fragment = (max_packet_size - sc.COMMON_HEADER_SIZE - sc.DATA_HEADER_SIZE) & ~3
        self._fast_retransmit_threshold = fast_retransmit_threshold
        self._max_burst = max_burst
        self._rto = rto
        self._next_tsn = initial_tsn  # unwrapped, next to assign
        self._acked_cum = initial_tsn - 1  # unwrapped cumulative TSN the peer acked
        self._pending: deque[OutboundChunk] = deque()
        self._sent: deque[OutboundChunk] = deque()
        self._out_ssn: dict[int, int] = {}
        self._flight = 0
        self._cwnd = min(4 * self._mtu, max(2 * self._mtu, 4380))
        self._ssthresh = receive_window
        self._partial_bytes_acked = 0
        self._peer_rwnd = receive_window
        self._fast_recovery_exit: int | None = None
        self._fast_retransmit_pending = False
        self._highest_gap_acked = 0  # unwrapped; no chunk above it is marked acked
        self._retransmits_pending = False
        self.t3_at: float | None = None
        self.retransmissions = 0

    def start(self, peer_rwnd: int) -> None:
        """Take the peer's initial receiver window (from its INIT or INIT-ACK)."""
        self._peer_rwnd = peer_rwnd
        self._ssthresh = max(peer_rwnd, 4 * self._mtu)

    def stop(self) -> None:
        """The association ended: drop everything queued or unacknowledged."""
        self.t3_at = None
        self._pending.clear()
        self._sent.clear()

    # -- state ----------------------------------------------------------------------------------

    @property
    def next_tsn(self) -> int:
        """The unwrapped TSN the next new DATA chunk gets."""
        return self._next_tsn

    @property
    def last_tsn(self) -> int:
        """The last TSN assigned, as on the wire (what an RFC 6525 reset request names)."""
        return (self._next_tsn - 1) & TSN_MASK

    @property
    def cwnd(self) -> int:
        """The congestion window in bytes."""
        return self._cwnd

    @property
    def ssthresh(self) -> int:
        """The slow-start threshold in bytes."""
        return self._ssthresh

    @property
    def flight_size(self) -> int:
        """User bytes sent and neither acknowledged nor marked lost."""
        return self._flight

    @property
    def buffered_amount(self) -> int:
        """User bytes queued or in flight, not yet acknowledged."""
        return sum(c.size for c in self._pending) + sum(c.size for c in self._sent if not c.acked)

    @property
    def has_outstanding(self) -> bool:
        """Whether any DATA is queued or unacknowledged (a graceful shutdown waits for none)."""
        return bool(self._pending or self._sent)

    @property
    def awaiting_ack(self) -> bool:
        """Whether any DATA was sent and not yet cumulatively acknowledged."""
        return bool(self._sent)

    # -- user messages --------------------------------------------------------------------------

    def enqueue(self, stream_id: int, ppid: int, data: bytes, ordered: bool) -> None:
        """Fragment one (already validated) message into DATA chunks at the back of the queue."""
        size = len(data)
        if ordered:
            ssn = self._out_ssn.get(stream_id, 0)
            self._out_ssn[stream_id] = (ssn + 1) & 0xFFFF
        else:
            ssn = 0
        step = self._max_fragment
        view = memoryview(data)
        for pos in range(0, size, step):
            piece = bytes(view[pos : pos + step])
            tsn = self._next_tsn
            self._next_tsn += 1
            wire = DataChunk(
                tsn & TSN_MASK, stream_id, ssn, ppid, piece, not ordered, pos == 0, pos + step >= size
            ).encode()
            self._pending.append(OutboundChunk(tsn, stream_id, len(piece), wire))

    def forget_stream(self, stream_id: int) -> None:
        """Restart a stream's sequence numbers at 0: our reset of it completed (RFC 6525 §5.1.4)."""
        self._out_ssn.pop(stream_id, None)

    # -- acknowledgements -----------------------------------------------------------------------

    def on_ack(
        self, cumulative_tsn: int, gap_blocks: tuple[tuple[int, int], ...], a_rwnd: int | None, now: float
    ) -> int | None:
        """Take a cumulative TSN ack (wire form) with its gap blocks and window (None: a SHUTDOWN's).

        Returns the user bytes newly acknowledged, or None if the ack is stale or covers TSNs we
        never sent (then nothing changes).
        """
        cum = unwrap_tsn(cumulative_tsn, self._acked_cum)
        if cum < self._acked_cum or cum >= self._next_tsn:
            return None
        return self._ack_up_to(cum, gap_blocks, a_rwnd, now)

    def _ack_up_to(self, cum: int, gap_blocks: tuple[tuple[int, int], ...], a_rwnd: int | None, now: float) -> int:
        mtu = self._mtu
        cwnd_full = self._flight >= self._cwnd
        bytes_acked = 0
        newest: OutboundChunk | None = None
        sent = self._sent
        advanced = cum > self._acked_cum
        while sent and sent[0].tsn <= cum:
            chunk = sent.popleft()
            if chunk.in_flight:
                self._flight -= chunk.size
            if not chunk.acked:
                bytes_acked += chunk.size
                newest = chunk
        self._acked_cum = cum
        highest_newly_acked = cum
        loss = False
        if sent:
            blocks = sorted((cum + s, cum + e) for s, e in gap_blocks if 0 < s <= e)
            idx = 0
            nblocks = len(blocks)
            # Chunks above both the last block and the highest one acked before need no look.
            limit = max(blocks[-1][1] if blocks else cum, self._highest_gap_acked)
            highest_acked = cum
            for chunk in sent:
                tsn = chunk.tsn
                if tsn > limit:
                    break
                while idx < nblocks and blocks[idx][1] < tsn:
                    idx += 1
                in_gap = idx < nblocks and blocks[idx][0] <= tsn
                if in_gap:
                    if not chunk.acked:
                        chunk.acked = True
                        chunk.retransmit = False
                        bytes_acked += chunk.size
                        highest_newly_acked = tsn
                        newest = chunk
                        if chunk.in_flight:
                            chunk.in_flight = False
                            self._flight -= chunk.size
                    highest_acked = tsn
                elif chunk.acked:
                    chunk.acked = False  # the peer reneged; T3 covers it
            self._highest_gap_acked = highest_acked
            threshold = self._fast_retransmit_threshold
            for chunk in sent:
                if chunk.tsn >= highest_newly_acked:
                    break
                if chunk.acked or not chunk.in_flight:
                    continue
                chunk.misses += 1
                if chunk.misses >= threshold and not chunk.fast_retransmitted:
                    chunk.fast_retransmitted = True
                    chunk.retransmit = True
                    self._retransmits_pending = True
                    chunk.timed = False
                    chunk.in_flight = False
                    self._flight -= chunk.size
                    loss = True
        # One RTT sample per SACK, from the most recently sent chunk it newly acks, and only if
        # that chunk was sent once (Karn); older chunks' acks may have been delayed by loss.
        if newest is not None and newest.timed:
            self._rto.measure(now - newest.sent_time)
        if bytes_acked:
            # New data got through, so the path works: drop the back-off (as Linux TCP does on a new
            # ACK) rather than wait for a sample from a chunk sent once, rare under heavy loss.
            self._rto.clear_back_off()
            if self._fast_recovery_exit is None:
                if self._cwnd <= self._ssthresh:
                    if cwnd_full:
                        self._cwnd += min(bytes_acked, mtu)
                else:
                    self._partial_bytes_acked += bytes_acked
                    if self._partial_bytes_acked >= self._cwnd and cwnd_full:
                        self._partial_bytes_acked -= self._cwnd
                        self._cwnd += mtu
        if self._fast_recovery_exit is not None and cum >= self._fast_recovery_exit:
            self._fast_recovery_exit = None
        if loss:
            if self._fast_recovery_exit is None:
                # RFC 9260 §7.2.4: halve the window once per recovery episode.
                self._ssthresh = max(self._cwnd // 2, 4 * mtu)
                self._cwnd = self._ssthresh
                self._partial_bytes_acked = 0
                self._fast_recovery_exit = self._next_sent_tsn() - 1
            self._fast_retransmit_pending = True
        if a_rwnd is not None:
            self._peer_rwnd = max(0, a_rwnd - self._flight)
        if not sent:
            self.t3_at = None
        elif advanced or self.t3_at is None:
            self.t3_at = now + self._rto.rto
        return bytes_acked

    def _next_sent_tsn(self) -> int:
        return self._pending[0].tsn if self._pending else self._next_tsn

    # -- sending --------------------------------------------------------------------------------

    def chunks_to_send(self, now: float) -> list[bytes]:
        """Pick retransmissions, then new DATA, within cwnd and the peer's window (§6.1, §7.2)."""
        out: list[bytes] = []
        budget = self._mtu - sc.COMMON_HEADER_SIZE if self._fast_retransmit_pending else 0
        self._fast_retransmit_pending = False
        for chunk in self._sent if self._retransmits_pending else ():
            if not chunk.retransmit:
                continue
            if self._flight >= self._cwnd:
                # After fast retransmit, one packet of retransmissions goes out with cwnd full.
                if budget < chunk.size + sc.DATA_HEADER_SIZE:
                    break
                budget -= chunk.size + sc.DATA_HEADER_SIZE
            if chunk is self._sent[0]:
                self.t3_at = now + self._rto.rto
            chunk.retransmit = False
            chunk.in_flight = True
            chunk.misses = 0
            chunk.sent_count += 1
            self._flight += chunk.size
            self.retransmissions += 1
            out.append(chunk.wire)
        if self._retransmits_pending:
            self._retransmits_pending = any(c.retransmit for c in self._sent)
        pending = self._pending
        burst = self._max_burst * (self._mtu - sc.COMMON_HEADER_SIZE)
        while pending and self._flight < self._cwnd and burst > 0:
            chunk = pending[0]
            if self._flight and chunk.size > self._peer_rwnd:
                break  # the peer's window is full; with nothing in flight one chunk probes it
            pending.popleft()
            burst -= chunk.size + sc.DATA_HEADER_SIZE
            chunk.sent_count = 1
            chunk.sent_time = now
            chunk.in_flight = True
            self._flight += chunk.size
            self._peer_rwnd = max(0, self._peer_rwnd - chunk.size)
            self._sent.append(chunk)
            out.append(chunk.wire)
        if out and self.t3_at is None:
            self.t3_at = now + self._rto.rto
        return out

    def on_t3_expired(self, now: float) -> None:
        """T3-rtx expired (the RTO already backed off): collapse the window, mark all unacked DATA lost.

        RFC 9260 §7.2.3 and §6.3.3: cwnd falls to one packet and the oldest data is resent first.
        """
        mtu = self._mtu
        self._ssthresh = max(self._cwnd // 2, 4 * mtu)
        self._cwnd = mtu
        self._partial_bytes_acked = 0
        self._fast_recovery_exit = None
        for chunk in self._sent:
            if not chunk.acked:
                chunk.retransmit = True
                self._retransmits_pending = True
                chunk.timed = False
                if chunk.in_flight:
                    chunk.in_flight = False
                    self._flight -= chunk.size
        self.t3_at = now + self._rto.rto if self._sent else None
