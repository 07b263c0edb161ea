# -*- test-case-name: tests.test_host -*-
"""The transceiver: every session of a process, routed over one UDP socket, driven on one clock."""

from __future__ import annotations

import collections
import dataclasses
import functools
import ipaddress
import secrets
from typing import Any, Callable, Iterator, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from voiceedge.agents.interfaces import AudioFrame, IAgentCounters, IAgentFactory, IPassthroughAgentFactory, OpusFrame
from voiceedge.media.silero_batch import SileroBatcher
from voiceedge.metrics import Histogram, Sample
from voiceedge.signaling.answer import (
    AnswerParameters,
    OfferNotAcceptable,
    OfferSummary,
    build_answer,
    build_restart_fragment,
    summarize_offer,
)
from voiceedge.fleet.interfaces import IFleetTransceiver
from voiceedge.signaling.interfaces import (
    SDP_TYPE,
    SDPFRAG_TYPE,
    OpenedSession,
    PatchedSession,
    SessionRefused,
)
from voiceedge.transceiver.admission import Admission
from voiceedge.transceiver.conversation import Conversation
from voiceedge.transceiver.credentials import loggable_id, new_credentials, new_session_id, random_ufrag
from voiceedge.media.speech import SpeechStarted, SpeechStopped
from voiceedge.transceiver.dtls import DtlsCertificate, DtlsRole, DtlsTransport
from voiceedge.transceiver.ice import IceLiteAgent
from voiceedge.transceiver.rtp_sender import PlayoutStarted, PlayoutStopped
from voiceedge.transceiver.session import AudioStream, Session
from voiceedge.transceiver.session_events import (
    Closed,
    EndReason,
    PathInvalid,
    PathValid,
    SessionEvent,
    SetupMilestone,
    UfragRetired,
)
from voiceedge.transceiver.settings import SpeechSettings, TransceiverSettings
from voiceedge.transceiver.srtp import log_srtp_io_backend, srtp_io_backend
from voiceedge.wire import encap, sdp, stun
from voiceedge.wire.errors import WireError

Address = tuple[str, int]

#: Retry-After of a 503 for an overloaded transceiver: about the meter's half-life, twice.
OVERLOAD_RETRY_AFTER = 2
TICK = 0.020  # one Opus frame: the pacing grid every session's sender shares
SWEEP = 0.5  # early DTLS and relay routes
# DTLS records that arrive from a source before its first valid ICE check
# (reordering can do that) are held briefly, in a small pool bounded in
# sources, datagrams and bytes (any datagram size a client may send is held;
# the oldest sources go first when the bytes run out).
EARLY_DTLS_SOURCES = 256
EARLY_DTLS_PER_SOURCE = 4
EARLY_DTLS_TTL = 5.0
EARLY_DTLS_POOL_BYTES = 1 << 20
# A session's timer fires at most this much before its deadline is re-read:
# deadlines that move later (a speech turn going on) do not re-arm it.
_TIMER_SLACK = 1e-4
#: How long a Silero window waits for other calls' before one inference runs them all: 5 ms.
#: Measured with 20 Pion calls on one worker (load 1-1.6): CPU per call-second 28-30 ms
#: against 33-35 unbatched and 33 at 0 (the next loop turn: about 2 windows per inference,
#: against 5-6 at 5 ms). The caller's speech events come out at most this much later; their
#: times on the audio's timeline do not change.
SILERO_BATCH_DELAY = 0.005
# A tick at a slot's start counts as that slot whatever the float rounding (as RtpSender.slot_at).
_SLOT_EPSILON = 1e-6
# At most this many datagrams wait in a read round's or a tick's hold: then
# they leave in one call and holding goes on. A transcoding round spends a
# few hundred microseconds per datagram (decode, detector, encode): an
# unbounded hold delayed the first echo of a 20-datagram round by several ms,
# and raised 100 calls' arrival gap p99 from 28 to 36 ms. Eight still makes
# one system call of eight sends.
HELD_MAX = 8
# After a session ends on our side (hang-up, the agent, shutdown), checks with its
# credentials are refused (RFC 7675 §5.2: 403 revokes consent) for as long as a
# client keeps checking before it gives up by itself, so it learns at once.
ENDED_CHECK_TTL = 30.0
ENDED_UFRAGS = 4096
_REFUSE_AFTER = (EndReason.HANGUP, EndReason.AGENT, EndReason.SHUTDOWN)
# Setup milestones, seconds after the offer arrived: histogram buckets.
SETUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# What the caller hears, in seconds: barge-in (the caller's speech onset to the
# last agent packet) and turn latency (the end of the caller's speech, as the
# detector placed it, to the first packet of the reply).
BARGE_IN_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
TURN_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
# Turns and talkspurts kept per call for GET <Location>.
HEARD_LOG = 16
SETUP_MILESTONES = (
    "answer",
    "first_check",
    "nomination",
    "dtls",
    "first_rtp_in",
    "first_rtp_out",
    "datachannel_open",
)


