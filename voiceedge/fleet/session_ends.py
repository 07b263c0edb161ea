# -*- test-case-name: tests.test_session_ends -*-
"""How front doors hear that calls ended when nobody DELETEd them through a front door.

The ledger (who may manage each call, the live calls of each API key) must
hear of every end, or a key's cap fills with calls that are long gone.
Three sources, fastest first, each covering what the one before can miss:

* :class:`SessionEndsSubscriber`: transceivers ``PUBLISH`` ``"<transceiver
  id> <session id>"`` on ``voiceedge:sessions:ended`` when a session ends,
  however it ends; every front door subscribes (through Sentinel, again
  after every reconnection). Milliseconds. Pub/sub keeps nothing for a
  subscriber that is away, so the subscriber also checks itself: every
  ``probe_interval`` it publishes a probe of its own on the channel, and a
  probe not heard back means the subscription is stale (a master that was
  demoted while we stayed connected, a silent network): it reconnects.
* :meth:`SessionReconciler.release_gone`: the calls of a transceiver whose
  registry record has expired and whose internal API no longer answers
  (``kill -9``, a lost node: it published nothing) are released after every
  registry read.
* :meth:`SessionReconciler.reconcile`: every ``reconcile_interval``, and
  after every (re)subscription, each live transceiver's list of open
  sessions (``GET /internal/v1/sessions``) is compared with the ledger: what
  it no longer holds is released. This catches ends published while a
  front door was not subscribed, or while the transceiver could not reach
  Redis.

Releasing the same call twice is harmless: the ledger's end is idempotent.
"""

from __future__ import annotations

import collections
import enum
import json
import secrets
from typing import Any, Callable, Iterator

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from voiceedge.config import Address
from voiceedge.fleet.frontdoor import split_session_id
from voiceedge.fleet.internal_api import SESSIONS_PATH
from voiceedge.fleet.internal_client import IInternalApi
from voiceedge.fleet.registry import ENDED_CHANNEL, RegistryView, TransceiverRecord, transceiver_id
from voiceedge.metrics import Sample
from voiceedge.redis_connection import MAX_RECONNECT_DELAY, RedisClient, RedisConnectionSettings
from voiceedge.signaling.ownership import ILedgerIndex

__all__ = ["ILedgerIndex", "SessionEnds", "SessionEndsSubscriber", "SessionReconciler", "parse_end"]

log = Logger()

#: The first word of a front door's probe on the channel (no transceiver id has it).
PROBE = "."
#: How many ids one session list may hold (a transceiver holds far fewer).
MAX_LISTED = 1_000_000


