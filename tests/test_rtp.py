"""Tests for voiceedge.wire.rtp: the RTP packet codec."""

from __future__ import annotations

from aiortc import rtp as aiortc_rtp
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
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


MALFORMED = [
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
]


OUT_OF_RANGE = [
    RtpPacket(128, 0, 0, 0, b""),
    RtpPacket(0, 0x10000, 0, 0, b""),
    RtpPacket(0, 0, 1 << 32, 0, b""),
    RtpPacket(0, 0, 0, -1, b""),
    RtpPacket(0, 0, 0, 0, b"", csrcs=tuple(range(16))),
    RtpPacket(0, 0, 0, 0, b"", padding_size=256),
    RtpPacket(0, 0, 0, 0, b"", extension_profile=1, extension=b"abc"),
    RtpPacket(0, 0, 0, 0, b"", extension=b"abcd"),
    RtpPacket(0, 0, 0, 0, b"", extension_profile=0x10000),
]


class ParseTests(SynchronousTestCase):
    """parse_rtp reads every header field (RFC 3550 §5.1) and names what is malformed."""

    def test_rtp_error_is_a_wire_error(self) -> None:
        """RtpError is the one WireError subclass the RTP parser raises."""
        self.assertTrue(issubclass(RtpError, WireError))
        self.assertTrue(issubclass(RtpError, ValueError))

    def test_parse_plain_opus_packet(self) -> None:
        """A plain 12-byte header followed by a payload parses field by field."""
        data = bytes.fromhex("80e1 1234 0000ea60 deadbeef") + b"opus"
        packet = parse_rtp(data)
        self.assertEqual(
            packet,
            RtpPacket(
                payload_type=97,
                sequence_number=0x1234,
                timestamp=60000,
                ssrc=0xDEADBEEF,
                payload=b"opus",
                marker=True,
            ),
        )
        self.assertEqual(packet.serialize(), data)

    def test_parse_with_csrcs_extension_and_padding(self) -> None:
        """CSRCs, an RFC 8285 one-byte extension block and padding are all recovered."""
        data = (
            bytes.fromhex("b26f 0001 00000002 00000003")
            + bytes.fromhex("0000000a 0000000b")
            + bytes.fromhex("bede 0001 10ff0000")
            + b"abc"
            + bytes.fromhex("000003")
        )
        packet = parse_rtp(data)
        self.assertEqual(packet.payload_type, 111)
        self.assertFalse(packet.marker)
        self.assertEqual(packet.csrcs, (10, 11))
        self.assertEqual(packet.extension_profile, 0xBEDE)
        self.assertEqual(packet.extension, bytes.fromhex("10ff0000"))
        self.assertEqual(packet.payload, b"abc")
        self.assertEqual(packet.padding_size, 3)
        self.assertEqual(packet.serialize(), data)

    def test_empty_extension_round_trips(self) -> None:
        """An extension header with zero words is distinct from no extension."""
        packet = RtpPacket(0, 1, 2, 3, b"x", extension_profile=0x1000)
        data = packet.serialize()
        self.assertEqual(data[0], 0x90)
        self.assertEqual(parse_rtp(data), packet)

    def test_malformed_packets_raise_rtp_error(self) -> None:
        """Each malformation is reported as RtpError with a message that names it."""
        for data, message in MALFORMED:
            with case(f"{message}: {data.hex()}"):
                with self.assertRaises(RtpError) as caught:
                    parse_rtp(data)
                self.assertRegex(str(caught.exception), message)

    def test_padding_may_fill_the_whole_payload(self) -> None:
        """Padding that takes every byte after the header leaves an empty payload."""
        packet = parse_rtp(bytes.fromhex("a0000000 00000000 00000000 00000004"))
        self.assertEqual(packet.payload, b"")
        self.assertEqual(packet.padding_size, 4)


class SerializeTests(SynchronousTestCase):
    """serialize and the pacer's header builder write what parse_rtp reads, and refuse what does not fit."""

    def test_serialize_rejects_out_of_range_fields(self) -> None:
        """serialize() raises RtpError, never struct.error, for fields that do not fit."""
        for packet in OUT_OF_RANGE:
            with case(str(packet)):
                with self.assertRaises(RtpError):
                    packet.serialize()

    def test_build_rtp_header_matches_serialize(self) -> None:
        """The pacer's fast header is the same bytes as a full serialize()."""
        header = build_rtp_header(111, 65535, 0xFFFFFFFF, 0x12345678, marker=True)
        self.assertEqual(len(header), 12)
        self.assertEqual(
            header + b"frame", RtpPacket(111, 65535, 0xFFFFFFFF, 0x12345678, b"frame", marker=True).serialize()
        )
        with self.assertRaises(RtpError):
            build_rtp_header(128, 0, 0, 0)
        with self.assertRaises(RtpError):
            build_rtp_header(0, 1 << 16, 0, 0)

    @given(rtp_packets())
    def test_round_trip(self, packet: RtpPacket) -> None:
        """parse_rtp(serialize(p)) == p for any valid packet."""
        self.assertEqual(parse_rtp(packet.serialize()), packet)


class HostileInputTests(SynchronousTestCase):
    """Random bytes raise only RtpError."""

    @given(st.binary(max_size=200))
    def test_random_bytes_raise_only_rtp_error(self, data: bytes) -> None:
        """Arbitrary bytes either parse or raise RtpError, nothing else."""
        try:
            packet = parse_rtp(data)
        except RtpError:
            return
        # What parses re-encodes to the same length (padding content aside).
        self.assertEqual(len(packet.serialize()), len(data))

    @given(st.binary(min_size=12, max_size=200))
    def test_version_2_random_bytes_raise_only_rtp_error(self, data: bytes) -> None:
        """With the version forced to 2, deeper checks are reached and still raise only RtpError."""
        data = bytes((0x80 | (data[0] & 0x3F),)) + data[1:]
        try:
            parse_rtp(data)
        except RtpError:
            pass


class AiortcInteropTests(SynchronousTestCase):
    """aiortc's RTP packets and ours read each other field for field."""

    def test_aiortc_packet_parses_with_ours(self) -> None:
        """A packet serialized by aiortc (with CSRCs) is read field for field by parse_rtp."""
        theirs = aiortc_rtp.RtpPacket(
            payload_type=111, marker=1, sequence_number=40000, timestamp=123456789, ssrc=0xCAFEBABE,
            payload=bytes(160),
        )
        theirs.csrc = [1, 2, 3]
        ours = parse_rtp(theirs.serialize())
        self.assertEqual(ours, RtpPacket(111, 40000, 123456789, 0xCAFEBABE, bytes(160), marker=True, csrcs=(1, 2, 3)))

    def test_our_packet_parses_with_aiortc(self) -> None:
        """A packet serialized by us (with padding) is read correctly by aiortc."""
        ours = RtpPacket(0, 7, 8000, 42, b"\xff" * 160, csrcs=(9,), padding_size=4)
        theirs = aiortc_rtp.RtpPacket.parse(ours.serialize())
        self.assertEqual(theirs.payload_type, 0)
        self.assertEqual(theirs.sequence_number, 7)
        self.assertEqual(theirs.timestamp, 8000)
        self.assertEqual(theirs.ssrc, 42)
        self.assertEqual(theirs.csrc, [9])
        self.assertEqual(theirs.payload, b"\xff" * 160)
        self.assertEqual(theirs.padding_size, 4)
