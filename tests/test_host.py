"""The transceiver on task.Clock: whole calls in memory, no sockets."""

from __future__ import annotations

import ipaddress
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.ice_client import binding_request
from tests.srtp_paths import PythonSrtpPath
from voiceedge.agents.echo import EchoAgentFactory, PassthroughEchoAgentFactory
from voiceedge.agents.interfaces import AudioFrame, IAgent, IAgentFactory, IAgentSession
from voiceedge.media.opus import OpusDecoder, OpusEncoder
from voiceedge.signaling.interfaces import ISessionHost, SessionRefused
from voiceedge.transceiver.dtls import DtlsCertificate, DtlsRole, DtlsState, DtlsTransport
from voiceedge.transceiver.credentials import random_ufrag
from voiceedge.transceiver.host import EARLY_DTLS_POOL_BYTES, Transceiver
from voiceedge.transceiver.session import EndReason, SessionState
from voiceedge.transceiver.settings import SpeechSettings, TransceiverSettings
from voiceedge.transceiver.srtp import SrtpSession
from voiceedge.wire import encap, rtcp, sdp, stun
from voiceedge.wire.rtp import RtpPacket, parse_rtp

def opus_frames(count: int, frequency: float = 440.0, amplitude: int = 8000) -> list[bytes]:
    """``count`` real 20 ms Opus frames of a tone at 48 kHz."""
    encoder = OpusEncoder(48000)
    frames = []
    for n in range(count):
        samples = [
            int(amplitude * math.sin(2 * math.pi * frequency * (n * 960 + i) / 48000)) for i in range(960)
        ]
        frames.append(encoder.encode(struct.pack("<960h", *samples)))
    return frames


def level(payloads: list[bytes]) -> float:
    """RMS of the decoded audio of Opus payloads."""
    decoder = OpusDecoder(48000)
    total, count = 0, 0
    for payload in payloads:
        pcm = decoder.decode(payload)
        samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
        total += sum(x * x for x in samples)
        count += len(samples)
    return math.sqrt(total / max(count, 1))


TONE = opus_frames(60)

SERVER = ("127.0.0.1", 3478)
CLIENT = ("127.0.0.1", 40000)
SERVER_CERT = DtlsCertificate.generate()
CLIENT_CERT = DtlsCertificate.generate()
OTHER_CERT = DtlsCertificate.generate()


CLIENT_PWD = "clientPasswordAbcdefgh123"


def offer_sdp(fingerprint: str, ufrag: str = "cli1", pwd: str = CLIENT_PWD) -> str:
    """An offer as a browser sends it: Opus 111, rtcp-mux, BUNDLE, a data channel."""
    return "\r\n".join(
        [
            "v=0",
            "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0 1",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{pwd}",
            "a=ice-options:trickle",
            f"a=fingerprint:sha-256 {fingerprint}",
            "a=setup:actpass",
            "a=mid:0",
            "a=sendrecv",
            "a=rtcp-mux",
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=rtpmap:0 PCMU/8000",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "c=IN IP4 0.0.0.0",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{pwd}",
            f"a=fingerprint:sha-256 {fingerprint}",
            "a=setup:actpass",
            "a=mid:1",
            "a=sctp-port:5000",
            "",
        ]
    )


@dataclass
class Call:
    """A client's side of one call, wired to the transceiver in memory."""

    transceiver: Transceiver
    clock: Clock
    session_id: str
    username: str
    password: str
    server_fingerprint: str
    dtls: DtlsTransport
    source: tuple[str, int] = CLIENT
    inbox: list[bytes] = field(default_factory=list)
    srtp: SrtpSession | None = None

    def send(self, data: bytes) -> None:
        """A datagram from the client reaches the transceiver."""
        self.transceiver.datagram_received(data, self.source)

    def check(self, use_candidate: bool = True) -> bytes:
        """Send one connectivity check; return the response. Probes are answered, as a browser does."""
        before = len(self.inbox)
        self.send(binding_request(self.username, self.password, use_candidate=use_candidate))
        new = self.inbox[before:]
        del self.inbox[before:]
        responses = [d for d in new if d[0] == 0x01 and d[1] == 0x01]
        assert len(responses) == 1, "the check was not answered"
        for probe in (d for d in new if d[0] == 0x00 and d[1] == 0x01):
            self.send(answer_probe(probe))
        return responses[0]

    def handshake(self, drop_first_server_flight: bool = False, start: bool = True) -> None:
        """Run DTLS over the in-memory path until the client connects."""
        if start:
            for datagram in self.dtls.start(self.clock.seconds()):
                self.send(datagram)
        dropped = False
        for _ in range(20):
            if self.dtls.state is DtlsState.CONNECTED:
                break
            pending, self.inbox[:] = list(self.inbox), []
            if drop_first_server_flight and pending and not dropped:
                dropped = True
                pending = []
            if not pending:
                self.clock.advance(1.0)
                continue
            for datagram in pending:
                output = self.dtls.receive(datagram, self.clock.seconds())
                for reply in output.datagrams:
                    self.send(reply)
        assert self.dtls.srtp_keys is not None
        self.srtp = SrtpSession(self.dtls.srtp_keys)

    def send_rtp(self, sequence: int, payload: bytes, ssrc: int = 1234) -> bytes:
        """Protect and send one Opus packet; return the protected bytes."""
        assert self.srtp is not None
        packet = RtpPacket(111, sequence, sequence * 960, ssrc, payload).serialize()
        protected = self.srtp.protect_rtp(packet)
        self.send(protected)
        return protected

    def received_rtp(self) -> list[RtpPacket]:
        """Unprotect and parse every RTP packet in the inbox."""
        assert self.srtp is not None
        packets = []
        for datagram in self.inbox:
            if 128 <= datagram[0] <= 191 and not 192 <= datagram[1] <= 223:
                packets.append(parse_rtp(self.srtp.unprotect_rtp(datagram)))
        return packets


def answer_probe(probe: bytes) -> bytes:
    """A client's answer to the transceiver's return-routability check."""
    request = stun.parse_message(probe)
    return stun.binding_success(request, SERVER, CLIENT_PWD.encode())


def make_transceiver(clock: Clock, **kwargs: Any) -> tuple[Transceiver, dict[tuple[str, int], list[bytes]]]:
    """A started transceiver whose writes land in per-destination lists."""
    outbox: dict[tuple[str, int], list[bytes]] = {}
    make_ufrag = kwargs.pop("make_ufrag", random_ufrag)
    speech = kwargs.pop("speech", SpeechSettings())
    agent_factory = kwargs.pop("agent_factory", None) or EchoAgentFactory()
    settings = TransceiverSettings(advertised_address=SERVER, **kwargs)
    transceiver = Transceiver(
        clock, SERVER_CERT, agent_factory, settings, speech=speech, make_ufrag=make_ufrag
    )
    transceiver.write = lambda data, dest: outbox.setdefault(dest, []).append(data)
    transceiver.start()
    return transceiver, outbox


def open_call(transceiver: Transceiver, clock: Clock, outbox: dict, client_cert: DtlsCertificate = CLIENT_CERT, source: tuple[str, int] = CLIENT, offer: str | None = None) -> Call:
    """Open a session for ``offer`` (:func:`offer_sdp` by default) and return the client's side of it."""
    opened = transceiver.open_session(offer or offer_sdp(CLIENT_CERT.fingerprint))
    answer = sdp.parse_sdp(opened.answer_sdp)
    audio = answer.media[0]
    ufrag, pwd = answer.ice_credentials(audio)  # type: ignore[misc]
    fingerprint = answer.media[0].fingerprints[0].value
    dtls = DtlsTransport(client_cert, DtlsRole.CLIENT, [("sha-256", fingerprint)])
    inbox = outbox.setdefault(source, [])
    return Call(transceiver, clock, opened.session_id, f"{ufrag}:cli1", pwd, fingerprint, dtls, source, inbox)


