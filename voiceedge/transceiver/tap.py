# -*- test-case-name: tests.test_tap -*-
"""``twistd voiceedge-transceiver``: options and the service it runs."""

from __future__ import annotations

import configparser
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from twisted.application import internet, service, strports
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage
from twisted.web import server
from twisted.web.resource import Resource

from voiceedge import config as c
from voiceedge.agents.interfaces import IAgentType
from voiceedge.agents.plugin import agent_type
from voiceedge.fleet.membership import build_membership
from voiceedge.media.detection import DetectorUnavailable, make_speech_detector
from voiceedge.metrics import MetricsResource, Sample, SnapshotCollector, make_registry, reactor_metrics
from voiceedge.reactors import service_reactors
from voiceedge.signaling.resource import build_site
from voiceedge.signaling.settings import SignalingSettings
from voiceedge.transceiver.credentials import random_ufrag
from voiceedge.transceiver.dtls import DtlsCertificate
from voiceedge.transceiver.host import Address, Transceiver
from voiceedge.transceiver.protocol import MAX_DATAGRAM, SharedSocketProtocol
from voiceedge.transceiver.settings import (
    RouteSettings,
    SpeechSettings,
    TransceiverServiceSettings,
    TransceiverSettings,
)
from voiceedge.wire.route_token import Route, RouteTokenCodec

__all__ = [
    "Agent",
    "Options",
    "TransceiverService",
    "build_signaling",
    "build_transceiver",
    "load_with_agent",
    "makeService",
    "route_ufrags",
]

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Agent:
    """The agent an INI file chose: its type, its parsed ``[agent.<name>]`` options, and the others it offers.

    ``offered`` are the agents (``[agent] offered``) a client secret may
    choose for its call by name, each with its own section's options.
    """

    kind: IAgentType
    options: Mapping[str, Any]
    offered: Mapping[str, "Agent"] = dataclasses.field(default_factory=dict)

    def make_factory(self, clock: IReactorTime) -> Any:
        """The agent factory for every session of a transceiver."""
        return self.kind.make_factory(dict(self.options), clock)

    def make_factories(self, clock: IReactorTime) -> dict[str, Any]:
        """A factory for each offered agent, by name."""
        return {name: agent.make_factory(clock) for name, agent in self.offered.items()}


def _agent_names(path: str | None) -> tuple[str, list[str]]:
    """The [agent] name and offered names a file chooses, read before the full schema is known."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        if path is not None:
            parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        pass  # load_settings reports it properly
    offered = c.words(parser.get("agent", "offered", fallback=""))
    return parser.get("agent", "name", fallback="echo").strip(), list(dict.fromkeys(offered))


def load_with_agent(service_settings: type[S], path: str | None) -> tuple[S, Agent]:
    """Validate ``path`` (or take every default) into ``service_settings`` plus the agents' sections."""
    source = path or "<embedded defaults>"
    name, offered = _agent_names(path)
    kinds: dict[str, IAgentType] = {}
    for key, wanted in [("name", name)] + [("offered", n) for n in offered]:
        try:
            kinds[wanted] = agent_type(wanted)
        except ValueError as e:
            raise c.ConfigError(f"{source}: [agent] {key}: {e}") from None
    extra = {f"agent.{n}": kind.options for n, kind in kinds.items()}
    settings, conf = c.load_settings(service_settings, path, extra=extra)
    others = {n: Agent(kinds[n], conf[f"agent.{n}"]) for n in offered if n != name}
    return settings, Agent(kinds[name], conf[f"agent.{name}"], others)


class Options(usage.Options):
    """Options of ``twistd voiceedge-transceiver``."""

    optParameters = [
        ["config", "c", None, "INI file (see etc/transceiver.ini)"],
    ]

    def postOptions(self) -> None:
        """Load and validate the INI file now, so a bad one stops start-up."""
        path = self["config"]
        if path is None:
            raise usage.UsageError("--config is required")
        try:
            self.settings, self.agent = load_with_agent(TransceiverServiceSettings, path)
        except c.ConfigError as e:
            raise usage.UsageError(str(e)) from None


