"""Audible test audio: a tone as PCM16 and as one Opus frame (silence is not sent, so tests need sound)."""

from __future__ import annotations

import functools
import math

__all__ = ["opus_tone_frame", "tone_pcm"]


def tone_pcm(ms: int, rate: int = 48000, frequency: float = 440.0, amplitude: int = 8000) -> bytes:
    """PCM16 mono little-endian of a tone, ``ms`` long: well above the transceiver's silence level."""
    n = rate * ms // 1000
    step = 2 * math.pi * frequency / rate
    return b"".join(
        int(amplitude * math.sin(step * i)).to_bytes(2, "little", signed=True) for i in range(n)
    )


@functools.lru_cache(maxsize=None)
def opus_tone_frame() -> bytes:
    """One 20 ms Opus packet of an audible tone (decodes to sound, so an echo sends it back)."""
    from voiceedge.media.opus import OpusEncoder

    encoder = OpusEncoder(48000)
    pcm = tone_pcm(100)
    payload = b""
    for i in range(5):  # past the encoder's start-up, into the steady tone
        payload = encoder.encode(pcm[i * 1920 : (i + 1) * 1920])
    return payload
