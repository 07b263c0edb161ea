"""The Firefox harness itself: Debian's headless Firefox ESR calls pionecho, hears itself, restarts ICE."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.trial import unittest

from tests import firefox_peer, pion_peer

# Opus in 20 ms frames: an echo sends back about 50 packets a second.
EXPECTED_PPS = (40.0, 60.0)


class UserPrefsTests(unittest.SynchronousTestCase):
    """The profile's user.js."""

    def test_prefs_are_javascript_calls(self) -> None:
        """Every pref becomes one user_pref(name, JSON value) line; extra prefs override."""
        text = firefox_peer.user_prefs({"media.navigator.streams.fake": False, "x.y": "z"})
        lines = text.splitlines()
        self.assertIn('user_pref("media.navigator.streams.fake", false);', lines)
        self.assertIn('user_pref("x.y", "z");', lines)
        self.assertIn('user_pref("media.peerconnection.ice.loopback", true);', lines)
        self.assertIn('user_pref("permissions.default.microphone", 1);', lines)
        self.assertTrue(all(line.startswith("user_pref(") and line.endswith(");") for line in lines))


@pytest.mark.integration
@pytest.mark.browser
class FirefoxCallsPionEchoTests(unittest.TestCase):
    """Headless Firefox ESR with a fake microphone calls pionecho on loopback."""

    def setUp(self) -> None:
        firefox_peer.require_firefox()
        logs = Path(self.mktemp()).resolve()
        echo = pion_peer.running_pionecho(log_dir=logs)
        self.echo = echo.__enter__()
        self.addCleanup(echo.__exit__, None, None, None)
        harness = firefox_peer.FirefoxHarness(log_dir=logs)
        self.firefox = harness.__enter__()
        self.addCleanup(harness.__exit__, None, None, None)

    def test_call(self) -> None:
        """Audio comes back at about 50 packets/s, an event is echoed, every milestone is timed, DELETE frees it."""
        result = self.firefox.call(self.echo.offer_url, seconds=3, events=[{"type": "ping", "n": 1}])
        self.assertTrue(result["ok"], (result["error"], result["page_log"]))
        self.assertIn("Firefox/", result["user_agent"])
        self.assertEqual(result["http_status"], 201)
        timings = [result[k] for k in ("offer_ready_ms", "http_answer_ms", "ice_connected_ms", "dtls_connected_ms")]
        self.assertEqual(timings, sorted(timings), result)
        self.assertGreaterEqual(result["first_audio_ms"], result["http_answer_ms"])
        low, high = EXPECTED_PPS
        self.assertTrue(low <= result["in_pps"] <= high, result)
        self.assertGreater(result["inbound"]["packetsReceived"], 0)
        self.assertIn("concealedSamples", result["inbound"])
        self.assertEqual(result["dc_types"], {"ping": 1})
        self.assertEqual(result["ended"]["reason"], "duration")
        self.assertEqual(result["delete_status"], 204)

    def test_restart_ice(self) -> None:
        """restartIce(), the new offer PATCHed as application/sdp: ICE goes through checking again and audio resumes."""
        result = self.firefox.call(self.echo.offer_url, seconds=4, datachannel="", restart_at=1.5)
        self.assertTrue(result["ok"], (result["error"], result["page_log"]))
        restart = result["restart"]
        self.assertEqual(restart["patch_status"], 200)
        self.assertTrue(restart["ice_reconnected"], restart)
        self.assertTrue(restart["audio_resumed"], restart)
        self.assertEqual(self.echo.counters()["restarts"], 1)
