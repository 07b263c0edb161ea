"""Shared pytest fixtures: a working directory outside the checkout, a throwaway redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _work_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run in a scratch directory, as trial runs in ``_trial_temp``.

    ``twisted.trial`` test cases make their ``mktemp()`` paths relative to the
    working directory: under pytest, started from the checkout, they would
    land in it.
    """
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(before)


@dataclass
class RedisServer:
    """A running ``redis-server`` that a test may kill early."""

    host: str
    port: int
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """Kill the server (SIGKILL) and reap it; idempotent."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1:<free port>, no persistence; killed after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_tcp_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer("127.0.0.1", port, process)
    try:
        deadline = time.monotonic() + 10
        while not _ping(port):
            if process.poll() is not None:
                pytest.fail(f"redis-server exited with {process.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer PING within 10 s")
            time.sleep(0.02)
        yield server
    finally:
        server.kill()


def pytest_configure(config: pytest.Config) -> None:
    """Let trial TestCases that return Deferreds run beside pytest-twisted tests."""
    _trial_waits_with_pytest_twisted()


def _trial_waits_with_pytest_twisted() -> None:
    """trial's TestCase blocks on a Deferred by running the reactor itself (``reactor.run``).

    Under pytest-twisted the reactor runs in a greenlet of its own as soon as
    one pytest-twisted test has used it, and a second ``run`` fails: every
    asynchronous trial test after such a test would break, and the outcome
    would depend on test order. So once pytest-twisted has its greenlet,
    trial waits the way pytest-twisted does (``blockon``). Under ``trial``
    itself nothing changes.
    """
    try:
        import pytest_twisted
    except ImportError:  # pragma: no cover - the test extras install it
        return
    from twisted.trial import _asynctest

    original = _asynctest.TestCase._wait

    def _wait(self: _asynctest.TestCase, d: object, running: list[None] = _asynctest._wait_is_running) -> None:
        twisted_greenlet = pytest_twisted._instances.gr_twisted
        if twisted_greenlet is None or twisted_greenlet.dead:
            return original(self, d, running)  # type: ignore[no-any-return]
        if running:
            raise RuntimeError("_wait is not reentrant")
        running.append(None)
        try:
            pytest_twisted.blockon(d)
        finally:
            running.pop()
        return None

    _asynctest.TestCase._wait = _wait  # type: ignore[method-assign]
