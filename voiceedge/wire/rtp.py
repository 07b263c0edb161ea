# -*- test-case-name: tests.test_rtp -*-
"""RTP packet codec (RFC 3550 §5.1): fixed header, CSRCs, one header extension, padding."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from voiceedge.wire.errors import WireError

__all__ = [
    "RTP_HEADER_SIZE",
    "RtpError",
    "RtpPacket",
    "build_rtp_header",
    "parse_rtp",
]

RTP_HEADER_SIZE = 12

# V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_header_unpack_from = _HEADER.unpack_from
_header_pack = _HEADER.pack
_extension_unpack_from = _EXTENSION_HEADER.unpack_from
_CSRC_STRUCTS = tuple(struct.Struct("!%dI" % n) for n in range(16))


class RtpError(WireError):
    """Bytes that are not a valid RTP packet, or an RtpPacket that cannot be encoded."""


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet.

    ``extension_profile`` is ``None`` when the packet has no header extension;
    otherwise ``extension`` is the raw extension body (a multiple of 4 bytes),
    which RFC 8285 one-byte/two-byte parsing can read further.
    ``padding_size`` counts every padding byte including the final count byte;
    :meth:`serialize` writes zeros followed by the count.
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    padding_size: int = 0

    def serialize(self) -> bytes:
        """Encode this packet; raise :class:`RtpError` if a field is out of range."""
        csrc_count = len(self.csrcs)
        if csrc_count > 15:
            raise RtpError("RTP packet has more than 15 CSRCs")
        if not 0 <= self.payload_type <= 127:
            raise RtpError("RTP payload type out of range: %r" % (self.payload_type,))
        padding_size = self.padding_size
        if not 0 <= padding_size <= 255:
            raise RtpError("RTP padding size out of range: %r" % (padding_size,))
        first = 0x80 | csrc_count
        if padding_size:
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        try:
            parts = [
                _header_pack(
                    first,
                    (0x80 if self.marker else 0) | self.payload_type,
                    self.sequence_number,
                    self.timestamp,
                    self.ssrc,
                )
            ]
            if csrc_count:
                parts.append(_CSRC_STRUCTS[csrc_count].pack(*self.csrcs))
            if self.extension_profile is not None:
                words, remainder = divmod(len(self.extension), 4)
                if remainder:
                    raise RtpError("RTP header extension is not a multiple of 4 bytes")
                parts.append(_EXTENSION_HEADER.pack(self.extension_profile, words))
                parts.append(self.extension)
            elif self.extension:
                raise RtpError("RTP header extension body without a profile")
        except struct.error as e:
            raise RtpError("RTP header field out of range: %s" % (e,)) from None
        parts.append(self.payload)
        if padding_size:
            parts.append(bytes(padding_size - 1))
            parts.append(bytes((padding_size,)))
        return b"".join(parts)


def parse_rtp(data: bytes) -> RtpPacket:
    """Decode one RTP packet; raise :class:`RtpError` for anything malformed.

    Checks version 2, that the CSRC list and header extension fit, and that a
    padding count is non-zero and fits after the headers.
    """
    try:
        first, second, sequence_number, timestamp, ssrc = _header_unpack_from(data)
    except struct.error:
        raise RtpError("RTP packet shorter than %d bytes" % RTP_HEADER_SIZE) from None
    if first & 0xC0 != 0x80:
        raise RtpError("RTP version is not 2")
    if first == 0x80:
        # The common case: no CSRC, no extension, no padding.
        return RtpPacket(
            second & 0x7F, sequence_number, timestamp, ssrc, data[12:], second > 0x7F
        )
    size = len(data)
    pos = 12
    csrcs: tuple[int, ...] = ()
    csrc_count = first & 0x0F
    if csrc_count:
        end = pos + 4 * csrc_count
        if end > size:
            raise RtpError("RTP CSRC list is truncated")
        csrcs = _CSRC_STRUCTS[csrc_count].unpack_from(data, pos)
        pos = end
    extension_profile: int | None = None
    extension = b""
    if first & 0x10:
        if pos + 4 > size:
            raise RtpError("RTP header extension is truncated")
        extension_profile, words = _extension_unpack_from(data, pos)
        pos += 4
        end = pos + 4 * words
        if end > size:
            raise RtpError("RTP header extension is truncated")
        extension = data[pos:end]
        pos = end
    padding_size = 0
    if first & 0x20:
        padding_size = data[-1] if size > pos else 0
        if padding_size == 0 or padding_size > size - pos:
            raise RtpError("RTP padding count is invalid")
        payload = data[pos : size - padding_size]
    else:
        payload = data[pos:]
    return RtpPacket(
        second & 0x7F,
        sequence_number,
        timestamp,
        ssrc,
        payload,
        second > 0x7F,
        csrcs,
        extension_profile,
        extension,
        padding_size,
    )


def build_rtp_header(
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    marker: bool = False,
) -> bytes:
    """Return the 12-byte RTP fixed header (no CSRC, extension or padding).

    The pacer's fast path: prepend it to an encoded frame.
    """
    if not 0 <= payload_type <= 127:
        raise RtpError("RTP payload type out of range: %r" % (payload_type,))
    try:
        return _header_pack(
            0x80, (0x80 if marker else 0) | payload_type, sequence_number, timestamp, ssrc
        )
    except struct.error as e:
        raise RtpError("RTP header field out of range: %s" % (e,)) from None
