# -*- test-case-name: tests.test_session -*-
"""One call's transport and media, sans-I/O: datagrams and time in; datagrams, events and a deadline out."""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
import random
from dataclasses import dataclass
from typing import Any, Callable

from twisted.logger import Logger

from voiceedge.media.detection import DetectionSettings, DetectorUnavailable, make_speech_detector
from voiceedge.media.silero_batch import SileroBatcher
from voiceedge.transceiver.audio import (
    DEFAULT_APPLICATION,
    DEFAULT_COMPLEXITY,
    InboundAudio,
    InboundOpus,
    OutboundAudio,
    OutboundOpus,
    StopTail,
)
from voiceedge.transceiver.credentials import loggable_id
from voiceedge.transceiver.dtls import DtlsState, DtlsTransport
from voiceedge.transceiver.events_channel import EventsChannel
from voiceedge.transceiver.ice import CheckResult, IceLiteAgent
from voiceedge.transceiver.rtp_receiver import RtpReceiver
from voiceedge.transceiver.rtp_sender import RtpSender, StopReason, mid_extension
from voiceedge.transceiver.rtp_stats import SendStatistics, round_trip_time
from voiceedge.transceiver.settings import SpeechSettings
from voiceedge.transceiver.session_events import (
    ClientEvent,
    ClientEventRejected,
    Closed,
    Connected,
    EndReason,
    EventsChannelOpened,
    MediaPathChanged,
    PathInvalid,
    PathValid,
    SessionEvent,
    SetupMilestone,
    UfragRetired,
)
from voiceedge.transceiver.srtp import PacketBudget, SrtpError, SrtpSession
from voiceedge.wire import rtcp
from voiceedge.wire.errors import WireError

#: The RTCP reports' timing jitter, unless a test injects its own: one generator for every
#: session (a ``random.Random`` holds 2.5 kB of state; bench/memory.py counts them per call).
_SHARED_RNG = random.Random()

__all__ = ["AudioStream", "EndReason", "Session", "SessionState"]

Address = tuple[str, int]
Datagram = tuple[bytes, Address]

OPUS_CLOCK_RATE = 48000
RTCP_INTERVAL = 5.0  # RFC 3550 §6.2 minimum for a two-party session
# SRTCP packets a second that may be decrypted, checked before any
# cryptography. Callers send a report every second or so (RFC 3550 §6.2;
# aiortc 0.5-1.5 s, Pion 1 s, Chromium a few seconds) and a BYE at the
# end; the answer negotiates no feedback (no transport-cc, NACK or PLI) that
# would send more. 10 a second with a burst of 30 covers a stall's backlog.
RTCP_PACKET_RATE = 10.0
RTCP_PACKET_BURST = 30.0
# DTLS from a source that passed a check but has not yet shown it receives
# (answered a check of ours) is held, not answered: a DTLS answer there would
# reflect a full handshake flight, retransmitted, to whatever address a caller
# spoofs checks from. A browser's ClientHello may overtake its answer to our
# return check by a moment; a flight is a few datagrams.
HELD_DTLS_DATAGRAMS = 8
HELD_DTLS_BYTES = 16384
# Return checks a held DTLS datagram earns its source, sent at once or, while
# the answers are lost, one per PROBE_INTERVAL: verification does not wait for
# the client's next check or its DTLS backoff (1, 2, 4 s). Two per datagram
# keeps a spoofed source within twice the datagrams it sent.
HELD_DTLS_PROBES = 2
# Agent audio sent this recently still counts as "playing" for barge-in.
PLAYING_GRACE = 0.1
# Agent audio that starts this long after its last packet is a new reply, whose
# leading silence is not sent.
REPLY_GAP = 0.5


class SessionState(enum.Enum):
    """Where a session is in its life."""

    WAITING = "waiting"  # answered, no valid ICE check yet
    CONNECTING = "connecting"  # ICE valid, DTLS under way
    CONNECTED = "connected"  # SRTP keys in place, media flowing
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AudioStream:
    """The audio m-line as answered: the client's Opus payload type, our SSRC, CNAME and MID.

    ``mid_extension_id`` is the id the client gave the
    ``urn:ietf:params:rtp-hdrext:sdes:mid`` header extension, when it offered
    it: every packet we send then carries ``mid``. ``remote_ssrcs`` are the
    SSRCs the offer announced for the client's audio (SRTP takes those, and
    only a few others).
    """

    payload_type: int
    ssrc: int
    cname: str
    mid: str | None = None
    mid_extension_id: int | None = None
    remote_ssrcs: tuple[int, ...] = ()

    @classmethod
    def new(
        cls,
        payload_type: int,
        mid: str | None = None,
        mid_extension_id: int | None = None,
        remote_ssrcs: tuple[int, ...] = (),
    ) -> AudioStream:
        """A stream with a random SSRC and CNAME."""
        return cls(
            payload_type,
            int.from_bytes(os.urandom(4), "big"),
            os.urandom(12).hex(),
            mid,
            mid_extension_id,
            remote_ssrcs,
        )


