# -*- test-case-name: tests.test_tap -*-
"""``twistd voiceedge``: relay, transceiver, signaling and agent in one process, or in one worker per core.

With ``[process] workers`` above one, the process ``twistd`` starts serves
signaling only (``/readyz`` says how many workers serve), as the front door of its workers
(:mod:`voiceedge.fleet.local`); each worker (``--worker <i>``) is a relay
sharing the public port (``SO_REUSEPORT``) and a transceiver with its own
media socket, its own id in the route tokens it issues, and an internal API on
loopback. The fleet key and the internal API's secret are made in memory by
the supervisor and given to its workers in their environment. Where
``bpf()`` allows it (``[relay] steer_by_owner``), the supervisor also loads
the program that steers each client's datagrams to the worker owning its
call (:mod:`voiceedge.relay.reuseport`), and its workers inherit it.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import secrets
from dataclasses import dataclass

from typing import Any, Callable

from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from voiceedge import config as c
from voiceedge.config import SettingError, section, setting
from voiceedge.fleet.local import INTERNAL_SECRET_ENV
from voiceedge.reactors import service_reactors
from voiceedge.relay import tap as relay_tap
from voiceedge.relay.bpf import BpfError
from voiceedge.relay.core import Relay, Steering
from voiceedge.relay.flows import Address
from voiceedge.relay.reuseport import STEERING_ENV, OwnerSteering
from voiceedge.relay.settings import RedisSettings, RelaySettings, TokenSettings
from voiceedge.wire.route_token import RouteTokenCodec
from voiceedge.signaling.settings import SignalingSettings
from voiceedge.transceiver import tap as transceiver_tap
from voiceedge.transceiver.settings import (
    AgentSettings,
    RouteSettings,
    SpeechSettings,
    TransceiverSettings,
)
from voiceedge.workers import ParentWatch, ProcessSettings, WorkerSupervisor, offset_port, twistd_argv

#: Where a worker finds the fleet key its supervisor made (the internal API's secret: INTERNAL_SECRET_ENV).
FLEET_KEY_ENV = "VOICEEDGE_WORKER_FLEET_KEY"

__all__ = ["AllInOneRelaySettings", "AllInOneSettings", "Options", "WorkerSteering", "makeService"]

log = Logger()


@dataclass(frozen=True, slots=True)
class AllInOneRelaySettings(RelaySettings):
    """``[relay]`` of the all-in-one: the relay's settings, and whether its workers steer by owner."""

    steer_by_owner: str = setting(
        c.word("auto", "yes", "no"), "auto",
        "with workers, send each client's datagrams to the worker whose transceiver holds its call"
        " (an SO_REUSEPORT eBPF program, Linux): auto (where bpf() is allowed), yes (start-up fails"
        " where it is not), no",
    )


@dataclass(frozen=True, slots=True)
class AllInOneSettings:
    """Everything ``twistd voiceedge`` reads from its INI file (less the agent's options).

    Its defaults put everything on loopback: signaling and the demo page on
    http://127.0.0.1:8080, the relay on UDP 127.0.0.1:3478, the transceiver
    behind it on a free internal port. The fleet key is made in memory.
    """

    signaling: SignalingSettings = section(SignalingSettings, demo_page="yes")
    relay: AllInOneRelaySettings = section(AllInOneRelaySettings)
    transceiver: TransceiverSettings = section(
        TransceiverSettings, media_listen="127.0.0.1:0", relay_networks="127.0.0.0/8"
    )
    speech: SpeechSettings = section(SpeechSettings)
    agent: AgentSettings = section(AgentSettings)
    process: ProcessSettings = section(ProcessSettings)

    def __post_init__(self) -> None:
        # The relay and the transceiver talk over the internal network: each
        # must accept the other's address.
        media = ipaddress.ip_address(self.transceiver.media_listen[0])
        if not any(media in net for net in self.relay.transceiver_networks):
            raise SettingError(
                "transceiver_networks", "must include [transceiver] media_listen", section="relay"
            )
        internal = ipaddress.ip_address(self.relay.internal_listen[0])
        if not any(internal in net for net in self.transceiver.relay_networks):
            raise SettingError(
                "relay_networks", "must include [relay] internal_listen", section="transceiver"
            )


