"""Tests for voiceedge.wire.demux: RFC 7983 first-byte ranges and the RFC 5761 RTP/RTCP split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from voiceedge.wire.demux import FIRST_BYTE_KIND, PacketKind, classify
from voiceedge.wire.stun import METHOD_BINDING, StunClass, build_message

K = PacketKind

FIRST_BYTE_BOUNDARIES = [
    (0, K.STUN),
    (3, K.STUN),
    (4, K.UNKNOWN),
    (15, K.UNKNOWN),
    (16, K.ZRTP),
    (19, K.ZRTP),
    (20, K.DTLS),
    (63, K.DTLS),
    (64, K.TURN_CHANNEL),
    (79, K.TURN_CHANNEL),
    (80, K.UNKNOWN),
    (127, K.UNKNOWN),
    (128, K.RTP),
    (191, K.RTP),
    (192, K.UNKNOWN),
    (255, K.UNKNOWN),
]

RTP_RANGE_FIRST_BYTES = [128, 0x80 | 0x3F, 191]

SECOND_BYTE_KINDS = [
    (0, K.RTP),
    (111, K.RTP),
    (191, K.RTP),
    (192, K.RTCP),
    (200, K.RTCP),
    (201, K.RTCP),
    (223, K.RTCP),
    (224, K.RTP),
    (255, K.RTP),
]


class FirstByteTests(SynchronousTestCase):
    """The first byte picks the protocol (RFC 7983)."""

    def test_first_byte_boundaries(self) -> None:
        """Each RFC 7983 range edge and its neighbours (second byte 0 = RTP payload type 0)."""
        for first, kind in FIRST_BYTE_BOUNDARIES:
            with case(f"first byte {first}"):
                self.assertIs(classify(bytes([first, 0])), kind)

    def test_short_packets(self) -> None:
        """Empty is UNKNOWN; a lone RTP-range byte is UNKNOWN; other kinds need one byte."""
        self.assertIs(classify(b""), K.UNKNOWN)
        self.assertIs(classify(b"\x80"), K.UNKNOWN)
        self.assertIs(classify(b"\xbf"), K.UNKNOWN)
        self.assertIs(classify(b"\x00"), K.STUN)
        self.assertIs(classify(b"\x16"), K.DTLS)

    def test_table_matches_ranges(self) -> None:
        """All 256 table entries agree with the ranges written out independently."""
        ranges = {
            K.STUN: range(0, 4),
            K.ZRTP: range(16, 20),
            K.DTLS: range(20, 64),
            K.TURN_CHANNEL: range(64, 80),
            K.RTP: range(128, 192),
        }
        self.assertEqual(len(FIRST_BYTE_KIND), 256)
        for b in range(256):
            expected = next((k for k, r in ranges.items() if b in r), K.UNKNOWN)
            self.assertIs(FIRST_BYTE_KIND[b], expected, b)

    def test_real_packets(self) -> None:
        """A STUN request, a DTLS ClientHello record, RTP Opus and RTCP SR/RR headers."""
        stun = build_message(METHOD_BINDING, StunClass.REQUEST, bytes(12), [])
        self.assertIs(classify(stun), K.STUN)
        self.assertIs(classify(bytes.fromhex("16feff0000000000000000")), K.DTLS)  # DTLS 1.0 handshake
        self.assertIs(classify(bytes.fromhex("806f0001") + bytes(8)), K.RTP)  # Opus PT 111
        self.assertIs(classify(bytes.fromhex("80ef0001") + bytes(8)), K.RTP)  # PT 111 with marker
        self.assertIs(classify(bytes.fromhex("80c80006") + bytes(24)), K.RTCP)  # SR
        self.assertIs(classify(bytes.fromhex("81c90007") + bytes(28)), K.RTCP)  # RR, one report block

    @given(st.binary(max_size=64))
    def test_total(self, data: bytes) -> None:
        """Any datagram gets exactly one PacketKind."""
        self.assertIsInstance(classify(data), PacketKind)


class RtpRtcpSplitTests(SynchronousTestCase):
    """In the RTP range, the second byte tells RTCP from RTP (RFC 5761 §4)."""

    def test_rtp_rtcp_split(self) -> None:
        """Second byte 192..223 is RTCP (RFC 5761 §4), anything else RTP."""
        for first in RTP_RANGE_FIRST_BYTES:
            for second, kind in SECOND_BYTE_KINDS:
                with case(f"first byte {first}, second byte {second}"):
                    self.assertIs(classify(bytes([first, second]) + bytes(10)), kind)
