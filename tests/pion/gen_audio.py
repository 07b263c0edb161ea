#!/usr/bin/env python3
"""Encode the pionpeer's audio sources as real Opus packets (20 ms, 48 kHz mono, 32 kbit/s VBR).

pionpeer sends these frames on every call, so the server under test decodes
genuine Opus, not made-up bytes. The output is committed; building the Go
peer does not run this. Re-run it (with the project's virtualenv, which has
PyAV, plus espeak-ng and sox) only to change the audio:

    python tests/pion/gen_audio.py

Writes ``audio/tone.opus20`` (one second of a 440 Hz tone at amplitude 8000,
like tests/aiortc_peer.py's SineTrack; whole periods, so it loops cleanly) and
``audio/speech.opus20`` (a few sentences of espeak-ng speech with pauses).
Format: each packet as a 2-byte big-endian length, then the packet.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import av

RATE = 48000
FRAME = 960  # 20 ms
HERE = Path(__file__).resolve().parent
SPEECH = (
    "Hello, this is a test call. I would like to know the weather for tomorrow. "
    "Thank you. Could you also tell me the time?"
)


def tone_pcm(seconds: int = 1, frequency: int = 440, amplitude: int = 8000) -> bytes:
    """s16 mono PCM of a tone; 440 Hz fits whole periods in a second."""
    step = 2 * math.pi * frequency / RATE
    n = RATE * seconds
    return struct.pack(f"<{n}h", *(int(amplitude * math.sin(step * i)) for i in range(n)))


def speech_pcm() -> bytes:
    """espeak-ng saying SPEECH, as s16 mono PCM at 48 kHz, with 400 ms of silence after it."""
    with tempfile.TemporaryDirectory() as tmp:
        wav, raw = Path(tmp) / "speech.wav", Path(tmp) / "speech.raw"
        subprocess.run(["espeak-ng", "-s", "160", "-w", str(wav), SPEECH], check=True, capture_output=True)
        subprocess.run(
            ["sox", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(raw)],
            check=True,
            capture_output=True,
        )
        pcm = raw.read_bytes()
    pcm += bytes(2 * RATE * 400 // 1000)
    whole = len(pcm) // (2 * FRAME) * (2 * FRAME)
    return pcm[:whole]


def encode(pcm: bytes) -> list[bytes]:
    """Opus packets for ``pcm``, one per 20 ms, as a VoIP client would send them."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = RATE
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.bit_rate = 32000
    ctx.options = {"frame_duration": "20", "application": "voip", "vbr": "on"}
    packets: list[bytes] = []
    for start in range(0, len(pcm), 2 * FRAME):
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.sample_rate = RATE
        frame.pts = start // 2
        frame.planes[0].update(pcm[start : start + 2 * FRAME])
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    # The encoder's look-ahead adds a packet at the end; keep one per input frame.
    return packets[: len(pcm) // (2 * FRAME)]


def write(name: str, packets: list[bytes]) -> None:
    """Write ``packets`` length-prefixed to audio/<name>.opus20."""
    path = HERE / "audio" / f"{name}.opus20"
    path.write_bytes(b"".join(struct.pack(">H", len(p)) + p for p in packets))
    sizes = [len(p) for p in packets]
    print(f"{path}: {len(packets)} packets ({len(packets) * 20} ms), {min(sizes)}..{max(sizes)} bytes")


def main() -> int:
    write("tone", encode(tone_pcm()))
    write("speech", encode(speech_pcm()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
