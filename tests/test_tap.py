"""The tap modules: options, INI validation at start-up, and the services they build."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
from twisted.application import internet, service
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from voiceedge import tap as allinone_tap
from voiceedge.relay.tap import RelayService
from voiceedge.transceiver import tap as transceiver_tap
from voiceedge.workers import AUTO, ProcessSettings, WorkerSupervisor

REPO = Path(__file__).resolve().parent.parent


def test_allinone_runs_on_embedded_defaults() -> None:
    """``twistd voiceedge`` needs no file: loopback HTTP 8080, UDP 3478, demo page, echo."""
    options = allinone_tap.Options()
    options.parseOptions([])
    settings = options.settings
    assert settings.signaling.listen == "tcp:8080:interface=127.0.0.1"
    assert settings.signaling.demo_page is True
    assert settings.relay.public_listen == ("127.0.0.1", 3478)
    assert settings.transceiver.media_listen == ("127.0.0.1", 0)
    assert settings.agent.name == "echo"
    assert settings.process.workers == AUTO
    if settings.process.count > 1:
        # One worker per core: this process supervises them and serves signaling.
        kinds = [type(s) for s in allinone_tap.makeService(options, MemoryReactorClock())]
        assert WorkerSupervisor in kinds and internet.UDPServer not in kinds
    options.settings = dataclasses.replace(settings, process=ProcessSettings(workers=1))
    top = allinone_tap.makeService(options, MemoryReactorClock())
    assert isinstance(top, service.MultiService)
    kinds = [type(s) for s in top]
    assert internet.UDPServer in kinds
    assert RelayService in kinds
    # The transceiver's socket reads whole datagrams (Twisted's default would cut at 8 KiB).
    (media,) = [s for s in top if isinstance(s, internet.UDPServer)]
    assert media.kwargs["maxPacketSize"] >= 65536
    # The answer's only candidate is the relay.
    transceiver = next(s for s in top if isinstance(s, transceiver_tap.TransceiverService)).transceiver
    assert transceiver.advertised == ("127.0.0.1", 3478)


def test_transceiver_requires_a_config() -> None:
    """The transceiver plugin insists on an INI file."""
    with pytest.raises(usage.UsageError, match="--config"):
        transceiver_tap.Options().parseOptions([])


def test_transceiver_loads_the_shipped_ini() -> None:
    """etc/transceiver.ini is valid."""
    options = transceiver_tap.Options()
    options.parseOptions(["--config", str(REPO / "etc" / "transceiver.ini")])
    assert options.settings.transceiver.max_sessions == 1000


@pytest.mark.parametrize(
    "text, message",
    [
        ("[transceiver]\nmax_sesions = 3\n", r"\[transceiver\] unknown key 'max_sesions'"),
        ("[media]\n", r"unknown section \[media\]"),
        ("[transceiver]\nmedia_listen = nowhere\n", r"\[transceiver\] media_listen"),
        ("[agent]\nname = nobody\n", r"\[agent\] name: no agent named 'nobody'"),
    ],
)
def test_a_bad_ini_stops_start_up_naming_file_section_and_key(tmp_path: Path, text: str, message: str) -> None:
    """Start-up fails with a UsageError that says where the problem is."""
    path = tmp_path / "bad.ini"
    path.write_text(text)
    with pytest.raises(usage.UsageError, match=rf"bad\.ini: .*{message}"):
        transceiver_tap.Options().parseOptions(["--config", str(path)])


def test_local_split_files_agree() -> None:
    """etc/local-split: the relay and transceiver share a key and each other's addresses."""
    from voiceedge.relay import tap as relay_tap

    relay_options = relay_tap.Options()
    relay_options.parseOptions(["--config", str(REPO / "etc" / "local-split" / "relay.ini")])
    transceiver_options = transceiver_tap.Options()
    transceiver_options.parseOptions(["--config", str(REPO / "etc" / "local-split" / "transceiver.ini")])
    relay, transceiver = relay_options.settings, transceiver_options.settings
    assert relay.token.keys == transceiver.route.keys
    assert relay.relay.public_listen == transceiver.transceiver.advertised_address == ("127.0.0.1", 3478)
    assert transceiver.signaling.listen == "tcp:8080:interface=127.0.0.1"
    media = ipaddress.ip_address(transceiver.transceiver.media_listen[0])
    assert any(media in net for net in relay.relay.transceiver_networks)
    internal = ipaddress.ip_address(relay.relay.internal_listen[0])
    assert any(internal in net for net in transceiver.transceiver.relay_networks)
    assert relay.redis.address == ("127.0.0.1", 6379)


def test_shipped_allinone_ini_matches_the_embedded_defaults() -> None:
    """etc/voiceedge.ini loads and says what running with no file does."""
    from_file = allinone_tap.Options()
    from_file.parseOptions(["--config", str(REPO / "etc" / "voiceedge.ini")])
    embedded = allinone_tap.Options()
    embedded.parseOptions([])
    assert from_file.settings == embedded.settings
    assert from_file.agent == embedded.agent


def test_issuing_key_zero_is_used(tmp_path: Path) -> None:
    """issuing_key = 0 is a key id like any other, not 'unset'."""
    import base64

    from voiceedge.transceiver.host import Transceiver
    from voiceedge.wire.route_token import RouteTokenCodec

    secret = base64.b64encode(bytes(32)).decode()
    other = base64.b64encode(bytes(range(32))).decode()
    path = tmp_path / "t.ini"
    path.write_text(
        f"[transceiver]\nmedia_listen = 127.0.0.1:0\n[route]\nkeys = 0:{secret}, 1:{other}\nissuing_key = 0\n"
    )
    options = transceiver_tap.Options()
    options.parseOptions(["--config", str(path)])
    top = service.MultiService()
    settings = options.settings
    transceiver = transceiver_tap.build_transceiver(
        settings.transceiver, settings.route, settings.speech, options.agent, MemoryReactorClock(), top
    )
    assert isinstance(transceiver, Transceiver)
    transceiver_tap_protocol = [s for s in top if isinstance(s, internet.UDPServer)][0].args[1]
    transceiver_tap_protocol.local_address = lambda: ("127.0.0.1", 4000)
    token = transceiver.make_ufrag()
    assert base64.b64decode(token)[1] == 0  # the key id byte
    assert RouteTokenCodec({0: bytes(32)}, 0).decode(token).transceiver == ("127.0.0.1", 4000)


def test_offered_agents_are_loaded_with_their_sections(tmp_path: Path) -> None:
    """[agent] offered names more agents, each validated in its own section; an unknown one stops start-up."""
    from voiceedge.transceiver import tap as transceiver_tap

    ini = tmp_path / "t.ini"
    ini.write_text("[agent]\nname = echo\noffered = parrot, echo\n[agent.echo]\ndelay_ms = 0\n")
    options = transceiver_tap.Options()
    options.parseOptions(["--config", str(ini)])
    assert list(options.agent.offered) == ["parrot"]
    assert options.agent.offered["parrot"].kind.name == "parrot"
    top = service.MultiService()
    settings = options.settings
    transceiver = transceiver_tap.build_transceiver(
        settings.transceiver, settings.route, settings.speech, options.agent, MemoryReactorClock(), top
    )
    assert sorted(transceiver.offered_agents) == ["echo", "parrot"]
    assert transceiver.offered_agents["echo"] is transceiver.agent_factory
    ini.write_text("[agent]\nname = echo\noffered = nobody\n")
    with pytest.raises(usage.UsageError, match=r"\[agent\] offered: no agent named 'nobody'"):
        transceiver_tap.Options().parseOptions(["--config", str(ini)])
