# -*- test-case-name: tests.test_bench_scripts -*-
"""The benchmarks still run: each script for a few calls or frames, its output read back.

Speed is never asserted here (bench/ measures it, side by side); these check that
a benchmark someone will run before a release starts its servers, loads them and
prints the figures it promises.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.trial import unittest

from tests import pion_peer

ROOT = Path(__file__).resolve().parent.parent


def run_bench(*argv: str, timeout: float) -> str:
    """Run ``bench/ARGV`` with this interpreter; its standard output, or a failure with both streams."""
    proc = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    if proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc.stdout


class MediaPathTests(unittest.TestCase):
    """``bench/media_path.py`` echoes every frame of its in-memory sessions, both agents."""

    def test_both_agents_echo(self) -> None:
        for agent, application in (("echo", "voip"), ("echo", "lowdelay"), ("passthrough", None)):
            argv = ["bench/media_path.py", "--sessions", "2", "--seconds", "1", "--agent", agent]
            if application:
                argv += ["--application", application]
            out = run_bench(*argv, timeout=120)
            match = re.search(r"(\d+) sessions x (\d+) frames: (\d+) echoed, ([\d.]+) µs", out)
            assert match is not None, out
            sessions, frames, echoed = (int(match.group(i)) for i in (1, 2, 3))
            # The echo agent's first frames go to the speech detector's start, not back.
            self.assertGreater(echoed, sessions * frames // 2, out)
            self.assertGreater(float(match.group(4)), 0.0)


class MemoryBenchTests(unittest.TestCase):
    """``bench/memory.py`` prints memory per session on time and with the loop late."""

    def test_on_time_and_late(self) -> None:
        out = run_bench("bench/memory.py", "--sessions", "2", "--seconds", "1", "--late-ms", "0,200", "--top", "3",
                        timeout=120)
        for late in (0, 200):
            match = re.search(rf"late {late} ms, 2 sessions, energy: RSS growth (-?[\d.]+) kB per session.*"
                              rf"Python heap ([\d.]+) kB .* libopus states ([\d.]+) kB", out)
            assert match is not None, out
            self.assertGreater(float(match.group(2)), 0.0, out)
            self.assertGreater(float(match.group(3)), 0.0, out)
        self.assertRegex(out, r"agent audio queued: mean \d+ ms, largest \d+ ms")


@pytest.mark.integration
class TransceiverBenchTests(unittest.TestCase):
    """``bench/transceiver.py`` loads both voiceedge sides with Pion's client and prints the table."""

    def setUp(self) -> None:
        pion_peer.build()  # SkipTest without Go or Pion's sources

    def test_two_calls_per_side(self) -> None:
        out = run_bench(
            "bench/transceiver.py", "--sides", "passthrough-direct,transcoding-direct", "--calls", "2",
            "--seconds", "2", "--ramp", "10", "--settle", "1", "--warmup", "0", "--workers", "1",
            "--detector", "energy",
            timeout=240,
        )
        for side in ("passthrough-direct", "transcoding-direct"):
            # Every call set up and measured; how many held 48 packets/s is the load's business.
            row = re.search(rf"^\s+{side}\s+2\s+(\d+)\s+(\d+)\s+([\d.]+)", out, re.MULTILINE)
            assert row is not None, out
            self.assertEqual(row.group(1), "2", out)
            self.assertGreater(float(row.group(3)), 0.0, out)
            self.assertRegex(out, rf"done {side}@2: held \d/2, [\d.]+ CPU ms/call-s")
        self.assertIn("CPU per call-second, row / column (same run)", out)


class RelayBenchTests(unittest.TestCase):
    """``bench/relay.py`` forwards both directions, through one and two workers, and prints its summary."""

    def test_both_directions_and_workers(self) -> None:
        from voiceedge.relay.protocol import batch_backend

        if batch_backend() != "recvmmsg":
            raise unittest.SkipTest("voiceedge.relay._batchio is not built: scripts/test builds it")
        out = run_bench(
            "bench/relay.py", "--packets", "2000", "--flood", "4000", "--variants", "plain,relay-recvmmsg",
            "--worker-backends", "recvmmsg", timeout=150,
        )
        for direction in ("to_transceiver", "to_client"):
            self.assertRegex(out, rf"\n    {direction} +[\d.]+x +\d+ +\d+ +[\d.]+x\n", out)
            for workers in (1, 2):
                match = re.search(rf"{direction} +recvmmsg {workers} worker\(s\): +\d+ packets/s delivered \((\d+)/", out)
                assert match is not None, out
                self.assertGreater(int(match.group(1)), 0, out)