class Call:
    """What the transceiver keeps per session: the session, its conversation, its timer, its ufrags."""

    __slots__ = (
        "session",
        "conversation",
        "timer",
        "timer_at",
        "busy",
        "ufrags",
        "answered",
        "etag",
        "speech_onset",
        "speech_end",
        "speech_log",
        "playout_log",
    )

    def __init__(self, session: Session, summary: OfferSummary, params: AnswerParameters) -> None:
        self.session = session
        # The offer's summary and our last answer's parameters: the ICE
        # credentials both sides use now, for PATCH.
        self.answered = (summary, params)
        self.etag = _new_etag()
        self.conversation: Conversation | None = None
        self.timer: IDelayedCall | None = None
        self.timer_at = 0.0  # when the timer fires (its getTime(), without the call per packet)
        self.busy = False  # its outputs are being handled: a re-entrant flush waits for that loop
        self.ufrags: set[bytes] = set()
        # The open turn's first voiced frame; the last turn's end while no reply has started.
        self.speech_onset: float | None = None
        self.speech_end: float | None = None
        # The last turns and talkspurts on the clock, for GET <Location>:
        # [started, stopped] and [started, last packet, reason].
        self.speech_log: collections.deque[list[float | None]] = collections.deque(maxlen=HEARD_LOG)
        self.playout_log: collections.deque[list[float | str | None]] = collections.deque(maxlen=HEARD_LOG)


