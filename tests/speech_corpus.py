# -*- test-case-name: tests.test_turn_taking -*-
"""Labelled test speech for turn detection: espeak-ng turns with pauses inside them, in noise.

A *turn* is one or more pieces of a sentence said separately by espeak-ng and
joined by a silence of a length we choose: ``"I'd like to book a table,"``, 700 ms,
``"for two people tonight."``.  A piece that ends on a comma or a filler ("um,")
is said with espeak-ng's continuation intonation, so the pause inside the turn
sounds like one.  The labels come from how the audio was made, not from a
detector: every turn's first and last voiced sample, every pause inside a turn,
and a voiced/unvoiced label per 20 ms frame from the clean speech (before noise).

A :class:`Recording` is a list of turns separated by ``gap`` seconds of silence
(the time another party would speak), spoken at ``level_db`` (RMS of the voiced
frames, dBFS), with background noise made by ``sox synth`` mixed in at ``snr_db``
below the speech.  Everything is deterministic for the same arguments.

Used by ``bench/vad.py`` (the benchmark of every detector) and by the suite
(``tests/test_turn_taking.py``).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "TURNS",
    "NOISES",
    "Recording",
    "TurnLabel",
    "available",
    "make_recording",
]

FRAME_SECONDS = 0.02

# (pieces, the pause after each piece but the last, in ms).  The pauses are
# chosen so that most are longer than a 500 ms silence timer: a detector that
# only counts silence cuts these callers off.
TURNS: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...] = (
    (("I'd like to book a table,", "for two people tonight."), (700,)),
    (("So I was thinking, um,", "maybe we could meet on Tuesday."), (900,)),
    (("Thank you very much.",), ()),
    (("Can you tell me,", "uh,", "when the store opens tomorrow?"), (600, 800)),
    (("My account number is", "four five six, seven eight nine."), (650,)),
    (("Please send the report to my manager.",), ()),
    (("Well,", "I'm not sure about that."), (750,)),
    (("The weather today is cold and", "a bit rainy in the afternoon."), (550,)),
    (("I want to change my flight to Friday.",), ()),
    (("Let me see,", "hmm,", "the second one, I think."), (500, 1000)),
)

# sox synth noise types; None is a clean line (a little dither only).
NOISES: tuple[str | None, ...] = (None, "pinknoise", "brownnoise", "whitenoise")

_DITHER_DB = -80.0
# A clean-speech frame at most this far below the turn's voiced level is labelled voiced.
_LABEL_RANGE_DB = 35.0
# Unvoiced gaps this short inside a piece (stop closures) are still speech.
_BRIDGE_FRAMES = 3


def available() -> bool:
    """Whether espeak-ng and sox are installed."""
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


@dataclass(frozen=True, slots=True)
class TurnLabel:
    """One turn: its first and last voiced instants, and the pauses inside it (seconds)."""

    start: float
    end: float
    pauses: tuple[tuple[float, float], ...]
    text: str


@dataclass(slots=True)
class Recording:
    """PCM16 mono audio with its labels."""

    pcm: bytes
    sample_rate: int
    turns: list[TurnLabel]
    voiced: list[bool]  # one per 20 ms frame, from the clean speech
    name: str
    level_db: float
    noise: str | None
    snr_db: float | None
    voice: str
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.pcm) / 2 / self.sample_rate

    def frames(self) -> list[bytes]:
        """The audio as 20 ms frames (the last partial frame dropped)."""
        size = self.sample_rate // 50 * 2
        return [self.pcm[i : i + size] for i in range(0, len(self.pcm) - size + 1, size)]

    def write_wav(self, path: Path) -> None:
        """Save as a WAV file."""
        with wave.open(str(path), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(self.sample_rate)
            f.writeframes(self.pcm)


def _cache_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "voiceedge-speech-corpus"
    path.mkdir(exist_ok=True)
    return path


def _run(args: Sequence[str]) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as f:
        assert f.getnchannels() == 1 and f.getsampwidth() == 2, path
        return np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16).astype(np.float64)


def say(text: str, voice: str, rate: int, speed: int = 165) -> np.ndarray:
    """``text`` said by espeak-ng as float samples at ``rate`` (full scale 32768), trimmed
    to its first and last sample above 1 % of its peak."""
    key = hashlib.sha256(f"{text}|{voice}|{rate}|{speed}".encode()).hexdigest()[:20]
    out = _cache_dir() / f"{key}.wav"
    if not out.exists():
        raw = out.with_suffix(".raw.wav")
        _run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text])
        tmp = out.with_suffix(".tmp.wav")
        _run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(tmp)])
        tmp.replace(out)
        raw.unlink()
    x = _read_wav(out)
    loud = np.nonzero(np.abs(x) > 0.01 * np.abs(x).max())[0]
    return x[loud[0] : loud[-1] + 1]


def _noise(kind: str, seconds: float, rate: int, seed: int) -> np.ndarray:
    key = f"noise-{kind}-{rate}-{seconds:.2f}-{seed}"
    out = _cache_dir() / f"{key}.wav"
    if not out.exists():
        tmp = out.with_suffix(".tmp.wav")
        _run(
            ["sox", "-R", "-n", "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(tmp),
             "synth", f"{seconds:.2f}", kind, "vol", "0.5"]
        )
        tmp.replace(out)
    x = _read_wav(out)
    # sox -R makes every run the same; the seed picks a rotation so recordings differ.
    return np.roll(x, (seed * 7919) % max(1, len(x)))


def _frame_rms_db(x: np.ndarray, frame: int) -> np.ndarray:
    n = len(x) // frame
    blocks = x[: n * frame].reshape(n, frame)
    energy = (blocks**2).mean(axis=1) / 32768.0**2
    return 10 * np.log10(np.maximum(energy, 1e-10))


def make_recording(
    turns: Sequence[tuple[Sequence[str], Sequence[int]]] = TURNS,
    *,
    voice: str = "en-us",
    rate: int = 24000,
    level_db: float = -26.0,
    noise: str | None = None,
    snr_db: float | None = None,
    lead: float = 1.5,
    gap: float = 2.5,
    speed: int = 165,
    seed: int = 1,
) -> Recording:
    """Say ``turns`` one after another; return the mix and its labels (see the module doc)."""
    frame = rate // 50
    pieces: list[tuple[int, np.ndarray]] = []  # (start sample, speech)
    labels: list[tuple[int, int, list[tuple[int, int]], str]] = []
    cursor = int(lead * rate)
    for texts, pauses in turns:
        if len(pauses) != len(texts) - 1:
            raise ValueError(f"{texts!r}: one pause between each two pieces, got {pauses!r}")
        start = cursor
        inner: list[tuple[int, int]] = []
        for i, text in enumerate(texts):
            speech = say(text, voice, rate, speed)
            pieces.append((cursor, speech))
            cursor += len(speech)
            if i < len(pauses):
                pause = int(pauses[i] * rate / 1000)
                inner.append((cursor, cursor + pause))
                cursor += pause
        labels.append((start, cursor, inner, " ".join(texts)))
        cursor += int(gap * rate)
    total = cursor + (-cursor % frame)
    clean = np.zeros(total)
    for start, speech in pieces:
        clean[start : start + len(speech)] += speech

    # Scale to the level of the voiced frames.
    levels = _frame_rms_db(clean, frame)
    peak = levels.max()
    voiced_now = levels > peak - _LABEL_RANGE_DB
    active = 10 * np.log10(np.mean(10 ** (levels[voiced_now] / 10)))
    gain = 10 ** ((level_db - active) / 20)
    clean *= gain
    levels += 20 * np.log10(gain)

    voiced = list(levels > level_db - _LABEL_RANGE_DB)
    # Bridge short unvoiced gaps inside pieces (closures of stops), never a labelled pause.
    inside = np.zeros(len(levels), dtype=bool)
    for start, speech in pieces:
        inside[start // frame : (start + len(speech)) // frame + 1] = True
    i = 0
    while i < len(voiced):
        if not voiced[i] and inside[i] and i > 0 and voiced[i - 1]:
            j = i
            while j < len(voiced) and not voiced[j] and inside[j]:
                j += 1
            if j - i <= _BRIDGE_FRAMES and j < len(voiced) and voiced[j]:
                for k in range(i, j):
                    voiced[k] = True
            i = j
        else:
            i += 1

    rng = np.random.default_rng(seed)
    mix = clean + rng.normal(0.0, 32768 * 10 ** (_DITHER_DB / 20), total)
    if noise is not None:
        if snr_db is None:
            raise ValueError("a noise needs snr_db")
        n = _noise(noise, total / rate + 0.1, rate, seed)[:total]
        n_rms = np.sqrt(np.mean(n**2)) / 32768
        target = 10 ** ((level_db - snr_db) / 20)
        mix += n * (target / max(n_rms, 1e-9))
    pcm = np.clip(np.round(mix), -32768, 32767).astype("<i2").tobytes()

    turn_labels = [
        TurnLabel(start / rate, end / rate, tuple((a / rate, b / rate) for a, b in inner), text)
        for start, end, inner, text in labels
    ]
    name = f"{voice} {level_db:+.0f}dBFS " + (f"{noise} SNR {snr_db:g}dB" if noise else "clean")
    return Recording(pcm, rate, turn_labels, [bool(v) for v in voiced], name, level_db, noise, snr_db, voice)
