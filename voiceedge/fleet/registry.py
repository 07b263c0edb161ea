# -*- test-case-name: tests.test_registry -*-
"""The transceiver registry: every transceiver's record in Redis with a TTL, refreshed by a heartbeat.

The pattern LiveKit uses. A transceiver writes its record every
``heartbeat`` seconds with a TTL of ``ttl`` seconds (:class:`RegistryPublisher`);
the front door reads every record every ``refresh_interval`` seconds
(:class:`RegistryView`) and chooses among them. A transceiver that stops
writing (killed, partitioned) disappears when its key expires: nobody has
to notice that it died. Key layout (docs/fleet.md)::

    voiceedge:transceiver:<id>   ->  JSON record (TransceiverRecord), PX ttl
    voiceedge:transceivers       ->  SET of ids (an index; members whose key expired are pruned by readers)
    voiceedge:sessions:ended     ->  PUBLISH channel: "<transceiver id> <session id>" when a session ends
"""

from __future__ import annotations

import collections
import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from voiceedge import config as c
from voiceedge.config import Address
from voiceedge.metrics import Sample
from voiceedge.redis_connection import RedisClient

__all__ = [
    "DRAINING",
    "ENDED_CHANNEL",
    "INDEX_KEY",
    "KEY_PREFIX",
    "SERVING",
    "IRegistryStore",
    "RedisRegistryStore",
    "RegistryPublisher",
    "RegistryView",
    "TransceiverRecord",
    "transceiver_id",
]

KEY_PREFIX = "voiceedge:transceiver:"
INDEX_KEY = "voiceedge:transceivers"
ENDED_CHANNEL = "voiceedge:sessions:ended"
SERVING = "serving"
DRAINING = "draining"
_STATES = (SERVING, DRAINING)
_VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_RECORD = 4096

log = Logger()


def transceiver_id(value: str) -> str:
    """A transceiver id: 1-64 of ``A-Z a-z 0-9 _ -`` (it appears in keys and session URLs)."""
    if not _ID.match(value):
        raise ValueError("must be 1-64 characters of A-Z, a-z, 0-9, _ and -")
    return value


