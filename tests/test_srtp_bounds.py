"""Tests for the inbound bounds of voiceedge.transceiver.srtp: few SSRCs, a packet budget."""

from __future__ import annotations

import struct

from pylibsrtp import Policy
from twisted.trial.unittest import SynchronousTestCase

from voiceedge.transceiver.dtls import SrtpKeys
from voiceedge.transceiver.srtp import (
    MAX_LEARNED_SSRCS,
    MAX_OFFERED_SSRCS,
    PacketBudget,
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
