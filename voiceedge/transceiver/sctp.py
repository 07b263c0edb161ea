# -*- test-case-name: tests.test_sctp -*-
"""Sans-I/O SCTP association over DTLS (RFC 8261, RFC 9260, RFC 6525) for WebRTC data channels."""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import random
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Union

from voiceedge.wire import sctp_chunks as sc
from voiceedge.wire.sctp_chunks import (
    AbortChunk,
    Chunk,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    IncomingResetRequest,
    InitAckChunk,
    InitChunk,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigResponse,
    AddStreamsRequest,
    SackChunk,
    SctpError,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
    build_packet,
    parse_packet,
)

__all__ = [
    "Closed",
    "DataReceived",
    "Established",
    "SctpAssociation",
    "SctpConfig",
    "SctpEvent",
    "SctpState",
    "StreamsReset",
]

_MASK = 0xFFFFFFFF
_HALF = 1 << 31

# RE-CONFIG results (RFC 6525 §4.4).
RESULT_NOTHING_TO_DO = 0
RESULT_PERFORMED = 1
RESULT_DENIED = 2
RESULT_BAD_SEQUENCE = 5
RESULT_IN_PROGRESS = 6

# version, timestamp, our tag, peer tag, peer initial TSN, peer a_rwnd, peer OS, peer MIS, flags
_COOKIE = struct.Struct("!BdIIIIHHB")
_COOKIE_MAC_SIZE = 16
_COOKIE_SIZE = _COOKIE.size + _COOKIE_MAC_SIZE
_COOKIE_VERSION = 1
_COOKIE_FLAG_RECONFIG = 0x01
_HEARTBEAT_INFO = struct.Struct("!Qd")
_MAX_STREAMS = 65535
# A peer's DATA more than this many TSNs ahead of the cumulative ack is refused (gap offsets are 16-bit).
_MAX_TSN_AHEAD = 0xFFFF
_MAX_GAP_BLOCKS = 64
_MAX_DUPLICATES = 32


class SctpState(enum.Enum):
    """Association states (RFC 9260 §4)."""

    CLOSED = "closed"
    COOKIE_WAIT = "cookie-wait"
    COOKIE_ECHOED = "cookie-echoed"
    ESTABLISHED = "established"
    SHUTDOWN_PENDING = "shutdown-pending"
    SHUTDOWN_SENT = "shutdown-sent"
    SHUTDOWN_RECEIVED = "shutdown-received"
    SHUTDOWN_ACK_SENT = "shutdown-ack-sent"


_DATA_STATES = frozenset(
    {
        SctpState.ESTABLISHED,
        SctpState.SHUTDOWN_PENDING,
        SctpState.SHUTDOWN_SENT,
        SctpState.SHUTDOWN_RECEIVED,
    }
)


@dataclass(slots=True)
class SctpConfig:
    """Tunables; the defaults suit WebRTC over DTLS (ports 5000/5000, 1200-byte datagrams)."""

    local_port: int = 5000
    remote_port: int = 5000
    # Largest SCTP packet; with DTLS and UDP/IPv6 overhead it fits a 1280-byte path MTU.
    max_packet_size: int = 1188
    max_message_size: int = 262144
    receive_window: int = 1024 * 1024
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 60.0
    max_retransmissions: int = 10
    max_init_retransmissions: int = 8
    heartbeat_interval: float = 30.0
    sack_delay: float = 0.2
    cookie_lifetime: float = 60.0
    fast_retransmit_threshold: int = 3
    # New DATA packets sent at most per input (RFC 9260 §6.1 Max.Burst), so an idle open cwnd is no blast.
    max_burst: int = 4
    streams: int = _MAX_STREAMS
    # Fixed initial TSN, for tests of serial-number wrap-around; random when None.
    initial_tsn: int | None = None


@dataclass(slots=True, frozen=True)
class Established:
    """The association is up; data can flow."""


@dataclass(slots=True, frozen=True)
class DataReceived:
    """A whole user message arrived on ``stream_id``."""

    stream_id: int
    ppid: int
    data: bytes


@dataclass(slots=True, frozen=True)
class StreamsReset:
    """Streams were reset: ``incoming`` by the peer's request, else our own request completed."""

    stream_ids: tuple[int, ...]
    incoming: bool


@dataclass(slots=True, frozen=True)
class Closed:
    """The association ended; nothing more is sent or delivered."""

    reason: str


SctpEvent = Union[Established, DataReceived, StreamsReset, Closed]


@dataclass(slots=True)
class _OutChunk:
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


@dataclass(slots=True)
class _Partial:
    """Fragments of one ordered message (one SSN) received so far."""

    fragments: dict[int, DataChunk] = field(default_factory=dict)
    first: int | None = None
    last: int | None = None


@dataclass(slots=True)
class _InStream:
    """Reassembly state of one incoming stream."""

    expected_ssn: int = 0
    partial: dict[int, _Partial] = field(default_factory=dict)
    ready: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    unordered: dict[int, DataChunk] = field(default_factory=dict)


