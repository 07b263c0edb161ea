# -*- test-case-name: tests.test_browser -*-
"""Helpers for integration tests: free loopback ports, all-in-one INI files, a twistd subprocess."""

from __future__ import annotations

import configparser
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

__all__ = [
    "NO_LOAD_LIMITS",
    "NO_LOAD_LIMITS_INI",
    "REPO_ROOT",
    "ServiceFailed",
    "free_tcp_port",
    "free_udp_port",
    "free_udp_run",
    "health_sessions",
    "http_get",
    "running_service",
    "twistd_command",
    "write_allinone_config",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
#: ``[transceiver]`` keys that turn admission by load off. The suite's services share 2 cores
#: with parallel tests (a load of 9 is usual), where every process runs its timers late and
#: would refuse calls as overloaded; tests/test_admission.py is the one about refusing by load.
NO_LOAD_LIMITS = {"max_cpu_percent": "0", "max_loop_lag_ms": "0"}
NO_LOAD_LIMITS_INI = "".join(f"{key} = {value}\n" for key, value in NO_LOAD_LIMITS.items())

# What twistd runs in the child: `python -m twisted` is `twist`, which knows
# neither -n nor --pidfile, so call twistd's entry point directly.
_TWISTD = "from twisted.scripts.twistd import run; run()"


class ServiceFailed(AssertionError):
    """A service under test did not come up, or died while the test ran."""


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    return _free_port(socket.SOCK_DGRAM)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port(socket.SOCK_STREAM)


def free_udp_run(count: int) -> int:
    """A UDP port p on 127.0.0.1 with p + 1 ... p + count - 1 free too (one for each worker)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((LOOPBACK, 0))
            port: int = first.getsockname()[1]
            others = []
            try:
                for offset in range(1, count):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    others.append(sock)
                    sock.bind((LOOPBACK, port + offset))
            except OSError:
                continue
            finally:
                for sock in others:
                    sock.close()
            return port
    raise AssertionError(f"no {count} consecutive free UDP ports")


def _ini_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def write_allinone_config(
    tmp_path: Path,
    http_port: int,
    media_port: int,
    **overrides: Mapping[str, object | None],
) -> Path:
    """Write an INI for ``twistd voiceedge`` on loopback and return its path.

    Each keyword names a section and maps keys to values, merged over the
    defaults (a new section is added; a value of ``None`` removes the key;
    booleans become ``yes``/``no``), e.g.
    ``write_allinone_config(tmp_path, 8080, 3478, transceiver={"max_sessions": 1})``.
    """
    sections: dict[str, dict[str, str]] = {
        "signaling": {
            "listen": f"tcp:{http_port}:interface={LOOPBACK}",
            "demo_page": "yes",
        },
        # Clients see only the relay, on media_port; the transceiver behind it
        # takes a free internal port.
        "relay": {"public_listen": f"{LOOPBACK}:{media_port}"},
        "transceiver": {"max_sessions": "100", **NO_LOAD_LIMITS},
        "agent": {"name": "echo"},
        # One process unless a test is about workers (tests/test_workers.py).
        "process": {"workers": "1"},
    }
    for section, values in overrides.items():
        target = sections.setdefault(section, {})
        for key, value in values.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = _ini_value(value)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict(sections)
    path = Path(tmp_path) / "voiceedge.ini"
    with path.open("w", encoding="utf-8") as f:
        parser.write(f)
    return path


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body), any HTTP status included; raises OSError when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def scrape_metrics(base_url: str) -> dict[str, dict[str, float]]:
    """``GET /metrics`` as {sample name: {"label=value,...": value}}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(base_url + "/metrics")
    if status != 200:
        raise ServiceFailed(f"{base_url}/metrics answered {status}")
    result: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            result.setdefault(sample.name, {})[key] = sample.value
    return result


def health_sessions(health_url: str) -> int:
    """The session count a ``/healthz`` answer (``ok sessions=<n>``) reports."""
    status, body = http_get(health_url)
    if status != 200:
        raise ServiceFailed(f"{health_url} answered {status}: {body!r}")
    for word in body.decode("utf-8", "replace").split():
        if word.startswith("sessions="):
            return int(word.partition("=")[2])
    raise ServiceFailed(f"{health_url} did not report sessions: {body!r}")


def twistd_command(args: Sequence[str]) -> list[str]:
    """The argv that runs ``twistd -n --pidfile= <args>`` with this interpreter."""
    return [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", *args]


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # The child must find this checkout's package and twisted/plugins.
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def _print_log(log_path: Path, why: str) -> None:
    try:
        text = log_path.read_text("utf-8", "replace")
    except OSError as e:
        text = f"(no log: {e})"
    print(f"\n----- {why}; service log {log_path} -----\n{text}\n----- end of service log -----")


def _stop(proc: "subprocess.Popen[bytes]", grace: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


@contextmanager
def running_service(
    args: Sequence[str],
    health_url: str,
    timeout: float = 20.0,
    *,
    log_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    stop_grace: float = 10.0,
    may_exit: bool = False,
    wrapper: Sequence[str] = (),
) -> Iterator["subprocess.Popen[bytes]"]:
    """Run ``twistd -n --pidfile= <args>`` until the block ends (behind ``wrapper``, a command that execs it).

    Output goes to ``<log_dir>/<plugin>.log`` (pass pytest's ``tmp_path``; a
    temporary directory otherwise). Yields the Popen once ``health_url``
    answers 200 (raising :class:`ServiceFailed` if it does not within
    ``timeout`` seconds or the process exits first). On exit: SIGTERM, wait
    ``stop_grace`` seconds, SIGKILL. With ``may_exit`` the test itself stops
    or kills the process, so its exit during the block is no failure. The log is printed when start-up fails,
    when the block raises, or when the process died during the block.
    """
    directory = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="voiceedge-"))
    directory.mkdir(parents=True, exist_ok=True)
    name = (args[0] if args else "twistd").replace("/", "_")
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [*wrapper, *twistd_command(args)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT),
            env=_child_env(env),
        )
    try:
        _wait_healthy(proc, health_url, timeout)
    except BaseException as e:
        _stop(proc, stop_grace)
        _print_log(log_path, f"service did not start ({e})")
        raise
    try:
        yield proc
    except BaseException:
        died = proc.poll()
        _stop(proc, stop_grace)
        _print_log(log_path, "test failed" if died is None else f"test failed; service had exited {died}")
        raise
    died = proc.poll()
    _stop(proc, stop_grace)
    if died is not None and not may_exit:
        _print_log(log_path, f"service exited with {died} during the test")
        raise ServiceFailed(f"service {list(args)} exited with {died} during the test; log {log_path}")


def _wait_healthy(proc: "subprocess.Popen[bytes]", health_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: str = "no answer yet"
    while True:
        code = proc.poll()
        if code is not None:
            raise ServiceFailed(f"service exited with {code} before {health_url} answered")
        try:
            status, body = http_get(health_url, timeout=1.0)
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as e:
            last = str(e)
        if time.monotonic() >= deadline:
            raise ServiceFailed(f"{health_url} not healthy after {timeout}s: {last}")
        time.sleep(0.1)


def wait_workers_serving(base: str, count: int, timeout: float = 60.0) -> None:
    """Until the front door of the workers (all-in-one or transceiver) sees ``count`` of them serving."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = http_get(base + "/readyz", timeout=1.0)
            if status == 200 and f"serving={count}" in body.decode():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise ServiceFailed(f"{count} workers not serving after {timeout} s")
