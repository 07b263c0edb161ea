# -*- test-case-name: tests.test_admission -*-
"""Admission by load: a transceiver refuses a new call its CPU cannot carry, before its calls suffer.

:class:`LoadMeter` measures the process's own load on a periodic timer, with
the clock and the CPU counter passed in: how late the timer fires (the event
loop's lag: everything the loop does between two timers delays the next one)
and the share of one core the process used since the last sample, both
smoothed over about ``halflife`` seconds. :class:`Admission` decides from it
whether a new session may open: refused (``"cpu"`` or ``"loop_lag"``) while
either is over its threshold. Two things keep it honest:

* **A burst.** Offers that arrive together all see the same reading, taken
  before any of them costs anything. Each admitted call is counted at the
  cost of an average call (the smoothed share over the sessions open) until
  the meter has had time to see it, so the projection, not the stale
  reading, is what is compared with the threshold.
* **No flapping.** Once over a threshold, calls are refused until the load is
  back under ``resume`` times it.

A count of sessions alone cannot do this: a transcoding call costs about ten
times a passthrough one.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Callable, Iterator

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from voiceedge.metrics import Sample

__all__ = ["CPU", "DEFAULT_CALL_COST", "LOOP_LAG", "Admission", "LoadMeter"]

CPU = "cpu"
LOOP_LAG = "loop_lag"
#: A call's share of a core before any shows in the reading: a transcoding call with the Silero
#: detector on the quiet machine (35 CPU ms per call-second for the echo, 13 for Silero). A
#: passthrough call costs a tenth of it; the reading takes over as soon as calls show in it.
DEFAULT_CALL_COST = 0.05
_SCHEDSTAT = "/proc/self/schedstat"


def run_queue_wait() -> float:
    """Seconds the process's main thread (its event loop) has waited, runnable, for a core (Linux; else 0).

    The second field of ``/proc/self/schedstat``: on a machine whose cores
    others take, a process falls behind while it waits here, whatever its own
    CPU share.
    """
    try:
        with open(_SCHEDSTAT, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class LoadMeter:
    """The event loop's lag and the process's CPU share, sampled every ``interval`` seconds and smoothed.

    ``cpu_time()`` is the process's CPU seconds (user and system, every
    thread); ``wait_time()`` the seconds its event loop waited, runnable, for
    a core (:func:`run_queue_wait`). Each sample weighs by the time it covers, with a half-life of
    ``halflife`` seconds, so a late sample (a loop that fell behind) counts
    for what it covers.
    """

    def __init__(
        self,
        clock: IReactorTime,
        cpu_time: Callable[[], float] = time.process_time,
        interval: float = 0.1,
        halflife: float = 1.0,
        wait_time: Callable[[], float] = run_queue_wait,
    ) -> None:
        self.clock = clock
        self.cpu_time = cpu_time
        self.wait_time = wait_time
        self.interval = interval
        self.halflife = halflife
        #: Smoothed share of one core (1.0: a whole core).
        self.cpu = 0.0
        #: Smoothed share of the time it waited for a core while it could have run.
        self.wait = 0.0
        #: Smoothed seconds the timer fired late.
        self.loop_lag = 0.0
        #: The latest raw lag, and the largest since start (seconds).
        self.last_lag = 0.0
        self.max_lag = 0.0
        self.samples = 0
        self._at = clock.seconds()
        self._cpu_at = cpu_time()
        self._wait_at = wait_time()
        self._due = self._at + interval
        self._call: IDelayedCall | None = None
        self._warm = False

    def start(self) -> None:
        """Sample every ``interval`` seconds from now."""
        if self._call is None:
            self._at, self._cpu_at, self._wait_at = self.clock.seconds(), self.cpu_time(), self.wait_time()
            self._warm = False
            self._arm(self._at)

    def stop(self) -> None:
        """Stop sampling."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _arm(self, now: float) -> None:
        self._due = now + self.interval
        self._call = self.clock.callLater(self.interval, self._fired)

    def _fired(self) -> None:
        now = self.clock.seconds()
        if self._warm:
            self.observe(now, self.cpu_time(), now - self._due, self.wait_time())
        else:
            # The first timer after start() measures start-up (imports, a model loading, the
            # reactor not yet running), not the loop: it only sets the baseline.
            self._warm = True
            self._at, self._cpu_at, self._wait_at = now, self.cpu_time(), self.wait_time()
        self._arm(now)

    @property
    def demand(self) -> float:
        """The share of a core the process used or waited for: near 1, it cannot keep up."""
        return self.cpu + self.wait

    def observe(self, now: float, cpu_seconds: float, lag: float, wait_seconds: float = 0.0) -> None:
        """One sample: the clock ``now``, the process's CPU seconds, how late the timer fired, its run-queue wait."""
        elapsed = now - self._at
        if elapsed <= 0:
            return
        share = max(0.0, (cpu_seconds - self._cpu_at) / elapsed)
        waited = max(0.0, (wait_seconds - self._wait_at) / elapsed)
        lag = max(0.0, lag)
        weight = 1.0 - math.pow(0.5, elapsed / self.halflife)
        if self.samples == 0:
            self.cpu, self.wait, self.loop_lag = share, waited, lag
        else:
            self.cpu += weight * (share - self.cpu)
            self.wait += weight * (waited - self.wait)
            self.loop_lag += weight * (lag - self.loop_lag)
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)
        self.samples += 1
        self._at, self._cpu_at, self._wait_at = now, cpu_seconds, wait_seconds


