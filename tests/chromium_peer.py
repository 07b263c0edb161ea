# -*- test-case-name: tests.test_long_calls -*-
"""Debian's headless Chromium as a test peer: the demo page's long call, with an ICE restart."""

from __future__ import annotations

import json
import time
import unittest
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tests.support import http_get

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "SAMPLE_JS", "demo_page", "drive_long_call", "require_browser"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
# Reads getStats() now; returns the page's clock with the counters.
SAMPLE_JS = """async () => {
  const s = await window.voiceedge.sample();
  return {at: performance.now(), received: s.inbound.packetsReceived, stats: s};
}"""


def require_browser() -> Any:
    """playwright's sync API; raises :class:`unittest.SkipTest` when Chromium or playwright is missing."""
    if not CHROMIUM.exists():
        raise unittest.SkipTest(f"{CHROMIUM} is not installed")
    try:
        import playwright.sync_api
    except ImportError:
        raise unittest.SkipTest("playwright is not installed") from None
    return playwright.sync_api


@contextmanager
def demo_page(sync_api: Any, base_url: str, profile: Path) -> Iterator[tuple[Any, list[str]]]:
    """Chromium on the demo page at ``base_url`` with a fresh ``profile``: (page, console lines).

    The page's CSP forbids eval, which playwright's ``wait_for_function`` needs: CSP is bypassed.
    """
    console: list[str] = []
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, bypass_csp=True,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(base_url + "/")
            yield page, console
        finally:
            context.close()


def drive_long_call(
    sync_api: Any, base_url: str, tmp_path: Path, seconds: float, restart_at: float
) -> dict[str, Any]:
    """A demo-page call held ``seconds``, with ``restartIce()`` at ``restart_at`` seconds.

    Returns the inbound packet rate over each 5 s window (by the page's clock), the PATCH
    status, the session's stats from ``GET <Location>`` just before the hang-up, and the
    console.
    """
    with demo_page(sync_api, base_url, tmp_path / "chromium-long") as (page, console):
        page.click("#call")
        page.wait_for_function("window.voiceedgeStats.timings.firstAudio !== null", timeout=15_000)
        started = time.monotonic()
        windows: list[tuple[float, float]] = []
        restart_status = None
        last = page.evaluate(SAMPLE_JS)
        while time.monotonic() - started < seconds:
            if restart_status is None and time.monotonic() - started >= restart_at:
                restart_status = page.evaluate("window.voiceedge.restartIce()")
            page.wait_for_timeout(5000)
            now = page.evaluate(SAMPLE_JS)
            rate = (now["received"] - last["received"]) * 1000.0 / (now["at"] - last["at"])
            windows.append((round(time.monotonic() - started, 1), round(rate, 1)))
            last = now
        session_url = page.evaluate("window.voiceedgeStats.sessionUrl")
        status, body = http_get(session_url)
        server = json.loads(body) if status == 200 else {"status": status}
        state = page.evaluate("window.voiceedgeStats.state")
        page.click("#call")
        page.wait_for_function("window.voiceedgeStats.deleteStatus !== null", timeout=5_000)
        final = page.evaluate("window.voiceedgeStats")
    return {
        "windows": windows,
        "restart_status": restart_status,
        "server": server,
        "state": state,
        "final": final,
        "console": console,
    }

