# -*- test-case-name: tests.test_sdk -*-
"""OpenAI's own browser SDK against voiceedge: ``@openai/agents-realtime``, unmodified, in Chromium with web security on.

For each built-in agent the all-in-one runs with API keys and CORS for the
page's origin (another port, so another origin). The test's "backend" asks
``POST /v1/realtime/client_secrets`` for an ``ek_`` key; the page, served from
its own origin, hands it to the SDK and calls ``connect({apiKey, url})``, then
sends two messages (``sendMessage``), each of which must get
``response.created`` and ``response.done``; audio must play and the SDK's
typed events fire; finally the server hangs the call up (``DELETE``) and the
SDK must see itself disconnected.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import wave
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.sdk_bundle import sdk_bundle
from tests.support import (
    REPO_ROOT,
    free_tcp_port,
    free_udp_port,
    health_sessions,
    running_service,
    write_allinone_config,
)

CHROMIUM = Path("/usr/bin/chromium")
BACKEND = REPO_ROOT / "tests" / "fixtures" / "bridge" / "echo_backend.py"
# The page waits this long for each step before it reports what it saw.
STEP_MS = 15_000

# The page: a script tag for the bundle, an audio element the SDK plays into, and
# the functions the test calls. Everything the SDK does is recorded with a time.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>voiceedge + @openai/agents-realtime</title></head>
<body>
<audio id="out" autoplay></audio>
<script src="/sdk.js"></script>
<script>
const t0 = performance.now();
const log = [];
const note = (name, extra) => log.push(Object.assign({name, at: performance.now() - t0}, extra || {}));
window.voiceedgeLog = log;
window.note = note;

window.connectSdk = async (apiKey, url) => {
  const {OpenAIRealtimeWebRTC, RealtimeAgent, RealtimeSession} = window.AgentsRealtime;
  const transport = new OpenAIRealtimeWebRTC({audioElement: document.getElementById("out")});
  const agent = new RealtimeAgent({name: "tester", instructions: "Be brief."});
  const session = new RealtimeSession(agent, {transport});
  for (const kind of ["session.created", "session.updated", "response.created", "response.done",
                      "output_audio_buffer.started", "output_audio_buffer.stopped",
                      "output_audio_buffer.cleared", "conversation.item.added",
                      "input_audio_buffer.speech_started", "input_audio_buffer.committed"]) {
    transport.on(kind, (e) => note("typed:" + kind, {event_id: e.event_id,
      status: e.response ? e.response.status : undefined,
      instructions: e.session ? e.session.instructions : undefined}));
  }
  transport.on("connection_change", (status) => note("connection:" + status));
  session.on("agent_start", () => note("agent_start"));
  session.on("agent_end", () => note("agent_end"));
  session.on("history_updated", () => note("history_updated"));
  session.on("error", (e) => note("error", {error: String((e.error && (e.error.message || JSON.stringify(e.error))) || e)}));
  session.on("transport_event", (e) => note("event:" + e.type, {event_id: e.event_id}));
  window.sdk = {transport, session};
  const started = performance.now();
  await session.connect({apiKey, url});
  const connectMs = performance.now() - started;
  note("connected");
  return {connectMs, callId: transport.callId};
};

window.until = (test, ms) => new Promise((resolve) => {
  const start = performance.now();
  const poll = () => {
    if (test() || performance.now() - start > ms) resolve(test());
    else setTimeout(poll, 20);
  };
  poll();
});

window.twoTurns = async (ms) => {
  const count = (name) => log.filter((e) => e.name === name).length;
  const before = count("typed:response.done");
  note("send");
  window.sdk.session.sendMessage("Hello, first turn.");
  window.sdk.session.sendMessage("And a second one.");
  await window.until(() => count("typed:response.done") >= before + 2, ms);
};

window.inboundAudio = async () => {
  const pc = window.sdk.transport.connectionState.peerConnection;
  if (!pc) return null;
  const stats = await pc.getStats();
  for (const s of stats.values()) {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      return {packets: s.packetsReceived, energy: s.totalAudioEnergy || 0, samples: s.totalSamplesReceived || 0};
    }
  }
  return null;
};
</script>
</body></html>
"""


def require_browser() -> Any:
    """playwright's sync API, or SkipTest when chromium or playwright is missing."""
    if not CHROMIUM.exists():
        raise SkipTest(f"{CHROMIUM} is not installed")
    try:
        from playwright import sync_api
    except ImportError:
        raise SkipTest("playwright is not installed") from None
    if shutil.which("npm") is None:
        raise SkipTest("npm is not installed (scripts/test installs it)")
    return sync_api