class Options(usage.Options):
    """Options of ``twistd voiceedge``: ``--config`` is optional here."""

    optParameters = [
        ["config", "c", None, "INI file (default: the embedded all-in-one settings)"],
        ["worker", None, None, "(set by the supervisor) run as worker N of [process] workers"],
        ["internal", None, None, "(set by the supervisor) host:port of the worker's internal API"],
    ]

    def postOptions(self) -> None:
        """Load and validate the INI file (or the defaults) now, so a bad one stops start-up."""
        try:
            self.settings, self.agent = transceiver_tap.load_with_agent(AllInOneSettings, self["config"])
        except c.ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """A relay on the public port and a transceiver behind it, as a fleet of one (or of one worker per core)."""
    clock, udp_reactor = service_reactors(clock)
    settings: AllInOneSettings = config.settings
    worker = config["worker"]
    count = settings.process.count
    if count > 1 and worker is None:
        return _supervisor(config, settings, count, clock, udp_reactor)
    index = int(worker) if worker is not None else 0
    relay_settings = settings.relay
    if worker is None:
        # A fleet key that lives only in this process: relay and transceiver share it.
        keys = {1: os.urandom(32)}
    else:
        keys = {1: base64.b64decode(os.environ[FLEET_KEY_ENV])}
        relay_settings = dataclasses.replace(
            relay_settings, internal_listen=offset_port(relay_settings.internal_listen, index)
        )
    relay = relay_tap.build_relay(
        relay_settings, TokenSettings(keys=keys, issuing_key=1), RedisSettings(enabled=False), clock
    )
    route = RouteSettings(keys=keys, issuing_key=1, cluster=relay_settings.cluster)
    transceiver_settings = settings.transceiver
    if transceiver_settings.advertised_address is None:
        # Clients see only the relay.
        transceiver_settings = dataclasses.replace(
            transceiver_settings, advertised_address=relay_settings.ingress
        )
    if worker is not None:
        transceiver_settings = dataclasses.replace(
            transceiver_settings, media_listen=offset_port(transceiver_settings.media_listen, index)
        )

    top = service.MultiService()
    relay_service = relay_tap.RelayService(
        relay, relay_settings.public_listen, relay_settings.internal_listen, udp_reactor,
        reuse_port=worker is not None, poll_interval=relay_settings.poll_ms / 1000,
    )
    relay_service.setServiceParent(top)
    transceiver = transceiver_tap.build_transceiver(
        transceiver_settings, route, settings.speech, config.agent, clock, top
    )
    if worker is not None:
        # The address this worker's transceiver puts in its route tokens, read back from one.
        codec = RouteTokenCodec(keys, 1)

        def own_hop() -> Address:
            return codec.decode(transceiver.make_ufrag()).transceiver

        WorkerSteering(relay, relay_service, own_hop, index, os.environ.get(STEERING_ENV, "")).setServiceParent(top)
    if worker is None:
        transceiver_tap.build_signaling(settings.signaling, transceiver, top, [relay.metrics], clock)
        return top
    # A worker: its supervisor places calls on it through the internal API.
    from voiceedge.fleet.membership import build_membership
    from voiceedge.fleet.settings import DrainSettings, InternalApiSettings, RegistrySettings
    from voiceedge.redis_connection import RedisConnectionSettings

    host, port = c.address(config["internal"])
    internal = InternalApiSettings(listen=f"tcp:{port}:interface={host}", secret=os.environ[INTERNAL_SECRET_ENV])
    build_membership(
        transceiver,
        lambda: relay_settings.ingress,
        relay_settings.cluster,
        internal,
        RegistrySettings(enabled=False),
        RedisConnectionSettings(),
        DrainSettings(grace_period=0),  # the supervisor stopping ends this worker's calls
        clock,
        top,
        more_metrics=[relay.metrics],
    )
    ParentWatch(clock, _stop_reactor).setServiceParent(top)
    return top


