# -*- test-case-name: tests.test_bench_scripts -*-
"""The benchmarks still run: each script for a few calls or frames, its output read back.

Speed is never asserted here (bench/ measures it, side by side); these check that
a benchmark someone will run before a release starts its servers, loads them and
prints the figures it promises.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def _load_bench_module(name: str) -> Any:
    """``bench/<name>.py`` as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


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

    def test_worker_cpu_budget(self) -> None:
        """``--worker-cpu``: 1 and 2 workers each in a cgroup of their own, figures per worker, groups removed."""
        budget = _load_bench_module("cpu_budget")
        try:
            controller = budget.find_cpu_controller()
        except budget.CgroupUnavailable as e:
            raise unittest.SkipTest(str(e))
        out = run_bench(
            "bench/transceiver.py", "--capacity", "1,2", "--capacity-side", "transcoding-direct",
            "--worker-cpu", "0.6", "--step", "2", "--max", "2", "--seconds", "2", "--ramp", "10",
            "--settle", "1", "--warmup", "0", "--detector", "energy",
            timeout=300,
        )
        for workers, names in (("1", ["w0"]), ("2", ["w0", "w1"])):
            line = re.search(rf"workers={workers} calls=2: .*\n\s+(.*)\n", out)
            assert line is not None, out
            placed = 0
            for name in names:
                row = re.search(rf"{name}: (\d+) calls, ([\d.]+) % CPU .* throttled ([\d.]+) % of periods", line.group(1))
                assert row is not None, out
                placed += int(row.group(1))
            # Every call is on one of the workers; the supervisor is there only with workers.
            self.assertEqual(placed, 2, out)
            self.assertEqual("supervisor" in line.group(1), workers == "2", out)
        self.assertIn("calls held (each worker at most 0.6 of a core):", out)
        self.assertRegex(out, r"2 workers / 1 worker\(s\) = ([\d.]+x|n/a)")
        base = re.search(r"groups under (\S+)", out)
        assert base is not None, out
        self.assertTrue(base.group(1).startswith(str(controller.root)), out)
        self.assertFalse(Path(base.group(1)).exists(), f"{base.group(1)} left behind")

    def test_worker_cpu_budget_removed_on_ctrl_c(self) -> None:
        """Ctrl-C during a load: the run's cgroups are removed and its server stopped."""
        budget = _load_bench_module("cpu_budget")
        try:
            controller = budget.find_cpu_controller()
        except budget.CgroupUnavailable as e:
            raise unittest.SkipTest(str(e))
        proc = subprocess.Popen(
            [sys.executable, "bench/transceiver.py", "--capacity", "2", "--capacity-side", "transcoding-direct",
             "--worker-cpu", "0.5", "--step", "2", "--max", "2", "--seconds", "60", "--warmup", "0",
             "--detector", "energy"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        base = controller.root / f"{budget.PREFIX}{proc.pid}"
        deadline = time.monotonic() + 120

        def procs(group: str) -> list[str]:
            try:
                return (base / group / "cgroup.procs").read_text().split()
            except OSError:
                return []

        # Until both workers are in their groups and the load client runs (bench, supervisor, client), bounded.
        while not (procs("w0") and procs("w1") and len(procs("load")) >= 3):
            self.assertIsNone(proc.poll(), "the bench ended before its workers were placed")
            self.assertLess(time.monotonic(), deadline, "the workers were not placed within 120 s")
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        self.assertFalse(base.exists(), f"{base} left behind:\n{out}")


class CpuBudgetTests(unittest.SynchronousTestCase):
    """``bench/cpu_budget.py`` says why when it cannot set a budget."""

    def test_worker_cpu_refused_without_cgroups(self) -> None:
        """Without a writable CPU controller, ``--worker-cpu`` stops at once with the reason."""
        budget = _load_bench_module("cpu_budget")
        mounts = Path(self.mktemp())
        mounts.write_text("proc /proc proc rw 0 0\n")
        with self.assertRaisesRegex(budget.CgroupUnavailable, "no cgroup v1 'cpu' hierarchy is mounted"):
            budget.find_cpu_controller(mounts)


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
