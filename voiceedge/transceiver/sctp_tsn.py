# -*- test-case-name: tests.test_sctp_parts -*-
"""Serial-number arithmetic on 32-bit SCTP TSNs (RFC 1982, as RFC 9260 §1.6 uses it)."""

from __future__ import annotations

__all__ = ["TSN_MASK", "unwrap_tsn"]

TSN_MASK = 0xFFFFFFFF
_HALF = 1 << 31


def unwrap_tsn(wrapped: int, reference: int) -> int:
    """Map a 32-bit serial number to the integer nearest ``reference``.

    The association keeps TSNs as unbounded integers so comparisons need no modular care;
    only the wire form (``value & TSN_MASK``) wraps.
    """
    delta = (wrapped - reference) & TSN_MASK
    if delta >= _HALF:
        delta -= 1 << 32
    return reference + delta
