"""Run one fuzz target under a coverage-guided engine: ``python -m tests.fuzz_runner NAME [libFuzzer args] DIR...``.

The engine is atheris (libFuzzer for Python, coverage of voiceedge's own code): new inputs
that reach new code go into the first corpus directory, a crash is written under
``-artifact_prefix``, ``-max_total_time`` bounds the run, ``-timeout`` (seconds per input)
catches hangs and ``-rss_limit_mb`` unbounded memory. ``-print_final_stats=1`` makes it print
``stat::number_of_executed_units``, the inputs it ran.

Without atheris (``--engine=random`` or when it does not import), a plain mutation loop over
the corpus runs instead, with the same contract and the same final line, so the test suite
still checks every target.
"""

from __future__ import annotations

import os
import pkgutil
import random
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SEED_CORPUS = REPO / "tests" / "fuzz" / "corpus"
_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")


@dataclass(frozen=True)
class FuzzRun:
    """What one bounded run of one target did."""

    target: str
    engine: str
    seconds: float
    inputs: int
    corpus: int
    crashes: list[Path]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        """No crash, no hang, no memory blow-up, and inputs were run."""
        return self.returncode == 0 and not self.crashes and self.inputs > 0


def engine_available() -> str:
    """``atheris`` when it imports here, else ``random``."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "random"
    return "atheris"


def run_target(
    name: str,
    seconds: float,
    work: Path,
    engine: str | None = None,
    per_input_timeout: int = 10,
    rss_limit_mb: int = 2048,
) -> FuzzRun:
    """Fuzz ``name`` for ``seconds`` in a child process and report.

    New inputs go to ``work/corpus/<name>`` (kept between runs, so a long
    run resumes where the last stopped), seeded from the repository's
    corpus; crashes to ``work/crashes/<name>-*``.
    """
    engine = engine or engine_available()
    corpus = work / "corpus" / name
    crashes = work / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.glob(f"{name}-*"))
    command = [
        sys.executable, "-m", "tests.fuzz_runner", name, f"--engine={engine}",
        f"-max_total_time={max(1, round(seconds))}", "-print_final_stats=1",
        f"-timeout={per_input_timeout}", f"-rss_limit_mb={rss_limit_mb}",
        f"-artifact_prefix={crashes}/{name}-", "-close_fd_mask=0",
        str(corpus), str(SEED_CORPUS / name),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=seconds + per_input_timeout + 60,
        )
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        output, returncode = (e.stdout or b"") + (e.stderr or b""), -9
    found = _EXECUTED.findall(output)
    return FuzzRun(
        name, engine, time.monotonic() - started, int(found[-1]) if found else 0,
        sum(1 for _ in corpus.iterdir()), sorted(set(crashes.glob(f"{name}-*")) - before), returncode,
        output.decode("utf-8", "replace")[-6000:],
    )


def _import_voiceedge() -> None:
    """Import every voiceedge module the targets reach (under instrumentation, when there is one)."""
    import voiceedge

    skip = ("voiceedge.tap", "voiceedge.relay.tap", "voiceedge.transceiver.tap", "voiceedge.signaling")
    for module in pkgutil.walk_packages(voiceedge.__path__, "voiceedge."):
        if module.name.startswith(skip) and module.name != "voiceedge.signaling.answer":
            continue
        __import__(module.name)
    import voiceedge.signaling.answer  # noqa: F401


class InputHung(Exception):
    """One input ran longer than the per-input limit: a hang, reported as a crash with its input."""


def _watchdog(run: Any, seconds: float) -> Any:
    """``run`` under a per-input timer that raises :class:`InputHung` in Python code.

    libFuzzer's own -timeout cannot interrupt a Python target that holds the
    GIL; a SIGALRM handler raising between bytecodes can.
    """
    import signal

    def alarm(signum: int, frame: object) -> None:
        raise InputHung(f"one input ran over {seconds} s")

    signal.signal(signal.SIGALRM, alarm)

    def guarded(data: bytes) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            run(data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    return guarded


def _corpus(directories: list[str]) -> list[bytes]:
    inputs = []
    for directory in directories:
        for path in sorted(Path(directory).glob("*")):
            if path.is_file():
                inputs.append(path.read_bytes())
    return inputs


def _mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """One random edit: flip, insert, delete, duplicate a span, or splice another input."""
    buffer = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        choice = rng.randrange(6)
        position = rng.randrange(len(buffer) + 1)
        if choice == 0 and buffer:
            buffer[min(position, len(buffer) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            buffer[position:position] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif choice == 2 and buffer:
            del buffer[position : position + rng.randrange(1, 16)]
        elif choice == 3 and buffer:
            span = buffer[position : position + rng.randrange(1, 64)]
            buffer[position:position] = span
        elif choice == 4 and corpus:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            buffer = buffer[:position] + bytearray(other[cut:])
        elif buffer:
            buffer[min(position, len(buffer) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
    return bytes(buffer[:4096])


def _random_engine(name: str, args: list[str]) -> int:
    """A mutation loop for machines without atheris; prints libFuzzer's final stat line."""
    from tests.fuzz_targets import TARGETS

    options = dict(a[1:].split("=", 1) for a in args if a.startswith("-") and "=" in a)
    directories = [a for a in args if not a.startswith("-")]
    seconds = float(options.get("max_total_time", "10"))
    prefix = options.get("artifact_prefix", "./crash-")
    seed = int(options.get("seed", "0")) or int(time.time())
    rng = random.Random(seed)
    corpus = _corpus(directories) or [b""]
    run = _watchdog(TARGETS[name], float(options.get("timeout", "10")))
    executed = 0
    deadline = time.monotonic() + seconds
    for data in corpus:  # every corpus input first: the regression check
        executed += _one(run, data, prefix)
    while time.monotonic() < deadline:
        executed += _one(run, _mutate(rng, rng.choice(corpus), corpus), prefix)
    print(f"stat::number_of_executed_units: {executed}")
    return 0


def _one(run: object, data: bytes, prefix: str) -> int:
    try:
        run(data)  # type: ignore[operator]
    except Exception:
        path = f"{prefix}{os.urandom(6).hex()}"
        Path(path).write_bytes(data)
        traceback.print_exc()
        print(f"==ERROR: uncaught exception; input written to {path}", flush=True)
        print("stat::number_of_executed_units: 0")
        sys.exit(1)
    return 1


def main() -> int:
    """Parse ``NAME [--engine=atheris|random] [libFuzzer args] DIR...`` and fuzz."""
    name, *args = sys.argv[1:]
    engine = "atheris"
    for arg in list(args):
        if arg.startswith("--engine="):
            engine = arg.partition("=")[2]
            args.remove(arg)
    if engine == "atheris":
        try:
            import atheris
        except ImportError:
            engine = "random"
    if engine == "random":
        _import_voiceedge()
        return _random_engine(name, args)
    with atheris.instrument_imports(include=["voiceedge"]):
        _import_voiceedge()
    from tests.fuzz_targets import TARGETS

    options = dict(a[1:].split("=", 1) for a in args if a.startswith("-") and "=" in a)
    run = _watchdog(TARGETS[name], float(options.get("timeout", "10")) / 2)
    atheris.Setup([sys.argv[0], *args], run)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
