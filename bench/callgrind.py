"""Instructions a command runs in user space, counted by valgrind's callgrind: a figure load does not change.

The benchmarks' ``--instructions``/``--callgrind`` modes run a short and a long
run of the same work and divide the difference by the work added, so start-up
(the interpreter, imports, set-up) cancels out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence


def instructions(argv: Sequence[str], env: Mapping[str, str] | None = None, out_file: str = "/dev/null") -> int:
    """Instructions ``argv`` ran under callgrind (``SystemExit`` without valgrind or if the run fails)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("instruction counts need valgrind (apt-get install valgrind)")
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_file}", *argv],
        capture_output=True, text=True, check=False, env=None if env is None else dict(env),
    )
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode or match is None:
        raise SystemExit(f"callgrind failed:\n{proc.stdout[-1000:]}{proc.stderr[-2000:]}")
    return int(match.group(1))


def per_unit(
    argv_for: Callable[[int], Sequence[str]], short: int, long: int, env: Mapping[str, str] | None = None
) -> float:
    """Instructions per unit of work: ``argv_for(n)`` does ``n`` units; runs at ``short`` and ``long``, subtracted."""
    counts = [instructions(argv_for(n), env) for n in (short, long)]
    return (counts[1] - counts[0]) / (long - short)
