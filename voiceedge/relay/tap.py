# -*- test-case-name: tests.test_relay_tap -*-
"""``twistd voiceedge-relay``: options and the service it runs."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.application import service, strports
from twisted.internet import udp
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import http, resource, server

from voiceedge import config as c
from voiceedge.reactors import service_reactors
from voiceedge.metrics import MetricsResource, make_registry
from voiceedge.relay.core import Relay
from voiceedge.relay.flow_store import FlowCache, IFlowStore, RedisFlowStore
from voiceedge.relay.flows import Address
from voiceedge.relay.protocol import listen_client, listen_transceiver
from voiceedge.wire.route_token import RouteTokenCodec

__all__ = [
    "SCHEMA",
    "HealthResource",
    "Options",
    "RelayService",
    "build_relay",
    "build_site",
    "makeService",
    "transceiver_networks",
]

log = Logger()


def transceiver_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A non-empty comma-separated list of CIDR networks."""
    nets = c.networks(value)
    if not nets:
        raise ValueError("at least one network is required")
    return nets


SCHEMA: c.Schema = {
    "relay": {
        "public_listen": c.Key(c.address, "127.0.0.1:3478", "the public UDP address clients send to"),
        "ingress_address": c.Key(
            c.optional_address, "", "public address put in headers (default: public_listen)"
        ),
        "internal_listen": c.Key(
            c.address, "127.0.0.1:0", "UDP address for transceiver traffic (port 0: any free)"
        ),
        "transceiver_networks": c.Key(
            transceiver_networks, "127.0.0.0/8", "networks transceivers live in (CIDR list)"
        ),
        "cluster": c.Key(c.integer(0, 65535), "0", "this relay's cluster id"),
        "max_flows": c.Key(c.integer(1, 10_000_000), "100000", "bound of the flow table"),
        "flow_idle_timeout": c.Key(c.seconds(10, 3600), "40", "a confirmed flow idle this long ends"),
        "pending_timeout": c.Key(c.seconds(1, 300), "10", "an unconfirmed flow lives this long"),
        "max_payload": c.Key(c.integer(576, 65000), "1400", "larger client datagrams are dropped"),
    },
    "token": {
        "keys": c.Key(c.token_keys, "", "fleet route-token keys: <id>:<base64 secret>, ..."),
        "issuing_key": c.Key(c.optional_integer(0, 255), "", "ignored by relays (transceivers issue)"),
    },
    "redis": {
        "enabled": c.Key(c.boolean, "yes", "cache confirmed flows in Redis"),
        "address": c.Key(c.address, "127.0.0.1:6379", "Redis host:port"),
        "ttl": c.Key(c.integer(10, 86400), "120", "seconds a stored flow lives without refresh"),
        "lookup_rate": c.Key(c.integer(1, 100_000), "200", "lookups per second at most"),
        "negative_ttl": c.Key(c.seconds(0, 300), "5", "seconds a miss is remembered"),
        "timeout": c.Key(c.seconds(0.05, 30), "1", "seconds before an operation counts as failed"),
    },
    "http": {
        "listen": c.Key(c.nonempty, "tcp:9090:interface=127.0.0.1", "Twisted endpoint for /metrics"),
    },
}


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
            self.loaded = c.load_config(SCHEMA, path)
        except c.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        token = self.loaded["token"]
        if not token["keys"]:
            raise usage.UsageError(f"{path}: [token] keys: at least one key is required")
        if token["issuing_key"] is not None and token["issuing_key"] not in token["keys"]:
            raise usage.UsageError(
                f"{path}: [token] issuing_key = {token['issuing_key']}: not among the keys"
            )
        relay = self.loaded["relay"]
        public_host = relay["public_listen"][0]
        ingress = relay["ingress_address"] or relay["public_listen"]
        if (":" in public_host) != (":" in ingress[0]):
            raise usage.UsageError(
                f"{path}: [relay] ingress_address: must be the same family as public_listen"
            )


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


def build_relay(conf: c.Config, clock: IReactorTime, store: IFlowStore | None = None) -> Relay:
    """A :class:`Relay` from a loaded config; ``store`` overrides the Redis connection."""
    section = conf["relay"]
    keys = conf["token"]["keys"]
    issuing = conf["token"]["issuing_key"]
    codec = RouteTokenCodec(keys, min(keys) if issuing is None else issuing)
    ingress = section["ingress_address"] or section["public_listen"]
    internal_host = section["internal_listen"][0]
    cache = None
    redis = conf["redis"]
    if redis["enabled"]:
        host, port = redis["address"]
        if store is None:
            store = RedisFlowStore(host, port, timeout=redis["timeout"])
        cache = FlowCache(
            store,
            clock,
            ingress,
            ttl=redis["ttl"],
            lookup_rate=redis["lookup_rate"],
            negative_ttl=redis["negative_ttl"],
            cluster=section["cluster"],
            timeout=redis["timeout"],
            label=f"redis {host}:{port}",
        )
    return Relay(
        clock,
        codec,
        ingress,
        cluster=section["cluster"],
        transceiver_networks=section["transceiver_networks"],
        max_flows=section["max_flows"],
        idle_timeout=section["flow_idle_timeout"],
        pending_timeout=section["pending_timeout"],
        max_payload=section["max_payload"],
        cache=cache,
        internal_family=socket.AF_INET6 if ":" in internal_host else socket.AF_INET,
    )


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """The relay: its public and internal UDP ports, its sweep, and its HTTP listener."""
    clock, udp_reactor = service_reactors(clock)
    conf = config.loaded
    relay = build_relay(conf, clock)
    top = service.MultiService()
    RelayService(
        relay, conf["relay"]["public_listen"], conf["relay"]["internal_listen"], udp_reactor
    ).setServiceParent(top)
    strports.service(conf["http"]["listen"], build_site(relay)).setServiceParent(top)
    return top