@implementer(IFleetTransceiver)
class Transceiver:
    """Sessions by id, ufrag and address; the shared tick; each session's timer.

    Datagrams come in through :meth:`datagram_received` and go out through
    ``write``, which the socket protocol sets; nothing here touches a socket.
    A datagram from a source that has passed an ICE check goes to that
    session; a STUN request from anywhere else is routed by the ufrag in its
    USERNAME; everything else is dropped and counted.

    This is the driver of the sans-I/O :class:`Session`: after every input it
    sends the session's datagrams, routes by its transport events, hands its
    conversation events to the session's :class:`Conversation`, and arms one
    timer at the session's deadline. Sessions with agent audio playing are
    also polled on one shared 20 ms tick.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        certificate: DtlsCertificate,
        agent_factory: IAgentFactory,
        settings: TransceiverSettings = TransceiverSettings(),
        *,
        speech: SpeechSettings = SpeechSettings(),
        make_ufrag: Callable[[], str] = random_ufrag,
        offered_agents: Mapping[str, IAgentFactory] = {},
        admission: Admission | None = None,
    ) -> None:
        self.clock = clock
        # Refuses new sessions while the process is overloaded (None: only max_sessions).
        self.admission = admission
        self.certificate = certificate
        self.settings = settings
        self.advertised = settings.advertised
        self.agent_factory = agent_factory
        # Agents a client secret may choose for its call, by name (session.agent).
        self.offered_agents = dict(offered_agents)
        self.max_sessions = settings.max_sessions
        self.setup_timeout = settings.setup_timeout
        self.consent_timeout = settings.consent_timeout
        self.make_ufrag = make_ufrag
        self.speech = speech
        # False while draining: new offers get 503, live sessions go on.
        self.accepting = True
        self.write: Callable[[bytes, Address], None] = _not_listening
        # Many datagrams in one system call, which the socket protocol sets
        # where the port can (MediaPort.write_list): (sent, bytes, failed).
        self.write_many: Callable[[list[tuple[bytes, Address]]], tuple[int, int, int]] | None = None
        # What transmit() holds during a read round or a tick, for write_many.
        self._outbox: list[tuple[bytes, Address]] | None = None
        # Read rounds of the media socket, by what began them: "readable" (the
        # reactor said so) or "poll" (MediaPort reading on a timer under load).
        self.read_rounds: collections.Counter[str] = collections.Counter()
        self.relay_networks = settings.relay_networks
        self._trusted_relays: dict[str, bool] = {}
        # client address -> (relay that last delivered its packets, its
        # ingress, the header for replies: built once per route change)
        self._relay_of: dict[Address, tuple[Address, Address, bytes]] = {}

        self._by_id: dict[str, Call] = {}
        self._by_ufrag: dict[bytes, Call] = {}
        self._by_address: dict[Address, Call] = {}
        # ufrag of an ended session -> (its ICE agent, until when its checks are refused)
        self._ended_ufrags: collections.OrderedDict[bytes, tuple[IceLiteAgent, float]] = (
            collections.OrderedDict()
        )
        # Sessions with agent audio playing -> the first slot whose tick must
        # poll them (Session.tick_slot): a talkspurt whose frames went out as
        # they came is polled only when it would end, not on every tick.
        self._sending: dict[Call, int] = {}
        self._end_listeners: list[Callable[[str], None]] = []
        self._early_dtls: collections.OrderedDict[Address, tuple[float, list[bytes]]] = (
            collections.OrderedDict()
        )
        self._early_dtls_bytes = 0
        self.grid_origin = clock.seconds()
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock

        self.drops: collections.Counter[str] = collections.Counter()
        self.probes: collections.Counter[str] = collections.Counter()
        self.repairs: collections.Counter[str] = collections.Counter()
        self.consent: collections.Counter[str] = collections.Counter()
        self.ended: collections.Counter[str] = collections.Counter()
        self.sessions_opened = 0
        self.ice_restarts = 0
        self.refused: collections.Counter[int] = collections.Counter()
        # New sessions refused with 503, by why: draining, max_sessions, cpu, loop_lag.
        self.refused_by: collections.Counter[str] = collections.Counter()
        # The Realtime event layer's events over all sessions (server.<type>, client.<type>, error.<code>).
        self.realtime_events: collections.Counter[str] = collections.Counter()
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.setup = {name: Histogram(SETUP_BUCKETS) for name in SETUP_MILESTONES}
        self.barge_in = Histogram(BARGE_IN_BUCKETS)
        self.turn_latency = Histogram(TURN_BUCKETS)
        # Every call's Silero windows ready within SILERO_BATCH_DELAY in one inference.
        self.silero_batcher = SileroBatcher(clock, delay=SILERO_BATCH_DELAY)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the shared tick (its first slot begins now) and the sweep."""
        self.grid_origin = self.clock.seconds()
        log_srtp_io_backend(self.log)
        self._ticker.start(TICK, now=False)
        self._sweeper.start(SWEEP, now=False)
        if self.admission is not None:
            self.admission.meter.start()

    def stop(self) -> None:
        """End every session and stop the timers."""
        for call in list(self._by_id.values()):
            call.session.close(EndReason.SHUTDOWN, self.clock.seconds())
            self._service(call)
        for loop in (self._ticker, self._sweeper):
            if loop.running:
                loop.stop()
        if self.admission is not None:
            self.admission.meter.stop()

    # -- ISessionHost -------------------------------------------------------

    def open_session(
        self,
        offer_sdp: str,
        settings: Mapping[str, Any] | None = None,
        client: str | None = None,
        *,
        candidate: Address | None = None,
        session_id: str | None = None,
    ) -> OpenedSession:
        """Parse the offer, allocate a session, and answer it.

        ``settings`` (a client secret's session configuration) is kept on the
        session as ``Session.settings`` for the layers above media to apply.
        A front door (through the internal API) may name the ``candidate``
        (its region's relay, instead of ``advertised``) and the
        ``session_id`` (so it can end a session whose answer it never got).
        """
        if not self.accepting:
            self.refused[503] += 1
            self.refused_by["draining"] += 1
            raise SessionRefused(503, "this transceiver is draining")
        if session_id is not None and session_id in self._by_id:
            self.refused[409] += 1
            raise SessionRefused(409, "a session with this id is open")
        received_at = self.clock.seconds()
        if len(self._by_id) >= self.max_sessions:
            self.refused[503] += 1
            self.refused_by["max_sessions"] += 1
            raise SessionRefused(503, "this transceiver is at its session limit")
        if self.admission is not None:
            overload = self.admission.refusal(len(self._by_id))
            if overload is not None:
                self.refused[503] += 1
                self.refused_by[overload] += 1
                raise SessionRefused(
                    503, self.admission.describe(overload, len(self._by_id)), OVERLOAD_RETRY_AFTER
                )
        try:
            offer = sdp.parse_sdp(offer_sdp)
            summary = summarize_offer(offer)
        except WireError as e:
            self.refused[400] += 1
            raise SessionRefused(400, f"the offer does not parse: {e}") from e
        except OfferNotAcceptable as e:
            self.refused[e.status] += 1
            raise SessionRefused(e.status, e.reason) from e

        agent_factory = self._agent_for(settings)
        credentials = new_credentials(self.make_ufrag)
        while session_id is None or session_id in self._by_id:
            session_id = new_session_id()  # 128 random bits
        audio = AudioStream.new(
            summary.opus.payload_type, summary.audio_mid, summary.mid_extension_id, summary.remote_ssrcs
        )
        params = AnswerParameters(
            ice_ufrag=credentials.ufrag,
            ice_pwd=credentials.pwd,
            fingerprint=sdp.Fingerprint("sha-256", self.certificate.fingerprint),
            candidate=candidate or self.advertised,
            session_id=secrets.randbits(62),
            accept_datachannel=summary.datachannel_mid is not None,
            audio_ssrc=audio.ssrc,
            cname=audio.cname,
        )
        answer = build_answer(offer, summary, params)
        ice = IceLiteAgent(
            credentials.ufrag,
            credentials.pwd,
            summary.remote_ufrag,
            self.consent_timeout,
            remote_pwd=summary.remote_pwd,
            consent_counts=self.consent,
        )
        dtls = DtlsTransport(
            self.certificate,
            DtlsRole.SERVER,
            [(f.algorithm, f.value) for f in summary.remote_fingerprints],
        )
        session = Session(
            session_id,
            ice,
            dtls,
            audio,
            received_at,
            sample_rate=agent_factory.sample_rate,
            grid_origin=self.grid_origin,
            setup_timeout=self.setup_timeout,
            speech=self.speech,
            opus_complexity=self.settings.opus_complexity,
            opus_application=self.settings.opus_application,
            passthrough=IPassthroughAgentFactory.providedBy(self.agent_factory),
            stop_tail=self.settings.stop_tail,
            data_channel=summary.datachannel_mid is not None,
            drops=self.drops,
            probes=self.probes,
            repairs=self.repairs,
            silero_batcher=self.silero_batcher,
            on_detection=functools.partial(self._detected, session_id),
        )
        session.settings = dict(settings) if settings else {}
        call = Call(session, summary, params)
        call.conversation = Conversation(
            session,
            agent_factory,
            self.clock,
            self._flusher(call),
            barge_in=self.speech.barge_in,
            realtime_counters=self.realtime_events,
        )
        self._by_id[session_id] = call
        self._add_ufrag(call, credentials.ufrag)
        self.sessions_opened += 1
        if self.admission is not None:
            self.admission.admitted()
        session.mark_answered(self.clock.seconds())
        self._service(call)
        self.log.info("session {id} opened", id=loggable_id(session_id))
        return OpenedSession(session_id, answer, call.etag)

    def _agent_for(self, settings: Mapping[str, Any] | None) -> IAgentFactory:
        """The agent factory a call's settings choose (``agent``), else the default one."""
        wanted = settings.get("agent") if settings else None
        if wanted is None:
            return self.agent_factory
        factory = self.offered_agents.get(wanted) if isinstance(wanted, str) else None
        if factory is None:
            self.refused[400] += 1
            offered = ", ".join(sorted(self.offered_agents)) or "none"
            raise SessionRefused(400, f"session.agent {str(wanted)[:40]!r} is not offered here (offered: {offered})")
        return factory

    def close_session(self, session_id: str, reason: str) -> bool:
        """End a session on request (a signaling DELETE)."""
        call = self._by_id.get(session_id)
        if call is None:
            return False
        call.session.close(EndReason.HANGUP, self.clock.seconds())
        self._service(call)
        return True

    def session_count(self) -> int:
        """How many sessions are open."""
        return len(self._by_id)

    def load_report(self) -> dict[str, object]:
        """The process's load for front doors (``cpu``, ``loop_lag_ms``, ``admitting``); empty without admission."""
        if self.admission is None:
            return {}
        return self.admission.report(len(self._by_id))

    def session_stats(self, session_id: str) -> dict[str, object] | None:
        """Live numbers of one session, or ``None`` if it is not open."""
        call = self._by_id.get(session_id)
        if call is None:
            return None
        stats = call.session.stats(self.clock.seconds())
        if call.conversation is not None:
            stats.update(call.conversation.stats())
        # On the transceiver's clock (seconds since the epoch in a real process):
        # the caller's last turns, and the agent's last talkspurts with how they ended.
        stats["speech"] = [list(turn) for turn in call.speech_log]
        stats["playout"] = [list(spurt) for spurt in call.playout_log]
        return stats

    def add_end_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(session_id)`` when any session ends."""
        self._end_listeners.append(listener)

    def session(self, session_id: str) -> Session | None:
        """The session with this id, if it is open."""
        call = self._by_id.get(session_id)
        return None if call is None else call.session

    def conversation(self, session_id: str) -> Conversation | None:
        """The conversation side of the session with this id, if it is open."""
        call = self._by_id.get(session_id)
        return None if call is None else call.conversation

    def sessions(self) -> Iterator[Session]:
        """Every open session."""
        return iter([call.session for call in self._by_id.values()])

    # -- datagrams ----------------------------------------------------------

    def datagram_received(self, data: bytes, source: Address) -> None:
        """Route one datagram from ``source`` to its session, or drop it.

        A datagram whose first byte marks the relay encapsulation is taken
        only from a configured relay network; it then counts as coming from
        the client address in its header, and replies to that client go back
        through the relay that delivered it.
        """
        self.packets_in += 1
        self.bytes_in += len(data)
        if data and data[0] >= encap.FIRST_BYTE_MIN:
            self._relayed_datagram_received(data, source)
            return
        # A routed source first (every media packet): _call_for for the rest.
        call = self._by_address.get(source) or self._call_for(data, source)
        if call is not None:
            call.session.receive(data, source, self.clock.seconds())
            self._service(call)

    def _relayed_datagram_received(self, data: bytes, relay: Address) -> None:
        trusted = self._trusted_relays.get(relay[0])
        if trusted is None:
            trusted = self._is_relay_network(relay[0])
        if not trusted:
            self.drops["encap_untrusted_source"] += 1
            return
        try:
            envelope, payload = encap.decode(data)
        except WireError:
            self.drops["encap_malformed"] += 1
            return
        client = envelope.client
        call = self._call_for(payload, client, (relay, envelope))
        if call is None:
            return
        known = self._relay_of.get(client)
        if known is None or known[0] != relay or known[1] != envelope.ingress:
            self._relay_of[client] = (relay, envelope.ingress, encap.encode(envelope, b""))
        call.session.receive(payload, client, self.clock.seconds())
        self._service(call)

    def _is_relay_network(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        trusted = any(address in network for network in self.relay_networks)
        if len(self._trusted_relays) >= 4096:
            # Spoofed hosts could fill it with "no"; start again rather than
            # leave real relays uncached.
            self._trusted_relays.clear()
        self._trusted_relays[host] = trusted
        return trusted

    def _call_for(
        self, data: bytes, source: Address, relayed: tuple[Address, encap.Envelope] | None = None
    ) -> Call | None:
        """The call a datagram belongs to; ``None`` (counted, held, or refused) if none.

        ``relayed``: the relay that delivered it and its envelope, for a reply.
        """
        call = self._by_address.get(source)
        if call is not None:
            return call
        if not data:
            self.drops["empty"] += 1
            return None
        first = data[0]
        if first < 4:
            try:
                username = stun.peek_username(data)
            except WireError:
                self.drops["stun_malformed"] += 1
                return None
            if username is None:
                self.drops["stun_no_username"] += 1
                return None
            ufrag = username.partition(b":")[0]
            call = self._by_ufrag.get(ufrag)
            if call is None and not self._refuse_ended(ufrag, data, source, relayed):
                self.drops["unknown_ufrag"] += 1
            return call
        if 20 <= first <= 63:
            self._hold_early_dtls(data, source)
        else:
            self.drops["unknown_source"] += 1
        return None

    def _refuse_ended(
        self, ufrag: bytes, data: bytes, source: Address, relayed: tuple[Address, encap.Envelope] | None
    ) -> bool:
        """Answer a check for a session we ended with a signed 403; whether it was one."""
        entry = self._ended_ufrags.get(ufrag)
        if entry is None:
            return False
        refusal = entry[0].refusal_after_end(data)
        if refusal is None:
            return False
        self.drops["check_after_end"] += 1
        if relayed is None:
            self.transmit(refusal, source)
            return True
        relay, envelope = relayed
        try:
            self.write(encap.encode(envelope, b"") + refusal, relay)
        except OSError:
            self.drops["send_failed"] += 1
        return True

    def _hold_early_dtls(self, data: bytes, source: Address) -> None:
        entry = self._early_dtls.get(source)
        if entry is not None and len(entry[1]) >= EARLY_DTLS_PER_SOURCE:
            self.drops["early_dtls_overflow"] += 1
            return
        while self._early_dtls and (
            self._early_dtls_bytes + len(data) > EARLY_DTLS_POOL_BYTES
            or (entry is None and len(self._early_dtls) >= EARLY_DTLS_SOURCES)
        ):
            oldest, _ = next(iter(self._early_dtls.items()))
            self._release_early_dtls(oldest)
            self.drops["early_dtls_evicted"] += 1
            if oldest == source:
                entry = None
        if entry is None:
            entry = (self.clock.seconds(), [])
            self._early_dtls[source] = entry
        entry[1].append(data)
        self._early_dtls_bytes += len(data)

    def _release_early_dtls(self, source: Address) -> list[bytes]:
        """Take ``source``'s held datagrams out of the pool."""
        entry = self._early_dtls.pop(source, None)
        if entry is None:
            return []
        self._early_dtls_bytes -= sum(len(d) for d in entry[1])
        return entry[1]

    def transmit(self, data: bytes, destination: Address) -> None:
        """Send a session's datagram, through the client's relay if it has one.

        Inside a read round or a tick (:meth:`hold_datagrams`) it is held and
        leaves with the others when the round ends.
        """
        via = self._relay_of.get(destination)
        if via is not None:
            destination, _, header = via
            data = header + data
        outbox = self._outbox
        if outbox is not None:
            outbox.append((data, destination))
            if len(outbox) >= HELD_MAX:
                self._send_outbox(outbox)
            return
        self._write_one(data, destination)

    def _write_one(self, data: bytes, destination: Address) -> None:
        """Send one datagram now, counted."""
        try:
            self.write(data, destination)
        except OSError:
            # A full socket buffer or an unreachable route loses this one
            # datagram; it must not stop the tick or the session.
            self.drops["send_failed"] += 1
            return
        self.packets_out += 1
        self.bytes_out += len(data)

    def hold_datagrams(self) -> bool:
        """Hold what :meth:`transmit` sends until :meth:`send_held`; whether this call began holding.

        A read round or a tick makes many datagrams (at 100 calls, dozens per
        round): one ``sendmmsg`` for up to :data:`HELD_MAX` of them instead of
        a ``sendto`` each. A caller that did not begin holding must not send
        (a nested round).
        """
        if self._outbox is not None or self.write_many is None:
            return False
        self._outbox = []
        return True

    def send_held(self) -> None:
        """Send what was held since :meth:`hold_datagrams`, in order, and stop holding."""
        outbox = self._outbox
        self._outbox = None
        if outbox:
            self._send_outbox(outbox)

    def _send_outbox(self, outbox: list[tuple[bytes, Address]]) -> None:
        """Send the held datagrams in one call and empty the list (holding goes on)."""
        write_many = self.write_many
        if write_many is None:
            # Holding begins only with write_many; should it have gone since, one at a time.
            held = outbox[:]
            outbox.clear()
            for data, destination in held:
                self._write_one(data, destination)
            return
        sent, sent_bytes, failed = write_many(outbox)
        outbox.clear()
        self.packets_out += sent
        self.bytes_out += sent_bytes
        if failed:
            # As transmit: a full buffer or no route loses those datagrams only.
            self.drops["send_failed"] += failed

    def read_started(self, polled: bool) -> None:
        """The media socket begins a read round (``polled``: on MediaPort's timer, not readiness)."""
        self.read_rounds["poll" if polled else "readable"] += 1
        self.hold_datagrams()

    def read_ended(self) -> None:
        """The read round is over: what it made leaves now."""
        self.send_held()

    # -- driving a session ----------------------------------------------------

    def _service(self, call: Call) -> None:
        """Send what a session has to send, handle its events, arm its timer.

        Handling an event may feed the session again (held DTLS, an agent
        answering at once): a call made while this loop runs returns at once,
        and the loop picks up what it produced.
        """
        if call.busy:
            return
        call.busy = True
        session = call.session
        try:
            while True:
                datagrams = session.take_datagrams()
                for data, destination in datagrams:
                    self.transmit(data, destination)
                events = session.take_events()
                if not events:
                    # Sending feeds nothing back into the session: only handling
                    # an event can have produced more.
                    break
                for event in events:
                    self._handle(call, event)
        finally:
            call.busy = False
        slot = session.tick_slot()
        if slot is not None:
            self._sending[call] = slot
        elif self._sending:
            self._sending.pop(call, None)
        self._arm(call)

    def _flusher(self, call: Call) -> Callable[[], None]:
        """The conversation's flush: :meth:`_service`, skipped at once while it is running.

        An agent answering a frame flushes from inside :meth:`_service`, whose
        loop picks up what it produced: the check here saves a call per frame.
        """
        service = self._service

        def flush() -> None:
            if not call.busy:
                service(call)

        return flush

    def _handle(self, call: Call, event: SessionEvent) -> None:
        kind = type(event)
        if kind is OpusFrame:
            # The caller's audio, fifty a second: straight to the conversation.
            if call.conversation is not None:
                call.conversation.opus_frame(event)  # type: ignore[arg-type]
            return
        if kind is AudioFrame:
            if call.conversation is not None:
                call.conversation.handle(event)
            return
        if isinstance(event, PathValid):
            self._route(call, event.source)
        elif isinstance(event, PathInvalid):
            self._unroute(call, event.source)
        elif isinstance(event, SetupMilestone):
            histogram = self.setup.get(event.name)
            if histogram is not None:
                histogram.observe(event.seconds)
        elif isinstance(event, UfragRetired):
            key = event.ufrag.encode("ascii")
            call.ufrags.discard(key)
            if self._by_ufrag.get(key) is call:
                del self._by_ufrag[key]
        elif isinstance(event, Closed):
            self._forget(call, event.reason)
        else:
            self._hearing(call, event)
        if call.conversation is not None:
            call.conversation.handle(event)

    def _hearing(self, call: Call, event: SessionEvent) -> None:
        """Barge-in and turn latency, from the speech and playout events of a call.

        Latency is measured on the transceiver's clock: from when the caller's
        audio arrived (a speech event's ``arrival``), not from its place on the
        audio's RTP-timed timeline (``time``), which a backlog read late puts
        earlier than it reached us.
        """
        if isinstance(event, SpeechStarted):
            onset = event.time if event.arrival is None else event.arrival
            call.speech_onset = onset
            call.speech_end = None
            call.speech_log.append([onset, None])
        elif isinstance(event, SpeechStopped):
            end = event.time if event.arrival is None else event.arrival
            call.speech_onset = None
            call.speech_end = end
            if call.speech_log and call.speech_log[-1][1] is None:
                call.speech_log[-1][1] = end
        elif isinstance(event, PlayoutStarted):
            if call.speech_end is not None:
                self.turn_latency.observe(max(0.0, event.at - call.speech_end))
                call.speech_end = None
            call.playout_log.append([event.at, None, None])
        elif isinstance(event, PlayoutStopped):
            if event.reason == "barge_in" and call.speech_onset is not None:
                self.barge_in.observe(max(0.0, event.last_sent_at - call.speech_onset))
            if call.playout_log and call.playout_log[-1][1] is None:
                call.playout_log[-1][1:] = [event.last_sent_at, event.reason]

    def _route(self, call: Call, source: Address) -> None:
        """Route ``source`` to ``call`` from now on, and hand over early DTLS."""
        previous = self._by_address.get(source)
        if previous is not None and previous is not call:
            self.drops["address_taken_over"] += 1
        self._by_address[source] = call
        for data in self._release_early_dtls(source):
            call.session.receive(data, source, self.clock.seconds())

    def _unroute(self, call: Call, source: Address) -> None:
        """Stop routing ``source`` to ``call``."""
        if self._by_address.get(source) is call:
            del self._by_address[source]
            self._relay_of.pop(source, None)

    def _add_ufrag(self, call: Call, ufrag: str) -> None:
        key = ufrag.encode("ascii")
        call.ufrags.add(key)
        self._by_ufrag[key] = call

    def _forget(self, call: Call, reason: EndReason) -> None:
        """Forget every route to a session that has ended."""
        session = call.session
        self._by_id.pop(session.session_id, None)
        if reason in _REFUSE_AFTER:
            until = self.clock.seconds() + ENDED_CHECK_TTL
            for key in call.ufrags:
                self._ended_ufrags[key] = (session.ice, until)
                self._ended_ufrags.move_to_end(key)
            while len(self._ended_ufrags) > ENDED_UFRAGS:
                self._ended_ufrags.popitem(last=False)
        for key in call.ufrags:
            if self._by_ufrag.get(key) is call:
                del self._by_ufrag[key]
        call.ufrags.clear()
        for source in session.ice.valid_sources:
            self._unroute(call, source)
        self._sending.pop(call, None)
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        self.ended[reason.value] += 1
        for listener in list(self._end_listeners):
            try:
                listener(session.session_id)
            except Exception:
                self.log.failure("a session end listener failed")

    def _arm(self, call: Call) -> None:
        """One timer per session, at its deadline; one that would fire early is left alone."""
        deadline = call.session.deadline()
        timer = call.timer
        if timer is not None:
            # call.timer is None once it fires (_timeout) or is cancelled (here, _forget):
            # one still held is pending.
            if deadline is not None and call.timer_at <= deadline + _TIMER_SLACK:
                return
            if timer.active():
                timer.cancel()
            call.timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self.clock.seconds())
            timer = call.timer = self.clock.callLater(delay, self._timeout, call)
            call.timer_at = timer.getTime()

    def _detected(self, session_id: str) -> None:
        """The Silero batcher has run this session's windows: its speech events now, in the batch's
        one wake-up (no timer of the session's own)."""
        call = self._by_id.get(session_id)
        if call is not None:
            call.session.handle_detection(self.clock.seconds())
            self._service(call)

    def _timeout(self, call: Call) -> None:
        call.timer = None
        call.session.handle_timeout(self.clock.seconds())
        self._service(call)

    # -- ICE restart (PATCH) ------------------------------------------------------

    def patch_session(self, session_id: str, media_type: str, body: str, if_match: str | None) -> PatchedSession:
        """Trickled candidates (ignored: we are ICE-lite) or an ICE restart, as RFC 9725 §4.3 says.

        A fragment or a re-offer with new ICE credentials restarts ICE: new
        local ufrag (a new route token) and password, answered as a fragment
        or a whole SDP answer; DTLS, SRTP and the media carry on. ``If-Match``
        may be ``*`` or the current entity tag; another tag is 412.
        """
        call = self._by_id.get(session_id)
        if call is None:
            raise SessionRefused(404, "no such session")
        if if_match is not None and not _if_match(if_match, call.etag):
            raise SessionRefused(412, "If-Match names other ICE credentials than the session's")
        summary, params = call.answered
        try:
            offer: sdp.SessionDescription | None = None
            reoffer: OfferSummary | None = None
            if media_type == SDPFRAG_TYPE:
                fragment = sdp.parse_sdpfrag(body)
                credentials = _fragment_credentials(fragment)
            elif media_type == SDP_TYPE:
                offer = sdp.parse_sdp(body)
                reoffer = summarize_offer(offer)
                _check_reoffer(summary, reoffer)
                credentials = (reoffer.remote_ufrag, reoffer.remote_pwd)
            else:
                raise SessionRefused(415, f"PATCH takes {SDPFRAG_TYPE} or {SDP_TYPE}")
        except WireError as e:
            raise SessionRefused(400, f"the body does not parse: {e}") from e
        except OfferNotAcceptable as e:
            raise SessionRefused(e.status, e.reason) from e
        restart = credentials != (summary.remote_ufrag, summary.remote_pwd)
        if restart:
            local = new_credentials(self.make_ufrag)
            self._add_ufrag(call, local.ufrag)
            call.session.restart_ice(local.ufrag, local.pwd, *credentials)
            summary = dataclasses.replace(summary, remote_ufrag=credentials[0], remote_pwd=credentials[1])
            params = dataclasses.replace(
                params, ice_ufrag=local.ufrag, ice_pwd=local.pwd, session_version=params.session_version + 1
            )
            call.answered = (summary, params)
            call.etag = _new_etag()
            self.ice_restarts += 1
            self.log.info("session {id}: ICE restart", id=session_id)
            self._service(call)
        if offer is not None and reoffer is not None:
            return PatchedSession(200, build_answer(offer, reoffer, params), SDP_TYPE, call.etag)
        if restart:
            return PatchedSession(200, build_restart_fragment(summary, params), SDPFRAG_TYPE, call.etag)
        # Candidates under the current credentials: an ICE-lite agent checks
        # nobody, so there is nothing to do with them.
        return PatchedSession(204, "", SDPFRAG_TYPE, call.etag)

    # -- time ---------------------------------------------------------------

    def _tick(self) -> None:
        # One tick for every session with audio playing: a timer per session
        # would cost a heap operation per frame, and they would drift apart.
        if not self._sending:
            return
        holding = self.hold_datagrams()
        try:
            self._tick_sessions()
        finally:
            if holding:
                self.send_held()

    def _tick_sessions(self) -> None:
        now = self.clock.seconds()
        slot = int((now - self.grid_origin) / TICK + _SLOT_EPSILON)
        sending = self._sending
        # A copy: ticking runs agent code, which may add to the table.
        for call, due in list(sending.items()):
            if due > slot:
                continue
            session = call.session
            session.tick(now)
            following = session.tick_slot()
            if following is None:
                sending.pop(call, None)
            else:
                sending[call] = following
            # Many ticks of a talking session send nothing: then there is
            # nothing to service, and its deadline has not moved.
            if session.has_output():
                self._service(call)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        ended = self._ended_ufrags
        while ended and next(iter(ended.values()))[1] <= now:
            ended.popitem(last=False)
        # Relay routes learnt from checks that never passed: forget them.
        for client in [c for c in self._relay_of if c not in self._by_address]:
            del self._relay_of[client]
        while self._early_dtls:
            source, (held_at, _) = next(iter(self._early_dtls.items()))
            if now - held_at < EARLY_DTLS_TTL:
                break
            self._release_early_dtls(source)
            self.drops["early_dtls_expired"] += 1

    # -- metrics ------------------------------------------------------------

    def metrics(self) -> Iterator[Sample]:
        """Samples for :mod:`voiceedge.metrics`."""
        prefix = "voiceedge_transceiver_"
        yield ("gauge", prefix + "sessions", "Sessions open now.", {}, len(self._by_id))
        yield ("counter", prefix + "sessions_opened", "Sessions opened.", {}, self.sessions_opened)
        for reason, n in self.ended.items():
            yield ("counter", prefix + "sessions_ended", "Sessions ended, by reason.", {"reason": reason}, n)
        for status, n in self.refused.items():
            yield ("counter", prefix + "offers_refused", "Offers refused, by HTTP status.", {"status": str(status)}, n)
        for reason, n in self.refused_by.items():
            yield ("counter", prefix + "sessions_refused", "New sessions refused with 503, by reason.", {"reason": reason}, n)
        if self.admission is not None:
            yield from self.admission.metrics(len(self._by_id))
        for result, n in self.probes.items():
            yield (
                "counter",
                prefix + "path_probes",
                "Return checks to paths not yet shown to receive our packets, by result (sent, answered).",
                {"result": result},
                n,
            )
        for result, n in self.consent.items():
            yield (
                "counter",
                prefix + "consent_checks",
                "RFC 7675 consent checks we sent, by result (sent, retransmitted, answered, revoked).",
                {"result": result},
                n,
            )
        yield ("counter", prefix + "ice_restarts", "ICE restarts (PATCH).", {}, self.ice_restarts)
        yield (
            "gauge",
            prefix + "srtp_io",
            "How sessions protect and parse RTP: compiled (one call each way) or python.",
            {"backend": srtp_io_backend()},
            1,
        )
        for reason, n in self.drops.items():
            yield ("counter", prefix + "drops", "Datagrams dropped, by reason.", {"reason": reason}, n)
        for repair, n in self.repairs.items():
            yield (
                "counter",
                prefix + "frames_lost",
                "Caller audio frames lost on the way in, by how they were filled in (fec: the next packet's "
                "in-band FEC; plc: libopus concealment; fec_or_plc: a libopus before 1.5 cannot tell; "
                "backend: left to a passthrough agent).",
                {"repair": repair},
                n,
            )
        yield ("counter", prefix + "packets_in", "Datagrams received.", {}, self.packets_in)
        yield ("counter", prefix + "bytes_in", "Bytes received.", {}, self.bytes_in)
        yield ("counter", prefix + "packets_out", "Datagrams sent.", {}, self.packets_out)
        for trigger in ("readable", "poll"):
            yield (
                "counter",
                prefix + "read_rounds",
                "Read rounds of the media socket, by what began them (packets_in over these: datagrams per round).",
                {"trigger": trigger},
                self.read_rounds[trigger],
            )
        yield ("counter", prefix + "bytes_out", "Bytes sent.", {}, self.bytes_out)
        yield ("gauge", prefix + "sessions_sending", "Sessions with agent audio playing.", {}, len(self._sending))
        for milestone, histogram in self.setup.items():
            yield (
                "histogram",
                prefix + "setup_seconds",
                "Call setup: seconds from the offer to each milestone.",
                {"milestone": milestone},
                histogram,
            )
        yield (
            "histogram",
            prefix + "barge_in_seconds",
            "Barge-in: seconds from the caller's speech onset to the last agent packet (its fade).",
            {},
            self.barge_in,
        )
        yield (
            "histogram",
            prefix + "turn_latency_seconds",
            "Turn latency: seconds from the end of the caller's speech, as the detector placed it, "
            "to the first packet of the reply.",
            {},
            self.turn_latency,
        )
        yield (
            "histogram",
            prefix + "silero_batch_windows",
            "Silero VAD: windows (calls) per inference; all 1 means no batching happened.",
            {},
            self.silero_batcher.batch_sizes,
        )
        yield (
            "counter",
            prefix + "silero_errors",
            "Silero VAD inferences that failed (their windows counted as no voice).",
            {},
            self.silero_batcher.errors,
        )
        yield (
            "counter",
            prefix + "silero_callback_errors",
            "Silero VAD: handing a call its batch's results raised (logged; the other calls got theirs).",
            {},
            self.silero_batcher.callback_errors,
        )
        for event, n in self.realtime_events.items():
            yield (
                "counter",
                "voiceedge_realtime_events",
                "Realtime events on oai-events, by event (server.<type>, client.<type>, error.<code>).",
                {"event": event},
                n,
            )
        factories = [self.agent_factory, *(f for f in self.offered_agents.values() if f is not self.agent_factory)]
        # Summed by name: factories of one agent (an echo offered at two rates) are one series.
        agent_events: collections.Counter[tuple[str, str]] = collections.Counter()
        for factory in factories:
            if IAgentCounters.providedBy(factory):
                for event, n in factory.counters.items():
                    agent_events[factory.name, event] += n
        for (agent, event), n in agent_events.items():
            yield (
                "counter",
                "voiceedge_agent_events",
                "Agent events (backend failures, dropped audio...), by agent and event.",
                {"agent": agent, "event": event},
                n,
            )