def speech_wav(directory: Path) -> Path:
    """A few words from espeak-ng then silence, 48 kHz mono: the fake microphone says it over and over."""
    raw, wav = directory / "speech-raw.wav", directory / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "Hello there, this is the microphone."], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", "-e", "signed-integer", str(wav), "pad", "0.3", "2.5"],
        check=True,
        capture_output=True,
    )
    with wave.open(str(wav)) as f:
        assert f.getframerate() == 48000 and f.getnchannels() == 1
    return wav


@contextmanager
def static_origin(bundle: Path) -> Iterator[str]:
    """The test page and the bundled SDK, served from their own origin; its URL."""
    page = PAGE.encode("utf-8")
    script = bundle.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body, kind = (page, "text/html") if self.path == "/" else (script, "text/javascript")
            if self.path not in ("/", "/sdk.js"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind + "; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def turn_taking_backend() -> Iterator[str]:
    """The example bridge backend, taking turns (``?turns=yes``); its URL."""
    process = subprocess.Popen([sys.executable, str(BACKEND), "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 15
        line = process.stdout.readline()
        while not line.startswith(b"listening"):
            if not line or time.monotonic() > deadline:
                raise AssertionError(f"the bridge backend did not start: {line!r}")
            line = process.stdout.readline()
        yield f"ws://127.0.0.1:{int(line.split()[1])}/agent?turns=yes"
    finally:
        process.kill()
        process.wait(5)


def post_json(url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON with a Bearer key; the decoded answer."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def hang_up(url: str, key: str) -> int:
    """DELETE the call with the API key that issued its client secret; the status."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"}, method="DELETE")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return int(answer.status)


@pytest.mark.browser
@pytest.mark.integration
class OfficialSdkTests(SynchronousTestCase):
    """@openai/agents-realtime 0.20.0, unmodified, against the all-in-one with each built-in agent."""

    def setUp(self) -> None:
        self.sync_api = require_browser()
        if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
            raise SkipTest("espeak-ng and sox are needed for the fake microphone")
        self.bundle = sdk_bundle()
        self.tmp = Path(self.mktemp()).resolve()  # other processes read files in it
        self.tmp.mkdir(parents=True)
        self.wav = speech_wav(self.tmp)

    def call(self, agent: str, **agent_options: Any) -> dict[str, Any]:
        """One call from the SDK to the all-in-one running ``agent``; what the page saw."""
        api_key = "sk_" + secrets.token_urlsafe(32)
        keys = self.tmp / "api-keys"
        keys.write_text(f"sdk-test sha256:{hashlib.sha256(api_key.encode()).hexdigest()}\n")
        with ExitStack() as stack:
            origin = stack.enter_context(static_origin(self.bundle))
            if agent == "bridge":
                agent_options = {"url": stack.enter_context(turn_taking_backend()), "connect_timeout": 3}
            http_port, media_port = free_tcp_port(), free_udp_port()
            sections: dict[str, Any] = {
                "signaling": {"cors_origins": origin, "auth": "keys", "api_keys_file": str(keys)},
                "agent": {"name": agent},
            }
            if agent_options:
                sections[f"agent.{agent}"] = agent_options
            ini = write_allinone_config(self.tmp, http_port, media_port, **sections)
            base = f"http://127.0.0.1:{http_port}"
            stack.enter_context(running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=self.tmp))
            # The secret's session settings are the call's first configuration.
            settings = {"type": "realtime", "instructions": "Say it back."}
            secret = post_json(base + "/v1/realtime/client_secrets", api_key, {"session": settings})
            self.assertTrue(secret["value"].startswith("ek_"), secret)
            result = self.drive(origin, secret["value"], base, api_key)
            deadline = time.monotonic() + 5
            while health_sessions(base + "/healthz") and time.monotonic() < deadline:
                time.sleep(0.1)
            result["sessions_left"] = health_sessions(base + "/healthz")
        return result

    def drive(self, origin: str, ek: str, base: str, api_key: str) -> dict[str, Any]:
        """Open the page, connect the SDK, two turns, listen, hang up from the server."""
        with self.sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                # Web security stays on: no --disable-web-security, the page is another origin.
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={self.wav}",
                    "--autoplay-policy=no-user-gesture-required",
                    "--disable-background-networking",
                    "--disable-component-update",
                ],
            )
            try:
                page = browser.new_page()
                console: list[str] = []
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.goto(origin + "/")
                connected = page.evaluate("([key, url]) => window.connectSdk(key, url)", [ek, base + "/v1/realtime/calls"])
                # The fake microphone's sentence first, so an agent has something to say back.
                page.wait_for_timeout(1500)
                page.evaluate("(ms) => window.twoTurns(ms)", STEP_MS)
                # Let the agent's audio play: the echo at once, the parrot after the fake mic's sentence.
                page.evaluate(
                    "(ms) => window.until(() => window.voiceedgeLog.some(e => e.name === 'typed:output_audio_buffer.started'), ms)",
                    STEP_MS,
                )
                page.wait_for_timeout(1500)
                audio = page.evaluate("() => window.inboundAudio()")
                page.evaluate("() => window.note('hangup')")
                status = hang_up(f"{base}/v1/realtime/calls/{connected['callId']}", api_key)
                page.evaluate(
                    "(ms) => window.until(() => window.voiceedgeLog.some(e => e.name === 'connection:disconnected'), ms)",
                    STEP_MS,
                )
                log = page.evaluate("() => window.voiceedgeLog")
            finally:
                browser.close()
        return {"connected": connected, "audio": audio, "delete": status, "log": log, "console": console}

    def check(self, agent: str, result: dict[str, Any]) -> None:
        """What every agent must show the SDK."""
        log, console = result["log"], result["console"]
        names = [e["name"] for e in log]
        first: dict[str, float] = {}
        for e in log:
            first.setdefault(e["name"], e["at"])
        connect_ms = result["connected"]["connectMs"]
        # The SDK resolves connect() on session.updated; without it, after its 5 s timeout.
        self.assertLess(connect_ms, 1000, (connect_ms, console))
        self.assertNotIn("Timed out waiting for session.updated", "\n".join(console))
        [created_event] = [e for e in log if e["name"] == "typed:session.created"]
        self.assertEqual(created_event["instructions"], "Say it back.")
        self.assertIn("typed:session.updated", names)
        # Two sendMessage() turns: each got response.created and response.done.
        created = [e for e in log if e["name"] == "typed:response.created"]
        done = [e for e in log if e["name"] == "typed:response.done"]
        self.assertGreaterEqual(len(created), 2, (names, console))
        self.assertGreaterEqual(len(done), 2, (names, console))
        self.assertGreaterEqual(names.count("agent_start"), 2)
        self.assertGreaterEqual(names.count("agent_end"), 2)
        self.assertIn("history_updated", names)  # conversation.item.added of the messages
        self.assertIn("typed:output_audio_buffer.started", names, (names, console))
        errors = [e for e in log if e["name"] == "error"]
        self.assertEqual(errors, [], errors)
        # Every event the SDK got had an event_id, and none twice.
        ids = [e["event_id"] for e in log if e["name"].startswith("event:")]
        self.assertTrue(all(ids), [e for e in log if e["name"].startswith("event:") and not e["event_id"]])
        self.assertEqual(len(ids), len(set(ids)))
        # Audio played.
        audio = result["audio"]
        self.assertIsNotNone(audio)
        self.assertGreater(audio["packets"], 25, audio)
        self.assertGreater(audio["energy"], 0, audio)
        # The server hung up; the SDK saw it.
        self.assertEqual(result["delete"], 204)
        self.assertIn("connection:disconnected", names, (names[-20:], console))
        self.assertEqual(result["sessions_left"], 0)
        turn = [d["at"] - c["at"] for c, d in zip(created, done)]
        print(
            f"\n{agent}: connect() {connect_ms:.0f} ms; response.created -> response.done {[round(t) for t in turn]} ms; "
            f"sendMessage() x2 -> second response.done {done[-1]['at'] - first['send']:.0f} ms; "
            f"disconnected {first['connection:disconnected'] - first['hangup']:.0f} ms after the DELETE; audio {audio}"
        )

    def test_echo(self) -> None:
        """The echo makes no turns: each response.create completes at once; its audio plays outside them."""
        self.check("echo", self.call("echo"))

    def test_parrot(self) -> None:
        """The parrot says the fake microphone's sentence back as a turn; response.create repeats it."""
        self.check("parrot", self.call("parrot"))

    def test_bridge(self) -> None:
        """The bridge's backend answers turn.request with a turn of what it heard."""
        self.check("bridge", self.call("bridge"))
