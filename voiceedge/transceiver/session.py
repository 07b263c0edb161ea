# -*- test-case-name: tests.test_session -*-
"""One call: ICE-lite, DTLS, SRTP, RTP and RTCP for a session, with no socket of its own."""

from __future__ import annotations

import collections
import enum
import os
import random
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession
from voiceedge.transceiver.dtls import DtlsState, DtlsTransport
from voiceedge.transceiver.ice import CheckResult, IceLiteAgent
from voiceedge.transceiver.rtp_stats import ReceiveStatistics, SendStatistics, round_trip_time
from voiceedge.transceiver.srtp import SrtpError, SrtpSession
from voiceedge.wire import rtcp
from voiceedge.wire.demux import PacketKind, classify
from voiceedge.wire.errors import WireError
from voiceedge.wire.rtp import build_rtp_header, parse_rtp

Address = tuple[str, int]

OPUS_CLOCK_RATE = 48000
SAMPLES_PER_TICK = OPUS_CLOCK_RATE // 50  # one 20 ms frame
RTCP_INTERVAL = 5.0  # RFC 3550 §6.2 minimum for a two-party session
# Enough for an agent to queue a long answer ahead of playout, small enough
# that a runaway agent cannot eat the process.
MAX_QUEUED_FRAMES = 3000
# Frames one session may send in a single late tick: enough to recover from a
# 100 ms stall, few enough not to burst a whole queue at the client.
MAX_CATCH_UP = 5


class SessionState(enum.Enum):
    """Where a session is in its life."""

    WAITING = "waiting"  # answered, no valid ICE check yet
    CONNECTING = "connecting"  # ICE valid, DTLS under way
    CONNECTED = "connected"  # SRTP keys in place, agent running
    CLOSED = "closed"


class EndReason(str, enum.Enum):
    """Why a session ended; the values appear in logs and metrics."""

    HANGUP = "hangup"
    CONSENT_EXPIRED = "consent_expired"
    DTLS_CLOSED = "dtls_closed"
    DTLS_FAILED = "dtls_failed"
    SETUP_TIMEOUT = "setup_timeout"
    AGENT = "agent"
    SHUTDOWN = "shutdown"


class ISessionOwner(Interface):
    """What a session needs from the transceiver that holds it."""

    drops = Attribute("A collections.Counter of dropped packets, by reason.")

    def transmit(data: bytes, destination: Address) -> None:
        """Send one datagram to a client address."""

    def session_address_valid(session: Session, source: Address) -> None:
        """``source`` passed an ICE check for ``session``: route its packets here."""

    def session_wants_tick(session: Session) -> None:
        """``session`` has audio queued for the shared 20 ms tick."""

    def session_closed(session: Session, reason: EndReason) -> None:
        """``session`` has ended and freed its state."""


