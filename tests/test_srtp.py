"""Tests for voiceedge.transceiver.srtp: SRTP/SRTCP with keys from a real DTLS handshake."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from voiceedge.transceiver.dtls import (
    AEAD_AES_128_GCM,
    AES_CM_128_HMAC_SHA1_80,
    DtlsCertificate,
    DtlsRole,
    DtlsTransport,
    SrtpKeys,
    SrtpProfile,
)
from voiceedge.transceiver.srtp import SrtpAuthError, SrtpError, SrtpReplayError, SrtpSession
from voiceedge.wire.errors import WireError

SERVER_CERT = DtlsCertificate.generate()
CLIENT_CERT = DtlsCertificate.generate()
PROFILES = [AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80]
_KEYS: dict[str, tuple[SrtpKeys, SrtpKeys]] = {}
FORGED_POSITIONS = {"timestamp": 5, "payload": 12, "mid": 100, "tag": -1}


def handshake_keys(profile: SrtpProfile) -> tuple[SrtpKeys, SrtpKeys]:
    """(server keys, client keys) from an in-memory DTLS handshake offering only ``profile``."""
    if profile.name not in _KEYS:
        server = DtlsTransport(SERVER_CERT, DtlsRole.SERVER, [("sha-256", CLIENT_CERT.fingerprint)], (profile,))
        client = DtlsTransport(CLIENT_CERT, DtlsRole.CLIENT, [("sha-256", SERVER_CERT.fingerprint)], (profile,))
        server.start(0.0)
        queue = [(server, d) for d in client.start(0.0)]
        while queue:
            target, datagram = queue.pop(0)
            other = client if target is server else server
            queue += [(other, d) for d in target.receive(datagram, 0.0).datagrams]
        assert server.srtp_keys is not None and client.srtp_keys is not None
        _KEYS[profile.name] = (server.srtp_keys, client.srtp_keys)
    return _KEYS[profile.name]


def pair(profile: SrtpProfile) -> tuple[SrtpSession, SrtpSession]:
    """Fresh (server, client) SRTP sessions for ``profile``."""
    server_keys, client_keys = handshake_keys(profile)
    return SrtpSession(server_keys), SrtpSession(client_keys)


def rtp(sequence: int, ssrc: int = 0x11223344, payload: bytes = b"\x55" * 160) -> bytes:
    """A plain RTP packet (version 2, Opus-ish payload type 111)."""
    return struct.pack("!BBHII", 0x80, 111, sequence, sequence * 960, ssrc) + payload


def rtcp_receiver_report(ssrc: int = 0x11223344) -> bytes:
    """An RTCP receiver report with one report block."""
    block = struct.pack("!IIIIII", 0xAABBCCDD, 0, 1234, 0, 0, 0)
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + block


class RoundTripTests(SynchronousTestCase):
    """Packets protected by one side unprotect on the other, with each profile's tag."""

    def test_rtp_round_trip_both_ways(self) -> None:
        """RTP protected by one side unprotects on the other, in both directions."""
        for profile in PROFILES:
            with case(profile.name):
                server, client = pair(profile)
                for sequence in range(1, 50):
                    packet = rtp(sequence)
                    protected = server.protect_rtp(packet)
                    self.assertNotEqual(protected, packet)
                    self.assertGreater(len(protected), len(packet))
                    self.assertEqual(client.unprotect_rtp(protected), packet)
                    self.assertEqual(server.unprotect_rtp(client.protect_rtp(packet)), packet)
                self.assertEqual(server.replayed, server.auth_failed)
                self.assertEqual(server.auth_failed, client.replayed)
                self.assertEqual(client.replayed, client.auth_failed)
                self.assertEqual(client.auth_failed, 0)

    def test_rtcp_round_trip_both_ways(self) -> None:
        """RTCP protected by one side unprotects on the other, in both directions."""
        for profile in PROFILES:
            with case(profile.name):
                server, client = pair(profile)
                report = rtcp_receiver_report()
                for _ in range(3):
                    self.assertEqual(client.unprotect_rtcp(server.protect_rtcp(report)), report)
                    self.assertEqual(server.unprotect_rtcp(client.protect_rtcp(report)), report)

    def test_tag_lengths(self) -> None:
        """GCM adds a 16-byte tag, AES_CM_80 a 10-byte tag (SRTCP adds a 4-byte index too)."""
        for profile in PROFILES:
            with case(profile.name):
                server, _ = pair(profile)
                tag = 16 if profile is AEAD_AES_128_GCM else 10
                self.assertEqual(len(server.protect_rtp(rtp(1))), len(rtp(1)) + tag)
                report = rtcp_receiver_report()
                self.assertEqual(len(server.protect_rtcp(report)), len(report) + 4 + tag)


