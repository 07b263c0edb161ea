"""Tests for voiceedge.wire.rtcp: compound RTCP and NTP time helpers."""

from __future__ import annotations

from aiortc import rtp as aiortc_rtp
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from voiceedge.wire.errors import WireError
from voiceedge.wire.rtcp import (
    NTP_EPOCH_OFFSET,
    RTCP_APP,
    RTCP_PSFB,
    RTCP_RTPFB,
    RTCP_SR,
    RTCP_XR,
    SDES_CNAME,
    Goodbye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    build_rtcp,
    from_ntp,
    is_rtcp,
    middle32_to_seconds,
    ntp_middle32,
    parse_rtcp,
    seconds_to_middle32,
    to_ntp,
)

u32 = st.integers(0, 0xFFFFFFFF)

report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    cumulative_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_sequence=u32,
    jitter=u32,
    last_sr=u32,
    delay_since_last_sr=u32,
)
sender_reports = st.builds(
    SenderReport,
    ssrc=u32,
    ntp_timestamp=st.integers(0, (1 << 64) - 1),
    rtp_timestamp=u32,
    packet_count=u32,
    octet_count=u32,
    reports=st.lists(report_blocks, max_size=31),
)
receiver_reports = st.builds(
    ReceiverReport, ssrc=u32, reports=st.lists(report_blocks, max_size=31)
)
sdes_items = st.tuples(st.integers(1, 255), st.binary(max_size=255))
source_descriptions = st.builds(
    SourceDescription,
    chunks=st.lists(st.tuples(u32, st.lists(sdes_items, max_size=4)), max_size=31),
)
goodbyes = st.builds(
    Goodbye, ssrcs=st.lists(u32, max_size=31), reason=st.none() | st.binary(max_size=255)
)
unknowns = st.builds(
    UnknownRtcp,
    packet_type=st.integers(204, 223),
    count=st.integers(0, 31),
    body=st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 4)),
)
rtcp_packets: st.SearchStrategy[RtcpPacket] = st.one_of(
    sender_reports, receiver_reports, source_descriptions, goodbyes, unknowns
)


def block(ssrc: int = 0x11111111, lost: int = 3) -> ReportBlock:
    """A report block with recognisable values."""
    return ReportBlock(ssrc, 25, lost, 70000, 120, 0xAABBCCDD, 65536)


BYE_REASONS = [
    (None, ""),
    (b"", "00000000"),
    (b"abc", "03616263"),
    (b"abcd", "0461626364000000"),
]


MALFORMED = [
    ("", "empty"),
    ("80c9", "truncated"),
    ("80c90001 00000001 80", "truncated"),
    ("40c90001 00000001", "version"),
    ("80600001 00000001", "type"),
    ("80e00001 00000001", "type"),
    ("80c90002 00000001", "exceeds"),
    ("81c90001 00000001", "RR"),
    ("80c80001 00000001", "SR"),
    ("a0c90001 00000000", "padding"),
    ("a0c90001 00000005", "padding"),
    ("a0c90000", "padding"),
    ("81ca0001 00000001", "SDES"),
    ("81ca0002 00000001 01050000", "SDES"),
    ("80ca0001 00000001", "SDES"),
    ("81cb0000", "BYE"),
    ("81cb0002 00000001 05616263", "BYE"),
]


UNENCODABLE = [
    ReceiverReport(1, [block()] * 32),
    ReceiverReport(1, [ReportBlock(1, 256, 0, 0, 0, 0, 0)]),
    ReceiverReport(1, [ReportBlock(1, 0, 0x800000, 0, 0, 0, 0)]),
    ReceiverReport(1, [ReportBlock(1, 0, -0x800001, 0, 0, 0, 0)]),
    ReceiverReport(1 << 32, []),
    SenderReport(1, 1 << 64, 0, 0, 0, []),
    SourceDescription([(1, [(0, b"x")])]),
    SourceDescription([(1, [(1, bytes(256))])]),
    Goodbye([1], bytes(256)),
    Goodbye([-1], None),
    UnknownRtcp(191, 0, b""),
    UnknownRtcp(RTCP_SR, 0, b""),
    UnknownRtcp(RTCP_PSFB, 32, b""),
    UnknownRtcp(RTCP_PSFB, 0, b"abc"),
]


