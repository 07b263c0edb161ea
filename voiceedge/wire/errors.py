"""The one exception type every wire parser raises on bad input."""


class WireError(ValueError):
    """Bytes or text that do not parse as the protocol says.

    Every parser in :mod:`voiceedge.wire` raises a subclass of this for any
    hostile or malformed input, and nothing else, so a caller on the packet
    path catches exactly one type.
    """
