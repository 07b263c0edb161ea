# -*- test-case-name: tests.test_fuzz -*-
"""Fuzz every target for as long as asked, printing the inputs each one ran.

Run ``python bench/fuzz.py --seconds 60`` (each target, one round) or
``python bench/fuzz.py --hours 8 --seconds 600`` (rounds over all targets until the time is
up). The engine is atheris (coverage-guided libFuzzer) when it is installed, else a mutation
loop. Work goes to ``--work`` (default ``build/fuzz``): each target's grown corpus (a later run
resumes from it) and any crash input, which ``python -m tests.fuzz_targets NAME FILE``
replays. Totals across runs accumulate in ``<work>/totals.json``. The exit status is 1 if
any target crashed, hung or blew its memory limit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz_runner import REPO, FuzzRun, engine_available, run_target  # noqa: E402
from tests.fuzz_targets import TARGETS  # noqa: E402


def main() -> int:
    """Run rounds of every chosen target and print a line per target per round, then totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per target per round")
    parser.add_argument("--hours", type=float, default=0.0, help="keep running rounds for this long")
    parser.add_argument("--jobs", type=int, default=2, help="targets fuzzed at once")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "fuzz", help="corpus and crashes")
    parser.add_argument("--engine", choices=("atheris", "random"), default=engine_available())
    parser.add_argument("targets", nargs="*", default=sorted(TARGETS), help="targets (default: all)")
    args = parser.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {sorted(TARGETS)}")
    totals_path = args.work / "totals.json"
    args.work.mkdir(parents=True, exist_ok=True)
    totals: dict[str, int] = json.loads(totals_path.read_text()) if totals_path.exists() else {}
    stop_at = time.monotonic() + args.hours * 3600
    failed = False
    print(f"engine {args.engine}, {args.seconds:g} s per target per round, work in {args.work}")
    print(f"{'target':<18} {'inputs':>12} {'per s':>9} {'corpus':>7}  result")
    while True:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            runs: list[FuzzRun] = list(
                pool.map(lambda name: run_target(name, args.seconds, args.work, args.engine), args.targets)
            )
        for run in runs:
            totals[run.target] = totals.get(run.target, 0) + run.inputs
            result = "ok" if run.ok else f"FAILED (exit {run.returncode}) {' '.join(map(str, run.crashes))}"
            print(f"{run.target:<18} {run.inputs:>12,} {run.inputs / max(run.seconds, 1e-9):>9,.0f}"
                  f" {run.corpus:>7}  {result}", flush=True)
            if not run.ok:
                failed = True
                print(run.output[-3000:])
        totals_path.write_text(json.dumps(totals, indent=1, sort_keys=True))
        if failed or time.monotonic() >= stop_at:
            break
    print(f"inputs this run: {sum(r.inputs for r in runs):,} (last round); all runs in {args.work}:"
          f" {sum(totals.values()):,}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