def parse_end(message: Any) -> tuple[str, str] | None:
    """``(transceiver id, session id)`` of a message on the channel; None when it is not one."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    if not isinstance(message, str) or len(message) > 256:
        return None
    owner, _, session = message.partition(" ")
    try:
        transceiver_id(owner)
    except ValueError:
        return None
    if not session or " " in session:
        return None
    return owner, session


class Unreachable(enum.Enum):
    """Why a transceiver did not list its sessions."""

    #: Nothing answered at its address: its process is gone.
    GONE = "gone"
    #: Something answered, but not with a list; or its address is not known.
    UNKNOWN = "unknown"


class SessionReconciler:
    """Releases recorded calls their transceivers no longer hold, or whose transceivers are gone.

    ``release(transceiver id, session id)`` frees a call (the front door's
    ``session_ended``). A call recorded less than ``grace`` seconds ago is
    left alone: another front door may have placed it on a transceiver this
    one's copy of the registry does not show yet, or it may be newer than the
    list it is compared with (``grace`` also absorbs clock skew between front
    doors).

    A transceiver is gone when its registry record is missing from a fresh
    read *and* nothing answers at the internal API address its last record
    gave: a record also expires while a live transceiver cannot write it (a
    Redis failover longer than its TTL), and those calls go on. One whose
    address this front door never saw is taken for gone after
    ``unknown_after`` seconds missing from every read.
    """

    def __init__(
        self,
        index: ILedgerIndex,
        view: RegistryView[TransceiverRecord],
        api: IInternalApi,
        clock: IReactorTime,
        release: Callable[[str, str], None],
        grace: float,
        unknown_after: float = 60.0,
    ) -> None:
        self.index = index
        self.view = view
        self.api = api
        self.clock = clock
        self.release = release
        self.grace = grace
        self.unknown_after = unknown_after
        self._last_api: dict[str, Address] = {}
        self._absent_since: dict[str, float] = {}
        self.released: collections.Counter[str] = collections.Counter()
        self.runs: collections.Counter[str] = collections.Counter()
        self._gone_checked = float("-inf")
        self._checking_gone = False
        self._reconciling = False
        self._again = False

    def release_gone(self) -> "defer.Deferred[None]":
        """Release the calls of transceivers missing from a registry read newer than the last one used."""
        if self._checking_gone:
            return defer.succeed(None)  # the run in progress will do
        self._checking_gone = True
        d = defer.ensureDeferred(self._release_gone())
        d.addErrback(self._failed, "gone")
        return d.addBoth(self._done_gone)

    def _done_gone(self, _: object) -> None:
        self._checking_gone = False

    async def _release_gone(self) -> None:
        view = self.view
        read_at = view.refreshed_at
        if not view.up or read_at <= self._gone_checked:
            return
        now = self.clock.seconds()
        for record_id, record in view.records.items():
            self._last_api[record_id] = record.api
            self._absent_since.pop(record_id, None)
        horizon = now - self.grace
        owners = await self.index.transceivers()
        for owner in sorted(owners - set(view.records)):
            absent_since = self._absent_since.setdefault(owner, now)
            api = self._last_api.get(owner)
            # A record also expires while its transceiver cannot reach Redis (a
            # failover longer than its TTL): ask the transceiver itself.
            listed = Unreachable.UNKNOWN if api is None else await self._listed(owner, api)
            if listed is Unreachable.UNKNOWN and now - absent_since < self.unknown_after:
                continue
            recorded = await self.index.sessions_on(owner)
            for public_id, at in recorded.items():
                parts = split_session_id(public_id)
                if parts is None or at > horizon:
                    continue
                if isinstance(listed, set):
                    if parts[1] not in listed:
                        self._release(public_id, "not_on_transceiver")
                else:
                    self._release(public_id, "transceiver_gone")
        # Forget what no longer matters, so these stay as small as the fleet.
        for record_id in [i for i in self._last_api if i not in view.records and i not in owners]:
            del self._last_api[record_id]
        for record_id in [i for i in self._absent_since if i not in owners]:
            del self._absent_since[record_id]
        self._gone_checked = read_at
        self.runs["gone_ok"] += 1

    def reconcile(self) -> "defer.Deferred[None]":
        """Compare every live transceiver's open sessions with what is recorded on it; release the rest."""
        if self._reconciling:
            # The run in progress may have listed a transceiver before the
            # end that is now missed: run once more after it.
            self._again = True
            return defer.succeed(None)
        self._reconciling = True
        d = defer.ensureDeferred(self._reconcile())
        d.addErrback(self._failed, "reconcile")
        return d.addBoth(self._done_reconciling)

    def _done_reconciling(self, _: object) -> None:
        self._reconciling = False
        if self._again:
            self._again = False
            self.reconcile()

    async def _reconcile(self) -> None:
        for owner in sorted(await self.index.transceivers()):
            record = self.view.get(owner)
            if record is None:
                continue  # release_gone's to decide
            asked_at = self.clock.seconds()
            listed = await self._listed(owner, record.api)
            if not isinstance(listed, set):
                continue
            horizon = asked_at - self.grace
            for public_id, recorded in (await self.index.sessions_on(owner)).items():
                parts = split_session_id(public_id)
                if parts is not None and parts[1] not in listed and recorded <= horizon:
                    self._release(public_id, "not_on_transceiver")
        self.runs["reconcile_ok"] += 1

    async def _listed(self, owner: str, api: Address) -> set[str] | Unreachable:
        """The session ids transceiver ``owner`` (at ``api``) holds; or why it did not say.

        :attr:`Unreachable.GONE` when nothing answers there (refused, reset,
        no answer in time): its process is not running. :attr:`Unreachable.UNKNOWN`
        when something answered but not with a list (another version, another secret).
        """
        try:
            response = await self.api.request(api, b"GET", SESSIONS_PATH, None, None)
        except Exception as e:
            self.runs["transceiver_unreachable"] += 1
            log.debug("reconcile: {id} did not answer ({e})", id=owner, e=e)
            return Unreachable.GONE
        if response.status != 200:
            self.runs["transceiver_refused"] += 1
            return Unreachable.UNKNOWN
        try:
            document = json.loads(response.body)
            listed = document["sessions"]
            if not isinstance(listed, list) or len(listed) > MAX_LISTED or not all(isinstance(i, str) for i in listed):
                raise ValueError("sessions is not a list of ids")
        except (ValueError, KeyError, TypeError, RecursionError):
            self.runs["transceiver_malformed"] += 1
            return Unreachable.UNKNOWN
        return set(listed)

    def _release(self, public_id: str, reason: str) -> None:
        parts = split_session_id(public_id)
        if parts is None:
            return
        self.released[reason] += 1
        self.release(*parts)

    def _failed(self, failure: Failure, what: str) -> None:
        self.runs[f"{what}_failed"] += 1
        log.debug("reconcile: {what} failed: {why}", what=what, why=failure.getErrorMessage())

    def metrics(self) -> Iterator[Sample]:
        """Samples for ``/metrics``."""
        p = "voiceedge_frontdoor_"
        for reason, n in sorted(self.released.items()):
            yield ("counter", p + "ends_reconciled", "Calls released because a check found them gone, by reason",
                   {"reason": reason}, n)
        for result, n in sorted(self.runs.items()):
            yield ("counter", p + "reconcile_runs", "Reconciliation steps by result", {"result": result}, n)


