"""The agents voiceedge ships; each module is imported only when an INI file chooses it."""

from voiceedge.agents.plugin import AgentPlugin

echo = AgentPlugin("echo", "voiceedge.agents.echo", "says back what it hears, through the codec")
parrot = AgentPlugin("parrot", "voiceedge.agents.parrot", "waits for the end of your turn, then repeats it")
bridge = AgentPlugin("bridge", "voiceedge.agents.bridge", "a WebSocket to any backend (docs/agent-protocol.md)")
