"""Tests for voiceedge.wire.demux: RFC 7983 first-byte ranges and the RFC 5761 RTP/RTCP split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voiceedge.wire.demux import FIRST_BYTE_KIND, PacketKind, classify
from voiceedge.wire.stun import METHOD_BINDING, StunClass, build_message

K = PacketKind


@pytest.mark.parametrize(
    ("first", "kind"),
    [
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
    ],
)
def test_first_byte_boundaries(first: int, kind: PacketKind) -> None:
    """Each RFC 7983 range edge and its neighbours (second byte 0 = RTP payload type 0)."""
    assert classify(bytes([first, 0])) is kind


@pytest.mark.parametrize(
    ("second", "kind"),
    [
        (0, K.RTP),
        (111, K.RTP),
        (191, K.RTP),
        (192, K.RTCP),
        (200, K.RTCP),
        (201, K.RTCP),
        (223, K.RTCP),
        (224, K.RTP),
        (255, K.RTP),
    ],
)
@pytest.mark.parametrize("first", [128, 0x80 | 0x3F, 191])
def test_rtp_rtcp_split(first: int, second: int, kind: PacketKind) -> None:
    """Second byte 192..223 is RTCP (RFC 5761 §4), anything else RTP."""
    assert classify(bytes([first, second]) + bytes(10)) is kind


def test_short_packets() -> None:
    """Empty is UNKNOWN; a lone RTP-range byte is UNKNOWN; other kinds need one byte."""
    assert classify(b"") is K.UNKNOWN
    assert classify(b"\x80") is K.UNKNOWN
    assert classify(b"\xbf") is K.UNKNOWN
    assert classify(b"\x00") is K.STUN
    assert classify(b"\x16") is K.DTLS


def test_table_matches_ranges() -> None:
    """All 256 table entries agree with the ranges written out independently."""
    ranges = {
        K.STUN: range(0, 4),
        K.ZRTP: range(16, 20),
        K.DTLS: range(20, 64),
        K.TURN_CHANNEL: range(64, 80),
        K.RTP: range(128, 192),
    }
    assert len(FIRST_BYTE_KIND) == 256
    for b in range(256):
        expected = next((k for k, r in ranges.items() if b in r), K.UNKNOWN)
        assert FIRST_BYTE_KIND[b] is expected, b


def test_real_packets() -> None:
    """A STUN request, a DTLS ClientHello record, RTP Opus and RTCP SR/RR headers."""
    stun = build_message(METHOD_BINDING, StunClass.REQUEST, bytes(12), [])
    assert classify(stun) is K.STUN
    assert classify(bytes.fromhex("16feff0000000000000000")) is K.DTLS  # DTLS 1.0 handshake
    assert classify(bytes.fromhex("806f0001") + bytes(8)) is K.RTP  # Opus PT 111
    assert classify(bytes.fromhex("80ef0001") + bytes(8)) is K.RTP  # PT 111 with marker
    assert classify(bytes.fromhex("80c80006") + bytes(24)) is K.RTCP  # SR
    assert classify(bytes.fromhex("81c90007") + bytes(28)) is K.RTCP  # RR, one report block


@given(st.binary(max_size=64))
def test_total(data: bytes) -> None:
    """Any datagram gets exactly one PacketKind."""
    assert isinstance(classify(data), PacketKind)
