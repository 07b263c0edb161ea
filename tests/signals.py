# -*- test-case-name: tests.test_opus -*-
"""Synthetic audio for codec tests and benchmarks: a voiced, vowel-like signal in 20 ms frames."""

from __future__ import annotations

import array
import math
import random


def speech_like(rate: int, frames: int, pauses: bool = False) -> list[bytes]:
    """20 ms frames of PCM16 mono: a gliding 140 Hz voice with 11 harmonics and some noise.

    Its envelope is syllable-like: never silent by default (every frame voiced,
    what a loss or FEC test compares), or with ``pauses`` rising and falling to
    silence 1.5 times a second (closer to speech, for benchmarks).
    """
    rng = random.Random(42)
    n = rate // 50
    out = []
    for f in range(frames):
        samples = array.array("h")
        for i in range(n):
            t = (f * n + i) / rate
            if pauses:
                envelope = max(0.0, math.sin(2 * math.pi * 1.5 * t)) ** 0.5
            else:
                envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 4 * t)
            pitch = 140 * (1 + 0.05 * math.sin(2 * math.pi * 3 * t))
            voice = sum(math.sin(2 * math.pi * pitch * h * t) / h for h in range(1, 12))
            samples.append(max(-32768, min(32767, int(6000 * envelope * voice + rng.gauss(0.0, 60.0)))))
        out.append(samples.tobytes())
    return out
