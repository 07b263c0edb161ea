# -*- test-case-name: tests.test_tap -*-
"""``twistd voiceedge``: relay, transceiver, signaling and agent in one process."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass

from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from voiceedge import config as c
from voiceedge.config import SettingError, section
from voiceedge.reactors import service_reactors
from voiceedge.relay import tap as relay_tap
from voiceedge.relay.settings import RedisSettings, RelaySettings, TokenSettings
from voiceedge.signaling.settings import SignalingSettings
from voiceedge.transceiver import tap as transceiver_tap
from voiceedge.transceiver.settings import (
    AgentSettings,
    RouteSettings,
    SpeechSettings,
    TransceiverSettings,
)

__all__ = ["AllInOneSettings", "Options", "makeService"]


@dataclass(frozen=True, slots=True)
class AllInOneSettings:
    """Everything ``twistd voiceedge`` reads from its INI file (less the agent's options).

    Its defaults put everything on loopback: signaling and the demo page on
    http://127.0.0.1:8080, the relay on UDP 127.0.0.1:3478, the transceiver
    behind it on a free internal port. The fleet key is made in memory.
    """

    signaling: SignalingSettings = section(SignalingSettings, demo_page="yes")
    relay: RelaySettings = section(RelaySettings)
    transceiver: TransceiverSettings = section(
        TransceiverSettings, media_listen="127.0.0.1:0", relay_networks="127.0.0.0/8"
    )
    speech: SpeechSettings = section(SpeechSettings)
    agent: AgentSettings = section(AgentSettings)

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
    ]

    def postOptions(self) -> None:
        """Load and validate the INI file (or the defaults) now, so a bad one stops start-up."""
        try:
            self.settings, self.agent = transceiver_tap.load_with_agent(AllInOneSettings, self["config"])
        except c.ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """A relay on the public port and a transceiver behind it, as a fleet of one."""
    clock, udp_reactor = service_reactors(clock)
    settings: AllInOneSettings = config.settings
    relay_settings = settings.relay
    # A fleet key that lives only in this process: relay and transceiver share it.
    keys = {1: os.urandom(32)}
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

    top = service.MultiService()
    relay_tap.RelayService(
        relay, relay_settings.public_listen, relay_settings.internal_listen, udp_reactor
    ).setServiceParent(top)
    transceiver = transceiver_tap.build_transceiver(
        transceiver_settings, route, settings.speech, config.agent, clock, top
    )
    transceiver_tap.build_signaling(settings.signaling, transceiver, top, [relay.metrics], clock)
    return top

