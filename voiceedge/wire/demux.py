# -*- test-case-name: tests.test_demux -*-
"""First-byte packet classifier for one UDP port (RFC 7983 §7, RTP/RTCP split per RFC 5761 §4)."""

from __future__ import annotations

import enum

__all__ = ["FIRST_BYTE_KIND", "PacketKind", "classify"]


class PacketKind(enum.IntEnum):
    """What a datagram on a multiplexed media port is."""

    STUN = 0
    ZRTP = 1
    DTLS = 2
    TURN_CHANNEL = 3
    RTP = 4
    RTCP = 5
    UNKNOWN = 6


def _kind_of_first_byte(b: int) -> PacketKind:
    if b <= 3:
        return PacketKind.STUN
    if 16 <= b <= 19:
        return PacketKind.ZRTP
    if 20 <= b <= 63:
        return PacketKind.DTLS
    if 64 <= b <= 79:
        return PacketKind.TURN_CHANNEL
    if 128 <= b <= 191:
        # RTP or RTCP: the second byte decides, see classify().
        return PacketKind.RTP
    return PacketKind.UNKNOWN


#: Kind by first byte; RTP here stands for "RTP or RTCP".
FIRST_BYTE_KIND: tuple[PacketKind, ...] = tuple(_kind_of_first_byte(b) for b in range(256))

_RTP = PacketKind.RTP
_RTCP = PacketKind.RTCP
_UNKNOWN = PacketKind.UNKNOWN


def classify(data: bytes) -> PacketKind:
    """Classify a datagram by its first byte (and second, for RTP vs RTCP).

    RTCP packet types 192..223 sit where an RTP marker bit + payload type
    would be, so RFC 5761 §4 reserves that range of the second byte for RTCP.
    A one-byte packet in the RTP range is neither and comes back UNKNOWN.
    """
    if not data:
        return _UNKNOWN
    kind = FIRST_BYTE_KIND[data[0]]
    if kind is _RTP:
        if len(data) < 2:
            return _UNKNOWN
        return _RTCP if 192 <= data[1] <= 223 else _RTP
    return kind
