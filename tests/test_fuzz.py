"""Every fuzz target, briefly, under the coverage-guided engine; and the corpus replayed in process."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.fuzz_runner import SEED_CORPUS, FuzzRun, run_targets
from tests.fuzz_targets import TARGETS

# Seconds per target in the test suite; bench/fuzz.py runs as long as asked.
FUZZ_SECONDS = float(os.environ.get("VOICEEDGE_FUZZ_SECONDS", "2"))


class CorpusReplayTests(SynchronousTestCase):
    """Every input of the repository's corpus keeps its target's contract (in process, fast)."""

    def test_every_target_has_seeds(self) -> None:
        """Each target starts from real traffic, not from nothing."""
        for name in TARGETS:
            self.assertTrue(any((SEED_CORPUS / name).glob("*")), f"no seeds for {name}")

    def test_corpus_replays(self) -> None:
        """No corpus input raises (crash inputs found once stay here as regressions)."""
        for name, run in TARGETS.items():
            for path in sorted((SEED_CORPUS / name).glob("*")):
                try:
                    run(path.read_bytes())
                except Exception as e:  # noqa: BLE001 - the report names the input
                    self.fail(f"{name} {path.name}: {type(e).__name__}: {e}")


# Every target's run, made by the first test that needs one: one process instruments and
# imports voiceedge once for all the targets (each fuzzes in a child forked from it), instead
# of one process and one instrumentation per target.
_runs: dict[str, FuzzRun] = {}


class FuzzTargetTests(TestCase):
    """Each target under atheris (or the mutation loop) for a few seconds: no crash, hang or blow-up."""

    def _fuzz(self, name: str) -> None:
        if not _runs:
            _runs.update(run_targets(list(TARGETS), FUZZ_SECONDS, Path(self.mktemp()).resolve()))
        run = _runs[name]
        self.assertTrue(run.ok, f"{name}: exit {run.returncode}, crashes {run.crashes}\n{run.output}")


def _make_test(name: str) -> None:
    def test(self: FuzzTargetTests) -> None:
        self._fuzz(name)

    test.__doc__ = f"The {name} target keeps its contract for {FUZZ_SECONDS:g} s of fuzzing."
    setattr(FuzzTargetTests, f"test_{name}", test)


for _name in TARGETS:
    _make_test(_name)
