# -*- test-case-name: tests.test_workers -*-
"""Worker processes on every core: how many, and a supervisor that runs them and keeps them running.

CPython runs one thread of Python at a time, so a service uses more than one
core by running more than one process. With ``workers`` above 1 the process
that ``twistd`` starts becomes a *supervisor*: it starts that many copies of
the same service (the same INI file, ``--worker <i>``), each a whole relay or
transceiver of its own, restarts one that dies, and stops them all when it
stops. Workers share the public UDP port with ``SO_REUSEPORT`` (the kernel
sends each client's packets to one worker, by a hash of its address); what
a worker needs alone (an internal socket, an HTTP port) it takes at the
configured port plus its index. A worker exits when its supervisor is gone.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
import signal
import socket
import sys
from typing import Any, Callable, Mapping, Sequence

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from voiceedge import config as c
from voiceedge.config import setting
from voiceedge.metrics import Sample

__all__ = [
    "AUTO",
    "ParentWatch",
    "ProcessSettings",
    "SupervisorDrain",
    "WorkerSupervisor",
    "enable_reuse_port",
    "offset_port",
    "offset_strport",
    "parse_workers",
    "process_count",
    "twistd_argv",
]

log = Logger()

#: The environment variable a worker finds its supervisor's pid in.
SUPERVISOR_PID = "VOICEEDGE_SUPERVISOR_PID"
_MAX_WORKERS = 256
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


#: ``workers = auto``, as parsed: one worker per core, decided when the service starts.
AUTO = 0


def parse_workers(text: str) -> int:
    """An INI ``workers`` value: ``auto`` (:data:`AUTO`) or a count 1-256."""
    value = text.strip().lower()
    if value == "auto":
        return AUTO
    try:
        count = int(value)
    except ValueError:
        raise ValueError("must be auto or a count of processes") from None
    if not 1 <= count <= _MAX_WORKERS:
        raise ValueError(f"must be auto or 1-{_MAX_WORKERS}")
    return count


def process_count(workers: int) -> int:
    """How many processes ``workers`` means here: :data:`AUTO` is one per core."""
    if workers == AUTO:
        return max(1, min(_MAX_WORKERS, os.cpu_count() or 1))
    return workers


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    """``[process]``: how many worker processes run the service (all-in-one, relay, transceiver)."""

    workers: int = setting(
        parse_workers, "auto", "worker processes: auto (one per core) or a count; 1 runs no supervisor"
    )
    restart_delay: float = setting(
        c.seconds(0.1, 60), "0.5", "seconds before a worker that died is started again (doubling while it keeps dying)"
    )

    @property
    def count(self) -> int:
        """The number of processes ``workers`` means on this machine."""
        return process_count(self.workers)


def enable_reuse_port(sock: socket.socket) -> None:
    """Let other processes bind the same address (``SO_REUSEPORT``); ``OSError`` where there is none."""
    option = getattr(socket, "SO_REUSEPORT", None)
    if option is None:
        raise OSError("this platform has no SO_REUSEPORT: run one worker")
    sock.setsockopt(socket.SOL_SOCKET, option, 1)


def offset_port(address: tuple[str, int], index: int) -> tuple[str, int]:
    """Worker ``index``'s own address: the port plus the index (port 0 stays 0: any free port)."""
    host, port = address
    return (host, port + index) if port else (host, 0)


def offset_strport(description: str, index: int) -> str:
    """The same for a Twisted endpoint string such as ``tcp:9090:interface=127.0.0.1``."""
    match = re.match(r"^(tcp|ssl|tcp6):(\d+)(.*)$", description)
    if match is None or not index:
        return description
    kind, port, rest = match.groups()
    number = int(port)
    return description if number == 0 else f"{kind}:{number + index}{rest}"


