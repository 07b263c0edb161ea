# -*- test-case-name: tests.test_srtp_io -*-
"""Run a test class on the SRTP I/O path in Python too (VOICEEDGE_SRTP_IO=python), beside the compiled one."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial import unittest

from voiceedge.transceiver import srtp

__all__ = ["PythonSrtpPath", "require_compiled_srtp_io"]


class PythonSrtpPath:
    """Mixin for a ``TestCase`` subclass: every :class:`SrtpSession` its tests make takes the Python path.

    ``class PythonPathReceiverTests(PythonSrtpPath, ReceiverTests): ...`` runs
    the same tests again; the class it derives from runs the default path (the
    compiled helper where it is built).
    """

    def setUp(self: Any) -> None:
        previous = os.environ.get(srtp._FORCE_ENV)
        os.environ[srtp._FORCE_ENV] = "python"

        def restore() -> None:
            if previous is None:
                os.environ.pop(srtp._FORCE_ENV, None)
            else:
                os.environ[srtp._FORCE_ENV] = previous

        self.addCleanup(restore)
        super().setUp()


def require_compiled_srtp_io() -> None:
    """Skip unless the compiled helper is built (scripts/test requires that it is)."""
    if srtp._srtpio is None:
        raise unittest.SkipTest("voiceedge.transceiver._srtpio is not built")
