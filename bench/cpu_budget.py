# -*- test-case-name: tests.test_bench_scripts -*-
"""A CPU budget per worker process for a benchmark: one cgroup each, made for the run and removed after it.

``bench/transceiver.py --worker-cpu 0.6`` gives every voiceedge worker process
at most 0.6 of a core, so that 1 and 2 workers are compared at the same budget
per worker while the machine keeps room for the load client (on 2 cores, one
unbounded worker takes a whole core, two share what the client leaves).

The budget is the CPU controller's bandwidth limit: cgroup v1's
``cpu.cfs_quota_us``/``cpu.cfs_period_us`` or cgroup v2's ``cpu.max``, with a
short period (10 ms) so that a throttled worker waits a few milliseconds, not
a gap of 100 ms, and a burst of one period's quota (``cpu.cfs_burst_us``,
``cpu.max.burst``): what a worker left unused it may spend in a burst, so its
20 ms tick is not throttled while its average is under the budget. Each worker gets its own group (``voiceedge-bench-<pid>/w<i>``
under the controller's root); :class:`CpuBudget` is a context manager that
moves the processes back where they were and removes the groups when it
exits, on an error or Ctrl-C too; groups a killed run left behind are removed
by the next one. :class:`CpuSampler` reads each process's CPU (user and
system), each group's throttling (``cpu.stat``) and the machine's
``/proc/stat`` a few times a second, so figures can be cut to a load's
measurement window afterwards.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = [
    "CgroupUnavailable",
    "CpuBudget",
    "CpuSampler",
    "WindowFigures",
    "cgroup_base",
    "find_cpu_controller",
    "worker_pids",
]

PREFIX = "voiceedge-bench-"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class CgroupUnavailable(RuntimeError):
    """No CPU controller this process may write to: the budget cannot be set."""


@dataclass(frozen=True)
class Controller:
    """Where the CPU controller is mounted, and which cgroup version it is (1 or 2)."""

    root: Path
    version: int


def _mounts(mounts: Path) -> Iterator[tuple[str, str, list[str]]]:
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4:
            yield fields[1].replace("\\040", " "), fields[2], fields[3].split(",")


def find_cpu_controller(mounts: Path = Path("/proc/self/mounts")) -> Controller:
    """The writable CPU controller: v1's ``cpu`` hierarchy, else a v2 tree whose root offers ``cpu``.

    Raises :class:`CgroupUnavailable` saying what is missing.
    """
    found: list[Controller] = []
    v2_without_cpu: list[str] = []
    for where, kind, options in _mounts(mounts):
        if kind == "cgroup" and "cpu" in options:
            found.append(Controller(Path(where), 1))
        elif kind == "cgroup2":
            controllers = Path(where, "cgroup.controllers")
            try:
                offered = controllers.read_text().split()
            except OSError:
                offered = []
            if "cpu" in offered:
                found.append(Controller(Path(where), 2))
            else:
                v2_without_cpu.append(where)
    if not found:
        why = "no cgroup v1 'cpu' hierarchy is mounted"
        if v2_without_cpu:
            why += f" and the cgroup v2 tree ({', '.join(v2_without_cpu)}) does not offer the cpu controller"
        raise CgroupUnavailable(f"--worker-cpu needs the cgroup CPU controller: {why}")
    # v1 first: a controller bound to a v1 hierarchy is not available in v2 anyway.
    controller = sorted(found, key=lambda c: c.version)[0]
    if not os.access(controller.root, os.W_OK):
        raise CgroupUnavailable(
            f"--worker-cpu needs to create cgroups under {controller.root} (run as root, or delegate it to this user)"
        )
    return controller


def cgroup_base(controller: Controller | None = None) -> Path:
    """The directory this process's budgets make their groups in."""
    return (controller or find_cpu_controller()).root / f"{PREFIX}{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _original_group(pid: int, version: int) -> str:
    """The cgroup path ``pid`` is in, in the hierarchy of ``version`` ("/" when unknown)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        number, controllers, path = line.split(":", 2)
        if version == 2 and number == "0" and controllers == "":
            return path
        if version == 1 and "cpu" in controllers.split(","):
            return path
    return "/"


class CpuBudget:
    """One cgroup per worker, each at most ``share`` of a core, and one for the load; removed on exit.

    ``place(index, pid)`` moves a process (all its threads) into worker
    ``index``'s group (``w<index>``), ``place_load(pid)`` into the ``load``
    group; ``throttling(name)`` reads a group's ``cpu.stat``. Every group
    weighs ``weight`` default processes, so that on a machine others load
    too, the budget is what a worker gets, not only what it may take.
    """

    def __init__(
        self,
        share: float,
        period_us: int = 10_000,
        controller: Controller | None = None,
        weight: int = 100,
        burst_us: int | None = None,
    ) -> None:
        if not 0.01 <= share <= 64:
            raise ValueError("a worker's CPU budget is a share of one core, 0.01 to 64")
        if not 1_000 <= period_us <= 1_000_000:
            raise ValueError("the period is 1 ms to 1 s")
        self.share = share
        self.period_us = period_us
        self.quota_us = max(1_000, round(share * period_us))
        #: Unused quota a group may save for a burst (None: one period's quota). A worker's work comes in
        #: bursts (the 20 ms tick encodes every call's frame at once); without it a worker whose average
        #: is well under its share is still throttled inside such a burst.
        self.burst_us = self.quota_us if burst_us is None else max(0, min(burst_us, self.quota_us))
        #: The groups' weight against everything else, in multiples of a default process's.
        self.weight = max(1, min(weight, 100))
        self.controller = controller or find_cpu_controller()
        self.base = cgroup_base(self.controller)
        self.groups: dict[str, Path] = {}
        #: Each placed pid's cgroup before, to move it back.
        self.came_from: dict[int, str] = {}

    def __enter__(self) -> CpuBudget:
        remove_stale(self.controller)
        try:
            self.base.mkdir()
        except OSError as e:
            raise CgroupUnavailable(f"--worker-cpu could not create {self.base}: {e}") from None
        if self.controller.version == 2:
            self._write(self.base / "cgroup.subtree_control", "+cpu")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def group(self, name: str, quota: bool = True) -> Path:
        """Group ``name`` (``w0``, ``load``), created on first use with the weight and, with ``quota``, the budget."""
        path = self.groups.get(name)
        if path is None:
            path = self.base / name
            path.mkdir()
            self.groups[name] = path
            if self.controller.version == 1:
                if quota:
                    # The period first: a quota above the old period's would be refused.
                    self._write(path / "cpu.cfs_period_us", str(self.period_us))
                    self._write(path / "cpu.cfs_quota_us", str(self.quota_us))
                    if self.burst_us:
                        self._write(path / "cpu.cfs_burst_us", str(self.burst_us))
                self._write(path / "cpu.shares", str(1024 * self.weight))
            else:
                if quota:
                    self._write(path / "cpu.max", f"{self.quota_us} {self.period_us}")
                    if self.burst_us:
                        self._write(path / "cpu.max.burst", str(self.burst_us))
                self._write(path / "cpu.weight", str(min(10_000, 100 * self.weight)))
        return path

    def place(self, index: int, pid: int) -> None:
        """Move worker ``index``'s process (every thread of it) into its own group, at the budget."""
        self._move(self.group(f"w{index}"), pid)

    def place_load(self, pid: int) -> None:
        """Move ``pid`` into the ``load`` group: the weight, no budget; what it starts later starts there.

        The benchmark puts itself there first, so its load client and a
        supervisor (signaling) get the CPU they need on a busy machine too,
        and are not counted against any worker's budget.
        """
        self._move(self.group("load", quota=False), pid)

    def _move(self, path: Path, pid: int) -> None:
        self.came_from.setdefault(pid, _original_group(pid, self.controller.version))
        self._write(path / "cgroup.procs", str(pid))

    def throttling(self, name: str) -> dict[str, float]:
        """Group ``name``'s ``cpu.stat``: ``nr_periods``, ``nr_throttled``, ``throttled_ms``."""
        path = self.groups.get(name)
        return read_cpu_stat(path) if path is not None else {}

    def close(self) -> None:
        """Move every process still in a group back to its own cgroup, then remove the groups (bounded).

        A second Ctrl-C (or a SIGTERM) does not cut this short: they wait until the groups are gone.
        """
        previous = _ignore_signals()
        try:
            left = [*self.groups.values(), self.base]
            for _ in range(50):
                # Again each round: a process that was starting in a group as it was emptied.
                for path in left:
                    _empty(path, self.controller, self.came_from)
                left = [p for p in left if not _rmdir(p, tries=1)]
                if not left:
                    break
                time.sleep(0.02)
            self.groups.clear()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        if left:
            held = {str(p): _procs(p) for p in left}
            raise CgroupUnavailable(f"--worker-cpu could not remove {held} (group: the processes still in it)")

    @staticmethod
    def _write(path: Path, value: str) -> None:
        try:
            path.write_text(value)
        except OSError as e:
            raise CgroupUnavailable(f"--worker-cpu could not write {value!r} to {path}: {e}") from None


