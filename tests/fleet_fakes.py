"""In-memory fakes of the fleet's stores, on a Clock: Redis's TTL semantics without Redis."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from voiceedge.fleet.registry import IRegistryStore

__all__ = ["MemoryRegistryStore"]


@implementer(IRegistryStore)
class MemoryRegistryStore:
    """Records with TTLs on a Clock; ``down = True`` makes every call fail, ``hang = True`` never answer."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.records: dict[str, tuple[str, float]] = {}
        self.ended: list[tuple[str, str]] = []
        self.down = False
        self.hang = False
        self.calls = 0

    def _answer(self, value: Any) -> "defer.Deferred[Any]":
        self.calls += 1
        if self.hang:
            return defer.Deferred()
        if self.down:
            return defer.fail(ConnectionError("redis is down"))
        return defer.succeed(value)

    def put(self, record_id: str, value: str, ttl: float) -> "defer.Deferred[Any]":
        if not (self.down or self.hang):
            self.records[record_id] = (value, self.clock.seconds() + ttl)
        return self._answer(None)

    def remove(self, record_id: str) -> "defer.Deferred[Any]":
        if not (self.down or self.hang):
            self.records.pop(record_id, None)
        return self._answer(None)

    def fetch(self) -> "defer.Deferred[dict[str, Any]]":
        now = self.clock.seconds()
        live = {i: v for i, (v, expires) in self.records.items() if expires > now}
        return self._answer(live)

    def publish_ended(self, record_id: str, session_id: str) -> "defer.Deferred[Any]":
        if not (self.down or self.hang):
            self.ended.append((record_id, session_id))
        return self._answer(1)
