# -*- test-case-name: tests.test_sctp -*-
"""Sans-I/O SCTP association over DTLS (RFC 8261, RFC 9260, RFC 6525) for WebRTC data channels.

The association is the handshake, shutdown and path state machine (RFC 9260 §4-5, §8-9); it
composes the pieces that each hold one part of the protocol:

* :mod:`~voiceedge.transceiver.sctp_receiver`: inbound DATA, reassembly, ordered delivery, SACKs;
* :mod:`~voiceedge.transceiver.sctp_sender`: the send queue, windows, T3 and fast retransmission;
* :mod:`~voiceedge.transceiver.sctp_reconfig`: stream reset (RFC 6525);
* :mod:`~voiceedge.transceiver.sctp_rto`: the retransmission timeout they share;
* :mod:`~voiceedge.transceiver.sctp_cookie`: the State Cookie of the handshake.

Chunk codecs are in :mod:`voiceedge.wire.sctp_chunks`.
"""

from __future__ import annotations

import enum
import os
import random
import struct
from dataclasses import dataclass

from voiceedge.transceiver.sctp_cookie import StateCookie
from voiceedge.transceiver.sctp_events import Closed, DataReceived, Established, SctpEvent, StreamsReset
from voiceedge.transceiver.sctp_reconfig import StreamReconfiguration
from voiceedge.transceiver.sctp_receiver import SctpReceiver
from voiceedge.transceiver.sctp_rto import RtoEstimator
from voiceedge.transceiver.sctp_sender import SctpSender
from voiceedge.transceiver.sctp_tsn import TSN_MASK
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
    InitAckChunk,
    InitChunk,
    ReconfigChunk,
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