@dataclass(frozen=True, slots=True)
class TransceiverRecord:
    """What a transceiver says about itself in the registry."""

    id: str
    region: str
    cluster: int
    #: Where the front door reaches its internal HTTP API.
    api: Address
    #: Where relays reach its media socket (the address in its route tokens).
    media: Address
    sessions: int
    capacity: int
    #: Share of one core its process used, smoothed over about a second (over the last heartbeat without admission).
    cpu: float
    state: str = SERVING
    #: False while its load refuses new sessions (CPU or event-loop lag over its limits).
    admitting: bool = True

    @property
    def serving(self) -> bool:
        """Whether it takes new sessions."""
        return self.state == SERVING

    @property
    def load(self) -> float:
        """Sessions over capacity: 0 idle, 1 full."""
        return self.sessions / self.capacity if self.capacity else 1.0

    def to_json(self) -> str:
        """The value stored in Redis."""
        return json.dumps(
            {
                "v": _VERSION,
                "id": self.id,
                "region": self.region,
                "cluster": self.cluster,
                "api": c.format_address(self.api),
                "media": c.format_address(self.media),
                "sessions": self.sessions,
                "capacity": self.capacity,
                "cpu": round(self.cpu, 3),
                "state": self.state,
                # Only when refusing: records stay as they were for readers that predate it.
                **({} if self.admitting else {"admitting": False}),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, value: str | bytes) -> TransceiverRecord:
        """Parse a stored value; ValueError for anything malformed."""
        if len(value) > _MAX_RECORD:
            raise ValueError("record too large")
        try:
            d = json.loads(value)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON: {e}") from None
        if not isinstance(d, dict) or d.get("v") != _VERSION:
            raise ValueError("not a version 1 record")
        try:
            record = cls(
                id=transceiver_id(_typed(d["id"], str)),
                region=_typed(d["region"], str),
                cluster=_typed(d["cluster"], int),
                api=c.address(_typed(d["api"], str)),
                media=c.address(_typed(d["media"], str)),
                sessions=_typed(d["sessions"], int),
                capacity=_typed(d["capacity"], int),
                cpu=float(_typed(d["cpu"], (int, float))),
                state=_typed(d["state"], str),
                admitting=_flag(d.get("admitting", True)),
            )
        except KeyError as e:
            raise ValueError(f"missing {e.args[0]}") from None
        if record.state not in _STATES:
            raise ValueError(f"unknown state {record.state!r}")
        if not (0 <= record.cluster <= 0xFFFF and record.sessions >= 0 and record.capacity >= 0):
            raise ValueError("a number is out of range")
        if not math.isfinite(record.cpu) or record.cpu < 0:
            raise ValueError("cpu is not a finite share")
        return record


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{value!r} has the wrong type")
    return value


class IRegistryStore(Interface):
    """The Redis commands the registry needs, each returning a Deferred."""

    def put(record_id: str, value: str, ttl: float) -> "defer.Deferred[Any]":
        """Store ``value`` as ``record_id``'s record for ``ttl`` seconds, and index it."""

    def remove(record_id: str) -> "defer.Deferred[Any]":
        """Remove ``record_id``'s record and its index entry."""

    def fetch() -> "defer.Deferred[dict[str, Any]]":
        """Every live record: ``{id: stored value}``; index entries whose record expired are pruned."""

    def publish_ended(record_id: str, session_id: str) -> "defer.Deferred[Any]":
        """Tell whoever listens that a session of ``record_id`` ended."""


@implementer(IRegistryStore)
class RedisRegistryStore:
    """:class:`IRegistryStore` on a :class:`RedisClient` (one server or Sentinel).

    ``key_prefix`` and ``index_key`` name where the records live: the
    transceivers' by default, the relays' directory with its own.
    """

    def __init__(self, client: RedisClient, key_prefix: str = KEY_PREFIX, index_key: str = INDEX_KEY) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.index_key = index_key

    def put(self, record_id: str, value: str, ttl: float) -> "defer.Deferred[Any]":
        """SET key value PX ttl, then SADD the index."""
        redis = self.client.connection
        d = defer.maybeDeferred(redis.set, self.key_prefix + record_id, value, pexpire=max(1, int(ttl * 1000)))
        d.addCallback(lambda _: redis.sadd(self.index_key, record_id))
        return d

    def remove(self, record_id: str) -> "defer.Deferred[Any]":
        """DEL the key, SREM the index entry."""
        redis = self.client.connection
        d = defer.maybeDeferred(redis.delete, self.key_prefix + record_id)
        d.addCallback(lambda _: redis.srem(self.index_key, record_id))
        return d

    @defer.inlineCallbacks
    def fetch(self) -> Any:
        """SMEMBERS the index, MGET the records, SREM the ids whose record expired."""
        redis = self.client.connection
        members = yield redis.smembers(self.index_key)
        ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members or ())
        if not ids:
            return {}
        values = yield redis.mget([self.key_prefix + i for i in ids])
        found = {i: v for i, v in zip(ids, values) if v is not None}
        gone = [i for i in ids if i not in found]
        if gone:
            # A record re-put between the MGET and this SREM loses its index
            # entry until its next heartbeat re-adds it: a few seconds, harmless.
            yield redis.srem(self.index_key, gone)
        return found

    def publish_ended(self, record_id: str, session_id: str) -> "defer.Deferred[Any]":
        """PUBLISH the end on the channel front doors listen to."""
        return defer.maybeDeferred(
            self.client.connection.publish, ENDED_CHANNEL, f"{record_id} {session_id}"
        )

    def close(self) -> "defer.Deferred[Any]":
        """Disconnect."""
        return self.client.close()


class Record(Protocol):
    """What the registry stores: an id and a JSON value."""

    @property
    def id(self) -> str:
        """The record's id (part of its key)."""

    def to_json(self) -> str:
        """The stored value."""


R = TypeVar("R", bound=Record)