def aiortc_sr_sdes(ntp: int) -> bytes:
    """SR + SDES(CNAME) built with aiortc's own classes, as its RTCRtpSender sends them."""
    sr = aiortc_rtp.RtcpSrPacket(
        ssrc=0x1234ABCD,
        sender_info=aiortc_rtp.RtcpSenderInfo(
            ntp_timestamp=ntp, rtp_timestamp=480000, packet_count=500, octet_count=80000
        ),
        reports=[
            aiortc_rtp.RtcpReceiverInfo(
                ssrc=0x55, fraction_lost=12, packets_lost=-1, highest_sequence=65540,
                jitter=33, lsr=0x01020304, dlsr=0x8000,
            )
        ],
    )
    sdes = aiortc_rtp.RtcpSdesPacket(
        chunks=[aiortc_rtp.RtcpSourceInfo(ssrc=0x1234ABCD, items=[(1, b"{0f1e2d3c-cname}")])]
    )
    return bytes(sr) + bytes(sdes)


class CompoundTests(SynchronousTestCase):
    """build_rtcp writes the RFC 3550 layout and parse_rtcp reads it back, packet for packet."""

    def test_rtcp_error_is_a_wire_error(self) -> None:
        """RtcpError is the one WireError subclass the RTCP parser raises."""
        self.assertTrue(issubclass(RtcpError, WireError))

    def test_sender_report_layout(self) -> None:
        """An SR with one block has the RFC 3550 layout byte for byte."""
        sr = SenderReport(1, 0x0102030405060708, 9, 10, 11, [block(lost=-2)])
        data = build_rtcp([sr])
        self.assertEqual(data[:4], bytes.fromhex("81c8000c"))  # V=2 RC=1, PT=200, 13 words
        self.assertEqual(data[4:8], bytes.fromhex("00000001"))
        self.assertEqual(data[8:16], bytes.fromhex("0102030405060708"))
        self.assertEqual(data[28:32], bytes.fromhex("11111111"))
        self.assertEqual(data[32:36], bytes.fromhex("19fffffe"))  # fraction 25, lost -2 (24-bit)
        self.assertEqual(parse_rtcp(data), [sr])

    def test_receiver_report_and_bye_compound(self) -> None:
        """RR + SDES + BYE in one compound datagram come back in order."""
        packets: list[RtcpPacket] = [
            ReceiverReport(5, [block(1), block(2, lost=0x7FFFFF)]),
            SourceDescription([(5, [(SDES_CNAME, b"abcdefgh")])]),
            Goodbye([5, 6], b"bye"),
        ]
        data = build_rtcp(packets)
        self.assertEqual(len(data) % 4, 0)
        self.assertEqual(parse_rtcp(data), packets)

    def test_bye_reason_encoding(self) -> None:
        """The BYE reason is length-prefixed and zero-padded; absent and empty differ."""
        for reason, encoded in BYE_REASONS:
            with case(f"reason {reason!r}"):
                data = build_rtcp([Goodbye([7], reason)])
                self.assertEqual(data[8:], bytes.fromhex(encoded))
                self.assertEqual(parse_rtcp(data), [Goodbye([7], reason)])

    def test_sdes_chunk_alignment(self) -> None:
        """Each SDES chunk ends with at least one null octet and is 32-bit aligned."""
        for cname_length in range(0, 9):
            with case(f"CNAME of {cname_length} bytes"):
                packet = SourceDescription([(1, [(SDES_CNAME, b"x" * cname_length)]), (2, [])])
                data = build_rtcp([packet])
                self.assertEqual(len(data) % 4, 0)
                self.assertEqual(parse_rtcp(data), [packet])

    def test_feedback_and_xr_round_trip_raw(self) -> None:
        """RTPFB, PSFB, APP and XR are kept as UnknownRtcp with their count and body."""
        packets: list[RtcpPacket] = [
            UnknownRtcp(RTCP_RTPFB, 15, bytes(range(16))),
            UnknownRtcp(RTCP_PSFB, 1, bytes(8)),
            UnknownRtcp(RTCP_APP, 3, b"\x00\x00\x00\x01name"),
            UnknownRtcp(RTCP_XR, 0, bytes(12)),
        ]
        self.assertEqual(parse_rtcp(build_rtcp(packets)), packets)

    def test_reduced_size_rtcp_is_accepted(self) -> None:
        """RFC 5506: a lone PLI (no SR/RR first) parses."""
        pli = bytes.fromhex("81ce0002 00000001 00000002")
        self.assertEqual(parse_rtcp(pli), [UnknownRtcp(RTCP_PSFB, 1, bytes.fromhex("0000000100000002"))])

    def test_padding_is_removed(self) -> None:
        """A padded last packet has its padding stripped before the body is read."""
        data = bytes.fromhex("a1cb0002 00000009 00000004")  # BYE, P=1, 4 bytes of padding
        self.assertEqual(parse_rtcp(data), [Goodbye([9], None)])

    def test_profile_extension_after_report_blocks_is_ignored(self) -> None:
        """RFC 3550 §6.4.1 lets a profile extend SR/RR; the extra words are skipped."""
        data = bytearray(build_rtcp([ReceiverReport(1, [block()])]))
        data[3] += 1
        data += bytes(4)
        self.assertEqual(parse_rtcp(bytes(data)), [ReceiverReport(1, [block()])])

    @given(st.lists(rtcp_packets, min_size=1, max_size=5))
    def test_round_trip(self, packets: list[RtcpPacket]) -> None:
        """parse_rtcp(build_rtcp(x)) == x for any valid compound."""
        self.assertEqual(parse_rtcp(build_rtcp(packets)), packets)


