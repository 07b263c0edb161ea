# -*- test-case-name: tests.test_tap -*-
"""``twistd voiceedge``: relay, transceiver, signaling and agent in one process."""

from __future__ import annotations

import base64
import ipaddress
import os

from twisted.application import service
from twisted.internet.interfaces import IReactorTime

from voiceedge import config as c
from voiceedge.reactors import service_reactors
from voiceedge.relay import tap as relay_tap
from voiceedge.transceiver import tap as transceiver_tap

# Everything on loopback: signaling and the demo page on http://127.0.0.1:8080,
# the relay on UDP 127.0.0.1:3478, the transceiver on a free internal port, echo.
EMBEDDED_DEFAULTS = """
[signaling]
listen = tcp:8080:interface=127.0.0.1
demo_page = yes
"""

# The transceiver's sections, less [route] (the all-in-one makes its own fleet
# key), plus the relay's public address.
SCHEMA: c.Schema = {
    **{name: keys for name, keys in transceiver_tap.SCHEMA.items() if name != "route"},
    "transceiver": {
        **transceiver_tap.SCHEMA["transceiver"],
        "media_listen": c.Key(c.address, "127.0.0.1:0", "the transceiver's internal UDP socket"),
        "advertised_address": c.Key(
            c.optional_address, "", "the candidate put in answers (default: the relay's public_listen)"
        ),
        "relay_networks": c.Key(c.networks, "127.0.0.0/8", "where the relay's internal socket is"),
    },
    "relay": {
        "public_listen": c.Key(c.address, "127.0.0.1:3478", "the one public UDP address clients send to"),
        "max_flows": relay_tap.SCHEMA["relay"]["max_flows"],
    },
}


class Options(transceiver_tap.Options):
    """Options of ``twistd voiceedge``: ``--config`` is optional here."""

    optParameters = [
        ["config", "c", None, "INI file (default: the embedded all-in-one settings)"],
    ]
    config_required = False
    schema = SCHEMA
    defaults_text = EMBEDDED_DEFAULTS


def makeService(config: Options, clock: IReactorTime | None = None) -> service.MultiService:
    """A relay on the public port and a transceiver behind it, as a fleet of one."""
    clock, udp_reactor = service_reactors(clock)
    conf = config.loaded
    public = conf["relay"]["public_listen"]
    # A fleet key that lives only in this process: relay and transceiver share it.
    secret = base64.b64encode(os.urandom(32)).decode("ascii")
    internal_host = conf["transceiver"]["media_listen"][0]
    relay_conf = c.load_config(
        relay_tap.SCHEMA,
        text=(
            f"[relay]\npublic_listen = {_ini_address(public)}\n"
            f"internal_listen = {_ini_address((internal_host, 0))}\n"
            f"transceiver_networks = {ipaddress.ip_network(internal_host)}\n"
            f"max_flows = {conf['relay']['max_flows']}\n"
            f"[token]\nkeys = 1:{secret}\n[redis]\nenabled = no\n"
        ),
    )
    relay = relay_tap.build_relay(relay_conf, clock)
    conf["route"] = {"keys": c.token_keys(f"1:{secret}"), "issuing_key": 1, "cluster": 0, "address": None}
    if conf["transceiver"]["advertised_address"] is None:
        conf["transceiver"]["advertised_address"] = public

    top = service.MultiService()
    relay_tap.RelayService(relay, public, (internal_host, 0), udp_reactor).setServiceParent(top)
    transceiver = transceiver_tap.build_transceiver(conf, config.agent_type, clock, top)
    transceiver_tap.build_signaling(conf, transceiver, top, [relay.metrics])
    return top


def _ini_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