def started_clock() -> Clock:
    """A clock that starts at a realistic time."""
    c = Clock()
    c.advance(1_700_000_000)
    return c


class WholeCallTests(SynchronousTestCase):
    """Whole calls in memory on a Clock: check, DTLS, SRTP, the agent's audio and events, hangup, metrics."""

    def test_transceiver_provides_its_interfaces(self) -> None:
        """The transceiver is what signaling and sessions expect."""
        clock = started_clock()
        transceiver, _ = make_transceiver(clock)
        verifyObject(ISessionHost, transceiver)

    def test_a_whole_call_echoes_audio(self) -> None:
        """Check, DTLS, SRTP, echo on the shared tick, RTCP, hangup: all in memory."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        response = stun.parse_message(call.check())
        self.assertEqual(response.xor_mapped_address(), CLIENT)
        call.handshake()
        session = transceiver.session(call.session_id)
        self.assertIsNotNone(session)
        self.assertIs(session.state, SessionState.CONNECTED)
        call.inbox.clear()

        for i, payload in enumerate(TONE[:50]):
            call.send_rtp(1000 + i, payload)
            clock.advance(0.02)
        clock.advance(0.1)
        echoed = call.received_rtp()
        # Decoded and re-encoded, frame for frame, with the tone's energy.
        self.assertEqual(len(echoed), 50)
        self.assertGreater(level([p.payload for p in echoed]), 0.5 * level(TONE[:50]))
        self.assertTrue(echoed[0].marker)
        self.assertFalse(any(p.marker for p in echoed[1:]))
        sequences = [p.sequence_number for p in echoed]
        self.assertEqual(sequences, [(sequences[0] + i) & 0xFFFF for i in range(50)])
        # The timestamp follows the shared 20 ms tick: whole frames, never backwards.
        deltas = [(b.timestamp - a.timestamp) % (1 << 32) for a, b in zip(echoed, echoed[1:])]
        self.assertTrue(all(d % 960 == 0 and 0 < d <= 2 * 960 for d in deltas))

        # RTCP goes out within a few seconds, and it parses.
        call.inbox.clear()
        for _ in range(10):
            call.check(use_candidate=False)
            clock.advance(1.0)
        reports = [d for d in call.inbox if 128 <= d[0] <= 191 and 192 <= d[1] <= 223]
        self.assertTrue(reports)
        self.assertIsNotNone(call.srtp)
        parsed = rtcp.parse_rtcp(call.srtp.unprotect_rtcp(reports[0]))
        self.assertIsInstance(parsed[0], rtcp.SenderReport)
        self.assertEqual(parsed[0].reports[0].ssrc, 1234)

        self.assertTrue(transceiver.close_session(call.session_id, "test"))
        self.assertEqual(transceiver.session_count(), 0)
        self.assertFalse(transceiver.close_session(call.session_id, "test"))
        self.assertEqual(transceiver.ended, {"hangup": 1})
        # Nothing routes to the ended session any more.
        before = sum(transceiver.drops.values())
        call.send_rtp(2000, TONE[0])
        self.assertEqual(sum(transceiver.drops.values()), before + 1)

    def test_passthrough_echo_sends_the_payloads_back_unchanged_and_paced(self) -> None:
        """A passthrough agent: the caller's Opus comes back byte for byte, one per 20 ms slot, nothing decoded."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock, agent_factory=PassthroughEchoAgentFactory())
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        session = transceiver.session(call.session_id)
        self.assertIsNotNone(session)
        self.assertTrue(session.passthrough)
        call.inbox.clear()
        for i, payload in enumerate(TONE[:20]):
            call.send_rtp(1000 + i, payload)
            clock.advance(0.02)
        clock.advance(0.1)
        echoed = call.received_rtp()
        self.assertEqual([p.payload for p in echoed], TONE[:20])
        stamps = [p.timestamp for p in echoed]
        self.assertEqual([(b - a) % (1 << 32) for a, b in zip(stamps, stamps[1:])], [960] * 19)
        stats = transceiver.session_stats(call.session_id)
        self.assertIsNotNone(stats)
        self.assertEqual(stats["frames_concealed"], 0)
        # What a passthrough session does not take: PCM, and payloads that are not 20 ms of Opus.
        before = dict(transceiver.drops)
        session.send_audio(b"\x00\x01" * 960, clock.seconds())
        session.send_opus(b"", clock.seconds())
        session.send_opus(bytes([3 << 3]) + b"\x00" * 10, clock.seconds())  # 60 ms SILK
        self.assertEqual(transceiver.drops["audio_not_opus"], before.get("audio_not_opus", 0) + 1)
        self.assertEqual(transceiver.drops["opus_malformed"], before.get("opus_malformed", 0) + 2)

    def test_five_sessions_share_the_transceiver(self) -> None:
        """Sessions are told apart by ufrag, then by source address."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        calls = [open_call(transceiver, clock, outbox, source=("127.0.0.1", 41000 + i)) for i in range(5)]
        for call in calls:
            call.check()
            call.handshake()
            call.inbox.clear()
        for call in calls:
            for n in range(5):
                call.send_rtp(1 + n, TONE[n])
        clock.advance(0.2)
        for call in calls:
            self.assertEqual(len(call.received_rtp()), 5)

    def test_the_shared_tick_sends_every_sessions_frames_on_their_slots(self) -> None:
        """Bursts echoed by three passthrough sessions: the first frame at once, the rest each at
        its own slot's tick; a talkspurt ends five slots after its last frame, and then (and after
        a hang-up) the tick holds nothing for the session and it has no timer of its own."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock, agent_factory=PassthroughEchoAgentFactory())
        calls = [open_call(transceiver, clock, outbox, source=("127.0.0.1", 42000 + i)) for i in range(3)]
        for call in calls:
            call.check()
            call.handshake()
            call.inbox.clear()
        # Step to 3 ms into a slot, then each client sends a burst of 4 at its own phase.
        origin = transceiver.grid_origin
        clock.advance(0.020 - (clock.seconds() - origin) % 0.020 + 0.003)
        start_slot = round((clock.seconds() - origin) / 0.020 - 0.15)
        arrivals: list[list[float]] = [[] for _ in calls]
        for step in range(400):  # 0.4 s in 1 ms steps
            for i, call in enumerate(calls):
                if step == 4 * i:
                    for n in range(4):
                        call.send_rtp(100 + n, TONE[n])
                while len(arrivals[i]) < len(call.inbox):
                    arrivals[i].append(clock.seconds())
            clock.advance(0.001)
        for i, call in enumerate(calls):
            self.assertEqual([p.payload for p in call.received_rtp()], TONE[:4])
            sent_in = start_slot + (1 if 3 + 4 * i >= 20 else 0)
            expected = [3 + 4 * i] + [(k - start_slot) * 20 for k in range(sent_in + 1, sent_in + 4)]
            got = [round((t - origin) * 1000) - start_slot * 20 for t in arrivals[i]]
            # Within the 1 ms step that holds the tick (sums of 0.001 are not exact).
            self.assertEqual(len(got), 4, f"session {i}: {got}")
            self.assertTrue(all(0 <= g - e <= 1 for g, e in zip(got, expected)), f"session {i}: {got} {expected}")
            stats = transceiver.session_stats(call.session_id)
            assert stats is not None
            (started, last_packet, reason) = stats["playout"][0]
            self.assertEqual(reason, "drained")
            self.assertLessEqual(abs(last_packet - (origin + (sent_in + 3) * 0.020)), 0.0011)
            self.assertGreater(stats["playout"][0][0], 0)
        self.assertEqual(transceiver._sending, {})
        for call in calls:
            self.assertTrue(transceiver.close_session(call.session_id, "test"))
        self.assertEqual(transceiver._sending, {})
        # What is left on the clock is the transceiver's own: its tick and its sweep.
        left = {c.func for c in clock.getDelayedCalls() if c.active()}
        self.assertEqual(left, {transceiver._ticker, transceiver._sweeper})

    def test_caller_audio_is_decoded_no_faster_than_real_time(self) -> None:
        """Packets beyond real time plus a 1 s burst are dropped before the decoder; so are
        packets claiming more than 60 ms each."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        for n in range(80):  # 1.6 s of audio in one instant
            call.send_rtp(10 + n, TONE[n % 60])
        self.assertEqual(transceiver.drops["rtp_over_real_time"], 80 - 50)
        clock.advance(0.2)  # 200 ms more of credit: 10 more frames
        for n in range(12):
            call.send_rtp(100 + n, TONE[n])
        self.assertEqual(transceiver.drops["rtp_over_real_time"], 30 + 2)
        call.send_rtp(200, bytes([3 << 3 | 1]) + b"\x00" * 40)  # two 60 ms SILK frames
        self.assertEqual(transceiver.drops["rtp_opus_too_long"], 1)

    def test_an_agent_that_fails_to_end_does_not_leak_the_session(self) -> None:
        """An exception in session_ended is logged; the session's routes are freed all the same."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        conversation = transceiver.conversation(call.session_id)
        self.assertIsNotNone(conversation)
        self.assertIsNotNone(conversation.agent)

        def broken(reason: str) -> None:
            raise RuntimeError("agent bug")

        conversation.agent.session_ended = broken  # type: ignore[method-assign]
        self.assertTrue(transceiver.close_session(call.session_id, "test"))
        self.assertEqual(transceiver.session_count(), 0)
        self.assertFalse(transceiver._by_address)
        # Logged, once (trial fails a test whose logged errors are left unflushed).
        self.assertEqual([f.getErrorMessage() for f in self.flushLoggedErrors(RuntimeError)], ["agent bug"])

    def test_setup_waterfall_on_stats_and_metrics(self) -> None:
        """Every milestone of a call's setup is on GET <Location> and in the setup histograms."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        clock.advance(0.01)
        call.check()
        clock.advance(0.01)
        call.handshake()
        call.send_rtp(1, TONE[0])
        stats = transceiver.session_stats(call.session_id)
        self.assertIsNotNone(stats)
        timings = stats["timings_ms"]
        self.assertIsInstance(timings, dict)
        self.assertEqual(list(timings), ["answer", "first_check", "nomination", "dtls", "first_rtp_in", "first_rtp_out"])
        self.assertEqual(timings["answer"], 0.0)
        self.assertEqual(timings["first_check"], 10.0)
        self.assertEqual(timings["dtls"], 20.0)
        self.assertEqual(stats["barge_in_ms"], [])
        self.assertEqual(stats["consent"]["checks_sent"], 0)  # type: ignore[index]
        histograms = {
            labels["milestone"]: value
            for kind, name, _, labels, value in transceiver.metrics()
            if name == "voiceedge_transceiver_setup_seconds"
        }
        self.assertEqual(set(histograms), {
            "answer", "first_check", "nomination", "dtls", "first_rtp_in", "first_rtp_out", "datachannel_open"
        })
        self.assertEqual(histograms["dtls"].count, 1)
        self.assertEqual(histograms["datachannel_open"].count, 0)  # type: ignore[union-attr]

    def test_settings_reach_the_session_and_every_end_is_heard(self) -> None:
        """A client secret's settings are on Session.settings; end listeners hear hang-ups and timeouts alike."""
        clock = started_clock()
        transceiver, _ = make_transceiver(clock)
        ended: list[str] = []
        transceiver.add_end_listener(ended.append)
        first = transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint), {"instructions": "Be brief."})
        session = transceiver.session(first.session_id)
        self.assertIsNotNone(session)
        self.assertEqual(session.settings, {"instructions": "Be brief."})
        second = transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        self.assertTrue(transceiver.close_session(first.session_id, "test"))
        clock.advance(20)  # past the setup timeout: the second never connected
        self.assertEqual(ended, [first.session_id, second.session_id])

    def test_a_client_secret_may_choose_an_offered_agent(self) -> None:
        """session.agent picks one of the offered agents; an agent not offered is 400 with nothing allocated."""
        clock = started_clock()
        outbox: dict = {}
        transceiver = Transceiver(
            clock, SERVER_CERT, EchoAgentFactory(), TransceiverSettings(advertised_address=SERVER),
            offered_agents={"narrow": EchoAgentFactory(sample_rate=16000)},
        )
        transceiver.write = lambda data, dest: outbox.setdefault(dest, []).append(data)
        chosen = transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint), {"agent": "narrow"})
        default = transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint), {"instructions": "x"})
        self.assertEqual(transceiver.session(chosen.session_id).sample_rate, 16000)  # type: ignore[union-attr]
        self.assertEqual(transceiver.session(default.session_id).sample_rate, 48000)  # type: ignore[union-attr]
        with self.assertRaises(SessionRefused) as refused:
            transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint), {"agent": "bridge"})
        self.assertEqual(refused.exception.status, 400)
        self.assertIn("narrow", refused.exception.reason)
        self.assertEqual(transceiver.session_count(), 2)

    def test_barge_in_and_turn_latency_histograms(self) -> None:
        """A turn, a reply, the caller talking over it: one observation in each histogram, and a clean stop on the wire."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(
            clock, speech=SpeechSettings(detector="energy"), agent_factory=ReplierFactory()
        )
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        silence = OpusEncoder(48000).encode(bytes(1920))
        sequence = 0

        def say(payloads: list[bytes]) -> None:
            nonlocal sequence
            for payload in payloads:
                call.send_rtp(sequence, payload)
                sequence += 1
                clock.advance(0.02)

        say([silence] * 10)  # the detector learns the noise floor
        say(TONE[:25])
        say([silence] * 60)  # 500 ms ends the turn, the reply starts 300 ms later
        self.assertEqual(transceiver.turn_latency.count, 1)
        # 500 ms of silence, the agent's 300 ms, and a frame (the detector times a frame from its arrival).
        self.assertLessEqual(0.78, transceiver.turn_latency.sum)
        self.assertLessEqual(transceiver.turn_latency.sum, 0.84)
        self.assertEqual(transceiver.barge_in.count, 0)
        call.inbox.clear()
        say(TONE[25:30])
        self.assertEqual(transceiver.barge_in.count, 1)
        # min_speech_ms (40) and a frame: the cut comes when the detector is sure.
        self.assertLessEqual(transceiver.barge_in.sum, 0.061)
        say([silence] * 10)
        after = call.received_rtp()
        stats = transceiver.session_stats(call.session_id)
        self.assertIsNotNone(stats)
        self.assertEqual(stats["barge_in_ms"], [round(transceiver.barge_in.sum * 1000, 1)])
        # Reply frames until the cut, then the fade, then two silent frames, then nothing.
        decoder = OpusDecoder(48000)
        levels = [level_db(decoder.decode(p.payload)) for p in after]
        self.assertLess(levels[-2], -55)
        self.assertLess(levels[-1], -55)
        self.assertGreater(max(levels[:-3]), -25)
        names = [name for _, name, _, _, _ in transceiver.metrics()]
        self.assertIn("voiceedge_transceiver_barge_in_seconds", names)
        self.assertIn("voiceedge_transceiver_turn_latency_seconds", names)

    def test_stop_ends_every_session(self) -> None:
        """Stopping the service ends live sessions with a reason."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        transceiver.stop()
        self.assertEqual(transceiver.session_count(), 0)
        self.assertEqual(transceiver.ended, {"shutdown": 1})
        self.assertTrue(call.inbox, "a close_notify went to the client")