class MalformedTests(SynchronousTestCase):
    """Malformed datagrams and unencodable packets raise RtcpError naming the fault, nothing else."""

    def test_malformed_rtcp_raises(self) -> None:
        """Each header or body malformation raises RtcpError naming it."""
        for hex_data, message in MALFORMED:
            with case(f"{message}: {hex_data}"):
                with self.assertRaises(RtcpError) as caught:
                    parse_rtcp(bytes.fromhex(hex_data))
                self.assertRegex(str(caught.exception), message)

    def test_build_rejects_unencodable_packets(self) -> None:
        """build_rtcp raises RtcpError, never struct.error, for fields that do not fit."""
        for packet in UNENCODABLE:
            with case(str(packet)):
                with self.assertRaises(RtcpError):
                    build_rtcp([packet])

    def test_build_rejects_an_empty_compound(self) -> None:
        """A compound packet has at least one packet."""
        with self.assertRaises(RtcpError):
            build_rtcp([])

    @given(st.binary(max_size=200))
    def test_random_bytes_raise_only_rtcp_error(self, data: bytes) -> None:
        """Arbitrary bytes either parse or raise RtcpError, nothing else."""
        try:
            parse_rtcp(data)
        except RtcpError:
            pass

    @given(
        st.lists(st.tuples(st.integers(0, 63), st.integers(200, 207), st.binary(max_size=60)), min_size=1)
    )
    def test_plausible_headers_raise_only_rtcp_error(self, pieces: list[tuple[int, int, bytes]]) -> None:
        """Well-framed packets with random counts, padding bits and bodies raise only RtcpError."""
        data = b"".join(
            bytes((0x80 | flags, packet_type)) + (len(body) // 4).to_bytes(2, "big") + body[: len(body) // 4 * 4]
            for flags, packet_type, body in pieces
        )
        try:
            parse_rtcp(data)
        except RtcpError:
            pass


class DemultiplexTests(SynchronousTestCase):
    """is_rtcp tells RTCP from RTP on one port (RFC 5761)."""

    def test_is_rtcp(self) -> None:
        """RFC 5761 demultiplexing looks at the packet type byte only."""
        self.assertTrue(is_rtcp(bytes.fromhex("80c8")))
        self.assertTrue(is_rtcp(bytes.fromhex("80df")))
        self.assertFalse(is_rtcp(bytes.fromhex("80e0")))
        self.assertFalse(is_rtcp(bytes.fromhex("806f")))  # RTP, PT 111
        self.assertFalse(is_rtcp(b"\x80"))


class AiortcInteropTests(SynchronousTestCase):
    """aiortc's RTCP and ours read each other, byte for byte where both build the same packets."""

    def test_aiortc_compound_parses_with_ours(self) -> None:
        """aiortc's SR+SDES compound is read field for field."""
        ntp = to_ntp(1_700_000_000.25)
        packets = parse_rtcp(aiortc_sr_sdes(ntp))
        self.assertEqual(
            packets,
            [
                SenderReport(
                    0x1234ABCD, ntp, 480000, 500, 80000,
                    [ReportBlock(0x55, 12, -1, 65540, 33, 0x01020304, 0x8000)],
                ),
                SourceDescription([(0x1234ABCD, [(SDES_CNAME, b"{0f1e2d3c-cname}")])]),
            ],
        )

    def test_our_compound_parses_with_aiortc(self) -> None:
        """Our SR+SDES+BYE compound is read by aiortc, and is byte-identical to aiortc's SR+SDES."""
        ntp = to_ntp(1_700_000_000.25)
        ours: list[RtcpPacket] = [
            SenderReport(
                0x1234ABCD, ntp, 480000, 500, 80000,
                [ReportBlock(0x55, 12, -1, 65540, 33, 0x01020304, 0x8000)],
            ),
            SourceDescription([(0x1234ABCD, [(SDES_CNAME, b"{0f1e2d3c-cname}")])]),
        ]
        data = build_rtcp(ours)
        self.assertEqual(data, aiortc_sr_sdes(ntp))
        theirs = aiortc_rtp.RtcpPacket.parse(data + build_rtcp([Goodbye([0x1234ABCD])]))
        self.assertIsInstance(theirs[0], aiortc_rtp.RtcpSrPacket)
        self.assertEqual(theirs[0].sender_info.ntp_timestamp, ntp)
        self.assertEqual(theirs[0].reports[0].packets_lost, -1)
        self.assertEqual(theirs[0].reports[0].highest_sequence, 65540)
        self.assertIsInstance(theirs[1], aiortc_rtp.RtcpSdesPacket)
        self.assertEqual(theirs[1].chunks[0].items, [(1, b"{0f1e2d3c-cname}")])
        self.assertIsInstance(theirs[2], aiortc_rtp.RtcpByePacket)
        self.assertEqual(theirs[2].sources, [0x1234ABCD])

    def test_aiortc_feedback_round_trips_through_ours(self) -> None:
        """aiortc's NACK and PLI survive our parse and build unchanged."""
        nack = aiortc_rtp.RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=[10, 12, 40])
        pli = aiortc_rtp.RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2)
        data = bytes(nack) + bytes(pli)
        self.assertEqual(build_rtcp(parse_rtcp(data)), data)


