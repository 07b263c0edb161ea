"""The session, sans-I/O: datagrams and time in; datagrams, events and a deadline out.

No clock and no transceiver: every input carries a plain float ``now``.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from tests.audio_samples import tone_pcm
from tests.ice_client import binding_request
from tests.srtp_paths import PythonSrtpPath
from voiceedge.agents.interfaces import AudioFrame
from voiceedge.media.detection import DetectionSettings
from voiceedge.transceiver.dtls import DtlsCertificate, DtlsRole, DtlsState, DtlsTransport
from voiceedge.transceiver.ice import IceLiteAgent
from voiceedge.transceiver.rtp_sender import PlayoutStarted
from voiceedge.transceiver.session import AudioStream, Session, SessionState
from voiceedge.transceiver.session_events import (
    Closed,
    Connected,
    EndReason,
    MediaPathChanged,
    PathValid,
    SetupMilestone,
    UfragRetired,
)
from voiceedge.transceiver.srtp import SrtpSession
from voiceedge.wire import stun
from voiceedge.wire.rtp import RtpPacket, parse_rtp

SERVER_CERT = DtlsCertificate.generate()
CLIENT_CERT = DtlsCertificate.generate()
CLIENT = ("192.0.2.10", 50000)
SERVER_PWD = "server-password-24chars!"
CLIENT_PWD = "client-password-24chars!"
T0 = 5000.0
# A real 20 ms Opus frame of silence (CELT, TOC 0xF8) that decodes.
SILENCE = bytes([0xF8, 0xFF, 0xFE])


class Client:
    """The far end of one session: checks, DTLS client, SRTP; it answers our requests."""

    def __init__(self, session: Session, source: tuple[str, int] = CLIENT) -> None:
        self.session = session
        self.source = source
        self.dtls = DtlsTransport(CLIENT_CERT, DtlsRole.CLIENT, [("sha-256", SERVER_CERT.fingerprint)])
        self.srtp: SrtpSession | None = None
        self.inbox: list[bytes] = []
        self.events: list[object] = []
        self.username = "srv1:cli1"
        self.password = SERVER_PWD

    def send(self, data: bytes, now: float) -> None:
        self.session.receive(data, self.source, now)
        self.collect()

    def collect(self) -> None:
        for data, destination in self.session.take_datagrams():
            assert destination == self.source, (destination, self.source)
            self.inbox.append(data)
        self.events.extend(self.session.take_events())

    def answer_requests(self, now: float) -> int:
        requests = [d for d in self.inbox if d[:2] == b"\x00\x01"]
        self.inbox = [d for d in self.inbox if d[:2] != b"\x00\x01"]
        for request in requests:
            message = stun.parse_message(request)
            self.send(stun.binding_success(message, ("203.0.113.1", 3478), CLIENT_PWD.encode()), now)
        return len(requests)

    def connect(self, now: float) -> float:
        """Check (answering the return check), then DTLS; returns the time it took."""
        self.send(binding_request(self.username, self.password, use_candidate=True), now)
        self.answer_requests(now)
        for datagram in self.dtls.start(now):
            self.send(datagram, now)
        for _ in range(10):
            pending = [d for d in self.inbox if 20 <= d[0] <= 63]
            self.inbox = [d for d in self.inbox if not 20 <= d[0] <= 63]
            for datagram in pending:
                for reply in self.dtls.receive(datagram, now).datagrams:
                    self.send(reply, now)
        assert self.dtls.state is DtlsState.CONNECTED
        assert self.dtls.srtp_keys is not None
        self.srtp = SrtpSession(self.dtls.srtp_keys)
        return now

    def send_rtp(self, sequence: int, now: float, payload: bytes = SILENCE) -> None:
        assert self.srtp is not None
        packet = RtpPacket(111, sequence, sequence * 960, 99, payload).serialize()
        self.send(self.srtp.protect_rtp(packet), now)

    def rtp(self) -> list[RtpPacket]:
        assert self.srtp is not None
        packets = [
            parse_rtp(self.srtp.unprotect_rtp(d))
            for d in self.inbox
            if 128 <= d[0] <= 191 and not 192 <= d[1] <= 223
        ]
        self.inbox = [d for d in self.inbox if not (128 <= d[0] <= 191)]
        return packets


def new_session(data_channel: bool = False, mid_extension_id: int | None = None) -> Session:
    ice = IceLiteAgent("srv1", SERVER_PWD, "cli1", 30.0, remote_pwd=CLIENT_PWD, rng=random.Random(1))
    dtls = DtlsTransport(SERVER_CERT, DtlsRole.SERVER, [("sha-256", CLIENT_CERT.fingerprint)])
    audio = AudioStream(111, 0xABCD, "cname1", "0", mid_extension_id)
    return Session(
        "s1", ice, dtls, audio, T0, grid_origin=T0, data_channel=data_channel, rng=random.Random(2)
    )


class SetupTests(SynchronousTestCase):
    """A call set up on plain floats, and the events that come out of it."""

    def test_setup_waterfall_and_events(self) -> None:
        session = new_session()
        session.mark_answered(T0 + 0.0003)
        client = Client(session)
        client.collect()
        client.connect(T0 + 0.010)
        milestones = [e.name for e in client.events if isinstance(e, SetupMilestone)]
        self.assertEqual(milestones, ["answer", "first_check", "nomination", "dtls"])
        self.assertIn(PathValid(CLIENT), client.events)
        self.assertIn(Connected(T0 + 0.010), client.events)
        self.assertEqual(session.state, SessionState.CONNECTED)
        # The path was verified by the return check, before DTLS.
        self.assertTrue(session.ice.is_verified(CLIENT))
        self.assertEqual(session.waterfall_ms()["answer"], 0.3)

        client.send_rtp(1, T0 + 0.030)
        frames = [e for e in client.events if isinstance(e, AudioFrame)]
        self.assertEqual(len(frames), 1)
        session.send_audio(tone_pcm(20), T0 + 0.031)
        client.collect()
        (packet,) = client.rtp()
        self.assertEqual((packet.ssrc, packet.payload_type, packet.marker), (0xABCD, 111, True))
        milestones = [e.name for e in client.events if isinstance(e, SetupMilestone)]
        self.assertEqual(milestones[-2:], ["first_rtp_in", "first_rtp_out"])
        self.assertIn(PlayoutStarted(T0 + 0.031), client.events)
        self.assertTrue(session.wants_tick())

    def test_a_client_hello_that_overtakes_the_answer_to_our_check_waits_for_it(self) -> None:
        """A browser may send its ClientHello before its answer to our return check: DTLS is held
        until the path is verified, then answered at once (no retransmission to wait for)."""
        session = new_session()
        client = Client(session)
        client.send(binding_request(client.username, client.password, use_candidate=True), T0)
        for datagram in client.dtls.start(T0):
            client.send(datagram, T0)
        self.assertEqual([d for d in client.inbox if d[0] > 3], [])  # STUN only: response, return check
        client.inbox = [d for d in client.inbox if d[:2] != b"\x01\x01"]  # the response to our check
        self.assertEqual(client.answer_requests(T0 + 0.001), 1)
        self.assertTrue(client.inbox and all(20 <= d[0] <= 63 for d in client.inbox), client.inbox)
        for _ in range(10):
            pending, client.inbox = client.inbox, []
            for datagram in pending:
                for reply in client.dtls.receive(datagram, T0 + 0.002).datagrams:
                    client.send(reply, T0 + 0.002)
        self.assertIs(session.state, SessionState.CONNECTED)
        self.assertAlmostEqual(session.timings["dtls"], 0.002, places=6)

    def test_a_lost_answer_to_our_check_is_asked_again_while_dtls_waits(self) -> None:
        """The answer to the return check is lost and the client checks no more: the held
        ClientHello earns its source new return checks on the session's deadline, and the
        handshake goes on with the first one answered."""
        session = new_session()
        client = Client(session)
        client.send(binding_request(client.username, client.password, use_candidate=True), T0)
        client.inbox.clear()  # the response and the return check, whose answer is lost
        for datagram in client.dtls.start(T0 + 0.01):
            client.send(datagram, T0 + 0.01)
        self.assertEqual(client.inbox, [])  # the last return check went out 10 ms ago
        deadline = session.deadline()
        assert deadline is not None
        self.assertAlmostEqual(deadline, T0 + 0.5)
        session.handle_timeout(deadline)
        client.collect()
        self.assertEqual(client.answer_requests(deadline + 0.02), 1)
        self.assertTrue([d for d in client.inbox if 20 <= d[0] <= 63], "the held ClientHello was not answered")

    def test_dtls_from_an_unverified_source_is_held_within_bounds(self) -> None:
        """A source with valid checks that never answers ours gets no DTLS, whatever it sends, and
        what is held for it stays within a few datagrams and 16 KiB."""
        session = new_session()
        victim = Client(session, ("198.51.100.7", 9))
        victim.send(binding_request(victim.username, victim.password, use_candidate=True), T0)
        for datagram in victim.dtls.start(T0):
            victim.send(datagram, T0)
        for n in range(20):
            victim.send(b"\x16\xfe\xfd" + bytes(10) + b"\x0b\xb8" + bytes(3000), T0 + n / 10)
        now = T0
        while session.state is not SessionState.CLOSED:
            deadline = session.deadline()
            assert deadline is not None
            now = max(now, deadline)
            session.handle_timeout(now)
            victim.collect()
        self.assertEqual([d for d in victim.inbox if d[0] > 3], [])
        self.assertEqual(session.end_reason, EndReason.SETUP_TIMEOUT)
        self.assertGreaterEqual(session.drops["dtls_unverified"], 15)

    def test_the_deadline_drives_every_timer(self) -> None:
        """With nothing but handle_timeout at each deadline, consent checks go out and RTCP too."""
        session = new_session()
        client = Client(session)
        now = client.connect(T0 + 0.01)
        client.inbox.clear()
        rtcp = 0
        while now < T0 + 60:
            deadline = session.deadline()
            assert deadline is not None
            now = max(now, deadline)
            session.handle_timeout(now)
            client.collect()
            client.answer_requests(now)
            rtcp += sum(1 for d in client.inbox if 128 <= d[0] <= 191)
            client.inbox.clear()
        self.assertEqual(session.state, SessionState.CONNECTED)
        self.assertGreaterEqual(session.ice.consent_checks_answered, 9)
        self.assertGreaterEqual(rtcp, 6)

    def test_setup_timeout(self) -> None:
        session = new_session()
        self.assertEqual(session.deadline(), T0 + 15.0)
        session.handle_timeout(T0 + 15.0)
        self.assertEqual(session.take_events(), [Closed(EndReason.SETUP_TIMEOUT)])
        self.assertIsNone(session.deadline())

    def test_mid_extension_on_every_packet(self) -> None:
        session = new_session(mid_extension_id=4)
        client = Client(session)
        client.connect(T0)
        session.send_audio(tone_pcm(40), T0 + 0.001)
        session.tick(T0 + 0.020)
        client.collect()
        packets = client.rtp()
        self.assertEqual(len(packets), 2)
        for packet in packets:
            self.assertEqual(packet.extension, bytes([0x40]) + b"0" + bytes(2))


class PathAndRestartTests(SynchronousTestCase):
    """A client that moves, and one that restarts ICE."""

    def test_a_rebound_client_gets_media_once_verified(self) -> None:
        session = new_session()
        client = Client(session)
        client.connect(T0)
        client.send_rtp(1, T0 + 0.02)
        moved = Client(session, ("192.0.2.10", 50999))
        moved.srtp = client.srtp
        # Media from the new port before a check: not taken.
        moved.send_rtp(2, T0 + 2.0)
        self.assertEqual(session.drops["rtp_not_ready"], 1)
        moved.send(binding_request("srv1:cli1", SERVER_PWD), T0 + 2.1)
        self.assertIn(PathValid(moved.source), moved.events)
        self.assertEqual(session.ice.media_destination(), CLIENT)
        moved.answer_requests(T0 + 2.11)
        self.assertIn(MediaPathChanged(moved.source), moved.events)
        session.send_audio(tone_pcm(20), T0 + 2.2)
        moved.collect()
        self.assertEqual(len(moved.rtp()), 1)

    def test_restart_keeps_the_media_and_retires_the_old_ufrag(self) -> None:
        session = new_session()
        client = Client(session)
        client.connect(T0)
        session.restart_ice("srv2", "another-server-pwd-24chr", "cli2", CLIENT_PWD)
        client.collect()
        self.assertEqual(session.ice.local_ufrags, ["srv2", "srv1"])
        client.username, client.password = "srv2:cli2", "another-server-pwd-24chr"
        client.send(binding_request(client.username, client.password, use_candidate=True), T0 + 1)
        self.assertIn(UfragRetired("srv1"), client.events)
        self.assertEqual(session.state, SessionState.CONNECTED)
        session.send_audio(tone_pcm(20), T0 + 1.01)
        client.collect()
        self.assertEqual(len(client.rtp()), 1)

    def test_close_says_why_and_sends_close_notify(self) -> None:
        session = new_session()
        client = Client(session)
        client.connect(T0)
        client.inbox.clear()
        session.close(EndReason.HANGUP, T0 + 1)
        client.collect()
        self.assertEqual(client.events[-1], Closed(EndReason.HANGUP))
        self.assertTrue(client.inbox)  # the close_notify
        session.receive(binding_request("srv1:cli1", SERVER_PWD), CLIENT, T0 + 2)
        self.assertEqual(session.take_datagrams(), [])


class SpeechDetectionTests(SynchronousTestCase):
    """The call's one detector: [speech] to start with, a client's turn_detection after."""

    def test_a_client_turn_detection_retunes_the_detector_it_has(self) -> None:
        session = new_session()
        self.assertEqual(session.speech_detection.detector, "silero")
        session.update_speech(threshold_db=16.5, silence_ms=500, threshold=0.75)
        detection = session.speech_detection
        # Silero: the probability as the client gave it, the silence after a neutral end,
        # the final silence never longer, the hesitation never shorter.
        self.assertEqual(
            (detection.threshold, detection.neutral_silence_ms, detection.final_silence_ms),
            (0.75, 500, 200),
        )
        self.assertEqual((detection.hesitation_silence_ms, detection.threshold_db, detection.silence_ms), (1200, 16.5, 500))
        session.update_speech(threshold_db=12, silence_ms=100, threshold=0.01)
        self.assertEqual((session.speech_detection.final_silence_ms, session.speech_detection.threshold), (100, 0.2))

    def test_a_value_the_detector_refuses_changes_nothing(self) -> None:
        session = new_session()
        before = session.speech_detection
        with self.assertRaises(ValueError):
            session.set_speech_detection(DetectionSettings("energy", threshold_db=-1), T0)
        self.assertEqual(session.speech_detection, before)


# The same tests with every SrtpSession on the Python path (VOICEEDGE_SRTP_IO=python).


class PythonPathSetupTests(PythonSrtpPath, SetupTests):
    """SetupTests with the SRTP I/O in Python."""


class PythonPathPathAndRestartTests(PythonSrtpPath, PathAndRestartTests):
    """PathAndRestartTests with the SRTP I/O in Python."""


class PythonPathSpeechDetectionTests(PythonSrtpPath, SpeechDetectionTests):
    """SpeechDetectionTests with the SRTP I/O in Python."""
