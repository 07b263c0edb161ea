# -*- test-case-name: tests.test_agents -*-
"""Agents as plugins, and the echo agent on a fake session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from voiceedge import config as c
from voiceedge.agents.echo import EchoAgentFactory
from voiceedge.agents.interfaces import (
    AudioFrame,
    IAgent,
    IAgentFactory,
    IAgentPlugin,
    IAgentSession,
    IAgentType,
)
from voiceedge.agents.plugin import agent_type, available_agents


@implementer(IAgentSession)
@dataclass
class FakeSession:
    """Records what an agent does to its session."""

    clock: Clock = field(default_factory=Clock)
    session_id: str = "s1"
    sample_rate: int = 48000
    audio: list[bytes] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)

    def send_audio(self, pcm: bytes) -> None:
        self.audio.append(pcm)

    def clear_audio(self) -> int:
        self.audio.clear()
        return 0

    def queued_audio_ms(self) -> int:
        return 20 * len(self.audio)

    def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def end(self, reason: str) -> None:
        self.ended.append(reason)

    def start_turn(self) -> None:
        self.events.append({"type": "<start_turn>"})

    def end_turn(self, interrupted: bool = False) -> None:
        self.events.append({"type": "<end_turn>", "interrupted": interrupted})


def frame(n: int) -> AudioFrame:
    """A 20 ms frame whose bytes say which one it is."""
    return AudioFrame(bytes([n]) * 1920, 48000, n * 960, n * 0.02)


class AgentPluginTests(SynchronousTestCase):
    """Agents are twisted.plugin plugins, found by name."""

    def test_builtin_agents_are_plugins_that_load_lazily(self) -> None:
        """echo, parrot and bridge are found by twisted.plugin and provide IAgentType when loaded."""
        agents = available_agents()
        self.assertLessEqual({"echo", "parrot", "bridge"}, set(agents))
        for plugin in agents.values():
            verifyObject(IAgentPlugin, plugin)
            kind = plugin.load()
            verifyObject(IAgentType, kind)
            self.assertEqual(kind.name, plugin.name)
            self.assertTrue(all(isinstance(key, c.Key) for key in kind.options.values()), kind.name)

    def test_unknown_agent_names_the_installed_ones(self) -> None:
        """Asking for an agent nobody installed says which ones exist."""
        with self.assertRaises(ValueError) as raised:
            agent_type("nobody")
        self.assertRegex(str(raised.exception), r"no agent named 'nobody' \(installed: .*echo")


class EchoAgentTests(SynchronousTestCase):
    """The echo agent on a fake session and its Clock."""

    def test_echo_plays_back_every_frame_at_once(self) -> None:
        """Without a delay each frame goes straight back; events are echoed too."""
        session = FakeSession()
        factory = EchoAgentFactory()
        verifyObject(IAgentFactory, factory)
        agent = factory.agent_for(session)
        verifyObject(IAgent, agent)
        verifyObject(IAgentSession, session)
        for n in range(3):
            agent.audio_received(frame(n))
        self.assertEqual(session.audio, [frame(n).pcm for n in range(3)])
        agent.event_received({"type": "ping"})
        self.assertEqual(session.events, [{"type": "echo", "event": {"type": "ping"}}])

    def test_echo_delay_holds_audio_on_the_session_clock_and_cancels_on_end(self) -> None:
        """delay_ms holds each frame that long; ending the session cancels what is waiting."""
        session = FakeSession()
        options = c.load_config({"agent.echo": agent_type("echo").options}, text="[agent.echo]\ndelay_ms = 200\n")
        agent = agent_type("echo").make_factory(options["agent.echo"], session.clock).agent_for(session)
        agent.audio_received(frame(1))
        session.clock.advance(0.19)
        self.assertEqual(session.audio, [])
        session.clock.advance(0.02)
        self.assertEqual(session.audio, [frame(1).pcm])
        agent.audio_received(frame(2))
        agent.session_ended("hangup")
        self.assertEqual(session.clock.getDelayedCalls(), [])

    def test_echo_drops_and_counts_what_would_wait_past_max_lag(self) -> None:
        """At most max_lag_ms waits to be sent (the fake queues all it is given); the rest is counted, in ms."""
        session = FakeSession()
        options = c.load_config({"agent.echo": agent_type("echo").options}, text="[agent.echo]\nmax_lag_ms = 60\n")
        factory = agent_type("echo").make_factory(options["agent.echo"], session.clock)
        agent = factory.agent_for(session)
        for n in range(5):
            agent.audio_received(frame(n))
        self.assertEqual(session.audio, [frame(n).pcm for n in range(3)])
        self.assertEqual(factory.counters, {"late_audio_dropped_ms": 40})
        session.audio.clear()  # sent: the next frame fits again
        agent.audio_received(frame(5))
        self.assertEqual(session.audio, [frame(5).pcm])

    def test_echo_max_lag_zero_is_no_bound(self) -> None:
        """max_lag_ms = 0: everything is queued, nothing counted."""
        session = FakeSession()
        factory = EchoAgentFactory(max_lag_ms=0)
        agent = factory.agent_for(session)
        for n in range(20):
            agent.audio_received(frame(n))
        self.assertEqual(len(session.audio), 20)
        self.assertEqual(factory.counters["late_audio_dropped_ms"], 0)
