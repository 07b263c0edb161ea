# -*- test-case-name: tests.test_drain -*-
"""Drain on a Clock: refuse new calls, let live ones end, a grace period, exit when empty, a second SIGTERM."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voiceedge.fleet.drain import Drain, DrainState


class DrainTests(SynchronousTestCase):
    """A Drain over a counter of sessions."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.sessions = 2
        self.events: list[str] = []
        self.drain = Drain(
            self.clock,
            grace_period=60,
            session_count=lambda: self.sessions,
            refuse_new=lambda: self.events.append("refuse"),
            end_sessions=lambda: self.events.append(f"end {self.sessions}"),
            exit=lambda: self.events.append("exit"),
            state_changed=lambda: self.events.append("publish"),
        )

    def test_serving_until_started(self) -> None:
        self.assertIs(self.drain.state, DrainState.SERVING)
        self.assertFalse(self.drain.draining)
        self.assertIsNone(self.drain.remaining())

    def test_exits_when_the_last_call_ends(self) -> None:
        self.drain.sigterm()
        self.assertEqual(self.events, ["refuse", "publish"])
        self.assertTrue(self.drain.draining)
        self.clock.advance(10)
        self.assertEqual(self.events, ["refuse", "publish"])
        self.sessions = 0
        self.clock.advance(0.5)
        self.assertEqual(self.events, ["refuse", "publish", "exit"])
        self.assertIs(self.drain.state, DrainState.DONE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_grace_period_ends_the_rest(self) -> None:
        self.drain.start("admin request")
        self.assertEqual(self.drain.remaining(), 60)
        self.clock.pump([0.5] * 119)
        self.assertNotIn("exit", self.events)
        self.clock.advance(0.5)
        self.assertEqual(self.events[-2:], ["end 2", "exit"])
        self.assertEqual(self.drain.ended_by_grace, 2)

    def test_second_sigterm_exits_at_once(self) -> None:
        self.drain.sigterm()
        self.drain.sigterm()
        self.assertEqual(self.events, ["refuse", "publish", "end 2", "exit"])
        self.drain.sigterm()  # a third changes nothing
        self.assertEqual(self.events.count("exit"), 1)

    def test_admin_then_sigterm_is_the_first_sigterm(self) -> None:
        """Kubernetes: preStop drains through the API, then the kubelet's SIGTERM must not kill."""
        self.drain.start("preStop")
        self.drain.sigterm()
        self.assertNotIn("exit", self.events)
        self.assertFalse(self.drain.start("again"))

    def test_empty_transceiver_exits_at_once(self) -> None:
        self.sessions = 0
        self.drain.sigterm()
        self.assertEqual(self.events, ["refuse", "publish", "exit"])

    def test_metrics(self) -> None:
        self.drain.sigterm()
        names = {(name, value) for _, name, _, _, value in self.drain.metrics()}
        self.assertIn(("voiceedge_transceiver_draining", 1), names)
