"""Tests for ``twistd voiceedge-relay``: options, INI validation, the service it builds."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.application import service
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.plugin import getPlugins
from twisted.python import usage
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


def test_shipped_ini_files_parse() -> None:
    """etc/relay.ini and etc/local-split/relay.ini are valid and carry the documented defaults."""
    for name in ("etc/relay.ini", "etc/local-split/relay.ini"):
        settings = parse(REPO / name).settings
        assert settings.relay.public_listen == ("127.0.0.1", 3478)
        assert settings.redis.address == ("127.0.0.1", 6379)
        assert settings.http.listen == "tcp:9090:interface=127.0.0.1"
        assert list(settings.token.keys) == [1]


def test_unknown_key_names_file_section_and_key(tmp_path: Path) -> None:
    """An unknown key is a UsageError naming the file, the section and the key."""
    path = write_ini(tmp_path, "[relay]\nmax_flowz = 10\n")
    with pytest.raises(usage.UsageError) as e:
        parse(path)
    message = str(e.value)
    assert str(path) in message and "[relay]" in message and "max_flowz" in message


def test_unknown_section(tmp_path: Path) -> None:
    """An unknown section is refused by name."""
    with pytest.raises(usage.UsageError, match=r"\[relays\]"):
        parse(write_ini(tmp_path, "[relays]\n"))


@pytest.mark.parametrize(
    "body, where",
    [
        ("[relay]\nmax_flows = 0\n", "max_flows"),
        ("[relay]\npublic_listen = localhost:3478\n", "public_listen"),
        ("[relay]\ntransceiver_networks =\n", "transceiver_networks"),
        ("[relay]\ntransceiver_networks = 10.0.0.0/33\n", "transceiver_networks"),
        ("[redis]\nenabled = perhaps\n", "enabled"),
        ("[relay]\ningress_address = [::1]:3478\n", "ingress_address"),
    ],
)
def test_bad_values(tmp_path: Path, body: str, where: str) -> None:
    """A value that does not parse names its key."""
    with pytest.raises(usage.UsageError, match=where):
        parse(write_ini(tmp_path, body))


def test_token_keys_format(tmp_path: Path) -> None:
    """keys = <id>:<base64 secret>, ...; short, duplicate or non-base64 secrets are refused."""
    secret = bytes(range(32))
    b64 = base64.b64encode(secret).decode()
    assert token_keys(f"1:{b64}, 2:{b64}") == {1: secret, 2: secret}
    assert token_keys("") == {}
    for bad in ("1", f"x:{b64}", f"256:{b64}", "1:AAAA", f"1:{b64}, 1:{b64}", "1:***"):
        with pytest.raises(ValueError):
            token_keys(bad)
    path = tmp_path / "r.ini"
    path.write_text("[relay]\n")
    with pytest.raises(usage.UsageError, match=r"\[token\] keys"):
        parse(path)
    path.write_text(f"[token]\nkeys = 1:{b64}\nissuing_key = 2\n")
    with pytest.raises(usage.UsageError, match="issuing_key"):
        parse(path)


def test_config_is_required() -> None:
    """Without --config the relay does not start."""
    with pytest.raises(usage.UsageError):
        Options().parseOptions([])


def test_make_service_returns_multiservice(tmp_path: Path) -> None:
    """makeService builds (without opening anything) the relay and its HTTP listener."""
    path = tmp_path / "relay.ini"
    path.write_text((REPO / "etc/relay.ini").read_text().replace("workers = auto", "workers = 1"))
    top = makeService(parse(path))
    assert isinstance(top, service.MultiService)
    children = list(top)
    assert any(isinstance(s, RelayService) for s in children)
    assert len(children) == 2
    relay = next(s for s in children if isinstance(s, RelayService)).relay
    assert relay.cache is not None and relay.ingress == ("127.0.0.1", 3478)


def test_workers_make_a_supervisor_and_workers_take_their_own_ports(tmp_path: Path) -> None:
    """With workers = 2 the service only supervises; worker 1 shares the public port and offsets the others."""
    path = write_ini(
        tmp_path,
        "[relay]\npublic_listen = 127.0.0.1:3478\ninternal_listen = 127.0.0.1:4000\n"
        "[http]\nlisten = tcp:9090:interface=127.0.0.1\n[process]\nworkers = 2\n",
    )
    supervisor = list(makeService(parse(path)))
    assert [type(s) for s in supervisor] == [WorkerSupervisor]
    assert supervisor[0].count == 2
    assert supervisor[0].argv_for(1)[-4:] == ["--config", str(path), "--worker", "1"]
    options = Options()
    options.parseOptions(["--config", str(path), "--worker", "1"])
    worker = list(makeService(options))
    relay_service = next(s for s in worker if isinstance(s, RelayService))
    assert relay_service.public_listen == ("127.0.0.1", 3478) and relay_service.reuse_port
    assert relay_service.internal_listen == ("127.0.0.1", 4001)
    assert any(isinstance(s, ParentWatch) for s in worker)


def test_plugin_is_listed() -> None:
    """twistd sees voiceedge-relay."""
    names = {p.tapname for p in getPlugins(IServiceMaker)}
    assert "voiceedge-relay" in names


@pytest_twisted.inlineCallbacks
def test_service_runs_and_serves_metrics(tmp_path: Path) -> Iterator[Any]:
    """Started for real: forwards a token-routed check and answers /metrics and /healthz."""
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
        assert encap.decode(data)[1] == request

        agent = Agent(reactor)
        response: Any = yield agent.request(b"GET", f"http://127.0.0.1:{http_port}/metrics".encode())
        raw: Any = yield readBody(response)
        body = raw.decode()
        assert response.code == 200
        assert 'voiceedge_relay_flows{state="pending"} 1.0' in body
        assert 'voiceedge_relay_packets_total{direction="to_transceiver"} 1.0' in body
        response = yield agent.request(b"GET", f"http://127.0.0.1:{http_port}/healthz".encode())
        assert (yield readBody(response)) == b"ok flows=1 redis=disabled\n"
        assert response.headers.getRawHeaders(b"server") == [b"voiceedge"]  # no Twisted version
    finally:
        sink.close()
        client.close()
        yield top.stopService()
