"""Opus packet durations from the TOC byte."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from voiceedge.media.opus import OpusEncoder
from voiceedge.wire.opus import OpusPacketError, packet_duration


def test_a_real_20_ms_frame() -> None:
    """What our encoder (and every browser) sends: 20 ms."""
    assert packet_duration(OpusEncoder(48000).encode(bytes(1920))) == pytest.approx(0.02)


@pytest.mark.parametrize(
    "payload, seconds",
    [
        (bytes([0 << 3 | 0]), 0.010),  # SILK 10 ms, one frame
        (bytes([3 << 3 | 1]), 0.120),  # SILK 60 ms, two frames
        (bytes([13 << 3 | 2]), 0.040),  # hybrid 20 ms, two frames
        (bytes([16 << 3 | 0]), 0.0025),  # CELT 2.5 ms
        (bytes([31 << 3 | 3, 6]), 0.120),  # CELT 20 ms x 6
    ],
)
def test_durations_by_configuration_and_code(payload: bytes, seconds: float) -> None:
    """Every configuration family and frame-count code."""
    assert packet_duration(payload) == pytest.approx(seconds)


@pytest.mark.parametrize("payload", [b"", bytes([3]), bytes([3, 0]), bytes([31 << 3 | 3, 7]), bytes([3 << 3 | 3, 3])])
def test_malformed(payload: bytes) -> None:
    """Empty, a code 3 packet without or with zero frames, more than 120 ms."""
    with pytest.raises(OpusPacketError):
        packet_duration(payload)


@given(st.binary(max_size=4))
def test_any_bytes_give_a_duration_or_our_error(payload: bytes) -> None:
    """Hostile input raises only OpusPacketError."""
    try:
        assert 0 < packet_duration(payload) <= 0.12
    except OpusPacketError:
        pass