class ReplayTests(SynchronousTestCase):
    """Replays are refused and counted; so is protecting one index twice."""

    def test_replayed_packet_is_rejected_and_counted(self) -> None:
        """The same SRTP/SRTCP packet twice: SrtpReplayError, counted."""
        for profile in PROFILES:
            with case(profile.name):
                server, client = pair(profile)
                protected = server.protect_rtp(rtp(7))
                client.unprotect_rtp(protected)
                with self.assertRaises(SrtpReplayError) as caught:
                    client.unprotect_rtp(protected)
                self.assertEqual(caught.exception.reason, "replay")
                self.assertEqual(client.replayed, 1)
                self.assertEqual(client.auth_failed, 0)
                protected_rtcp = server.protect_rtcp(rtcp_receiver_report())
                client.unprotect_rtcp(protected_rtcp)
                with self.assertRaises(SrtpReplayError):
                    client.unprotect_rtcp(protected_rtcp)
                self.assertEqual(client.replayed, 2)
                # Later packets still pass.
                self.assertEqual(client.unprotect_rtp(server.protect_rtp(rtp(8))), rtp(8))

    def test_packet_older_than_window_is_replay(self) -> None:
        """A packet that falls out of the replay window is reported as a replay."""
        for profile in PROFILES:
            with case(profile.name):
                server_keys, client_keys = handshake_keys(profile)
                sender, receiver = SrtpSession(server_keys), SrtpSession(client_keys, replay_window=64)
                old = sender.protect_rtp(rtp(1))
                for sequence in range(2, 200):
                    receiver.unprotect_rtp(sender.protect_rtp(rtp(sequence)))
                with self.assertRaises(SrtpReplayError):
                    receiver.unprotect_rtp(old)
                self.assertEqual(receiver.replayed, 1)

    def test_repeated_protect_is_refused(self) -> None:
        """Protecting one sequence number twice is refused: with GCM it would reuse a nonce."""
        server, _ = pair(AEAD_AES_128_GCM)
        server.protect_rtp(rtp(9))
        with self.assertRaises(SrtpReplayError):
            server.protect_rtp(rtp(9, payload=b"other"))


class ForgeryTests(SynchronousTestCase):
    """Any flipped authenticated bit fails authentication and is counted."""

    def test_forged_rtp_is_rejected_and_counted(self) -> None:
        """One flipped bit anywhere authenticated: SrtpAuthError, counted; the genuine one passes."""
        for place, position in FORGED_POSITIONS.items():
            for profile in PROFILES:
                with case(f"{profile.name}, bit flipped in the {place}"):
                    server, client = pair(profile)
                    protected = server.protect_rtp(rtp(3))
                    forged = bytearray(protected)
                    forged[position] ^= 0x01
                    with self.assertRaises(SrtpAuthError) as caught:
                        client.unprotect_rtp(bytes(forged))
                    self.assertEqual(caught.exception.reason, "auth")
                    self.assertEqual(client.auth_failed, 1)
                    self.assertEqual(client.replayed, 0)
                    # A forgery must not consume the genuine packet's index.
                    self.assertEqual(client.unprotect_rtp(protected), rtp(3))

    def test_forged_rtcp_is_rejected_and_counted(self) -> None:
        """One flipped bit in an SRTCP packet: SrtpAuthError, counted."""
        for profile in PROFILES:
            with case(profile.name):
                server, client = pair(profile)
                protected = bytearray(server.protect_rtcp(rtcp_receiver_report()))
                protected[10] ^= 0x80
                with self.assertRaises(SrtpAuthError):
                    client.unprotect_rtcp(bytes(protected))
                self.assertEqual(client.auth_failed, 1)

    def test_wrong_direction_key_fails_auth(self) -> None:
        """A packet we protected cannot be unprotected by ourselves (directions have distinct keys)."""
        server, _ = pair(AEAD_AES_128_GCM)
        with self.assertRaises(SrtpAuthError):
            server.unprotect_rtp(server.protect_rtp(rtp(1)))


