"""Name the case of a loop in a trial test: what ``pytest.mark.parametrize`` ids used to do.

trial's ``assertRaises`` used as a context manager takes no message, and a
failure inside a loop does not say which input failed. Wrapping the loop's
body in :func:`case` puts the case's name in front of any assertion failure
raised in it::

    for size in (0, 638, 642):
        with case(f"size {size}"), self.assertRaises(CodecError):
            encoder.encode(bytes(size))
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

__all__ = ["case"]


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
