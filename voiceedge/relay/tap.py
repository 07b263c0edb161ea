# -*- test-case-name: tests.test_relay_tap -*-
"""``twistd voiceedge-relay``: options and the service it runs."""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

from twisted.application import service, strports
from twisted.internet import udp
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import http, resource, server

from voiceedge import config as c
from voiceedge.reactors import service_reactors
from voiceedge.redis_connection import RedisClient, describe_redis
from voiceedge.metrics import MetricsResource, make_registry, reactor_metrics
from voiceedge.relay.core import Relay
from voiceedge.relay.flow_store import FlowCache, IFlowStore, RedisFlowStore
from voiceedge.relay.flows import Address
from voiceedge.signaling.site import SignalingRequest
from voiceedge.fleet.registry import RedisRegistryStore, RegistryPublisher, RegistryView
from voiceedge.fleet.settings import RegistrySettings
from voiceedge.relay.directory import RELAY_INDEX_KEY, RELAY_KEY_PREFIX, RelayDirectory, RelayRecord
from voiceedge.relay.protocol import listen_client, listen_peer, listen_transceiver
from voiceedge.relay.router import Router, static_relays
from voiceedge.relay.settings import (
    GlobalHopSettings,
    RedisSettings,
    RelayServiceSettings,
    RelaySettings,
    TokenSettings,
)
from voiceedge.wire.route_token import RouteTokenCodec
from voiceedge.workers import ParentWatch, WorkerSupervisor, offset_port, offset_strport, twistd_argv

__all__ = [
    "HealthResource",
    "Options",
    "RelayService",
    "DirectoryService",
    "build_directory",
    "build_relay",
    "build_site",
    "makeService",
]

log = Logger()


class Options(usage.Options):
    """Options of ``twistd voiceedge-relay``."""

    optParameters = [
        ["config", "c", None, "INI file (see etc/relay.ini)"],
        ["worker", None, None, "(set by the supervisor) run as worker N of [process] workers"],
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

    def __init__(self, relay: Relay, worker: int | None = None) -> None:
        super().__init__()
        self.relay = relay
        self.worker = worker

    def render_GET(self, request: server.Request) -> bytes:
        """Liveness: the relay is answering; Redis state is informational (and which worker, if one)."""
        cache = self.relay.cache
        redis = "disabled" if cache is None else ("up" if cache.up else "down")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        worker = "" if self.worker is None else f" worker={self.worker} pid={os.getpid()}"
        return f"ok flows={len(self.relay.flows)} redis={redis}{worker}\n".encode()


class _QuietSite(server.Site):
    """A Site without an access log line per scrape, and no software version in ``Server``."""

    noisy = False
    requestFactory = SignalingRequest

    def log(self, request: http.Request) -> None:
        """Scrapes and health checks are not worth a log line each."""


def build_site(relay: Relay, worker: int | None = None) -> server.Site:
    """The relay's small HTTP listener: ``/metrics`` and ``/healthz``."""
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(make_registry(relay.metrics, reactor_metrics(relay.clock))))
    root.putChild(b"healthz", HealthResource(relay, worker))
    return _QuietSite(root)


class RelayService(service.Service):
    """Opens the relay's two UDP ports and runs its sweep while the application runs."""

    def __init__(
        self,
        relay: Relay,
        public_listen: Address,
        internal_listen: Address,
        reactor: IReactorUDP,
        peer_listen: Address | None = None,
        reuse_port: bool = False,
        poll_interval: float = 0.0,
    ) -> None:
        self.relay = relay
        self.reuse_port = reuse_port
        # BatchReadPort.poll_interval of the public and internal ports (seconds; 0: never poll).
        self.poll_interval = poll_interval
        self.public_listen = public_listen
        self.internal_listen = internal_listen
        self.peer_listen = peer_listen
        self.reactor = reactor
        self.public_port: udp.Port | None = None
        self.internal_port: udp.Port | None = None
        self.peer_port: udp.Port | None = None

    def startService(self) -> None:
        """Bind the sockets, then start the sweep (which connects the cache)."""
        super().startService()
        self.public_port = listen_client(
            self.relay, self.public_listen, self.reactor, self.reuse_port, poll_interval=self.poll_interval
        )
        self.internal_port = listen_transceiver(
            self.relay, self.internal_listen, self.reactor, poll_interval=self.poll_interval
        )
        if self.peer_listen is not None:
            self.peer_port = listen_peer(self.relay, self.peer_listen, self.reactor)
        self.relay.start()
        log.info(
            "voiceedge relay: public udp {public}, internal udp {internal}, global hop {peer},"
            " ingress {ingress}",
            public=self.public_port.getHost(),
            internal=self.internal_port.getHost(),
            peer=self.peer_port.getHost() if self.peer_port is not None else "off",
            ingress=self.relay.ingress,
        )

    def stopService(self) -> Any:
        """Stop the sweep, close the sockets and the cache connection."""
        super().stopService()
        self.relay.stop()
        for port in (self.public_port, self.internal_port, self.peer_port):
            if port is not None:
                port.stopListening()
        self.public_port = self.internal_port = self.peer_port = None
        if self.relay.cache is not None:
            return self.relay.cache.close()
        return None