class MalformedInputTests(SynchronousTestCase):
    """Malformed packets and bad keys raise clear errors, and only SrtpError for packets."""

    def test_malformed_packets(self) -> None:
        """Short or non-RTP input raises SrtpError("malformed"), a WireError, and is counted."""
        for profile in PROFILES:
            with case(profile.name):
                server, client = pair(profile)
                protected = server.protect_rtp(rtp(1))
                for bad in (b"", b"\x80", protected[:20], b"\x00" * 40):
                    with self.assertRaises(SrtpError) as caught:
                        client.unprotect_rtp(bad)
                    self.assertEqual(caught.exception.reason, "malformed")
                    self.assertIsInstance(caught.exception, WireError)
                for bad in (b"", protected[:8], b"\x40" * 40):
                    with self.assertRaises(SrtpError):
                        client.unprotect_rtcp(bad)
                with self.assertRaises(SrtpError):
                    server.protect_rtp(b"\x80\x00")
                with self.assertRaises(SrtpError):
                    server.protect_rtp(rtp(2, payload=b"x" * 2000))
                self.assertEqual(client.malformed, 7)

    def test_size_bounds_of_the_session_buffer(self) -> None:
        """The longest packet the buffer takes round-trips; a longer one is malformed, and the session goes on."""
        for profile in PROFILES:
            with case(profile.name):
                server, client = pair(profile)
                longest = rtp(1, payload=b"\x55" * (1500 - 144 - 12))
                self.assertEqual(client.unprotect_rtp(server.protect_rtp(longest)), longest)
                with self.assertRaises(SrtpError) as caught:
                    server.protect_rtp(rtp(2, payload=b"\x55" * (1500 - 144 - 11)))
                self.assertEqual(caught.exception.reason, "malformed")
                # An offered-and-learned SSRC's packet beyond the buffer: refused before libsrtp.
                with self.assertRaises(SrtpError) as caught:
                    client.unprotect_rtp(rtp(3, payload=b"\x55" * 1600))
                self.assertEqual(caught.exception.reason, "malformed")
                self.assertEqual(client.unprotect_rtp(server.protect_rtp(rtp(4))), rtp(4))

    def test_bad_keys_raise_value_error(self) -> None:
        """Keys of the wrong length are a ValueError at construction."""
        with self.assertRaises(ValueError):
            SrtpSession(SrtpKeys(AEAD_AES_128_GCM.libsrtp_profile, b"short", b"short"))

    @settings(max_examples=300, deadline=None)
    @given(profile=st.sampled_from(PROFILES), data=st.binary(max_size=1600))
    def test_random_bytes_raise_only_srtp_error(self, profile: SrtpProfile, data: bytes) -> None:
        """unprotect of random bytes raises SrtpError subclasses only."""
        _, client = pair(profile)
        for unprotect in (client.unprotect_rtp, client.unprotect_rtcp):
            try:
                unprotect(data)
            except SrtpError as exc:
                self.assertIn(exc.reason, {"replay", "auth", "malformed"})
