# -*- test-case-name: tests.test_tap -*-
"""``twistd voiceedge-transceiver``: options and the service it runs."""

from __future__ import annotations

import configparser
from typing import Any, Callable, Iterable, Sequence

from twisted.application import internet, service, strports
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from voiceedge import config as c
from voiceedge.reactors import service_reactors
from voiceedge.agents.interfaces import IAgentType
from voiceedge.agents.plugin import agent_type
from voiceedge.metrics import MetricsResource, Sample, make_registry
from voiceedge.signaling.resource import build_site
from voiceedge.transceiver.audio import SpeechSettings
from voiceedge.transceiver.dtls import DtlsCertificate
from voiceedge.transceiver.host import Transceiver
from voiceedge.transceiver.protocol import SharedSocketProtocol
from voiceedge.wire.route_token import Route, RouteTokenCodec

SCHEMA: c.Schema = {
    "signaling": {
        "listen": c.Key(c.nonempty, "tcp:8080:interface=127.0.0.1", "Twisted endpoint for HTTP signaling"),
        "demo_page": c.Key(c.boolean, "no", "serve the demo page at /"),
        "max_body_bytes": c.Key(c.integer(1024, 1 << 20), "65536", "largest SDP offer accepted"),
        "cors_origins": c.Key(c.words, "", "origins allowed to call the API from a browser"),
    },
    "transceiver": {
        "media_listen": c.Key(c.address, "127.0.0.1:3478", "UDP address of the shared media socket"),
        "advertised_address": c.Key(
            c.optional_address, "", "the candidate put in answers (default: media_listen)"
        ),
        "max_sessions": c.Key(c.integer(1, 1_000_000), "1000", "sessions beyond this get 503"),
        "setup_timeout": c.Key(c.seconds(1, 300), "15", "seconds for ICE and DTLS to complete"),
        "consent_timeout": c.Key(c.seconds(5, 300), "30", "RFC 7675 consent lifetime"),
        "relay_networks": c.Key(
            c.networks, "", "networks whose relays may send encapsulated client packets"
        ),
    },
    "route": {
        "keys": c.Key(c.token_keys, "", "fleet route-token keys <id>:<base64>; empty: random ufrags"),
        "issuing_key": c.Key(c.optional_integer(0, 255), "", "key id new tokens use (default: highest)"),
        "cluster": c.Key(c.integer(0, 65535), "0", "this transceiver's cluster id"),
        "address": c.Key(
            c.optional_address, "", "where relays reach this transceiver (default: media_listen)"
        ),
    },
    "speech": {
        "threshold_db": c.Key(c.number(3, 60), "12", "dB above the noise floor that counts as voice"),
        "min_speech_ms": c.Key(c.integer(20, 2000), "40", "voice this long starts speech (and barge-in)"),
        "silence_ms": c.Key(c.integer(100, 10000), "500", "silence this long stops speech"),
        "barge_in": c.Key(c.boolean, "yes", "clear queued agent audio when the caller starts speaking"),
    },
    "agent": {
        "name": c.Key(c.nonempty, "echo", "the agent behind every session (an installed agent plugin)"),
    },
}


def _agent_name(path: str | None, text: str | None) -> str:
    """The [agent] name a file chooses, read before the full schema is known."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        if path is not None:
            parser.read(path, encoding="utf-8")
        elif text is not None:
            parser.read_string(text)
    except (configparser.Error, UnicodeDecodeError):
        pass  # load_config reports it properly
    return parser.get("agent", "name", fallback="echo").strip()


def load(path: str | None, text: str | None, schema: c.Schema) -> tuple[c.Config, IAgentType]:
    """Validate a file against ``schema`` plus the chosen agent's ``[agent.<name>]`` section."""
    source = path or "<embedded defaults>"
    name = _agent_name(path, text)
    try:
        kind = agent_type(name)
    except ValueError as e:
        raise c.ConfigError(f"{source}: [agent] name: {e}") from None
    full = dict(schema)
    full[f"agent.{name}"] = kind.options
    return c.load_config(full, path, text), kind


class Options(usage.Options):
    """Options of ``twistd voiceedge-transceiver``."""

    optParameters = [
        ["config", "c", None, "INI file (see etc/transceiver.ini)"],
    ]
    config_required = True
    schema = SCHEMA
    defaults_text: str | None = None

    def postOptions(self) -> None:
        """Load and validate the INI file now, so a bad one stops start-up."""
        path = self["config"]
        if path is None and self.config_required:
            raise usage.UsageError("--config is required")
        try:
            self.loaded, self.agent_type = load(path, self.defaults_text, self.schema)
            route = self.loaded["route"] if "route" in self.loaded.sections() else {"keys": {}}
            if route["keys"] and route["issuing_key"] is not None and route["issuing_key"] not in route["keys"]:
                raise c.ConfigError(
                    f"{self.loaded.source}: [route] issuing_key = {route['issuing_key']}:"
                    " not among the keys"
                )
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


def build_transceiver(
    conf: c.Config, kind: IAgentType, clock: IReactorTime, parent: service.MultiService
) -> Transceiver:
    """A transceiver from ``conf``, its UDP socket and timers added to ``parent``."""
    section = conf["transceiver"]
    speech = conf["speech"]
    name = conf["agent"]["name"]
    media_host, media_port = section["media_listen"]
    transceiver = Transceiver(
        clock,
        DtlsCertificate.generate(),
        section["advertised_address"] or section["media_listen"],
        kind.make_factory(conf[f"agent.{name}"], clock),
        max_sessions=section["max_sessions"],
        setup_timeout=section["setup_timeout"],
        consent_timeout=section["consent_timeout"],
        relay_networks=section["relay_networks"],
        speech=SpeechSettings(
            threshold_db=speech["threshold_db"],
            min_speech_ms=speech["min_speech_ms"],
            silence_ms=speech["silence_ms"],
            barge_in=speech["barge_in"],
        ),
    )
    protocol = SharedSocketProtocol(transceiver)
    route = conf["route"]
    if route["keys"]:
        issuing = route["issuing_key"]
        codec = RouteTokenCodec(route["keys"], max(route["keys"]) if issuing is None else issuing)
        cluster = route["cluster"]
        configured = route["address"]

        def make_ufrag() -> str:
            # The route names the address relays reach us on: configured, or
            # the socket's own once bound (port 0 picks a free one).
            return codec.issue(Route(cluster, configured or protocol.local_address()))

        transceiver.make_ufrag = make_ufrag
    udp = internet.UDPServer(media_port, protocol, interface=media_host)
    udp.setServiceParent(parent)
    TransceiverService(transceiver).setServiceParent(parent)
    return transceiver


def build_signaling(
    conf: c.Config,
    transceiver: Transceiver,
    parent: service.MultiService,
    more_metrics: Sequence[Callable[[], Iterable[Sample]]] = (),
) -> None:
    """HTTP signaling for ``transceiver``, with its metrics, added to ``parent``."""
    section = conf["signaling"]
    registry = make_registry(transceiver.metrics, *more_metrics)
    site = build_site(
        transceiver,
        max_body_bytes=section["max_body_bytes"],
        demo_page=section["demo_page"],
        cors_origins=section["cors_origins"],
        extra={b"metrics": MetricsResource(registry)},
    )
    strports.service(section["listen"], site).setServiceParent(parent)


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """The transceiver: its media socket, its timers and its HTTP signaling."""
    clock, _ = service_reactors(clock)
    top = service.MultiService()
    transceiver = build_transceiver(config.loaded, config.agent_type, clock, top)
    build_signaling(config.loaded, transceiver, top)
    return top
