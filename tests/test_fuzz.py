"""Every fuzz target, briefly, under the coverage-guided engine (the corpus replay is test_fuzz_corpus)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.trial.unittest import TestCase

from tests.fuzz_runner import FuzzRun, run_targets
from tests.fuzz_targets import TARGETS

# Each target runs in processes of its own under the coverage-guided engine.
pytestmark = pytest.mark.integration

# Seconds per target in the test suite; bench/fuzz.py runs as long as asked.
FUZZ_SECONDS = float(os.environ.get("VOICEEDGE_FUZZ_SECONDS", "2"))


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
