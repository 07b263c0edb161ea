"""Real redis-server and Sentinel processes for tests, on free loopback ports, killed at cleanup."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest

__all__ = ["RedisProcess", "redis_command", "start_redis", "start_sentinel"]

LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def redis_command(port: int, *args: str, host: str = LOOPBACK, timeout: float = 2.0) -> bytes:
    """One command over a plain blocking socket; the raw RESP reply (b"" when unreachable)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(payload)
            return sock.recv(65536)
    except OSError:
        return b""


@dataclass
class RedisProcess:
    """A running redis-server (or Sentinel) a test may kill early."""

    port: int
    process: subprocess.Popen[bytes]
    host: str = LOOPBACK
    extra: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        """host, port."""
        return (self.host, self.port)

    def kill(self) -> None:
        """SIGKILL and reap; idempotent."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)

    def command(self, *args: str) -> bytes:
        """One command, the raw reply."""
        return redis_command(self.port, *args, host=self.host)


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise SkipTest(f"{name} is not installed (scripts/test installs redis-server)")
    return binary


def _wait_ping(server: RedisProcess, what: str) -> None:
    deadline = time.monotonic() + 10
    while not server.command("PING").startswith(b"+PONG"):
        if server.process.poll() is not None:
            raise AssertionError(f"{what} exited with {server.process.returncode}")
        if time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"{what} did not answer PING within 10 s")
        time.sleep(0.02)


def start_redis(testcase: Any, *args: str, port: int | None = None) -> RedisProcess:
    """A redis-server on 127.0.0.1:<free port>, no persistence, killed at the test's cleanup."""
    port = port or _free_port()
    # A replica's full sync makes its master write an RDB file even with
    # --save "": in the test's own directory, never the working directory.
    directory = Path(testcase.mktemp()).resolve()
    directory.mkdir(parents=True)
    process = subprocess.Popen(
        [_binary("redis-server"), "--port", str(port), "--bind", LOOPBACK, "--save", "",
         "--appendonly", "no", "--dir", str(directory), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisProcess(port, process)
    testcase.addCleanup(server.kill)
    _wait_ping(server, "redis-server")
    return server


def start_sentinel(
    testcase: Any, master: RedisProcess, name: str = "voiceedge", quorum: int = 1,
    down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
) -> RedisProcess:
    """A Sentinel watching ``master`` as ``name``, on a free port, with a config file of its own."""
    port = _free_port()
    directory = Path(testcase.mktemp()).resolve()
    directory.mkdir(parents=True)
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind {LOOPBACK}\ndir {directory}\n"
        f"sentinel monitor {name} {master.host} {master.port} {quorum}\n"
        f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
        f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
        f"sentinel parallel-syncs {name} 1\n"
    )
    process = subprocess.Popen(
        [_binary("redis-server"), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sentinel = RedisProcess(port, process)
    testcase.addCleanup(sentinel.kill)
    _wait_ping(sentinel, "redis sentinel")
    return sentinel