class Admission:
    """Whether a new session may open, from a :class:`LoadMeter` and two thresholds.

    ``max_cpu`` is a share of one core (``None``: no limit) that the process's
    demand (:attr:`LoadMeter.demand`: CPU used plus time waited for a core)
    may reach; ``max_loop_lag``
    seconds (``None``: no limit). A call admitted less than ``settle``
    seconds ago is counted at ``(1 - age / settle)`` of the cost of an
    average call on top of the reading: the part the smoothed reading does not
    show yet. With no session in the reading the cost of a call is ``default_cost``.
    A threshold crossed stays crossed until its value is under ``resume``
    times the threshold.
    """

    def __init__(
        self,
        meter: LoadMeter,
        max_cpu: float | None,
        max_loop_lag: float | None,
        *,
        settle: float = 2.0,
        default_cost: float = DEFAULT_CALL_COST,
        resume: float = 0.85,
    ) -> None:
        self.meter = meter
        self.clock = meter.clock
        self.max_cpu = max_cpu
        self.max_loop_lag = max_loop_lag
        self.settle = settle
        self.default_cost = default_cost
        self.resume = resume
        self._over: dict[str, bool] = {CPU: False, LOOP_LAG: False}
        self._admitted: collections.deque[float] = collections.deque()

    def cost_per_session(self, sessions: int) -> float:
        """The share of a core an average call costs here now: the reading over the sessions it shows."""
        shown = sessions - self.unseen()
        if shown < 1:
            return self.default_cost
        return self.meter.demand / shown

    def unseen(self) -> float:
        """Calls admitted lately, weighted by how much of their cost the reading does not show yet."""
        now = self.clock.seconds()
        admitted = self._admitted
        while admitted and admitted[0] <= now - self.settle:
            admitted.popleft()
        return sum(max(0.0, 1.0 - (now - at) / self.settle) for at in admitted)

    def projected_cpu(self, sessions: int) -> float:
        """The smoothed demand plus what the calls admitted lately will add."""
        return self.meter.demand + self.unseen() * self.cost_per_session(sessions)

    def refusal(self, sessions: int) -> str | None:
        """``"cpu"`` or ``"loop_lag"`` when a new call must be refused now, else ``None``."""
        if self.max_cpu is not None:
            self._over[CPU] = self._crossed(CPU, self.projected_cpu(sessions), self.max_cpu)
        if self.max_loop_lag is not None:
            self._over[LOOP_LAG] = self._crossed(LOOP_LAG, self.meter.loop_lag, self.max_loop_lag)
        for reason in (CPU, LOOP_LAG):
            if self._over[reason]:
                return reason
        return None

    def _crossed(self, reason: str, value: float, limit: float) -> bool:
        if self._over[reason]:
            return value >= limit * self.resume
        return value > limit

    def admitted(self) -> None:
        """A session was just opened: count it until the reading shows it."""
        self._admitted.append(self.clock.seconds())

    def describe(self, reason: str, sessions: int) -> str:
        """The refusal in a sentence for the caller and the log."""
        if reason == CPU:
            waited = (f" (it used {self.meter.cpu * 100:.0f} % and waited for a core {self.meter.wait * 100:.0f} %"
                      " of the time)" if self.meter.wait >= 0.01 else "")
            return (f"this transceiver is overloaded: CPU {self.projected_cpu(sessions) * 100:.0f} % of a core{waited}"
                    f" is over its limit of {(self.max_cpu or 0) * 100:.0f} %")
        return (f"this transceiver is overloaded: its event loop runs {self.meter.loop_lag * 1000:.0f} ms late,"
                f" over its limit of {(self.max_loop_lag or 0) * 1000:.0f} ms")

    def report(self, sessions: int) -> dict[str, object]:
        """The load as JSON-ready numbers, for the internal API and the registry."""
        return {
            "cpu": round(self.meter.cpu, 3),
            "cpu_wait": round(self.meter.wait, 3),
            "loop_lag_ms": round(self.meter.loop_lag * 1000, 1),
            "admitting": self.refusal(sessions) is None,
        }

    def metrics(self, sessions: int) -> Iterator[Sample]:
        """Gauges of the load and the decision."""
        p = "voiceedge_transceiver_"
        yield ("gauge", p + "cpu_ratio", "Share of one core this process used, smoothed (1 = a whole core).",
               {}, self.meter.cpu)
        yield ("gauge", p + "cpu_wait_ratio",
               "Share of the time its event loop waited, runnable, for a core (others took it), smoothed.",
               {}, self.meter.wait)
        yield ("gauge", p + "cpu_projected_ratio",
               "CPU used plus waited for, with the calls admitted too lately to show: what max_cpu_percent limits.",
               {}, self.projected_cpu(sessions))
        yield ("gauge", p + "loop_lag_seconds", "How late the event loop runs a timer, smoothed.", {}, self.meter.loop_lag)
        yield ("gauge", p + "loop_lag_max_seconds", "The latest timer since start.", {}, self.meter.max_lag)
        yield ("gauge", p + "admitting", "1 while new sessions are admitted by load, 0 while refused.",
               {}, 1 if self.refusal(sessions) is None else 0)
        if self.max_cpu is not None:
            yield ("gauge", p + "max_cpu_ratio", "[transceiver] max_cpu_percent as a share of one core.", {}, self.max_cpu)
        if self.max_loop_lag is not None:
            yield ("gauge", p + "max_loop_lag_seconds", "[transceiver] max_loop_lag_ms in seconds.", {}, self.max_loop_lag)
