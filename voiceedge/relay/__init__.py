"""voiceedge.relay."""