class EarlyAndHostileTrafficTests(SynchronousTestCase):
    """What arrives before or outside a valid call: early media and DTLS, wrong certificates, lost flights, forged SRTP, guessed ids."""

    def test_media_before_a_valid_check_is_dropped_not_answered(self) -> None:
        """DTLS and RTP from a source without a valid check get no reply."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        stranger = ("127.0.0.1", 49999)
        transceiver.datagram_received(b"\x80\x6f" + os.urandom(100), stranger)
        transceiver.datagram_received(b"\xc0" * 50, stranger)
        transceiver.datagram_received(binding_request(call.username, "wrong"), stranger)
        transceiver.datagram_received(binding_request("nobody:cli1", call.password), stranger)
        self.assertEqual(outbox.get(stranger, []), [])
        self.assertEqual(transceiver.drops["unknown_source"], 2)
        self.assertEqual(transceiver.drops["stun_bad_integrity"], 1)
        self.assertEqual(transceiver.drops["unknown_ufrag"], 1)

    def test_dtls_that_overtakes_the_check_is_held(self) -> None:
        """A ClientHello that arrives before the first check is processed once the path is verified."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        for datagram in call.dtls.start(clock.seconds()):
            call.send(datagram)
        self.assertEqual(call.inbox, [])  # held, not answered
        call.send(binding_request(call.username, call.password, use_candidate=True))
        # The check's response and our return check; DTLS waits for the answer to it.
        response, probe = call.inbox
        self.assertEqual((response[:2], probe[:2]), (b"\x01\x01", b"\x00\x01"))
        call.inbox.clear()
        call.send(answer_probe(probe))
        self.assertTrue(call.inbox, "the held ClientHello was answered once the path was verified")
        self.assertTrue(all(20 <= d[0] <= 63 for d in call.inbox))
        for _ in range(10):
            pending, call.inbox[:] = list(call.inbox), []
            for datagram in pending:
                for reply in call.dtls.receive(datagram, clock.seconds()).datagrams:
                    call.send(reply)
        self.assertIs(call.dtls.state, DtlsState.CONNECTED)

    def test_fingerprint_mismatch_closes_without_keys(self) -> None:
        """A client whose certificate is not the one in its offer is refused."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox, client_cert=OTHER_CERT)
        call.check()
        session = transceiver.session(call.session_id)
        self.assertIsNotNone(session)
        with self.assertRaises(AssertionError):
            call.handshake()
        self.assertIs(session.state, SessionState.CLOSED)
        self.assertIs(session.end_reason, EndReason.DTLS_FAILED)
        self.assertIsNone(session.dtls.srtp_keys)
        self.assertEqual(transceiver.session_count(), 0)

    def test_server_retransmits_its_flight_on_the_clock(self) -> None:
        """A lost server flight is sent again when the injected clock passes the deadline."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        for datagram in call.dtls.start(clock.seconds()):
            call.send(datagram)
        first_flight = list(call.inbox)
        self.assertTrue(first_flight)
        call.inbox.clear()
        clock.advance(0.5)
        self.assertEqual(call.inbox, [])
        clock.advance(0.6)
        # The same flight again (with new record sequence numbers).
        self.assertEqual([len(d) for d in call.inbox], [len(d) for d in first_flight])
        self.assertEqual([d[:3] for d in call.inbox], [d[:3] for d in first_flight])
        call.handshake(start=False)
        self.assertIs(call.dtls.state, DtlsState.CONNECTED)

    def test_replayed_and_forged_srtp_are_dropped_and_counted(self) -> None:
        """A replayed packet and a forged one never reach the agent."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        call.inbox.clear()
        protected = call.send_rtp(1, TONE[0])
        call.send(protected)
        forged = bytearray(call.send_rtp(2, TONE[1]))
        forged[-1] ^= 1
        forged[3] ^= 7  # new sequence number, so it is not a replay
        call.send(bytes(forged))
        clock.advance(0.1)
        self.assertEqual(len(call.received_rtp()), 2)
        self.assertEqual(transceiver.drops["srtp_replay"], 1)
        self.assertEqual(transceiver.drops["srtp_auth"], 1)

    def test_early_dtls_of_any_size_is_held_within_a_byte_budget(self) -> None:
        """The early-DTLS pool holds any datagram a client may send (a post-quantum first flight
        is past 1,400 bytes), and stays within its byte budget by evicting the oldest sources."""
        clock = started_clock()
        transceiver, _ = make_transceiver(clock)
        transceiver.datagram_received(b"\x16" + bytes(1407), ("127.0.0.1", 1))
        self.assertEqual(transceiver._early_dtls_bytes, 1408)
        for port in range(2, 40):
            transceiver.datagram_received(b"\x16" + bytes(60000), ("127.0.0.1", port))
        self.assertLessEqual(transceiver._early_dtls_bytes, EARLY_DTLS_POOL_BYTES)
        self.assertNotIn(("127.0.0.1", 1), transceiver._early_dtls)
        self.assertGreaterEqual(transceiver.drops["early_dtls_evicted"], 1)
        clock.advance(6)
        self.assertFalse(transceiver._early_dtls)
        self.assertEqual(transceiver._early_dtls_bytes, 0)

    def test_dtls_from_a_source_that_never_answers_gets_no_dtls(self) -> None:
        """A caller spoofs valid checks of its own session from a victim's address, then DTLS from it
        (a ClientHello, a malformed handshake record): the victim gets STUN only, never a flight or
        an alert, however long the clock runs; the real client's handshake is not disturbed."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        victim = ("192.0.2.8", 5001)
        spoofer = DtlsTransport(OTHER_CERT, DtlsRole.CLIENT, [("sha-256", call.server_fingerprint)])
        malformed = bytes.fromhex("16fefd000000000000000000" "0c" "010000000000000000000000")
        sent = [binding_request(call.username, call.password, use_candidate=True)]
        sent += spoofer.start(clock.seconds())
        sent += [malformed, binding_request(call.username, call.password)]
        for datagram in sent:
            transceiver.datagram_received(datagram, victim)
        for _ in range(70):  # past every DTLS retransmission and the setup timeout
            clock.advance(1.0)
        to_victim = outbox.get(victim, [])
        self.assertTrue(to_victim)  # check responses and return checks
        self.assertEqual([d for d in to_victim if d[0] > 3], [])
        self.assertLessEqual(len(to_victim), 2 * len(sent))
        session = transceiver.session(call.session_id)
        self.assertIsNone(session)  # it never connected: the setup timeout ended it

    def test_a_spoofed_path_gets_no_dtls_while_the_call_is_connected(self) -> None:
        """Once connected, the client's own last flight replayed from an unverified source (which
        would have the server resend its final flight), a ClientHello, or a stale record are not
        answered there; the hang-up's close_notify goes to the verified client."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        client_flights: list[bytes] = []
        send = call.send

        def recording_send(data: bytes) -> None:
            client_flights.append(data)
            send(data)

        call.send = recording_send  # type: ignore[method-assign]
        call.handshake()
        call.send = send  # type: ignore[method-assign]
        call.inbox.clear()
        victim = ("192.0.2.8", 5001)
        spoofer = DtlsTransport(OTHER_CERT, DtlsRole.CLIENT, [("sha-256", call.server_fingerprint)])
        transceiver.datagram_received(binding_request(call.username, call.password), victim)
        clock.advance(0.5)
        stale = b"\x17\xfe\xfd\x00\x01" + bytes(6) + b"\x00\x10" + bytes(16)
        for datagram in client_flights[1:] + spoofer.start(clock.seconds()) + [stale]:
            transceiver.datagram_received(datagram, victim)
        clock.advance(3.0)
        transceiver.close_session(call.session_id, "test")
        to_victim = outbox.get(victim, [])
        self.assertEqual([d for d in to_victim if d[0] > 3], [])
        self.assertTrue([d for d in call.inbox if d[0] == 0x15], "no close_notify to the client")

    def test_session_ids_are_unguessable_and_never_logged_whole(self) -> None:
        """Ids carry 128 random bits; logs show a 6-character prefix only (issue 9, finding 2)."""
        clock = started_clock()
        import base64

        from twisted.logger import capturedLogs, formatEvent

        transceiver, outbox = make_transceiver(clock)
        with capturedLogs() as events:
            ids = [transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint)).session_id for _ in range(3)]
            for session_id in ids:
                transceiver.close_session(session_id, "test")
        for session_id in ids:
            self.assertGreaterEqual(len(base64.urlsafe_b64decode(session_id + "==")) * 8, 128)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("opened", text)
        for session_id in ids:
            self.assertNotIn(session_id, text)
            self.assertIn(session_id[:6], text)


def binding_requests(datagrams: list[bytes]) -> list[bytes]:
    """The STUN binding requests among ``datagrams``."""
    return [d for d in datagrams if d[:2] == b"\x00\x01"]


def answer_requests(call: Call) -> int:
    """Answer every binding request of ours in the inbox, as a client's ICE agent does; empty it."""
    requests = binding_requests(call.inbox)
    call.inbox.clear()
    for request in requests:
        call.send(answer_probe(request))
    return len(requests)


