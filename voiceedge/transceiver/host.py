# -*- test-case-name: tests.test_host -*-
"""The transceiver: every session of a process, routed over one UDP socket."""

from __future__ import annotations

import collections
import ipaddress
import secrets
from typing import Callable, Iterator

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from voiceedge.agents.interfaces import IAgentCounters, IAgentFactory
from voiceedge.metrics import Sample
from voiceedge.signaling.answer import (
    AnswerParameters,
    OfferNotAcceptable,
    build_answer,
    summarize_offer,
)
from voiceedge.signaling.interfaces import ISessionHost, OpenedSession, SessionRefused
from voiceedge.transceiver.credentials import new_credentials, random_ufrag
from voiceedge.transceiver.dtls import DtlsCertificate, DtlsRole, DtlsTransport
from voiceedge.transceiver.ice import IceLiteAgent
from voiceedge.transceiver.session import EndReason, ISessionOwner, Session
from voiceedge.transceiver.settings import SpeechSettings, TransceiverSettings
from voiceedge.wire import encap, sdp, stun
from voiceedge.wire.errors import WireError

Address = tuple[str, int]

TICK = 0.020  # one Opus frame
SWEEP = 0.5  # setup, consent and RTCP checks
# DTLS records that arrive from a source before its first valid ICE check
# (reordering can do that) are held briefly, in a small bounded pool.
EARLY_DTLS_SOURCES = 256
EARLY_DTLS_PER_SOURCE = 4
EARLY_DTLS_TTL = 5.0
EARLY_DTLS_MAX_BYTES = 1500


