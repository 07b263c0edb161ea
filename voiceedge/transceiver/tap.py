# -*- test-case-name: tests.test_tap -*-
"""``twistd voiceedge-transceiver``: options and the service it runs, in one process or one worker per core.

With ``[process] workers`` above one, the process ``twistd`` starts is a
supervisor (:class:`~voiceedge.workers.WorkerSupervisor`) and the front door of
its workers (:func:`voiceedge.fleet.local.build_front_door`) on ``[signaling]
listen``; each worker (``--worker <i>``) is a whole transceiver: its media
socket on ``media_listen``'s port plus ``i``, its route address (and, with no
route keys, its advertised address) plus ``i``, its internal API on ``[internal]
listen``'s port plus ``i`` (or on a free loopback port the supervisor chose),
and its own registry id (``<id>-w<i>``). SIGTERM on the supervisor drains
every worker; a second ends their calls at once.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import secrets
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from twisted.application import internet, service, strports
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import server
from twisted.web.resource import Resource

from voiceedge import config as c
from voiceedge.config import SettingError
from voiceedge.agents.interfaces import IAgentType
from voiceedge.agents.plugin import agent_type
from voiceedge.fleet.drain import install_sigterm
from voiceedge.fleet.local import INTERNAL_SECRET_ENV, build_front_door, loopback_apis
from voiceedge.fleet.membership import build_membership
from voiceedge.fleet.settings import InternalApiSettings
from voiceedge.media.detection import DetectorUnavailable, make_speech_detector
from voiceedge.metrics import MetricsResource, Sample, SnapshotCollector, make_registry, reactor_metrics
from voiceedge.reactors import service_reactors
from voiceedge.signaling.resource import build_site
from voiceedge.signaling.settings import SignalingSettings
from voiceedge.transceiver.admission import Admission, LoadMeter
from voiceedge.transceiver.credentials import random_ufrag
from voiceedge.transceiver.dtls import DtlsCertificate
from voiceedge.transceiver.host import Address, Transceiver
from voiceedge.transceiver.media_port import MediaServer
from voiceedge.transceiver.protocol import MAX_DATAGRAM, SharedSocketProtocol
from voiceedge.transceiver.settings import (
    RouteSettings,
    SpeechSettings,
    TransceiverServiceSettings,
    TransceiverSettings,
)
from voiceedge.wire.route_token import Route, RouteTokenCodec
from voiceedge.workers import ParentWatch, SupervisorDrain, WorkerSupervisor, offset_port, offset_strport, twistd_argv

__all__ = [
    "Agent",
    "Options",
    "DrainOnSigterm",
    "TransceiverService",
    "build_signaling",
    "build_transceiver",
    "load_with_agent",
    "makeService",
    "route_ufrags",
    "worker_apis",
    "worker_settings",
]

S = TypeVar("S")

log = Logger()


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
        ["worker", None, None, "(set by the supervisor) run as worker N of [process] workers"],
        ["internal", None, None, "(set by the supervisor) host:port of the worker's internal API"],
    ]

    def postOptions(self) -> None:
        """Load and validate the INI file now, so a bad one stops start-up."""
        path = self["config"]
        if path is None:
            raise usage.UsageError("--config is required")
        try:
            self.settings, self.agent = load_with_agent(TransceiverServiceSettings, path)
            if self.settings.process.count > 1:
                worker_apis(self.settings.internal, self.settings.process.count)
        except c.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        except SettingError as e:
            raise usage.UsageError(f"{path}: [{e.section}] {e.key}: {e.message}") from None


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


def build_admission(settings: TransceiverSettings, clock: IReactorTime) -> Admission:
    """Admission by this process's load: ``max_cpu_percent`` and ``max_loop_lag_ms`` (0: no limit)."""
    return Admission(
        LoadMeter(clock),
        settings.max_cpu_percent / 100 if settings.max_cpu_percent else None,
        settings.max_loop_lag_ms / 1000 if settings.max_loop_lag_ms else None,
    )


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
        admission=build_admission(settings, clock),
    )
    protocols.append(SharedSocketProtocol(transceiver))
    media_host, media_port = settings.media_listen
    # Twisted reads 8 KiB by default and would truncate a larger datagram.
    udp = MediaServer(media_port, protocols[0], interface=media_host, maxPacketSize=MAX_DATAGRAM)
    udp.poll_interval = settings.media_poll_ms / 1000
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
    """The transceiver: its media socket, its timers and its HTTP signaling (or a supervisor of workers)."""
    clock, reactor = service_reactors(clock)
    settings: TransceiverServiceSettings = config.settings
    worker = config["worker"]
    if settings.process.count > 1 and worker is None:
        return _supervisor(config, settings, clock, reactor)
    if worker is not None:
        internal = c.address(config["internal"]) if config["internal"] else None
        settings = worker_settings(settings, int(worker), internal, os.environ.get(INTERNAL_SECRET_ENV, ""))
    top = service.MultiService()
    transceiver = build_transceiver(
        settings.transceiver, settings.route, settings.speech, config.agent, clock, top
    )
    if worker is None:
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
    if worker is not None:
        ParentWatch(clock, _stop_reactor).setServiceParent(top)
    return top


_WORKER_ID = "-w{index}"