class ConsentAndTimeoutTests(SynchronousTestCase):
    """Consent freshness (RFC 7675), the setup timeout, and checks refused after a hang-up, on the Clock."""

    def test_consent_is_checked_by_the_sender(self) -> None:
        """RFC 7675 §5: a client that never checks (Pion while media flows) but answers our checks
        holds the call; checks go every 5 s +-20 %."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        call.inbox.clear()
        sent_at = []
        for n in range(1200):  # 120 s in 100 ms steps, with audio from the client now and then
            if n % 10 == 0:
                call.send_rtp(n // 10 + 1, TONE[n % 60])
            clock.advance(0.1)
            if answer_requests(call):
                sent_at.append(clock.seconds())
        self.assertEqual(transceiver.session_count(), 1)
        gaps = [b - a for a, b in zip(sent_at, sent_at[1:])]
        self.assertLessEqual(20, len(sent_at), sent_at)
        self.assertLessEqual(len(sent_at), 30, sent_at)
        self.assertTrue(all(3.9 <= g <= 6.1 for g in gaps), gaps)
        session = transceiver.session(call.session_id)
        self.assertIsNotNone(session)
        self.assertEqual(session.ice.consent_checks_answered, session.ice.consent_checks_sent)
        self.assertEqual(session.ice.consent_checks_sent, len(sent_at))

    def test_consent_expires_thirty_seconds_after_the_last_answer(self) -> None:
        """A client that stops answering is gone 30 s after its last answer, whatever it sends:
        its own checks and its authenticated media are liveness, not consent. Unanswered checks
        are retransmitted (500 ms, doubling) until the next is due."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        call.inbox.clear()
        last_answer = clock.seconds()
        requests: list[tuple[float, bytes]] = []
        sequence = 1
        while transceiver.session_count() and clock.seconds() - last_answer < 40:
            call.send_rtp(sequence, TONE[sequence % 60])
            sequence += 1
            if sequence % 20 == 0:
                call.check(use_candidate=True)
            clock.advance(0.02 if sequence < 100 else 0.1)
            for request in binding_requests(call.inbox):
                requests.append((clock.seconds(), request))
            call.inbox.clear()
        ended_after = clock.seconds() - last_answer
        self.assertEqual(transceiver.session_count(), 0)
        self.assertLessEqual(30.0, ended_after, ended_after)
        self.assertLessEqual(ended_after, 30.2, ended_after)
        self.assertEqual(transceiver.ended, {"consent_expired": 1})
        self.assertFalse(transceiver._by_address)
        self.assertFalse(transceiver._by_ufrag)
        self.assertFalse(transceiver._sending)
        # Retransmissions carry the same transaction id, 0.5 s then 1 s apart.
        first_tid = requests[0][1][8:20]
        resent = [t for t, r in requests if r[8:20] == first_tid]
        self.assertGreaterEqual(len(resent), 3)
        self.assertLessEqual(abs(resent[1] - resent[0] - 0.5), 0.11, resent)
        self.assertLessEqual(abs(resent[2] - resent[1] - 1.0), 0.11, resent)
        self.assertGreaterEqual(len({r[8:20] for _, r in requests}), 5)  # a new transaction every 5 s or so

    def test_a_forbidden_answer_revokes_consent_at_once(self) -> None:
        """RFC 7675 §5.2: a 403 to a consent check ends the call without waiting."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        call.inbox.clear()
        while not binding_requests(call.inbox):
            clock.advance(0.1)
        (request,) = binding_requests(call.inbox)
        message = stun.parse_message(request)
        call.send(stun.binding_error(message, 403, "Forbidden", CLIENT_PWD.encode()))
        self.assertEqual(transceiver.session_count(), 0)
        self.assertEqual(transceiver.ended, {"consent_revoked": 1})

    def test_setup_timeout_ends_a_session_that_never_connects(self) -> None:
        """An answered offer that never completes ICE and DTLS is freed."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock, setup_timeout=15.0)
        open_call(transceiver, clock, outbox)
        clock.advance(14.0)
        self.assertEqual(transceiver.session_count(), 1)
        clock.advance(1.5)
        self.assertEqual(transceiver.session_count(), 0)
        self.assertEqual(transceiver.ended, {"setup_timeout": 1})

    def test_checks_after_a_hang_up_are_refused_for_a_while(self) -> None:
        """Once we hang up, a check with the session's credentials gets a signed 403 (RFC 7675 §5.2),
        so the client's ICE fails at once; a check that cannot prove them gets nothing; after 30 s, nothing."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        self.assertTrue(transceiver.close_session(call.session_id, "test"))
        outbox.clear()
        request = binding_request(call.username, call.password)
        call.send(request)
        (refusal,) = outbox.pop(CLIENT)
        message = stun.parse_message(refusal)
        self.assertIs(message.message_class, stun.StunClass.ERROR)
        self.assertEqual(message.error_code(), (403, "Forbidden"))
        self.assertEqual(message.transaction_id, stun.parse_message(request).transaction_id)
        self.assertTrue(stun.verify_integrity(refusal, call.password.encode()))
        self.assertLessEqual(len(refusal), len(request))
        call.send(binding_request(call.username, "not-the-password-at-all"))
        self.assertNotIn(CLIENT, outbox)
        self.assertEqual(transceiver.drops["check_after_end"], 1)
        clock.advance(30.5)
        call.send(request)
        self.assertNotIn(CLIENT, outbox)
        self.assertFalse(transceiver._ended_ufrags)

    def test_checks_after_a_hang_up_are_refused_through_the_relay(self) -> None:
        """The refusal goes back through the relay that delivered the check, wrapped."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock, relay_networks=(ipaddress.ip_network("127.0.0.0/8"),))
        call, _ = open_relayed_call(transceiver, clock, outbox)
        call.send(binding_request(call.username, call.password, use_candidate=True))
        outbox.clear()
        self.assertTrue(transceiver.close_session(call.session_id, "done"))
        call.send(binding_request(call.username, call.password))
        (refusal,) = unwrap(outbox.pop(RELAY_A))
        self.assertEqual(stun.parse_message(refusal).error_code(), (403, "Forbidden"))
        self.assertFalse(transceiver._relay_of)


