# -*- test-case-name: tests.test_browser -*-
"""End to end: headless chromium calls the all-in-one service from the demo page and hears itself."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import TestCase

from tests.chromium_peer import SAMPLE_JS, demo_page, require_browser
from tests.support import (
    free_tcp_port,
    free_udp_port,
    health_sessions,
    running_service,
    scrape_metrics,
    write_allinone_config,
)

# Opus in 20 ms frames: at most 50 packets a second. Chromium's fake microphone
# beeps (sound about half the time) and the echo sends back only what can be
# heard (silence is not sent: tests/test_silence_playout.py), about 25-30.
EXPECTED_PPS = (15.0, 52.0)
SAMPLE_SECONDS = 3.0

def wait_for_sessions(health_url: str, expected: int, timeout: float = 5.0) -> int:
    """Poll /healthz until it reports ``expected`` sessions; the last count seen."""
    deadline = time.monotonic() + timeout
    while True:
        count = health_sessions(health_url)
        if count == expected or time.monotonic() >= deadline:
            return count
        time.sleep(0.1)


def drive_demo_call(sync_api: Any, base_url: str, tmp_path: Path) -> dict[str, Any]:
    """Open the demo page at ``base_url``, call, measure inbound audio, hang up.

    Returns ``{"connected": stats, "rate": packets/s, "final": stats, "console": [...]}``.
    """
    with demo_page(sync_api, base_url, tmp_path / "chromium-profile") as (page, console):
        assert page.text_content("#call") == "Call"
        page.click("#call")
        page.wait_for_function(
            "['connected', 'failed'].includes(window.voiceedgeStats.state)", timeout=15_000
        )
        connected = page.evaluate("window.voiceedgeStats")
        assert connected["state"] == "connected", (connected, console)
        assert page.text_content("#call") == "Hang up"
        page.wait_for_function("window.voiceedgeStats.timings.firstAudio !== null", timeout=10_000)

        # oai-events: the server's session.created shows up, and an event
        # typed into the page reaches the agent and comes back.
        page.wait_for_function(
            "window.voiceedgeStats.events.some(e => e.type === 'session.created')", timeout=10_000
        )
        page.fill("#event-input", '{"type": "ping", "n": 1}')
        page.click("#event-send")
        page.wait_for_function(
            "window.voiceedgeStats.events.some(e => e.type === 'echo' && e.event.n === 1)",
            timeout=10_000,
        )
        shown = page.text_content("#events") or ""
        assert "session.created" in shown and "ping" in shown, shown

        first = page.evaluate(SAMPLE_JS)
        page.wait_for_timeout(SAMPLE_SECONDS * 1000)
        last = page.evaluate(SAMPLE_JS)
        rate = (last["received"] - first["received"]) * 1000.0 / (last["at"] - first["at"])
        page.wait_for_timeout(1200)  # one more tick of the page's own stats loop
        page.screenshot(path=str(tmp_path / "demo-call.png"), full_page=True)

        page.click("#call")
        page.wait_for_function("window.voiceedgeStats.deleteStatus !== null", timeout=5_000)
        final = page.evaluate("window.voiceedgeStats")
    return {"connected": connected, "rate": rate, "last": last["stats"], "final": final, "console": console}


@pytest.mark.browser
@pytest.mark.integration
class ChromiumDemoCallTests(TestCase):
    """Headless Chromium calls the all-in-one echo from the demo page and hears its beeps back."""

    timeout = 120

    def test_call_from_chromium(self) -> None:
        """Chromium with a fake microphone calls the all-in-one echo and receives its beeps back (15-52 packets/s)."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        sync_api = require_browser()
        http_port, media_port = free_tcp_port(), free_udp_port()
        ini = write_allinone_config(tmp_path, http_port, media_port)
        base_url = f"http://127.0.0.1:{http_port}"
        health_url = f"{base_url}/healthz"
        with running_service(["voiceedge", "--config", str(ini)], health_url, log_dir=tmp_path):
            self.assertEqual(health_sessions(health_url), 0)
            result = drive_demo_call(sync_api, base_url, tmp_path)
            remaining = wait_for_sessions(health_url, 0)
            metrics = scrape_metrics(base_url)

        connected, last, final = result["connected"], result["last"], result["final"]
        print(f"setup timings (ms): {last['timings']}; rate {result['rate']:.1f} packets/s; rtt {last['rtt']} ms")
        timings = last["timings"]
        for name in ("answer", "ice", "connected", "firstAudio"):
            self.assertIsInstance(timings[name], (int, float), (name, timings))
        self.assertTrue(timings["answer"] <= timings["connected"] <= timings["firstAudio"] + 1000, timings)
        self.assertTrue(connected["sessionUrl"].startswith(base_url + "/v1/realtime/calls/"))
        low, high = EXPECTED_PPS
        self.assertTrue(low <= result["rate"] <= high, (result["rate"], last, result["console"]))
        self.assertGreater(last["inbound"]["packetsReceived"], 0)
        self.assertGreater((tmp_path / "demo-call.png").stat().st_size, 0)
        self.assertEqual(final["state"], "closed")
        self.assertEqual(final["deleteStatus"], 204, final)
        self.assertEqual(remaining, 0)
        # Chromium nominates after DTLS may already have verified its path; when it did not,
        # we probed, and a real browser answers every probe.
        probes = metrics.get("voiceedge_transceiver_path_probes_total", {})
        print(f"path probes: {probes}")
        self.assertEqual(probes.get("result=answered", 0), probes.get("result=sent", 0), probes)
        # Chromium's audio and reports stay within the budgets checked before decryption.
        drops = metrics.get("voiceedge_transceiver_drops_total", {})
        self.assertNotIn("reason=rtp_over_rate", drops, drops)
        self.assertNotIn("reason=rtcp_over_rate", drops, drops)