class DirectoryService(service.Service):
    """Publishes this relay's global-hop address and reads the other relays', while the application runs."""

    def __init__(self, publisher: RegistryPublisher | None, view: RegistryView[RelayRecord]) -> None:
        self.publisher = publisher
        self.view = view

    def startService(self) -> None:
        """Start the heartbeat and the reads."""
        super().startService()
        if self.publisher is not None:
            self.publisher.start()
        self.view.start()

    def stopService(self) -> Any:
        """Stop reading; remove this relay's record."""
        super().stopService()
        self.view.stop()
        return self.publisher.stop() if self.publisher is not None else None


def build_relay(
    settings: RelaySettings,
    token: TokenSettings,
    redis: RedisSettings,
    clock: IReactorTime,
    store: IFlowStore | None = None,
    global_hop: GlobalHopSettings = GlobalHopSettings(),
    relay_for: Callable[[int], Address | None] | None = None,
) -> Relay:
    """A :class:`Relay` as the settings say; ``store`` overrides the Redis connection.

    ``relay_for`` says which relay takes the global hop to each other
    cluster (default: ``[global] relays`` only).
    """
    keys = token.keys
    codec = RouteTokenCodec(keys, min(keys) if token.issuing_key is None else token.issuing_key)
    cache = None
    if redis.enabled:
        if store is None:
            store = RedisFlowStore(RedisClient(redis))
        cache = FlowCache(
            store, clock, settings.ingress, redis, cluster=settings.cluster, label=describe_redis(redis)
        )
    family = socket.AF_INET6 if ":" in settings.internal_listen[0] else socket.AF_INET
    router = Router(
        settings.cluster,
        settings.transceiver_networks,
        family,
        relay_for or static_relays(global_hop.relays),
        global_hop.networks,
    )
    return Relay(clock, codec, settings, router=router, max_hops=global_hop.max_hops, cache=cache)


def build_directory(
    settings: RelayServiceSettings, clock: IReactorTime, parent: service.MultiService
) -> RelayDirectory:
    """The relay directory: configured relays, and with ``[global] directory`` the ones in Redis."""
    hop = settings.global_hop
    if not hop.directory:
        return RelayDirectory(hop.relays)
    own_id = hop.relay_id or RegistrySettings(id="").resolved_id
    store = RedisRegistryStore(RedisClient(settings.redis), RELAY_KEY_PREFIX, RELAY_INDEX_KEY)
    view: RegistryView[RelayRecord] = RegistryView(store, clock, parse=RelayRecord.from_json)
    publisher = None
    advertised = hop.advertised
    if advertised is not None:
        record = RelayRecord(own_id, settings.relay.cluster, advertised)
        publisher = RegistryPublisher(store, clock, lambda: record, heartbeat=2.0, ttl=6.0)
    DirectoryService(publisher, view).setServiceParent(parent)
    return RelayDirectory(hop.relays, view, own_id)


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """The relay: its public, internal and global-hop UDP ports, its sweep, and its HTTP listener.

    With more than one ``[process] workers`` this process only supervises
    that many workers (``--worker i``), which share the public port; worker
    ``i`` takes the internal and HTTP ports plus ``i``.
    """
    clock, udp_reactor = service_reactors(clock)
    settings: RelayServiceSettings = config.settings
    count = settings.process_count
    worker = config["worker"]
    top = service.MultiService()
    if count > 1 and worker is None:
        options = ["--config", str(config["config"])]
        WorkerSupervisor(
            udp_reactor, count, lambda i: twistd_argv("voiceedge-relay", options, i),
            restart_delay=settings.process.restart_delay,
        ).setServiceParent(top)
        log.info("voiceedge relay: {count} workers on {public}", count=count, public=settings.relay.public_listen)
        return top
    index = int(worker) if worker is not None else 0
    directory = build_directory(settings, clock, top)
    relay = build_relay(
        settings.relay, settings.token, settings.redis, clock,
        global_hop=settings.global_hop, relay_for=directory.relay_for,
    )
    RelayService(
        relay, settings.relay.public_listen, offset_port(settings.relay.internal_listen, index), udp_reactor,
        settings.global_hop.listen, reuse_port=count > 1, poll_interval=settings.relay.poll_ms / 1000,
    ).setServiceParent(top)
    site = build_site(relay, index if worker is not None else None)
    strports.service(offset_strport(settings.http.listen, index), site).setServiceParent(top)
    if worker is not None:
        ParentWatch(clock, _stop_reactor).setServiceParent(top)
    return top


def _stop_reactor() -> None:
    from twisted.internet import reactor

    reactor.stop()