def _procs(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _empty(path: Path, controller: Controller, came_from: Mapping[int, str]) -> None:
    try:
        pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return
    for pid in pids:
        home = controller.root / came_from.get(pid, "/").lstrip("/")
        for target in (home, controller.root):
            try:
                (target / "cgroup.procs").write_text(str(pid))
                break
            except OSError:
                continue


def _ignore_signals() -> dict[int, Any]:
    """Ignore SIGINT and SIGTERM (in the main thread only); the handlers they had."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}


def _rmdir(path: Path, tries: int = 50) -> bool:
    """Remove an empty cgroup (True when it is gone); a process exiting just now may hold it a moment."""
    for _ in range(tries):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY:
                return False
            time.sleep(0.02)
    return False


def remove_stale(controller: Controller) -> None:
    """Remove, as far as it can, the groups of earlier runs whose process is gone (a run killed with SIGKILL)."""
    for base in controller.root.glob(f"{PREFIX}*"):
        match = re.fullmatch(rf"{PREFIX}(\d+)", base.name)
        if match is None or not base.is_dir() or _pid_alive(int(match.group(1))):
            continue
        for group in [p for p in base.iterdir() if p.is_dir()]:
            _empty(group, controller, {})
            _rmdir(group)
        _rmdir(base)


def read_cpu_stat(group: Path) -> dict[str, float]:
    """``nr_periods``, ``nr_throttled`` and ``throttled_ms`` of a group (v1 ``throttled_time`` ns, v2 ``throttled_usec``)."""
    out: dict[str, float] = {}
    try:
        text = (group / "cpu.stat").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in ("nr_periods", "nr_throttled"):
            out[key] = float(value)
        elif key == "throttled_time":
            out["throttled_ms"] = float(value) / 1e6
        elif key == "throttled_usec":
            out["throttled_ms"] = float(value) / 1e3
    return out


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def worker_pids(service_pid: int) -> dict[int, int]:
    """The worker processes of a service by index (``--worker <i>`` in their command line).

    A service with no worker children (``[process] workers = 1``) is its own
    worker 0.
    """
    workers: dict[int, int] = {}
    for child in _children(service_pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker" in argv:
            at = argv.index(b"--worker")
            if at + 1 < len(argv) and argv[at + 1].isdigit():
                workers[int(argv[at + 1])] = child
    return workers or {0: service_pid}


def _proc_cpu(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of ``pid``, every thread."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def _run_queue_wait(pid: int) -> float | None:
    """Seconds ``pid``'s main thread waited, runnable, for a core (``/proc/PID/schedstat``; throttling included)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _switches(pid: int) -> tuple[float, float] | None:
    """(voluntary, involuntary) context switches of ``pid``'s main thread: involuntary ones are preemptions."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = dict(
        (key, float(value)) for key, _, value in (line.partition(":") for line in text.splitlines())
        if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
    )
    return found.get("voluntary_ctxt_switches", 0.0), found.get("nonvoluntary_ctxt_switches", 0.0)


def _machine_cpu() -> dict[str, float]:
    """The machine's CPU seconds by kind, over every core (``/proc/stat``'s first line)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return {name: int(value) / CLOCK_TICKS for name, value in zip(names, fields)}


