"""Relay and transceiver as separate processes: a relay killed mid-call comes back without new signaling."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from twisted.trial.unittest import TestCase

from tests.redis_support import RedisProcess, start_redis
from tests.support import (
    NO_LOAD_LIMITS_INI,
    REPO_ROOT,
    ServiceFailed,
    free_tcp_port,
    free_udp_port,
    health_sessions,
    http_get,
    twistd_command,
)

@dataclass
class Split:
    """Ports and files of one relay + transceiver deployment on loopback."""

    tmp: Path
    relay_udp: int
    relay_http: int
    transceiver_udp: int
    signaling_http: int
    redis_port: int | None
    relay_options: str = ""  # more [relay] lines, e.g. "flow_idle_timeout = 10\n"

    @property
    def base_url(self) -> str:
        """Where clients POST offers."""
        return f"http://127.0.0.1:{self.signaling_http}"

    @property
    def relay_health(self) -> str:
        """The relay's health endpoint."""
        return f"http://127.0.0.1:{self.relay_http}/healthz"

    def write(self) -> tuple[Path, Path]:
        """Write relay.ini and transceiver.ini sharing a fresh fleet key."""
        key = "1:" + base64.b64encode(os.urandom(32)).decode()
        redis = (
            f"enabled = yes\naddress = 127.0.0.1:{self.redis_port}\nttl = 60\nlookup_rate = 200\n"
            if self.redis_port
            else "enabled = no\n"
        )
        relay = self.tmp / "relay.ini"
        relay.write_text(
            f"[relay]\npublic_listen = 127.0.0.1:{self.relay_udp}\ninternal_listen = 127.0.0.1:0\n"
            f"transceiver_networks = 127.0.0.0/8\n{self.relay_options}[token]\nkeys = {key}\n[redis]\n{redis}"
            f"[http]\nlisten = tcp:{self.relay_http}:interface=127.0.0.1\n"
            # One relay process: this kills and restarts it whole (tests/test_workers.py kills a worker).
            "[process]\nworkers = 1\n"
        )
        transceiver = self.tmp / "transceiver.ini"
        transceiver.write_text(
            f"[signaling]\nlisten = tcp:{self.signaling_http}:interface=127.0.0.1\n"
            f"[transceiver]\nmedia_listen = 127.0.0.1:{self.transceiver_udp}\n"
            f"advertised_address = 127.0.0.1:{self.relay_udp}\nrelay_networks = 127.0.0.0/8\n{NO_LOAD_LIMITS_INI}"
            f"[route]\nkeys = {key}\nissuing_key = 1\n"
            # One process: this kills and restarts it whole.
            "[process]\nworkers = 1\n"
        )
        return relay, transceiver


class Process:
    """A twistd service this test may kill -9 and start again."""

    def __init__(self, args: list[str], health_url: str, log: Path) -> None:
        self.args = args
        self.health_url = health_url
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> float:
        """Start it and wait until healthy; the time it became healthy."""
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                twistd_command(self.args), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ServiceFailed(f"{self.args[0]} exited: {self.log.read_text()}")
            try:
                if http_get(self.health_url, timeout=0.5)[0] == 200:
                    return time.monotonic()
            except OSError:
                pass
            time.sleep(0.02)
        raise ServiceFailed(f"{self.args[0]} not healthy: {self.log.read_text()}")

    def kill9(self) -> None:
        """SIGKILL: no goodbye, no cleanup."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


@contextmanager
def deployment(
    tmp_path: Path, redis: RedisProcess | None, relay_options: str = ""
) -> Iterator[tuple[Split, Process, Process]]:
    """Relay and transceiver running as two processes; stopped afterwards."""
    split = Split(
        tmp_path, free_udp_port(), free_tcp_port(), free_udp_port(), free_tcp_port(),
        redis.port if redis else None, relay_options,
    )
    relay_ini, transceiver_ini = split.write()
    relay = Process(["voiceedge-relay", "--config", str(relay_ini)], split.relay_health, tmp_path / "relay.log")
    transceiver = Process(
        ["voiceedge-transceiver", "--config", str(transceiver_ini)],
        split.base_url + "/healthz",
        tmp_path / "transceiver.log",
    )
    try:
        relay.start()
        transceiver.start()
        yield split, relay, transceiver
    except BaseException:
        for log in (relay.log, transceiver.log):
            print(f"----- {log.name} -----\n{log.read_text() if log.exists() else ''}")
        raise
    finally:
        relay.stop()
        transceiver.stop()


def restart_gap(split: Split, relay: Process, call_seconds: float) -> tuple[float, int]:
    """Kill -9 the relay mid-call and start it again.

    Returns how long after the new relay was healthy the first echoed frame
    arrived, and how many frames came back after that. The call goes on for
    ``call_seconds`` after the new relay is healthy, however long the restart
    took (a loaded machine starts twistd slowly).
    """
    from tests.aiortc_peer import monitored_call

    restarted: list[float] = []

    async def restart() -> None:
        await asyncio.sleep(2.0)
        relay.kill9()
        restarted.append(await asyncio.to_thread(relay.start))
        await asyncio.sleep(call_seconds)

    arrivals = asyncio.run(monitored_call(split.base_url, 2.0, restart()))
    assert restarted, "the relay was not restarted"
    after = [t for t in arrivals if t > restarted[0]]
    assert after, "no audio came back after the restart"
    return after[0] - restarted[0], len(after)


@pytest.mark.integration
class RelayRestartTests(TestCase):
    """A relay killed -9 mid-call and started again: the call's audio comes back without new signaling."""

    timeout = 120

    def test_relay_restart_with_redis_resumes_within_one_second(self) -> None:
        """With Redis the new relay finds the flow on the first media packet: audio back within 1 s."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        redis_server = start_redis(self)
        with deployment(tmp_path, redis_server) as (split, relay, _):
            gap, frames = restart_gap(split, relay, call_seconds=4.0)
            print(f"audio resumed {gap * 1000:.0f} ms after the relay was back")
            self.assertLess(gap, 1.0)
            self.assertGreater(frames, 100)  # and it kept flowing
            self.assertEqual(health_sessions(split.base_url + "/healthz"), 0)

    def test_relay_restart_without_redis_resumes_within_a_consent_interval(self) -> None:
        """Without Redis the client's next consent check rebuilds the route from the ufrag."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        with deployment(tmp_path, None) as (split, relay, _):
            gap, frames = restart_gap(split, relay, call_seconds=8.0)
            print(f"audio resumed {gap * 1000:.0f} ms after the relay was back")
            # aioice checks consent every 4-6 s (RFC 7675).
            self.assertLess(gap, 6.0)
            self.assertGreater(frames, 50)
