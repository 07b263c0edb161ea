# -*- test-case-name: tests.test_host -*-
"""One call: ICE-lite, DTLS, SRTP, RTP/RTCP, audio and events for a session, with no socket of its own."""

from __future__ import annotations

import enum
import os
import random
import secrets
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession
from voiceedge.media.speech import SpeechEvent, SpeechStarted
from voiceedge.transceiver.audio import InboundAudio, OutboundAudio, SpeechSettings
from voiceedge.transceiver.dtls import DtlsState, DtlsTransport
from voiceedge.transceiver.events_channel import EventsChannel
from voiceedge.transceiver.ice import CheckResult, IceLiteAgent
from voiceedge.transceiver.rtp_stats import ReceiveStatistics, SendStatistics, round_trip_time
from voiceedge.transceiver.srtp import SrtpError, SrtpSession
from voiceedge.wire import rtcp
from voiceedge.wire.demux import PacketKind, classify
from voiceedge.wire.errors import WireError
from voiceedge.wire.opus import packet_duration
from voiceedge.wire.rtp import build_rtp_header, parse_rtp

Address = tuple[str, int]

OPUS_CLOCK_RATE = 48000
SAMPLES_PER_TICK = OPUS_CLOCK_RATE // 50  # one 20 ms frame
RTCP_INTERVAL = 5.0  # RFC 3550 §6.2 minimum for a two-party session
# Frames one session may send in a single late tick: enough to recover from a
# 100 ms stall, few enough not to burst a whole queue at the client.
MAX_CATCH_UP = 5
# Agent audio sent this recently still counts as "playing" for barge-in.
PLAYING_GRACE = 0.1
# The caller's audio is decoded no faster than real time, with this much burst
# (a late reactor, a network hiccup): a peer sending tiny packets that each
# claim 120 ms cannot make us decode without end.
AUDIO_BURST = 1.0
MAX_PACKET_DURATION = 0.06


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
    probes = Attribute("A collections.Counter of return-routability probes: sent, answered.")

    def transmit(data: bytes, destination: Address) -> None:
        """Send one datagram to a client address."""

    def session_address_valid(session: Session, source: Address) -> None:
        """``source`` passed an ICE check for ``session``: route its packets here."""

    def session_address_invalid(session: Session, source: Address) -> None:
        """``session`` no longer takes packets from ``source``: stop routing them here."""

    def session_wants_tick(session: Session) -> None:
        """``session`` has audio to send, or a jitter buffer to drain, on the shared tick."""

    def session_closed(session: Session, reason: EndReason) -> None:
        """``session`` has ended and freed its state."""


