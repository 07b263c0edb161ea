"""What pytest gave tests for free, for trial tests: a loop's case named in failures, approx's tolerance.

trial's ``assertRaises`` used as a context manager takes no message, and a
failure inside a loop does not say which input failed. Wrapping the loop's
body in :func:`case` puts the case's name in front of any assertion failure
raised in it::

    for size in (0, 638, 642):
        with case(f"size {size}"), self.assertRaises(CodecError):
            encoder.encode(bytes(size))

and :func:`rel` is the tolerance ``pytest.approx`` allows, for trial's
``assertApproximates``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

__all__ = ["case", "rel"]


@contextmanager
def case(name: str) -> Iterator[None]:
    """Prefix any AssertionError raised in the block with ``name``, keeping its type.

    trial's failureException (FailTest) is an AssertionError: re-raised as
    the same type, a failed case still counts as a failure, not an error.
    """
    try:
        yield
    except AssertionError as failure:
        raise type(failure)(f"[{name}] {failure}") from failure


def rel(expected: float, relative: float = 1e-6) -> float:
    """The tolerance of ``pytest.approx(expected, rel=relative)``: relative, and at least 1e-12."""
    return max(relative * abs(expected), 1e-12)