@implementer(IAgentSession)
class Session:
    """The state of one call, driven by datagrams, ticks and the injected clock.

    The transceiver hands it every datagram routed to it; it answers ICE
    checks, runs the DTLS handshake, protects and unprotects media, and
    talks to its agent. It never touches a socket: what it sends goes through
    its owner's ``transmit``.
    """

    log = Logger()

    def __init__(
        self,
        session_id: str,
        ice: IceLiteAgent,
        dtls: DtlsTransport,
        payload_type: int,
        owner: ISessionOwner,
        agent_factory: IAgentFactory,
        clock: IReactorTime,
        setup_timeout: float = 15.0,
    ) -> None:
        self.session_id = session_id
        self.ice = ice
        self.dtls = dtls
        self.payload_type = payload_type
        self.state = SessionState.WAITING
        self.end_reason: EndReason | None = None
        self._owner = owner
        self._agent_factory = agent_factory
        self._agent: IAgent | None = None
        self._clock = clock
        self._srtp: SrtpSession | None = None
        self._dtls_timer: IDelayedCall | None = None

        now = clock.seconds()
        # The answer takes setup:passive, so we are the DTLS server: start()
        # sends nothing and only readies it for the client's hello.
        dtls.start(now)
        self.created_at = now
        self.setup_deadline = now + setup_timeout
        self.timings: dict[str, float] = {}

        self._queue: collections.deque[bytes] = collections.deque()
        self._ssrc = int.from_bytes(os.urandom(4), "big")
        self._sequence = int.from_bytes(os.urandom(2), "big")
        self._timestamp_base = int.from_bytes(os.urandom(4), "big")
        self._tick_base: int | None = None
        self._last_sent_timestamp = self._timestamp_base
        self._talking = False
        self._cname = os.urandom(8).hex().encode("ascii")

        self.receive_stats = ReceiveStatistics(OPUS_CLOCK_RATE)
        self.send_stats = SendStatistics()
        self._remote_ssrc: int | None = None
        self._next_rtcp = now + RTCP_INTERVAL
        self.round_trip_time: float | None = None
        self.remote_jitter: float | None = None
        self.remote_fraction_lost: float | None = None
        self.frames_dropped_queue_full = 0

    # -- datagrams in -------------------------------------------------------

    def datagram_received(self, data: bytes, source: Address) -> None:
        """Handle one datagram from ``source``, already routed to this session."""
        if self.state is SessionState.CLOSED:
            return
        kind = classify(data)
        if kind is PacketKind.RTP:
            self._rtp_received(data, source)
        elif kind is PacketKind.STUN:
            self._stun_received(data, source)
        elif kind is PacketKind.DTLS:
            self._dtls_received(data, source)
        elif kind is PacketKind.RTCP:
            self._rtcp_received(data, source)
        else:
            self._owner.drops["unknown_kind"] += 1

    def _stun_received(self, data: bytes, source: Address) -> None:
        now = self._clock.seconds()
        outcome = self.ice.receive(data, source, now)
        if outcome.result is not CheckResult.ANSWERED:
            self._owner.drops["stun_" + outcome.result.value] += 1
            if outcome.response is not None:
                self._owner.transmit(outcome.response, source)
            return
        assert outcome.response is not None
        self._owner.transmit(outcome.response, source)
        if outcome.newly_valid:
            if self.state is SessionState.WAITING:
                self.state = SessionState.CONNECTING
                self.timings["ice"] = now - self.created_at
            # Last: the owner may hand over DTLS records that overtook this check.
            self._owner.session_address_valid(self, source)

    def _dtls_received(self, data: bytes, source: Address) -> None:
        if not self.ice.is_valid(source):
            self._owner.drops["dtls_unvalidated"] += 1
            return
        now = self._clock.seconds()
        output = self.dtls.receive(data, now)
        for datagram in output.datagrams:
            self._owner.transmit(datagram, source)
        self._after_dtls(now)

    def _after_dtls(self, now: float) -> None:
        state = self.dtls.state
        if state is DtlsState.CONNECTED and self._srtp is None:
            keys = self.dtls.srtp_keys
            assert keys is not None
            self._srtp = SrtpSession(keys)
            self.state = SessionState.CONNECTED
            self.timings["dtls"] = now - self.created_at
            self.log.info(
                "session {id} connected: ice {ice:.0f} ms, dtls {dtls:.0f} ms",
                id=self.session_id,
                ice=self.timings.get("ice", 0.0) * 1000,
                dtls=self.timings["dtls"] * 1000,
            )
            self._agent = self._agent_factory.agent_for(self)
        elif state is DtlsState.FAILED:
            self.log.warn(
                "session {id}: DTLS failed: {why}", id=self.session_id, why=self.dtls.failure_reason
            )
            self.close(EndReason.DTLS_FAILED)
            return
        elif state is DtlsState.CLOSED:
            self.close(EndReason.DTLS_CLOSED)
            return
        self._arm_dtls_timer()

    def _arm_dtls_timer(self) -> None:
        deadline = self.dtls.deadline()
        if self._dtls_timer is not None and self._dtls_timer.active():
            self._dtls_timer.cancel()
        self._dtls_timer = None
        if deadline is not None and self.state is not SessionState.CLOSED:
            delay = max(0.0, deadline - self._clock.seconds())
            self._dtls_timer = self._clock.callLater(delay, self._dtls_timeout)

    def _dtls_timeout(self) -> None:
        self._dtls_timer = None
        now = self._clock.seconds()
        destination = self.ice.selected or self._last_valid_source()
        for datagram in self.dtls.handle_timeout(now):
            if destination is not None:
                self._owner.transmit(datagram, destination)
        self._after_dtls(now)

    def _last_valid_source(self) -> Address | None:
        sources = self.ice.valid_sources
        return sources[-1] if sources else None

    def _rtp_received(self, data: bytes, source: Address) -> None:
        srtp = self._srtp
        if srtp is None or not self.ice.is_valid(source):
            self._owner.drops["rtp_not_ready"] += 1
            return
        try:
            packet = parse_rtp(srtp.unprotect_rtp(data))
        except SrtpError as e:
            self._owner.drops["srtp_" + e.reason] += 1
            return
        except WireError:
            self._owner.drops["rtp_malformed"] += 1
            return
        if packet.payload_type != self.payload_type:
            self._owner.drops["rtp_other_payload"] += 1
            return
        now = self._clock.seconds()
        if self._remote_ssrc != packet.ssrc:
            if self._remote_ssrc is not None:
                self.receive_stats = ReceiveStatistics(OPUS_CLOCK_RATE)
            self._remote_ssrc = packet.ssrc
        self.receive_stats.on_packet(packet.sequence_number, packet.timestamp, now)
        if "first_audio" not in self.timings:
            self.timings["first_audio"] = now - self.created_at
        if self._agent is not None:
            self._agent.audio_received(
                AudioFrame(packet.payload, packet.sequence_number, packet.timestamp, now)
            )

    def _rtcp_received(self, data: bytes, source: Address) -> None:
        srtp = self._srtp
        if srtp is None or not self.ice.is_valid(source):
            self._owner.drops["rtcp_not_ready"] += 1
            return
        try:
            packets = rtcp.parse_rtcp(srtp.unprotect_rtcp(data))
        except SrtpError as e:
            self._owner.drops["srtcp_" + e.reason] += 1
            return
        except WireError:
            self._owner.drops["rtcp_malformed"] += 1
            return
        now = self._clock.seconds()
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                self.receive_stats.on_sender_report(packet, now)
                self._report_blocks(packet.reports, now)
            elif isinstance(packet, rtcp.ReceiverReport):
                self._report_blocks(packet.reports, now)

    def _report_blocks(self, blocks: list[rtcp.ReportBlock], now: float) -> None:
        for block in blocks:
            if block.ssrc != self._ssrc:
                continue
            rtt = round_trip_time(block, now)
            if rtt is not None:
                self.round_trip_time = rtt
            self.remote_jitter = block.jitter / OPUS_CLOCK_RATE
            self.remote_fraction_lost = block.fraction_lost / 256

    # -- audio out (IAgentSession) -----------------------------------------

    def send_audio(self, opus: bytes) -> None:
        """Queue one 20 ms Opus frame for the shared tick."""
        if self.state is not SessionState.CONNECTED:
            return
        if len(self._queue) >= MAX_QUEUED_FRAMES:
            self.frames_dropped_queue_full += 1
            self._owner.drops["audio_queue_full"] += 1
            return
        if not self._queue:
            self._owner.session_wants_tick(self)
        self._queue.append(opus)

    def clear_audio(self) -> None:
        """Drop every queued frame at once."""
        self._queue.clear()

    @property
    def queued_frames(self) -> int:
        """How many frames wait for the tick."""
        return len(self._queue)

    def send_event(self, event: dict[str, Any]) -> None:
        """Events need the data channel; until it is open they are counted and dropped."""
        self._owner.drops["event_no_channel"] += 1

    def end(self, reason: str) -> None:
        """The agent hangs up."""
        self.log.info("session {id}: agent ended the call: {why}", id=self.session_id, why=reason)
        self.close(EndReason.AGENT)

    def tick(self, tick_index: int, slots: int = 1) -> bool:
        """Send queued frames for the ``slots`` 20 ms slots ending at ``tick_index``.

        ``slots`` is more than one when the reactor was late; the frames due in
        the missed slots go out now (at most :data:`MAX_CATCH_UP`), so a stall
        does not leave a permanent delay behind it. The RTP timestamp follows
        the shared tick, not the number of frames sent, so a pause in the
        agent's audio is a pause in the timeline too. Returns ``True`` while
        frames remain queued.
        """
        srtp = self._srtp
        destination = self.ice.selected or self._last_valid_source()
        if srtp is None or destination is None:
            self._talking = False
            return False
        slots = min(slots, MAX_CATCH_UP)
        for slot in range(tick_index - slots + 1, tick_index + 1):
            if not self._queue:
                break
            self._send_frame(srtp, destination, slot)
        if self._queue:
            return True
        self._talking = False
        return False

    def _send_frame(self, srtp: SrtpSession, destination: Address, slot: int) -> None:
        if self._tick_base is None:
            self._tick_base = slot
        payload = self._queue.popleft()
        timestamp = (self._timestamp_base + SAMPLES_PER_TICK * (slot - self._tick_base)) & 0xFFFFFFFF
        header = build_rtp_header(
            self.payload_type, self._sequence, timestamp, self._ssrc, marker=not self._talking
        )
        self._talking = True
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._last_sent_timestamp = timestamp
        self.send_stats.on_packet_sent(len(payload))
        self._owner.transmit(srtp.protect_rtp(header + payload), destination)

    # -- time ----------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called by the transceiver's housekeeping sweep: setup, consent and RTCP."""
        if self.state is SessionState.CLOSED:
            return
        if self.state is not SessionState.CONNECTED and now >= self.setup_deadline:
            self.close(EndReason.SETUP_TIMEOUT)
            return
        expires = self.ice.consent_expires_at()
        if expires is not None and now >= expires:
            self.close(EndReason.CONSENT_EXPIRED)
            return
        if self.state is SessionState.CONNECTED and now >= self._next_rtcp:
            self._send_rtcp(now)
            self._next_rtcp = now + RTCP_INTERVAL * random.uniform(0.5, 1.5)

    def _send_rtcp(self, now: float) -> None:
        srtp = self._srtp
        destination = self.ice.selected or self._last_valid_source()
        if srtp is None or destination is None:
            return
        blocks = []
        if self._remote_ssrc is not None:
            blocks.append(self.receive_stats.report_block(self._remote_ssrc, now))
        report: rtcp.RtcpPacket
        if self.send_stats.packet_count and self._tick_base is not None:
            rtp_now = self._last_sent_timestamp
            report = self.send_stats.sender_report(self._ssrc, now, rtp_now, blocks)
        else:
            report = rtcp.ReceiverReport(self._ssrc, blocks)
        sdes = rtcp.SourceDescription([(self._ssrc, [(1, self._cname)])])
        self._owner.transmit(srtp.protect_rtcp(rtcp.build_rtcp([report, sdes])), destination)

    # -- end -------------------------------------------------------------

    def close(self, reason: EndReason) -> None:
        """End the session, free everything and tell the owner why."""
        if self.state is SessionState.CLOSED:
            return
        was_connected = self.state is SessionState.CONNECTED
        self.state = SessionState.CLOSED
        self.end_reason = reason
        if self._dtls_timer is not None and self._dtls_timer.active():
            self._dtls_timer.cancel()
        self._dtls_timer = None
        destination = self.ice.selected or self._last_valid_source()
        if was_connected and reason is not EndReason.DTLS_CLOSED and destination is not None:
            for datagram in self.dtls.close():
                self._owner.transmit(datagram, destination)
        self._queue.clear()
        agent, self._agent = self._agent, None
        if agent is not None:
            agent.session_ended(reason.value)
        self._srtp = None
        self.log.info(
            "session {id} ended: {why} after {secs:.1f} s",
            id=self.session_id,
            why=reason.value,
            secs=self._clock.seconds() - self.created_at,
        )
        self._owner.session_closed(self, reason)

    def stats(self) -> dict[str, Any]:
        """Live numbers for operators and the demo page."""
        return {
            "state": self.state.value,
            "timings_ms": {k: round(v * 1000, 1) for k, v in self.timings.items()},
            "packets_received": self.receive_stats.packets_received,
            "packets_lost": self.receive_stats.cumulative_lost,
            "jitter_ms": round(self.receive_stats.jitter_seconds * 1000, 2),
            "packets_sent": self.send_stats.packet_count,
            "rtt_ms": None if self.round_trip_time is None else round(self.round_trip_time * 1000, 2),
            "queued_frames": len(self._queue),
        }

