"""The caller's view in Chromium against today's all-in-one with the parrot: turn latency, barge-in as heard,
and the burst at the start of the next reply, beside the server's own barge-in figure.

The assertions are what must hold today; the figures are printed (the clean-stop work tightens them).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from twisted.trial.unittest import SkipTest, TestCase

from tests import speech_corpus
from tests.caller_view import CallerFigures, caller_figures, run_caller, scripted_caller_wav
from tests.support import free_tcp_port, free_udp_port, running_service, write_allinone_config
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

CALLS = 3
SILENCE_MS = 500


@pytest.mark.browser
@pytest.mark.integration
class CallerViewTests(TestCase):
    """Scripted calls from Chromium; figures printed, today's guarantees asserted."""

    def test_parrot_as_the_caller_hears_it(self) -> None:
        """A sentence, a pause, then talking over the parrot's answer, CALLS times."""
        if not CHROMIUM.exists():
            raise SkipTest(f"{CHROMIUM} is not installed")
        try:
            import playwright.sync_api as sync_api
        except ImportError:
            raise SkipTest("playwright is not installed") from None
        if not speech_corpus.available():
            raise SkipTest("espeak-ng and sox are needed")
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        wav = tmp / "caller.wav"
        script = scripted_caller_wav(wav, barge_after=SILENCE_MS / 1000 + 1.5)
        http_port, media_port = free_tcp_port(), free_udp_port()
        ini = write_allinone_config(
            tmp,
            http_port,
            media_port,
            # The page is served from another loopback port: any origin on loopback may call.
            signaling={"cors_origins": "*"},
            agent={"name": "parrot"},
            speech={"detector": "energy", "silence_ms": SILENCE_MS},
        )
        base = f"http://127.0.0.1:{http_port}"
        figures: list[CallerFigures] = []
        with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp):
            for n in range(CALLS):
                timeline = run_caller(
                    sync_api,
                    CHROMIUM,
                    CHROMIUM_ARGS,
                    base + "/v1/realtime/calls",
                    wav,
                    script.duration + 1.0,
                    tmp / f"profile-{n}",
                )
                self.assertEqual(timeline.delete_status, 204, timeline.console)
                figures.append(caller_figures(timeline))
        for n, f in enumerate(figures):
            print(
                f"call {n}: end of turn -> reply heard {f.turn_latency_ms} ms; talking over the reply ->"
                f" silent {f.silent_after_barge_in_ms} ms (server's barge_in_ms {f.server_barge_in_ms});"
                f" next reply starts with a burst: {f.burst} ({f.burst_ms} ms sound, {f.gap_ms} ms gap)"
            )
        latencies = [f.turn_latency_ms for f in figures if f.turn_latency_ms is not None]
        silences = [f.silent_after_barge_in_ms for f in figures if f.silent_after_barge_in_ms is not None]
        servers = [ms for f in figures for ms in f.server_barge_in_ms]
        print(
            f"median of {CALLS} calls: reply heard {statistics.median(latencies):.0f} ms after the turn;"
            f" silent {statistics.median(silences):.0f} ms after the caller talks over it, server's own"
            f" {statistics.median(servers):.0f} ms; bursts in {sum(f.burst for f in figures)}/{CALLS}"
        )
        # What must hold today.
        self.assertEqual(len(latencies), CALLS, figures)
        for f in figures:
            assert f.turn_latency_ms is not None
            # The parrot answers only after the silence that ends the turn.
            self.assertGreaterEqual(f.turn_latency_ms, SILENCE_MS - 100, f)
            self.assertTrue(f.playing_at_barge_in, f)
            self.assertIsNotNone(f.silent_after_barge_in_ms, f)
            self.assertEqual(len(f.server_barge_in_ms), 1, f)
