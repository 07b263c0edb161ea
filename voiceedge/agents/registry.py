# -*- test-case-name: tests.test_agents -*-
"""Agents by the name an INI file gives them."""

from __future__ import annotations

from voiceedge.agents.echo import EchoAgentFactory
from voiceedge.agents.interfaces import IAgentFactory


def agent_factory(name: str) -> IAgentFactory:
    """The factory of the agent called ``name``; ValueError for an unknown name."""
    factories: dict[str, IAgentFactory] = {"echo": EchoAgentFactory()}
    try:
        return factories[name]
    except KeyError:
        raise ValueError(f"no agent named {name!r} (known: {', '.join(sorted(factories))})") from None
