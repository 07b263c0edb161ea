"""voiceedge.agents."""
