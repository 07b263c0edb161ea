"""Helpers for fleet tests: callers as subprocesses reporting JSON lines, and bounded waiting."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from tests.support import REPO_ROOT, http_get

__all__ = ["Caller", "wait_until"]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it is truthy (its value is returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


class Caller:
    """``python -m tests.fleet_client`` in a subprocess (``prefix``: e.g. ``ip netns exec ns``)."""

    def __init__(
        self, url: str, seconds: float, prefix: Sequence[str] = (), host_address: str = "127.0.0.1",
        token: str | None = None, delete: bool = True,
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        extra = (["--token", token] if token else []) + ([] if delete else ["--no-delete"])
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tests.fleet_client", "--url", url, "--seconds", str(seconds),
             "--host-address", host_address, *extra],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                pass
        self._lines.put(None)

    def next_event(self, kinds: Sequence[str], timeout: float = 30.0) -> dict[str, Any]:
        """The next event of one of ``kinds`` (others are kept in ``events``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kinds} event within {timeout:g} s; so far {self.events[-3:]}") from None
            if event is None:
                err = self.process.stderr.read() if self.process.stderr else ""
                raise AssertionError(f"the caller ended before {kinds}: {self.events[-3:]} {err[-2000:]}")
            self.events.append(event)
            if event["event"] in kinds:
                return event

    def frames(self) -> int:
        """Frames received by the last report."""
        reports = [e for e in self.events if "frames" in e]
        return int(reports[-1]["frames"]) if reports else 0

    def catch_up(self) -> None:
        """Take every report already printed, without waiting."""
        while True:
            try:
                event = self._lines.get_nowait()
            except queue.Empty:
                return
            if event is None:
                self._lines.put(None)
                return
            self.events.append(event)

    def frames_after(self, seconds: float) -> int:
        """Wait about ``seconds`` of reports and return how many frames arrived in them."""
        self.catch_up()
        before = self.frames()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.next_event(("audio",), timeout=max(0.5, deadline - time.monotonic() + 1.5))
            except AssertionError:
                break
        return self.frames() - before

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the ``done`` report."""
        done = self.next_event(("done",), timeout)
        self.process.wait(timeout=10)
        return done

    def kill(self) -> None:
        """End the caller at once."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def ready(url: str) -> str:
    """The front door's /readyz body, or "" when it does not answer 200."""
    try:
        status, body = http_get(url + "/readyz", timeout=1.0)
    except OSError:
        return ""
    return body.decode() if status == 200 else ""
