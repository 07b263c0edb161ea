"""Wire codecs: pure functions from bytes to values and back, no I/O."""
