# -*- test-case-name: tests.test_silence_playout -*-
"""Silence is not sent, and Chromium still plays every word on time: the echo through pauses, heard in the browser.

The transceiver neither encodes nor sends agent audio that nobody would hear
(below -70 dBFS, after the first such frame): the slots pass with nothing on
the wire, as with Opus DTX. This calls the all-in-one's echo from headless
Chromium whose microphone plays three sentences separated by two seconds of
digital silence (:mod:`tests.caller_view` records what the page sends and
hears every 10 ms), and checks that every sentence is heard back, whole and
as promptly after a pause as the first one, that nothing is heard in the
pauses, that the browser counted no lost packet, and that the server really
sent nothing through the pauses.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from twisted.trial.unittest import SkipTest, TestCase

from tests import speech_corpus
from tests.caller_view import VOICE_DB, CallerTimeline, _segments, run_caller
from tests.support import free_tcp_port, free_udp_port, running_service, write_allinone_config
from tests.chromium_peer import CHROMIUM

RATE = 48000
SENTENCES = ("Hello, can you hear me?", "I am calling about my order.", "Thank you, goodbye.")
PAUSE = 2.0
# Echo latency through the browser's jitter buffer and ours, on a loaded machine.
MAX_LATENCY = 0.5
# What the page may hear in a pause: nothing above the inaudible.
PAUSE_DB = -60.0
# Calls made at most, until one is also on time (a loaded machine can make Chromium late).
CALLS = 3


def pauses_wav(path: Path) -> list[tuple[float, float]]:
    """Write the caller's script (1 s silence, a sentence, 2 s silence, ...): the sentences' spans."""
    parts, spans, at = [np.zeros(RATE)], [], 1.0
    for text in SENTENCES:
        said = speech_corpus.say(text, "en-us", RATE)
        said *= 10 ** (-20 / 20) * 32768 / max(1.0, float(np.sqrt(np.mean(said**2))))
        spans.append((at, at + len(said) / RATE))
        parts += [said, np.zeros(int(PAUSE * RATE))]
        at += len(said) / RATE + PAUSE
    pcm = np.clip(np.round(np.concatenate(parts)), -32768, 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(pcm)
    return spans


@pytest.mark.browser
@pytest.mark.integration
class SilencePlayoutTests(TestCase):
    """The echo through pauses in a real browser."""

    def test_every_sentence_is_heard_after_pauses_that_were_not_sent(self) -> None:
        """Three sentences, two 2 s pauses of digital silence: heard whole and on time, nothing lost."""
        if not CHROMIUM.exists():
            raise SkipTest(f"{CHROMIUM} is not installed")
        if not speech_corpus.available():
            raise SkipTest("espeak-ng and sox are needed")
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        wav = tmp / "caller.wav"
        pauses_wav(wav)
        http_port, media_port = free_tcp_port(), free_udp_port()
        ini = write_allinone_config(tmp, http_port, media_port, signaling={"cors_origins": "*"})
        base = f"http://127.0.0.1:{http_port}"
        timing_failures = []
        with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp):
            with wave.open(str(wav)) as f:
                seconds = f.getnframes() / RATE
            for attempt in range(CALLS):
                timeline = run_caller(
                    "chromium", base + "/v1/realtime/calls", wav, seconds + 1.0, tmp / f"profile-{attempt}"
                )
                problem = self.check_call(timeline)
                if problem is None:
                    break
                timing_failures.append(problem)
                print(f"call {attempt}: {problem}")
        self.assertLess(len(timing_failures), CALLS, timing_failures)

    def check_call(self, timeline: CallerTimeline) -> str | None:
        """Assert what must hold in every call; return why its timing was off, or None.

        Losing nothing, sending nothing in the pauses, every sentence heard and
        not cut short hold whatever the load. How soon a sentence is heard and
        how long it lasts in the browser also depend on how late the machine
        let Chromium and the server run: a call that misses those is retried.
        """
        self.assertEqual(timeline.delete_status, 204, timeline.log)
        said = _segments(timeline.sent, VOICE_DB, bridge=0.5)
        heard = _segments(timeline.heard, VOICE_DB, bridge=0.5)
        inbound = timeline.inbound
        print(f"said {said}\nheard {heard}\nbrowser inbound-rtp: {inbound}\nserver: {timeline.server}")
        self.assertEqual(len(said), len(SENTENCES), said)
        self.assertEqual(len(heard), len(SENTENCES), (said, heard))
        # Nothing heard in the pauses (past the echo of the sentence before): the
        # browser's concealment of the gap stays as quiet as the audio before it.
        times, levels = timeline.heard[:, 0], timeline.heard[:, 1]
        for (_, h1), (h0, _) in zip(heard, heard[1:]):
            inside = (times > h1 + 0.1) & (times < h0 - 0.05)
            print(f"loudest 10 ms in the pause: {levels[inside].max():.1f} dBFS")
            self.assertTrue(np.all(levels[inside] < PAUSE_DB), levels[inside].max())
        # The browser lost nothing: the silent slots used no sequence numbers.
        self.assertEqual(inbound.get("packetsLost"), 0, inbound)
        # And the pauses were really not sent: fewer packets than a continuous stream.
        expected_continuous = (times[-1] - times[0]) * 50
        self.assertLess(inbound["packetsReceived"], 0.8 * expected_continuous, inbound)
        latencies = []
        for (s0, s1), (h0, h1) in zip(said, heard):
            latencies.append(h0 - s0)
            # Not cut: the start of every sentence is heard, however late.
            self.assertGreaterEqual(h1 - h0, (s1 - s0) - 0.15, (said, heard))
        if not all(0 <= latency <= MAX_LATENCY for latency in latencies):
            return f"a sentence heard later than {MAX_LATENCY} s: {latencies}"
        for (s0, s1), (h0, h1) in zip(said, heard):
            # Whole and not stretched: it lasts as long as what was said (10 ms blocks, a little jitter).
            if abs((h1 - h0) - (s1 - s0)) > 0.15 + 0.1 * (s1 - s0):
                return f"heard {h1 - h0:.2f} s of a {s1 - s0:.2f} s sentence"
        # No delay built up across a pause: a resumed sentence comes as soon as the first.
        if max(latencies[1:]) - latencies[0] > 0.1:
            return f"later after a pause: {latencies}"
        return None
