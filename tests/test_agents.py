"""Agents as plugins, and the echo agent on a fake session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.task import Clock
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


def test_builtin_agents_are_plugins_that_load_lazily() -> None:
    """echo, parrot and bridge are found by twisted.plugin and provide IAgentType when loaded."""
    agents = available_agents()
    assert {"echo", "parrot", "bridge"} <= set(agents)
    for plugin in agents.values():
        verifyObject(IAgentPlugin, plugin)
        kind = plugin.load()
        verifyObject(IAgentType, kind)
        assert kind.name == plugin.name
        assert all(isinstance(key, c.Key) for key in kind.options.values())


def test_unknown_agent_names_the_installed_ones() -> None:
    """Asking for an agent nobody installed says which ones exist."""
    with pytest.raises(ValueError, match=r"no agent named 'nobody' \(installed: .*echo"):
        agent_type("nobody")


def test_echo_plays_back_every_frame_at_once() -> None:
    """Without a delay each frame goes straight back; events are echoed too."""
    session = FakeSession()
    factory = EchoAgentFactory()
    verifyObject(IAgentFactory, factory)
    agent = factory.agent_for(session)
    verifyObject(IAgent, agent)
    verifyObject(IAgentSession, session)
    for n in range(3):
        agent.audio_received(frame(n))
    assert session.audio == [frame(n).pcm for n in range(3)]
    agent.event_received({"type": "ping"})
    assert session.events == [{"type": "echo", "event": {"type": "ping"}}]


def test_echo_delay_holds_audio_on_the_session_clock_and_cancels_on_end() -> None:
    """delay_ms holds each frame that long; ending the session cancels what is waiting."""
    session = FakeSession()
    options = c.load_config({"agent.echo": agent_type("echo").options}, text="[agent.echo]\ndelay_ms = 200\n")
    agent = agent_type("echo").make_factory(options["agent.echo"], session.clock).agent_for(session)
    agent.audio_received(frame(1))
    session.clock.advance(0.19)
    assert session.audio == []
    session.clock.advance(0.02)
    assert session.audio == [frame(1).pcm]
    agent.audio_received(frame(2))
    agent.session_ended("hangup")
    assert session.clock.getDelayedCalls() == []
