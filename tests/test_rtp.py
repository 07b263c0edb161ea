"""Tests for voiceedge.wire.rtp: the RTP packet codec."""

from __future__ import annotations

import pytest
from aiortc import rtp as aiortc_rtp
from hypothesis import given
from hypothesis import strategies as st

from voiceedge.wire.errors import WireError
from voiceedge.wire.rtp import RtpError, RtpPacket, build_rtp_header, parse_rtp

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def rtp_packets(draw: st.DrawFn) -> RtpPacket:
    """Any RtpPacket that serialize() accepts."""
    extension_profile = draw(st.none() | u16)
    extension = b""
    if extension_profile is not None:
        extension = draw(st.binary(max_size=64))
        extension += bytes(-len(extension) % 4)
    return RtpPacket(
        payload_type=draw(st.integers(0, 127)),
        sequence_number=draw(u16),
        timestamp=draw(u32),
        ssrc=draw(u32),
        payload=draw(st.binary(max_size=300)),
        marker=draw(st.booleans()),
        csrcs=tuple(draw(st.lists(u32, max_size=15))),
        extension_profile=extension_profile,
        extension=extension,
        padding_size=draw(st.integers(0, 255)),
    )


def test_rtp_error_is_a_wire_error() -> None:
    """RtpError is the one WireError subclass the RTP parser raises."""
    assert issubclass(RtpError, WireError)
    assert issubclass(RtpError, ValueError)


def test_parse_plain_opus_packet() -> None:
    """A plain 12-byte header followed by a payload parses field by field."""
    data = bytes.fromhex("80e1 1234 0000ea60 deadbeef") + b"opus"
    packet = parse_rtp(data)
    assert packet == RtpPacket(
        payload_type=97,
        sequence_number=0x1234,
        timestamp=60000,
        ssrc=0xDEADBEEF,
        payload=b"opus",
        marker=True,
    )
    assert packet.serialize() == data


def test_parse_with_csrcs_extension_and_padding() -> None:
    """CSRCs, an RFC 8285 one-byte extension block and padding are all recovered."""
    data = (
        bytes.fromhex("b26f 0001 00000002 00000003")
        + bytes.fromhex("0000000a 0000000b")
        + bytes.fromhex("bede 0001 10ff0000")
        + b"abc"
        + bytes.fromhex("000003")
    )
    packet = parse_rtp(data)
    assert packet.payload_type == 111
    assert not packet.marker
    assert packet.csrcs == (10, 11)
    assert packet.extension_profile == 0xBEDE
    assert packet.extension == bytes.fromhex("10ff0000")
    assert packet.payload == b"abc"
    assert packet.padding_size == 3
    assert packet.serialize() == data


def test_empty_extension_round_trips() -> None:
    """An extension header with zero words is distinct from no extension."""
    packet = RtpPacket(0, 1, 2, 3, b"x", extension_profile=0x1000)
    data = packet.serialize()
    assert data[0] == 0x90
    assert parse_rtp(data) == packet


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "shorter"),
        (bytes(11), "shorter"),
        (bytes.fromhex("40000000000000000000000000"), "version"),
        (bytes.fromhex("c0000000000000000000000000"), "version"),
        (bytes.fromhex("82000000000000000000000000000000"), "CSRC"),
        (bytes.fromhex("90000000000000000000000000"), "extension"),
        (bytes.fromhex("900000000000000000000000 bede0002 00000000"), "extension"),
        (bytes.fromhex("a00000000000000000000000 00"), "padding"),
        (bytes.fromhex("a00000000000000000000000 0005"), "padding"),
        (bytes.fromhex("a00000000000000000000000"), "padding"),
    ],
)
def test_malformed_packets_raise_rtp_error(data: bytes, message: str) -> None:
    """Each malformation is reported as RtpError with a message that names it."""
    with pytest.raises(RtpError, match=message):
        parse_rtp(data)


