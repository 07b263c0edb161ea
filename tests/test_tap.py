"""The tap modules: options, INI validation at start-up, and the services they build."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from twisted.application import internet, service
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from voiceedge import tap as allinone_tap
from voiceedge.relay.tap import RelayService
from voiceedge.transceiver import tap as transceiver_tap
from voiceedge.transceiver.media_port import MediaServer
from voiceedge.workers import AUTO, ProcessSettings, WorkerSupervisor

REPO = Path(__file__).resolve().parent.parent


class AllInOneTapTests(SynchronousTestCase):
    """``twistd voiceedge``: embedded defaults, the shipped INI, the services it builds."""

    def test_allinone_runs_on_embedded_defaults(self) -> None:
        """``twistd voiceedge`` needs no file: loopback HTTP 8080, UDP 3478, demo page, echo."""
        options = allinone_tap.Options()
        options.parseOptions([])
        settings = options.settings
        self.assertEqual(settings.signaling.listen, "tcp:8080:interface=127.0.0.1")
        self.assertIs(settings.signaling.demo_page, True)
        self.assertEqual(settings.relay.public_listen, ("127.0.0.1", 3478))
        self.assertEqual(settings.transceiver.media_listen, ("127.0.0.1", 0))
        self.assertEqual(settings.agent.name, "echo")
        self.assertEqual(settings.process.workers, AUTO)
        if settings.process.count > 1:
            # One worker per core: this process supervises them and serves signaling.
            kinds = [type(s) for s in allinone_tap.makeService(options, MemoryReactorClock())]
            self.assertIn(WorkerSupervisor, kinds)
            self.assertFalse(any(issubclass(k, internet.UDPServer) for k in kinds))
        options.settings = dataclasses.replace(settings, process=ProcessSettings(workers=1))
        top = allinone_tap.makeService(options, MemoryReactorClock())
        self.assertIsInstance(top, service.MultiService)
        kinds = [type(s) for s in top]
        self.assertIn(MediaServer, kinds)
        self.assertIn(RelayService, kinds)
        # The transceiver's socket reads whole datagrams (Twisted's default would cut at 8 KiB).
        (media,) = [s for s in top if isinstance(s, internet.UDPServer)]
        self.assertGreaterEqual(media.kwargs["maxPacketSize"], 65536)
        # The answer's only candidate is the relay.
        transceiver = next(s for s in top if isinstance(s, transceiver_tap.TransceiverService)).transceiver
        self.assertEqual(transceiver.advertised, ("127.0.0.1", 3478))

    def test_shipped_allinone_ini_matches_the_embedded_defaults(self) -> None:
        """etc/voiceedge.ini loads and says what running with no file does."""
        from_file = allinone_tap.Options()
        from_file.parseOptions(["--config", str(REPO / "etc" / "voiceedge.ini")])
        embedded = allinone_tap.Options()
        embedded.parseOptions([])
        self.assertEqual(from_file.settings, embedded.settings)
        self.assertEqual(from_file.agent, embedded.agent)


class TransceiverTapTests(SynchronousTestCase):
    """``twistd voiceedge-transceiver``: the INI it requires, what a bad one says, the transceiver it builds."""

    def test_transceiver_requires_a_config(self) -> None:
        """The transceiver plugin insists on an INI file."""
        with self.assertRaises(usage.UsageError) as raised:
            transceiver_tap.Options().parseOptions([])
        self.assertRegex(str(raised.exception), "--config")

    def test_transceiver_loads_the_shipped_ini(self) -> None:
        """etc/transceiver.ini is valid."""
        options = transceiver_tap.Options()
        options.parseOptions(["--config", str(REPO / "etc" / "transceiver.ini")])
        self.assertEqual(options.settings.transceiver.max_sessions, 1000)

    def assert_bad_ini_refused(self, text: str, message: str) -> None:
        """Start-up fails with a UsageError that says where the problem is."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        path = tmp_path / "bad.ini"
        path.write_text(text)
        with self.assertRaises(usage.UsageError) as raised:
            transceiver_tap.Options().parseOptions(["--config", str(path)])
        self.assertRegex(str(raised.exception), rf"bad\.ini: .*{message}")

    def test_a_bad_ini_stops_start_up_naming_file_section_and_key_unknown_key(self) -> None:
        """A misspelt key is named with its section."""
        self.assert_bad_ini_refused("[transceiver]\nmax_sesions = 3\n", r"\[transceiver\] unknown key 'max_sesions'")

    def test_a_bad_ini_stops_start_up_naming_file_section_and_key_unknown_section(self) -> None:
        """An unknown section is named."""
        self.assert_bad_ini_refused("[media]\n", r"unknown section \[media\]")

    def test_a_bad_ini_stops_start_up_naming_file_section_and_key_bad_address(self) -> None:
        """An address that does not parse is named with its section."""
        self.assert_bad_ini_refused("[transceiver]\nmedia_listen = nowhere\n", r"\[transceiver\] media_listen")

    def test_a_bad_ini_stops_start_up_naming_file_section_and_key_unknown_agent(self) -> None:
        """An agent nobody registered is named."""
        self.assert_bad_ini_refused("[agent]\nname = nobody\n", r"\[agent\] name: no agent named 'nobody'")

    def test_local_split_files_agree(self) -> None:
        """etc/local-split: the relay and transceiver share a key and each other's addresses."""
        from voiceedge.relay import tap as relay_tap

        relay_options = relay_tap.Options()
        relay_options.parseOptions(["--config", str(REPO / "etc" / "local-split" / "relay.ini")])
        transceiver_options = transceiver_tap.Options()
        transceiver_options.parseOptions(["--config", str(REPO / "etc" / "local-split" / "transceiver.ini")])
        relay, transceiver = relay_options.settings, transceiver_options.settings
        self.assertEqual(relay.token.keys, transceiver.route.keys)
        self.assertTrue(relay.relay.public_listen == transceiver.transceiver.advertised_address == ("127.0.0.1", 3478))
        self.assertEqual(transceiver.signaling.listen, "tcp:8080:interface=127.0.0.1")
        media = ipaddress.ip_address(transceiver.transceiver.media_listen[0])
        self.assertTrue(any(media in net for net in relay.relay.transceiver_networks))
        internal = ipaddress.ip_address(relay.relay.internal_listen[0])
        self.assertTrue(any(internal in net for net in transceiver.transceiver.relay_networks))
        self.assertEqual(relay.redis.address, ("127.0.0.1", 6379))

    def test_issuing_key_zero_is_used(self) -> None:
        """issuing_key = 0 is a key id like any other, not 'unset'."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
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
        self.assertIsInstance(transceiver, Transceiver)
        transceiver_tap_protocol = [s for s in top if isinstance(s, internet.UDPServer)][0].args[1]
        transceiver_tap_protocol.local_address = lambda: ("127.0.0.1", 4000)
        token = transceiver.make_ufrag()
        self.assertEqual(base64.b64decode(token)[1], 0)  # the key id byte
        self.assertEqual(RouteTokenCodec({0: bytes(32)}, 0).decode(token).transceiver, ("127.0.0.1", 4000))

    def test_offered_agents_are_loaded_with_their_sections(self) -> None:
        """[agent] offered names more agents, each validated in its own section; an unknown one stops start-up."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        from voiceedge.transceiver import tap as transceiver_tap

        ini = tmp_path / "t.ini"
        ini.write_text("[agent]\nname = echo\noffered = parrot, echo\n[agent.echo]\ndelay_ms = 0\n")
        options = transceiver_tap.Options()
        options.parseOptions(["--config", str(ini)])
        self.assertEqual(list(options.agent.offered), ["parrot"])
        self.assertEqual(options.agent.offered["parrot"].kind.name, "parrot")
        top = service.MultiService()
        settings = options.settings
        transceiver = transceiver_tap.build_transceiver(
            settings.transceiver, settings.route, settings.speech, options.agent, MemoryReactorClock(), top
        )
        self.assertEqual(sorted(transceiver.offered_agents), ["echo", "parrot"])
        self.assertIs(transceiver.offered_agents["echo"], transceiver.agent_factory)
        ini.write_text("[agent]\nname = echo\noffered = nobody\n")
        with self.assertRaises(usage.UsageError) as raised:
            transceiver_tap.Options().parseOptions(["--config", str(ini)])
        self.assertRegex(str(raised.exception), r"\[agent\] offered: no agent named 'nobody'")
