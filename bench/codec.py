# -*- test-case-name: tests.test_opus -*-
"""Opus codec benchmark: CPU microseconds per 20 ms frame, PyAV (ours) beside opuslib; the complexity sweep.

Run ``python bench/codec.py``.  It encodes and decodes the same speech-like signal
(a 140 Hz voice with harmonics, a vowel-like envelope and some noise) at 16, 24 and
48 kHz, mono, 32 kbit/s, libopus's default complexity, ``voip`` application, through
voiceedge's :class:`~voiceedge.media.opus.OpusEncoder` / ``OpusDecoder`` (PyAV) and,
when it is installed, through opuslib (ctypes over the system libopus), and prints
the best of a few runs side by side.  It stops itself after about 15 s of work.

``python bench/codec.py --complexity`` chooses ``[transceiver] opus_complexity``:
for every libopus complexity 0-10 it encodes espeak-ng speech (three voices,
48 kHz, 32 kbit/s, ``voip``), decodes it, and prints the encoder's CPU µs per
frame (best of a few runs, all complexities in one run so load hits them alike)
beside the wideband PESQ score (ITU-T P.862.2, via the ``pesq`` package, 1-4.6)
of what a listener gets, and both relative to complexity 10. With
``--instructions`` the CPU column is instructions per frame instead, counted
by ``valgrind --tool=callgrind`` (a long and a short run per complexity,
subtracted), which a loaded machine does not change.
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


def espeak_speech(rate: int) -> list[bytes]:
    """20 ms PCM16 frames of a few espeak-ng sentences in three voices, with pauses."""
    import numpy as np

    from tests.speech_corpus import say

    pause = np.zeros(rate // 4)
    parts = []
    for voice, text in (
        ("en-us", "I'd like to book a table for two people tonight."),
        ("en-gb", "Can you tell me when the store opens tomorrow?"),
        ("en-us+f3", "Please send the report to my manager, thank you."),
    ):
        parts += [say(text, voice, rate), pause]
    x = np.concatenate(parts).clip(-32768, 32767).astype("<i2").tobytes()
    size = rate // 50 * 2
    return [x[i : i + size] for i in range(0, len(x) - size + 1, size)]


def instructions_per_frame(complexity: int, frames: int) -> float:
    """Encoder instructions per frame at ``complexity``: two callgrind runs, subtracted."""
    import re
    import shutil
    import subprocess

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    counts = []
    for n in (10, 10 + frames):
        proc = subprocess.run(
            [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
             "--encode-only", str(complexity), str(n)],
            capture_output=True, text=True, check=False,
        )
        match = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode or match is None:
            raise SystemExit(f"callgrind failed:\n{proc.stderr[-2000:]}")
        counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) / frames


def encode_only(complexity: int, frames: int) -> None:
    """Encode ``frames`` frames of the sweep's speech (what callgrind counts)."""
    encoder = OpusEncoder(48000, BITRATE, complexity)
    for frame in espeak_speech(48000)[:frames]:
        encoder.encode(frame)


def complexity_sweep(instructions: bool) -> None:
    """CPU per encoded frame (or instructions) and PESQ-WB of the decoded speech, for complexity 0-10."""
    import numpy as np

    try:
        from pesq import pesq
    except ImportError:
        raise SystemExit("the sweep needs the pesq package (pip install pesq)") from None
    rate = 48000
    pcm = espeak_speech(rate)
    reference = np.frombuffer(b"".join(pcm), dtype="<i2").astype(np.float64)[::3]  # 16 kHz for PESQ-WB
    print(f"{len(pcm)} frames of espeak-ng speech, 48 kHz mono, {BITRATE // 1000} kbit/s, voip; best of {REPEATS}")
    unit = "k instr" if instructions else "encode µs"
    print(f"{'complexity':>10} {unit:>10} {'vs 10':>7} {'PESQ-WB':>8} {'vs 10':>7}")
    rows = []
    for complexity in range(11):
        def encode(c: int = complexity) -> int:
            encoder = OpusEncoder(rate, BITRATE, c)
            for frame in pcm:
                encoder.encode(frame)
            return len(pcm)

        us = instructions_per_frame(complexity, 400) / 1000 if instructions else cpu_us_per_frame(encode)
        encoder, decoder = OpusEncoder(rate, BITRATE, complexity), OpusDecoder(rate)
        decoded = b"".join(decoder.decode(encoder.encode(frame)) for frame in pcm)
        degraded = np.frombuffer(decoded, dtype="<i2").astype(np.float64)
        # Opus delays by its lookahead (6.5 ms at 48 kHz): align before scoring.
        lag = 312
        degraded = np.concatenate([degraded[lag:], np.zeros(lag)])[::3]
        score = pesq(16000, reference / 32768, degraded / 32768, "wb")
        rows.append((complexity, us, score))
    base_us, base_score = rows[-1][1], rows[-1][2]
    for complexity, us, score in rows:
        print(f"{complexity:>10} {us:>10.1f} {us / base_us:>7.2f} {score:>8.2f} {score / base_score:>7.2f}")


def main() -> None:
    """Measure and print the table (or the complexity sweep, with ``--complexity``)."""
    if sys.argv[1:2] == ["--encode-only"]:
        encode_only(int(sys.argv[2]), int(sys.argv[3]))
        return
    if "--complexity" in sys.argv[1:]:
        complexity_sweep("--instructions" in sys.argv[1:])
        return
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
