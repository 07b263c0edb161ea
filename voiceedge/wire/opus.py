# -*- test-case-name: tests.test_wire_opus -*-
"""How much audio an Opus packet holds, from its TOC byte (RFC 6716 §3.1), without decoding it."""

from __future__ import annotations

from voiceedge.wire.errors import WireError


class OpusPacketError(WireError):
    """A payload that is not a well-formed Opus packet header."""


# Frame duration in tenths of a millisecond for each of the 32 configurations:
# SILK 10/20/40/60 ms (0-11), hybrid 10/20 ms (12-15), CELT 2.5/5/10/20 ms (16-31).
_FRAME_TENTHS_MS = (
    [100, 200, 400, 600] * 3 + [100, 200] * 2 + [25, 50, 100, 200] * 4
)

#: Seconds of audio in a code-0 packet (one frame; TOC ``& 3 == 0``), by the TOC's top five bits:
#: what :func:`packet_duration` returns for it, for a caller that takes that case inline.
SINGLE_FRAME_SECONDS = tuple(tenths / 10000 for tenths in _FRAME_TENTHS_MS)


def packet_duration(payload: bytes) -> float:
    """Seconds of audio in one Opus packet.

    Code 0 is one frame, codes 1 and 2 two frames, code 3 says its frame
    count in the second byte. A packet longer than 120 ms is malformed
    (RFC 6716 §3.2.5).
    """
    if not payload:
        raise OpusPacketError("empty Opus packet")
    toc = payload[0]
    frame = _FRAME_TENTHS_MS[toc >> 3]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code != 3:
        frames = 2
    else:
        if len(payload) < 2:
            raise OpusPacketError("code 3 Opus packet without a frame count")
        frames = payload[1] & 0x3F
        if frames == 0:
            raise OpusPacketError("code 3 Opus packet with no frames")
    tenths = frame * frames
    if tenths > 1200:
        raise OpusPacketError(f"Opus packet of {tenths / 10} ms (at most 120 ms)")
    return tenths / 10000
