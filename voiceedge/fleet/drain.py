# -*- test-case-name: tests.test_drain -*-
"""Drain: a transceiver stops taking calls, lets the live ones finish, and exits when it holds none.

SIGTERM (or ``POST /internal/v1/drain``) starts it: the registry record says
``draining`` at once and the readiness endpoint fails, so no front door and
no load balancer sends a new call here; a new offer that still arrives gets
503. Calls in progress go on until they end, or until ``grace_period``
ends them cleanly (each with its end reason). The process exits as soon as
it holds no session. A second SIGTERM exits at once.
"""

from __future__ import annotations

import enum
import signal
from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from voiceedge.metrics import Sample

__all__ = ["Drain", "DrainState", "install_sigterm"]

log = Logger()

#: How often a draining transceiver looks whether it is empty.
POLL = 0.5


class DrainState(str, enum.Enum):
    """Where a transceiver is in its life; the values appear in the registry and in metrics."""

    SERVING = "serving"
    DRAINING = "draining"
    #: Empty (or out of grace): exiting.
    DONE = "done"


class Drain:
    """The drain of one transceiver, on an injected clock.

    ``session_count()`` says how many sessions are open; ``refuse_new()``
    makes the host answer new offers with 503; ``state_changed()`` lets the
    registry publish at once; ``end_sessions()`` ends what is left when the
    grace period is over; ``exit()`` stops the process (it runs once).
    """

    def __init__(
        self,
        clock: IReactorTime,
        grace_period: float,
        session_count: Callable[[], int],
        refuse_new: Callable[[], None],
        end_sessions: Callable[[], None],
        exit: Callable[[], None],
        state_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.clock = clock
        self.grace_period = grace_period
        self.session_count = session_count
        self._refuse_new = refuse_new
        self._end_sessions = end_sessions
        self._exit = exit
        self._state_changed = state_changed
        self.state = DrainState.SERVING
        self.started_at: float | None = None
        self.reason = ""
        self.sigterms = 0
        self.ended_by_grace = 0
        self._poll: LoopingCall | None = None

    @property
    def draining(self) -> bool:
        """Whether new calls are refused (draining or done)."""
        return self.state is not DrainState.SERVING

    def start(self, reason: str) -> bool:
        """Begin draining (``False`` if already draining)."""
        if self.draining:
            return False
        self.state = DrainState.DRAINING
        self.started_at = self.clock.seconds()
        self.reason = reason
        self._refuse_new()
        log.info(
            "draining ({reason}): {n} calls in progress, new calls refused, exit when none is left"
            " or in {grace:g} s",
            reason=reason, n=self.session_count(), grace=self.grace_period,
        )
        self._state_changed()
        self._poll = LoopingCall(self._check)
        self._poll.clock = self.clock
        self._poll.start(POLL, now=True)
        return True

    def sigterm(self) -> None:
        """The first SIGTERM drains; the second exits at once."""
        self.sigterms += 1
        if self.sigterms == 1:
            if not self.start("SIGTERM"):
                log.info("SIGTERM while draining: send another to exit at once")
            return
        log.info("second SIGTERM: exiting now with {n} calls", n=self.session_count())
        self._finish(end=True)

    def remaining(self) -> float | None:
        """Seconds left of the grace period, while draining."""
        if self.started_at is None or self.state is not DrainState.DRAINING:
            return None
        return max(0.0, self.started_at + self.grace_period - self.clock.seconds())

    def _check(self) -> None:
        if self.state is not DrainState.DRAINING:
            return
        count = self.session_count()
        if count == 0:
            log.info("drained: no call left, exiting")
            self._finish(end=False)
        elif self.remaining() == 0:
            log.info("drain grace period over: ending {n} calls and exiting", n=count)
            self.ended_by_grace += count
            self._finish(end=True)

    def _finish(self, end: bool) -> None:
        if self.state is DrainState.DONE:
            return
        self.state = DrainState.DONE
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if end:
            self._end_sessions()
        self._exit()

    def metrics(self) -> list[Sample]:
        """Samples for ``/metrics``."""
        return [
            ("gauge", "voiceedge_transceiver_draining", "1 while the transceiver drains", {},
             1 if self.draining else 0),
            ("counter", "voiceedge_transceiver_drain_ended", "Calls ended by the drain grace period",
             {}, self.ended_by_grace),
        ]


class _OnSigterm(Protocol):
    def sigterm(self) -> None: ...


def install_sigterm(reactor: Any, drain: _OnSigterm) -> None:
    """Make SIGTERM drain instead of stopping the reactor (call once the reactor runs).

    The handler only schedules: the drain itself runs in the reactor loop.
    """

    def handler(signum: int, frame: object) -> None:
        reactor.callFromThread(drain.sigterm)

    signal.signal(signal.SIGTERM, handler)
