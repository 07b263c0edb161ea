# -*- test-case-name: tests.test_fleet_member -*-
"""A transceiver's membership of a fleet: its internal API, its registry heartbeat, its drain.

:func:`build_membership` adds to a transceiver's application what a fleet
needs of it. Each part is optional: without ``[internal] listen`` there is
no internal API, without ``[registry] enabled`` no record in Redis; the
drain (SIGTERM, and the admin endpoint when there is an internal API) is
always there.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from twisted.application import service, strports
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger

from voiceedge.config import Address
from voiceedge.fleet.drain import Drain, DrainState, install_sigterm
from voiceedge.fleet.internal_api import build_internal_site
from voiceedge.fleet.registry import (
    DRAINING,
    SERVING,
    RedisRegistryStore,
    RegistryPublisher,
    TransceiverRecord,
)
from voiceedge.fleet.settings import DrainSettings, InternalApiSettings, RegistrySettings
from voiceedge.metrics import Sample
from voiceedge.redis_connection import RedisClient, RedisConnectionSettings
from voiceedge.transceiver.host import Transceiver

__all__ = ["CpuMeter", "Membership", "build_membership"]

log = Logger()


class CpuMeter:
    """The share of one core the process used since the last reading."""

    def __init__(self, clock: IReactorTime, cpu_time: Callable[[], float] = time.process_time) -> None:
        self.clock = clock
        self.cpu_time = cpu_time
        self._at = clock.seconds()
        self._cpu = cpu_time()
        self.last = 0.0

    def read(self) -> float:
        """CPU seconds over wall seconds since the previous read (the previous share if no time passed)."""
        now, cpu = self.clock.seconds(), self.cpu_time()
        if now - self._at >= 0.1:
            self.last = max(0.0, (cpu - self._cpu) / (now - self._at))
            self._at, self._cpu = now, cpu
        return self.last


class Membership(service.Service):
    """Runs the heartbeat and the SIGTERM drain with the application; removes the record on a clean stop."""

    def __init__(
        self,
        transceiver: Transceiver,
        drain: Drain,
        publisher: RegistryPublisher | None,
        reactor: Any,
        redis: RedisClient | None,
    ) -> None:
        self.transceiver = transceiver
        self.drain = drain
        self.publisher = publisher
        self.reactor = reactor
        self.redis = redis

    def startService(self) -> None:
        """Start the heartbeat; take SIGTERM once the reactor runs (its own handler is installed then)."""
        super().startService()
        if self.publisher is not None:
            self.publisher.start()
        if hasattr(self.reactor, "callWhenRunning"):
            self.reactor.callWhenRunning(install_sigterm, self.reactor, self.drain)

    def stopService(self) -> Any:
        """Remove the record, then disconnect."""
        super().stopService()
        if self.publisher is None:
            return None
        d = self.publisher.stop()
        if self.redis is not None:
            redis = self.redis
            d.addBoth(lambda _: redis.close())
        return d

    def metrics(self) -> Iterable[Sample]:
        """Drain and registry samples for ``/metrics``."""
        yield from self.drain.metrics()
        if self.publisher is not None:
            yield from self.publisher.metrics()


def build_membership(
    transceiver: Transceiver,
    media_address: Callable[[], Address],
    cluster: int,
    internal: InternalApiSettings,
    registry: RegistrySettings,
    redis: RedisConnectionSettings,
    drain_settings: DrainSettings,
    clock: IReactorTime,
    parent: service.MultiService,
    more_metrics: Iterable[Callable[[], Iterable[Sample]]] = (),
    exit: Callable[[], None] | None = None,
) -> Membership:
    """The internal API, the registry heartbeat and the drain of ``transceiver``, added to ``parent``.

    ``media_address()`` is where relays reach the transceiver (its route
    tokens' address); ``exit`` stops the process (default: the reactor).
    """
    from twisted.internet import reactor as global_reactor

    publisher: RegistryPublisher | None = None
    client: RedisClient | None = None

    def state_changed() -> None:
        if publisher is not None:
            publisher.publish()

    def stop_process() -> None:
        if exit is not None:
            exit()
            return
        # The reactor the services run on (the clock in tests, which is a fake reactor).
        running = clock if IReactorCore.providedBy(clock) else global_reactor
        try:
            running.stop()
        except ReactorNotRunning:
            pass

    def refuse_new() -> None:
        transceiver.accepting = False

    drain = Drain(
        clock,
        drain_settings.grace_period,
        transceiver.session_count,
        refuse_new,
        transceiver.stop,
        stop_process,
        state_changed,
    )
    if registry.enabled:
        api = internal.reachable_at
        if api is None:  # the settings' own check makes this unreachable from an INI file
            raise ValueError("[registry] enabled needs [internal] listen with an address front doors can reach")
        record_id = registry.resolved_id
        meter = CpuMeter(clock)

        def describe() -> TransceiverRecord:
            return TransceiverRecord(
                id=record_id,
                region=registry.region,
                cluster=cluster,
                api=api,
                media=media_address(),
                sessions=transceiver.session_count(),
                capacity=transceiver.max_sessions,
                cpu=transceiver.admission.meter.cpu if transceiver.admission is not None else meter.read(),
                state=SERVING if drain.state is DrainState.SERVING else DRAINING,
                admitting=bool(transceiver.load_report().get("admitting", True)),
            )

        client = RedisClient(redis)
        publisher = RegistryPublisher(RedisRegistryStore(client), clock, describe, registry.heartbeat, registry.ttl)
        ends = publisher

        def ended(session_id: str) -> None:
            # Front doors that keep who opened each call hear of its end here
            # (docs/fleet.md: the subscriber is not written yet).
            ends.session_ended(record_id, session_id)

        transceiver.add_end_listener(ended)
        log.info("registry: this transceiver is {id} in region {region}", id=record_id, region=registry.region)
    membership = Membership(transceiver, drain, publisher, clock, client)
    membership.setServiceParent(parent)
    if internal.listen:
        site = build_internal_site(
            transceiver, internal.secret, drain, [transceiver.metrics, membership.metrics, *more_metrics],
            load=transceiver.load_report,
        )
        strports.service(internal.listen, site).setServiceParent(parent)
    return membership
