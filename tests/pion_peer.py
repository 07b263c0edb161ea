# -*- test-case-name: tests.test_pion_peer -*-
"""Pion (Go) as an independent WebRTC peer for tests and benchmarks: build it, call with it, run its echo server.

Two Go programs live in the repository: ``tests/pion`` (``pionpeer``, a client
that makes one call or a load of many and prints one JSON object) and
``bench/pionecho`` (an ICE-lite Pion echo server). They build offline from
Debian's packaged Pion sources (``apt-get install golang-go
golang-github-pion-webrtc.v3-dev``) into ``build/pion/`` (or
``$VOICEEDGE_PION_BUILD``), again only when a source changes.

    from tests import pion_peer
    with pion_peer.running_pionecho() as echo:
        result = pion_peer.call(echo.offer_url, seconds=3, events=['{"type": "ping"}'])
    assert result["ok"], result["error"]

:func:`call` and :func:`load` return the program's JSON as a dict; the keys
are documented in ``tests/pion/README.md``. When Go or the Pion sources are
missing, everything here raises :class:`unittest.SkipTest` saying so.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

from tests.support import REPO_ROOT, ServiceFailed, http_get

__all__ = [
    "BuildFailed",
    "PionBinaries",
    "PionEcho",
    "PionPeerFailed",
    "RunningCall",
    "build",
    "call",
    "call_command",
    "call_deferred",
    "load",
    "load_command",
    "load_deferred",
    "running_pionecho",
    "spawn_call",
]

GOCODE_SRC = Path(os.environ.get("GOCODE_SRC", "/usr/share/gocode/src"))
BUILD_DIR = Path(os.environ.get("VOICEEDGE_PION_BUILD", str(REPO_ROOT / "build" / "pion")))
PEER_SOURCE = REPO_ROOT / "tests" / "pion"
ECHO_SOURCE = REPO_ROOT / "bench" / "pionecho"
INSTALL_HINT = "apt-get install golang-go golang-github-pion-webrtc.v3-dev"
# Debian's golang-go puts go in /usr/bin; the versioned directory is a fallback.
_GO_FALLBACKS = ("/usr/lib/go/bin/go",)
# Modules under GOCODE_SRC that must stay out of the workspace: a second copy
# of a module path already provided elsewhere in the tree.
_SKIP_MODULES = ("/testdata/", "/gopkg.in/yaml.v3/")


class BuildFailed(RuntimeError):
    """``go build`` failed although Go and the Pion sources are installed."""


class PionPeerFailed(RuntimeError):
    """pionpeer did not print a result: it crashed, hung or was misused."""


@dataclass(frozen=True)
class PionBinaries:
    """Paths of the built programs."""

    peer: Path
    echo: Path


def _go() -> str:
    go = shutil.which("go") or next((p for p in _GO_FALLBACKS if os.access(p, os.X_OK)), None)
    if go is None:
        raise unittest.SkipTest(f"Go is not installed ({INSTALL_HINT})")
    if not (GOCODE_SRC / "github.com" / "pion" / "webrtc").is_dir():
        raise unittest.SkipTest(f"Pion's Go sources are not in {GOCODE_SRC} ({INSTALL_HINT})")
    return go


def _source_files() -> list[Path]:
    files: list[Path] = []
    for root in (PEER_SOURCE, ECHO_SOURCE):
        files += [p for p in root.rglob("*") if p.is_file() and p.suffix in (".go", ".mod", ".opus20")]
    return sorted(files)


def _gocode_modules() -> list[Path]:
    found = (
        m.parent for m in GOCODE_SRC.rglob("go.mod") if not any(s in str(m) + "/" for s in _SKIP_MODULES)
    )
    return sorted(set(found))


def _fingerprint(go: str, modules: Sequence[Path]) -> str:
    """What the binaries depend on: our sources, the Go version, the installed modules."""
    digest = hashlib.sha256()
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout
    digest.update(version.encode())
    for path in _source_files():
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    for module in modules:
        mod = module / "go.mod"
        digest.update(f"{module}:{mod.stat().st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOWORK=str(BUILD_DIR / "go.work"),
        GOCACHE=str(BUILD_DIR / "gocache"),
        GOPATH=str(BUILD_DIR / "gopath"),
        GOFLAGS="",
        GOPROXY="off",
        GOSUMDB="off",
        GOTOOLCHAIN="local",
        GO111MODULE="on",
        CGO_ENABLED="0",
    )
    return env


_built: PionBinaries | None = None  # built by this process: sources do not change under a test run


def build(force: bool = False) -> PionBinaries:
    """Build pionpeer and pionecho into BUILD_DIR when their sources changed; their paths.

    Offline: a go.work that uses our two modules and every module Debian
    installed under GOCODE_SRC, with GOPROXY=off. Raises
    :class:`unittest.SkipTest` when Go or Pion's sources are missing and
    :class:`BuildFailed` with the compiler's output when the build fails.
    """
    global _built
    go = _go()
    if _built is not None and not force:
        return _built
    binaries = PionBinaries(peer=BUILD_DIR / "pionpeer", echo=BUILD_DIR / "pionecho")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    stamp = BUILD_DIR / "stamp"
    with (BUILD_DIR / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, across processes
        modules = _gocode_modules()
        key = _fingerprint(go, modules)
        fresh = binaries.peer.exists() and binaries.echo.exists()
        if not force and fresh and stamp.exists() and stamp.read_text() == key:
            _built = binaries
            return binaries
        work = ["go 1.19", ""]
        work += [f"use {PEER_SOURCE}", f"use {ECHO_SOURCE}"]
        work += [f"use {m}" for m in modules]
        (BUILD_DIR / "go.work").write_text("\n".join(work) + "\n")
        (BUILD_DIR / "go.work.sum").unlink(missing_ok=True)
        for source, target in ((PEER_SOURCE, binaries.peer), (ECHO_SOURCE, binaries.echo)):
            partial = target.with_name(target.name + ".partial")
            proc = subprocess.run(
                [go, "build", "-trimpath", "-o", str(partial), "."],
                cwd=str(source),
                env=_build_env(),
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise BuildFailed(f"go build in {source} failed:\n{proc.stdout}{proc.stderr}")
            partial.replace(target)
        stamp.write_text(key)
    _built = binaries
    return binaries


def _args(**flags: Any) -> list[str]:
    """Flags as pionpeer expects them: None is left out, lists repeat, booleans are explicit."""
    argv: list[str] = []
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(f"{flag}={'true' if value else 'false'}")
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def _events(events: Iterable[str | dict[str, Any]]) -> list[str]:
    return [e if isinstance(e, str) else json.dumps(e) for e in events]


def call_command(
    url: str,
    *,
    seconds: float = 5.0,
    datachannel: str = "oai-events",
    events: Iterable[str | dict[str, Any]] = (),
    token: str | None = None,
    headers: Sequence[str] = (),
    audio: str = "speech",
    restart_at: float | None = None,
    restart_mode: str = "sdp",
    rebind_at: float | None = None,
    mid_ext: bool = False,
    sdp: bool = False,
    setup_timeout: float = 10.0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv of ``pionpeer call`` (building it first): run it any way you like.

    ``events`` are JSON texts (or dicts) sent on the data channel once it
    opens; ``headers`` are ``"Name: value"``; ``restart_at``/``rebind_at`` are
    seconds into the call; ``extra_args`` go through as they are (see
    ``pionpeer call -h``).
    """
    argv = [str(build().peer), "call"]
    argv += _args(
        url=url,
        seconds=seconds,
        datachannel=datachannel,
        event=_events(events),
        token=token,
        header=list(headers),
        audio=audio,
        restart_at=restart_at,
        restart_mode=restart_mode if restart_at else None,
        rebind_at=rebind_at,
        mid_ext=mid_ext,
        sdp=sdp,
        setup_timeout=f"{setup_timeout}s",
    )
    return argv + list(extra_args)


