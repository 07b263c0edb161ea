# -*- test-case-name: tests.test_bench_scripts -*-
"""CPU per call and calls held: voiceedge (transcoding and passthrough echo) beside Pion's and aiortc's echo, one run.

``python bench/transceiver.py [--calls 100] [--aiortc-calls 10] [--seconds 20] [--ramp 20]``
``python bench/transceiver.py --capacity 1,2 [--step 20] [--max 200]``

One load client for every side: ``pionpeer load`` (Go, ``tests/pion``), light
enough for 100+ calls on the same machine. Each call sends real Opus every
20 ms (``--audio tone`` by default: continuous sound, so every frame is
transcoded and the 48 packets/s criterion holds for a server that keeps up;
``--audio speech`` has pauses that voiceedge does not send back) and the
client measures what comes back. The sides, one after the other, each on
free loopback ports:

* ``transcoding``: ``twistd voiceedge`` (the all-in-one: relay + transceiver),
  the echo agent (Opus decoded to PCM and encoded again);
* ``passthrough``: the same with ``[agent.echo] passthrough = yes`` (the
  payloads go back as they came, through the jitter buffer and the pacing);
* ``passthrough-direct``: ``twistd voiceedge-transceiver`` alone, clients
  sending to it directly (no relay hop), passthrough echo: the same shape as
  Pion's echo server;
* ``pionecho``: ``bench/pionecho`` (Pion, no transcoding);
* ``aiortc``: ``bench/aiortc_echo_server.py`` (decodes and re-encodes), at
  ``--aiortc-calls`` only: it holds few.

Per side: calls up when the window opened, calls *held* (at least 48 packets/s
back over the window), the arrival gap p99 over every call (and the worst
call's), the server's CPU in ms per call-second and as % of one core, and
RSS per call (``pionpeer load --server-pid``, with the worker processes of
``--workers``: RSS at the end of the window less RSS before the load, over
the calls up, counted after ``--warmup`` calls made and ended first, so that
what the first calls touch once is not counted per call). Then the ratios of CPU per call-second, side by side.
RSS per call is memory the calls hold, not the allocator's slack: in a 30- and a
50-call transcoding run glibc's free lists held 0.1-0.6 MB of the process's 80-92 MB
and ``malloc_trim`` gave back less than 0.3 MB; but it is read once, at the end
of the window, so it includes what was queued at that moment (before ``[agent.echo]
max_lag_ms``, a late worker's echo backlog: up to 1.2 s of PCM per call), and it is
divided by the calls up when the window opened, so calls whose setup failed but
whose sessions still exist raise it. With Silero it reads low: the warm-up calls
leave about 4.5 MB free in glibc's heap, which the first calls reuse without
growing RSS (up to 90 kB per call at 50 calls).
``--steer-by-owner auto,no`` runs every all-in-one side (``transcoding``,
``passthrough``) with each ``[relay] steer_by_owner``, one after the other in
the same run: with workers, each call's packets steered to the worker that owns
the call, or left to the kernel's hash (docs/relay.md).
``--detector silero,energy`` and ``--echo-max-lag-ms 0,100`` run every voiceedge
side with each value, one after the other in the same run (``[agent.echo]
max_lag_ms = 0``: the echo's backlog after a late loop stays queued, as before
the bound). Absolute
figures depend on the machine's load; ratios within one run much less. Every
child is bounded and killed at the end.

``--capacity 1,2`` measures how many transcoding echo calls the all-in-one
holds with 1 and with 2 ``[process] workers``: for each, calls are offered in
steps of ``--step`` until a step fails the quality bar (at least 95 % of the
calls at 48 packets/s or more, arrival gap p99 at most 40 ms); the calls held
are the last step that passed. It prints both and their ratio.
``--capacity-side transcoding-direct`` does the same for the transceiver
service alone, whose workers each have their own media socket; in the
all-in-one every worker's relay shares the one public port, and without
steering (``[relay] steer_by_owner = no``, or where ``bpf()`` is refused) the
kernel hands about half the calls' packets to a worker that does not own the
call, and they take a hop between processes.

``--worker-cpu 0.6`` gives every voiceedge worker process at most 0.6 of a core
(``bench/cpu_budget.py``: a cgroup per worker, CFS bandwidth with a 10 ms
period and a burst of one period's quota, made for the run and removed at its
end, on Ctrl-C and SIGTERM too; it needs root and the cgroup CPU controller,
and says so otherwise). The worker groups and a ``load`` group (this process,
the load client, a supervisor) weigh 100 default processes, so that on a
shared machine the budget is what a worker may get, not only what it may take.
On 2 cores one unbounded worker takes a whole core while two share what the
load client leaves; at the same budget per worker, with room for the client at
both counts, ``--capacity 1,2 --step 5,10`` compares like for like (the same
calls per worker at each step; ``--start 40,80`` skips the first steps). With
``--capacity`` or ``--worker-cpu`` each step also prints, over the load's
window, every worker's calls (from the sessions' public ids), CPU % of a core
and its system part, CPU ms per call-second, its wait for a core, sleeps and
preemptions per second, calls whose own gap p99 exceeded 40 ms and, with a
budget, the share of periods it was throttled in and the time it waited; the
supervisor's CPU (signaling, with 2 workers; with 1 it is inside the worker and
its budget), the machine's busy share (system, softirq, steal), the client's CPU
and the load average.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import pion_peer  # noqa: E402
from tests.support import (  # noqa: E402
    NO_LOAD_LIMITS,
    free_tcp_port,
    free_udp_port,
    free_udp_run,
    http_get,
    running_service,
    wait_workers_serving,
    write_allinone_config,
)

from voiceedge.workers import parse_workers, process_count  # noqa: E402

from cpu_budget import (  # noqa: E402
    CgroupUnavailable,
    CpuBudget,
    cgroup_base,
    CpuSampler,
    WindowFigures,
    find_cpu_controller,
    worker_pids,
)

LOOPBACK = "127.0.0.1"
CHILD_DEADLINE = 600  # seconds: no server outlives this


@dataclass
class Side:
    """One server under load, and what the load measured."""

    name: str
    calls: int
    summary: dict[str, Any]

    def get(self, *keys: str, default: Any = None) -> Any:
        """A nested value of the load summary."""
        value: Any = self.summary
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        return value

    @property
    def cpu_per_call_s(self) -> float | None:
        """Server CPU ms per second of one call."""
        value = self.get("server", "cpu_ms_per_call_s")
        return float(value) if value else None


#: ``[speech] detector`` for the voiceedge sides (``--detector``); None: its default.
DETECTOR: str | None = None
#: ``[agent.echo] max_lag_ms`` for the voiceedge sides (``--echo-max-lag-ms``); None: its default.
ECHO_MAX_LAG_MS: int | None = None
#: ``[transceiver] media_poll_ms`` for the voiceedge sides (``--media-poll-ms``); None: its default.
MEDIA_POLL_MS: float | None = None
#: ``[relay] steer_by_owner`` for the all-in-one sides (``--steer-by-owner``); None: its default.
STEER_BY_OWNER: str | None = None
#: ``[relay] poll_ms`` for the all-in-one sides (``--relay-poll-ms``); None: its default.
RELAY_POLL_MS: float | None = None
#: The sides that run the all-in-one (where ``--steer-by-owner`` applies).
ALLINONE_SIDES = ("transcoding", "passthrough")


def _echo_options(passthrough: bool) -> dict[str, dict[str, object]]:
    echo: dict[str, object] = {"passthrough": passthrough}
    if ECHO_MAX_LAG_MS is not None:
        echo["max_lag_ms"] = ECHO_MAX_LAG_MS
    options: dict[str, dict[str, object]] = {"agent.echo": echo}
    if DETECTOR is not None:
        options["speech"] = {"detector": DETECTOR}
    return options


@contextmanager
def allinone(log_dir: Path, passthrough: bool, workers: str | None) -> Iterator[tuple[str, int]]:
    """``twistd voiceedge`` with the echo agent: (offer URL, pid)."""
    http_port, media_port = free_tcp_port(), free_udp_port()
    # Every call comes from this one address: no per-address call limit here.
    extra: dict[str, dict[str, object]] = {
        "transceiver": {"max_sessions": 10000},
        "signaling": {"calls_per_minute_per_address": 0},
    }
    if MEDIA_POLL_MS is not None:
        extra["transceiver"]["media_poll_ms"] = MEDIA_POLL_MS
    if workers is not None:
        extra["process"] = {"workers": workers}
    if STEER_BY_OWNER is not None or RELAY_POLL_MS is not None:
        extra["relay"] = {}
    if STEER_BY_OWNER is not None:
        extra["relay"]["steer_by_owner"] = STEER_BY_OWNER
    if RELAY_POLL_MS is not None:
        extra["relay"]["poll_ms"] = RELAY_POLL_MS
    ini = write_allinone_config(log_dir, http_port, media_port, **extra, **_echo_options(passthrough))
    base = f"http://{LOOPBACK}:{http_port}"
    with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=log_dir, timeout=60) as proc:
        if workers is not None and process_count(parse_workers(workers)) > 1:
            wait_workers_serving(base, process_count(parse_workers(workers)))
        yield base + "/v1/realtime/calls", proc.pid


@contextmanager
def transceiver_direct(log_dir: Path, passthrough: bool, workers: str | None) -> Iterator[tuple[str, int]]:
    """``twistd voiceedge-transceiver`` alone, clients sending to its media socket(s): (offer URL, pid)."""
    # One process unless --workers says otherwise, as the all-in-one's side.
    workers = workers or "1"
    count = process_count(parse_workers(workers))
    # Worker i's media socket is on the port plus i; clients reach each worker directly.
    http_port, media_port = free_tcp_port(), free_udp_run(count)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict(
        {
            "signaling": {"listen": f"tcp:{http_port}:interface={LOOPBACK}", "calls_per_minute_per_address": "0"},
            # Admission by load off, as for the all-in-one sides: the load is what is measured.
            "transceiver": {"media_listen": f"{LOOPBACK}:{media_port}", "max_sessions": "10000", **NO_LOAD_LIMITS},
            "agent": {"name": "echo"},
            "agent.echo": {"passthrough": "yes" if passthrough else "no"},
        }
    )
    if ECHO_MAX_LAG_MS is not None:
        parser["agent.echo"]["max_lag_ms"] = str(ECHO_MAX_LAG_MS)
    if MEDIA_POLL_MS is not None:
        parser["transceiver"]["media_poll_ms"] = str(MEDIA_POLL_MS)
    if DETECTOR is not None:
        parser["speech"] = {"detector": DETECTOR}
    parser["process"] = {"workers": workers}
    ini = log_dir / "transceiver.ini"
    with ini.open("w") as f:
        parser.write(f)
    base = f"http://{LOOPBACK}:{http_port}"
    with running_service(["voiceedge-transceiver", "--config", str(ini)], base + "/healthz", log_dir=log_dir, timeout=60) as proc:
        if count > 1:
            wait_workers_serving(base, count)
        yield base + "/v1/realtime/calls", proc.pid


@contextmanager
def pionecho(log_dir: Path, workers: str | None) -> Iterator[tuple[str, int]]:
    """Pion's echo server: (offer URL, pid)."""
    with pion_peer.running_pionecho(log_dir=log_dir) as echo:
        yield echo.offer_url, echo.pid