class TransceiverService(service.Service):
    """Starts and stops the transceiver's timers with the application."""

    def __init__(self, transceiver: Transceiver) -> None:
        self.transceiver = transceiver

    def startService(self) -> None:
        """Start the shared tick and the sweep."""
        super().startService()
        self.transceiver.start()

    def stopService(self) -> Any:
        """End every session."""
        self.transceiver.stop()
        return super().stopService()


def route_address(route: RouteSettings, protocol: SharedSocketProtocol) -> Address:
    """Where relays reach this transceiver: ``route.address``, or the media socket's own once bound."""
    return route.address or protocol.local_address()


def route_ufrags(route: RouteSettings, local_address: Callable[[], Address]) -> Callable[[], str]:
    """Server ufrags that are route tokens naming ``local_address()`` (random ones without keys)."""
    if not route.keys:
        return random_ufrag
    codec = RouteTokenCodec(route.keys, route.issuing)
    cluster = route.cluster

    def make_ufrag() -> str:
        return codec.issue(Route(cluster, local_address()))

    return make_ufrag


def build_transceiver(
    settings: TransceiverSettings,
    route: RouteSettings,
    speech: SpeechSettings,
    agent: Agent,
    clock: IReactorTime,
    parent: service.MultiService,
) -> Transceiver:
    """A transceiver as the settings say, its UDP socket and timers added to ``parent``.

    The speech detector is built once here, so a model that cannot load stops
    start-up (:class:`~voiceedge.config.ConfigError` naming ``[speech] detector``),
    not the first call.
    """
    factory = agent.make_factory(clock)
    try:
        make_speech_detector(speech.detection(), factory.sample_rate)
    except DetectorUnavailable as e:
        raise c.ConfigError(f"[speech] detector = {speech.detector}: {e}") from None
    protocols: list[SharedSocketProtocol] = []
    transceiver = Transceiver(
        clock,
        DtlsCertificate.generate(),
        factory,
        settings,
        speech=speech,
        # A client secret may name the default agent too.
        offered_agents={agent.kind.name: factory, **agent.make_factories(clock)},
        make_ufrag=route_ufrags(route, lambda: route_address(route, protocols[0])),
    )
    protocols.append(SharedSocketProtocol(transceiver))
    media_host, media_port = settings.media_listen
    # Twisted reads 8 KiB by default and would truncate a larger datagram.
    udp = internet.UDPServer(
        media_port, protocols[0], interface=media_host, maxPacketSize=MAX_DATAGRAM
    )
    udp.setServiceParent(parent)
    TransceiverService(transceiver).setServiceParent(parent)
    return transceiver


def build_signaling(
    settings: SignalingSettings,
    transceiver: Transceiver,
    parent: service.MultiService,
    more_metrics: Sequence[Callable[[], Iterable[Sample]]] = (),
    clock: IReactorTime | None = None,
) -> None:
    """HTTP signaling for ``transceiver``, with its metrics, added to ``parent``.

    ``/metrics`` is served on ``metrics_listen`` when set (and only there),
    else on the signaling listener, where it needs an API key unless the
    service is open.
    """
    clock, _ = service_reactors(clock)
    registry = make_registry(transceiver.metrics, reactor_metrics(clock), *more_metrics)
    metrics = MetricsResource(registry)
    site = build_site(
        transceiver,
        settings,
        admin={} if settings.metrics_listen else {b"metrics": metrics},
        reactor=clock,
    )
    registry.register(SnapshotCollector(site.metrics))
    strports.service(settings.listen, site).setServiceParent(parent)
    if settings.metrics_listen:
        root = Resource()
        root.putChild(b"metrics", metrics)
        strports.service(settings.metrics_listen, server.Site(root)).setServiceParent(parent)


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """The transceiver: its media socket, its timers and its HTTP signaling."""
    clock, _ = service_reactors(clock)
    settings: TransceiverServiceSettings = config.settings
    top = service.MultiService()
    transceiver = build_transceiver(
        settings.transceiver, settings.route, settings.speech, config.agent, clock, top
    )
    build_signaling(settings.signaling, transceiver, top, clock=clock)
    protocol = next(s for s in top if isinstance(s, internet.UDPServer)).args[1]
    build_membership(
        transceiver,
        lambda: route_address(settings.route, protocol),
        settings.route.cluster,
        settings.internal,
        settings.registry,
        settings.redis,
        settings.drain,
        clock,
        top,
    )
    return top
