"""The fuzz corpus replayed in process: every seed and every crash found once keeps its target's contract."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.fuzz_runner import SEED_CORPUS
from tests.fuzz_targets import TARGETS


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
