"""The compiled parts: the relay's batched datagram I/O helper (docs/relay.md) and the
transceiver's SRTP-and-RTP-header helper (docs/session.md), both optional.

Everything else is declared in setup.cfg. ``optional=True``: without a C
compiler or Python's headers the install still succeeds, and the relay and the
transceiver take their pure-Python paths (each says so in its log and in /metrics).
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """build_ext whose in-place copy (editable installs) replaces the .so instead of rewriting it.

    setuptools writes over the existing file in place; a process that has the
    old one mapped (a running relay, a test worker) could then fault. A new
    file renamed over the old one leaves their mapping intact.
    """

    def copy_file(self, infile: str, outfile: str, *args: Any, **kwargs: Any) -> Any:
        """Copy to a temporary name beside ``outfile``, then rename it over ``outfile``."""
        if not outfile.endswith(".so"):
            return super().copy_file(infile, outfile, *args, **kwargs)
        temporary = f"{outfile}.{os.getpid()}.tmp"
        _, copied = super().copy_file(infile, temporary, *args, **kwargs)
        os.replace(temporary, outfile)
        return outfile, copied


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "voiceedge.relay._batchio",
            ["voiceedge/relay/_batchio.c"],
            optional=True,
        ),
        # No libsrtp to link: it calls the one inside pylibsrtp's cffi module, by address.
        Extension(
            "voiceedge.transceiver._srtpio",
            ["voiceedge/transceiver/_srtpio.c"],
            optional=True,
        ),
    ],
)
