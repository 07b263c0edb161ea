"""Tests for the inbound bounds of voiceedge.transceiver.srtp: few SSRCs, a packet budget."""

from __future__ import annotations

import struct

from pylibsrtp import Policy
from twisted.trial.unittest import SynchronousTestCase

from tests.srtp_paths import PythonSrtpPath
from voiceedge.transceiver.dtls import SrtpKeys
from voiceedge.transceiver.srtp import (
    MAX_LEARNED_SSRCS,
    MAX_OFFERED_SSRCS,
    PacketBudget,
    RtpFields,
    SrtpError,
    SrtpSession,
)

PROFILES = (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
SERVER_KEY = bytes(range(1, 31))
CLIENT_KEY = bytes(range(101, 131))


def keys(profile: int) -> tuple[SrtpKeys, SrtpKeys]:
    """(server keys, client keys): each side's remote key is the other's local key."""
    size = 28 if profile == Policy.SRTP_PROFILE_AEAD_AES_128_GCM else 30
    server, client = SERVER_KEY[:size], CLIENT_KEY[:size]
    return SrtpKeys(profile, server, client), SrtpKeys(profile, client, server)


def rtp(sequence: int, ssrc: int) -> bytes:
    """A plain RTP packet of payload type 111."""
    return struct.pack("!BBHII", 0x80, 111, sequence, sequence * 960, ssrc) + b"\x55" * 80


def receiver_report(ssrc: int) -> bytes:
    """An RTCP receiver report with no blocks from ``ssrc``."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


class InboundSsrcTests(SynchronousTestCase):
    """Only offered SSRCs and a few learned ones are accepted, whatever a caller sends."""

    def test_learned_ssrcs_are_capped(self) -> None:
        """After MAX_LEARNED_SSRCS authenticated SSRCs, a new one is refused as "ssrc"."""
        for profile in PROFILES:
            server_keys, client_keys = keys(profile)
            server, client = SrtpSession(server_keys), SrtpSession(client_keys)
            for ssrc in range(1, MAX_LEARNED_SSRCS + 1):
                self.assertEqual(server.unprotect_rtp(client.protect_rtp(rtp(1, ssrc))), rtp(1, ssrc))
            for ssrc in range(1000, 1100):
                with self.assertRaises(SrtpError) as caught:
                    server.unprotect_rtp(client.protect_rtp(rtp(1, ssrc)))
                self.assertEqual(caught.exception.reason, "ssrc")
            self.assertEqual(server.ssrc_refused, 100)
            self.assertEqual(server.inbound_ssrcs, frozenset(range(1, MAX_LEARNED_SSRCS + 1)))
            # The accepted ones still work.
            self.assertEqual(server.unprotect_rtp(client.protect_rtp(rtp(2, 1))), rtp(2, 1))

    def test_offered_ssrcs_are_accepted_besides_learned_ones(self) -> None:
        """SSRCs from the offer count apart from the learned ones."""
        server_keys, client_keys = keys(PROFILES[0])
        offered = [0xAAAA0000 + n for n in range(3)]
        server, client = SrtpSession(server_keys, offered_ssrcs=offered), SrtpSession(client_keys)
        for ssrc in offered + list(range(1, MAX_LEARNED_SSRCS + 1)):
            server.unprotect_rtp(client.protect_rtp(rtp(1, ssrc)))
        with self.assertRaises(SrtpError):
            server.unprotect_rtp(client.protect_rtp(rtp(1, 77)))
        self.assertEqual(len(server.inbound_ssrcs), 3 + MAX_LEARNED_SSRCS)

    def test_offered_ssrcs_are_capped(self) -> None:
        """An offer listing thousands of SSRCs makes at most MAX_OFFERED_SSRCS streams."""
        server = SrtpSession(keys(PROFILES[0])[0], offered_ssrcs=range(5000))
        self.assertEqual(len(server.inbound_ssrcs), MAX_OFFERED_SSRCS)

    def test_forged_packets_take_no_place(self) -> None:
        """Packets that fail authentication leave the bound free for the real caller."""
        server_keys, client_keys = keys(PROFILES[1])
        server, client = SrtpSession(server_keys), SrtpSession(client_keys)
        forger = SrtpSession(SrtpKeys(client_keys.profile, bytes(30), bytes(30)))
        for ssrc in range(500, 600):
            with self.assertRaises(SrtpError) as caught:
                server.unprotect_rtp(forger.protect_rtp(rtp(1, ssrc)))
            self.assertEqual(caught.exception.reason, "auth")
        self.assertEqual(server.inbound_ssrcs, frozenset())
        self.assertEqual(server.unprotect_rtp(client.protect_rtp(rtp(1, 9))), rtp(1, 9))

    def test_rtcp_shares_the_bound(self) -> None:
        """SRTCP from the learned SSRCs is accepted; from a new one past the cap, refused."""
        server_keys, client_keys = keys(PROFILES[0])
        server, client = SrtpSession(server_keys), SrtpSession(client_keys)
        for ssrc in range(1, MAX_LEARNED_SSRCS + 1):
            server.unprotect_rtp(client.protect_rtp(rtp(1, ssrc)))
        self.assertEqual(server.unprotect_rtcp(client.protect_rtcp(receiver_report(1))), receiver_report(1))
        with self.assertRaises(SrtpError) as caught:
            server.unprotect_rtcp(client.protect_rtcp(receiver_report(999)))
        self.assertEqual(caught.exception.reason, "ssrc")

    def test_replay_still_detected_on_a_learned_ssrc(self) -> None:
        """A learned SSRC's stream keeps its replay window."""
        server_keys, client_keys = keys(PROFILES[0])
        server, client = SrtpSession(server_keys), SrtpSession(client_keys)
        packet = client.protect_rtp(rtp(5, 42))
        server.unprotect_rtp(packet)
        with self.assertRaises(SrtpError) as caught:
            server.unprotect_rtp(packet)
        self.assertEqual(caught.exception.reason, "replay")


class PacketBudgetTests(SynchronousTestCase):
    """The token bucket the receive path asks before decrypting."""

    def test_burst_then_rate(self) -> None:
        """A burst passes, then one packet per 1/rate seconds."""
        budget = PacketBudget(rate=100.0, burst=10.0)
        self.assertEqual(sum(budget.allow(0.0) for _ in range(50)), 10)
        self.assertEqual(budget.refused, 40)
        self.assertFalse(budget.allow(0.005))
        self.assertTrue(budget.allow(0.011))
        # A long pause refills only up to the burst.
        self.assertEqual(sum(budget.allow(100.0) for _ in range(50)), 10)

    def test_time_going_backwards_gives_nothing(self) -> None:
        """A clock step backwards never adds tokens."""
        budget = PacketBudget(rate=100.0, burst=2.0)
        budget.allow(10.0)
        budget.allow(10.0)
        self.assertFalse(budget.allow(5.0))


class CountingSrtp:
    """A real :class:`SrtpSession` whose unprotect calls are counted (the cost of decryption)."""

    def __init__(self, inner: SrtpSession) -> None:
        self.inner = inner
        self.rtp_calls = 0
        self.rtcp_calls = 0

    def unprotect_rtp(self, packet: bytes) -> bytes:
        self.rtp_calls += 1
        return self.inner.unprotect_rtp(packet)

    def read_rtp(self, packet: bytes) -> RtpFields:
        """The receiver's path (unprotect and the header in one call), counted alike."""
        self.rtp_calls += 1
        return self.inner.read_rtp(packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        self.rtcp_calls += 1
        return self.inner.unprotect_rtcp(packet)


class FloodTests(SynchronousTestCase):
    """A connected session under a flood from the caller's own address: the budget is asked
    before any decryption, and a real caller's rate and bursts stay within it."""

    def setUp(self) -> None:
        from tests.test_session import T0, Client, new_session

        self.session = new_session()
        self.client = Client(self.session)
        self.now = self.client.connect(T0)
        receiver = self.session.receiver
        assert receiver is not None and self.session._srtp is not None
        self.counting = CountingSrtp(self.session._srtp)
        receiver.srtp = self.counting  # type: ignore[assignment]
        self.session._srtp = self.counting  # type: ignore[assignment]
        self.sequence = 0

    def talk(self, seconds: float, rate: float = 50.0) -> None:
        """A caller's audio: ``rate`` packets a second for ``seconds``."""
        for _ in range(round(seconds * rate)):
            self.sequence += 1
            self.client.send_rtp(self.sequence, self.now)
            self.now += 1 / rate

    def forged(self, count: int) -> list[bytes]:
        """SRTP packets of the caller's SSRC, keyed as the caller's, whose tags do not verify."""
        assert self.client.dtls.srtp_keys is not None
        forger = SrtpSession(self.client.dtls.srtp_keys)
        packets = []
        for n in range(count):
            packet = bytearray(forger.protect_rtp(rtp(10_000 + n, 99)))
            packet[-1] ^= 1
            packets.append(bytes(packet))
        return packets

    def test_a_flood_costs_no_decryption_beyond_the_budget(self) -> None:
        """10,000 forged packets in one second: at most burst + rate decryptions, the rest
        refused as rtp_over_rate; the caller's audio goes on once the flood stops."""
        from voiceedge.transceiver.rtp_receiver import RTP_PACKET_BURST, RTP_PACKET_RATE

        flood = self.forged(10_000)
        start = self.now
        for n, packet in enumerate(flood):
            self.session.receive(packet, self.client.source, start + n / 10_000)
        self.now = start + 1.0
        drops = self.session.drops
        self.assertLessEqual(self.counting.rtp_calls, RTP_PACKET_BURST + RTP_PACKET_RATE * 1.0 + 1)
        self.assertEqual(drops["rtp_over_rate"] + drops["srtp_auth"], 10_000)
        self.assertEqual(drops["srtp_auth"], self.counting.rtp_calls)
        self.assertGreater(drops["rtp_over_rate"], 9_500)
        # Once it stops, the budget refills and the caller is heard again.
        received = self.session.receiver.stats.packets_received  # type: ignore[union-attr]
        self.now += 1.0
        self.talk(1.0)
        self.assertEqual(self.session.receiver.stats.packets_received - received, 50)  # type: ignore[union-attr]

    def test_real_callers_are_within_the_budget(self) -> None:
        """50 packets/s (20 ms), 100 packets/s (10 ms ptime), and a 3 s stall's backlog
        released at once: nothing refused."""
        self.talk(5.0, rate=50.0)
        self.talk(5.0, rate=100.0)
        self.now += 3.0
        for _ in range(150):  # 3 s of 20 ms packets, all at one instant
            self.sequence += 1
            self.client.send_rtp(self.sequence, self.now)
        self.assertEqual(self.session.drops["rtp_over_rate"], 0, self.session.drops)
        self.assertEqual(self.counting.rtp_calls, 250 + 500 + 150)

    def test_an_srtcp_flood_has_its_own_smaller_budget(self) -> None:
        """Forged SRTCP: at most burst + rate decryptions; RTP is not starved by it."""
        from voiceedge.transceiver.session import RTCP_PACKET_BURST, RTCP_PACKET_RATE

        assert self.client.srtp is not None
        genuine = self.client.srtp.protect_rtcp(receiver_report(99))
        forged = bytearray(genuine)
        forged[-5] ^= 1  # in the tag, before the 4-byte SRTCP index
        start = self.now
        for n in range(5_000):
            self.session.receive(bytes(forged), self.client.source, start + n / 5_000)
        self.now = start + 1.0
        self.assertLessEqual(self.counting.rtcp_calls, RTCP_PACKET_BURST + RTCP_PACKET_RATE * 1.0 + 1)
        self.assertGreater(self.session.drops["rtcp_over_rate"], 4_900)
        self.talk(1.0)
        self.assertEqual(self.session.drops["rtp_over_rate"], 0)

    def test_a_real_callers_reports_are_within_the_budget(self) -> None:
        """A report a second for a minute, and a few at once after a stall: none refused."""
        assert self.client.srtp is not None
        for _ in range(60):
            self.client.send(self.client.srtp.protect_rtcp(receiver_report(99)), self.now)
            self.now += 1.0
        for _ in range(5):
            self.client.send(self.client.srtp.protect_rtcp(receiver_report(99)), self.now)
        self.assertEqual(self.session.drops["rtcp_over_rate"], 0, self.session.drops)
        self.assertEqual(self.counting.rtcp_calls, 65)


class OfferedSsrcTests(SynchronousTestCase):
    """The SSRCs an offer names with ``a=ssrc`` reach the call's SRTP: accepted from the first
    packet, without taking the places of learned ones."""

    def test_the_offers_ssrcs_are_accepted_and_the_rest_bounded(self) -> None:
        from twisted.internet.task import Clock

        from tests.test_host import CLIENT_CERT, TONE, make_transceiver, offer_sdp, open_call

        clock = Clock()
        clock.advance(1_700_000_000)
        transceiver, outbox = make_transceiver(clock)
        offer = offer_sdp(CLIENT_CERT.fingerprint).replace(
            "a=rtcp-mux\r\n", "a=rtcp-mux\r\na=ssrc:1111 cname:caller\r\na=ssrc:2222 cname:caller\r\n", 1
        )
        call = open_call(transceiver, clock, outbox, offer=offer)
        call.check()
        call.handshake()
        session = transceiver.session(call.session_id)
        assert session is not None and session.receiver is not None
        self.assertEqual(session.audio.remote_ssrcs, (1111, 2222))
        self.assertEqual(session.receiver.srtp.inbound_ssrcs, frozenset({1111, 2222}))
        others = [3000 + n for n in range(MAX_LEARNED_SSRCS + 1)]
        for sequence, ssrc in enumerate([1111, 2222, *others], start=1):
            call.send_rtp(sequence, TONE[0], ssrc=ssrc)
        self.assertEqual(session.receiver.srtp.inbound_ssrcs, frozenset({1111, 2222, *others[:-1]}))
        self.assertEqual(transceiver.drops["srtp_ssrc"], 1)


# The same tests with every SrtpSession on the Python path (VOICEEDGE_SRTP_IO=python).


class PythonPathInboundSsrcTests(PythonSrtpPath, InboundSsrcTests):
    """InboundSsrcTests with the SRTP I/O in Python."""


class PythonPathFloodTests(PythonSrtpPath, FloodTests):
    """FloodTests with the SRTP I/O in Python."""


class PythonPathOfferedSsrcTests(PythonSrtpPath, OfferedSsrcTests):
    """OfferedSsrcTests with the SRTP I/O in Python."""