_HEARTBEAT_INFO = struct.Struct("!Qd")
_MAX_STREAMS = 65535


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

        self._local_tag = self._random_u32(nonzero=True)
        self._peer_tag = 0
        self._mtu = cfg.max_packet_size
        self._out_streams = cfg.streams
        self._peer_reconfig = False
        self._initial_tsn = self._random_u32() if cfg.initial_tsn is None else cfg.initial_tsn & TSN_MASK
        # Association error count (RFC 9260 §8.1): unanswered retransmissions in a row.
        self._errors = 0

        self._rto = RtoEstimator(cfg.rto_initial, cfg.rto_min, cfg.rto_max)
        self._sender = SctpSender(
            self._initial_tsn,
            cfg.max_packet_size,
            cfg.receive_window,
            cfg.fast_retransmit_threshold,
            cfg.max_burst,
            self._rto,
        )
        self._receiver = SctpReceiver(cfg.receive_window, cfg.sack_delay)
        self._reconfig = StreamReconfiguration(self._receiver, self._initial_tsn, cfg.streams)

        # T1-init / T1-cookie (§5.1), T2-shutdown (§9.2), heartbeat (§8.3)
        self._t1_at: float | None = None
        self._t1_count = 0
        self._t1_chunk: bytes = b""
        self._t1_tag = 0
        self._t2_at: float | None = None
        self._t2_chunk: bytes = b""
        self._hb_at: float | None = None
        self._hb_pending: tuple[int, float] | None = None

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
        return self._rto.rto

    @property
    def cwnd(self) -> int:
        """The congestion window in bytes."""
        return self._sender.cwnd

    @property
    def retransmissions(self) -> int:
        """DATA chunks sent again, by T3 or fast retransmit."""
        return self._sender.retransmissions

    @property
    def buffered_amount(self) -> int:
        """User bytes queued or in flight, not yet acknowledged."""
        return self._sender.buffered_amount

    # The parts' state under the names it had before the split, for tests that look inside.

    @property
    def _srtt(self) -> float | None:
        return self._rto.srtt

    @property
    def _next_tsn(self) -> int:
        return self._sender.next_tsn

    @property
    def _peer_cum(self) -> int:
        return self._receiver.cumulative_tsn

    @property
    def _buffered(self) -> int:
        return self._receiver.buffered

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
            for t in (
                self._t1_at,
                self._t2_at,
                self._sender.t3_at,
                self._receiver.deadline,
                self._hb_at,
                self._reconfig.deadline,
            )
            if t is not None
        ]
        return min(times) if times else None

    def _emit_packet(self, tag: int, chunks: list[bytes]) -> None:
        cfg = self.config
        self._outgoing.append(build_packet(cfg.local_port, cfg.remote_port, tag, chunks))

    def _take_reconfig_output(self) -> None:
        self._control.extend(self._reconfig.take_chunks())
        self._events.extend(self._reconfig.take_events())

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
            self._initial_tsn,
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
        if self._reconfig.is_resetting(stream_id):
            raise ValueError("stream %d is being reset" % stream_id)
        if not 0 <= ppid <= TSN_MASK:
            raise ValueError("PPID out of range")
        if not 0 < len(data) <= self.config.max_message_size:
            raise ValueError("message size must be 1..%d bytes" % self.config.max_message_size)
        self._sender.enqueue(stream_id, ppid, data, ordered)
        self._flush()

    def reset_streams(self, stream_ids: list[int] | tuple[int, ...], now: float | None = None) -> None:
        """Reset our outgoing streams (RFC 6525 Outgoing SSN Reset Request); StreamsReset(incoming=False) follows."""
        if now is not None:
            self._now = now
        self._reconfig.queue(stream_ids)
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
        self._t1_at = self._t2_at = self._hb_at = None
        self._sender.stop()
        self._receiver.stop()
        self._reconfig.stop()
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
        t3_at = self._sender.t3_at
        if t3_at is not None and t3_at <= now:
            self._on_t3()
        reconfig_at = self._reconfig.deadline
        if reconfig_at is not None and reconfig_at <= now:
            self._on_reconfig_timer()
        if self._hb_at is not None and self._hb_at <= now:
            self._on_heartbeat_timer()
        self._receiver.on_timeout(now)
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
        self._rto.back_off()
        self._t2_at = self._now + self._rto.rto
        self._control.append(self._t2_chunk)

    def _on_t3(self) -> None:
        if self._count_error("too many retransmissions"):
            return
        self._rto.back_off()
        self._sender.on_t3_expired(self._now)

    def _on_reconfig_timer(self) -> None:
        if self._count_error("stream reset timed out"):
            return
        self._rto.back_off()
        self._reconfig.on_timer(self._now, self._rto.rto)
        self._take_reconfig_output()

    def _on_heartbeat_timer(self) -> None:
        if self._hb_pending is not None:
            # The last heartbeat went unanswered.
            if self._count_error("peer unreachable (heartbeat)"):
                return
            self._rto.back_off()
        if self.state not in _DATA_STATES:
            self._hb_at = None
            return
        if self._sender.awaiting_ack:
            # Data in flight probes the path already; T3 covers failure.
            self._hb_pending = None
            self._hb_at = self._now + self.config.heartbeat_interval + self._rto.rto
            return
        nonce = int.from_bytes(self._random_bytes(8), "big")
        self._hb_pending = (nonce, self._now)
        self._control.append(HeartbeatChunk(_HEARTBEAT_INFO.pack(nonce, self._now)).encode())
        self._hb_at = self._now + self._rto.rto + self.config.heartbeat_interval

    def _count_error(self, reason: str) -> bool:
        """Count one unanswered retransmission; fail the association past the limit (§8.1)."""
        self._errors += 1
        if self._errors > self.config.max_retransmissions:
            self.abort(reason)
            return True
        return False

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
            self._receiver.on_packet_with_data(now)
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
        cookie = StateCookie(
            self._now,
            self._local_tag,
            init.initiate_tag,
            init.initial_tsn,
            init.a_rwnd,
            min(init.outbound_streams, _MAX_STREAMS),
            min(init.inbound_streams, _MAX_STREAMS),
            ext is not None and sc.RECONFIG in ext,
        ).seal(self._secret)
        # In COOKIE-WAIT/ECHOED the INIT-ACK repeats our own INIT's tag and TSN (§5.2.1).
        ack = InitAckChunk(
            self._local_tag,
            self.config.receive_window,
            self.config.streams,
            self.config.streams,
            self._initial_tsn,
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
        cookie = StateCookie.open(self._secret, echo.cookie)
        if cookie is None or cookie.local_tag != self._local_tag:
            self.dropped_packets += 1
            return
        if not cookie.created - 1.0 <= self._now <= cookie.created + self.config.cookie_lifetime:
            self.dropped_packets += 1
            cause = (sc.CAUSE_STALE_COOKIE, struct.pack("!I", 0))
            self._emit_packet(cookie.peer_tag, [ErrorChunk((cause,)).encode()])
            return
        if self.state in (SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED):
            # No TCB yet, or an INIT collision (§5.2.4 action B/D): take the peer from the cookie.
            self._adopt_peer(
                cookie.peer_tag,
                cookie.peer_initial_tsn,
                cookie.peer_rwnd,
                cookie.peer_outbound_streams,
                cookie.peer_inbound_streams,
                cookie.peer_reconfig,
            )
            self._t1_at = None
            self._control.append(CookieAckChunk().encode())
            self._set_established()
        elif cookie.peer_tag == self._peer_tag:
            # Our COOKIE-ACK was lost (§5.2.4 action D).
            self._control.append(CookieAckChunk().encode())
        else:
            self.dropped_packets += 1  # a peer restart, not supported

    def _adopt_peer(self, tag: int, tsn: int, rwnd: int, os_: int, mis: int, reconfig: bool) -> None:
        self._peer_tag = tag
        self._receiver.start(tsn)
        self._sender.start(rwnd)
        self._out_streams = min(self.config.streams, mis)
        self._peer_reconfig = reconfig
        self._reconfig.start(tsn, min(self.config.streams, os_))

    def _set_established(self) -> None:
        if self.state is SctpState.ESTABLISHED:
            return
        self.state = SctpState.ESTABLISHED
        self._errors = 0
        self._hb_at = self._now + self.config.heartbeat_interval
        self._events.append(Established())
        self._send_reset_request()

    # -- data ----------------------------------------------------------------------------------------

    def _on_data(self, chunk: DataChunk) -> None:
        if self.state not in _DATA_STATES:
            return
        self._events.extend(self._receiver.on_data(chunk))
        if self._reconfig.has_deferred_reset:
            self._reconfig.perform_deferred_reset()
            self._take_reconfig_output()

    def _on_sack(self, sack: SackChunk) -> None:
        if self.state not in _DATA_STATES:
            return
        acked = self._sender.on_ack(sack.cumulative_tsn, sack.gaps, sack.a_rwnd, self._now)
        if acked is None:
            return  # stale, or acks what we never sent
        if acked:
            self._errors = 0
        if self.state in (SctpState.SHUTDOWN_PENDING, SctpState.SHUTDOWN_RECEIVED):
            self._maybe_shutdown()

    def _flush(self) -> None:
        """Bundle pending control chunks, SACK and DATA into packets of at most the path MTU."""
        if self._terminated or not self._peer_tag:
            return
        data = self._sender.chunks_to_send(self._now) if self.state in _DATA_STATES else []
        chunks: list[bytes] = []
        if self._receiver.sack_due(bool(data)):
            chunks.append(self._receiver.build_sack())
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
        self._rto.measure(self._now - sent_at)

    # -- stream reset (RFC 6525) ------------------------------------------------------------------------

    def _send_reset_request(self) -> None:
        if self.state is not SctpState.ESTABLISHED:
            return
        self._reconfig.send_request(self._sender.last_tsn, self._now, self._rto.rto)
        self._take_reconfig_output()

    def _on_reconfig_param(self, param: sc.ReconfigParam) -> None:
        completed = self._reconfig.on_param(param, self._now, self._rto.rto)
        self._take_reconfig_output()
        if completed is not None:
            self._errors = 0
            for sid in completed.streams:
                self._sender.forget_stream(sid)
            self._send_reset_request()

    # -- shutdown ------------------------------------------------------------------------------------

    def _on_shutdown(self, chunk: ShutdownChunk) -> None:
        state = self.state
        if state not in _DATA_STATES:
            return
        if self._sender.on_ack(chunk.cumulative_tsn, (), None, self._now):
            self._errors = 0
        if state is SctpState.SHUTDOWN_SENT:
            self._t2_at = None
            self._send_shutdown_ack()
            return
        self.state = SctpState.SHUTDOWN_RECEIVED
        self._maybe_shutdown()

    def _maybe_shutdown(self) -> None:
        if self._sender.has_outstanding:
            return
        if self.state is SctpState.SHUTDOWN_PENDING:
            self.state = SctpState.SHUTDOWN_SENT
            self._t2_chunk = ShutdownChunk(self._receiver.cumulative_tsn & TSN_MASK).encode()
            self._t2_at = self._now + self._rto.rto
            self._control.append(self._t2_chunk)
        elif self.state is SctpState.SHUTDOWN_RECEIVED:
            self._send_shutdown_ack()

    def _send_shutdown_ack(self) -> None:
        self.state = SctpState.SHUTDOWN_ACK_SENT
        self._sender.t3_at = None
        self._hb_at = None
        self._t2_chunk = ShutdownAckChunk().encode()
        self._t2_at = self._now + self._rto.rto
        self._control.append(self._t2_chunk)