def _new_etag() -> str:
    return '"' + secrets.token_urlsafe(12) + '"'


def _if_match(header: str, etag: str) -> bool:
    """Whether an If-Match value (RFC 9110 §13.1.1: ``*`` or a list of tags) matches ``etag``.

    A quoted ``"*"``, which some WHIP clients send for RFC 9725's ``*``, counts as ``*``.
    """
    tags = [tag.strip() for tag in header.split(",")]
    return any(tag in ("*", '"*"', etag) for tag in tags)


def _fragment_credentials(fragment: sdp.SessionDescription) -> tuple[str, str]:
    """The ICE credentials an SDP fragment carries (session level or its first m-line)."""
    credentials = None
    if fragment.media:
        credentials = fragment.ice_credentials(fragment.media[0])
    elif fragment.ice_ufrag is not None and fragment.ice_pwd is not None:
        credentials = (fragment.ice_ufrag, fragment.ice_pwd)
    if credentials is None:
        raise SessionRefused(400, "the fragment has no a=ice-ufrag and a=ice-pwd (RFC 8840)")
    ufrag, pwd = credentials
    if not 4 <= len(ufrag) <= 256 or not 22 <= len(pwd) <= 256:
        raise SessionRefused(400, "the fragment's ICE ufrag or pwd has a length RFC 8839 forbids")
    return credentials


def _check_reoffer(first: OfferSummary, again: OfferSummary) -> None:
    """A re-offer may change ICE only: the certificate, the audio and the data channel stay."""
    if {(f.algorithm, f.value) for f in again.remote_fingerprints} != {
        (f.algorithm, f.value) for f in first.remote_fingerprints
    }:
        raise SessionRefused(422, "a re-offer cannot change the DTLS certificate: DTLS carries on")
    if again.audio_mid != first.audio_mid or again.opus.payload_type != first.opus.payload_type:
        raise SessionRefused(422, "a re-offer cannot change the audio m-line or its Opus payload type")
    if again.datachannel_mid != first.datachannel_mid:
        raise SessionRefused(422, "a re-offer cannot add or remove the data channel")
    if again.mid_extension_id != first.mid_extension_id:
        raise SessionRefused(422, "a re-offer cannot renumber the MID header extension")


def _not_listening(data: bytes, destination: Address) -> None:
    raise RuntimeError("the transceiver has no socket yet")
