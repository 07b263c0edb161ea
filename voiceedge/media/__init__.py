"""Media: the Opus codec, a jitter buffer and a speech detector, all sans-I/O."""