class RegistryPublisher:
    """A heartbeat: a record (a transceiver's, a relay's), written every ``heartbeat`` seconds with a TTL.

    ``describe()`` returns the record as it is now. A failed write is
    logged once (and counted); the next heartbeat tries again, so a
    transceiver reappears by itself when Redis comes back.
    """

    def __init__(
        self,
        store: IRegistryStore,
        clock: IReactorTime,
        describe: Callable[[], Record],
        heartbeat: float,
        ttl: float,
    ) -> None:
        if not 0 < heartbeat < ttl:
            raise ValueError("the heartbeat must be shorter than the TTL")
        self.store = store
        self.clock = clock
        self.describe = describe
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.up: bool | None = None
        self.writes_ok = 0
        self.write_errors = 0
        self.ends_published = 0
        self._loop: LoopingCall | None = None
        self._writing: defer.Deferred[Any] | None = None

    def start(self) -> None:
        """Write now and every ``heartbeat`` seconds."""
        if self._loop is None:
            self._loop = LoopingCall(self.publish)
            self._loop.clock = self.clock
            self._loop.start(self.heartbeat, now=True)

    def publish(self) -> None:
        """Write the record now (the heartbeat, or at once when the state changes), once started."""
        if self._loop is None:
            return
        if self._writing is not None:
            return  # one write at a time; the next heartbeat has the news
        record = self.describe()
        d = self.store.put(record.id, record.to_json(), self.ttl)
        d.addTimeout(self.heartbeat, self.clock)
        self._writing = d

        def ok(_: object) -> None:
            self.writes_ok += 1
            if self.up is not True:
                log.info("registry: {id} registered", id=record.id)
            self.up = True

        def failed(failure: Failure) -> None:
            self.write_errors += 1
            if self.up is not False:
                log.warn(
                    "registry: cannot write {id}'s record ({why}); front doors stop choosing it"
                    " when its last record expires",
                    id=record.id,
                    why=failure.getErrorMessage() or failure.type.__name__,
                )
            self.up = False

        def done(_: object) -> None:
            self._writing = None

        d.addCallbacks(ok, failed).addBoth(done)

    def session_ended(self, record_id: str, session_id: str) -> None:
        """Publish that a session ended (front doors free its owner's place); best effort, once started."""
        if self._loop is None:
            return
        d = self.store.publish_ended(record_id, session_id)
        d.addTimeout(self.heartbeat, self.clock)
        d.addCallbacks(lambda _: self._count_end(), lambda _: None)

    def _count_end(self) -> None:
        self.ends_published += 1

    def stop(self) -> "defer.Deferred[Any]":
        """Stop the heartbeat and remove the record (a clean exit needs no TTL to pass)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        record = self.describe()
        d = self.store.remove(record.id)
        d.addTimeout(self.heartbeat, self.clock)
        d.addErrback(lambda f: log.warn("registry: cannot remove {id}: {why}", id=record.id,
                                        why=f.getErrorMessage()))
        return d

    def metrics(self) -> Iterator[Sample]:
        """Samples for ``/metrics``."""
        p = "voiceedge_registry_"
        yield ("gauge", p + "up", "Whether the last registry write succeeded", {}, 1 if self.up else 0)
        yield ("counter", p + "writes", "Registry writes", {"result": "ok"}, self.writes_ok)
        yield ("counter", p + "writes", "Registry writes", {"result": "error"}, self.write_errors)


class RegistryView(Generic[R]):
    """A reader's copy of the registry, refreshed every ``refresh_interval`` seconds.

    ``parse`` turns a stored value into a record (:meth:`TransceiverRecord.from_json`
    for the front door's view of transceivers).

    While Redis cannot be read, the last copy is kept for ``max_stale``
    seconds (requests to a dead transceiver fail and are retried
    elsewhere), then dropped: with no registry there is nobody to choose.
    :meth:`assigned` counts the sessions this front door has just sent to
    each transceiver, for ``assignment_memory`` seconds (about a heartbeat:
    until the transceiver's own record carries them), so a burst does not
    all go to the one that looked least loaded.
    """

    def __init__(
        self,
        store: IRegistryStore,
        clock: IReactorTime,
        refresh_interval: float = 1.0,
        max_stale: float = 30.0,
        parse: Callable[[Any], R] = TransceiverRecord.from_json,  # type: ignore[assignment]
        assignment_memory: float = 2.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.max_stale = max_stale
        self.parse = parse
        self.records: Mapping[str, R] = {}
        self.up: bool | None = None
        self.refreshed_at = float("-inf")
        self.reads_ok = 0
        self.read_errors = 0
        self.malformed = 0
        # (when, record id) of the sessions this reader placed lately: counted on top of the
        # registry's numbers for ``assignment_memory`` seconds, until heartbeats carry them.
        self._recent: collections.deque[tuple[float, str]] = collections.deque()
        self.assignment_memory = assignment_memory
        self._loop: LoopingCall | None = None
        self._reading: defer.Deferred[Any] | None = None
        self._first: list[defer.Deferred[None]] = []

    def start(self) -> None:
        """Read now and every ``refresh_interval`` seconds."""
        if self._loop is None:
            self._loop = LoopingCall(self.refresh)
            self._loop.clock = self.clock
            self._loop.start(self.refresh_interval, now=True)

    def stop(self) -> None:
        """Stop refreshing."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def ready(self) -> "defer.Deferred[None]":
        """Fires once the first read has succeeded (or at once if one has)."""
        if self.up:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._first.append(d)
        return d

    def refresh(self) -> "defer.Deferred[Any]":
        """Read every record now."""
        if self._reading is not None:
            return self._reading
        d = self.store.fetch()
        d.addTimeout(max(self.refresh_interval, 0.5), self.clock)
        self._reading = d

        def read(values: dict[str, Any]) -> None:
            records = {}
            for record_id, value in values.items():
                try:
                    record = self.parse(value)
                except ValueError as e:
                    self.malformed += 1
                    log.warn("registry: ignoring malformed record {id}: {why}", id=record_id, why=e)
                    continue
                if record.id != record_id:
                    self.malformed += 1
                    continue
                records[record_id] = record
            self.records = records
            self.reads_ok += 1
            self.refreshed_at = self.clock.seconds()
            if self.up is not True:
                log.info("registry: {n} transceivers", n=len(records))
            self.up = True
            waiting, self._first = self._first, []
            for w in waiting:
                w.callback(None)

        def failed(failure: Failure) -> None:
            self.read_errors += 1
            if self.up is not False:
                log.warn("registry: cannot read ({why}); keeping the last copy for {s:g} s",
                         why=failure.getErrorMessage() or failure.type.__name__, s=self.max_stale)
            self.up = False
            if self.clock.seconds() - self.refreshed_at > self.max_stale and self.records:
                log.warn("registry: last copy is older than {s:g} s; dropped", s=self.max_stale)
                self.records = {}
    
        def done(result: object) -> object:
            self._reading = None
            return None

        d.addCallbacks(read, failed).addBoth(done)
        return d

    def current(self, record: R) -> R:
        """``record`` with the sessions this front door sent it since the last refresh added."""
        extra = self._recent_count().get(record.id, 0)
        return replace(record, sessions=record.sessions + extra) if extra else record  # type: ignore[type-var,attr-defined]

    def _recent_count(self) -> dict[str, int]:
        horizon = self.clock.seconds() - self.assignment_memory
        recent = self._recent
        while recent and recent[0][0] < horizon:
            recent.popleft()
        counts: dict[str, int] = {}
        for _, record_id in recent:
            counts[record_id] = counts.get(record_id, 0) + 1
        return counts

    def candidates(self) -> Iterable[R]:
        """Every record, with local assignments counted."""
        return [self.current(r) for r in self.records.values()]

    def assigned(self, record_id: str) -> None:
        """This front door just opened a session on ``record_id``."""
        self._recent.append((self.clock.seconds(), record_id))

    def unassigned(self, record_id: str) -> None:
        """A session counted by :meth:`assigned` did not open after all."""
        for index in range(len(self._recent) - 1, -1, -1):
            if self._recent[index][1] == record_id:
                del self._recent[index]
                return

    def get(self, record_id: str) -> R | None:
        """The record of ``record_id``, if it is live."""
        return self.records.get(record_id)

    def metrics(self) -> Iterator[Sample]:
        """Samples for ``/metrics``."""
        p = "voiceedge_registry_"
        yield ("gauge", p + "up", "Whether the last registry read succeeded", {}, 1 if self.up else 0)
        yield ("gauge", p + "age_seconds", "Seconds since the registry was last read",
               {}, max(0.0, self.clock.seconds() - self.refreshed_at) if self.reads_ok else 0.0)
        by: dict[tuple[str, str], int] = {}
        for r in self.records.values():
            key = (getattr(r, "region", ""), getattr(r, "state", ""))
            by[key] = by.get(key, 0) + 1
        for (region, state), n in sorted(by.items()):
            yield ("gauge", p + "transceivers", "Transceivers in the registry",
                   {"region": region, "state": state}, n)
        yield ("counter", p + "reads", "Registry reads", {"result": "ok"}, self.reads_ok)
        yield ("counter", p + "reads", "Registry reads", {"result": "error"}, self.read_errors)
        yield ("counter", p + "malformed", "Records ignored as malformed", {}, self.malformed)