class RefusedOfferTests(SynchronousTestCase):
    """Offers that cannot become a call, and offers past the session cap, are refused with nothing allocated."""

    def assert_offer_refused(self, offer: str, status: int) -> None:
        """Offers that cannot become a call are refused with the right status."""
        clock = started_clock()
        transceiver, _ = make_transceiver(clock)
        with self.assertRaises(SessionRefused) as refused:
            transceiver.open_session(offer)
        self.assertEqual(refused.exception.status, status)
        self.assertEqual(transceiver.session_count(), 0)
        self.assertFalse(transceiver._by_ufrag)

    def test_bad_offers_are_refused_with_nothing_allocated_not_sdp(self) -> None:
        """Not SDP at all: 400."""
        self.assert_offer_refused("this is not sdp", 400)

    def test_bad_offers_are_refused_with_nothing_allocated_no_opus(self) -> None:
        """No codec we speak: 406."""
        self.assert_offer_refused(offer_sdp(CLIENT_CERT.fingerprint).replace("opus/48000/2", "G722/8000"), 406)

    def test_bad_offers_are_refused_with_nothing_allocated_no_fingerprint(self) -> None:
        """No fingerprint: 400."""
        self.assert_offer_refused(offer_sdp(CLIENT_CERT.fingerprint).replace("a=fingerprint", "a=x-fingerprint"), 400)

    def test_bad_offers_are_refused_with_nothing_allocated_sha1_fingerprint(self) -> None:
        """Issue 9 finding 4: a hash the answer used to accept and DTLS then refused (a 500) is 400."""
        self.assert_offer_refused(
            offer_sdp(CLIENT_CERT.fingerprint).replace("a=fingerprint:sha-256", "a=fingerprint:sha-1"), 400
        )

    def test_bad_offers_are_refused_with_nothing_allocated_sha224_fingerprint(self) -> None:
        """Issue 9 finding 4: sha-224, which DTLS refused after the answer, is 400."""
        self.assert_offer_refused(
            offer_sdp(CLIENT_CERT.fingerprint).replace("a=fingerprint:sha-256", "a=fingerprint:sha-224"), 400
        )

    def test_session_cap_refuses_with_503(self) -> None:
        """Past max_sessions an offer gets 503 and nothing is allocated."""
        clock = started_clock()
        transceiver, _ = make_transceiver(clock, max_sessions=2)
        transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        with self.assertRaises(SessionRefused) as refused:
            transceiver.open_session(offer_sdp(CLIENT_CERT.fingerprint))
        self.assertEqual(refused.exception.status, 503)
        self.assertEqual(transceiver.session_count(), 2)