@contextmanager
def aiortc(log_dir: Path, workers: str | None) -> Iterator[tuple[str, int]]:
    """``bench/aiortc_echo_server.py``: (offer URL, pid)."""
    port = free_tcp_port()
    base = f"http://{LOOPBACK}:{port}"
    script = ROOT / "bench" / "aiortc_echo_server.py"
    with (log_dir / "aiortc_echo_server.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--port", str(port), "--deadline", str(CHILD_DEADLINE)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"aiortc echo server exited with {proc.returncode}")
            try:
                if http_get(base + "/healthz", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("aiortc echo server not healthy after 30 s")
            time.sleep(0.2)
        yield base + "/v1/realtime/calls", proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()


SERVERS: dict[str, Callable[[Path, str | None], Any]] = {
    "transcoding": lambda d, w: allinone(d, False, w),
    "passthrough": lambda d, w: allinone(d, True, w),
    "passthrough-direct": lambda d, w: transceiver_direct(d, True, w),
    "transcoding-direct": lambda d, w: transceiver_direct(d, False, w),
    "pionecho": pionecho,
    "aiortc": aiortc,
}


def measure(name: str, calls: int, args: argparse.Namespace, tmp: Path, variant: str = "") -> Side:
    """Start ``name``'s server, load it with ``calls`` Pion calls, stop it (``variant``: a label for its logs).

    With ``--worker-cpu`` (voiceedge sides) each worker process runs in its own
    cgroup at that share of a core; with it or ``--capacity``, each process's
    CPU is sampled and cut to the load's window (:attr:`Side.processes`).
    """
    log_dir = tmp / f"{name}-{calls}-w{args.workers or 0}{variant}"
    log_dir.mkdir()
    ours = name not in ("pionecho", "aiortc")
    workers = args.workers if ours else None
    with SERVERS[name](log_dir, workers) as (url, pid), ExitStack() as stack:
        sampler: CpuSampler | None = None
        budget: CpuBudget | None = args.budget
        if ours and (budget is not None or args.capacity):
            by_index = worker_pids(pid)
            if budget is not None:
                for index, worker in by_index.items():
                    budget.place(index, worker)
            processes = {f"w{index}": worker for index, worker in sorted(by_index.items())}
            if pid not in by_index.values():
                processes["supervisor"] = pid
            sampler = stack.enter_context(CpuSampler(processes, budget))
        if args.warmup:
            # What the first calls touch once (imports, library pages, the speech model's
            # buffers) is not memory per call: RSS is measured from after these.
            pion_peer.load(url, n=args.warmup, ramp=args.ramp, seconds=2, settle=1, audio=args.audio,
                           setup_timeout=15.0, log_dir=log_dir)
        launched = time.monotonic()
        summary = pion_peer.load(
            url,
            n=calls,
            ramp=args.ramp,
            seconds=args.seconds,
            settle=args.settle,
            server_pids=[pid],
            server_children=True,
            audio=args.audio,
            per_call=sampler is not None,
            setup_timeout=max(15.0, calls / args.ramp),
            log_dir=log_dir,
        )
        if sampler is not None:
            # Stop sampling now, so that the window's end has a sample after it.
            stack.close()
            start = launched + float(summary.get("setup_wait_s", 0.0))
            figures = sampler.window(start, start + float(summary.get("window_s", args.seconds)))
            summary["processes"] = process_figures(figures, summary.pop("calls", None) or [], budget)
    summary.pop("pion_problems", None)
    (log_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return Side(name, calls, summary)


_WORKER_OF_LOCATION = re.compile(r"/(w\d+)\.[^/]*$")


def process_figures(figures: WindowFigures, calls: list[dict[str, Any]], budget: CpuBudget | None) -> dict[str, Any]:
    """Per process over the load's window: CPU % of a core (and its system part), calls placed on it, throttling.

    ``calls`` are pionpeer's per-call results: a call's ``location``
    (``.../calls/w<i>.<id>``) names the worker that holds it; a service of one
    process gives plain ids, all worker 0's.
    """
    window = figures.seconds or 1.0
    placed: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        match = _WORKER_OF_LOCATION.search(str(call.get("location") or ""))
        if call.get("location"):
            placed.setdefault(match.group(1) if match else "w0", []).append(call)
    names = sorted(key.split(".", 1)[0] for key in figures.deltas if key.endswith(".user"))
    out: dict[str, Any] = {}
    for name in names:
        cpu = figures.get(f"{name}.user") + figures.get(f"{name}.system")
        row: dict[str, Any] = {
            "cpu_pct": round(100 * cpu / window, 1),
            "system_pct": round(100 * figures.get(f"{name}.system") / window, 1),
            "wait_ms_per_s": round(1000 * figures.get(f"{name}.wait") / window, 1),
            "preempted_per_s": round(figures.get(f"{name}.preempted") / window),
            "wakeups_per_s": round(figures.get(f"{name}.voluntary") / window),
        }
        if name != "supervisor":
            mine = placed.get(name, [])
            row["calls"] = len(mine)
            row["cpu_ms_per_call_s"] = round(1000 * cpu / window / len(mine), 2) if mine else None
            row["calls_gap_p99_over_40ms"] = sum(1 for c in mine if float(c.get("gap_p99_ms") or 0) > 40.0)
            if budget is not None and figures.get(f"{name}.nr_periods"):
                periods = figures.get(f"{name}.nr_periods")
                row["throttled_periods_pct"] = round(100 * figures.get(f"{name}.nr_throttled") / periods, 1) if periods else 0.0
                row["throttled_ms_per_s"] = round(figures.get(f"{name}.throttled_ms") / window, 1)
        out[name] = row
    machine = {key.split(".", 1)[1]: value for key, value in figures.deltas.items() if key.startswith("machine.")}
    total = sum(machine.values()) or 1.0
    out["machine"] = {
        "busy_pct": round(100 * (total - machine.get("idle", 0.0) - machine.get("iowait", 0.0)) / window, 1),
        "system_pct": round(100 * machine.get("system", 0.0) / window, 1),
        "softirq_pct": round(100 * (machine.get("softirq", 0.0) + machine.get("irq", 0.0)) / window, 1),
        "steal_pct": round(100 * machine.get("steal", 0.0) / window, 1),
    }
    return out


def describe_processes(side: Side) -> str:
    """One line: each worker's calls, CPU and throttling; the supervisor; the machine and the client."""
    processes = side.get("processes") or {}
    parts = []
    for name, row in processes.items():
        if name.startswith("w"):
            text = (f"{name}: {row['calls']} calls, {row['cpu_pct']:.1f} % CPU (system {row['system_pct']:.1f},"
                    f" waited {row['wait_ms_per_s']:.0f} ms/s, {row['wakeups_per_s']} sleeps/s,"
                    f" {row['preempted_per_s']} preempted/s),"
                    f" {row['cpu_ms_per_call_s'] if row['cpu_ms_per_call_s'] is not None else '-'} ms/call-s,"
                    f" {row['calls_gap_p99_over_40ms']} calls gap p99 > 40 ms")
            if "throttled_periods_pct" in row:
                text += f", throttled {row['throttled_periods_pct']:.1f} % of periods ({row['throttled_ms_per_s']:.1f} ms/s)"
            parts.append(text)
        elif name == "supervisor":
            parts.append(f"supervisor {row['cpu_pct']:.1f} %")
    machine = processes.get("machine")
    if machine:
        parts.append(
            f"machine {machine['busy_pct']:.0f} % busy (system {machine['system_pct']:.0f}, softirq"
            f" {machine['softirq_pct']:.0f}, steal {machine['steal_pct']:.0f})"
        )
    parts.append(f"client {side.get('client', 'cpu_pct', default=0):.0f} %")
    parts.append(
        f"load average {side.get('client', 'loadavg_1m_start', default=0):.1f}"
        f"-{side.get('client', 'loadavg_1m_end', default=0):.1f}"
    )
    return "; ".join(parts)


def print_sides(sides: list[Side]) -> None:
    """The table, then CPU per call-second as ratios between the sides."""
    print(
        f"  {'side':30s} {'N':>4s} {'up':>4s} {'held':>5s} {'pps mean':>8s} {'gap p99':>8s} {'worst':>7s}"
        f" {'CPU ms/call-s':>13s} {'CPU %':>6s} {'RSS kB/call':>11s} {'client %':>8s}"
    )
    for s in sides:
        cpu = s.cpu_per_call_s
        print(
            f"  {s.name:30s} {s.calls:4d} {s.get('up_at_window', default=0):4d}"
            f" {s.get('calls_ge_48pps', default=0):5d} {s.get('in_pps_per_call', 'mean', default=0):8.1f}"
            f" {s.get('gap_ms', 'p99', default=0):8.1f} {s.get('gap_p99_ms_worst_call', default=0):7.1f}"
            f" {cpu if cpu is not None else float('nan'):13.2f} {s.get('server', 'cpu_pct', default=0):6.1f}"
            f" {s.get('server', 'rss_kb_per_call', default=0):11.1f} {s.get('client', 'cpu_pct', default=0):8.1f}"
        )
        errors = s.get("errors") or {}
        if errors:
            print(f"      errors: {dict(list(errors.items())[:3])}")
    print("  CPU per call-second, row / column (same run):")
    named = [s for s in sides if s.cpu_per_call_s]
    header = "".join(f" {f'{s.name}@{s.calls}':>34s}" for s in named)
    print(f"  {'':36s}{header}")
    for row in named:
        cells = "".join(f" {row.cpu_per_call_s / col.cpu_per_call_s:34.2f}" for col in named)  # type: ignore[operator]
        print(f"  {f'{row.name}@{row.calls}':36s}{cells}")


GOOD_SHARE = 0.95
MAX_GAP_P99_MS = 40.0


def holds(side: Side) -> bool:
    """The quality bar: nearly every call at 48 packets/s, and a gap p99 of 40 ms at most."""
    held = side.get("calls_ge_48pps", default=0)
    gap = side.get("gap_ms", "p99", default=float("inf"))
    return held >= GOOD_SHARE * side.calls and gap <= MAX_GAP_P99_MS


def capacity(args: argparse.Namespace, tmp: Path) -> None:
    """Calls held by the transcoding echo (``--capacity-side``) with each worker count, and the ratio."""
    held: dict[str, int] = {}
    at_best: dict[str, Side | None] = {}
    counts = args.capacity.split(",")
    steps = [int(n) for n in str(args.step).split(",")]
    starts = [int(n) for n in args.start.split(",")] if args.start else steps
    for name, values in (("--start", starts), ("--step", steps)):
        if len(values) not in (1, len(counts)) or min(values) < 1:
            raise SystemExit(f"{name}: a count, or one per --capacity count")

    def each(values: list[int]) -> list[int]:
        return values * len(counts) if len(values) == 1 else values

    for workers, first, step in zip(counts, each(starts), each(steps)):
        args.workers = workers
        best: int = 0
        best_side: Side | None = None
        for calls in range(first, args.max + 1, step):
            side = measure(args.capacity_side, calls, args, tmp)
            ok = holds(side)
            print(
                f"  workers={workers} calls={calls}: {side.get('calls_ge_48pps')} at >= 48 pps,"
                f" gap p99 {side.get('gap_ms', 'p99')} ms, {side.cpu_per_call_s} CPU ms/call-s,"
                f" CPU {side.get('server', 'cpu_pct')} % -> {'holds' if ok else 'does not hold'}",
                flush=True,
            )
            print(f"      {describe_processes(side)}", flush=True)
            if not ok:
                break
            best, best_side = calls, side
        held[workers], at_best[workers] = best, best_side
    budget = f"each worker at most {args.worker_cpu:g} of a core" if args.worker_cpu else "no CPU budget"
    print(f"  calls held ({budget}):")
    for workers, calls in held.items():
        text = f"  {workers} worker(s): {calls} calls held" if calls else f"  {workers} worker(s): none held (the first step failed)"
        held_side = at_best[workers]
        if held_side is not None:
            text += f" ({held_side.cpu_per_call_s} CPU ms/call-s; {describe_processes(held_side)})"
        print(text)
    held_counts = list(held.values())
    if len(held_counts) == 2:
        ratio = f"{held_counts[1] / held_counts[0]:.2f}x" if held_counts[0] else "n/a (the first held none)"
        print(f"  {list(held)[1]} workers / {list(held)[0]} worker(s) = {ratio} calls held")


def main() -> None:
    """Parse arguments, run every side, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="100", help="calls per voiceedge and Pion side (comma list: one run each)")
    parser.add_argument("--aiortc-calls", type=int, default=10, help="calls for aiortc's echo (it holds few)")
    parser.add_argument("--sides", default="transcoding,passthrough,passthrough-direct,pionecho,aiortc")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per side")
    parser.add_argument("--ramp", type=float, default=20.0, help="calls started per second")
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--audio", default="tone", choices=("tone", "speech"))
    parser.add_argument("--workers", default=None, help="[process] workers for the voiceedge sides (default: theirs)")
    parser.add_argument("--detector", default=None,
                        help="[speech] detector of the voiceedge sides: silero or energy, or both (silero,energy:"
                        " every voiceedge side with each, side by side; default: the service's, silero)")
    parser.add_argument("--echo-max-lag-ms", default=None,
                        help="[agent.echo] max_lag_ms of the voiceedge sides, or a comma list (0,100: every"
                        " voiceedge side with each, side by side; default: the service's; 0: no bound, a late"
                        " worker's backlog stays queued)")
    parser.add_argument(
        "--media-poll-ms",
        help="[transceiver] media_poll_ms of the voiceedge sides, or a comma list (0,2: every voiceedge side with"
        " each, side by side; default: the service's; 0: wake at every datagram)",
    )
    parser.add_argument("--steer-by-owner", default=None,
                        help="[relay] steer_by_owner of the all-in-one sides, or a comma list (auto,no: each such"
                        " side with each, side by side; default: the service's, auto)")
    parser.add_argument("--relay-poll-ms", default=None,
                        help="[relay] poll_ms of the all-in-one sides, or a comma list (0,2: each such side with"
                        " each, side by side; default: the service's; 0: wake at every datagram)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="calls made and ended before each side's load (RSS per call counts from after them)")
    parser.add_argument("--capacity", default="", help="worker counts to find the calls held for, e.g. 1,2")
    parser.add_argument("--capacity-side", default="transcoding", choices=("transcoding", "transcoding-direct"),
                        help="what --capacity loads: the all-in-one (one public port: a call whose packets the"
                        " kernel hands to another worker's relay takes a hop between processes) or the"
                        " transceiver service alone (each worker its own media socket)")
    parser.add_argument("--step", default="20",
                        help="calls added per capacity step (one value, or one per --capacity count: 10,20 offers"
                        " the same calls per worker at each step)")
    parser.add_argument("--max", type=int, default=200, help="most calls a capacity search offers")
    parser.add_argument("--start", default="",
                        help="first step of each capacity search (one value, or one per --capacity count, e.g."
                        " 40,80; default --step): a search that fails its first step reports 0 held")
    parser.add_argument("--worker-cpu", type=float, default=None,
                        help="each voiceedge worker process at most this share of a core (0.6: 60 %%), in a cgroup of"
                        " its own made for the run and removed after it (root, cgroup v1 cpu or v2): 1 and 2 workers"
                        " at the same budget each, with room left for the load client")
    parser.add_argument("--worker-cpu-weight", type=int, default=100,
                        help="the weight of the workers' groups and of the load's (this process, the load client,"
                        " a supervisor), in default processes (cpu.shares 1024 each): 100 makes the budget what a"
                        " worker gets on a machine others load too, not only what it may take")
    parser.add_argument("--worker-cpu-burst-ms", type=float, default=None,
                        help="unused budget a worker may save for a burst (default: one period's; 0: none, every period"
                        " at most the share)")
    parser.add_argument("--worker-cpu-period-ms", type=float, default=10.0,
                        help="the budget's period: a worker over its share waits at most this long (default 10)")
    args = parser.parse_args()
    args.worker_cpu_period_us = round(args.worker_cpu_period_ms * 1000)
    if args.worker_cpu is not None:
        if not 0.05 <= args.worker_cpu <= 64 or not 1_000 <= args.worker_cpu_period_us <= 1_000_000:
            parser.error("--worker-cpu: a share of one core, 0.05 to 64; --worker-cpu-period-ms: 1 to 1000")
        try:
            find_cpu_controller()
        except CgroupUnavailable as e:
            raise SystemExit(f"bench/transceiver.py: {e}") from None
        # SIGTERM ends the run through the context managers, which remove the cgroups.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        print(
            f"worker CPU budget: {args.worker_cpu:g} of a core per worker, period {args.worker_cpu_period_ms:g} ms,"
            f" burst {'one period' if args.worker_cpu_burst_ms is None else f'{args.worker_cpu_burst_ms:g} ms'},"
            f" weight {args.worker_cpu_weight}x a default process's,"
            f" groups under {cgroup_base()}",
            flush=True,
        )
    with ExitStack() as stack:
        args.budget = None
        if args.worker_cpu is not None:
            args.budget = stack.enter_context(
                CpuBudget(args.worker_cpu, args.worker_cpu_period_us, weight=args.worker_cpu_weight,
                          burst_us=None if args.worker_cpu_burst_ms is None else round(args.worker_cpu_burst_ms * 1000))
            )
            # This process, its load client and a supervisor: in the load group, outside every budget.
            args.budget.place_load(os.getpid())
        run(parser, args)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every side (or the capacity search) as ``args`` say."""
    global DETECTOR, ECHO_MAX_LAG_MS, STEER_BY_OWNER, MEDIA_POLL_MS, RELAY_POLL_MS
    detectors: list[str | None] = [None] if args.detector is None else list(args.detector.split(","))
    if not set(detectors) <= {None, "silero", "energy"}:
        parser.error(f"--detector: silero, energy or both, not {args.detector!r}")
    lags: list[int | None] = [None] if args.echo_max_lag_ms is None else [int(x) for x in args.echo_max_lag_ms.split(",")]
    steers: list[str | None] = [None] if args.steer_by_owner is None else list(args.steer_by_owner.split(","))
    polls: list[float | None] = [None] if args.media_poll_ms is None else [float(x) for x in args.media_poll_ms.split(",")]
    relay_polls: list[float | None] = (
        [None] if args.relay_poll_ms is None else [float(x) for x in args.relay_poll_ms.split(",")]
    )
    if not set(steers) <= {None, "auto", "yes", "no"}:
        parser.error(f"--steer-by-owner: auto, yes, no or a comma list of them, not {args.steer_by_owner!r}")
    DETECTOR, ECHO_MAX_LAG_MS, STEER_BY_OWNER, MEDIA_POLL_MS = detectors[0], lags[0], steers[0], polls[0]
    RELAY_POLL_MS = relay_polls[0]
    if args.capacity:
        with tempfile.TemporaryDirectory(prefix="voiceedge-bench-") as tmp:
            capacity(args, Path(tmp))
        return
    counts = [int(n) for n in args.calls.split(",")]
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    print(
        f"pionpeer load, {args.audio}, window {args.seconds:.0f} s, ramp {args.ramp:.0f}/s; {os.cpu_count()} CPUs,"
        f" load average {load1:.1f} at start; Python {sys.version.split()[0]}",
        flush=True,
    )
    started = time.monotonic()
    sides: list[Side] = []
    with tempfile.TemporaryDirectory(prefix="voiceedge-bench-") as tmp:
        for name in args.sides.split(","):
            # The variants (detector, echo bound) apply to voiceedge's sides only, steering to the all-in-one's.
            ours = name not in ("pionecho", "aiortc")
            steered = name in ALLINONE_SIDES
            variants = (
                [
                    (d, lag, st, poll, relay_poll)
                    for d in detectors
                    for lag in lags
                    for st in (steers if steered else [None])
                    for poll in polls
                    for relay_poll in (relay_polls if steered else [None])
                ]
                if ours else [(None, None, None, None, None)]
            )
            for detector, lag, steer, poll, relay_poll in variants:
                DETECTOR, ECHO_MAX_LAG_MS, STEER_BY_OWNER, MEDIA_POLL_MS = detector, lag, steer, poll
                RELAY_POLL_MS = relay_poll
                label = name
                if ours and len(detectors) > 1:
                    label += f" {detector}"
                if ours and len(lags) > 1:
                    label += f" lag={lag}"
                if ours and len(polls) > 1:
                    label += f" poll={poll:g}"
                if steered and len(steers) > 1:
                    label += f" steer={steer}"
                if steered and len(relay_polls) > 1:
                    label += f" relay_poll={relay_poll:g}"
                for calls in [args.aiortc_calls] if name == "aiortc" else counts:
                    side = measure(name, calls, args, Path(tmp), label[len(name):].replace(" ", "-"))
                    side.name = label
                    sides.append(side)
                    print(
                        f"  done {label}@{calls}: held {side.get('calls_ge_48pps')}/{calls},"
                        f" {side.cpu_per_call_s} CPU ms/call-s, RSS {side.get('server', 'rss_kb_per_call')} kB/call",
                        flush=True,
                    )
    print_sides(sides)
    try:
        load2 = os.getloadavg()[0]
    except OSError:
        load2 = float("nan")
    print(f"  total {time.monotonic() - started:.0f} s; load average {load2:.1f} at the end")


if __name__ == "__main__":
    main()