class NtpTests(SynchronousTestCase):
    """NTP timestamp helpers for sender reports."""

    def test_to_ntp_known_values(self) -> None:
        """The Unix epoch is 2208988800 s after the NTP epoch; 0.5 s is 2**31."""
        self.assertEqual(to_ntp(0.0), NTP_EPOCH_OFFSET << 32)
        self.assertEqual(to_ntp(0.5), (NTP_EPOCH_OFFSET << 32) | 0x80000000)
        self.assertEqual(to_ntp(1.25), ((NTP_EPOCH_OFFSET + 1) << 32) | 0x40000000)

    def test_ntp_round_trip_precision(self) -> None:
        """to_ntp/from_ntp keep better than a microsecond for present-day times."""
        for seconds in (1_700_000_000.123456, 1_800_000_000.999999, 2_000_000_000.0):
            self.assertLess(abs(from_ntp(to_ntp(seconds)) - seconds), 1e-6)

    def test_middle32(self) -> None:
        """LSR is the middle 32 bits; 16.16 durations convert both ways."""
        self.assertEqual(ntp_middle32(0x0102030405060708), 0x03040506)
        self.assertEqual(middle32_to_seconds(0x00018000), 1.5)
        self.assertEqual(seconds_to_middle32(1.5), 0x00018000)
        self.assertEqual(seconds_to_middle32(-1.0), 0)
        self.assertEqual(seconds_to_middle32(1e9), 0xFFFFFFFF)
