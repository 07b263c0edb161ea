"""voiceedge: a WebRTC edge for voice AI, built on Twisted."""

__version__ = "0.1.0"