def test_padding_may_fill_the_whole_payload() -> None:
    """Padding that takes every byte after the header leaves an empty payload."""
    packet = parse_rtp(bytes.fromhex("a0000000 00000000 00000000 00000004"))
    assert packet.payload == b""
    assert packet.padding_size == 4


@pytest.mark.parametrize(
    "packet",
    [
        RtpPacket(128, 0, 0, 0, b""),
        RtpPacket(0, 0x10000, 0, 0, b""),
        RtpPacket(0, 0, 1 << 32, 0, b""),
        RtpPacket(0, 0, 0, -1, b""),
        RtpPacket(0, 0, 0, 0, b"", csrcs=tuple(range(16))),
        RtpPacket(0, 0, 0, 0, b"", padding_size=256),
        RtpPacket(0, 0, 0, 0, b"", extension_profile=1, extension=b"abc"),
        RtpPacket(0, 0, 0, 0, b"", extension=b"abcd"),
        RtpPacket(0, 0, 0, 0, b"", extension_profile=0x10000),
    ],
)
def test_serialize_rejects_out_of_range_fields(packet: RtpPacket) -> None:
    """serialize() raises RtpError, never struct.error, for fields that do not fit."""
    with pytest.raises(RtpError):
        packet.serialize()


def test_build_rtp_header_matches_serialize() -> None:
    """The pacer's fast header is the same bytes as a full serialize()."""
    header = build_rtp_header(111, 65535, 0xFFFFFFFF, 0x12345678, marker=True)
    assert len(header) == 12
    assert header + b"frame" == RtpPacket(
        111, 65535, 0xFFFFFFFF, 0x12345678, b"frame", marker=True
    ).serialize()
    with pytest.raises(RtpError):
        build_rtp_header(128, 0, 0, 0)
    with pytest.raises(RtpError):
        build_rtp_header(0, 1 << 16, 0, 0)


@given(rtp_packets())
def test_round_trip(packet: RtpPacket) -> None:
    """parse_rtp(serialize(p)) == p for any valid packet."""
    assert parse_rtp(packet.serialize()) == packet


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_rtp_error(data: bytes) -> None:
    """Arbitrary bytes either parse or raise RtpError, nothing else."""
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    # What parses re-encodes to the same length (padding content aside).
    assert len(packet.serialize()) == len(data)


@given(st.binary(min_size=12, max_size=200))
def test_version_2_random_bytes_raise_only_rtp_error(data: bytes) -> None:
    """With the version forced to 2, deeper checks are reached and still raise only RtpError."""
    data = bytes((0x80 | (data[0] & 0x3F),)) + data[1:]
    try:
        parse_rtp(data)
    except RtpError:
        pass


def test_aiortc_packet_parses_with_ours() -> None:
    """A packet serialized by aiortc (with CSRCs) is read field for field by parse_rtp."""
    theirs = aiortc_rtp.RtpPacket(
        payload_type=111, marker=1, sequence_number=40000, timestamp=123456789, ssrc=0xCAFEBABE,
        payload=bytes(160),
    )
    theirs.csrc = [1, 2, 3]
    ours = parse_rtp(theirs.serialize())
    assert ours == RtpPacket(
        111, 40000, 123456789, 0xCAFEBABE, bytes(160), marker=True, csrcs=(1, 2, 3)
    )


def test_our_packet_parses_with_aiortc() -> None:
    """A packet serialized by us (with padding) is read correctly by aiortc."""
    ours = RtpPacket(0, 7, 8000, 42, b"\xff" * 160, csrcs=(9,), padding_size=4)
    theirs = aiortc_rtp.RtpPacket.parse(ours.serialize())
    assert theirs.payload_type == 0
    assert theirs.sequence_number == 7
    assert theirs.timestamp == 8000
    assert theirs.ssrc == 42
    assert theirs.csrc == [9]
    assert theirs.payload == b"\xff" * 160
    assert theirs.padding_size == 4
