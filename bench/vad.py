# -*- test-case-name: tests.test_turn_taking -*-
"""Speech detectors side by side on labelled speech: accuracy, turn latency, pauses cut, CPU per frame.

Run ``python bench/vad.py`` (``--quick`` for 4 recordings instead of 18).  It makes
labelled recordings with :mod:`tests.speech_corpus` (espeak-ng turns with pauses
inside them, three voices, two levels, clean and with pink, brown and white noise
at 15 to 5 dB SNR), feeds each detector the same 20 ms frames at ``--rate``, and
prints, per detector:

- **frame accuracy**: the detector's voiced/unvoiced call per 20 ms frame against
  the label from the clean speech (and the share of voiced frames found);
- **start**: median time from a turn's first voiced sample to SpeechStarted
  (what barge-in waits for);
- **end**: median and 90th percentile from a turn's last voiced sample to the
  SpeechStopped that ends it (turn latency), and turns whose end was never found;
- **cut**: pauses inside a turn (after "um,", a comma, "and") at which the
  detector ended the turn, cutting the caller off;
- **CPU**: microseconds per 20 ms frame (process time, all work included);

then the ratios against ``energy`` (today's detector, 500 ms silence).  The
machine's load changes CPU figures; the ratios of one run are what to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.speech_corpus import Recording, available, make_recording  # noqa: E402
from voiceedge.media.detection import (  # noqa: E402
    DetectionSettings,
    DetectorUnavailable,
    ISpeechDetector,
    make_speech_detector,
)
from voiceedge.media.speech import SpeechStarted, SpeechStopped  # noqa: E402

# (voice, level dBFS, noise, SNR dB)
GRID: tuple[tuple[str, float, str | None, float | None], ...] = tuple(
    (voice, level, noise, snr)
    for voice in ("en-us", "en+f3", "en-gb")
    for level, noise, snr in (
        (-26, None, None),
        (-40, None, None),
        (-26, "pinknoise", 15),
        (-30, "pinknoise", 5),
        (-26, "brownnoise", 10),
        (-26, "whitenoise", 10),
    )
)
QUICK = (GRID[0], GRID[3], GRID[8], GRID[17])

# name -> settings; the first is the reference for ratios.
DETECTORS: dict[str, DetectionSettings] = {
    "energy 500ms": DetectionSettings("energy", silence_ms=500),
    "energy 1000ms": DetectionSettings("energy", silence_ms=1000),
    "silero 500ms": DetectionSettings(
        "silero", final_silence_ms=500, neutral_silence_ms=500, hesitation_silence_ms=500
    ),
    "silero adaptive": DetectionSettings("silero"),
}


@dataclass
class Score:
    """What one detector did over all recordings."""

    frames: int = 0
    correct: int = 0
    voiced: int = 0
    voiced_found: int = 0
    cpu: float = 0.0
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    ends_missed: int = 0
    turns: int = 0
    pauses: int = 0
    pauses_cut: int = 0
    false_starts: int = 0


def score_recording(recording: Recording, make: Callable[[], ISpeechDetector], score: Score) -> None:
    """Feed ``recording`` to a new detector; add what it did to ``score``."""
    detector = make()
    events = []
    labels = recording.voiced
    frames = recording.frames()
    started = time.process_time()
    calls = []
    for i, frame in enumerate(frames):
        events += detector.feed(frame, i * 0.02)
        calls.append(detector.voice_probability >= 0.5)
    score.cpu += time.process_time() - started
    for predicted, label in zip(calls, labels):
        score.frames += 1
        score.correct += predicted == label
        score.voiced += label
        score.voiced_found += predicted and label
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    turns = recording.turns
    for n, turn in enumerate(turns):
        score.turns += 1
        following = turns[n + 1].start if n + 1 < len(turns) else recording.duration + 1
        start = next((e for e in starts if turn.start - 0.3 <= e.time < turn.end), None)
        if start is not None:
            score.starts.append(start.at - turn.start)
        for a, b in turn.pauses:
            score.pauses += 1
            score.pauses_cut += any(a <= e.at <= b + 0.06 for e in stops)
        end = next((e for e in stops if turn.end - 0.05 <= e.at < following), None)
        if end is None:
            score.ends_missed += 1
        else:
            score.ends.append(end.at - turn.end)
    spans = [(t.start - 0.3, t.end + 0.3) for t in turns]
    score.false_starts += sum(not any(a <= e.time <= b for a, b in spans) for e in starts)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    """Run the benchmark; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 recordings instead of 18")
    parser.add_argument("--rate", type=int, default=24000, help="session PCM rate (16000, 24000, 48000)")
    args = parser.parse_args()
    if not available():
        print("espeak-ng and sox are needed to make the recordings")
        return 1
    grid = QUICK if args.quick else GRID
    recordings = [
        make_recording(voice=v, level_db=lvl, noise=n, snr_db=snr, rate=args.rate, seed=i + 1)
        for i, (v, lvl, n, snr) in enumerate(grid)
    ]
    seconds = sum(r.duration for r in recordings)
    turns = sum(len(r.turns) for r in recordings)
    pauses = sum(len(t.pauses) for r in recordings for t in r.turns)
    print(
        f"{len(recordings)} recordings, {seconds:.0f} s at {args.rate} Hz, {turns} turns,"
        f" {pauses} pauses inside turns (500-1000 ms)"
    )
    scores: dict[str, Score] = {}
    for name, settings in DETECTORS.items():
        try:
            make_speech_detector(settings, args.rate)
        except DetectorUnavailable as e:
            print(f"{name}: skipped ({e})")
            continue
        score = Score()
        for recording in recordings:
            score_recording(recording, lambda: make_speech_detector(settings, args.rate), score)
        scores[name] = score

    header = (
        f"{'detector':<16} {'frame acc':>9} {'voiced':>7} {'start p50':>9} {'end p50':>8} {'end p90':>8}"
        f" {'missed':>6} {'cut':>9} {'false st':>8} {'CPU/frame':>10}"
    )
    print(header)
    for name, s in scores.items():
        print(
            f"{name:<16} {s.correct / s.frames:>9.1%} {s.voiced_found / max(1, s.voiced):>7.1%}"
            f" {statistics.median(s.starts) * 1000:>7.0f}ms {statistics.median(s.ends) * 1000:>6.0f}ms"
            f" {percentile(s.ends, 0.9) * 1000:>6.0f}ms {s.ends_missed:>6}"
            f" {f'{s.pauses_cut}/{s.pauses}':>9}"
            + f" {s.false_starts:>8} {s.cpu / s.frames * 1e6:>8.0f}µs"
        )
    reference = next(iter(scores.values()), None)
    if reference is not None:
        ref_name = next(iter(scores))
        print(f"\nratios against {ref_name}:")
        for name, s in list(scores.items())[1:]:
            end = statistics.median(s.ends) / statistics.median(reference.ends)
            cut = s.pauses_cut / max(1, reference.pauses_cut)
            cpu = (s.cpu / s.frames) / (reference.cpu / reference.frames)
            print(f"  {name:<16} end p50 ×{end:.2f}   pauses cut ×{cut:.2f}   CPU per frame ×{cpu:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
