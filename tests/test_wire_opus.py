"""Opus packet durations from the TOC byte."""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case, rel
from voiceedge.media.opus import OpusEncoder
from voiceedge.wire.opus import SINGLE_FRAME_SECONDS, OpusPacketError, packet_duration

DURATIONS = [
    (bytes([0 << 3 | 0]), 0.010),  # SILK 10 ms, one frame
    (bytes([3 << 3 | 1]), 0.120),  # SILK 60 ms, two frames
    (bytes([13 << 3 | 2]), 0.040),  # hybrid 20 ms, two frames
    (bytes([16 << 3 | 0]), 0.0025),  # CELT 2.5 ms
    (bytes([31 << 3 | 3, 6]), 0.120),  # CELT 20 ms x 6
]

MALFORMED = [b"", bytes([3]), bytes([3, 0]), bytes([31 << 3 | 3, 7]), bytes([3 << 3 | 3, 3])]


class PacketDurationTests(SynchronousTestCase):
    """packet_duration reads the TOC byte (RFC 6716 §3.1) and rejects what cannot be."""

    def test_a_real_20_ms_frame(self) -> None:
        """What our encoder (and every browser) sends: 20 ms."""
        self.assertApproximates(packet_duration(OpusEncoder(48000).encode(bytes(1920))), 0.02, rel(0.02))

    def test_durations_by_configuration_and_code(self) -> None:
        """Every configuration family and frame-count code."""
        for payload, seconds in DURATIONS:
            with case(f"payload {payload.hex()}"):
                self.assertApproximates(packet_duration(payload), seconds, rel(seconds))

    def test_malformed(self) -> None:
        """Empty, a code 3 packet without or with zero frames, more than 120 ms."""
        for payload in MALFORMED:
            with case(f"payload {payload.hex()}"):
                with self.assertRaises(OpusPacketError):
                    packet_duration(payload)

    @given(st.binary(max_size=4))
    def test_any_bytes_give_a_duration_or_our_error(self, payload: bytes) -> None:
        """Hostile input raises only OpusPacketError."""
        try:
            duration = packet_duration(payload)
        except OpusPacketError:
            return
        self.assertTrue(0 < duration <= 0.12, duration)


    def test_single_frame_seconds_is_packet_duration_of_code_0(self) -> None:
        """The table the receive path reads inline agrees with packet_duration for every one-frame TOC."""
        self.assertEqual(len(SINGLE_FRAME_SECONDS), 32)
        for config in range(32):
            with case(f"configuration {config}"):
                self.assertEqual(SINGLE_FRAME_SECONDS[config], packet_duration(bytes([config << 3, 0])))
