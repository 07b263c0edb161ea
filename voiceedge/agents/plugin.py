# -*- test-case-name: tests.test_agents -*-
"""Agents as Twisted plugins: found by name, imported only when chosen."""

from __future__ import annotations

import importlib

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from voiceedge.agents.interfaces import IAgentPlugin, IAgentType


@implementer(IPlugin, IAgentPlugin)
class AgentPlugin:
    """A lazy plugin descriptor: ``AgentPlugin("echo", "voiceedge.agents.echo", "...")``.

    The named module must have an ``agent_type`` attribute providing
    :class:`IAgentType`.
    """

    def __init__(self, name: str, module: str, description: str) -> None:
        self.name = name
        self.module = module
        self.description = description

    def load(self) -> IAgentType:
        """Import the module and return its ``agent_type``."""
        agent_type: IAgentType = importlib.import_module(self.module).agent_type
        return agent_type


def available_agents() -> dict[str, IAgentPlugin]:
    """Every agent plugin installed, by name."""
    return {plugin.name: plugin for plugin in getPlugins(IAgentPlugin)}


def agent_type(name: str) -> IAgentType:
    """The agent type called ``name``; ValueError naming the known ones otherwise."""
    agents = available_agents()
    plugin = agents.get(name)
    if plugin is None:
        raise ValueError(f"no agent named {name!r} (installed: {', '.join(sorted(agents))})")
    return plugin.load()
