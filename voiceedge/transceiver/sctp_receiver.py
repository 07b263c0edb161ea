# -*- test-case-name: tests.test_sctp_parts -*-
"""The inbound half of an SCTP association: TSNs, reassembly, ordered delivery, SACKs (RFC 9260 §6.2-6.7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from voiceedge.transceiver.sctp_events import DataReceived
from voiceedge.transceiver.sctp_tsn import TSN_MASK, unwrap_tsn
from voiceedge.wire.sctp_chunks import DataChunk, SackChunk

__all__ = ["InboundStream", "PartialMessage", "SctpReceiver"]

# A peer's DATA more than this many TSNs ahead of the cumulative ack is refused (gap offsets are 16-bit).
_MAX_TSN_AHEAD = 0xFFFF
_MAX_GAP_BLOCKS = 64
_MAX_DUPLICATES = 32


@dataclass(slots=True)
class PartialMessage:
    """Fragments of one ordered message (one SSN) received so far, by unwrapped TSN."""

    fragments: dict[int, DataChunk] = field(default_factory=dict)
    first: int | None = None
    last: int | None = None


@dataclass(slots=True)
class InboundStream:
    """Reassembly state of one incoming stream."""

    expected_ssn: int = 0
    partial: dict[int, PartialMessage] = field(default_factory=dict)
    ready: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    unordered: dict[int, DataChunk] = field(default_factory=dict)

    def buffered(self) -> int:
        """User bytes held here, not yet delivered."""
        held = sum(len(f.user_data) for p in self.partial.values() for f in p.fragments.values())
        held += sum(len(d) for _, d in self.ready.values())
        return held + sum(len(f.user_data) for f in self.unordered.values())


class SctpReceiver:
    """Accept the peer's DATA chunks, deliver whole messages in order per stream, and say when to SACK.

    Sans-I/O: :meth:`on_data` takes one DATA chunk and returns the messages it completed;
    :meth:`build_sack` gives the SACK chunk to bundle when :meth:`sack_due` says so, at the latest
    at :attr:`deadline` (the delayed-ack timer, §6.2). Flow control is the advertised window:
    DATA beyond it is dropped unacknowledged, so the peer retransmits it.
    """

    def __init__(self, receive_window: int, sack_delay: float) -> None:
        self._window = receive_window
        self._sack_delay = sack_delay
        self._cum = 0  # unwrapped cumulative TSN received
        self._highest = 0
        self._above: set[int] = set()  # TSNs received above the cumulative one
        self._duplicates: list[int] = []
        self._buffered = 0
        self._streams: dict[int, InboundStream] = {}
        self._sack_now = False
        self._sack_at: float | None = None
        self._unacked_packets = 0

    def start(self, peer_initial_tsn: int) -> None:
        """Expect DATA from the peer's initial TSN on (from its INIT or INIT-ACK)."""
        self._cum = peer_initial_tsn - 1 + (1 << 32)  # unwrapped, kept positive
        self._highest = self._cum
        self._above.clear()

    @property
    def cumulative_tsn(self) -> int:
        """The unwrapped TSN up to which every DATA chunk arrived."""
        return self._cum

    @property
    def buffered(self) -> int:
        """User bytes received and not yet delivered (fragments, or messages waiting for an earlier SSN)."""
        return self._buffered

    @property
    def deadline(self) -> float | None:
        """When the delayed SACK is due, or None."""
        return self._sack_at

    def stop(self) -> None:
        """The association ended: no SACK is due any more."""
        self._sack_at = None

    # -- DATA -----------------------------------------------------------------------------------

    def on_data(self, chunk: DataChunk) -> list[DataReceived]:
        """Take one DATA chunk; return the messages it completes, in delivery order."""
        tsn = unwrap_tsn(chunk.tsn, self._cum)
        if tsn <= self._cum or tsn in self._above:
            if len(self._duplicates) < _MAX_DUPLICATES:
                self._duplicates.append(chunk.tsn)
            self._sack_now = True
            return []
        size = len(chunk.user_data)
        window = self._window
        if (
            tsn - self._cum > _MAX_TSN_AHEAD
            or (tsn > self._highest and self._buffered + size > window)
            or self._buffered + size > 4 * window
        ):
            # No room: drop without acking; the peer retransmits (§6.2).
            self._sack_now = True
            return []
        self._above.add(tsn)
        if tsn > self._highest:
            self._highest = tsn
        cum = self._cum
        above = self._above
        while cum + 1 in above:
            cum += 1
            above.discard(cum)
        self._cum = cum
        if above:
            self._sack_now = True  # out of order: report the gap at once (§6.7)
        self._buffered += size
        delivered: list[DataReceived] = []
        self._reassemble(chunk, tsn, delivered)
        return delivered

    def on_packet_with_data(self, now: float) -> None:
        """A packet carrying DATA was processed: SACK every second one, else after the delay (§6.2)."""
        self._unacked_packets += 1
        if self._unacked_packets >= 2:
            self._sack_now = True
        elif self._sack_at is None:
            self._sack_at = now + self._sack_delay

    def on_timeout(self, now: float) -> None:
        """The delayed-SACK timer, if due, makes a SACK due now."""
        if self._sack_at is not None and self._sack_at <= now:
            self._sack_now = True

    def reset_streams(self, stream_ids: tuple[int, ...]) -> tuple[int, ...]:
        """Forget incoming streams (all when ``stream_ids`` is empty) and what they hold; return those reset."""
        streams = stream_ids or tuple(self._streams)
        for sid in streams:
            stream = self._streams.pop(sid, None)
            if stream is not None:
                self._buffered -= stream.buffered()
        return streams

    def _stream(self, stream_id: int) -> InboundStream:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = InboundStream()
        return stream

    def _deliver(self, out: list[DataReceived], stream_id: int, ppid: int, data: bytes) -> None:
        self._buffered -= len(data)
        out.append(DataReceived(stream_id, ppid, data))

    def _reassemble(self, chunk: DataChunk, tsn: int, out: list[DataReceived]) -> None:
        stream = self._stream(chunk.stream_id)
        if chunk.unordered:
            if chunk.begin and chunk.end:
                self._deliver(out, chunk.stream_id, chunk.ppid, chunk.user_data)
                return
            frags = stream.unordered
            frags[tsn] = chunk
            start = tsn
            while not frags[start].begin:
                prev = frags.get(start - 1)
                if prev is None or prev.end:
                    return
                start -= 1
            end = tsn
            while not frags[end].end:
                nxt = frags.get(end + 1)
                if nxt is None or nxt.begin:
                    return
                end += 1
            parts = [frags.pop(t) for t in range(start, end + 1)]
            self._deliver(out, chunk.stream_id, parts[0].ppid, b"".join(p.user_data for p in parts))
            return
        ssn = chunk.ssn
        if chunk.begin and chunk.end:
            message = (chunk.ppid, chunk.user_data)
        else:
            partial = stream.partial.get(ssn)
            if partial is None:
                partial = stream.partial[ssn] = PartialMessage()
            partial.fragments[tsn] = chunk
            if chunk.begin:
                partial.first = tsn
            if chunk.end:
                partial.last = tsn
            if partial.first is None or partial.last is None:
                return
            if len(partial.fragments) != partial.last - partial.first + 1:
                if len(partial.fragments) > partial.last - partial.first + 1:
                    # Fragments that cannot belong to one message: a broken peer. Discard them.
                    del stream.partial[ssn]
                    self._buffered -= sum(len(f.user_data) for f in partial.fragments.values())
                return
            del stream.partial[ssn]
            frags = partial.fragments
            try:
                parts = [frags[t] for t in range(partial.first, partial.last + 1)]
            except KeyError:
                self._buffered -= sum(len(f.user_data) for f in frags.values())
                return
            message = (parts[0].ppid, b"".join(p.user_data for p in parts))
        if ssn != stream.expected_ssn:
            stream.ready[ssn] = message
            return
        self._deliver(out, chunk.stream_id, *message)
        expected = (ssn + 1) & 0xFFFF
        ready = stream.ready
        while expected in ready:
            self._deliver(out, chunk.stream_id, *ready.pop(expected))
            expected = (expected + 1) & 0xFFFF
        stream.expected_ssn = expected

    # -- SACK -----------------------------------------------------------------------------------

    def sack_due(self, sending_data: bool) -> bool:
        """Whether a SACK goes in the next packet: due now, or pending and DATA is leaving anyway."""
        return self._sack_now or (self._sack_at is not None and sending_data)

    def build_sack(self) -> bytes:
        """The SACK chunk for what arrived so far (gap blocks, duplicates, window); clears the timer."""
        cum = self._cum
        gaps: list[tuple[int, int]] = []
        if self._above:
            start = prev = -1
            for tsn in sorted(self._above):
                off = tsn - cum
                if off == prev + 1:
                    prev = off
                    continue
                if start >= 0:
                    gaps.append((start, prev))
                    if len(gaps) >= _MAX_GAP_BLOCKS:
                        break
                start = prev = off
            if len(gaps) < _MAX_GAP_BLOCKS:
                gaps.append((start, prev))
        rwnd = max(0, self._window - self._buffered)
        dups = tuple(self._duplicates)
        self._duplicates.clear()
        self._sack_now = False
        self._sack_at = None
        self._unacked_packets = 0
        return SackChunk(cum & TSN_MASK, rwnd, tuple(gaps), dups).encode()