@implementer(ISessionHost, ISessionOwner)
class Transceiver:
    """Sessions by id, ufrag and address; the shared tick; housekeeping.

    Datagrams come in through :meth:`datagram_received` and go out through
    ``write``, which the socket protocol sets; nothing here touches a socket.
    A datagram from a source that has passed an ICE check goes to that
    session; a STUN request from anywhere else is routed by the ufrag in its
    USERNAME; everything else is dropped and counted.
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
    ) -> None:
        self.clock = clock
        self.certificate = certificate
        self.settings = settings
        self.advertised = settings.advertised
        self.agent_factory = agent_factory
        self.max_sessions = settings.max_sessions
        self.setup_timeout = settings.setup_timeout
        self.consent_timeout = settings.consent_timeout
        self.make_ufrag = make_ufrag
        self.speech = speech
        self.write: Callable[[bytes, Address], None] = _not_listening
        self.relay_networks = settings.relay_networks
        self._trusted_relays: dict[str, bool] = {}
        # client address -> (relay that last delivered its packets, its
        # ingress, the header for replies: built once per route change)
        self._relay_of: dict[Address, tuple[Address, Address, bytes]] = {}

        self._by_id: dict[str, Session] = {}
        self._by_ufrag: dict[bytes, Session] = {}
        self._by_address: dict[Address, Session] = {}
        self._sending: set[Session] = set()
        self._early_dtls: collections.OrderedDict[Address, tuple[float, list[bytes]]] = (
            collections.OrderedDict()
        )
        self._tick_index = 0
        self._ticker = LoopingCall.withCount(self._tick)
        self._ticker.clock = clock
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock

        self.drops: collections.Counter[str] = collections.Counter()
        self.probes: collections.Counter[str] = collections.Counter()
        self.ended: collections.Counter[str] = collections.Counter()
        self.sessions_opened = 0
        self.refused: collections.Counter[int] = collections.Counter()
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the shared tick and the sweep."""
        self._ticker.start(TICK, now=False)
        self._sweeper.start(SWEEP, now=False)

    def stop(self) -> None:
        """End every session and stop the timers."""
        for session in list(self._by_id.values()):
            session.close(EndReason.SHUTDOWN)
        for loop in (self._ticker, self._sweeper):
            if loop.running:
                loop.stop()

    # -- ISessionHost -------------------------------------------------------

    def open_session(self, offer_sdp: str) -> OpenedSession:
        """Parse the offer, allocate a session, and answer it."""
        if len(self._by_id) >= self.max_sessions:
            self.refused[503] += 1
            raise SessionRefused(503, "this transceiver is at its session limit")
        try:
            offer = sdp.parse_sdp(offer_sdp)
            summary = summarize_offer(offer)
        except WireError as e:
            self.refused[400] += 1
            raise SessionRefused(400, f"the offer does not parse: {e}") from e
        except OfferNotAcceptable as e:
            self.refused[e.status] += 1
            raise SessionRefused(e.status, e.reason) from e

        credentials = new_credentials(self.make_ufrag)
        ufrag_key = credentials.ufrag.encode("ascii")
        session_id = secrets.token_urlsafe(12)
        while session_id in self._by_id:  # pragma: no cover - 96 random bits
            session_id = secrets.token_urlsafe(12)
        answer = build_answer(
            offer,
            summary,
            AnswerParameters(
                ice_ufrag=credentials.ufrag,
                ice_pwd=credentials.pwd,
                fingerprint=sdp.Fingerprint("sha-256", self.certificate.fingerprint),
                candidate=self.advertised,
                session_id=secrets.randbits(62),
                accept_datachannel=summary.datachannel_mid is not None,
            ),
        )
        ice = IceLiteAgent(
            credentials.ufrag,
            credentials.pwd,
            summary.remote_ufrag,
            self.consent_timeout,
            remote_pwd=summary.remote_pwd,
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
            summary.opus.payload_type,
            self,
            self.agent_factory,
            self.clock,
            self.setup_timeout,
            speech=self.speech,
            data_channel=summary.datachannel_mid is not None,
        )
        self._by_id[session_id] = session
        self._by_ufrag[ufrag_key] = session
        self.sessions_opened += 1
        self.log.info("session {id} opened", id=session_id)
        return OpenedSession(session_id, answer)

    def close_session(self, session_id: str, reason: str) -> bool:
        """End a session on request (a signaling DELETE)."""
        session = self._by_id.get(session_id)
        if session is None:
            return False
        session.close(EndReason.HANGUP)
        return True

    def session_count(self) -> int:
        """How many sessions are open."""
        return len(self._by_id)

    def session_stats(self, session_id: str) -> dict[str, object] | None:
        """Live numbers of one session, or ``None`` if it is not open."""
        session = self._by_id.get(session_id)
        return None if session is None else session.stats()

    def session(self, session_id: str) -> Session | None:
        """The session with this id, if it is open."""
        return self._by_id.get(session_id)

    def sessions(self) -> Iterator[Session]:
        """Every open session."""
        return iter(list(self._by_id.values()))

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
        session = self._session_for(data, source)
        if session is not None:
            session.datagram_received(data, source)

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
        session = self._session_for(payload, client)
        if session is None:
            return
        known = self._relay_of.get(client)
        if known is None or known[0] != relay or known[1] != envelope.ingress:
            self._relay_of[client] = (relay, envelope.ingress, encap.encode(envelope, b""))
        session.datagram_received(payload, client)

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

    def _session_for(self, data: bytes, source: Address) -> Session | None:
        """The session a datagram belongs to; ``None`` (counted, or held) if none."""
        session = self._by_address.get(source)
        if session is not None:
            return session
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
            session = self._by_ufrag.get(username.partition(b":")[0])
            if session is None:
                self.drops["unknown_ufrag"] += 1
            return session
        if 20 <= first <= 63:
            self._hold_early_dtls(data, source)
        else:
            self.drops["unknown_source"] += 1
        return None

    def _hold_early_dtls(self, data: bytes, source: Address) -> None:
        if len(data) > EARLY_DTLS_MAX_BYTES:
            # A real first flight fits the path MTU; the pool's bound in
            # bytes must hold against 64 KiB datagrams.
            self.drops["early_dtls_too_big"] += 1
            return
        entry = self._early_dtls.get(source)
        if entry is None:
            if len(self._early_dtls) >= EARLY_DTLS_SOURCES:
                self._early_dtls.popitem(last=False)
                self.drops["early_dtls_evicted"] += 1
            entry = (self.clock.seconds(), [])
            self._early_dtls[source] = entry
        if len(entry[1]) >= EARLY_DTLS_PER_SOURCE:
            self.drops["early_dtls_overflow"] += 1
            return
        entry[1].append(data)

    # -- ISessionOwner ------------------------------------------------------

    def transmit(self, data: bytes, destination: Address) -> None:
        """Send a session's datagram, through the client's relay if it has one."""
        via = self._relay_of.get(destination)
        if via is not None:
            destination, _, header = via
            data = header + data
        try:
            self.write(data, destination)
        except OSError:
            # A full socket buffer or an unreachable route loses this one
            # datagram; it must not stop the tick or the session.
            self.drops["send_failed"] += 1
            return
        self.packets_out += 1
        self.bytes_out += len(data)

    def session_address_valid(self, session: Session, source: Address) -> None:
        """Route ``source`` to ``session`` from now on, and hand over early DTLS."""
        previous = self._by_address.get(source)
        if previous is not None and previous is not session:
            self.drops["address_taken_over"] += 1
        self._by_address[source] = session
        early = self._early_dtls.pop(source, None)
        if early is not None:
            for data in early[1]:
                session.datagram_received(data, source)

    def session_address_invalid(self, session: Session, source: Address) -> None:
        """Stop routing ``source`` to ``session``."""
        if self._by_address.get(source) is session:
            del self._by_address[source]
            self._relay_of.pop(source, None)

    def session_wants_tick(self, session: Session) -> None:
        """Put ``session`` on the shared tick."""
        self._sending.add(session)

    def session_closed(self, session: Session, reason: EndReason) -> None:
        """Forget every route to a session that has ended."""
        self._by_id.pop(session.session_id, None)
        self._by_ufrag.pop(session.ice.local_ufrag.encode("ascii"), None)
        for source in session.ice.valid_sources:
            if self._by_address.get(source) is session:
                del self._by_address[source]
                self._relay_of.pop(source, None)
        self._sending.discard(session)
        self.ended[reason.value] += 1

    # -- time ---------------------------------------------------------------

    def _tick(self, count: int) -> None:
        # One tick for every session: a timer per session would cost a heap
        # operation per packet, and would drift apart.
        self._tick_index += count
        index = self._tick_index
        # A copy: ticking runs agent code (decoded frames), which may queue
        # audio and so add sessions to the set.
        done = [s for s in list(self._sending) if not s.tick(index, count)]
        for session in done:
            self._sending.discard(session)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        for session in list(self._by_id.values()):
            session.check_timeouts(now)
        # Relay routes learnt from checks that never passed: forget them.
        for client in [c for c in self._relay_of if c not in self._by_address]:
            del self._relay_of[client]
        while self._early_dtls:
            source, (held_at, _) = next(iter(self._early_dtls.items()))
            if now - held_at < EARLY_DTLS_TTL:
                break
            del self._early_dtls[source]
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
        for result, n in self.probes.items():
            yield (
                "counter",
                prefix + "path_probes",
                "Return-routability checks to newly nominated paths, by result (sent, answered).",
                {"result": result},
                n,
            )
        for reason, n in self.drops.items():
            yield ("counter", prefix + "drops", "Datagrams dropped, by reason.", {"reason": reason}, n)
        yield ("counter", prefix + "packets_in", "Datagrams received.", {}, self.packets_in)
        yield ("counter", prefix + "bytes_in", "Bytes received.", {}, self.bytes_in)
        yield ("counter", prefix + "packets_out", "Datagrams sent.", {}, self.packets_out)
        yield ("counter", prefix + "bytes_out", "Bytes sent.", {}, self.bytes_out)
        yield ("gauge", prefix + "sessions_sending", "Sessions with audio queued.", {}, len(self._sending))
        if IAgentCounters.providedBy(self.agent_factory):
            agent = self.agent_factory.name
            for event, n in self.agent_factory.counters.items():
                yield (
                    "counter",
                    "voiceedge_agent_events",
                    "Agent events (backend failures, dropped audio...), by agent and event.",
                    {"agent": agent, "event": event},
                    n,
                )


def _not_listening(data: bytes, destination: Address) -> None:
    raise RuntimeError("the transceiver has no socket yet")
