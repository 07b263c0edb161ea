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

and ``silero adaptive, batched ×N`` feeds every recording at once, as calls on
one transceiver, one event-loop turn per 20 ms step (a ``task.Clock``), so each
turn's Silero windows run in one inference of N windows on average
(:mod:`voiceedge.media.silero_batch`): the same decisions, less CPU per frame;

then the ratios against ``energy`` (today's detector, 500 ms silence).  The
machine's load changes CPU figures; the ratios of one run are what to compare.

``python bench/vad.py --resampling`` measures Silero's own stream per 20 ms
frame at 48 and 24 kHz, the old way (:class:`tests.silero_reference.ReferenceSileroStream`:
a full-rate low-pass, then interpolation) beside today's (the low-pass computed
only at the samples kept): the resampling alone, and the whole frame with the
model, in µs of process time (old and new alternate, in one run, with the load
average) and, with ``--instructions``, the resampling alone in instructions counted by
``valgrind --tool=callgrind`` (which load does not change; onnxruntime's threads make the whole
frame's count unsteady).
"""

from __future__ import annotations

import argparse
import os
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
    batch: float = 1.0  # windows per Silero inference


def score_recording(recording: Recording, make: Callable[[], ISpeechDetector], score: Score) -> None:
    """Feed ``recording`` to a new detector; add what it did to ``score``."""
    detector = make()
    events = []
    frames = recording.frames()
    started = time.process_time()
    calls = []
    for i, frame in enumerate(frames):
        events += detector.feed(frame, i * 0.02)
        calls.append(detector.voice_probability >= 0.5)
    score.cpu += time.process_time() - started
    tally(recording, events, calls, score)


def score_batched(recordings: list[Recording], settings: DetectionSettings, rate: int, score: Score) -> None:
    """Every recording at once, as calls on one transceiver: each frame step one turn of a (fake) event
    loop, whose Silero windows run in one inference (voiceedge.media.silero_batch); add to ``score``."""
    from twisted.internet.task import Clock

    from voiceedge.media.silero_batch import SileroBatcher

    clock = Clock()
    batcher = SileroBatcher(clock)
    detectors = [make_speech_detector(settings, rate, batcher) for _ in recordings]
    frames = [r.frames() for r in recordings]
    events: list[list[object]] = [[] for _ in recordings]
    calls: list[list[bool]] = [[] for _ in recordings]
    started = time.process_time()
    for i in range(max(map(len, frames))):
        live = [n for n, f in enumerate(frames) if i < len(f)]
        for n in live:
            events[n] += detectors[n].feed(frames[n][i], i * 0.02)
        clock.advance(0)
        for n in live:
            events[n] += detectors[n].poll(i * 0.02)  # the frames' probabilities are in: no time passes
            calls[n].append(detectors[n].voice_probability >= 0.5)
    score.cpu += time.process_time() - started
    for recording, e, c in zip(recordings, events, calls):
        tally(recording, e, c, score)
    score.batch = batcher.windows / max(1, batcher.inferences)


def tally(recording: Recording, events: list[object], calls: list[bool], score: Score) -> None:
    """Add one recording's events and per-frame calls to ``score``."""
    labels = recording.voiced
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


class NoModel:
    """Stands in for the network where only the resampling is measured (no onnxruntime threads to count)."""

    def run(self, window: object, state: object) -> tuple[float, object]:
        return 0.0, state


def silero_streams(which: str, rate: int, model: object = None) -> tuple[Callable[[bytes], object], Callable[[bytes], object]]:
    """``(resample, feed_frame)`` of a new old-way (``"old"``) or today's (``"new"``) Silero stream."""
    from tests.silero_reference import ReferenceSileroStream
    from voiceedge.media.silero import SileroStream

    stream = ReferenceSileroStream(rate, model) if which == "old" else SileroStream(rate, model)  # type: ignore[arg-type]
    return stream.resample, stream.feed_frame


def speech_frames(rate: int) -> list[bytes]:
    """Ten seconds or so of labelled speech in noise at ``rate``, in 20 ms frames."""
    return make_recording(voice="en-us", level_db=-26, noise="pinknoise", snr_db=15, rate=rate, seed=1).frames()


def run_only(which: str, part: str, rate: int, frames: int) -> None:
    """Run ``frames`` frames through one stream's ``part`` (``resample`` or ``frame``): what callgrind counts."""
    speech = speech_frames(rate)
    resample, feed = silero_streams(which, rate, NoModel() if part == "resample" else None)
    call = resample if part == "resample" else feed
    for i in range(frames):
        call(speech[i % len(speech)])


def callgrind_per_frame(args: list[str], frames: int) -> float:
    """Instructions per frame of ``bench/vad.py --run-only ARGS N``: runs at N = 20 and 20 + ``frames``, subtracted."""
    from callgrind import per_unit

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return per_unit(lambda n: [sys.executable, __file__, "--run-only", *args, str(n)], 20, 20 + frames, env)


def resampling(instructions: bool) -> None:
    """Silero's stream per frame, the old way beside today's, at 48 and 24 kHz (see the module doc)."""
    print(f"Silero per 20 ms frame, old (full-rate low-pass + interpolation) and new (strided low-pass); load {os.getloadavg()[0]:.2f}")
    unit = "k instr" if instructions else "µs"
    print(f"{'rate':>6} {'part':<9} {'old ' + unit:>11} {'new ' + unit:>11} {'new/old':>8}")
    for rate in (48000, 24000):
        speech = speech_frames(rate)
        for part in ("resample",) if instructions else ("resample", "frame"):
            if instructions:
                frames = 500 if part == "resample" else 200
                old, new = (callgrind_per_frame([which, part, str(rate)], frames) / 1000 for which in ("old", "new"))
            else:
                spent = {"old": 0.0, "new": 0.0}
                for _ in range(5):  # alternate, so load changes both sides alike
                    for which in ("old", "new"):
                        resample, feed = silero_streams(which, rate)
                        call = resample if part == "resample" else feed
                        started = time.process_time()
                        for frame in speech:
                            call(frame)
                        spent[which] += time.process_time() - started
                old, new = (spent[w] / (5 * len(speech)) * 1e6 for w in ("old", "new"))
            print(f"{rate:>6} {part:<9} {old:>11.1f} {new:>11.1f} {new / old:>8.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> int:
    """Run the benchmark; print the table."""
    if sys.argv[1:2] == ["--run-only"]:
        which, part, rate, frames = sys.argv[2:6]
        run_only(which, part, int(rate), int(frames))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 recordings instead of 18")
    parser.add_argument("--rate", type=int, default=24000, help="session PCM rate (16000, 24000, 48000)")
    parser.add_argument("--resampling", action="store_true", help="Silero's stream per frame, old beside new")
    parser.add_argument("--instructions", action="store_true", help="with --resampling: callgrind instructions")
    args = parser.parse_args()
    if args.resampling:
        if not available():
            print("espeak-ng and sox are needed to make the recordings")
            return 1
        resampling(args.instructions)
        return 0
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
        if settings.detector == "silero" and name == "silero adaptive":
            batched = Score()
            score_batched(recordings, settings, args.rate, batched)
            scores[f"{name}, batched ×{batched.batch:.0f}"] = batched

    header = (
        f"{'detector':<26} {'frame acc':>9} {'voiced':>7} {'start p50':>9} {'end p50':>8} {'end p90':>8}"
        f" {'missed':>6} {'cut':>9} {'false st':>8} {'CPU/frame':>10}"
    )
    print(header)
    for name, s in scores.items():
        print(
            f"{name:<26} {s.correct / s.frames:>9.1%} {s.voiced_found / max(1, s.voiced):>7.1%}"
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
            print(f"  {name:<26} end p50 ×{end:.2f}   pauses cut ×{cut:.2f}   CPU per frame ×{cpu:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