class SessionEndsSubscriber:
    """Subscribed to ``voiceedge:sessions:ended``; ``heard(transceiver id, session id)`` for each end.

    Its own connection (a subscribed connection takes no other command),
    through the Sentinels when ``[redis] sentinels`` is set: every
    reconnection asks them for the master. ``subscribed()`` is called after
    every (re)subscription, when messages may have been missed. Probes
    published through ``publisher`` (the front door's ordinary connection,
    which follows the master) and not heard back within ``probe_interval``
    make it drop the connection and subscribe again.
    """

    def __init__(
        self,
        settings: RedisConnectionSettings,
        publisher: RedisClient,
        clock: IReactorTime,
        heard: Callable[[str, str], None],
        subscribed: Callable[[], object],
        probe_interval: float = 2.0,
        reactor: Any = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.clock = clock
        self.heard = heard
        self.on_subscribed = subscribed
        self.probe_interval = probe_interval
        self.reactor = reactor
        self.subscribed = False
        self.counts: collections.Counter[str] = collections.Counter()
        self._nonce = secrets.token_hex(8)
        self._probe_sent = 0
        self._probe_heard = 0
        self._handler: Any = None
        self._sentinel: Any = None
        self._connection: Any = None
        self._probes: LoopingCall | None = None

    def start(self) -> None:
        """Connect and subscribe; keep doing so."""
        import txredisapi  # only services that use Redis need it

        if self._handler is not None:
            return
        ends_factory, sentinel_ends_factory = _subscriber_classes()
        settings = self.settings
        if settings.sentinels:
            self._sentinel = txredisapi.Sentinel(
                list(settings.sentinels), connectTimeout=settings.timeout, replyTimeout=settings.timeout
            )
            self._sentinel.discovery_timeout = max(settings.timeout, 0.5)
            factory_class = type("SentinelEndsFactory", (sentinel_ends_factory,), {"ends": self})
            self._handler = self._sentinel.master_for(
                settings.sentinel_master, factory_class=factory_class, isLazy=True
            )
        else:
            from twisted.internet.endpoints import HostnameEndpoint

            reactor = self.reactor
            if reactor is None:
                from twisted.internet import reactor
            factory = ends_factory(isLazy=True)
            factory.ends = self
            host, port = settings.address
            factory.startConnecting(HostnameEndpoint(reactor, host, port, timeout=settings.timeout))
            self._handler = factory.handler
        self._probes = LoopingCall(self._probe)
        self._probes.clock = self.clock
        self._probes.start(self.probe_interval, now=False)

    def stop(self) -> "defer.Deferred[Any]":
        """Unsubscribe and disconnect for good."""
        if self._probes is not None and self._probes.running:
            self._probes.stop()
        self._probes = None
        closing = []
        if self._handler is not None:
            closing.append(defer.maybeDeferred(self._handler.disconnect))
        if self._sentinel is not None:
            closing.append(defer.maybeDeferred(self._sentinel.disconnect))
        self._handler = self._sentinel = self._connection = None
        self.subscribed = False
        return defer.gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)

    # -- from the connection ------------------------------------------------------

    def _connected(self, connection: Any) -> None:
        d = connection.subscribe(ENDED_CHANNEL)

        def ok(_: object) -> None:
            self._connection = connection
            self.subscribed = True
            self.counts["subscriptions"] += 1
            self._probe_heard = self._probe_sent  # a fresh subscription owes no earlier probe
            log.info("session ends: subscribed to {channel}", channel=ENDED_CHANNEL)
            try:
                self.on_subscribed()
            except Exception:
                log.failure("session ends: after subscribing")

        def failed(failure: Failure) -> None:
            log.warn("session ends: cannot subscribe ({why}); reconnecting", why=failure.getErrorMessage())
            _drop(connection)

        d.addCallbacks(ok, failed)

    def _lost(self, connection: Any) -> None:
        if connection is self._connection:
            self._connection = None
            if self.subscribed:
                log.warn("session ends: subscription lost; reconnecting")
            self.subscribed = False

    def _message(self, message: Any) -> None:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        if text.startswith(PROBE + " "):
            _, nonce, seq = (text.split(" ") + ["", ""])[:3]
            if nonce == self._nonce and seq.isdigit():
                self._probe_heard = max(self._probe_heard, int(seq))
            return
        end = parse_end(text)
        if end is None:
            self.counts["malformed"] += 1
            return
        self.counts["heard"] += 1
        try:
            self.heard(*end)
        except Exception:
            log.failure("session ends: handling an end failed")

    # -- checking itself -------------------------------------------------------------

    def _probe(self) -> None:
        """Publish the next probe; a previous one not heard back means the subscription is stale."""
        if not self.subscribed or self._connection is None:
            return
        if self._probe_heard < self._probe_sent:
            self.counts["probes_missed"] += 1
            log.warn("session ends: our probe did not come back within {s:g} s; subscribing again",
                     s=self.probe_interval)
            self.subscribed = False
            _drop(self._connection)
            return
        if not self.publisher.connected():
            return
        seq = self._probe_sent + 1
        d = defer.maybeDeferred(
            self.publisher.connection.publish, ENDED_CHANNEL, f"{PROBE} {self._nonce} {seq}"
        )

        def sent(_: object) -> None:
            self._probe_sent = max(self._probe_sent, seq)

        d.addCallbacks(sent, lambda _: None)  # the publisher cannot reach Redis: it says nothing of us

    def metrics(self) -> Iterator[Sample]:
        """Samples for ``/metrics``."""
        p = "voiceedge_frontdoor_"
        yield ("gauge", p + "ends_subscribed", "Whether the front door is subscribed to session ends", {},
               1 if self.subscribed else 0)
        for what in ("heard", "malformed", "subscriptions", "probes_missed"):
            yield ("counter", p + "ends_" + what, f"Session ends channel: {what.replace('_', ' ')}", {},
                   self.counts[what])