@dataclass
class Sample:
    """One reading: when (monotonic seconds), and every counter at that moment."""

    at: float
    values: dict[str, float]


@dataclass
class WindowFigures:
    """What each counter grew by over a window, and the window's length."""

    seconds: float
    deltas: dict[str, float] = field(default_factory=dict)

    def get(self, key: str) -> float:
        """A counter's growth over the window (0 when never read)."""
        return self.deltas.get(key, 0.0)


class CpuSampler:
    """Reads processes' CPU, groups' throttling and the machine's CPU every ``interval`` seconds in a thread.

    ``processes`` names each process (``w0``, ``supervisor``); ``budget``
    (optional) adds each worker group's ``cpu.stat`` as ``w<i>.nr_throttled``
    and so on. :meth:`window` interpolates every counter at a window's ends.
    """

    def __init__(
        self, processes: Mapping[str, int], budget: CpuBudget | None = None, interval: float = 0.2
    ) -> None:
        self.processes = dict(processes)
        self.budget = budget
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self.samples.append(self._read())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.samples.append(self._read())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self._read())

    def _read(self) -> Sample:
        values: dict[str, float] = {}
        at = time.monotonic()
        for name, pid in self.processes.items():
            cpu = _proc_cpu(pid)
            if cpu is not None:
                values[f"{name}.user"], values[f"{name}.system"] = cpu
            wait = _run_queue_wait(pid)
            if wait is not None:
                values[f"{name}.wait"] = wait
            switches = _switches(pid)
            if switches is not None:
                values[f"{name}.voluntary"], values[f"{name}.preempted"] = switches
        if self.budget is not None:
            for name in self.budget.groups:
                for key, value in self.budget.throttling(name).items():
                    values[f"{name}.{key}"] = value
        for key, value in _machine_cpu().items():
            values[f"machine.{key}"] = value
        return Sample(at, values)

    def window(self, start: float, end: float) -> WindowFigures:
        """Each counter's growth from ``start`` to ``end`` (monotonic seconds), interpolated between samples."""
        keys: set[str] = set()
        for sample in self.samples:
            keys.update(sample.values)
        return WindowFigures(end - start, {key: self._at(key, end) - self._at(key, start) for key in keys})

    def _at(self, key: str, when: float) -> float:
        points = [(s.at, s.values[key]) for s in self.samples if key in s.values]
        if not points:
            return 0.0
        if when <= points[0][0]:
            return points[0][1]
        for (t0, v0), (t1, v1) in zip(points, points[1:]):
            if t0 <= when <= t1:
                return v0 + (v1 - v0) * ((when - t0) / (t1 - t0) if t1 > t0 else 0.0)
        return points[-1][1]
