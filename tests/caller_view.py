# -*- test-case-name: tests.test_caller_view -*-
"""What the caller hears, measured in the browser: a scripted caller, its 10 ms level timelines, the figures.

:func:`scripted_caller_wav` writes the caller's script as a WAV file: silence, a
sentence, a pause long enough for the agent to answer, a second sentence said
over the answer (a barge-in), then silence.  :func:`run_caller` starts Debian's
headless Chromium or Firefox ESR on ``tests/caller_view.html``, served with the
WAV from a local HTTP server; the page plays the WAV into the call through Web
Audio once media flows (both browsers send the same script), records the level
of what it sends and of what it hears every 10 ms on one AudioContext clock and
the receiver's concealment counters every 50 ms, reads the server's own figures
from ``GET <Location>``, hangs up, and POSTs it all back: a
:class:`CallerTimeline`.  :func:`caller_figures` reads from it what the issue
describes:

- **turn latency**: end of the caller's first sentence (the last 10 ms block
  sent above ``VOICE_DB``) to the first block of the reply heard above ``VOICE_DB``;
- **barge-in, as heard**: the caller's second sentence starts (first block sent
  above ``VOICE_DB``) to the end of the last block of the reply heard above
  ``SILENT_DB`` before the next reply can start: a cut syllable that the
  browser's concealment stretches and fades counts until it is below
  ``SILENT_DB``, whatever pauses the reply had. The next reply can start once
  the sentence's turn ends: at the sentence's end, or, when the server heard a
  pause in it long enough to end a turn (``caller_turns`` > 1: on a loaded
  machine the browser's audio can be held up on its way), at the end of the
  first part, which the parrot then answers;
- **the same span, taken apart**: the server lists its turns and talkspurts on
  its clock (``GET <Location>``: ``speech``, ``playout``); on one machine that is
  the page's wall clock, so they are placed on the AudioContext timeline (the
  clock pairs the page samples every 50 ms) and the interruption → silence
  splits into: the caller's voice reaching the server (``to_server_onset_ms``),
  the server's own barge-in (its ``barge_in_ms``: that onset to the last packet,
  the fade), and the last packet → silence in the browser
  (``last_packet_to_silent_ms``: the jitter buffer ahead of the fade, and any
  concealment after it). ``first_packet_to_heard_ms`` is the browser's own way
  from a packet to the page (a talkspurt's first packet to its first sound);
- **concealment**: the receiver's ``concealedSamples`` less its
  ``silentConcealedSamples`` over the same span (a diagnostic: NetEq counts its
  faint comfort noise as not silent);
- **burst**: sound heard just before the next reply's words.  The parrot says
  the second sentence back, so the reply is aligned to what was sent by its
  level envelope, and every 10 ms block above ``SILENT_DB`` in the
  ``BURST_WINDOW`` before its words counts (``burst_ms``).

The page needs CORS from the endpoint (``[signaling] cors_origins``).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import unittest
import urllib.parse
import uuid
import wave
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tests import speech_corpus
from tests.firefox_peer import user_prefs
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
# The next reply cannot be heard sooner than this after the caller's second
# sentence (the end of turn, then the network): the first reply's sound is
# looked for up to here.
NEXT_REPLY_GUARD = 0.1
# Sound heard this long before the next reply's words is a burst...
BURST_WINDOW = 0.3
# ...unless it is this close to them: the envelopes sent and heard differ (Opus,
# the jitter buffer), so their alignment is good to a few 10 ms blocks.
BURST_MARGIN = 0.08
PAGE = Path(__file__).resolve().parent / "caller_view.html"

# No pause inside it: a detector may end a turn at a comma, and this script has one turn before the barge-in.
FIRST = "The quick brown fox jumps over the lazy dog near the bank of the river."
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


class _Pages:
    """What the page server holds: the WAV to serve, and the reports pages POST back, by call id."""

    def __init__(self, wav: bytes) -> None:
        self.wav = wav
        self.reports: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self.arrived = threading.Condition()


def _handler(pages: _Pages) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def _reply(self, status: int, body: bytes = b"", kind: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.partition("?")[0]
            pages.requests.append(f"GET {path}")
            if path == "/" + PAGE.name:
                self._reply(200, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif path == "/caller.wav":
                self._reply(200, pages.wav, "audio/wav")
            else:
                self._reply(404)

        def do_POST(self) -> None:  # noqa: N802
            kind, _, call_id = self.path.strip("/").partition("/")
            length = min(int(self.headers.get("Content-Length") or 0), 64 << 20)
            body = self.rfile.read(length)
            if kind == "log":
                pages.requests.append("log " + body.decode("utf-8", "replace"))
                self._reply(204)
                return
            if kind != "report" or not call_id:
                self._reply(404)
                return
            with pages.arrived:
                pages.reports[call_id] = json.loads(body)
                pages.arrived.notify_all()
            self._reply(204)

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser stopped mid-request (it is killed once it has reported): nothing to say.
        pass


@contextmanager
def serve_page(wav: Path) -> Iterator[tuple[str, _Pages]]:
    """Serve the measuring page and ``wav`` on a free loopback port; yields (origin, pages)."""
    pages = _Pages(wav.read_bytes())
    port = free_tcp_port()
    server = _QuietServer((LOOPBACK, port), _handler(pages))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{port}", pages
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass(slots=True)
class CallerTimeline:
    """What one scripted call sent and heard: rows of (AudioContext seconds, dBFS) every 10 ms, and
    the receiver's counters every 50 ms (:data:`STATS_COLUMNS`)."""

    sent: np.ndarray
    heard: np.ndarray
    stats: np.ndarray
    clock: np.ndarray
    server: dict[str, Any]
    delete_status: int | None
    browser: str
    log: str
    #: The browser's ``inbound-rtp`` statistics (getStats) just before hanging up.
    inbound: dict[str, Any] = field(default_factory=dict)