def _supervisor(
    config: Options, settings: AllInOneSettings, count: int, clock: IReactorTime, reactor: object
) -> service.MultiService:
    """Signaling as the front door of ``count`` workers, and the workers themselves."""
    from voiceedge.fleet.local import build_front_door, loopback_apis

    secret = secrets.token_urlsafe(32)
    env = dict(os.environ)
    env[FLEET_KEY_ENV] = base64.b64encode(os.urandom(32)).decode("ascii")
    env[INTERNAL_SECRET_ENV] = secret
    apis = loopback_apis(count)
    options = [] if config["config"] is None else ["--config", str(config["config"])]

    def argv(i: int) -> list[str]:
        return twistd_argv("voiceedge", [*options, "--internal", f"{apis[i][0]}:{apis[i][1]}"], i)

    steering, why = _steering(settings.relay, count)
    inherit: dict[int, int] = {}
    if steering is None:
        env[STEERING_ENV] = f"off: {why}"
    else:
        inherit, env[STEERING_ENV] = steering.inheritable()
    top = service.MultiService()
    WorkerSupervisor(
        reactor, count, argv, env, restart_delay=settings.process.restart_delay, inherit=inherit
    ).setServiceParent(top)
    relay = settings.relay.ingress
    # Clients reach every worker through the one relay address, the only candidate in answers.
    build_front_door(
        settings.signaling, apis, secret, {i: relay for i in apis}, settings.relay.cluster,
        settings.transceiver.max_sessions, clock, top, relay=relay,
    )
    return top


def _steering(settings: AllInOneRelaySettings, count: int) -> tuple[OwnerSteering | None, str]:
    """The program and maps for ``count`` workers, or None and why not (logged; an error with ``yes``)."""
    if settings.steer_by_owner == "no":
        return None, "[relay] steer_by_owner = no"
    try:
        # Each worker's flow table is bounded by max_flows; the map holds every worker's clients.
        steering = OwnerSteering.create(count, min(settings.max_flows * count, 1 << 24))
    except BpfError as e:
        why = f"bpf() refused it: {e.strerror or e}"
        if settings.steer_by_owner == "yes":
            raise c.ConfigError(f"[relay] steer_by_owner = yes, but {why}") from None
        log.warn("relay: packets are not steered to the worker owning their call ({why});"
                 " each worker takes the clients the kernel's hash gives it", why=why)
        return None, why
    log.info("relay: each client's packets are steered to the worker owning its call (SO_REUSEPORT eBPF)")
    return steering, ""


class WorkerSteering(service.Service):
    """Worker ``index`` of the all-in-one: its relay knows its own transceiver, and steers if it inherited steering.

    ``description`` is :data:`~voiceedge.relay.reuseport.STEERING_ENV`'s
    value. On start (after the relay's public socket is bound) the worker
    removes the entries naming its index (its predecessor's calls died with
    it), puts its socket in the program's sockarray, attaches the program to
    the port's group and publishes its transceiver's address; on stop it
    removes its flows' entries and its address. A step that fails leaves
    steering off in this worker (logged; its packets go by the hash).
    """

    def __init__(
        self,
        relay: Relay,
        relay_service: relay_tap.RelayService,
        own_hop: Callable[[], Address],
        index: int,
        description: str,
    ) -> None:
        self.relay = relay
        self.relay_service = relay_service
        self.own_hop = own_hop
        self.index = index
        self.description = description
        self.steering: OwnerSteering | None = None

    def startService(self) -> None:
        """Join the steering group (or only learn the own transceiver's address)."""
        super().startService()
        own = self.own_hop()
        steering: Steering | None = None
        if self.description and not self.description.startswith("off"):
            port = self.relay_service.public_port
            try:
                inherited = OwnerSteering.inherited(self.description)
                assert port is not None
                inherited.purge(self.index)
                inherited.join(self.index, port.socket)
                inherited.publish(self.index, own)
            except (OSError, ValueError) as e:
                log.error("relay worker {index}: steering off: {e}", index=self.index, e=e)
            else:
                self.steering = steering = inherited
        self.relay.use_steering(steering, self.index, own)

    def stopService(self) -> Any:
        """Leave: this worker's entries and address go, its clients fall to the hash."""
        super().stopService()
        if self.steering is not None:
            self.relay.release_steering()
            try:
                self.steering.publish(self.index, None)
            except OSError:
                pass
        return None


def _stop_reactor() -> None:
    from twisted.internet import reactor

    reactor.stop()
