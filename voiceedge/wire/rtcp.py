# -*- test-case-name: tests.test_rtcp -*-
"""RTCP codec (RFC 3550 §6): compound SR/RR/SDES/BYE, other types kept raw, and NTP time helpers."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

from voiceedge.wire.errors import WireError

__all__ = [
    "NTP_EPOCH_OFFSET",
    "RTCP_APP",
    "RTCP_BYE",
    "RTCP_PSFB",
    "RTCP_RR",
    "RTCP_RTPFB",
    "RTCP_SDES",
    "RTCP_SR",
    "RTCP_XR",
    "SDES_CNAME",
    "Goodbye",
    "ReceiverReport",
    "ReportBlock",
    "RtcpError",
    "RtcpPacket",
    "SenderReport",
    "SourceDescription",
    "UnknownRtcp",
    "build_rtcp",
    "from_ntp",
    "is_rtcp",
    "middle32_to_seconds",
    "ntp_middle32",
    "parse_rtcp",
    "seconds_to_middle32",
    "to_ntp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
RTCP_RTPFB = 205
RTCP_PSFB = 206
RTCP_XR = 207

# SDES item types (RFC 3550 §6.5).
SDES_END = 0
SDES_CNAME = 1
SDES_NAME = 2
SDES_EMAIL = 3
SDES_PHONE = 4
SDES_LOC = 5
SDES_TOOL = 6
SDES_NOTE = 7
SDES_PRIV = 8

# Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (Unix epoch).
NTP_EPOCH_OFFSET = 2208988800

_HEADER = struct.Struct("!BBH")
_REPORT_BLOCK = struct.Struct("!IIIIII")
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC, NTP, RTP timestamp, packets, octets
_U32 = struct.Struct("!I")
_header_unpack_from = _HEADER.unpack_from

_REPORT_BLOCK_SIZE = 24
_CUMULATIVE_LOST_MIN = -0x800000
_CUMULATIVE_LOST_MAX = 0x7FFFFF


class RtcpError(WireError):
    """Bytes that are not valid (compound) RTCP, or a packet that cannot be encoded."""


@dataclass(slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1).

    ``fraction_lost`` is the 8-bit fixed-point fraction (0-255);
    ``cumulative_lost`` is signed 24-bit (duplicates can make it negative);
    ``last_sr`` and ``delay_since_last_sr`` are in the middle-32 NTP format
    (units of 1/65536 s for the delay).
    """

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int


@dataclass(slots=True)
class SenderReport:
    """An SR packet; ``ntp_timestamp`` is the full 64-bit NTP time."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class ReceiverReport:
    """An RR packet."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class SourceDescription:
    """An SDES packet: ``(ssrc, [(item_type, value), ...])`` per chunk, e.g. ``(SDES_CNAME, b"x")``."""

    chunks: list[tuple[int, list[tuple[int, bytes]]]] = field(default_factory=list)


@dataclass(slots=True)
class Goodbye:
    """A BYE packet; ``reason`` is ``None`` when absent (``b""`` is an empty reason)."""

    ssrcs: list[int] = field(default_factory=list)
    reason: bytes | None = None


@dataclass(slots=True)
class UnknownRtcp:
    """Any other RTCP packet (APP, RTPFB, PSFB, XR, ...), kept raw so it round-trips.

    ``count`` is the 5-bit header field (FMT for feedback, subtype for APP);
    ``body`` is everything after the 4-byte header, padding removed.
    """

    packet_type: int
    count: int
    body: bytes


RtcpPacket = Union[SenderReport, ReceiverReport, SourceDescription, Goodbye, UnknownRtcp]


# --- NTP time ---------------------------------------------------------------


def to_ntp(seconds: float) -> int:
    """Unix-epoch seconds (the caller's ``now``) to a 64-bit NTP timestamp (32.32 fixed point)."""
    whole = math.floor(seconds)
    fraction = int((seconds - whole) * 4294967296.0)
    # seconds - whole is in [0, 1) but may round up to 2**32 for values a hair below 1.
    if fraction > 0xFFFFFFFF:
        fraction = 0xFFFFFFFF
    return (((whole + NTP_EPOCH_OFFSET) << 32) | fraction) & 0xFFFFFFFFFFFFFFFF