#: The columns of :attr:`CallerTimeline.stats` (inbound-rtp audio, from getStats).
STATS_COLUMNS = (
    "time",
    "packetsReceived",
    "totalSamplesReceived",
    "concealedSamples",
    "silentConcealedSamples",
    "concealmentEvents",
    "jitterBufferDelay",
    "jitterBufferEmittedCount",
    "insertedSamplesForDeceleration",
    "removedSamplesForAcceleration",
    "totalAudioEnergy",
    "totalSamplesDuration",
)

BROWSERS = ("chromium", "firefox")
CHROMIUM = Path("/usr/bin/chromium")
FIREFOX = Path("/usr/bin/firefox-esr")

# Over tests/firefox_peer.py's profile: Web Audio may start without a gesture,
# and host candidates on every interface (loopback included).
_FIREFOX_PREFS: dict[str, object] = {
    "media.autoplay.block-webaudio": False,
    "media.peerconnection.ice.default_address_only": False,
}


def browser_path(browser: str) -> Path:
    """Where Debian installs ``browser`` (``chromium`` or ``firefox``)."""
    if browser not in BROWSERS:
        raise ValueError(f"browser must be one of {BROWSERS}, not {browser!r}")
    return CHROMIUM if browser == "chromium" else FIREFOX


@contextmanager
def null_sound_server(where: Path) -> Iterator[dict[str, str]]:
    """A PulseAudio daemon with a null sink, for Firefox: it has no sound device here, and its
    audio graph runs only as fast as its output does (with no output at all, never; with
    Firefox's mock output, 8% slow). Yields the environment that points a client at it."""
    pulseaudio = shutil.which("pulseaudio")
    if pulseaudio is None:
        raise unittest.SkipTest("pulseaudio is not installed (apt-get install pulseaudio)")
    where.mkdir(parents=True, exist_ok=True)
    socket_path = where / "native"
    env = dict(os.environ, HOME=str(where), XDG_RUNTIME_DIR=str(where))
    argv = [
        pulseaudio, "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--disable-shm=yes",
        "--load=module-null-sink sink_name=null",
        f"--load=module-native-protocol-unix socket={socket_path} auth-anonymous=1",
    ]
    with (where / "pulseaudio.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pulseaudio did not start: {(where / 'pulseaudio.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield {"PULSE_SERVER": f"unix:{socket_path}"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _browser_command(browser: str, url: str, profile: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if browser == "chromium":
        from tests.chromium_peer import CHROMIUM_ARGS

        return [str(CHROMIUM), "--headless", *CHROMIUM_ARGS, f"--user-data-dir={profile}", url], env
    home = profile / "home"
    home.mkdir(parents=True, exist_ok=True)
    (profile / "user.js").write_text(user_prefs(_FIREFOX_PREFS))
    env.update(HOME=str(home), MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1", MOZ_DISABLE_AUTO_SAFE_MODE="1")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return [str(FIREFOX), "--headless", "--no-remote", "--new-instance", "--profile", str(profile), url], env


def run_caller(
    browser: str,
    endpoint: str,
    wav: Path,
    seconds: float,
    profile: Path,
    start_timeout: float = 60.0,
) -> CallerTimeline:
    """One call from a new headless ``browser`` whose voice is ``wav``; see the module doc.

    The browser runs in a process group of its own, stopped (SIGTERM, then
    SIGKILL) when the page has reported or the time is up.
    """
    path = browser_path(browser)
    if not path.exists():
        raise unittest.SkipTest(f"{path} is not installed")
    call_id = uuid.uuid4().hex
    profile.mkdir(parents=True, exist_ok=True)
    log_path = profile / "browser.log"
    with contextlib.ExitStack() as stack:
        sound = stack.enter_context(null_sound_server(profile / "pulse")) if browser == "firefox" else {}
        origin, pages = stack.enter_context(serve_page(wav))
        config = {
            "endpoint": endpoint,
            "wav": f"{origin}/caller.wav",
            "seconds": seconds,
            "report": f"{origin}/report/{call_id}",
        }
        url = f"{origin}/{PAGE.name}?" + urllib.parse.urlencode({"config": json.dumps(config)})
        argv, env = _browser_command(browser, url, profile)
        env.update(sound)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            deadline = time.monotonic() + start_timeout + seconds
            with pages.arrived:
                while call_id not in pages.reports:
                    left = deadline - time.monotonic()
                    if left <= 0 or proc.poll() is not None:
                        tail = log_path.read_text("utf-8", "replace")[-3000:]
                        raise AssertionError(
                            f"{browser} did not report (exit {proc.poll()}; requests {pages.requests}); its log:\n{tail}"
                        )
                    pages.arrived.wait(min(left, 0.5))
                view = pages.reports.pop(call_id)
        finally:
            _stop_group(proc)
    if view.get("error"):
        raise AssertionError(f"the call from {browser} failed: {view['error']}")
    return CallerTimeline(
        np.array(view["sent"], dtype=float).reshape(-1, 2),
        np.array(view["heard"], dtype=float).reshape(-1, 2),
        np.array(view["stats"], dtype=float).reshape(-1, len(STATS_COLUMNS)),
        np.array(view["clock"], dtype=float).reshape(-1, 2),
        view.get("server") or {},
        view.get("deleteStatus"),
        view.get("userAgent", browser),
        log_path.read_text("utf-8", "replace")[-2000:],
        view.get("inbound") or {},
    )


def _stop_group(proc: "subprocess.Popen[bytes]") -> None:
    """SIGTERM the browser's process group (it leads it), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


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
    """The caller's figures of one call (ms); None where the call did not show it. See the module doc."""

    turn_latency_ms: float | None
    playing_at_barge_in: bool
    silent_after_barge_in_ms: float | None
    concealed_ms: float | None
    burst_ms: float | None
    server_barge_in_ms: list[float]
    to_server_onset_ms: float | None = None
    to_last_packet_ms: float | None = None
    last_packet_to_silent_ms: float | None = None
    first_packet_to_heard_ms: float | None = None
    #: The turns the server heard in the caller's second sentence (one, unless it heard a pause in it
    #: long enough to end a turn), and the pauses between them on the server's clock (ms).
    caller_turns: int = 1
    turn_pauses_ms: list[float] = field(default_factory=list)

    @property
    def burst(self) -> bool:
        """Whether the next reply opened with sound before its words."""
        return bool(self.burst_ms)


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
    server = _server_times(timeline)
    # The server's turns in the second sentence: one, unless it heard a pause in it long enough
    # to end a turn (the caller's audio held up on its way), and then the next reply (to the
    # first part) may start before the sentence ends.
    turns = [] if server is None else [(a, b) for a, b in server[0] if a is not None and a > barge_at - 0.5]
    pauses = [
        (b_start - a_end) * 1000 for (_, a_end), (b_start, _) in zip(turns, turns[1:]) if a_end is not None
    ]
    next_reply_after = second_end
    if len(turns) > 1 and turns[0][1] is not None:
        next_reply_after = min(second_end, turns[0][1])
    # The reply is silent from the end of the last block above SILENT_DB heard
    # after the interruption, before the next reply can start.
    window = (times > barge_at) & (times <= next_reply_after + NEXT_REPLY_GUARD)
    loud = np.nonzero(window & (levels > SILENT_DB))[0]
    silent_after = None
    if np.any(window):
        silent_after = max(0.0, (times[loud[-1]] - barge_at) * 1000) if len(loud) else 0.0

    silent_at = None if silent_after is None else barge_at + silent_after / 1000
    to_onset = to_last = last_to_silent = natural = None
    if server is not None:
        speech, playout = server
        onsets = [start for start, _ in speech if start is not None and start > barge_at - 0.5]
        if onsets:
            to_onset = (onsets[0] - barge_at) * 1000
        cut = [last for _, last, reason in playout if reason == "barge_in" and last is not None]
        if cut:
            to_last = (cut[0] - barge_at) * 1000
            if silent_at is not None:
                last_to_silent = (silent_at - cut[0]) * 1000
        onsets_heard = []
        for start, _, _ in playout:
            loud_from = np.nonzero((times > start) & (times < start + 0.5) & (levels > SILENT_DB))[0]
            if len(loud_from):
                onsets_heard.append((times[loud_from[0]] - 0.01 - start) * 1000)
        if onsets_heard:
            # The browser's own way, at its quickest: a reply's first packet to its first sound.
            natural = float(min(onsets_heard))
    return CallerFigures(
        turn_latency,
        playing,
        silent_after,
        _concealed_ms(timeline.stats, barge_at, next_reply_after + NEXT_REPLY_GUARD),
        _burst_ms(timeline, barge_at, second_end),
        list(timeline.server.get("barge_in_ms", [])),
        to_onset,
        to_last,
        last_to_silent,
        natural,
        max(1, len(turns)),
        pauses,
    )


def _server_times(
    timeline: CallerTimeline,
) -> tuple[list[tuple[float | None, float | None]], list[tuple[float, float | None, str | None]]] | None:
    """The server's turns and talkspurts (``GET <Location>``) on the page's AudioContext clock."""
    clock = timeline.clock
    if len(clock) == 0 or "playout" not in timeline.server:
        return None
    offsets = clock[:, 1] / 1000 - clock[:, 0]

    def page(t: float) -> float:
        # Of the pairs within a second, the one sampled closest to the truth: the wall clock read
        # right after the context's time moved (a context that drifts is followed locally).
        near = np.abs(clock[:, 1] / 1000 - t) < 1.0
        return t - float(np.min(offsets[near] if np.any(near) else offsets))

    speech: list[tuple[float | None, float | None]] = [
        (page(a), None if b is None else page(b)) for a, b in timeline.server.get("speech", [])
    ]
    playout: list[tuple[float, float | None, str | None]] = [
        (page(a), None if b is None else page(b), reason) for a, b, reason in timeline.server["playout"]
    ]
    return speech, playout


def _concealed_ms(stats: np.ndarray, start: float, end: float) -> float | None:
    """Milliseconds of audio the receiver concealed between ``start`` and ``end`` that it did not
    count as silent (a diagnostic: NetEq counts its faint comfort noise as not silent)."""
    if len(stats) == 0:
        return None
    times = stats[:, 0]
    before = np.nonzero(times <= start)[0]
    after = np.nonzero(times >= end)[0]
    if not len(before) or not len(after):
        return None
    column = {name: i for i, name in enumerate(STATS_COLUMNS)}
    a, b = stats[before[-1]], stats[after[0]]
    concealed = b[column["concealedSamples"]] - a[column["concealedSamples"]]
    silent = b[column["silentConcealedSamples"]] - a[column["silentConcealedSamples"]]
    return float(max(0.0, concealed - silent) / RATE * 1000)


def _burst_ms(timeline: CallerTimeline, said_at: float, said_end: float) -> float | None:
    """Sound heard just before the next reply's words, in ms; None if no reply was heard.

    The parrot says the caller's second sentence back: the heard reply is
    aligned to what was sent by its level envelope, and any 10 ms block above
    SILENT_DB heard in the BURST_WINDOW before the aligned start of the words
    (but not within BURST_MARGIN of it, the alignment's error) is a burst.
    """
    sent, heard = timeline.sent, timeline.heard
    pick = (sent[:, 0] >= said_at - 0.2) & (sent[:, 0] <= said_end + 0.05)
    pattern = np.clip(sent[pick, 1], -70, 0) + 70
    reply = heard[:, 0] > said_end
    times = heard[reply, 0]
    levels = heard[reply, 1]
    if len(pattern) < 10 or len(levels) < len(pattern) or not np.any(levels > VOICE_DB):
        return None
    envelope = np.clip(levels, -70, 0) + 70
    score = np.correlate(envelope - envelope.mean(), pattern - pattern.mean(), mode="valid")
    lag = int(np.argmax(score))
    words_at = times[lag] + (said_at - sent[pick, 0][0])
    before = (times > words_at - BURST_WINDOW) & (times <= words_at - BURST_MARGIN) & (levels > SILENT_DB)
    return float(np.count_nonzero(before) * 10.0)
