# -*- test-case-name: tests.test_caller_view -*-
"""What the caller hears, measured in Chromium: a scripted caller, its 10 ms level timelines, the figures.

:func:`scripted_caller_wav` writes the caller's script as a WAV file: silence, a
sentence, a pause long enough for the agent to answer, a second sentence said
over the answer (a barge-in), then silence.  :func:`run_caller` launches Debian's
headless Chromium with that file as its fake microphone
(``--use-file-for-fake-audio-capture``), opens ``tests/caller_view.html`` from a
local HTTP server, calls a voiceedge endpoint, records the level of what the
page sends and of what it hears every 10 ms on one AudioContext clock, reads the
server's own figures from ``GET <Location>`` before hanging up, and returns a
:class:`CallerTimeline`.  :func:`caller_figures` reads from it:

- **turn latency**: end of the caller's first sentence (the last 10 ms block
  above ``VOICE_DB`` sent) to the first block of the reply heard above ``VOICE_DB``;
- **barge-in, caller's view**: the caller's second sentence starts (first block
  sent above ``VOICE_DB``) to the reply being silent in the browser (every block
  below ``SILENT_DB`` for ``QUIET_SECONDS``);
- **burst**: whether the next reply opens with a short burst of sound, then
  silence, then the words (``burst_ms``, ``gap_ms``).

The page needs CORS from the endpoint (``[signaling] cors_origins``).
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
import wave
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tests import speech_corpus
from tests.support import LOOPBACK, free_tcp_port, http_get

__all__ = [
    "CallerFigures",
    "CallerTimeline",
    "caller_figures",
    "run_caller",
    "scripted_caller_wav",
    "serve_page",
]

RATE = 48000
VOICE_DB = -45.0
SILENT_DB = -50.0
QUIET_SECONDS = 0.15
# Sound this short, then silence, at the start of a reply is a burst, not the words.
BURST_MAX_SECONDS = 0.08
BURST_GAP_SECONDS = 0.03
PAGE = Path(__file__).resolve().parent / "caller_view.html"

FIRST = "The quick brown fox jumps over the lazy dog, near the bank of the river."
SECOND = "Wait a moment, I have a question for you."


@dataclass(frozen=True, slots=True)
class Script:
    """Where the caller's sentences are in its WAV file (seconds from its start)."""

    first: tuple[float, float]
    second: tuple[float, float]
    duration: float