def load_command(
    url: str,
    *,
    n: int,
    ramp: float = 10.0,
    seconds: float = 10.0,
    settle: float = 2.0,
    server_pids: Sequence[int] = (),
    server_children: bool = False,
    datachannel: str = "",
    events: Iterable[str | dict[str, Any]] = (),
    token: str | None = None,
    audio: str = "speech",
    per_call: bool = False,
    setup_timeout: float = 10.0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv of ``pionpeer load``: ``n`` calls started ``ramp`` a second, measured for ``seconds``."""
    argv = [str(build().peer), "load"]
    argv += _args(
        url=url,
        n=n,
        ramp=ramp,
        seconds=seconds,
        settle=settle,
        server_pid=list(server_pids),
        server_children=server_children,
        datachannel=datachannel,
        event=_events(events),
        token=token,
        audio=audio,
        per_call=per_call,
        setup_timeout=f"{setup_timeout}s",
    )
    return argv + list(extra_args)


def _parse(stdout: str, stderr: Path | str, returncode: int | None) -> dict[str, Any]:
    """The JSON result in ``stdout``; ``stderr`` (its text, or the file holding it) explains a crash."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        if isinstance(stderr, Path):
            stderr = stderr.read_text("utf-8", "replace") if stderr.exists() else ""
        raise PionPeerFailed(f"pionpeer printed no result (exit {returncode}); stderr:\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if returncode == 2:
        raise PionPeerFailed(f"pionpeer refused its arguments: {result.get('error')}")
    return result


@dataclass
class RunningCall:
    """A pionpeer process started by :func:`spawn_call`: several may run at once."""

    process: "subprocess.Popen[str]"
    stderr_path: Path
    timeout: float
    _stderr: IO[str] = field(repr=False)

    def wait(self) -> dict[str, Any]:
        """Wait for the call to end and return its result (killing it past its timeout)."""
        try:
            stdout, _ = self.process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise PionPeerFailed(f"pionpeer still running after {self.timeout:.0f} s; stderr in {self.stderr_path}")
        except BaseException:
            # Ctrl-C or SIGTERM in the caller: the calls end with it, none is left running.
            self.process.kill()
            self.process.communicate()
            raise
        finally:
            self._stderr.close()
        return _parse(stdout, self.stderr_path, self.process.returncode)

    def stop(self) -> None:
        """Kill the call if it still runs (for cleanups)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        self._stderr.close()


def _spawn(argv: list[str], timeout: float, log_dir: Path | None) -> RunningCall:
    directory = (Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="pionpeer-"))).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    stderr_path = directory / f"pionpeer-{os.getpid()}-{time.monotonic_ns()}.log"
    stderr = stderr_path.open("w")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True)
    return RunningCall(process=process, stderr_path=stderr_path, timeout=timeout, _stderr=stderr)


def spawn_call(url: str, *, log_dir: Path | None = None, **options: Any) -> RunningCall:
    """Start ``pionpeer call`` (options as :func:`call_command`) without waiting for it."""
    argv = call_command(url, **options)
    seconds = float(options.get("seconds", 5.0))
    return _spawn(argv, timeout=seconds + float(options.get("setup_timeout", 10.0)) + 30, log_dir=log_dir)


def call(url: str, *, log_dir: Path | None = None, **options: Any) -> dict[str, Any]:
    """Make one call (options as :func:`call_command`) and return pionpeer's JSON result.

    The result is returned whether or not the call went well (``result["ok"]``,
    ``result["error"]``); :class:`PionPeerFailed` is raised only when the
    program printed nothing usable. Pion's log goes to a file in ``log_dir``.
    """
    return spawn_call(url, log_dir=log_dir, **options).wait()


def load(url: str, *, log_dir: Path | None = None, **options: Any) -> dict[str, Any]:
    """Run ``pionpeer load`` (options as :func:`load_command`) and return its JSON summary."""
    argv = load_command(url, **options)
    n, ramp = int(options["n"]), float(options.get("ramp", 10.0))
    bound = n / ramp + float(options.get("setup_timeout", 10.0)) + float(options.get("settle", 2.0))
    bound += float(options.get("seconds", 10.0)) + 60
    return _spawn(argv, timeout=bound, log_dir=log_dir).wait()


def _deferred(reactor: Any, argv: list[str]) -> "Deferred[dict[str, Any]]":
    from twisted.internet.utils import getProcessOutputAndValue

    d = getProcessOutputAndValue(argv[0], argv[1:], env=dict(os.environ), reactor=reactor)

    def parsed(outcome: tuple[bytes, bytes, int]) -> dict[str, Any]:
        out, err, code = outcome
        return _parse(out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), code)

    return d.addCallback(parsed)


def call_deferred(reactor: Any, url: str, **options: Any) -> "Deferred[dict[str, Any]]":
    """:func:`call` without blocking: a Deferred firing with the result, for tests that run
    a service in the test's own reactor. Build first (``build()``, which blocks) outside it."""
    return _deferred(reactor, call_command(url, **options))


def load_deferred(reactor: Any, url: str, **options: Any) -> "Deferred[dict[str, Any]]":
    """:func:`load` without blocking: a Deferred firing with the summary."""
    return _deferred(reactor, load_command(url, **options))


@dataclass(frozen=True)
class PionEcho:
    """A running pionecho: where to POST offers, and its process."""

    base_url: str
    udp_port: int
    process: "subprocess.Popen[bytes]"
    log_path: Path

    @property
    def offer_url(self) -> str:
        """Where to POST an SDP offer (the session is ``Location``)."""
        return self.base_url + "/offer"

    @property
    def health_url(self) -> str:
        """``GET`` answers ``ok sessions=N created=N ...``."""
        return self.base_url + "/healthz"

    @property
    def pid(self) -> int:
        """The server's PID, for ``load(server_pids=[...])``."""
        return self.process.pid

    def counters(self) -> dict[str, int]:
        """The key=value counters of ``/healthz``."""
        status, body = http_get(self.health_url)
        if status != 200:
            raise ServiceFailed(f"{self.health_url} answered {status}")
        words = body.decode().split()[1:]
        return {k: int(v) for k, _, v in (w.partition("=") for w in words)}


def _read_hello(proc: "subprocess.Popen[bytes]", timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        raise ServiceFailed(f"pionecho did not start within {timeout} s (exit {proc.poll()})")
    hello: dict[str, Any] = json.loads(line)
    return hello


def _stop(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def running_pionecho(
    *,
    token: str | None = None,
    dtls_role: str = "server",
    interceptors: bool = True,
    log_dir: Path | None = None,
) -> Iterator[PionEcho]:
    """Run pionecho on free loopback ports until the block ends (SIGTERM, then SIGKILL).

    ``token`` makes it require ``Authorization: Bearer <token>``;
    ``dtls_role="server"`` (the default) answers ``a=setup:passive`` as
    voiceedge does. Its log (stderr) is printed when the block raises.
    """
    echo = build().echo
    directory = (Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="pionecho-"))).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "pionecho.log"
    argv = [str(echo), "--http", "127.0.0.1:0", "--udp", "127.0.0.1:0", "--dtls-role", dtls_role]
    argv += [f"--interceptors={'true' if interceptors else 'false'}"]
    if token:
        argv += ["--token", token]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    try:
        hello = _read_hello(proc, timeout=10)
        server = PionEcho(
            base_url=f"http://{hello['http']}",
            udp_port=int(str(hello["udp"]).rsplit(":", 1)[1]),
            process=proc,
            log_path=log_path,
        )
        status, _ = http_get(server.health_url)
        if status != 200:
            raise ServiceFailed(f"pionecho {server.health_url} answered {status}")
        yield server
    except BaseException:
        _stop(proc)
        print(f"\n----- pionecho log {log_path} -----\n{log_path.read_text('utf-8', 'replace')}\n-----")
        raise
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def main(argv: Sequence[str]) -> int:
    """``python -m tests.pion_peer build``: build both programs and print their paths."""
    if list(argv[1:2]) != ["build"]:
        print(f"usage: {argv[0]} build [--force]", file=sys.stderr)
        return 2
    try:
        binaries = build(force="--force" in argv)
    except unittest.SkipTest as e:
        print(f"cannot build: {e}", file=sys.stderr)
        return 1
    print(f"{binaries.peer}\n{binaries.echo}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