class Session:
    """The transport and media of one call, with no socket and no clock of its own.

    Inputs: :meth:`receive` (a datagram routed to this session), :meth:`tick`
    (the transceiver's shared 20 ms tick, while :meth:`wants_tick`),
    :meth:`handle_timeout` (at :meth:`deadline`), and the conversation side's
    calls: :meth:`send_audio`, :meth:`stop_audio`, :meth:`send_event`,
    :meth:`close`, and :meth:`restart_ice` from signaling. Each takes ``now``.

    Outputs: :meth:`take_datagrams` (what to send, and where), :meth:`take_events`
    (:mod:`voiceedge.transceiver.session_events`) and :meth:`deadline`. The
    driver takes both after every input.

    Inside: the :class:`~voiceedge.transceiver.ice.IceLiteAgent` (checks,
    return checks, consent, restart), the :class:`DtlsTransport`, SRTP, the
    :class:`~voiceedge.transceiver.rtp_receiver.RtpReceiver` (caller audio to
    decoded frames and speech events), the
    :class:`~voiceedge.transceiver.rtp_sender.RtpSender` (agent audio, paced,
    to RTP), RTCP, and the ``oai-events`` channel's SCTP association.
    """

    log = Logger()

    def __init__(
        self,
        session_id: str,
        ice: IceLiteAgent,
        dtls: DtlsTransport,
        audio: AudioStream,
        now: float,
        *,
        sample_rate: int = 48000,
        grid_origin: float = 0.0,
        setup_timeout: float = 15.0,
        speech: SpeechSettings = SpeechSettings(),
        opus_complexity: int = DEFAULT_COMPLEXITY,
        opus_application: str = DEFAULT_APPLICATION,
        passthrough: bool = False,
        stop_tail: StopTail = "dtx",
        data_channel: bool = False,
        drops: collections.Counter[str] | None = None,
        probes: collections.Counter[str] | None = None,
        repairs: collections.Counter[str] | None = None,
        rng: random.Random | None = None,
        silero_batcher: SileroBatcher | None = None,
        on_detection: Callable[[], None] | None = None,
    ) -> None:
        self.session_id = session_id
        # Where the call's Silero windows run with other calls' (None: each at once).
        self.silero_batcher = silero_batcher
        # Called when the batcher has run this call's windows: the host calls handle_detection then.
        self.on_detection = on_detection
        self.log_id = loggable_id(session_id)
        # The session configuration a client secret carried (see ISessionHost.open_session).
        self.settings: dict[str, Any] = {}
        self.ice = ice
        self.dtls = dtls
        self.audio = audio
        self.sample_rate = sample_rate
        self.grid_origin = grid_origin
        self.speech = speech
        self.opus_complexity = opus_complexity
        self.opus_application = opus_application
        self.passthrough = passthrough
        self.stop_tail = stop_tail
        #: How the call's speech detector runs now: ``[speech]``, then per call (:meth:`set_speech_detection`).
        self.speech_detection = speech.detection()
        self.state = SessionState.WAITING
        self.end_reason: EndReason | None = None
        self.drops: collections.Counter[str] = collections.Counter() if drops is None else drops
        # Lost caller frames by how they were filled in (audio.REPAIRS), shared by the process's sessions.
        self.repairs: collections.Counter[str] = collections.Counter() if repairs is None else repairs
        self.probes: collections.Counter[str] = collections.Counter() if probes is None else probes
        self._rng = rng or _SHARED_RNG
        self._datagrams: list[Datagram] = []
        self._events: list[SessionEvent] = []
        self._srtp: SrtpSession | None = None
        self._rtcp_budget = PacketBudget(RTCP_PACKET_RATE, RTCP_PACKET_BURST)
        self._dtls_peer: Address | None = None
        self._held_dtls: collections.deque[Datagram] = collections.deque()
        self._held_dtls_bytes = 0
        # Return checks still owed to sources whose DTLS is held.
        self._held_probes: dict[Address, int] = {}
        self._inbound: InboundAudio | InboundOpus | None = None
        self._outbound: OutboundAudio | OutboundOpus | None = None
        self.receiver: RtpReceiver | None = None
        self.sender: RtpSender | None = None
        self.events_channel: EventsChannel | None = None
        if data_channel:
            self.events_channel = EventsChannel(self._events_open, self._event_received, self._bad_event)

        # The answer takes setup:passive, so we are the DTLS server: start()
        # sends nothing and only readies it for the client's hello.
        dtls.start(now)
        self.created_at = now
        # The time of the input being handled, for callbacks that do not pass
        # it on (the events channel's open).
        self._now = now
        self.setup_deadline = now + setup_timeout
        self.timings: dict[str, float] = {}
        self._awaiting_first_in = True
        self._awaiting_first_out = True
        self.path_changes = 0

        self.send_stats = SendStatistics()
        self._next_rtcp: float | None = None
        # The transport part of deadline(), recomputed after a transport input.
        self._transport_due: float | None = None
        self._transport_stale = True
        self.round_trip_time: float | None = None
        self.remote_jitter: float | None = None
        self.remote_fraction_lost: float | None = None

    # -- outputs --------------------------------------------------------------

    def take_datagrams(self) -> list[Datagram]:
        """The datagrams to send, with their destinations, since the last call."""
        datagrams = self._datagrams
        if datagrams:
            self._datagrams = []
        return datagrams

    def take_events(self) -> list[SessionEvent]:
        """The events since the last call, in order."""
        events = self._events
        if events:
            self._events = []
        return events

    def has_output(self) -> bool:
        """Whether datagrams or events wait to be taken."""
        return bool(self._datagrams or self._events)

    def _emit(self, event: SessionEvent) -> None:
        # Not a bound list.append: take_events() swaps the list.
        self._events.append(event)

    def deadline(self) -> float | None:
        """When :meth:`handle_timeout` is next due; ``None`` once closed."""
        if self.state is SessionState.CLOSED:
            return None
        # The transport's timers move only on transport inputs (checks, DTLS,
        # RTCP, events, timeouts): an RTP packet, fifty a second, reuses them.
        if self._transport_stale:
            self._transport_due = self._transport_deadline()
            self._transport_stale = False
        earliest = self._transport_due
        # The receiver's deadline is its sink's (RtpReceiver.deadline): asked directly, per packet.
        inbound = self._inbound
        if inbound is not None:
            due = inbound.deadline()
            if due is not None and (earliest is None or due < earliest):
                earliest = due
        return earliest

    def _transport_deadline(self) -> float | None:
        earliest = self.ice.consent_expires_at()
        for due in (
            self.dtls.deadline(),
            self.ice.deadline(),
            self._sctp_deadline(),
            self._held_probes_due(),
            self._next_rtcp,
            self.setup_deadline if self.state is not SessionState.CONNECTED else None,
        ):
            if due is not None and (earliest is None or due < earliest):
                earliest = due
        return earliest

    def wants_tick(self) -> bool:
        """Whether the shared tick should call :meth:`tick`: agent audio queued or still playing."""
        sender = self.sender
        return sender is not None and sender.wants_tick()

    def tick_slot(self) -> int | None:
        """The first slot of the shared tick's grid whose tick should call :meth:`tick`; ``None``: none.

        See :meth:`RtpSender.tick_slot`: a tick before that slot would find nothing to do.
        """
        sender = self.sender
        return None if sender is None else sender.tick_slot()

    def _milestone(self, name: str, now: float) -> None:
        if name not in self.timings:
            seconds = now - self.created_at
            self.timings[name] = seconds
            self._events.append(SetupMilestone(name, seconds))

    def mark_answered(self, now: float) -> None:
        """Signaling has built the answer (the first step of the setup waterfall)."""
        self._milestone("answer", now)

    # -- datagrams in -----------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float) -> None:
        """Handle one datagram from ``source``, already routed to this session (RFC 7983 demux)."""
        if self.state is SessionState.CLOSED or not data:
            return
        self._now = now
        first = data[0]
        if 128 <= first <= 191:
            if len(data) > 1 and 192 <= data[1] <= 223:
                self._transport_stale = True
                self._rtcp_received(data, source, now)
            else:
                self._rtp_received(data, source, now)
            return
        self._transport_stale = True
        if first < 4:
            self._stun_received(data, source, now)
        elif 20 <= first <= 63:
            self._dtls_received(data, source, now)
        else:
            self.drops["unknown_kind"] += 1

    def _stun_received(self, data: bytes, source: Address, now: float) -> None:
        before = self.ice.media_destination()
        outcome = self.ice.receive(data, source, now)
        result = outcome.result
        if result is CheckResult.VERIFIED:
            if not outcome.consent:
                self.probes["answered"] += 1
            self._check_destination(before)
            if self._held_dtls and self.ice.is_verified(source):
                self._release_dtls(source, now)
            return
        if result is CheckResult.CONSENT_REVOKED:
            self.close(EndReason.CONSENT_REVOKED, now)
            return
        if result is not CheckResult.ANSWERED:
            self.drops["stun_" + result.value] += 1
            if outcome.response is not None:
                self._datagrams.append((outcome.response, source))
            return
        assert outcome.response is not None
        self._datagrams.append((outcome.response, source))
        if outcome.probe is not None:
            self._datagrams.append((outcome.probe, source))
            self.probes["sent"] += 1
        for gone in outcome.evicted:
            self._events.append(PathInvalid(gone))
            if self._held_dtls:
                self.drops["dtls_unverified"] += len(self._take_held_dtls(gone))
        if outcome.retired_ufrag is not None:
            self._events.append(UfragRetired(outcome.retired_ufrag))
        self._milestone("first_check", now)
        if outcome.nominated:
            self._milestone("nomination", now)
        if outcome.newly_valid:
            if self.state is SessionState.WAITING:
                self.state = SessionState.CONNECTING
            self._events.append(PathValid(source))
        self._check_destination(before)

    def _check_destination(self, before: Address | None) -> None:
        after = self.ice.media_destination()
        if after != before and after is not None and before is not None:
            self.path_changes += 1
            self._events.append(MediaPathChanged(after))

    def _dtls_received(self, data: bytes, source: Address, now: float) -> None:
        if not self.ice.is_valid(source):
            self.drops["dtls_unvalidated"] += 1
            return
        if not self.ice.is_verified(source):
            self._hold_dtls(data, source)
            self._held_probes[source] = self._held_probes.get(source, 0) + HELD_DTLS_PROBES
            self._send_held_probes(now)
            return
        self._dtls_peer = source
        output = self.dtls.receive(data, now)
        for datagram in output.datagrams:
            self._datagrams.append((datagram, source))
        self._after_dtls(now)
        if output.application_data and self.state is SessionState.CONNECTED:
            events = self.events_channel
            if events is None:
                self.drops["sctp_not_negotiated"] += 1
                return
            for packet in output.application_data:
                events.receive(packet, now)
            self._flush_sctp()

    def _hold_dtls(self, data: bytes, source: Address) -> None:
        """Keep DTLS from a valid, unverified ``source`` until it answers a check of ours."""
        held = self._held_dtls
        held.append((data, source))
        self._held_dtls_bytes += len(data)
        while len(held) > HELD_DTLS_DATAGRAMS or self._held_dtls_bytes > HELD_DTLS_BYTES:
            oldest, _ = held.popleft()
            self._held_dtls_bytes -= len(oldest)
            self.drops["dtls_unverified"] += 1

    def _send_held_probes(self, now: float) -> None:
        """The return checks due to sources whose DTLS is held; one that cannot go gives up."""
        for source, owed in list(self._held_probes.items()):
            if now < self.ice.probe_due(source):
                continue
            probe = self.ice.probe(source, now)
            if probe is None or owed <= 1:
                del self._held_probes[source]
            else:
                self._held_probes[source] = owed - 1
            if probe is not None:
                self._datagrams.append((probe, source))
                self.probes["sent"] += 1

    def _held_probes_due(self) -> float | None:
        if not self._held_probes:
            return None
        return min(self.ice.probe_due(source) for source in self._held_probes)

    def _take_held_dtls(self, source: Address) -> list[bytes]:
        """Take ``source``'s held DTLS datagrams out of the hold, oldest first."""
        self._held_probes.pop(source, None)
        taken = [data for data, held_from in self._held_dtls if held_from == source]
        if taken:
            self._held_dtls = collections.deque(d for d in self._held_dtls if d[1] != source)
            self._held_dtls_bytes -= sum(len(data) for data in taken)
        return taken

    def _release_dtls(self, source: Address, now: float) -> None:
        """``source`` has shown it receives: its held DTLS goes to the handshake, in order."""
        for data in self._take_held_dtls(source):
            if self.state is SessionState.CLOSED:
                return
            self._dtls_received(data, source, now)

    def _dtls_destination(self) -> Address | None:
        """Where DTLS of ours may go: the handshake's source while it is verified, else the media path."""
        peer = self._dtls_peer
        if peer is not None and self.ice.is_verified(peer):
            return peer
        return self.ice.media_destination()

    def _after_dtls(self, now: float) -> None:
        state = self.dtls.state
        if state is DtlsState.CONNECTED and self._srtp is None:
            self._connected(now)
        elif state is DtlsState.FAILED:
            self.log.warn(
                "session {id}: DTLS failed: {why}", id=self.log_id, why=self.dtls.failure_reason
            )
            self.close(EndReason.DTLS_FAILED, now)
        elif state is DtlsState.CLOSED:
            self.close(EndReason.DTLS_CLOSED, now)

    def _connected(self, now: float) -> None:
        keys = self.dtls.srtp_keys
        assert keys is not None
        if self._dtls_peer is not None:
            # It completed a handshake with us, so it receives what we send.
            before = self.ice.media_destination()
            self.ice.verify(self._dtls_peer, now)
            self._check_destination(before)
        srtp = self._srtp = SrtpSession(keys, offered_ssrcs=self.audio.remote_ssrcs)
        self.state = SessionState.CONNECTED
        self._milestone("dtls", now)
        self.log.info(
            "session {id} connected: first check {ice:.0f} ms, dtls {dtls:.0f} ms",
            id=self.log_id,
            ice=self.timings.get("first_check", 0.0) * 1000,
            dtls=self.timings["dtls"] * 1000,
        )
        if self.passthrough:
            # The agent speaks Opus: payloads both ways, no codec, no speech detection.
            self._inbound = InboundOpus(self._emit, self.repairs)
            self._outbound = OutboundOpus()
        else:
            self._inbound = InboundAudio(
                self.sample_rate,
                self.speech_detection,
                self._emit,
                self._emit,
                self.repairs,
                self.silero_batcher,
                self.on_detection,
            )
            self._outbound = OutboundAudio(
                self.sample_rate, self.opus_complexity, application=self.opus_application, stop_tail=self.stop_tail
            )
        self.receiver = RtpReceiver(srtp, self.audio.payload_type, self._inbound, now, self.drops)
        audio = self.audio
        extension = b""
        if audio.mid is not None and audio.mid_extension_id is not None:
            extension = mid_extension(audio.mid_extension_id, audio.mid)
        # The sender builds each packet's header and protects it in one call (srtp.write_rtp).
        self.sender = RtpSender(
            audio.payload_type,
            audio.ssrc,
            self._outbound,
            self.grid_origin,
            header_extension=extension,
            write_rtp=srtp.write_rtp,
        )
        self.send_stats = self.sender.stats
        self._next_rtcp = now + RTCP_INTERVAL * self._rng.uniform(0.5, 1.5)
        self._events.append(Connected(now))

    # -- media in -------------------------------------------------------------

    def _rtp_received(self, data: bytes, source: Address, now: float) -> None:
        receiver = self.receiver
        if receiver is None or not self.ice.is_valid(source):
            self.drops["rtp_not_ready"] += 1
            return
        if not receiver.receive(data, now):
            return
        if self.ice.heard(source, now):
            self._transport_stale = True  # consent follows the new media destination
            self.path_changes += 1
            self._events.append(MediaPathChanged(source))
        if self._awaiting_first_in and receiver.first_packet_at is not None:
            self._awaiting_first_in = False
            self._milestone("first_rtp_in", now)

    def _rtcp_received(self, data: bytes, source: Address, now: float) -> None:
        srtp = self._srtp
        if srtp is None or not self.ice.is_valid(source):
            self.drops["rtcp_not_ready"] += 1
            return
        if not self._rtcp_budget.allow(now):
            self.drops["rtcp_over_rate"] += 1
            return
        try:
            packets = rtcp.parse_rtcp(srtp.unprotect_rtcp(data))
        except SrtpError as e:
            self.drops["srtcp_" + e.reason] += 1
            return
        except WireError:
            self.drops["rtcp_malformed"] += 1
            return
        if self.ice.heard(source, now):
            self.path_changes += 1
            self._events.append(MediaPathChanged(source))
        receiver = self.receiver
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                if receiver is not None:
                    receiver.stats.on_sender_report(packet, now)
                self._report_blocks(packet.reports, now)
            elif isinstance(packet, rtcp.ReceiverReport):
                self._report_blocks(packet.reports, now)

    def _report_blocks(self, blocks: list[rtcp.ReportBlock], now: float) -> None:
        for block in blocks:
            if block.ssrc != self.audio.ssrc:
                continue
            rtt = round_trip_time(block, now)
            if rtt is not None:
                self.round_trip_time = rtt
            self.remote_jitter = block.jitter / OPUS_CLOCK_RATE
            self.remote_fraction_lost = block.fraction_lost / 256

    # -- media out ------------------------------------------------------------

    def send_audio(self, pcm: bytes, now: float) -> None:
        """Queue agent PCM16 at ``sample_rate``; a frame whose slot has come goes out at once."""
        outbound = self._outbound
        sender = self.sender
        if outbound is None or sender is None or self.state is not SessionState.CONNECTED:
            return
        if not isinstance(outbound, OutboundAudio):
            self.drops["audio_not_opus"] += 1
            return
        dropped = outbound.frames_dropped
        # A reply's silent lead-in is not sent as a delay; audio that follows
        # its own last packet closely (an echo after a stall) is not a reply.
        last = sender.last_sent_at
        outbound.add(pcm, trim=not sender.talking and (last is None or now - last >= REPLY_GAP))
        if outbound.frames_dropped != dropped:
            self.drops["audio_queue_full"] += outbound.frames_dropped - dropped
        self._send_rtp(sender, now)

    def send_opus(self, payload: bytes, now: float) -> None:
        """Queue one 20 ms Opus packet from a passthrough agent; it goes out, paced, unchanged."""
        outbound = self._outbound
        sender = self.sender
        if outbound is None or sender is None or self.state is not SessionState.CONNECTED:
            return
        if not isinstance(outbound, OutboundOpus):
            self.drops["opus_not_passthrough"] += 1
            return
        dropped = outbound.frames_dropped
        if not outbound.add(payload):
            self.drops["opus_malformed"] += 1
            return
        if outbound.frames_dropped != dropped:
            self.drops["audio_queue_full"] += 1
        self._send_rtp(sender, now)

    def tick(self, now: float) -> bool:
        """The shared tick: send the frames whose slots have come; ``True`` while :meth:`wants_tick`."""
        sender = self.sender
        if sender is None:
            return False
        self._send_rtp(sender, now)
        return sender.wants_tick()

    def _send_rtp(self, sender: RtpSender, now: float) -> None:
        packets = sender.poll(now)
        if sender.events:
            self._events.extend(sender.take_events())
        if not packets:
            return
        srtp = self._srtp
        ice = self.ice
        # media_destination()'s first answer (the selected path) without the call: once per packet.
        destination = ice.selected
        if destination is None:
            destination = ice.media_destination()
        if srtp is None or destination is None:
            self.drops["rtp_no_destination"] += len(packets)
            return
        out = self._datagrams
        for packet in packets:  # protected by the sender (write_rtp)
            out.append((packet, destination))
        if self._awaiting_first_out:
            self._awaiting_first_out = False
            self._milestone("first_rtp_out", now)

    def stop_audio(self, now: float, reason: StopReason = "stopped") -> int:
        """Cut the agent's audio now; the milliseconds of queued audio dropped.

        ``reason`` is ``"barge_in"`` when the caller spoke over it, else
        ``"stopped"`` (a cancel, a clear); :class:`PlayoutStopped` carries it.
        What the caller hears ends with a short fade sent at once, then silence
        (:meth:`RtpSender.stop`).
        """
        sender = self.sender
        if sender is None:
            return 0
        dropped = sender.stop(now, reason)
        self._send_rtp(sender, now)
        return dropped

    def set_speech_detection(self, settings: DetectionSettings, now: float) -> None:
        """Change the call's speech detector (a ``session.update``'s turn detection).

        ``ValueError`` for a value the detector refuses, or a detector that
        cannot run here; nothing changes then. A shorter silence may end the
        open turn: :meth:`deadline` says when.
        """
        inbound = self._inbound
        try:
            if isinstance(inbound, InboundAudio):
                inbound.set_detection(settings, now)
            elif inbound is None:
                make_speech_detector(settings, self.sample_rate)  # checks every knob
            # A passthrough session detects no speech (its backend does): nothing to retune.
        except DetectorUnavailable as e:
            raise ValueError(str(e)) from None
        self.speech_detection = settings

    def update_speech(self, threshold_db: float, silence_ms: float, threshold: float | None = None) -> None:
        """Retune the call's speech detector for a client's ``turn_detection`` (the Realtime layer).

        The energy detector takes ``threshold_db`` and ``silence_ms``; Silero
        takes ``threshold`` (a voice probability, when given) and ``silence_ms``
        as its silence after a neutral end (the silence after a final fall is
        never longer, after a hesitation never shorter). A value a detector
        refuses leaves it as it was.
        """
        speech = self.speech
        changes: dict[str, Any] = {
            "threshold_db": threshold_db,
            "silence_ms": silence_ms,
            "neutral_silence_ms": silence_ms,
            "final_silence_ms": min(speech.final_silence_ms, silence_ms),
            "hesitation_silence_ms": max(speech.hesitation_silence_ms, silence_ms),
        }
        if threshold is not None:
            changes["threshold"] = min(0.95, max(0.2, threshold))
        try:
            self.set_speech_detection(dataclasses.replace(self.speech_detection, **changes), self._now)
        except ValueError as e:
            self.log.warn("session {id}: turn detection not applied: {why}", id=self.session_id, why=e)

    def queued_audio_ms(self) -> int:
        """Agent audio waiting to be sent, in milliseconds."""
        return self._outbound.queued_ms() if self._outbound is not None else 0

    def agent_playing(self, now: float) -> bool:
        """Whether the caller is hearing the agent: audio queued, or sent within the last 100 ms."""
        sender = self.sender
        if sender is None:
            return False
        if sender.talking:
            return True
        sent = sender.last_sent_at
        return sent is not None and now - sent < PLAYING_GRACE

    # -- events channel -------------------------------------------------------

    def _events_open(self) -> None:
        self._milestone("datachannel_open", self._now)
        self._events.append(EventsChannelOpened(self._now))

    def _event_received(self, event: dict[str, Any]) -> None:
        self._events.append(ClientEvent(event))

    def _bad_event(self, why: str) -> None:
        self.drops["event_malformed"] += 1
        self._events.append(ClientEventRejected(why))

    def send_event(self, event: dict[str, Any], now: float) -> None:
        """Send a JSON event on ``oai-events`` (held until the client opens it)."""
        self._transport_stale = True
        events = self.events_channel
        if events is None:
            self.drops["event_no_channel"] += 1
            return
        unencodable = events.events_unencodable
        events.send_event(event)
        if events.events_unencodable != unencodable:
            self.drops["event_unencodable"] += 1
            return
        self._flush_sctp()

    def _sctp_deadline(self) -> float | None:
        events = self.events_channel
        return events.deadline() if events is not None and self._srtp is not None else None

    def _flush_sctp(self) -> None:
        events = self.events_channel
        destination = self.ice.media_destination()
        if events is None or destination is None or self.state is not SessionState.CONNECTED:
            return
        for packet in events.take_outgoing():
            for datagram in self.dtls.send_application_data(packet):
                self._datagrams.append((datagram, destination))

    # -- time -------------------------------------------------------------------

    def handle_timeout(self, now: float) -> None:
        """Run every timer due at ``now``: DTLS and SCTP retransmission, the jitter buffer,
        consent checks and expiry, the setup timeout, RTCP."""
        if self.state is SessionState.CLOSED:
            return
        self._now = now
        self._transport_stale = True
        deadline = self.dtls.deadline()
        if deadline is not None and deadline <= now:
            destination = self._dtls_destination()
            for datagram in self.dtls.handle_timeout(now):
                if destination is not None:
                    self._datagrams.append((datagram, destination))
            self._after_dtls(now)
            if self.state is SessionState.CLOSED:
                return
        events = self.events_channel
        sctp_deadline = self._sctp_deadline()
        if events is not None and sctp_deadline is not None and sctp_deadline <= now:
            events.handle_timeout(now)
            self._flush_sctp()
        if self.receiver is not None:
            self.receiver.handle_timeout(now)
        self._datagrams.extend(self.ice.handle_timeout(now))
        if self._held_probes:
            self._send_held_probes(now)
        if self.state is not SessionState.CONNECTED and now >= self.setup_deadline:
            self.close(EndReason.SETUP_TIMEOUT, now)
            return
        expires = self.ice.consent_expires_at()
        if expires is not None and now >= expires:
            self.close(
                EndReason.CONSENT_REVOKED if self.ice.consent_revoked else EndReason.CONSENT_EXPIRED, now
            )
            return
        if self._next_rtcp is not None and now >= self._next_rtcp:
            self._send_rtcp(now)
            self._next_rtcp = now + RTCP_INTERVAL * self._rng.uniform(0.5, 1.5)

    def handle_detection(self, now: float) -> None:
        """The speech detector's batched results are in (``on_detection`` said so): take its events."""
        inbound = self._inbound
        if inbound is not None and self.state is not SessionState.CLOSED:
            self._now = now
            inbound.drain(now)

    def _send_rtcp(self, now: float) -> None:
        srtp = self._srtp
        destination = self.ice.media_destination()
        if srtp is None or destination is None:
            return
        blocks = []
        receiver = self.receiver
        if receiver is not None and receiver.remote_ssrc is not None:
            blocks.append(receiver.stats.report_block(receiver.remote_ssrc, now))
        ssrc = self.audio.ssrc
        report: rtcp.RtcpPacket
        rtp_now = self.sender.rtp_time(now) if self.sender is not None else None
        if self.send_stats.packet_count and rtp_now is not None:
            # RFC 3550 §6.4.1: the RTP time of this same instant, not of the
            # last packet (the agent may have been quiet since).
            report = self.send_stats.sender_report(ssrc, now, rtp_now, blocks)
        else:
            report = rtcp.ReceiverReport(ssrc, blocks)
        sdes = rtcp.SourceDescription([(ssrc, [(rtcp.SDES_CNAME, self.audio.cname.encode("ascii"))])])
        self._datagrams.append((srtp.protect_rtcp(rtcp.build_rtcp([report, sdes])), destination))

    # -- ICE restart ------------------------------------------------------------

    def restart_ice(self, local_ufrag: str, local_pwd: str, remote_ufrag: str, remote_pwd: str) -> None:
        """New ICE credentials on both sides; DTLS, SRTP and the media carry on.

        The driver routes checks under ``local_ufrag`` here from now on; an
        :class:`UfragRetired` event says when an old ufrag may be forgotten.
        """
        if self.state is SessionState.CLOSED:
            return
        self._transport_stale = True
        for ufrag in self.ice.restart(local_ufrag, local_pwd, remote_ufrag, remote_pwd):
            self._events.append(UfragRetired(ufrag))

    # -- end ----------------------------------------------------------------------

    def close(self, reason: EndReason, now: float) -> None:
        """End the session and free its media state; a :class:`Closed` event says so."""
        if self.state is SessionState.CLOSED:
            return
        was_connected = self.state is SessionState.CONNECTED
        destination = self.ice.media_destination() or self._dtls_destination()
        self.state = SessionState.CLOSED
        self.end_reason = reason
        # Without consent we send nothing more, not even a close_notify.
        polite = reason not in (EndReason.DTLS_CLOSED, EndReason.CONSENT_EXPIRED, EndReason.CONSENT_REVOKED)
        if was_connected and polite and destination is not None:
            for datagram in self.dtls.close():
                self._datagrams.append((datagram, destination))
        self._srtp = None
        self.receiver = None
        self.sender = None
        if self._inbound is not None:
            self._inbound.close()
        self._inbound = None
        self._outbound = None
        self.events_channel = None
        self._held_dtls.clear()
        self._held_dtls_bytes = 0
        self._held_probes.clear()
        self.log.info(
            "session {id} ended: {why} after {secs:.1f} s",
            id=self.log_id,
            why=reason.value,
            secs=now - self.created_at,
        )
        self._events.append(Closed(reason))

    # -- views --------------------------------------------------------------------

    def waterfall_ms(self) -> dict[str, float]:
        """The setup milestones reached, in ms after the offer arrived."""
        return {name: round(seconds * 1000, 1) for name, seconds in self.timings.items()}

    def stats(self, now: float) -> dict[str, Any]:
        """Live numbers for operators, tests and the demo page."""
        receiver = self.receiver
        heard = None
        destination = self.ice.media_destination()
        if destination is not None:
            last = self.ice.last_heard(destination)
            heard = None if last is None else round((now - last) * 1000, 1)
        consent = self.ice.consent_expires_at()
        return {
            "state": self.state.value,
            "timings_ms": self.waterfall_ms(),
            "packets_received": receiver.stats.packets_received if receiver else 0,
            "packets_lost": receiver.stats.cumulative_lost if receiver else 0,
            "jitter_ms": round(receiver.stats.jitter_seconds * 1000, 2) if receiver else 0.0,
            "packets_sent": self.send_stats.packet_count,
            "rtt_ms": None if self.round_trip_time is None else round(self.round_trip_time * 1000, 2),
            "queued_audio_ms": self.queued_audio_ms(),
            "frames_concealed": self._inbound.frames_concealed if self._inbound else 0,
            "frames_recovered_fec": getattr(self._inbound, "frames_recovered", 0),
            "events_channel_open": bool(self.events_channel and self.events_channel.is_open),
            "consent": {
                "checks_sent": self.ice.consent_checks_sent,
                "checks_answered": self.ice.consent_checks_answered,
                "expires_in_ms": None if consent is None else round((consent - now) * 1000, 1),
                "last_heard_ms": heard,
            },
            "path_changes": self.path_changes,
        }

