"""Tests for ``twistd voiceedge-relay``: options, INI validation, the service it builds."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any, Iterator

from twisted.application import service
from twisted.application.service import IServiceMaker
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from tests.support import free_tcp_port, free_udp_port
from tests.test_relay_protocol import binding_request
from voiceedge.config import token_keys
from voiceedge.relay.tap import Options, RelayService, makeService
from voiceedge.workers import ParentWatch, WorkerSupervisor
from voiceedge.wire import encap
from voiceedge.wire.route_token import Route, RouteTokenCodec

REPO = Path(__file__).resolve().parent.parent
SECRET_B64 = "Fj+fqFMF8XdTZ0F+RWrNNF6ID/eZ7bX8UP826UB5rR4="


def parse(path: Path | str) -> Options:
    """Parse ``--config path`` as twistd would."""
    options = Options()
    options.parseOptions(["--config", str(path)])
    return options


def write_ini(tmp_path: Path, body: str) -> Path:
    """Write an INI with a valid [token] section plus ``body``."""
    path = tmp_path / "relay.ini"
    if "[process]" not in body:
        body += "[process]\nworkers = 1\n"  # one process unless the test is about workers
    path.write_text(f"[token]\nkeys = 1:{SECRET_B64}\n{body}")
    return path


class RelayOptionsTests(SynchronousTestCase):
    """The relay's options and INI validation: shipped files parse, bad files name file, section and key."""

    def test_shipped_ini_files_parse(self) -> None:
        """etc/relay.ini and etc/local-split/relay.ini are valid and carry the documented defaults."""
        for name in ("etc/relay.ini", "etc/local-split/relay.ini"):
            settings = parse(REPO / name).settings
            self.assertEqual(settings.relay.public_listen, ("127.0.0.1", 3478))
            self.assertEqual(settings.redis.address, ("127.0.0.1", 6379))
            self.assertEqual(settings.http.listen, "tcp:9090:interface=127.0.0.1")
            self.assertEqual(list(settings.token.keys), [1])

    def test_unknown_key_names_file_section_and_key(self) -> None:
        """An unknown key is a UsageError naming the file, the section and the key."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        path = write_ini(tmp_path, "[relay]\nmax_flowz = 10\n")
        with self.assertRaises(usage.UsageError) as e:
            parse(path)
        message = str(e.exception)
        self.assertIn(str(path), message)
        self.assertIn("[relay]", message)
        self.assertIn("max_flowz", message)

    def test_unknown_section(self) -> None:
        """An unknown section is refused by name."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        with self.assertRaises(usage.UsageError) as raised:
            parse(write_ini(tmp_path, "[relays]\n"))
        self.assertRegex(str(raised.exception), r"\[relays\]")

    def assert_bad_value(self, body: str, where: str) -> None:
        """A value that does not parse names its key."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        with self.assertRaises(usage.UsageError) as raised:
            parse(write_ini(tmp_path, body))
        self.assertRegex(str(raised.exception), where)

    def test_bad_values_max_flows_zero(self) -> None:
        """max_flows = 0 is refused by name."""
        self.assert_bad_value("[relay]\nmax_flows = 0\n", "max_flows")

    def test_bad_values_public_listen_hostname(self) -> None:
        """public_listen needs an address, not a host name."""
        self.assert_bad_value("[relay]\npublic_listen = localhost:3478\n", "public_listen")

    def test_bad_values_transceiver_networks_empty(self) -> None:
        """transceiver_networks may not be empty."""
        self.assert_bad_value("[relay]\ntransceiver_networks =\n", "transceiver_networks")

    def test_bad_values_transceiver_networks_bad_prefix(self) -> None:
        """A /33 is no IPv4 network."""
        self.assert_bad_value("[relay]\ntransceiver_networks = 10.0.0.0/33\n", "transceiver_networks")

    def test_bad_values_redis_enabled_not_boolean(self) -> None:
        """[redis] enabled is yes or no."""
        self.assert_bad_value("[redis]\nenabled = perhaps\n", "enabled")

    def test_bad_values_ingress_address_ipv6(self) -> None:
        """ingress_address [::1]:3478 is refused by name."""
        self.assert_bad_value("[relay]\ningress_address = [::1]:3478\n", "ingress_address")

    def test_token_keys_format(self) -> None:
        """keys = <id>:<base64 secret>, ...; short, duplicate or non-base64 secrets are refused."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        secret = bytes(range(32))
        b64 = base64.b64encode(secret).decode()
        self.assertEqual(token_keys(f"1:{b64}, 2:{b64}"), {1: secret, 2: secret})
        self.assertEqual(token_keys(""), {})
        for bad in ("1", f"x:{b64}", f"256:{b64}", "1:AAAA", f"1:{b64}, 1:{b64}", "1:***"):
            with self.assertRaises(ValueError):
                token_keys(bad)
        path = tmp_path / "r.ini"
        path.write_text("[relay]\n")
        with self.assertRaises(usage.UsageError) as raised:
            parse(path)
        self.assertRegex(str(raised.exception), r"\[token\] keys")
        path.write_text(f"[token]\nkeys = 1:{b64}\nissuing_key = 2\n")
        with self.assertRaises(usage.UsageError) as raised:
            parse(path)
        self.assertRegex(str(raised.exception), "issuing_key")

    def test_config_is_required(self) -> None:
        """Without --config the relay does not start."""
        with self.assertRaises(usage.UsageError):
            Options().parseOptions([])


