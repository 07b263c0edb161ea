# -*- test-case-name: tests.test_opus -*-
"""Opus codec benchmark: CPU microseconds per 20 ms frame, ours (libopus via ctypes) beside PyAV's wrapper; the complexity sweep.

Run ``python bench/codec.py``.  It encodes and decodes the same speech-like signal
(a 140 Hz voice with harmonics, a vowel-like envelope and some noise) at 16, 24 and
48 kHz, mono, 32 kbit/s, complexity 5, ``voip`` application (as PyAV's wrapper is set up), through voiceedge's
:class:`~voiceedge.media.opus.OpusEncoder` / ``OpusDecoder`` (libopus directly,
through ctypes) and through PyAV's ``CodecContext`` (FFmpeg's libopus wrapper, what
voiceedge used before: an ``AudioFrame`` per frame, FFmpeg's multistream encoder, a
decoder at 48 kHz resampled to the rate), both on the same libopus (PyAV's bundled
one), and prints the best of a few runs side by side with the ratio.  It stops
itself after about 30 s of work.

``python bench/codec.py --complexity`` chooses ``[transceiver] opus_complexity``
and ``opus_application``: for libopus's ``voip`` (SILK or hybrid for speech) and
``lowdelay`` (CELT only) applications and every complexity 0-10 it encodes
espeak-ng speech (three voices, 48 kHz, 32 kbit/s target, unconstrained VBR),
decodes it, and prints the encoder's CPU µs per frame (best of a few runs, all
in one run so load hits them alike), the bit rate it chose, and the wideband
PESQ score (ITU-T P.862.2, via the ``pesq`` package, 1-4.6) of what a listener
gets, the CPU and score relative to ``voip`` at complexity 10. With
``--instructions`` the CPU column is instructions per frame instead, counted
by ``valgrind --tool=callgrind`` (a long and a short run per complexity,
subtracted), which a loaded machine does not change.

``python bench/codec.py --instructions`` prints the first table in instructions per
frame instead (callgrind, encode and decode at 16 and 48 kHz, ours and PyAV).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av  # noqa: E402 - the reference column only
from av import AudioFrame, AudioResampler, CodecContext, Packet  # noqa: E402

from tests.signals import speech_like  # noqa: E402
from voiceedge.media.opus import OpusDecoder, OpusEncoder, libopus_version  # noqa: E402

RATES = (16000, 24000, 48000)
FRAMES = 250  # 5 s of audio per measurement
REPEATS = 5
BITRATE = 32000
COMPLEXITY = 5  # [transceiver] opus_complexity's default
APPLICATIONS = ("voip", "lowdelay")  # the sweep's: SILK/hybrid for speech, and CELT only
BUDGET = 30.0  # seconds of wall time before the remaining runs are skipped


def cpu_us_per_frame(run: Callable[[], int]) -> float:
    """Best CPU µs per frame over ``REPEATS`` calls of ``run`` (which returns its frame count)."""
    best = math.inf
    for _ in range(REPEATS):
        start = time.process_time()
        count = run()
        best = min(best, (time.process_time() - start) / count * 1e6)
    return best


class PyAVEncoder:
    """The reference: encode as voiceedge did through PyAV (an AudioFrame per 20 ms, FFmpeg's libopus wrapper)."""

    def __init__(self, rate: int) -> None:
        codec = CodecContext.create("libopus", "w")
        codec.sample_rate = rate
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = BITRATE
        codec.time_base = Fraction(1, rate)
        codec.options = {"application": "voip", "frame_duration": "20", "compression_level": str(COMPLEXITY)}
        codec.open()
        self.codec, self.rate, self.samples, self.pts = codec, rate, rate // 50, 0

    def encode(self, pcm: bytes) -> bytes:
        frame = AudioFrame(format="s16", layout="mono", samples=self.samples)
        frame.sample_rate = self.rate
        frame.pts = self.pts
        frame.planes[0].update(pcm)
        self.pts += self.samples
        return bytes(self.codec.encode(frame)[0])


class PyAVDecoder:
    """The reference: decode as voiceedge did through PyAV (48 kHz, resampled to the rate)."""

    def __init__(self, rate: int) -> None:
        codec = CodecContext.create("libopus", "r")
        codec.sample_rate = 48000
        codec.layout = "mono"
        codec.format = "s16"
        self.codec = codec
        self.resampler = None if rate == 48000 else AudioResampler(format="s16", layout="mono", rate=rate)

    def decode(self, payload: bytes) -> bytes:
        out = []
        for frame in self.codec.decode(Packet(payload)):
            frames = [frame] if self.resampler is None else self.resampler.resample(frame)
            out += [bytes(memoryview(f.planes[0])[: f.samples * 2]) for f in frames]
        return b"".join(out)


def measure(rate: int, pcm: list[bytes], coders: dict[str, tuple[Callable[[], Any], Callable[[], Any]]]) -> dict[str, dict[str, float]]:
    """CPU µs per frame to encode ``pcm`` and to decode its payloads, for each named (encoder, decoder) pair.

    The pairs take turns within every repeat, so load that comes and goes hits them alike.
    """
    runs: dict[str, dict[str, Callable[[], int]]] = {}
    for name, (make_encoder, make_decoder) in coders.items():
        payloads = [make_encoder().encode(frame) for frame in pcm]

        def encode(make_encoder: Callable[[], Any] = make_encoder) -> int:
            encoder = make_encoder()
            for frame in pcm:
                encoder.encode(frame)
            return len(pcm)

        def decode(make_decoder: Callable[[], Any] = make_decoder, payloads: list[bytes] = payloads) -> int:
            decoder = make_decoder()
            for payload in payloads:
                decoder.decode(payload)
            return len(payloads)

        runs[name] = {"encode": encode, "decode": decode}
    best = {name: {"encode": math.inf, "decode": math.inf} for name in coders}
    for _ in range(REPEATS):
        for name, ops in runs.items():
            for op, run in ops.items():
                start = time.process_time()
                count = run()
                best[name][op] = min(best[name][op], (time.process_time() - start) / count * 1e6)
    return best


def measure_fec(rate: int, pcm: list[bytes]) -> float:
    """CPU µs per frame of a loss recovered by FEC and the next packet decoded (ours only: PyAV has no FEC)."""
    encoder = OpusEncoder(rate, BITRATE, COMPLEXITY, packet_loss_percent=10)
    payloads = [encoder.encode(frame) for frame in pcm]

    def fec() -> int:
        decoder = OpusDecoder(rate)
        for i in range(0, len(payloads) - 1, 2):
            decoder.decode_fec(payloads[i + 1])
            decoder.decode(payloads[i + 1])
        return len(payloads) // 2 * 2

    return cpu_us_per_frame(fec)


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


def callgrind_per_frame(args: list[str], frames: int) -> float:
    """Instructions per frame of ``bench/codec.py ARGS N``: callgrind runs at N = 10 and 10 + ``frames``, subtracted."""
    from callgrind import per_unit

    return per_unit(lambda n: [sys.executable, __file__, *args, str(n)], 10, 10 + frames)


def instructions_per_frame(application: str, complexity: int, frames: int) -> float:
    """Encoder instructions per frame with ``application`` at ``complexity`` (the sweep's speech)."""
    return callgrind_per_frame(["--encode-only", application, str(complexity)], frames)


def run_only(coder: str, op: str, rate: int, frames: int) -> None:
    """Encode or decode ``frames`` frames of the table's signal with one coder (what callgrind counts)."""
    pcm = speech_like(rate, 40, pauses=True)
    if coder == "ours":
        encoder: Any = OpusEncoder(rate, BITRATE, COMPLEXITY)
        decoder: Any = OpusDecoder(rate)
    else:
        encoder, decoder = PyAVEncoder(rate), PyAVDecoder(rate)
    payloads = [OpusEncoder(rate, BITRATE, COMPLEXITY).encode(frame) for frame in pcm]
    for i in range(frames):
        if op == "encode":
            encoder.encode(pcm[i % len(pcm)])
        else:
            decoder.decode(payloads[i % len(payloads)])


def instruction_table() -> None:
    """Instructions per frame, ours beside PyAV, encode and decode at 16 and 48 kHz (load does not change them)."""
    print(f"ours: {libopus_version()}; reference: PyAV {av.__version__}")
    print(f"instructions per 20 ms frame (callgrind), {BITRATE // 1000} kbit/s, complexity {COMPLEXITY}")
    print(f"{'rate':>6}  {'op':<8}{'ours k':>9}{'PyAV k':>9}{'ours/PyAV':>11}")
    for rate in (16000, 48000):
        for op in ("encode", "decode"):
            ours, theirs = (callgrind_per_frame(["--run-only", coder, op, str(rate)], 200) / 1000 for coder in ("ours", "pyav"))
            print(f"{rate:>6}  {op:<8}{ours:>9.1f}{theirs:>9.1f}{ours / theirs:>11.2f}")


def encode_only(application: str, complexity: int, frames: int) -> None:
    """Encode ``frames`` frames of the sweep's speech (what callgrind counts)."""
    encoder = OpusEncoder(48000, BITRATE, complexity, application=application)
    for frame in espeak_speech(48000)[:frames]:
        encoder.encode(frame)


def complexity_sweep(instructions: bool) -> None:
    """CPU per encoded frame (or instructions), bit rate and PESQ-WB of the decoded speech, per application and complexity."""
    import numpy as np

    try:
        from pesq import pesq
    except ImportError:
        raise SystemExit("the sweep needs the pesq package (pip install pesq)") from None
    rate = 48000
    pcm = espeak_speech(rate)
    reference = np.frombuffer(b"".join(pcm), dtype="<i2").astype(np.float64)[::3]  # 16 kHz for PESQ-WB
    print(f"{len(pcm)} frames of espeak-ng speech, 48 kHz mono, {BITRATE // 1000} kbit/s target; best of {REPEATS}")
    unit = "k instr" if instructions else "encode µs"
    print(f"{'application':>11} {'complexity':>10} {unit:>10} {'vs voip 10':>10} {'kbit/s':>7} {'PESQ-WB':>8} {'vs voip 10':>10}")
    rows = []
    for application in APPLICATIONS:
        for complexity in range(11):
            def encode(a: str = application, c: int = complexity) -> int:
                encoder = OpusEncoder(rate, BITRATE, c, application=a)
                for frame in pcm:
                    encoder.encode(frame)
                return len(pcm)

            if instructions:
                us = instructions_per_frame(application, complexity, 400) / 1000
            else:
                us = cpu_us_per_frame(encode)
            encoder, decoder = OpusEncoder(rate, BITRATE, complexity, application=application), OpusDecoder(rate)
            payloads = [encoder.encode(frame) for frame in pcm]
            kbps = sum(map(len, payloads)) * 8 / (len(payloads) * 20)
            decoded = b"".join(decoder.decode(payload) for payload in payloads)
            degraded = np.frombuffer(decoded, dtype="<i2").astype(np.float64)
            # Opus delays by its lookahead (6.5 ms at 48 kHz; 2.5 ms for lowdelay): align before scoring.
            lag = 312 if application != "lowdelay" else 120
            degraded = np.concatenate([degraded[lag:], np.zeros(lag)])[::3]
            score = pesq(16000, reference / 32768, degraded / 32768, "wb")
            rows.append((application, complexity, us, kbps, score))
    base_us, base_score = next((us, score) for a, c, us, _, score in rows if (a, c) == ("voip", 10))
    for application, complexity, us, kbps, score in rows:
        print(
            f"{application:>11} {complexity:>10} {us:>10.1f} {us / base_us:>10.2f} {kbps:>7.1f}"
            f" {score:>8.2f} {score / base_score:>10.2f}"
        )


def main() -> None:
    """Measure and print the table (or the complexity sweep, with ``--complexity``)."""
    if sys.argv[1:2] == ["--encode-only"]:
        encode_only(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    if sys.argv[1:2] == ["--run-only"]:
        run_only(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    if "--complexity" not in sys.argv[1:] and "--instructions" in sys.argv[1:]:
        instruction_table()
        return
    if "--complexity" in sys.argv[1:]:
        complexity_sweep("--instructions" in sys.argv[1:])
        return
    began = time.monotonic()
    avcodec = ".".join(map(str, av.library_versions["libavcodec"]))
    print(f"ours: {libopus_version()}")
    print(f"reference: PyAV {av.__version__} (libavcodec {avcodec}, its bundled libopus)")
    print(f"{FRAMES} frames of 20 ms, mono, {BITRATE // 1000} kbit/s, complexity {COMPLEXITY}, best of {REPEATS}")
    print("CPU µs per frame; the last column is our share of one core for one stream")
    print()
    print(f"{'rate':>6}  {'op':<18}{'ours':>9}{'PyAV':>9}{'ours/PyAV':>11}{'core':>9}")
    for rate in RATES:
        if time.monotonic() - began > BUDGET:
            print(f"{rate:>6}  (skipped: time budget spent)")
            continue
        pcm = speech_like(rate, FRAMES, pauses=True)
        both = measure(rate, pcm, {
            "ours": (lambda: OpusEncoder(rate, BITRATE, COMPLEXITY), lambda: OpusDecoder(rate)),
            "PyAV": (lambda: PyAVEncoder(rate), lambda: PyAVDecoder(rate)),
        })
        for op in ("encode", "decode"):
            mine, other = both["ours"][op], both["PyAV"][op]
            print(f"{rate:>6}  {op:<18}{mine:>9.1f}{other:>9.1f}{mine / other:>11.2f}{mine / 20000 * 100:>8.2f}%")
        fec = measure_fec(rate, pcm)
        print(f"{rate:>6}  {'FEC, per frame':<18}{fec:>9.1f}{'-':>9}{'-':>11}{fec / 20000 * 100:>8.2f}%")
    print(f"\ntook {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