def worker_apis(internal: InternalApiSettings, count: int) -> dict[int, Address] | None:
    """Where the supervisor reaches each worker's internal API: ``[internal]``'s address plus the index.

    ``None`` when ``[internal] listen`` is empty (the supervisor then picks
    free loopback ports). Raises :class:`SettingError` when ``listen`` gives no
    port to offset or no address to reach.
    """
    if not internal.listen:
        return None
    reach = internal.reachable_at
    if reach is None:
        # tcp:PORT on every interface: the supervisor reaches its workers on loopback.
        match = re.match(r"^tcp:(\d+)(?::interface=(?:0\.0\.0\.0|::))?$", internal.listen)
        reach = ("127.0.0.1", int(match.group(1))) if match else None
    if reach is None or reach[1] == 0 or offset_strport(internal.listen, 1) == internal.listen:
        raise SettingError(
            "listen",
            "with [process] workers above 1, must be tcp:PORT (each worker takes PORT plus its index)"
            " on an address the supervisor reaches (or set [internal] address)",
            section="internal",
        )
    return {i: offset_port(reach, i) for i in range(count)}


def worker_settings(
    settings: TransceiverServiceSettings, index: int, internal: Address | None, secret: str
) -> TransceiverServiceSettings:
    """Worker ``index``'s settings: its own media socket, route address, internal API and registry id.

    ``internal`` is the loopback address its supervisor chose for its internal
    API when ``[internal] listen`` is empty (with ``secret``, made by the supervisor).
    """
    transceiver = settings.transceiver
    advertised = transceiver.advertised_address
    if advertised is not None and not settings.route.keys:
        # No relay: clients reach this worker's own socket.
        advertised = offset_port(advertised, index)
    transceiver = dataclasses.replace(
        transceiver, media_listen=offset_port(transceiver.media_listen, index), advertised_address=advertised
    )
    route = settings.route
    if route.address is not None:
        route = dataclasses.replace(route, address=offset_port(route.address, index))
    api = settings.internal
    if internal is not None:
        host, port = internal
        api = InternalApiSettings(listen=f"tcp:{port}:interface={host}", secret=api.secret or secret)
    elif api.listen:
        api = dataclasses.replace(
            api,
            listen=offset_strport(api.listen, index),
            address=offset_port(api.address, index) if api.address is not None else None,
        )
    registry = settings.registry
    if registry.id:
        suffix = _WORKER_ID.format(index=index)
        registry = dataclasses.replace(registry, id=registry.id[: 64 - len(suffix)] + suffix)
    return dataclasses.replace(settings, transceiver=transceiver, route=route, internal=api, registry=registry)


def _supervisor(
    config: Options, settings: TransceiverServiceSettings, clock: IReactorTime, reactor: Any
) -> service.MultiService:
    """``count`` workers, and signaling as their front door."""
    count = settings.process.count
    env = dict(os.environ)
    apis = worker_apis(settings.internal, count)
    secret = settings.internal.secret
    argv_options = ["--config", str(config["config"])]
    if apis is None:
        apis = loopback_apis(count)
        secret = secret or secrets.token_urlsafe(32)
        env[INTERNAL_SECRET_ENV] = secret
        argv_options_for = lambda i: [*argv_options, "--internal", c.format_address(apis[i])]  # noqa: E731
    else:
        argv_options_for = lambda i: argv_options  # noqa: E731
    top = service.MultiService()
    # A supervisor that stops without draining (SIGINT, the second SIGTERM) ends its workers'
    # calls at once: SIGINT stops a worker's reactor; SIGTERM would start a drain.
    supervisor = WorkerSupervisor(
        reactor, count, lambda i: twistd_argv("voiceedge-transceiver", argv_options_for(i), i), env,
        restart_delay=settings.process.restart_delay, stop_signal=signal.SIGINT,
    )
    supervisor.setServiceParent(top)
    drain = SupervisorDrain(supervisor, _stop_reactor)
    DrainOnSigterm(reactor, drain).setServiceParent(top)
    media = {}
    for i in apis:
        worker = worker_settings(settings, i, None, "")
        media[i] = worker.route.address or worker.transceiver.media_listen
    build_front_door(
        settings.signaling, apis, secret, media, settings.route.cluster, settings.transceiver.max_sessions,
        clock, top, relay=None, draining=lambda: drain.draining, more_metrics=[drain.metrics],
    )
    log.info(
        "voiceedge transceiver: {count} workers, media on {media}", count=count,
        media=", ".join(c.format_address(m) for m in media.values()),
    )
    return top


class DrainOnSigterm(service.Service):
    """Makes SIGTERM drain a supervisor's workers (installed once the reactor runs, over twistd's own)."""

    def __init__(self, reactor: Any, drain: SupervisorDrain) -> None:
        self.reactor = reactor
        self.drain = drain

    def startService(self) -> None:
        """Take SIGTERM once the reactor runs."""
        super().startService()
        if hasattr(self.reactor, "callWhenRunning"):
            self.reactor.callWhenRunning(install_sigterm, self.reactor, self.drain)


def _stop_reactor() -> None:
    from twisted.internet import reactor

    try:
        reactor.stop()
    except ReactorNotRunning:
        pass
