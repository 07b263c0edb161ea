# -*- test-case-name: tests.test_tap -*-
"""``twistd voiceedge``: the all-in-one, on embedded defaults unless given an INI file."""

from __future__ import annotations

from twisted.application import service
from twisted.internet.interfaces import IReactorTime

from voiceedge.transceiver import tap as transceiver_tap

# Everything on loopback: signaling and the demo page on http://127.0.0.1:8080,
# media on UDP 127.0.0.1:3478, the echo agent.
EMBEDDED_DEFAULTS = """
[signaling]
listen = tcp:8080:interface=127.0.0.1
demo_page = yes
[transceiver]
media_listen = 127.0.0.1:3478
"""


class Options(transceiver_tap.Options):
    """Options of ``twistd voiceedge``: ``--config`` is optional here."""

    optParameters = [
        ["config", "c", None, "INI file (default: the embedded all-in-one settings)"],
    ]
    config_required = False
    defaults_text = EMBEDDED_DEFAULTS


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """Signaling, transceiver and echo agent in one process."""
    return transceiver_tap.makeService(config, clock)