RELAY_A = ("127.0.0.2", 5000)
RELAY_B = ("127.0.0.3", 5000)
INGRESS = ("203.0.113.10", 3478)
PUBLIC_CLIENT = ("198.51.100.20", 61000)


class RelayedCall(Call):
    """A client whose packets reach the transceiver encapsulated by a relay."""

    relay: tuple[str, int] = RELAY_A

    def send(self, data: bytes) -> None:
        """The relay wraps the client's datagram with its header."""
        self.transceiver.datagram_received(
            encap.encode(encap.Envelope(self.source, INGRESS), data), self.relay
        )


def open_relayed_call(transceiver: Transceiver, clock: Clock, outbox: dict) -> tuple[RelayedCall, list[bytes]]:
    """Open a session whose client sits behind a relay; return it and the relay's inbox."""
    plain = open_call(transceiver, clock, outbox, source=PUBLIC_CLIENT)
    relay_inbox: list[bytes] = []
    call = RelayedCall(**{**plain.__dict__, "inbox": relay_inbox})
    return call, relay_inbox


def unwrap(datagrams: list[bytes]) -> list[bytes]:
    """Check the header of each datagram a relay got back, and strip it."""
    payloads = []
    for datagram in datagrams:
        envelope, payload = encap.decode(datagram)
        assert envelope == encap.Envelope(PUBLIC_CLIENT, INGRESS)
        payloads.append(payload)
    return payloads


class RelayedCallTests(SynchronousTestCase):
    """Calls whose datagrams come encapsulated through a relay."""

    def test_a_call_through_a_relay(self) -> None:
        """Encapsulated checks, DTLS and media work; replies go back to the relay, wrapped."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock, relay_networks=(ipaddress.ip_network("127.0.0.0/8"),))
        call, _ = open_relayed_call(transceiver, clock, outbox)
        call.send(binding_request(call.username, call.password, use_candidate=True))
        response, probe = unwrap(outbox.pop(RELAY_A))
        call.send(answer_probe(probe))
        # XOR-MAPPED-ADDRESS is the client's real public address, not the relay's.
        self.assertEqual(stun.parse_message(response).xor_mapped_address(), PUBLIC_CLIENT)

        # Run DTLS with the relay unwrapping on the way back.
        for datagram in call.dtls.start(clock.seconds()):
            call.send(datagram)
        for _ in range(10):
            replies = unwrap(outbox.pop(RELAY_A, []))
            for datagram in replies:
                for reply in call.dtls.receive(datagram, clock.seconds()).datagrams:
                    call.send(reply)
        self.assertIs(call.dtls.state, DtlsState.CONNECTED)
        self.assertIsNotNone(call.dtls.srtp_keys)
        call.srtp = SrtpSession(call.dtls.srtp_keys)
        call.send_rtp(1, TONE[0])
        clock.advance(0.04)
        (echo,) = unwrap(outbox.pop(RELAY_A))
        self.assertEqual(parse_rtp(call.srtp.unprotect_rtp(echo)).payload_type, 111)

        # The client's next packet comes through another relay: replies follow it.
        call.relay = RELAY_B
        call.send_rtp(2, TONE[1])
        clock.advance(0.04)
        self.assertTrue(RELAY_A not in outbox or outbox[RELAY_A] == [])
        (echo,) = unwrap(outbox.pop(RELAY_B))
        self.assertTrue(parse_rtp(call.srtp.unprotect_rtp(echo)).sequence_number)
        self.assertTrue(transceiver.close_session(call.session_id, "done"))
        self.assertFalse(transceiver._relay_of)

    def test_encapsulated_datagrams_from_outside_relay_networks_are_dropped(self) -> None:
        """Only configured relay networks may speak for a client address."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock, relay_networks=(ipaddress.ip_network("10.0.0.0/8"),))
        call, _ = open_relayed_call(transceiver, clock, outbox)
        call.send(binding_request(call.username, call.password, use_candidate=True))
        self.assertEqual(outbox.get(RELAY_A, []), [])
        self.assertEqual(transceiver.drops["encap_untrusted_source"], 1)
        transceiver.datagram_received(b"\xf1\x00\x00", ("10.1.1.1", 1))
        self.assertEqual(transceiver.drops["encap_malformed"], 1)