def twistd_argv(plugin: str, options: Sequence[str], index: int) -> list[str]:
    """The argv that runs worker ``index`` of ``plugin`` with this interpreter."""
    return [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", plugin, *options, "--worker", str(index)]


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        self.ended.callback(None)
        self.supervisor._ended(self, reason)


class WorkerSupervisor(service.Service):
    """Runs ``count`` worker processes and keeps them running.

    ``argv_for(i)`` is worker ``i``'s command line. A worker that exits while
    the supervisor runs is started again after ``restart_delay`` seconds
    (doubling, up to a minute, while it keeps dying within ``stable`` seconds
    of its start), unless the supervisor drains (:meth:`drain`). Stopping
    sends every worker ``stop_signal`` (SIGTERM) and waits for them (SIGKILL
    after ``stop_grace`` seconds). Workers' output goes where the supervisor's
    goes; ``inherit`` maps more of each worker's descriptors to the
    supervisor's (child fd -> this process's fd).
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv_for: Callable[[int], list[str]],
        env: Mapping[str, str] | None = None,
        *,
        restart_delay: float = 0.5,
        stable: float = 10.0,
        stop_grace: float = 10.0,
        stop_signal: int = signal.SIGTERM,
        inherit: Mapping[int, int] | None = None,
    ) -> None:
        if not IReactorProcess.providedBy(reactor):
            raise TypeError("the supervisor needs a reactor that can spawn processes")
        self.reactor = reactor
        self.clock: Any = reactor
        self.count = count
        self.argv_for = argv_for
        self.env = dict(os.environ if env is None else env)
        self.restart_delay = restart_delay
        self.stable = stable
        self.stop_grace = stop_grace
        self.stop_signal = stop_signal
        self.inherit = dict(inherit or {})
        self.draining = False
        self.processes: dict[int, _WorkerProcess] = {}
        self.started_at: dict[int, float] = {}
        self.delays: dict[int, float] = {}
        self.restarts = 0
        self._pending: dict[int, Any] = {}

    def pids(self) -> dict[int, int]:
        """The pid of every running worker, by index."""
        out = {}
        for index, proc in self.processes.items():
            pid = proc.transport.pid if proc.transport is not None else None
            if pid:
                out[index] = pid
        return out

    def startService(self) -> None:
        """Start every worker."""
        super().startService()
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if not self.running:
            return
        argv = self.argv_for(index)
        env = dict(self.env)
        env[SUPERVISOR_PID] = str(os.getpid())
        proc = _WorkerProcess(self, index)
        # Workers write to the supervisor's own stdout and stderr (its log).
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2, **self.inherit}
        self.reactor.spawnProcess(proc, argv[0], argv, env=env, childFDs=child_fds)
        self.processes[index] = proc
        self.started_at[index] = self.clock.seconds()
        log.info("worker {index} started: pid {pid}", index=index, pid=proc.transport.pid if proc.transport else None)

    def _ended(self, proc: _WorkerProcess, reason: Failure) -> None:
        index = proc.index
        if self.processes.get(index) is proc:
            del self.processes[index]
        if not self.running or self.draining:
            return
        lived = self.clock.seconds() - self.started_at.get(index, 0.0)
        delay = self.delays.get(index, self.restart_delay)
        delay = self.restart_delay if lived >= self.stable else min(60.0, delay * 2)
        self.delays[index] = delay
        self.restarts += 1
        log.warn(
            "worker {index} ended ({why}) after {lived:.1f} s; starting it again in {delay:.1f} s",
            index=index, why=reason.value, lived=lived, delay=delay,
        )
        self._pending[index] = self.clock.callLater(delay, self._spawn, index)

    def drain(self) -> defer.Deferred[Any]:
        """SIGTERM every worker and start none again (each drains itself); fires when all have exited."""
        self.draining = True
        self._cancel_restarts()
        waits = []
        for proc in list(self.processes.values()):
            waits.append(proc.ended)
            self._signal(proc, signal.SIGTERM)
        return defer.DeferredList(waits)

    def _cancel_restarts(self) -> None:
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()

    def stopService(self) -> defer.Deferred[Any]:
        """Signal every worker; the Deferred fires when all have exited (SIGKILL after the grace)."""
        super().stopService()
        self._cancel_restarts()
        waits = []
        for proc in list(self.processes.values()):
            waits.append(proc.ended)
            self._signal(proc, self.stop_signal)
        if not waits:
            return defer.succeed(None)
        done: defer.Deferred[Any] = defer.DeferredList(waits)
        killer = self.clock.callLater(self.stop_grace, self._kill_all)

        def stop_killer(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            return result

        done.addBoth(stop_killer)
        return done

    def _kill_all(self) -> None:
        for proc in list(self.processes.values()):
            self._signal(proc, signal.SIGKILL)

    @staticmethod
    def _signal(proc: _WorkerProcess, number: int) -> None:
        try:
            if proc.transport is not None:
                proc.transport.signalProcess(number)
        except Exception:  # already gone
            pass


class SupervisorDrain:
    """SIGTERM on a supervisor of workers that drain themselves (transceivers, docs/fleet.md).

    The first SIGTERM passes one to every worker, which drains (no new
    call, the live ones go on, it exits when it holds none); no worker is
    started again, and the supervisor stops once every worker has exited.
    The second stops the supervisor at once: stopping, it ends its workers
    with its ``stop_signal`` (SIGINT for transceivers: they end their calls and exit).
    """

    def __init__(self, supervisor: WorkerSupervisor, stop: Callable[[], None]) -> None:
        self.supervisor = supervisor
        self.stop = stop
        self.sigterms = 0

    @property
    def draining(self) -> bool:
        """Whether a drain has started."""
        return self.sigterms > 0

    def sigterm(self) -> None:
        """The first SIGTERM drains every worker; the second stops now."""
        self.sigterms += 1
        if self.sigterms == 1:
            log.info("draining: SIGTERM to {n} workers; exit when they all have", n=len(self.supervisor.processes))
            done = self.supervisor.drain()
            done.addCallback(lambda _: self._drained())
            return
        log.info("second SIGTERM: the workers end their calls and exit now")
        self.stop()

    def _drained(self) -> None:
        log.info("drained: every worker has exited")
        self.stop()

    def metrics(self) -> list[Sample]:
        """``voiceedge_transceiver_draining``, as one transceiver serves it."""
        return [
            ("gauge", "voiceedge_transceiver_draining", "1 while the transceiver drains", {},
             1 if self.draining else 0),
            ("gauge", "voiceedge_workers_running", "Worker processes running", {}, len(self.supervisor.processes)),
            ("counter", "voiceedge_workers_restarted", "Workers started again after they died", {},
             self.supervisor.restarts),
        ]


class ParentWatch(service.Service):
    """Stops the reactor of a worker whose supervisor is gone (killed with no chance to stop it)."""

    def __init__(self, clock: IReactorTime, stop: Callable[[], None], supervisor: int | None = None) -> None:
        self.clock = clock
        self.stop = stop
        env = os.environ.get(SUPERVISOR_PID)
        self.supervisor = supervisor if supervisor is not None else (int(env) if env else None)
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock

    def startService(self) -> None:
        """Check once a second."""
        super().startService()
        if self.supervisor is not None:
            self._loop.start(1.0, now=True)

    def stopService(self) -> None:
        """Stop checking."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if self.supervisor is not None and os.getppid() != self.supervisor:
            log.warn("the supervisor (pid {pid}) is gone: this worker stops", pid=self.supervisor)
            self._loop.stop()
            self.stop()