def from_ntp(ntp: int) -> float:
    """A 64-bit NTP timestamp back to Unix-epoch seconds (era 0)."""
    return (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / 4294967296.0


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp, as carried in LSR (16.16 fixed point)."""
    return (ntp >> 16) & 0xFFFFFFFF


def middle32_to_seconds(value: int) -> float:
    """A 16.16 fixed-point duration (DLSR, or a difference of middle-32 times) in seconds."""
    return value / 65536.0


def seconds_to_middle32(seconds: float) -> int:
    """A duration in seconds to 16.16 fixed point (DLSR), clamped to 0..2**32-1."""
    value = round(seconds * 65536.0)
    if value < 0:
        return 0
    if value > 0xFFFFFFFF:
        return 0xFFFFFFFF
    return value


# --- parsing ------------------------------------------------------------------


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4 demultiplexing: RTCP's second byte (packet type) is 192-223."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def _parse_report_blocks(body: bytes, pos: int, count: int) -> list[ReportBlock]:
    reports = []
    unpack_from = _REPORT_BLOCK.unpack_from
    for _ in range(count):
        ssrc, word, highest, jitter, lsr, dlsr = unpack_from(body, pos)
        lost = word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        reports.append(ReportBlock(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr))
        pos += _REPORT_BLOCK_SIZE
    return reports


def _parse_sr(body: bytes, count: int) -> SenderReport:
    # Bytes after the report blocks are a profile-specific extension (§6.4.1); ignored.
    if len(body) < 24 + _REPORT_BLOCK_SIZE * count:
        raise RtcpError("RTCP SR is shorter than its report count")
    ssrc, ntp, rtp_timestamp, packets, octets = _SENDER_INFO.unpack_from(body)
    return SenderReport(
        ssrc, ntp, rtp_timestamp, packets, octets, _parse_report_blocks(body, 24, count)
    )


def _parse_rr(body: bytes, count: int) -> ReceiverReport:
    if len(body) < 4 + _REPORT_BLOCK_SIZE * count:
        raise RtcpError("RTCP RR is shorter than its report count")
    return ReceiverReport(_U32.unpack_from(body)[0], _parse_report_blocks(body, 4, count))


def _parse_sdes(body: bytes, count: int) -> SourceDescription:
    size = len(body)
    pos = 0
    chunks: list[tuple[int, list[tuple[int, bytes]]]] = []
    for _ in range(count):
        if pos + 4 > size:
            raise RtcpError("RTCP SDES chunk is truncated")
        ssrc = _U32.unpack_from(body, pos)[0]
        pos += 4
        items: list[tuple[int, bytes]] = []
        while True:
            if pos >= size:
                raise RtcpError("RTCP SDES chunk has no end item")
            item_type = body[pos]
            if item_type == SDES_END:
                # The null octet and the zeros after it run to the next 32-bit boundary.
                pos = (pos + 4) & ~3
                break
            if pos + 2 > size:
                raise RtcpError("RTCP SDES item is truncated")
            end = pos + 2 + body[pos + 1]
            if end > size:
                raise RtcpError("RTCP SDES item is truncated")
            items.append((item_type, body[pos + 2 : end]))
            pos = end
        chunks.append((ssrc, items))
    if pos != size:
        raise RtcpError("RTCP SDES length does not match its chunks")
    return SourceDescription(chunks)


def _parse_bye(body: bytes, count: int) -> Goodbye:
    size = len(body)
    pos = 4 * count
    if pos > size:
        raise RtcpError("RTCP BYE is shorter than its source count")
    ssrcs = list(struct.unpack_from("!%dI" % count, body))
    reason: bytes | None = None
    if pos < size:
        end = pos + 1 + body[pos]
        if end > size:
            raise RtcpError("RTCP BYE reason is truncated")
        reason = body[pos + 1 : end]
    return Goodbye(ssrcs, reason)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Decode a compound (or RFC 5506 reduced-size) RTCP packet.

    Every header is checked: version 2, packet type 192-223 (RFC 5761),
    length within the datagram, padding count, and count against the body.
    Raises :class:`RtcpError` for anything malformed; an empty datagram is one.
    """
    size = len(data)
    if size == 0:
        raise RtcpError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < size:
        if pos + 4 > size:
            raise RtcpError("RTCP header is truncated")
        first, packet_type, length = _header_unpack_from(data, pos)
        if first & 0xC0 != 0x80:
            raise RtcpError("RTCP version is not 2")
        if not 192 <= packet_type <= 223:
            raise RtcpError("not an RTCP packet type: %d" % packet_type)
        end = pos + 4 + 4 * length
        if end > size:
            raise RtcpError("RTCP packet length exceeds the datagram")
        body = data[pos + 4 : end]
        pos = end
        if first & 0x20:
            padding = body[-1] if body else 0
            if padding == 0 or padding > len(body):
                raise RtcpError("RTCP padding count is invalid")
            body = body[:-padding]
        count = first & 0x1F
        if packet_type == RTCP_SR:
            packets.append(_parse_sr(body, count))
        elif packet_type == RTCP_RR:
            packets.append(_parse_rr(body, count))
        elif packet_type == RTCP_SDES:
            packets.append(_parse_sdes(body, count))
        elif packet_type == RTCP_BYE:
            packets.append(_parse_bye(body, count))
        else:
            packets.append(UnknownRtcp(packet_type, count, body))
    return packets


# --- building -----------------------------------------------------------------


def _pack_report_blocks(parts: list[bytes], reports: Sequence[ReportBlock]) -> None:
    pack = _REPORT_BLOCK.pack
    for block in reports:
        if not 0 <= block.fraction_lost <= 255:
            raise RtcpError("fraction_lost out of range: %r" % (block.fraction_lost,))
        lost = block.cumulative_lost
        if not _CUMULATIVE_LOST_MIN <= lost <= _CUMULATIVE_LOST_MAX:
            raise RtcpError("cumulative_lost out of signed 24-bit range: %r" % (lost,))
        parts.append(
            pack(
                block.ssrc,
                (block.fraction_lost << 24) | (lost & 0xFFFFFF),
                block.highest_sequence,
                block.jitter,
                block.last_sr,
                block.delay_since_last_sr,
            )
        )


def _check_count(count: int, what: str) -> None:
    if count > 31:
        raise RtcpError("RTCP %s count %d exceeds 31" % (what, count))


def _build_one(packet: RtcpPacket) -> tuple[int, int, bytes]:
    parts: list[bytes] = []
    if isinstance(packet, SenderReport):
        count = len(packet.reports)
        _check_count(count, "report")
        parts.append(
            _SENDER_INFO.pack(
                packet.ssrc,
                packet.ntp_timestamp,
                packet.rtp_timestamp,
                packet.packet_count,
                packet.octet_count,
            )
        )
        _pack_report_blocks(parts, packet.reports)
        return RTCP_SR, count, b"".join(parts)
    if isinstance(packet, ReceiverReport):
        count = len(packet.reports)
        _check_count(count, "report")
        parts.append(_U32.pack(packet.ssrc))
        _pack_report_blocks(parts, packet.reports)
        return RTCP_RR, count, b"".join(parts)
    if isinstance(packet, SourceDescription):
        count = len(packet.chunks)
        _check_count(count, "SDES chunk")
        for ssrc, items in packet.chunks:
            chunk = [_U32.pack(ssrc)]
            chunk_size = 4
            for item_type, value in items:
                if not 1 <= item_type <= 255:
                    raise RtcpError("SDES item type out of range: %r" % (item_type,))
                if len(value) > 255:
                    raise RtcpError("SDES item longer than 255 bytes")
                chunk.append(bytes((item_type, len(value))))
                chunk.append(value)
                chunk_size += 2 + len(value)
            # At least one null octet, then zeros to the 32-bit boundary.
            chunk.append(bytes(4 - chunk_size % 4))
            parts.extend(chunk)
        return RTCP_SDES, count, b"".join(parts)
    if isinstance(packet, Goodbye):
        count = len(packet.ssrcs)
        _check_count(count, "BYE source")
        parts.append(struct.pack("!%dI" % count, *packet.ssrcs))
        if packet.reason is not None:
            reason = packet.reason
            if len(reason) > 255:
                raise RtcpError("BYE reason longer than 255 bytes")
            parts.append(bytes((len(reason),)))
            parts.append(reason)
            parts.append(bytes(-(1 + len(reason)) % 4))
        return RTCP_BYE, count, b"".join(parts)
    if isinstance(packet, UnknownRtcp):
        if not 192 <= packet.packet_type <= 223:
            raise RtcpError("not an RTCP packet type: %r" % (packet.packet_type,))
        if packet.packet_type in (RTCP_SR, RTCP_RR, RTCP_SDES, RTCP_BYE):
            # It would parse back as the typed packet (or not at all).
            raise RtcpError("UnknownRtcp cannot carry a known packet type")
        if not 0 <= packet.count <= 31:
            raise RtcpError("RTCP count out of range: %r" % (packet.count,))
        if len(packet.body) % 4:
            raise RtcpError("RTCP body is not a multiple of 4 bytes")
        return packet.packet_type, packet.count, bytes(packet.body)
    raise RtcpError("not an RTCP packet: %r" % (packet,))


def build_rtcp(packets: Sequence[RtcpPacket]) -> bytes:
    """Encode packets into one compound RTCP datagram (no padding).

    Raises :class:`RtcpError` if a field does not fit its wire format.
    """
    if not packets:
        raise RtcpError("a compound RTCP packet needs at least one packet")
    out: list[bytes] = []
    pack_header = _HEADER.pack
    for packet in packets:
        try:
            packet_type, count, body = _build_one(packet)
        except struct.error as e:
            raise RtcpError("RTCP field out of range: %s" % (e,)) from None
        words = len(body) // 4
        if words > 0xFFFF:
            raise RtcpError("RTCP packet longer than 65535 words")
        out.append(pack_header(0x80 | count, packet_type, words))
        out.append(body)
    return b"".join(out)
