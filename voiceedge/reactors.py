# -*- test-case-name: tests.test_tap -*-
"""Which reactor a tap's services run on: the global one unless a test hands in its own."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime, IReactorUDP


def service_reactors(clock: IReactorTime | None) -> tuple[IReactorTime, Any]:
    """The clock protocol objects take, and the reactor that opens UDP ports.

    ``clock`` defaults to the global reactor; UDP ports open on ``clock``
    itself when it can (a MemoryReactorClock in tests), else on the global
    reactor. Importing the reactor here, not at module level, keeps twistd
    free to install the one it is asked for.
    """
    from twisted.internet import reactor

    chosen: IReactorTime = reactor if clock is None else clock
    udp: Any = chosen if IReactorUDP.providedBy(chosen) else reactor
    return chosen, udp
