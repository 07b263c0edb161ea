"""voiceedge.signaling."""