@implementer(IAgentSession)
class Session:
    """The state of one call, driven by datagrams, ticks and the injected clock.

    The transceiver hands it every datagram routed to it; it answers ICE
    checks, runs the DTLS handshake, protects and unprotects media, decodes
    the caller's audio for its agent and encodes the agent's, carries JSON
    events on the ``oai-events`` data channel, and cuts the agent off when
    the caller barges in. It never touches a socket: what it sends goes
    through its owner's ``transmit``.
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
        speech: SpeechSettings = SpeechSettings(),
        data_channel: bool = False,
    ) -> None:
        self.session_id = session_id
        self.ice = ice
        self.dtls = dtls
        self.payload_type = payload_type
        self.clock = clock
        self.sample_rate: int = agent_factory.sample_rate
        self.speech = speech
        self.state = SessionState.WAITING
        self.end_reason: EndReason | None = None
        self._owner = owner
        self._agent_factory = agent_factory
        self._agent: IAgent | None = None
        self._srtp: SrtpSession | None = None
        self._timer: IDelayedCall | None = None
        self._dtls_peer: Address | None = None
        self._inbound: InboundAudio | None = None
        self._outbound: OutboundAudio | None = None
        self.events: EventsChannel | None = None
        if data_channel:
            self.events = EventsChannel(self._events_open, self._event_received, self._bad_event)

        now = clock.seconds()
        # The answer takes setup:passive, so we are the DTLS server: start()
        # sends nothing and only readies it for the client's hello.
        dtls.start(now)
        self.created_at = now
        self.setup_deadline = now + setup_timeout
        self.timings: dict[str, float] = {}

        self._ssrc = int.from_bytes(os.urandom(4), "big")
        self._sequence = int.from_bytes(os.urandom(2), "big")
        self._timestamp_base = int.from_bytes(os.urandom(4), "big")
        self._tick_base: int | None = None
        self._last_sent_timestamp = self._timestamp_base
        self._talking = False
        self._cname = os.urandom(8).hex().encode("ascii")
        self._last_agent_sent_at: float | None = None
        self._last_sent_slot_at = now
        self.barge_in_ms: list[float] = []
        self._audio_credit = AUDIO_BURST
        self._audio_credit_at = now

        self.receive_stats = ReceiveStatistics(OPUS_CLOCK_RATE)
        self.send_stats = SendStatistics()
        self._remote_ssrc: int | None = None
        self._next_rtcp = now + RTCP_INTERVAL
        self.round_trip_time: float | None = None
        self.remote_jitter: float | None = None
        self.remote_fraction_lost: float | None = None

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
        now = self.clock.seconds()
        outcome = self.ice.receive(data, source, now)
        if outcome.result is CheckResult.VERIFIED:
            self._owner.probes["answered"] += 1
            return
        if outcome.result is not CheckResult.ANSWERED:
            self._owner.drops["stun_" + outcome.result.value] += 1
            if outcome.response is not None:
                self._owner.transmit(outcome.response, source)
            return
        assert outcome.response is not None
        self._owner.transmit(outcome.response, source)
        if outcome.probe is not None:
            # The client nominated an address we have not seen receive our
            # packets: media follows only once it answers this.
            self._owner.transmit(outcome.probe, source)
            self._owner.probes["sent"] += 1
        for gone in outcome.evicted:
            self._owner.session_address_invalid(self, gone)
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
        now = self.clock.seconds()
        self._dtls_peer = source
        output = self.dtls.receive(data, now)
        for datagram in output.datagrams:
            self._owner.transmit(datagram, source)
        self._after_dtls(now, arm=not output.application_data)
        if output.application_data and self.state is SessionState.CONNECTED:
            events = self.events
            if events is None:
                self._owner.drops["sctp_not_negotiated"] += 1
                self._arm_timer()
            else:
                for packet in output.application_data:
                    events.receive(packet, now)
                self._flush_sctp()  # and arms the timer once

    def _after_dtls(self, now: float, arm: bool = True) -> None:
        state = self.dtls.state
        if state is DtlsState.CONNECTED and self._srtp is None:
            self._connected(now)
        elif state is DtlsState.FAILED:
            self.log.warn(
                "session {id}: DTLS failed: {why}", id=self.session_id, why=self.dtls.failure_reason
            )
            self.close(EndReason.DTLS_FAILED)
            return
        elif state is DtlsState.CLOSED:
            self.close(EndReason.DTLS_CLOSED)
            return
        if arm:
            self._arm_timer()

    def _connected(self, now: float) -> None:
        keys = self.dtls.srtp_keys
        assert keys is not None
        if self._dtls_peer is not None:
            # It completed a handshake with us, so it receives what we send.
            self.ice.verify(self._dtls_peer)
        self._srtp = SrtpSession(keys)
        self.state = SessionState.CONNECTED
        self.timings["dtls"] = now - self.created_at
        self.log.info(
            "session {id} connected: ice {ice:.0f} ms, dtls {dtls:.0f} ms",
            id=self.session_id,
            ice=self.timings.get("ice", 0.0) * 1000,
            dtls=self.timings["dtls"] * 1000,
        )
        self._inbound = InboundAudio(self.sample_rate, self.speech, self._frame_decoded, self._speech)
        self._outbound = OutboundAudio(self.sample_rate)
        self._agent = self._agent_factory.agent_for(self)

    def _destination(self) -> Address | None:
        """Where media goes: the selected path, else the freshest verified source."""
        return self.ice.media_destination()

    # -- timers ---------------------------------------------------------------

    def _arm_timer(self) -> None:
        """One timer for DTLS retransmission and SCTP: the earlier deadline."""
        deadlines = [d for d in (self.dtls.deadline(), self._sctp_deadline()) if d is not None]
        if self._timer is not None and self._timer.active():
            if deadlines and abs(self._timer.getTime() - min(deadlines)) < 1e-6:
                return
            self._timer.cancel()
        self._timer = None
        if deadlines and self.state is not SessionState.CLOSED:
            delay = max(0.0, min(deadlines) - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._timeout)

    def _sctp_deadline(self) -> float | None:
        return self.events.deadline() if self.events is not None and self._srtp is not None else None

    def _timeout(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        deadline = self.dtls.deadline()
        if deadline is not None and deadline <= now:
            destination = self._dtls_peer
            for datagram in self.dtls.handle_timeout(now):
                if destination is not None:
                    self._owner.transmit(datagram, destination)
        sctp_deadline = self._sctp_deadline()
        if self.events is not None and sctp_deadline is not None and sctp_deadline <= now:
            self.events.handle_timeout(now)
            self._flush_sctp()
            return  # _flush_sctp re-arms
        self._after_dtls(now)

    # -- media in -------------------------------------------------------------

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
        now = self.clock.seconds()
        try:
            duration = packet_duration(packet.payload)
        except WireError:
            self._owner.drops["rtp_opus_malformed"] += 1
            return
        if duration > MAX_PACKET_DURATION:
            self._owner.drops["rtp_opus_too_long"] += 1
            return
        credit = min(AUDIO_BURST, self._audio_credit + now - self._audio_credit_at)
        self._audio_credit_at = now
        if credit < duration:
            self._audio_credit = credit
            self._owner.drops["rtp_over_real_time"] += 1
            return
        self._audio_credit = credit - duration
        if self._remote_ssrc != packet.ssrc:
            if self._remote_ssrc is not None:
                self.receive_stats = ReceiveStatistics(OPUS_CLOCK_RATE)
            self._remote_ssrc = packet.ssrc
        self.receive_stats.on_packet(packet.sequence_number, packet.timestamp, now)
        if "first_audio" not in self.timings:
            self.timings["first_audio"] = now - self.created_at
        inbound = self._inbound
        assert inbound is not None
        inbound.packet_received(packet.sequence_number, packet.timestamp, packet.payload, now)
        if inbound.deadline() is not None:
            self._owner.session_wants_tick(self)

    def _frame_decoded(self, frame: AudioFrame) -> None:
        if self._agent is not None:
            self._agent.audio_received(frame)

    def _speech(self, event: SpeechEvent) -> None:
        if isinstance(event, SpeechStarted):
            if self.speech.barge_in and self._agent_playing(event.at):
                self._barge_in(event)
            if self._agent is not None:
                self._agent.speech_started(event.time)
        elif self._agent is not None:
            self._agent.speech_stopped(event.time)

    def _agent_playing(self, now: float) -> bool:
        if self._outbound:
            return True
        sent = self._last_agent_sent_at
        return sent is not None and now - sent < PLAYING_GRACE

    def _barge_in(self, event: SpeechStarted) -> None:
        """The caller talks over the agent: stop the agent's audio now."""
        self.clear_audio()
        # From the first voiced packet's arrival to the last agent packet sent.
        last = self._last_agent_sent_at
        arrival = event.time
        latency = 0.0 if last is None else max(0.0, last - arrival)
        self.barge_in_ms.append(round(latency * 1000, 1))

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
        now = self.clock.seconds()
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

    # -- events ---------------------------------------------------------------

    def _events_open(self) -> None:
        assert self.events is not None
        self.events.send_event(
            {
                "type": "session.created",
                "event_id": "event_" + secrets.token_hex(8),
                "session": {
                    "id": self.session_id,
                    "object": "realtime.session",
                    "audio": {"sample_rate": self.sample_rate},
                },
            }
        )

    def _event_received(self, event: dict[str, Any]) -> None:
        if self._agent is not None:
            self._agent.event_received(event)

    def _bad_event(self, why: str) -> None:
        self._owner.drops["event_malformed"] += 1
        self.send_event(
            {"type": "error", "error": {"type": "invalid_request_error", "message": why}}
        )

    def _flush_sctp(self) -> None:
        events = self.events
        destination = self._destination()
        if events is None or destination is None or self.state is not SessionState.CONNECTED:
            return
        for packet in events.take_outgoing():
            for datagram in self.dtls.send_application_data(packet):
                self._owner.transmit(datagram, destination)
        self._arm_timer()

    # -- the agent's side (IAgentSession) ----------------------------------------

    def send_audio(self, pcm: bytes) -> None:
        """Queue agent PCM; the shared tick sends it in 20 ms Opus frames."""
        outbound = self._outbound
        if outbound is None or self.state is not SessionState.CONNECTED:
            return
        had_frames = bool(outbound)
        dropped = outbound.frames_dropped
        outbound.add(pcm)
        if outbound.frames_dropped != dropped:
            self._owner.drops["audio_queue_full"] += outbound.frames_dropped - dropped
        if outbound and not had_frames:
            self._owner.session_wants_tick(self)

    def clear_audio(self) -> int:
        """Drop all queued agent audio; the milliseconds dropped."""
        return self._outbound.clear() if self._outbound is not None else 0

    def queued_audio_ms(self) -> int:
        """Agent audio waiting for the tick, in milliseconds."""
        return self._outbound.queued_ms() if self._outbound is not None else 0

    def send_event(self, event: dict[str, Any]) -> None:
        """Send a JSON event to the caller on ``oai-events``."""
        if self.events is None:
            self._owner.drops["event_no_channel"] += 1
            return
        unencodable = self.events.events_unencodable
        self.events.send_event(event)
        if self.events.events_unencodable != unencodable:
            self._owner.drops["event_unencodable"] += 1
            return
        self._flush_sctp()

    def end(self, reason: str) -> None:
        """The agent hangs up."""
        self.log.info("session {id}: agent ended the call: {why}", id=self.session_id, why=reason)
        self.close(EndReason.AGENT)

    # -- the shared tick ------------------------------------------------------

    def tick(self, tick_index: int, slots: int = 1) -> bool:
        """Send queued frames for the ``slots`` 20 ms slots ending at ``tick_index``.

        ``slots`` is more than one when the reactor was late; the frames due in
        the missed slots go out now (at most :data:`MAX_CATCH_UP`), so a stall
        does not leave a permanent delay behind it. The RTP timestamp follows
        the shared tick, not the number of frames sent, so a pause in the
        agent's audio is a pause in the timeline too. The tick also releases
        frames the jitter buffer held for a missing packet. Returns ``True``
        while there is more to do on later ticks.
        """
        now = self.clock.seconds()
        inbound = self._inbound
        waiting = False
        if inbound is not None:
            deadline = inbound.deadline()
            if deadline is not None and deadline <= now:
                inbound.drain(now)
            waiting = inbound.deadline() is not None
        srtp = self._srtp
        outbound = self._outbound
        destination = self._destination()
        if srtp is None or outbound is None or destination is None:
            self._talking = False
            return waiting
        slots = min(slots, MAX_CATCH_UP)
        for slot in range(tick_index - slots + 1, tick_index + 1):
            payload = outbound.pop()
            if payload is None:
                break
            self._send_frame(srtp, destination, slot, payload, now)
        if outbound:
            return True
        self._talking = False
        return waiting

    def _send_frame(
        self, srtp: SrtpSession, destination: Address, slot: int, payload: bytes, now: float
    ) -> None:
        if self._tick_base is None:
            self._tick_base = slot
        timestamp = (self._timestamp_base + SAMPLES_PER_TICK * (slot - self._tick_base)) & 0xFFFFFFFF
        header = build_rtp_header(
            self.payload_type, self._sequence, timestamp, self._ssrc, marker=not self._talking
        )
        self._talking = True
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._last_sent_timestamp = timestamp
        self._last_sent_slot_at = now
        self._last_agent_sent_at = now
        self.send_stats.on_packet_sent(len(payload))
        self._owner.transmit(srtp.protect_rtp(header + payload), destination)

    # -- housekeeping -----------------------------------------------------------

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
        destination = self._destination()
        if srtp is None or destination is None:
            return
        blocks = []
        if self._remote_ssrc is not None:
            blocks.append(self.receive_stats.report_block(self._remote_ssrc, now))
        report: rtcp.RtcpPacket
        if self.send_stats.packet_count and self._tick_base is not None:
            # RFC 3550 §6.4.1: the RTP time of this same instant, not of the
            # last packet (the agent may have been quiet since).
            elapsed = round((now - self._last_sent_slot_at) * OPUS_CLOCK_RATE)
            rtp_now = (self._last_sent_timestamp + elapsed) & 0xFFFFFFFF
            report = self.send_stats.sender_report(self._ssrc, now, rtp_now, blocks)
        else:
            report = rtcp.ReceiverReport(self._ssrc, blocks)
        sdes = rtcp.SourceDescription([(self._ssrc, [(rtcp.SDES_CNAME, self._cname)])])
        self._owner.transmit(srtp.protect_rtcp(rtcp.build_rtcp([report, sdes])), destination)

    # -- end ----------------------------------------------------------------------

    def close(self, reason: EndReason) -> None:
        """End the session, free everything and tell the owner why."""
        if self.state is SessionState.CLOSED:
            return
        was_connected = self.state is SessionState.CONNECTED
        destination = self._destination() or self._dtls_peer
        self.state = SessionState.CLOSED
        self.end_reason = reason
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if was_connected and reason is not EndReason.DTLS_CLOSED and destination is not None:
            for datagram in self.dtls.close():
                self._owner.transmit(datagram, destination)
        agent, self._agent = self._agent, None
        self._srtp = None
        self._inbound = None
        self._outbound = None
        self.events = None
        try:
            if agent is not None:
                agent.session_ended(reason.value)
        except Exception:
            # The agent's bug must not keep the session's routes alive.
            self.log.failure("session {id}: the agent failed to end", id=self.session_id)
        self.log.info(
            "session {id} ended: {why} after {secs:.1f} s",
            id=self.session_id,
            why=reason.value,
            secs=self.clock.seconds() - self.created_at,
        )
        self._owner.session_closed(self, reason)

    def stats(self) -> dict[str, Any]:
        """Live numbers for operators, tests and the demo page."""
        return {
            "state": self.state.value,
            "timings_ms": {k: round(v * 1000, 1) for k, v in self.timings.items()},
            "packets_received": self.receive_stats.packets_received,
            "packets_lost": self.receive_stats.cumulative_lost,
            "jitter_ms": round(self.receive_stats.jitter_seconds * 1000, 2),
            "packets_sent": self.send_stats.packet_count,
            "rtt_ms": None if self.round_trip_time is None else round(self.round_trip_time * 1000, 2),
            "queued_audio_ms": self.queued_audio_ms(),
            "barge_in_ms": list(self.barge_in_ms),
            "frames_concealed": self._inbound.frames_concealed if self._inbound else 0,
            "events_channel_open": bool(self.events and self.events.is_open),
        }
