"""Run one fuzz target under a coverage-guided engine: ``python -m tests.fuzz_runner NAME [libFuzzer args] DIR...``.

The engine is atheris (libFuzzer for Python, coverage of voiceedge's own code): new inputs
that reach new code go into the first corpus directory, a crash is written under
``-artifact_prefix``, ``-max_total_time`` bounds the run, ``-timeout`` (seconds per input)
catches hangs and ``-rss_limit_mb`` unbounded memory. ``-print_final_stats=1`` makes it print
``stat::number_of_executed_units``, the inputs it ran.

Without atheris (``--engine=random`` or when it does not import), a plain mutation loop over
the corpus runs instead, with the same contract and the same final line, so the test suite
still checks every target.

``python -m tests.fuzz_runner --batch NAME,NAME,... --work=DIR [args]`` runs several targets
one after the other from one process: voiceedge is instrumented and imported once, then each
target fuzzes in a child forked from it (its own libFuzzer, output in ``DIR/logs/NAME.log``),
so the suite pays the instrumentation once, not once per target (:func:`run_targets`).
"""

from __future__ import annotations

import json
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


def run_targets(
    names: list[str],
    seconds: float,
    work: Path,
    engine: str | None = None,
    per_input_timeout: int = 10,
    rss_limit_mb: int = 2048,
) -> dict[str, FuzzRun]:
    """Fuzz each of ``names`` for ``seconds``, one after the other, from one child process.

    The same contract and report as :func:`run_target` for each, with one
    instrumentation and import of voiceedge for all of them (each target
    then runs in a process forked from that one).
    """
    engine = engine or engine_available()
    logs, crashes = work / "logs", work / "crashes"
    for directory in (logs, crashes, *(work / "corpus" / name for name in names)):
        directory.mkdir(parents=True, exist_ok=True)
    before = {name: set(crashes.glob(f"{name}-*")) for name in names}
    command = [
        sys.executable, "-m", "tests.fuzz_runner", "--batch", ",".join(names), f"--work={work}",
        f"--engine={engine}", f"-max_total_time={max(1, round(seconds))}", "-print_final_stats=1",
        f"-timeout={per_input_timeout}", f"-rss_limit_mb={rss_limit_mb}", "-close_fd_mask=0",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    returncodes: dict[str, int] = {}
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=len(names) * (seconds + per_input_timeout + 30) + 60,
        )
        output = done.stdout + done.stderr
        for line in done.stdout.splitlines():
            if line.startswith(b"{"):
                returncodes = json.loads(line)["returncodes"]
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"") + (e.stderr or b"")
    elapsed = (time.monotonic() - started) / max(len(names), 1)
    runs = {}
    for name in names:
        log = logs / f"{name}.log"
        text = log.read_bytes() if log.exists() else output
        found = _EXECUTED.findall(text)
        runs[name] = FuzzRun(
            name, engine, elapsed, int(found[-1]) if found else 0,
            sum(1 for _ in (work / "corpus" / name).iterdir()),
            sorted(set(crashes.glob(f"{name}-*")) - before[name]), returncodes.get(name, -9),
            text.decode("utf-8", "replace")[-6000:],
        )
    return runs


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


def _fuzz(name: str, engine: str, args: list[str]) -> int:
    """Fuzz one target in this (already instrumented) process; libFuzzer exits it when done."""
    if engine == "random":
        return _random_engine(name, args)
    import atheris

    from tests.fuzz_targets import TARGETS

    options = dict(a[1:].split("=", 1) for a in args if a.startswith("-") and "=" in a)
    run = _watchdog(TARGETS[name], float(options.get("timeout", "10")) / 2)
    atheris.Setup([sys.argv[0], *args], run)
    atheris.Fuzz()
    return 0


def _batch(names: list[str], engine: str, args: list[str], work: Path) -> int:
    """Each target in a child forked from this process, one at a time; prints their exit codes."""
    options = dict(a[1:].split("=", 1) for a in args if a.startswith("-") and "=" in a)
    bound = float(options.get("max_total_time", "10")) + float(options.get("timeout", "10")) + 30
    returncodes: dict[str, int] = {}
    for name in names:
        target_args = [
            *args, f"-artifact_prefix={work}/crashes/{name}-", str(work / "corpus" / name), str(SEED_CORPUS / name),
        ]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: its own output file, its own libFuzzer
            fd = os.open(work / "logs" / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 70
            try:
                code = _fuzz(name, engine, target_args)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - reported in the log, as a failed run
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + bound
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                returncodes[name] = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                returncodes[name] = -9
                break
            time.sleep(0.05)
    print(json.dumps({"returncodes": returncodes}), flush=True)
    return 0


def main() -> int:
    """Parse ``NAME|--batch NAMES --work=DIR [--engine=atheris|random] [libFuzzer args] DIR...`` and fuzz."""
    argv = sys.argv[1:]
    names: list[str] = []
    work: Path | None = None
    if argv[0] == "--batch":
        names, argv = argv[1].split(","), argv[2:]
    else:
        names, argv = [argv[0]], argv[1:]
    engine = "atheris"
    args = []
    for arg in argv:
        if arg.startswith("--engine="):
            engine = arg.partition("=")[2]
        elif arg.startswith("--work="):
            work = Path(arg.partition("=")[2])
        else:
            args.append(arg)
    if engine == "atheris":
        try:
            import atheris
        except ImportError:
            engine = "random"
    if engine == "atheris":
        with atheris.instrument_imports(include=["voiceedge"]):
            _import_voiceedge()
    else:
        _import_voiceedge()
    if work is not None:
        return _batch(names, engine, args, work)
    return _fuzz(names[0], engine, args)


if __name__ == "__main__":
    sys.exit(main())
