"""Network namespaces for multi-host tests: hosts on one bridge, made by a test and removed at its cleanup.

Each host is a namespace with one veth into a bridge that lives in the root namespace (so the
test process reaches every host's HTTP port). Addresses are in a /16 of their own per test
run. Needs root and ``ip``; :func:`require_namespaces` raises SkipTest with the reason
otherwise, so such a test is never silently passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from twisted.trial.unittest import SkipTest

from tests.support import REPO_ROOT, twistd_command

__all__ = ["Host", "Network", "require_namespaces"]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def require_namespaces() -> None:
    """SkipTest, with the reason, unless this process can make network namespaces."""
    if os.geteuid() != 0:
        raise SkipTest("network namespaces need root")
    if shutil.which("ip") is None:
        raise SkipTest("the ip command (iproute2) is not installed")
    probe = f"vecheck{os.getpid()}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        raise SkipTest(f"cannot make a network namespace: {made.stderr.strip()}")
    _ip("netns", "del", probe)


@dataclass
class Host:
    """One namespace: ``name``, its address, and processes started in it."""

    network: Network
    name: str
    namespace: str
    ip: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command in this namespace."""
        return ["ip", "netns", "exec", self.namespace]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace and wait for it."""
        return subprocess.run([*self.prefix(), *args], capture_output=True, text=True)

    def start(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start a long-running command in the namespace, output to ``log``; killed at cleanup."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*self.prefix(), *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT, env=env,
            )
        self.processes.append(process)
        return process

    def twistd(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """``twistd -n --pidfile= <args>`` in the namespace."""
        return self.start(twistd_command(args), log)


class Network:
    """A bridge in the root namespace and hosts attached to it, all in ``10.<n>.0.0/16``."""

    def __init__(self, testcase: Any) -> None:
        self.tag = f"{os.getpid() % 10000}"
        self.subnet = 100 + os.getpid() % 100
        self.bridge = f"vebr{self.tag}"
        self.hosts: dict[str, Host] = {}
        self._count = 0
        made = _ip("link", "add", self.bridge, "type", "bridge")
        if made.returncode != 0:
            raise SkipTest(f"cannot make a bridge: {made.stderr.strip()}")
        testcase.addCleanup(self.remove)
        self._check(_ip("addr", "add", f"10.{self.subnet}.0.1/16", "dev", self.bridge))
        self._check(_ip("link", "set", self.bridge, "up"))

    @property
    def cidr(self) -> str:
        """The whole test network."""
        return f"10.{self.subnet}.0.0/16"

    def address(self, third: int, fourth: int) -> str:
        """``10.<n>.<third>.<fourth>``."""
        return f"10.{self.subnet}.{third}.{fourth}"

    @staticmethod
    def _check(result: subprocess.CompletedProcess[str]) -> None:
        if result.returncode != 0:
            raise RuntimeError(f"{result.args}: {result.stderr.strip()}")

    def host(self, name: str, third: int, fourth: int) -> Host:
        """A new namespace on the bridge with address 10.<n>.<third>.<fourth>/16."""
        self._count += 1
        namespace = f"ve{self.tag}-{name}"
        outside, inside = f"ve{self.tag}o{self._count}", f"ve{self.tag}i{self._count}"
        ip = self.address(third, fourth)
        self._check(_ip("netns", "add", namespace))
        host = Host(self, name, namespace, ip)
        self.hosts[name] = host
        self._check(_ip("link", "add", outside, "type", "veth", "peer", "name", inside))
        self._check(_ip("link", "set", inside, "netns", namespace))
        self._check(_ip("link", "set", outside, "master", self.bridge, "up"))
        for args in (("link", "set", "lo", "up"), ("link", "set", inside, "name", "eth0"),
                     ("addr", "add", f"{ip}/16", "dev", "eth0"), ("link", "set", "eth0", "up")):
            self._check(_ip("-n", namespace, *args))
        return host

    def remove(self) -> None:
        """Kill every process started in the hosts, delete the namespaces and the bridge."""
        for host in self.hosts.values():
            for process in host.processes:
                if process.poll() is None:
                    process.kill()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            _ip("netns", "del", host.namespace)
        _ip("link", "del", self.bridge)