class SessionEnds(service.Service):
    """The subscriber and the reconciler of one front door, run with its application.

    The reconciler releases gone transceivers' calls after every registry
    read (``check_interval``, the registry's refresh interval) and compares
    lists every ``reconcile_interval`` and after every (re)subscription. With
    no subscriber (a front door of its own workers, no Redis), the
    comparisons are all it has: make them frequent.
    """

    def __init__(
        self,
        subscriber: SessionEndsSubscriber | None,
        reconciler: SessionReconciler,
        clock: IReactorTime,
        check_interval: float,
        reconcile_interval: float,
    ) -> None:
        self.subscriber = subscriber
        self.reconciler = reconciler
        self.clock = clock
        self.check_interval = check_interval
        self.reconcile_interval = reconcile_interval
        self._loops: list[LoopingCall] = []

    def startService(self) -> None:
        """Subscribe, and start both checks."""
        super().startService()
        if self.subscriber is not None:
            self.subscriber.start()
        for interval, step in ((self.check_interval, self.reconciler.release_gone),
                               (self.reconcile_interval, self.reconciler.reconcile)):
            loop = LoopingCall(step)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stopService(self) -> "defer.Deferred[Any]":
        """Stop the checks; unsubscribe."""
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        return self.subscriber.stop() if self.subscriber is not None else defer.succeed(None)

    def metrics(self) -> Iterator[Sample]:
        """Samples for ``/metrics``."""
        if self.subscriber is not None:
            yield from self.subscriber.metrics()
        yield from self.reconciler.metrics()


def _drop(connection: Any) -> None:
    transport = getattr(connection, "transport", None)
    if transport is not None:
        transport.abortConnection()


def _subscriber_classes() -> tuple[type, type]:
    """The txredisapi protocol and factory classes (imported only where Redis is used)."""
    import txredisapi

    class EndsProtocol(txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            self.factory.ends._message(message)

        def connectionLost(self, reason: Any) -> Any:
            self.factory.ends._lost(self)
            return super().connectionLost(reason)

    class SentinelEndsProtocol(EndsProtocol):
        # Sentinel's check that the server is the master, before anything else.
        connectionMade = txredisapi.SentinelRedisProtocol.connectionMade

    class EndsFactory(txredisapi.SubscriberFactory):
        protocol = EndsProtocol
        maxDelay = MAX_RECONNECT_DELAY
        ends: SessionEndsSubscriber

        def addConnection(self, conn: Any) -> None:
            super().addConnection(conn)
            if conn in self.pool:
                self.ends._connected(conn)

    class SentinelEndsFactory(txredisapi.SentinelConnectionFactory):
        protocol = SentinelEndsProtocol
        maxDelay = MAX_RECONNECT_DELAY
        ends: SessionEndsSubscriber

        def addConnection(self, conn: Any) -> None:
            super().addConnection(conn)
            if conn in self.pool:
                self.ends._connected(conn)

    return EndsFactory, SentinelEndsFactory