def restart_fragment(ufrag: str = "cli2", pwd: str = CLIENT_PWD) -> str:
    """A WHIP client's ICE restart PATCH body (RFC 8840 fragment)."""
    return (
        f"a=ice-options:trickle\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
        f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
        "a=candidate:1 1 udp 2122260223 127.0.0.1 40001 typ host\r\na=end-of-candidates\r\n"
    )


class IceRestartTests(SynchronousTestCase):
    """PATCH on a session (RFC 9725): ICE restarts by fragment or re-offer, If-Match, refused patches, trickled candidates."""

    def test_ice_restart_by_fragment_keeps_the_call(self) -> None:
        """PATCH with new credentials: new ufrag (routed) and pwd for us, DTLS and SRTP carry on,
        audio continues, the old ufrag is retired at the first check under the new one."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        old_ufrag = call.username.split(":")[0]
        etag = transceiver._by_id[call.session_id].etag
        patched = transceiver.patch_session(call.session_id, "application/trickle-ice-sdpfrag", restart_fragment(), "*")
        self.assertEqual(patched.status, 200)
        self.assertEqual(patched.media_type, "application/trickle-ice-sdpfrag")
        self.assertNotEqual(patched.etag, etag)
        fragment = sdp.parse_sdpfrag(patched.body)
        ufrag, pwd = fragment.ice_credentials(fragment.media[0])  # type: ignore[misc]
        self.assertNotEqual(ufrag, old_ufrag)
        self.assertEqual(fragment.media[0].mid, "0")
        self.assertEqual(fragment.media[0].candidates[0].port, SERVER[1])
        self.assertEqual(transceiver.ice_restarts, 1)

        # The client moves to a new port with the new credentials (a browser gathers anew).
        call.inbox.clear()
        call.source = ("127.0.0.1", 40001)
        call.inbox = outbox.setdefault(call.source, [])
        call.username, call.password = f"{ufrag}:cli2", pwd
        call.check()
        self.assertNotIn(old_ufrag.encode(), transceiver._by_ufrag)
        self.assertIn(ufrag.encode(), transceiver._by_ufrag)
        call.inbox.clear()
        for n in range(5):
            call.send_rtp(100 + n, TONE[n])
            clock.advance(0.02)
        self.assertEqual(len(call.received_rtp()), 5)  # same SRTP keys, new path
        session = transceiver.session(call.session_id)
        self.assertIsNotNone(session)
        self.assertEqual(session.ice.media_destination(), ("127.0.0.1", 40001))

    def test_ice_restart_by_full_reoffer(self) -> None:
        """A browser's restartIce() re-offer gets a whole answer: new credentials, same certificate,
        a higher o= version; the same credentials again change nothing."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        call.check()
        call.handshake()
        reoffer = offer_sdp(CLIENT_CERT.fingerprint, ufrag="cli9")
        patched = transceiver.patch_session(call.session_id, "application/sdp", reoffer, None)
        self.assertEqual(patched.status, 200)
        self.assertEqual(patched.media_type, "application/sdp")
        answer = sdp.parse_sdp(patched.body)
        self.assertEqual(answer.origin.split()[2], "2")
        self.assertNotEqual(answer.ice_ufrag, call.username.split(":")[0])
        self.assertEqual(answer.fingerprints[0].value, SERVER_CERT.fingerprint)
        self.assertTrue(answer.media[0].ssrcs)
        self.assertEqual(answer.media[1].port, SERVER[1])
        again = transceiver.patch_session(call.session_id, "application/sdp", reoffer, patched.etag)
        self.assertEqual(sdp.parse_sdp(again.body).ice_ufrag, answer.ice_ufrag)
        self.assertEqual(again.etag, patched.etag)
        self.assertEqual(transceiver.ice_restarts, 1)

    def assert_if_match_accepted(self, if_match: str | None) -> None:
        """A restart by fragment with this If-Match is 200."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        patched = transceiver.patch_session(call.session_id, "application/trickle-ice-sdpfrag", restart_fragment(), if_match)
        self.assertEqual(patched.status, 200, if_match)

    def test_if_match_star_in_any_spelling_bare(self) -> None:
        """RFC 9110's ``*``."""
        self.assert_if_match_accepted("*")

    def test_if_match_star_in_any_spelling_quoted(self) -> None:
        """The quoted ``"*"`` some WHIP clients send."""
        self.assert_if_match_accepted('"*"')

    def test_if_match_star_in_any_spelling_in_a_list(self) -> None:
        """A list with ``*``."""
        self.assert_if_match_accepted('"x", "y", *')

    def test_if_match_star_in_any_spelling_none(self) -> None:
        """No If-Match at all."""
        self.assert_if_match_accepted(None)

    def assert_patch_refused(self, media_type: str, body: str, if_match: str | None, status: int) -> None:
        """The patch is refused with ``status`` and the session's credentials stay; on an unknown session it is 404."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        with self.assertRaises(SessionRefused) as refused:
            transceiver.patch_session(call.session_id, media_type, body, if_match)
        self.assertEqual(refused.exception.status, status)
        self.assertEqual(transceiver.ice_restarts, 0)
        self.assertEqual(len(transceiver._by_ufrag), 1)
        with self.assertRaises(SessionRefused) as unknown:
            transceiver.patch_session("nope", media_type, body, None)
        self.assertEqual(unknown.exception.status, 404)

    def test_bad_patches_are_refused_and_change_nothing_stale_if_match(self) -> None:
        """A stale If-Match is 412."""
        self.assert_patch_refused("application/trickle-ice-sdpfrag", restart_fragment(), '"stale"', 412)

    def test_bad_patches_are_refused_and_change_nothing_fragment_without_credentials(self) -> None:
        """A fragment with a candidate but no credentials is 400."""
        self.assert_patch_refused(
            "application/trickle-ice-sdpfrag", "a=candidate:1 1 udp 1 127.0.0.1 1 typ host\r\n", None, 400
        )

    def test_bad_patches_are_refused_and_change_nothing_fragment_unparsable(self) -> None:
        """A fragment that is not one is 400."""
        self.assert_patch_refused("application/trickle-ice-sdpfrag", "v=0\r\n", None, 400)

    def test_bad_patches_are_refused_and_change_nothing_reoffer_not_sdp(self) -> None:
        """A re-offer that is not SDP is 400."""
        self.assert_patch_refused("application/sdp", "not sdp", None, 400)

    def test_bad_patches_are_refused_and_change_nothing_reoffer_new_certificate(self) -> None:
        """A re-offer with another certificate changes more than ICE: 422."""
        self.assert_patch_refused("application/sdp", offer_sdp(OTHER_CERT.fingerprint, ufrag="cli9"), None, 422)

    def test_bad_patches_are_refused_and_change_nothing_reoffer_new_bundle(self) -> None:
        """A re-offer with other mids and BUNDLE changes more than ICE: 422."""
        self.assert_patch_refused(
            "application/sdp",
            offer_sdp(CLIENT_CERT.fingerprint).replace("a=mid:1", "a=mid:x").replace("BUNDLE 0 1", "BUNDLE 0"),
            None,
            422,
        )

    def test_bad_patches_are_refused_and_change_nothing_unsupported_type(self) -> None:
        """A body that is neither fragment nor SDP is 415."""
        self.assert_patch_refused("text/plain", "x", None, 415)

    def test_trickled_candidates_are_accepted_and_ignored(self) -> None:
        """The same credentials with candidates: 204, no restart (an ICE-lite server checks nobody)."""
        clock = started_clock()
        transceiver, outbox = make_transceiver(clock)
        call = open_call(transceiver, clock, outbox)
        patched = transceiver.patch_session(
            call.session_id, "application/trickle-ice-sdpfrag", restart_fragment("cli1"), None
        )
        self.assertEqual(patched.status, 204)
        self.assertEqual(transceiver.ice_restarts, 0)


@implementer(IAgent)
class Replier:
    """Answers each turn 300 ms after it ends with two seconds of tone."""

    def __init__(self, session: IAgentSession) -> None:
        self.session = session

    def audio_received(self, frame: AudioFrame) -> None:
        pass

    def speech_started(self, at: float) -> None:
        pass

    def speech_stopped(self, at: float) -> None:
        samples = [int(8000 * math.sin(2 * math.pi * 300 * i / 48000)) for i in range(96000)]
        self.session.clock.callLater(0.3, self.session.send_audio, struct.pack(f"<{len(samples)}h", *samples))

    def event_received(self, event: dict[str, Any]) -> None:
        pass

    def session_ended(self, reason: str) -> None:
        pass


@implementer(IAgentFactory)
class ReplierFactory:
    sample_rate = 48000

    def agent_for(self, session: IAgentSession) -> IAgent:
        return Replier(session)


def level_db(pcm: bytes) -> float:
    """The dBFS level of PCM16 audio."""
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    power = sum(x * x for x in samples) / max(1, len(samples))
    return 10 * math.log10(max(power, 1e-10) / 32768**2)


class HeldDatagramsTests(SynchronousTestCase):
    """What a read round or a tick sends leaves in one ``write_many`` call, in order; nothing is lost."""

    def setUp(self) -> None:
        self.clock = started_clock()
        self.transceiver, self.outbox = make_transceiver(self.clock, agent_factory=PassthroughEchoAgentFactory())
        self.calls = [
            open_call(self.transceiver, self.clock, self.outbox, source=("127.0.0.1", 43000 + i)) for i in range(3)
        ]
        for call in self.calls:
            call.check()
            call.handshake()
            call.inbox.clear()
        self.batches: list[list[tuple[bytes, tuple[str, int]]]] = []
        self.failing = 0
        self.transceiver.write_many = self.write_many

    def write_many(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> tuple[int, int, int]:
        self.batches.append(list(datagrams))
        failed = min(self.failing, len(datagrams))
        for data, destination in datagrams[failed:]:
            self.outbox.setdefault(destination, []).append(data)
        return len(datagrams) - failed, sum(len(d) for d, _ in datagrams[failed:]), failed

    def test_a_read_rounds_echoes_leave_in_one_call(self) -> None:
        """Three callers' frames in one read round: their three echoes in one call, counted as sent."""
        before = self.transceiver.packets_out
        self.transceiver.read_started(False)
        for call in self.calls:
            call.send_rtp(10, TONE[0])
        self.assertEqual(self.batches, [])
        self.assertEqual([len(call.inbox) for call in self.calls], [0, 0, 0])
        self.transceiver.read_ended()
        self.assertEqual([[d for _, d in batch] for batch in self.batches], [[c.source for c in self.calls]])
        for call in self.calls:
            self.assertEqual([p.payload for p in call.received_rtp()], [TONE[0]])
        self.assertEqual(self.transceiver.packets_out, before + 3)
        self.assertEqual(self.transceiver.read_rounds, {"readable": 1})

    def test_a_full_hold_leaves_at_once_and_holding_goes_on(self) -> None:
        """At HELD_MAX held datagrams they go in one call; the rest of the round waits for its end."""
        from voiceedge.transceiver import host

        self.patch(host, "HELD_MAX", 2)
        self.transceiver.read_started(False)
        for call in self.calls:
            call.send_rtp(10, TONE[0])
        self.assertEqual([len(batch) for batch in self.batches], [2])
        self.transceiver.read_ended()
        self.assertEqual([len(batch) for batch in self.batches], [2, 1])
        for call in self.calls:
            self.assertEqual([p.payload for p in call.received_rtp()], [TONE[0]])

    def test_what_the_kernel_refuses_is_counted(self) -> None:
        """Datagrams write_many could not send are send_failed drops, not packets out."""
        self.failing = 2
        before = self.transceiver.packets_out
        self.transceiver.read_started(True)
        for call in self.calls:
            call.send_rtp(10, TONE[0])
        self.transceiver.read_ended()
        self.assertEqual(self.transceiver.packets_out, before + 1)
        self.assertEqual(self.transceiver.drops["send_failed"], 2)
        self.assertEqual(self.transceiver.read_rounds, {"poll": 1})

    def test_the_tick_sends_every_sessions_frames_in_one_call(self) -> None:
        """Bursts of two: each caller's second frame waits for its slot; the tick sends all three together."""
        self.transceiver.read_started(False)
        for call in self.calls:
            call.send_rtp(10, TONE[0])
            call.send_rtp(11, TONE[1])
        self.transceiver.read_ended()
        self.assertEqual(len(self.batches), 1)
        self.clock.advance(0.02)
        self.assertEqual(len(self.batches), 2)
        self.assertEqual(sorted(d for _, d in self.batches[1]), sorted(c.source for c in self.calls))
        for call in self.calls:
            self.assertEqual([p.payload for p in call.received_rtp()], TONE[:2])

    def test_outside_a_round_datagrams_go_at_once(self) -> None:
        """A frame that arrives outside any read round (a test, a fake port) is echoed by write, at once."""
        call = self.calls[0]
        call.send_rtp(10, TONE[0])
        self.assertEqual(self.batches, [])
        self.assertEqual([p.payload for p in call.received_rtp()], [TONE[0]])

    def test_held_datagrams_go_one_at_a_time_if_write_many_is_gone(self) -> None:
        """Should the socket's write_many go while datagrams are held, they are still sent, each by write."""
        self.transceiver.read_started(False)
        for call in self.calls:
            call.send_rtp(10, TONE[0])
        self.transceiver.write_many = None
        self.transceiver.read_ended()
        self.assertEqual(self.batches, [])
        for call in self.calls:
            self.assertEqual([p.payload for p in call.received_rtp()], [TONE[0]])

    def test_holding_does_not_nest(self) -> None:
        """Only who began holding sends; without write_many nothing is held."""
        self.assertTrue(self.transceiver.hold_datagrams())
        self.assertFalse(self.transceiver.hold_datagrams())
        self.transceiver.send_held()
        self.transceiver.write_many = None
        self.assertFalse(self.transceiver.hold_datagrams())


# The same tests with every SrtpSession on the Python path (VOICEEDGE_SRTP_IO=python).


class PythonPathWholeCallTests(PythonSrtpPath, WholeCallTests):
    """WholeCallTests with the SRTP I/O in Python."""


class PythonPathEarlyAndHostileTrafficTests(PythonSrtpPath, EarlyAndHostileTrafficTests):
    """EarlyAndHostileTrafficTests with the SRTP I/O in Python."""
