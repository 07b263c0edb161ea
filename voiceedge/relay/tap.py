# -*- test-case-name: tests.test_relay_tap -*-
"""``twistd voiceedge-relay``: options and the service it runs."""

from __future__ import annotations

from typing import Any

from twisted.application import service, strports
from twisted.internet import udp
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import http, resource, server

from voiceedge import config as c
from voiceedge.reactors import service_reactors
from voiceedge.redis_connection import RedisClient, describe_redis
from voiceedge.metrics import MetricsResource, make_registry
from voiceedge.relay.core import Relay
from voiceedge.relay.flow_store import FlowCache, IFlowStore, RedisFlowStore
from voiceedge.relay.flows import Address
from voiceedge.relay.protocol import listen_client, listen_transceiver
from voiceedge.relay.settings import RedisSettings, RelayServiceSettings, RelaySettings, TokenSettings
from voiceedge.wire.route_token import RouteTokenCodec

__all__ = [
    "HealthResource",
    "Options",
    "RelayService",
    "build_relay",
    "build_site",
    "makeService",
]

log = Logger()


class Options(usage.Options):
    """Options of ``twistd voiceedge-relay``."""

    optParameters = [
        ["config", "c", None, "INI file (see etc/relay.ini)"],
    ]

    def postOptions(self) -> None:
        """Load and validate the INI file now, so a bad one stops start-up."""
        path = self["config"]
        if path is None:
            raise usage.UsageError("--config is required")
        try:
            self.settings, _ = c.load_settings(RelayServiceSettings, path)
        except c.ConfigError as e:
            raise usage.UsageError(str(e)) from None


class HealthResource(resource.Resource):
    """``GET /healthz``: ``ok flows=<n> redis=<up|down|disabled>``."""

    isLeaf = True

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay

    def render_GET(self, request: server.Request) -> bytes:
        """Liveness: the relay is answering; Redis state is informational."""
        cache = self.relay.cache
        redis = "disabled" if cache is None else ("up" if cache.up else "down")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"ok flows={len(self.relay.flows)} redis={redis}\n".encode()


class _QuietSite(server.Site):
    """A Site without an access log line per scrape."""

    noisy = False

    def log(self, request: http.Request) -> None:
        """Scrapes and health checks are not worth a log line each."""


def build_site(relay: Relay) -> server.Site:
    """The relay's small HTTP listener: ``/metrics`` and ``/healthz``."""
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(make_registry(relay.metrics)))
    root.putChild(b"healthz", HealthResource(relay))
    return _QuietSite(root)


class RelayService(service.Service):
    """Opens the relay's two UDP ports and runs its sweep while the application runs."""

    def __init__(
        self,
        relay: Relay,
        public_listen: Address,
        internal_listen: Address,
        reactor: IReactorUDP,
    ) -> None:
        self.relay = relay
        self.public_listen = public_listen
        self.internal_listen = internal_listen
        self.reactor = reactor
        self.public_port: udp.Port | None = None
        self.internal_port: udp.Port | None = None

    def startService(self) -> None:
        """Bind both sockets, then start the sweep (which connects the cache)."""
        super().startService()
        self.public_port = listen_client(self.relay, self.public_listen, self.reactor)
        self.internal_port = listen_transceiver(self.relay, self.internal_listen, self.reactor)
        self.relay.start()
        log.info(
            "voiceedge relay: public udp {public}, internal udp {internal}, ingress {ingress}",
            public=self.public_port.getHost(),
            internal=self.internal_port.getHost(),
            ingress=self.relay.ingress,
        )

    def stopService(self) -> Any:
        """Stop the sweep, close both sockets and the cache connection."""
        super().stopService()
        self.relay.stop()
        for port in (self.public_port, self.internal_port):
            if port is not None:
                port.stopListening()
        self.public_port = self.internal_port = None
        if self.relay.cache is not None:
            return self.relay.cache.close()
        return None


def build_relay(
    settings: RelaySettings,
    token: TokenSettings,
    redis: RedisSettings,
    clock: IReactorTime,
    store: IFlowStore | None = None,
) -> Relay:
    """A :class:`Relay` as the settings say; ``store`` overrides the Redis connection."""
    keys = token.keys
    codec = RouteTokenCodec(keys, min(keys) if token.issuing_key is None else token.issuing_key)
    cache = None
    if redis.enabled:
        if store is None:
            store = RedisFlowStore(RedisClient(redis))
        cache = FlowCache(
            store, clock, settings.ingress, redis, cluster=settings.cluster, label=describe_redis(redis)
        )
    return Relay(clock, codec, settings, cache=cache)


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """The relay: its public and internal UDP ports, its sweep, and its HTTP listener."""
    clock, udp_reactor = service_reactors(clock)
    settings: RelayServiceSettings = config.settings
    relay = build_relay(settings.relay, settings.token, settings.redis, clock)
    top = service.MultiService()
    RelayService(
        relay, settings.relay.public_listen, settings.relay.internal_listen, udp_reactor
    ).setServiceParent(top)
    strports.service(settings.http.listen, build_site(relay)).setServiceParent(top)
    return top