def _unwrap(wrapped: int, reference: int) -> int:
    """Map a 32-bit serial number to the integer nearest ``reference`` (RFC 1982 arithmetic)."""
    delta = (wrapped - reference) & _MASK
    if delta >= _HALF:
        delta -= 1 << 32
    return reference + delta


class SctpAssociation:
    """One SCTP association, sans-I/O.

    Inputs are :meth:`receive` (one SCTP packet, as DTLS application data), the user calls
    :meth:`connect`, :meth:`send`, :meth:`reset_streams`, :meth:`close`, :meth:`abort`, and
    :meth:`handle_timeout` when :meth:`deadline` passes. Outputs are collected, not returned:
    :meth:`take_outgoing` gives the SCTP packets to hand to DTLS, :meth:`take_events` the
    :data:`SctpEvent` list. Calls without ``now`` use the last time seen.
    Hostile packets are dropped and counted in :attr:`dropped_packets`; nothing raises to the caller
    except misuse of :meth:`send` (bad stream, size, or state), which raises ``ValueError``.
    """

    def __init__(self, config: SctpConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = cfg = config or SctpConfig()
        self._rng = rng
        self._secret = self._random_bytes(32)
        self.state = SctpState.CLOSED
        self._terminated = False
        self._now = 0.0
        self._outgoing: list[bytes] = []
        self._events: list[SctpEvent] = []
        self._control: list[bytes] = []
        self.dropped_packets = 0
        self.retransmissions = 0

        self._local_tag = self._random_u32(nonzero=True)
        self._peer_tag = 0
        self._mtu = cfg.max_packet_size
        self._max_fragment = (cfg.max_packet_size - sc.COMMON_HEADER_SIZE - sc.DATA_HEADER_SIZE) & ~3
        self._out_streams = cfg.streams
        self._in_streams = cfg.streams
        self._peer_reconfig = False

        # outbound
        self._initial_tsn = self._random_u32() if cfg.initial_tsn is None else cfg.initial_tsn & _MASK
        self._next_tsn = self._initial_tsn  # unwrapped, next to assign
        self._acked_cum = self._initial_tsn - 1  # unwrapped cumulative TSN the peer acked
        self._pending: deque[_OutChunk] = deque()
        self._sent: deque[_OutChunk] = deque()
        self._out_ssn: dict[int, int] = {}
        self._flight = 0
        self._cwnd = min(4 * self._mtu, max(2 * self._mtu, 4380))
        self._ssthresh = cfg.receive_window
        self._partial_bytes_acked = 0
        self._peer_rwnd = cfg.receive_window
        self._fast_recovery_exit: int | None = None
        self._fast_retransmit_pending = False
        self._highest_gap_acked = 0  # unwrapped; no chunk above it is marked acked
        self._retransmits_pending = False

        # inbound
        self._peer_cum = 0  # unwrapped cumulative TSN we received
        self._highest_received = 0
        self._received_above: set[int] = set()
        self._duplicates: list[int] = []
        self._buffered = 0
        self._inbound: dict[int, _InStream] = {}
        self._sack_now = False
        self._sack_at: float | None = None
        self._unacked_packets = 0

        # RTO (RFC 9260 §6.3)
        self._rto = cfg.rto_initial
        self._rto_base = cfg.rto_initial  # RTO before exponential back-off
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._errors = 0

        # timers
        self._t1_at: float | None = None
        self._t1_count = 0
        self._t1_chunk: bytes = b""
        self._t1_tag = 0
        self._t2_at: float | None = None
        self._t2_chunk: bytes = b""
        self._t3_at: float | None = None
        self._hb_at: float | None = None
        self._hb_pending: tuple[int, float] | None = None

        # stream reset (RFC 6525)
        self._reset_queue: list[int] = []
        self._resetting: set[int] = set()
        self._my_req_seq = self._initial_tsn
        self._my_request: OutgoingResetRequest | None = None
        self._reconfig_at: float | None = None
        self._peer_req_next = 0
        self._last_response: ReconfigResponse | None = None
        self._deferred_reset: OutgoingResetRequest | None = None

    # -- helpers ---------------------------------------------------------------------------------

    def _random_bytes(self, n: int) -> bytes:
        if self._rng is not None:
            return self._rng.randbytes(n)
        return os.urandom(n)

    def _random_u32(self, nonzero: bool = False) -> int:
        while True:
            value = int.from_bytes(self._random_bytes(4), "big")
            if value or not nonzero:
                return value

    @property
    def local_tag(self) -> int:
        """Our verification tag."""
        return self._local_tag

    @property
    def rto(self) -> float:
        """The current retransmission timeout in seconds."""
        return self._rto

    @property
    def cwnd(self) -> int:
        """The congestion window in bytes."""
        return self._cwnd

    @property
    def buffered_amount(self) -> int:
        """User bytes queued or in flight, not yet acknowledged."""
        return sum(c.size for c in self._pending) + sum(c.size for c in self._sent if not c.acked)

    def take_outgoing(self) -> list[bytes]:
        """Return and forget the SCTP packets to send (each one DTLS record's payload)."""
        out, self._outgoing = self._outgoing, []
        return out

    def take_events(self) -> list[SctpEvent]:
        """Return and forget the events since the last call."""
        events, self._events = self._events, []
        return events

    def deadline(self) -> float | None:
        """When :meth:`handle_timeout` must next be called, or None."""
        if self._terminated:
            return None
        times = [
            t
            for t in (self._t1_at, self._t2_at, self._t3_at, self._sack_at, self._hb_at, self._reconfig_at)
            if t is not None
        ]
        return min(times) if times else None

    def _emit_packet(self, tag: int, chunks: list[bytes]) -> None:
        cfg = self.config
        self._outgoing.append(build_packet(cfg.local_port, cfg.remote_port, tag, chunks))

    # -- user calls ------------------------------------------------------------------------------

    def connect(self, now: float | None = None) -> None:
        """Send INIT (the client side; either side may do it in WebRTC, collisions are handled)."""
        if now is not None:
            self._now = now
        if self.state is not SctpState.CLOSED or self._terminated:
            return
        init = InitChunk(
            self._local_tag,
            self.config.receive_window,
            self.config.streams,
            self.config.streams,
            self._initial_tsn & _MASK,
            self._extension_params(),
        ).encode()
        self.state = SctpState.COOKIE_WAIT
        self._start_t1(init, 0)

    def send(self, stream_id: int, ppid: int, data: bytes, ordered: bool = True, now: float | None = None) -> None:
        """Queue one user message; it is fragmented, sent as the windows allow, and retransmitted."""
        if now is not None:
            self._now = now
        if self._terminated or self.state in (
            SctpState.SHUTDOWN_PENDING,
            SctpState.SHUTDOWN_SENT,
            SctpState.SHUTDOWN_RECEIVED,
            SctpState.SHUTDOWN_ACK_SENT,
        ):
            raise ValueError("SCTP association is closing or closed")
        if not 0 <= stream_id < self._out_streams:
            raise ValueError("stream %d is not available" % stream_id)
        if stream_id in self._resetting:
            raise ValueError("stream %d is being reset" % stream_id)
        if not 0 <= ppid <= _MASK:
            raise ValueError("PPID out of range")
        size = len(data)
        if not 0 < size <= self.config.max_message_size:
            raise ValueError("message size must be 1..%d bytes" % self.config.max_message_size)
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
                tsn & _MASK, stream_id, ssn, ppid, piece, not ordered, pos == 0, pos + step >= size
            ).encode()
            self._pending.append(_OutChunk(tsn, stream_id, len(piece), wire))
        self._flush()

    def reset_streams(self, stream_ids: list[int] | tuple[int, ...], now: float | None = None) -> None:
        """Reset our outgoing streams (RFC 6525 Outgoing SSN Reset Request); StreamsReset(incoming=False) follows."""
        if now is not None:
            self._now = now
        for sid in stream_ids:
            if 0 <= sid <= 0xFFFF and sid not in self._resetting:
                self._resetting.add(sid)
                self._reset_queue.append(sid)
        self._send_reset_request()
        self._flush()

    def close(self, now: float | None = None) -> None:
        """Graceful shutdown: deliver what is queued, then SHUTDOWN; Closed follows."""
        if now is not None:
            self._now = now
        if self._terminated:
            return
        if self.state is SctpState.ESTABLISHED:
            self.state = SctpState.SHUTDOWN_PENDING
            self._maybe_shutdown()
            self._flush()
        elif self.state in (SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED):
            self.abort("closed")

    def abort(self, reason: str = "aborted", now: float | None = None) -> None:
        """Send ABORT (when the peer is known) and end the association at once."""
        if now is not None:
            self._now = now
        if self._terminated:
            return
        if self._peer_tag:
            self._emit_packet(self._peer_tag, [AbortChunk(((sc.CAUSE_USER_INITIATED_ABORT, b""),)).encode()])
        self._terminate(reason)

    def _terminate(self, reason: str) -> None:
        self.state = SctpState.CLOSED
        self._terminated = True
        self._t1_at = self._t2_at = self._t3_at = self._sack_at = self._hb_at = self._reconfig_at = None
        self._pending.clear()
        self._sent.clear()
        self._control.clear()
        self._events.append(Closed(reason))

    # -- timers ------------------------------------------------------------------------------------

    def handle_timeout(self, now: float) -> None:
        """Run every timer due at ``now``."""
        self._now = now
        if self._terminated:
            return
        if self._t1_at is not None and self._t1_at <= now:
            self._on_t1()
        if self._t2_at is not None and self._t2_at <= now:
            self._on_t2()
        if self._t3_at is not None and self._t3_at <= now:
            self._on_t3()
        if self._reconfig_at is not None and self._reconfig_at <= now:
            self._on_reconfig_timer()
        if self._hb_at is not None and self._hb_at <= now:
            self._on_heartbeat_timer()
        if self._sack_at is not None and self._sack_at <= now:
            self._sack_now = True
        self._flush()

    def _start_t1(self, chunk: bytes, tag: int) -> None:
        self._t1_chunk = chunk
        self._t1_tag = tag
        self._t1_count = 0
        self._t1_at = self._now + self.config.rto_initial
        self._emit_packet(tag, [chunk])

    def _on_t1(self) -> None:
        self._t1_count += 1
        if self._t1_count > self.config.max_init_retransmissions:
            self._terminate("handshake timed out")
            return
        # Back off exponentially (RFC 9260 §6.3.3 E2).
        backoff = min(self.config.rto_initial * (2**self._t1_count), self.config.rto_max)
        self._t1_at = self._now + backoff
        self._emit_packet(self._t1_tag, [self._t1_chunk])

    def _on_t2(self) -> None:
        if self._count_error("shutdown timed out"):
            return
        self._back_off()
        self._t2_at = self._now + self._rto
        self._control.append(self._t2_chunk)

    def _on_t3(self) -> None:
        if self._count_error("too many retransmissions"):
            return
        self._back_off()
        mtu = self._mtu
        # RFC 9260 §7.2.3: collapse the window to one packet, resend the oldest data.
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
        self._t3_at = self._now + self._rto if self._sent else None

    def _on_reconfig_timer(self) -> None:
        if self._count_error("stream reset timed out"):
            return
        self._back_off()
        if self._my_request is None:
            self._reconfig_at = None
            return
        self._reconfig_at = self._now + self._rto
        self._control.append(ReconfigChunk((self._my_request,)).encode())

    def _on_heartbeat_timer(self) -> None:
        if self._hb_pending is not None:
            # The last heartbeat went unanswered.
            if self._count_error("peer unreachable (heartbeat)"):
                return
            self._back_off()
        if self.state not in _DATA_STATES:
            self._hb_at = None
            return
        if self._sent:
            # Data in flight probes the path already; T3 covers failure.
            self._hb_pending = None
            self._hb_at = self._now + self.config.heartbeat_interval + self._rto
            return
        nonce = int.from_bytes(self._random_bytes(8), "big")
        self._hb_pending = (nonce, self._now)
        self._control.append(HeartbeatChunk(_HEARTBEAT_INFO.pack(nonce, self._now)).encode())
        self._hb_at = self._now + self._rto + self.config.heartbeat_interval

    def _count_error(self, reason: str) -> bool:
        """Count one unanswered retransmission; fail the association past the limit (§8.1)."""
        self._errors += 1
        if self._errors > self.config.max_retransmissions:
            self.abort(reason)
            return True
        return False

    def _back_off(self) -> None:
        self._rto = min(self._rto * 2, self.config.rto_max)

    def _measure_rtt(self, rtt: float) -> None:
        cfg = self.config
        if rtt < 0:
            return
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._rto = self._rto_base = min(max(self._srtt + 4 * self._rttvar, cfg.rto_min), cfg.rto_max)

    # -- receive -----------------------------------------------------------------------------------

    def receive(self, packet: bytes, now: float) -> None:
        """Handle one SCTP packet from DTLS; malformed or unauthentic ones are dropped and counted."""
        self._now = now
        if self._terminated:
            return
        try:
            pkt = parse_packet(packet)
        except SctpError:
            self.dropped_packets += 1
            return
        if pkt.destination_port != self.config.local_port or not self._tag_ok(pkt.verification_tag, pkt.chunks):
            self.dropped_packets += 1
            return
        # Accepted on the peer's tag: only T-bit ABORT / SHUTDOWN-COMPLETE chunks count (§8.5.1).
        t_bit_only = pkt.verification_tag not in (0, self._local_tag)
        got_data = False
        try:
            for chunk in pkt.chunks:
                if self._terminated:
                    return
                if t_bit_only and not isinstance(chunk, (AbortChunk, ShutdownCompleteChunk)):
                    continue
                if isinstance(chunk, DataChunk):
                    got_data = True
                    self._on_data(chunk)
                elif isinstance(chunk, SackChunk):
                    self._on_sack(chunk)
                elif not self._on_control(chunk, pkt.verification_tag):
                    break
        except SctpError:
            self.dropped_packets += 1
        if self._terminated:
            return
        if got_data:
            self._unacked_packets += 1
            if self._unacked_packets >= 2:
                self._sack_now = True
            elif self._sack_at is None:
                self._sack_at = now + self.config.sack_delay
        self._flush()

    def _tag_ok(self, tag: int, chunks: tuple[Chunk, ...]) -> bool:
        """Verification tag rules (RFC 9260 §8.5, §8.5.1)."""
        first = chunks[0]
        if isinstance(first, InitChunk):
            return tag == 0 and len(chunks) == 1
        if tag == self._local_tag:
            return True
        if self._peer_tag and tag == self._peer_tag:
            return any(
                isinstance(c, (AbortChunk, ShutdownCompleteChunk)) and c.t_bit for c in chunks
            )
        return False

    def _on_control(self, chunk: Chunk, tag: int) -> bool:
        """Handle a non-DATA, non-SACK chunk; False stops processing the rest of the packet."""
        state = self.state
        if isinstance(chunk, InitChunk):
            self._on_init(chunk)
        elif isinstance(chunk, InitAckChunk):
            if state is SctpState.COOKIE_WAIT:
                self._on_init_ack(chunk)
        elif isinstance(chunk, CookieEchoChunk):
            self._on_cookie_echo(chunk)
        elif isinstance(chunk, CookieAckChunk):
            if state is SctpState.COOKIE_ECHOED:
                self._t1_at = None
                self._set_established()
        elif isinstance(chunk, HeartbeatChunk):
            # An oversized Heartbeat Info is not echoed: it would not fit one packet.
            if self._peer_tag and len(chunk.info) <= self._mtu - 64:
                self._control.append(HeartbeatAckChunk(chunk.info).encode())
        elif isinstance(chunk, HeartbeatAckChunk):
            self._on_heartbeat_ack(chunk)
        elif isinstance(chunk, AbortChunk):
            self._terminate("aborted by peer")
            return False
        elif isinstance(chunk, ReconfigChunk):
            if state in _DATA_STATES:
                for param in chunk.params:
                    self._on_reconfig_param(param)
        elif isinstance(chunk, ShutdownChunk):
            self._on_shutdown(chunk)
        elif isinstance(chunk, ShutdownAckChunk):
            if state in (SctpState.SHUTDOWN_SENT, SctpState.SHUTDOWN_ACK_SENT):
                self._emit_packet(self._peer_tag, [ShutdownCompleteChunk().encode()])
                self._terminate("shutdown")
                return False
        elif isinstance(chunk, ShutdownCompleteChunk):
            if state is SctpState.SHUTDOWN_ACK_SENT:
                self._terminate("shutdown")
                return False
        elif isinstance(chunk, ErrorChunk):
            if state is SctpState.COOKIE_ECHOED and any(c == sc.CAUSE_STALE_COOKIE for c, _ in chunk.causes):
                self._terminate("stale cookie")
                return False
        elif isinstance(chunk, ForwardTsnChunk):
            pass  # we never advertise PR-SCTP, so a conforming peer never sends it
        elif isinstance(chunk, UnknownChunk):
            # High bits 00/01: stop processing the packet; 10/11: skip the chunk (§3.2).
            return bool(chunk.chunk_type & 0x80)
        return True

    # -- handshake ---------------------------------------------------------------------------------

    def _extension_params(self) -> tuple[tuple[int, bytes], ...]:
        return ((sc.PARAM_SUPPORTED_EXTENSIONS, bytes([sc.RECONFIG])),)

    def _on_init(self, init: InitChunk) -> None:
        if init.initiate_tag == 0 or init.outbound_streams == 0 or init.inbound_streams == 0:
            self.dropped_packets += 1
            return
        if self.state not in (SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED):
            # A restart of an established association is not supported; the INIT is ignored.
            self.dropped_packets += 1
            return
        ext = init.param(sc.PARAM_SUPPORTED_EXTENSIONS)
        flags = _COOKIE_FLAG_RECONFIG if ext is not None and sc.RECONFIG in ext else 0
        body = _COOKIE.pack(
            _COOKIE_VERSION,
            self._now,
            self._local_tag,
            init.initiate_tag,
            init.initial_tsn,
            init.a_rwnd,
            min(init.outbound_streams, _MAX_STREAMS),
            min(init.inbound_streams, _MAX_STREAMS),
            flags,
        )
        cookie = body + hmac.new(self._secret, body, hashlib.sha256).digest()[:_COOKIE_MAC_SIZE]
        # In COOKIE-WAIT/ECHOED the INIT-ACK repeats our own INIT's tag and TSN (§5.2.1).
        ack = InitAckChunk(
            self._local_tag,
            self.config.receive_window,
            self.config.streams,
            self.config.streams,
            self._initial_tsn & _MASK,
            self._extension_params() + ((sc.PARAM_STATE_COOKIE, cookie),),
        )
        self._emit_packet(init.initiate_tag, [ack.encode()])

    def _on_init_ack(self, ack: InitAckChunk) -> None:
        cookie = ack.param(sc.PARAM_STATE_COOKIE)
        if cookie is None or ack.initiate_tag == 0 or ack.outbound_streams == 0 or ack.inbound_streams == 0:
            self.dropped_packets += 1
            return
        ext = ack.param(sc.PARAM_SUPPORTED_EXTENSIONS)
        self._adopt_peer(
            ack.initiate_tag,
            ack.initial_tsn,
            ack.a_rwnd,
            ack.outbound_streams,
            ack.inbound_streams,
            ext is not None and sc.RECONFIG in ext,
        )
        self.state = SctpState.COOKIE_ECHOED
        self._start_t1(CookieEchoChunk(cookie).encode(), self._peer_tag)

    def _on_cookie_echo(self, echo: CookieEchoChunk) -> None:
        cookie = echo.cookie
        if len(cookie) != _COOKIE_SIZE:
            self.dropped_packets += 1
            return
        body, mac = cookie[: _COOKIE.size], cookie[_COOKIE.size :]
        if not hmac.compare_digest(mac, hmac.new(self._secret, body, hashlib.sha256).digest()[:_COOKIE_MAC_SIZE]):
            self.dropped_packets += 1
            return
        version, stamp, our_tag, peer_tag, peer_tsn, rwnd, os_, mis, flags = _COOKIE.unpack(body)
        if version != _COOKIE_VERSION or our_tag != self._local_tag:
            self.dropped_packets += 1
            return
        if not stamp - 1.0 <= self._now <= stamp + self.config.cookie_lifetime:
            self.dropped_packets += 1
            cause = (sc.CAUSE_STALE_COOKIE, struct.pack("!I", 0))
            self._emit_packet(peer_tag, [ErrorChunk((cause,)).encode()])
            return
        if self.state in (SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED):
            # No TCB yet, or an INIT collision (§5.2.4 action B/D): take the peer from the cookie.
            self._adopt_peer(peer_tag, peer_tsn, rwnd, os_, mis, bool(flags & _COOKIE_FLAG_RECONFIG))
            self._t1_at = None
            self._control.append(CookieAckChunk().encode())
            self._set_established()
        elif peer_tag == self._peer_tag:
            # Our COOKIE-ACK was lost (§5.2.4 action D).
            self._control.append(CookieAckChunk().encode())
        else:
            self.dropped_packets += 1  # a peer restart, not supported

    def _adopt_peer(self, tag: int, tsn: int, rwnd: int, os_: int, mis: int, reconfig: bool) -> None:
        self._peer_tag = tag
        self._peer_cum = tsn - 1 + (1 << 32)  # unwrapped, kept positive
        self._highest_received = self._peer_cum
        self._received_above.clear()
        self._peer_rwnd = rwnd
        self._ssthresh = max(rwnd, 4 * self._mtu)
        self._out_streams = min(self.config.streams, mis)
        self._in_streams = min(self.config.streams, os_)
        self._peer_reconfig = reconfig
        self._peer_req_next = tsn

    def _set_established(self) -> None:
        if self.state is SctpState.ESTABLISHED:
            return
        self.state = SctpState.ESTABLISHED
        self._errors = 0
        self._hb_at = self._now + self.config.heartbeat_interval
        self._events.append(Established())
        self._send_reset_request()

    # -- inbound data -------------------------------------------------------------------------------

    def _on_data(self, chunk: DataChunk) -> None:
        if self.state not in _DATA_STATES:
            return
        tsn = _unwrap(chunk.tsn, self._peer_cum)
        if tsn <= self._peer_cum or tsn in self._received_above:
            if len(self._duplicates) < _MAX_DUPLICATES:
                self._duplicates.append(chunk.tsn)
            self._sack_now = True
            return
        size = len(chunk.user_data)
        window = self.config.receive_window
        if (
            tsn - self._peer_cum > _MAX_TSN_AHEAD
            or (tsn > self._highest_received and self._buffered + size > window)
            or self._buffered + size > 4 * window
        ):
            # No room: drop without acking; the peer retransmits (§6.2).
            self._sack_now = True
            return
        self._received_above.add(tsn)
        if tsn > self._highest_received:
            self._highest_received = tsn
        cum = self._peer_cum
        above = self._received_above
        while cum + 1 in above:
            cum += 1
            above.discard(cum)
        self._peer_cum = cum
        if above:
            self._sack_now = True  # out of order: report the gap at once (§6.7)
        self._buffered += size
        self._reassemble(chunk, tsn)
        if self._deferred_reset is not None:
            self._maybe_perform_deferred_reset()

    def _stream(self, stream_id: int) -> _InStream:
        stream = self._inbound.get(stream_id)
        if stream is None:
            stream = self._inbound[stream_id] = _InStream()
        return stream

    def _deliver(self, stream_id: int, ppid: int, data: bytes) -> None:
        self._buffered -= len(data)
        self._events.append(DataReceived(stream_id, ppid, data))

    def _reassemble(self, chunk: DataChunk, tsn: int) -> None:
        stream = self._stream(chunk.stream_id)
        if chunk.unordered:
            if chunk.begin and chunk.end:
                self._deliver(chunk.stream_id, chunk.ppid, chunk.user_data)
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
            self._deliver(chunk.stream_id, parts[0].ppid, b"".join(p.user_data for p in parts))
            return
        ssn = chunk.ssn
        if chunk.begin and chunk.end:
            message = (chunk.ppid, chunk.user_data)
        else:
            partial = stream.partial.get(ssn)
            if partial is None:
                partial = stream.partial[ssn] = _Partial()
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
        self._deliver(chunk.stream_id, *message)
        expected = (ssn + 1) & 0xFFFF
        ready = stream.ready
        while expected in ready:
            self._deliver(chunk.stream_id, *ready.pop(expected))
            expected = (expected + 1) & 0xFFFF
        stream.expected_ssn = expected

    def _build_sack(self) -> bytes:
        cum = self._peer_cum
        gaps: list[tuple[int, int]] = []
        if self._received_above:
            start = prev = -1
            for tsn in sorted(self._received_above):
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
        rwnd = max(0, self.config.receive_window - self._buffered)
        dups = tuple(self._duplicates)
        self._duplicates.clear()
        self._sack_now = False
        self._sack_at = None
        self._unacked_packets = 0
        return SackChunk(cum & _MASK, rwnd, tuple(gaps), dups).encode()

    # -- outbound data ------------------------------------------------------------------------------

    def _on_sack(self, sack: SackChunk) -> None:
        if self.state not in _DATA_STATES:
            return
        cum = _unwrap(sack.cumulative_tsn, self._acked_cum)
        if cum < self._acked_cum or cum >= self._next_tsn:
            return  # stale, or acks what we never sent
        self._ack_up_to(cum, sack.gaps, sack.a_rwnd)
        if self.state in (SctpState.SHUTDOWN_PENDING, SctpState.SHUTDOWN_RECEIVED):
            self._maybe_shutdown()

    def _ack_up_to(self, cum: int, gap_blocks: tuple[tuple[int, int], ...], a_rwnd: int | None) -> None:
        mtu = self._mtu
        now = self._now
        cwnd_full = self._flight >= self._cwnd
        bytes_acked = 0
        newest: _OutChunk | None = None
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
            threshold = self.config.fast_retransmit_threshold
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
            self._measure_rtt(now - newest.sent_time)
        if bytes_acked:
            self._errors = 0
            # New data got through, so the path works: drop the back-off (as Linux TCP does on a new
            # ACK) rather than wait for a sample from a chunk sent once, rare under heavy loss.
            self._rto = self._rto_base
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
            self._t3_at = None
        elif advanced or self._t3_at is None:
            self._t3_at = now + self._rto

    def _next_sent_tsn(self) -> int:
        return self._pending[0].tsn if self._pending else self._next_tsn

    def _data_chunks_to_send(self) -> list[bytes]:
        """Pick retransmissions, then new DATA, within cwnd and the peer's window (§6.1, §7.2)."""
        out: list[bytes] = []
        now = self._now
        budget = self._mtu - sc.COMMON_HEADER_SIZE if self._fast_retransmit_pending else 0
        self._fast_retransmit_pending = False
        for chunk in self._sent if self._retransmits_pending else ():
            if not chunk.retransmit:
                continue
            if self._flight >= self._cwnd:
                if budget < chunk.size + sc.DATA_HEADER_SIZE:
                    break
                budget -= chunk.size + sc.DATA_HEADER_SIZE
            if chunk is self._sent[0]:
                self._t3_at = now + self._rto
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
        burst = self.config.max_burst * (self._mtu - sc.COMMON_HEADER_SIZE)
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
        if out and self._t3_at is None:
            self._t3_at = now + self._rto
        return out

    def _flush(self) -> None:
        """Bundle pending control chunks, SACK and DATA into packets of at most the path MTU."""
        if self._terminated or not self._peer_tag:
            return
        data = self._data_chunks_to_send() if self.state in _DATA_STATES else []
        chunks: list[bytes] = []
        if self._sack_now or (self._sack_at is not None and data):
            chunks.append(self._build_sack())
        chunks.extend(self._control)
        self._control.clear()
        chunks.extend(data)
        if not chunks:
            return
        limit = self._mtu - sc.COMMON_HEADER_SIZE
        batch: list[bytes] = []
        size = 0
        for chunk in chunks:
            if batch and size + len(chunk) > limit:
                self._emit_packet(self._peer_tag, batch)
                batch, size = [], 0
            batch.append(chunk)
            size += len(chunk)
        self._emit_packet(self._peer_tag, batch)

    # -- heartbeat ------------------------------------------------------------------------------------

    def _on_heartbeat_ack(self, chunk: HeartbeatAckChunk) -> None:
        if self._hb_pending is None or len(chunk.info) != _HEARTBEAT_INFO.size:
            return
        nonce, sent_at = _HEARTBEAT_INFO.unpack(chunk.info)
        if nonce != self._hb_pending[0]:
            return
        self._hb_pending = None
        self._errors = 0
        self._measure_rtt(self._now - sent_at)

    # -- stream reset (RFC 6525) ------------------------------------------------------------------------

    def _send_reset_request(self) -> None:
        if self.state is not SctpState.ESTABLISHED or self._my_request is not None or not self._reset_queue:
            return
        streams = tuple(self._reset_queue[:100])
        del self._reset_queue[:100]
        request = OutgoingResetRequest(
            self._my_req_seq & _MASK, (self._peer_req_next - 1) & _MASK, (self._next_tsn - 1) & _MASK, streams
        )
        self._my_request = request
        self._reconfig_at = self._now + self._rto
        self._control.append(ReconfigChunk((request,)).encode())

    def _respond(self, response: ReconfigResponse) -> None:
        self._control.append(ReconfigChunk((response,)).encode())

    def _on_reconfig_param(self, param: sc.ReconfigParam) -> None:
        if isinstance(param, OutgoingResetRequest):
            self._on_outgoing_reset_request(param)
        elif isinstance(param, ReconfigResponse):
            self._on_reconfig_response(param)
        elif isinstance(param, (IncomingResetRequest, AddStreamsRequest)):
            seq = param.request_seq
            if seq == self._peer_req_next & _MASK:
                self._peer_req_next += 1
                result = RESULT_DENIED
                if isinstance(param, AddStreamsRequest) and param.param_type == sc.PARAM_ADD_OUTGOING_STREAMS:
                    # Every stream id up to 65535 is already accepted inbound.
                    self._in_streams = min(self._in_streams + param.new_streams, _MAX_STREAMS)
                    result = RESULT_PERFORMED
                self._last_response = ReconfigResponse(seq, result)
                self._respond(self._last_response)
            elif self._last_response is not None and seq == self._last_response.response_seq:
                self._respond(self._last_response)
            else:
                self._respond(ReconfigResponse(seq, RESULT_BAD_SEQUENCE))

    def _on_outgoing_reset_request(self, request: OutgoingResetRequest) -> None:
        seq = request.request_seq
        if seq == self._peer_req_next & _MASK:
            self._peer_req_next += 1
            if self._deferred_reset is not None:
                # RFC 6525 §5.2.2: one request at a time.
                self._respond(ReconfigResponse(seq, 4))
                return
            self._deferred_reset = request
            if not self._maybe_perform_deferred_reset():
                self._last_response = ReconfigResponse(seq, RESULT_IN_PROGRESS)
                self._respond(self._last_response)
        elif self._deferred_reset is not None and seq == self._deferred_reset.request_seq:
            self._respond(ReconfigResponse(seq, RESULT_IN_PROGRESS))
        elif self._last_response is not None and seq == self._last_response.response_seq:
            self._respond(self._last_response)
        else:
            self._respond(ReconfigResponse(seq, RESULT_BAD_SEQUENCE))

    def _maybe_perform_deferred_reset(self) -> bool:
        request = self._deferred_reset
        if request is None:
            return False
        if _unwrap(request.last_tsn, self._peer_cum) > self._peer_cum:
            return False  # data sent before the request has not all arrived (§5.2.2 E2)
        self._deferred_reset = None
        streams = request.streams or tuple(self._inbound)
        for sid in streams:
            stream = self._inbound.pop(sid, None)
            if stream is not None:
                for partial in stream.partial.values():
                    self._buffered -= sum(len(f.user_data) for f in partial.fragments.values())
                self._buffered -= sum(len(d) for _, d in stream.ready.values())
                self._buffered -= sum(len(f.user_data) for f in stream.unordered.values())
        self._last_response = ReconfigResponse(request.request_seq, RESULT_PERFORMED)
        self._respond(self._last_response)
        self._events.append(StreamsReset(tuple(streams), incoming=True))
        return True

    def _on_reconfig_response(self, response: ReconfigResponse) -> None:
        request = self._my_request
        if request is None or response.response_seq != request.request_seq:
            return
        if response.result == RESULT_IN_PROGRESS:
            self._reconfig_at = self._now + self._rto
            return
        self._my_request = None
        self._reconfig_at = None
        self._my_req_seq += 1
        self._errors = 0
        for sid in request.streams:
            self._resetting.discard(sid)
            self._out_ssn.pop(sid, None)
        if response.result in (RESULT_PERFORMED, RESULT_NOTHING_TO_DO):
            self._events.append(StreamsReset(request.streams, incoming=False))
        self._send_reset_request()

    # -- shutdown ------------------------------------------------------------------------------------

    def _on_shutdown(self, chunk: ShutdownChunk) -> None:
        state = self.state
        if state not in _DATA_STATES:
            return
        cum = _unwrap(chunk.cumulative_tsn, self._acked_cum)
        if self._acked_cum <= cum < self._next_tsn:
            self._ack_up_to(cum, (), None)
        if state is SctpState.SHUTDOWN_SENT:
            self._t2_at = None
            self._send_shutdown_ack()
            return
        self.state = SctpState.SHUTDOWN_RECEIVED
        self._maybe_shutdown()

    def _maybe_shutdown(self) -> None:
        if self._pending or self._sent:
            return
        if self.state is SctpState.SHUTDOWN_PENDING:
            self.state = SctpState.SHUTDOWN_SENT
            self._t2_chunk = ShutdownChunk(self._peer_cum & _MASK).encode()
            self._t2_at = self._now + self._rto
            self._control.append(self._t2_chunk)
        elif self.state is SctpState.SHUTDOWN_RECEIVED:
            self._send_shutdown_ack()

    def _send_shutdown_ack(self) -> None:
        self.state = SctpState.SHUTDOWN_ACK_SENT
        self._t3_at = None
        self._hb_at = None
        self._t2_chunk = ShutdownAckChunk().encode()
        self._t2_at = self._now + self._rto
        self._control.append(self._t2_chunk)
