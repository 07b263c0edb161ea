# -*- test-case-name: tests.test_frontdoor -*-
"""``twistd voiceedge-signaling``: the front door of a fleet.

It takes clients' offers (``POST /v1/realtime/calls`` and WHIP), places each
on a transceiver chosen from the registry in Redis (the client's region, the
least-loaded transceiver serving there) through that transceiver's internal
API, and routes ``GET``, ``PATCH`` and ``DELETE`` of the session to its owner.
It holds no session itself: see :mod:`voiceedge.fleet.frontdoor`. Who may
manage each call, the live calls of each API key and unspent client secrets
are in Redis (:mod:`voiceedge.fleet.shared_ledger`,
:mod:`voiceedge.fleet.shared_secrets`), so any number of front door replicas
share them; session ends reach them through :mod:`voiceedge.fleet.session_ends`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.application import service, strports
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage
from twisted.web import http, resource, server

from voiceedge import config as c
from voiceedge.config import SettingError, family, section
from voiceedge.fleet.frontdoor import FleetSessionHost
from voiceedge.fleet.internal_client import InternalApiClient
from voiceedge.fleet.registry import RedisRegistryStore, RegistryView, TransceiverRecord
from voiceedge.fleet.settings import FleetSettings, RegionSettings
from voiceedge.fleet.steering import RegionMap
from voiceedge.fleet.session_ends import SessionEnds, SessionEndsSubscriber, SessionReconciler
from voiceedge.fleet.shared_ledger import RedisSessionLedger
from voiceedge.fleet.shared_secrets import RedisClientSecrets
from voiceedge.metrics import MetricsResource, SnapshotCollector, make_registry
from voiceedge.reactors import service_reactors
from voiceedge.redis_connection import RedisClient, RedisConnectionSettings
from voiceedge.signaling.auth import Credentials
from voiceedge.signaling.resource import build_site
from voiceedge.signaling.settings import SignalingSettings

__all__ = ["FrontDoorService", "FrontDoorSettings", "Options", "makeService"]


@dataclass(frozen=True, slots=True)
class FrontDoorSettings:
    """Everything ``twistd voiceedge-signaling`` reads from its INI file."""

    signaling: SignalingSettings = section(SignalingSettings)
    fleet: FleetSettings = section(FleetSettings)
    redis: RedisConnectionSettings = section(RedisConnectionSettings)
    regions: Mapping[str, RegionSettings] = family(RegionSettings, "region")

    def __post_init__(self) -> None:
        if not self.fleet.secret:
            raise SettingError("secret", "the fleet secret is required", section="fleet")
        if self.fleet.default_region not in self.regions:
            raise SettingError(
                "default_region",
                f"no [region.{self.fleet.default_region}] section (every region needs its relay)",
                section="fleet",
            )
        for name, region in self.regions.items():
            for other in region.fallback:
                if other not in self.regions:
                    raise SettingError("fallback", f"no [region.{other}] section", section=f"region.{name}")


class Options(usage.Options):
    """Options of ``twistd voiceedge-signaling``."""

    optParameters = [
        ["config", "c", None, "INI file (see etc/signaling.ini)"],
    ]

    def postOptions(self) -> None:
        """Load and validate the INI file now, so a bad one stops start-up."""
        path = self["config"]
        if path is None:
            raise usage.UsageError("--config is required")
        try:
            self.settings, _ = c.load_settings(FrontDoorSettings, path)
        except c.ConfigError as e:
            raise usage.UsageError(str(e)) from None


class ReadyResource(resource.Resource):
    """``GET /readyz``: 200 once the registry has been read (and while a copy is in use), else 503.

    ``draining()`` true (a supervisor of transceiver workers that drains) is 503 too.
    """

    isLeaf = True

    def __init__(
        self, view: RegistryView[TransceiverRecord], draining: Callable[[], bool] | None = None
    ) -> None:
        super().__init__()
        self.view = view
        self.draining = draining

    def render_GET(self, request: server.Request) -> bytes:
        """Ready when the front door knows transceivers to choose from."""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.draining is not None and self.draining():
            request.setResponseCode(http.SERVICE_UNAVAILABLE)
            return b"draining\n"
        serving = sum(1 for r in self.view.records.values() if r.serving)
        if not self.view.up and not self.view.records:
            request.setResponseCode(http.SERVICE_UNAVAILABLE)
            return b"registry not read yet\n"
        return f"ok transceivers={len(self.view.records)} serving={serving}\n".encode()


class FrontDoorService(service.Service):
    """Reads the registry while the application runs; closes connections at the end (after ``ends``)."""

    def __init__(self, view: RegistryView[TransceiverRecord], api: InternalApiClient, redis: RedisClient) -> None:
        self.view = view
        self.api = api
        self.redis = redis

    def startService(self) -> None:
        """Start reading the registry."""
        super().startService()
        self.view.start()

    def stopService(self) -> Any:
        """Stop reading; close the kept connections and Redis."""
        super().stopService()
        self.view.stop()
        d = self.api.close()
        d.addBoth(lambda _: self.redis.close())
        return d


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """The front door: its HTTP listener, its copy of the registry, its client for internal APIs, its shared stores."""
    clock, _ = service_reactors(clock)
    settings: FrontDoorSettings = config.settings
    fleet = settings.fleet
    signaling = settings.signaling
    redis = RedisClient(settings.redis)
    view: RegistryView[TransceiverRecord] = RegistryView(
        RedisRegistryStore(redis), clock, fleet.refresh_interval, fleet.max_stale
    )
    api = InternalApiClient(clock, fleet.secret, fleet.request_timeout)
    host = FleetSessionHost(view, api, RegionMap(settings.regions, fleet.default_region), clock, fleet)
    ledger = RedisSessionLedger(redis, clock, signaling.max_calls_per_key)
    checker = Credentials(
        signaling.api_keys(),
        RedisClientSecrets(
            redis, clock, default_ttl=signaling.client_secret_ttl, max_ttl=signaling.client_secret_max_ttl
        ),
    )
    reconciler = SessionReconciler(ledger, view, api, clock, host.session_ended, grace=reconcile_grace(fleet))
    subscriber = SessionEndsSubscriber(settings.redis, redis, clock, host.session_ended, reconciler.reconcile)
    ends = SessionEnds(subscriber, reconciler, clock, fleet.refresh_interval, fleet.reconcile_interval)
    top = service.MultiService()
    FrontDoorService(view, api, redis).setServiceParent(top)
    ends.setServiceParent(top)
    registry = make_registry(host.metrics, view.metrics, ends.metrics)
    metrics = MetricsResource(registry)
    site = build_site(
        host,
        signaling,
        checker=checker,
        ledger=ledger,
        extra={b"readyz": ReadyResource(view)},
        admin={} if signaling.metrics_listen else {b"metrics": metrics},
        reactor=clock,
    )
    registry.register(SnapshotCollector(site.metrics))
    strports.service(signaling.listen, site).setServiceParent(top)
    if signaling.metrics_listen:
        root = resource.Resource()
        root.putChild(b"metrics", metrics)
        strports.service(signaling.metrics_listen, server.Site(root)).setServiceParent(top)
    return top


def reconcile_grace(fleet: FleetSettings) -> float:
    """Seconds a newly recorded call is left alone by reconciling: two registry reads and some clock skew."""
    return 2 * fleet.refresh_interval + 2.0