def scripted_caller_wav(path: Path, barge_after: float = 2.0, voice: str = "en-us") -> Script:
    """Write the caller's script to ``path`` (48 kHz mono PCM16): 1 s of silence, :data:`FIRST`,
    ``barge_after`` seconds, :data:`SECOND` (over the agent's answer), 6 s of silence."""
    first = speech_corpus.say(FIRST, voice, RATE)
    second = speech_corpus.say(SECOND, voice, RATE)
    scale = 10 ** (-20 / 20) * 32768 / max(1.0, float(np.sqrt(np.mean(first**2))))
    lead, tail = int(1.0 * RATE), int(6.0 * RATE)
    gap = int(barge_after * RATE)
    audio = np.concatenate(
        [np.zeros(lead), first * scale, np.zeros(gap), second * scale, np.zeros(tail)]
    )
    pcm = np.clip(np.round(audio), -32768, 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(pcm)
    first_span = (1.0, 1.0 + len(first) / RATE)
    second_start = first_span[1] + barge_after
    return Script(first_span, (second_start, second_start + len(second) / RATE), len(audio) / RATE)


@contextmanager
def serve_page() -> Iterator[str]:
    """Serve ``tests/`` (the measuring page) on a free loopback port; yields the page's URL."""
    port = free_tcp_port()
    handler = functools.partial(_QuietHandler, directory=str(PAGE.parent))
    server = http.server.ThreadingHTTPServer((LOOPBACK, port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{port}/{PAGE.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(slots=True)
class CallerTimeline:
    """What one scripted call sent and heard: rows of (AudioContext seconds, dBFS) every 10 ms."""

    sent: np.ndarray
    heard: np.ndarray
    server: dict[str, Any]
    delete_status: int | None
    console: list[str]
    #: The browser's ``inbound-rtp`` statistics (getStats) just before hanging up.
    inbound: dict[str, Any] = field(default_factory=dict)


def run_caller(
    sync_api: Any,
    chromium: Path,
    chromium_args: list[str],
    endpoint: str,
    wav: Path,
    seconds: float,
    profile: Path,
) -> CallerTimeline:
    """One call from a new Chromium whose microphone plays ``wav``; see the module doc."""
    console: list[str] = []
    args = [*chromium_args, f"--use-file-for-fake-audio-capture={wav}%noloop"]
    with serve_page() as page_url, sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(chromium), headless=True, args=args
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(page_url)
            page.evaluate("endpoint => window.startCall(endpoint)", endpoint)
            view = page.evaluate("window.callerView")
            if view["error"]:
                raise AssertionError(f"the call did not start: {view['error']}; {console}")
            page.wait_for_function("window.callerView.state === 'connected'", timeout=15_000)
            page.wait_for_timeout(seconds * 1000)
            view = page.evaluate("window.callerView")
            inbound = page.evaluate(_INBOUND_JS)
            status, body = http_get(view["sessionUrl"])
            server = json.loads(body) if status == 200 else {"status": status}
            delete_status = page.evaluate("window.hangUp()")
        finally:
            context.close()
    sent = np.array(view["sent"], dtype=float).reshape(-1, 2)
    heard = np.array(view["heard"], dtype=float).reshape(-1, 2)
    return CallerTimeline(sent, heard, server, delete_status, console, inbound or {})


_INBOUND_JS = """async () => {
  let found = null;
  (await window.callerPc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") found = s;
  });
  return found && JSON.parse(JSON.stringify(found));
}"""


def _segments(rows: np.ndarray, threshold: float, bridge: float) -> list[tuple[float, float]]:
    """(start, end) of runs of blocks above ``threshold``, gaps under ``bridge`` seconds bridged."""
    out: list[tuple[float, float]] = []
    for t, level in rows:
        if level <= threshold:
            continue
        start = t - 0.01
        if out and start - out[-1][1] < bridge:
            out[-1] = (out[-1][0], t)
        else:
            out.append((start, t))
    return out


@dataclass(frozen=True, slots=True)
class CallerFigures:
    """The caller's figures of one call (ms); None where the call did not show it."""

    turn_latency_ms: float | None
    playing_at_barge_in: bool
    silent_after_barge_in_ms: float | None
    burst: bool
    burst_ms: float | None
    gap_ms: float | None
    server_barge_in_ms: list[float]


def caller_figures(timeline: CallerTimeline) -> CallerFigures:
    """Read the figures (see the module doc) from one call's timelines."""
    said = _segments(timeline.sent, VOICE_DB, bridge=0.5)
    if len(said) < 2:
        raise AssertionError(f"the caller's two sentences were not sent: {said}")
    (first_start, first_end), (barge_at, second_end) = said[0], said[1]
    heard = timeline.heard
    times, levels = heard[:, 0], heard[:, 1]

    after_first = np.nonzero((times > first_end) & (levels > VOICE_DB))[0]
    turn_latency = None
    if len(after_first) and times[after_first[0]] < barge_at:
        turn_latency = (times[after_first[0]] - 0.01 - first_end) * 1000

    playing = bool(np.any((times > barge_at - 0.3) & (times <= barge_at) & (levels > VOICE_DB)))
    silent_after = None
    quiet = int(round(QUIET_SECONDS / 0.01))
    start = int(np.searchsorted(times, barge_at))
    for i in range(start, len(times) - quiet):
        if np.all(levels[i : i + quiet] < SILENT_DB):
            silent_after = (times[i] - 0.01 - barge_at) * 1000
            break

    # The next reply: the first sound heard after the caller's second sentence.
    burst, burst_ms, gap_ms = False, None, None
    onset = np.nonzero((times > second_end) & (levels > VOICE_DB))[0]
    if len(onset):
        i = int(onset[0])
        j = i
        while j < len(levels) and levels[j] >= SILENT_DB:
            j += 1
        k = j
        while k < len(levels) and levels[k] < SILENT_DB:
            k += 1
        sound, gap = (j - i) * 0.01, (k - j) * 0.01
        if sound <= BURST_MAX_SECONDS and gap >= BURST_GAP_SECONDS and k < len(levels):
            burst, burst_ms, gap_ms = True, sound * 1000, gap * 1000
    return CallerFigures(
        turn_latency,
        playing,
        silent_after,
        burst,
        burst_ms,
        gap_ms,
        list(timeline.server.get("barge_in_ms", [])),
    )
