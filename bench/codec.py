# -*- test-case-name: tests.test_opus -*-
"""Opus codec benchmark: CPU microseconds per 20 ms frame, PyAV (ours) beside opuslib.

Run ``python bench/codec.py``.  It encodes and decodes the same speech-like signal
(a 140 Hz voice with harmonics, a vowel-like envelope and some noise) at 16, 24 and
48 kHz, mono, 32 kbit/s, libopus's default complexity, ``voip`` application, through
voiceedge's :class:`~voiceedge.media.opus.OpusEncoder` / ``OpusDecoder`` (PyAV) and,
when it is installed, through opuslib (ctypes over the system libopus), and prints
the best of a few runs side by side.  It stops itself after about 15 s of work.
"""

from __future__ import annotations

import array
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av  # noqa: E402

from voiceedge.media.opus import OpusDecoder, OpusEncoder  # noqa: E402

RATES = (16000, 24000, 48000)
FRAMES = 250  # 5 s of audio per measurement
REPEATS = 3
BITRATE = 32000
BUDGET = 15.0  # seconds of wall time before the remaining runs are skipped


def speech_like(rate: int, frames: int) -> list[bytes]:
    """20 ms frames of a voiced, vowel-like signal with pauses and background noise."""
    rng = random.Random(42)
    n = rate // 50
    out = []
    for f in range(frames):
        samples = array.array("h")
        for i in range(n):
            t = (f * n + i) / rate
            envelope = max(0.0, math.sin(2 * math.pi * 1.5 * t)) ** 0.5  # syllables and pauses
            pitch = 140 * (1 + 0.05 * math.sin(2 * math.pi * 3 * t))
            voice = sum(math.sin(2 * math.pi * pitch * h * t) / h for h in range(1, 12))
            x = 6000 * envelope * voice + rng.gauss(0.0, 60.0)
            samples.append(max(-32768, min(32767, int(x))))
        out.append(samples.tobytes())
    return out


def cpu_us_per_frame(run: Callable[[], int]) -> float:
    """Best CPU µs per frame over ``REPEATS`` calls of ``run`` (which returns its frame count)."""
    best = math.inf
    for _ in range(REPEATS):
        start = time.process_time()
        count = run()
        best = min(best, (time.process_time() - start) / count * 1e6)
    return best


def measure_pyav(rate: int, pcm: list[bytes]) -> dict[str, float]:
    """Encode, decode and conceal through voiceedge's PyAV-based codec."""
    payloads = [OpusEncoder(rate, BITRATE).encode(frame) for frame in pcm]

    def encode() -> int:
        encoder = OpusEncoder(rate, BITRATE)
        for frame in pcm:
            encoder.encode(frame)
        return len(pcm)

    def decode() -> int:
        decoder = OpusDecoder(rate)
        for payload in payloads:
            decoder.decode(payload)
        return len(payloads)

    def conceal() -> int:
        decoder = OpusDecoder(rate)
        decoder.decode(payloads[10])
        for _ in payloads:
            decoder.conceal()
        return len(payloads)

    return {
        "encode": cpu_us_per_frame(encode),
        "decode": cpu_us_per_frame(decode),
        "conceal": cpu_us_per_frame(conceal),
    }


def measure_opuslib(rate: int, pcm: list[bytes]) -> dict[str, float] | None:
    """The same through opuslib, or None if it (or libopus) is not installed."""
    try:
        import opuslib
        import opuslib.api.decoder
    except Exception:  # opuslib raises a bare Exception when libopus is missing
        return None
    n = rate // 50

    def make_encoder() -> opuslib.Encoder:
        encoder = opuslib.Encoder(rate, 1, opuslib.APPLICATION_VOIP)
        encoder.bitrate = BITRATE
        return encoder

    first = make_encoder()
    payloads = [first.encode(frame, n) for frame in pcm]

    def encode() -> int:
        encoder = make_encoder()
        for frame in pcm:
            encoder.encode(frame, n)
        return len(pcm)

    def decode() -> int:
        decoder = opuslib.Decoder(rate, 1)
        for payload in payloads:
            decoder.decode(payload, n)
        return len(payloads)

    def conceal() -> int:
        decoder = opuslib.Decoder(rate, 1)
        decoder.decode(payloads[10], n)
        for _ in payloads:
            opuslib.api.decoder.decode(decoder.decoder_state, None, 0, n, False, 1)
        return len(payloads)

    return {
        "encode": cpu_us_per_frame(encode),
        "decode": cpu_us_per_frame(decode),
        "conceal": cpu_us_per_frame(conceal),
    }


def opuslib_version() -> str:
    """The libopus version opuslib loaded, or why there is none."""
    try:
        import opuslib.api.info

        version = opuslib.api.info.get_version_string()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception as e:
        return f"not available ({e})"


def main() -> None:
    """Measure and print the table."""
    began = time.monotonic()
    avcodec = ".".join(map(str, av.library_versions["libavcodec"]))
    print(f"PyAV {av.__version__} (bundled libopus, libavcodec {avcodec})")
    print(f"opuslib: {opuslib_version()}")
    print(f"{FRAMES} frames of 20 ms, mono, {BITRATE // 1000} kbit/s, best of {REPEATS}")
    print("CPU µs per frame; the last column is PyAV's share of one core for one stream")
    print()
    print(f"{'rate':>6}  {'op':<8}{'PyAV':>9}{'opuslib':>10}{'PyAV/opuslib':>14}{'core':>9}")
    for rate in RATES:
        if time.monotonic() - began > BUDGET:
            print(f"{rate:>6}  (skipped: time budget spent)")
            continue
        pcm = speech_like(rate, FRAMES)
        ours = measure_pyav(rate, pcm)
        theirs = measure_opuslib(rate, pcm)
        for op in ("encode", "decode", "conceal"):
            mine = ours[op]
            if theirs is None:
                other, ratio = "-", "-"
            else:
                other, ratio = f"{theirs[op]:.1f}", f"{mine / theirs[op]:.2f}"
            share = mine / 20000 * 100
            print(f"{rate:>6}  {op:<8}{mine:>9.1f}{other:>10}{ratio:>14}{share:>8.2f}%")
    print(f"\ntook {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