class RelayServiceMakerTests(SynchronousTestCase):
    """What makeService builds (nothing opened): the relay and its listener, or a worker supervisor; the plugin is listed."""

    def test_make_service_returns_multiservice(self) -> None:
        """makeService builds (without opening anything) the relay and its HTTP listener."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        path = tmp_path / "relay.ini"
        path.write_text((REPO / "etc/relay.ini").read_text().replace("workers = auto", "workers = 1"))
        top = makeService(parse(path))
        self.assertIsInstance(top, service.MultiService)
        children = list(top)
        self.assertTrue(any(isinstance(s, RelayService) for s in children))
        self.assertEqual(len(children), 2)
        relay = next(s for s in children if isinstance(s, RelayService)).relay
        self.assertIsNotNone(relay.cache)
        self.assertEqual(relay.ingress, ("127.0.0.1", 3478))

    def test_workers_make_a_supervisor_and_workers_take_their_own_ports(self) -> None:
        """With workers = 2 the service only supervises; worker 1 shares the public port and offsets the others."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        path = write_ini(
            tmp_path,
            "[relay]\npublic_listen = 127.0.0.1:3478\ninternal_listen = 127.0.0.1:4000\n"
            "[http]\nlisten = tcp:9090:interface=127.0.0.1\n[process]\nworkers = 2\n",
        )
        supervisor = list(makeService(parse(path)))
        self.assertEqual([type(s) for s in supervisor], [WorkerSupervisor])
        self.assertEqual(supervisor[0].count, 2)
        self.assertEqual(supervisor[0].argv_for(1)[-4:], ["--config", str(path), "--worker", "1"])
        options = Options()
        options.parseOptions(["--config", str(path), "--worker", "1"])
        worker = list(makeService(options))
        relay_service = next(s for s in worker if isinstance(s, RelayService))
        self.assertEqual(relay_service.public_listen, ("127.0.0.1", 3478))
        self.assertTrue(relay_service.reuse_port)
        self.assertEqual(relay_service.internal_listen, ("127.0.0.1", 4001))
        self.assertTrue(any(isinstance(s, ParentWatch) for s in worker))

    def test_plugin_is_listed(self) -> None:
        """twistd sees voiceedge-relay."""
        names = {p.tapname for p in getPlugins(IServiceMaker)}
        self.assertIn("voiceedge-relay", names)


class RunningRelayServiceTests(TestCase):
    """The relay service started for real on loopback ports."""

    timeout = 30

    @defer.inlineCallbacks
    def test_service_runs_and_serves_metrics(self) -> Iterator[Any]:
        """Started for real: forwards a token-routed check and answers /metrics and /healthz."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        udp_port, http_port = free_udp_port(), free_tcp_port()
        path = write_ini(
            tmp_path,
            f"[relay]\npublic_listen = 127.0.0.1:{udp_port}\n"
            f"[redis]\nenabled = no\n"
            f"[http]\nlisten = tcp:{http_port}:interface=127.0.0.1\n",
        )
        top = makeService(parse(path))
        top.startService()
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sink.bind(("127.0.0.1", 0))
            sink.settimeout(2)
            codec = RouteTokenCodec({1: base64.b64decode(SECRET_B64)}, 1)
            request = binding_request(codec.issue(Route(0, sink.getsockname())))
            client.sendto(request, ("127.0.0.1", udp_port))
            yield deferLater(reactor, 0.05, lambda: None)
            data, _ = sink.recvfrom(65536)
            self.assertEqual(encap.decode(data)[1], request)

            agent = Agent(reactor)
            response: Any = yield agent.request(b"GET", f"http://127.0.0.1:{http_port}/metrics".encode())
            raw: Any = yield readBody(response)
            body = raw.decode()
            self.assertEqual(response.code, 200)
            self.assertIn('voiceedge_relay_flows{state="pending"} 1.0', body)
            self.assertIn('voiceedge_relay_packets_total{direction="to_transceiver"} 1.0', body)
            response = yield agent.request(b"GET", f"http://127.0.0.1:{http_port}/healthz".encode())
            self.assertEqual((yield readBody(response)), b"ok flows=1 redis=disabled\n")
            self.assertEqual(response.headers.getRawHeaders(b"server"), [b"voiceedge"])  # no Twisted version
        finally:
            sink.close()
            client.close()
            yield top.stopService()
