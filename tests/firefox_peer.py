# -*- test-case-name: tests.test_firefox_peer -*-
"""Debian's Firefox ESR, headless with a fake microphone, as an independent WebRTC peer for tests.

No WebDriver: nothing on Debian drives ``firefox-esr`` without geckodriver,
which Debian does not package and which cannot be downloaded here, and PyPI's
``marionette-driver`` pulls in sixteen Mozilla packages for what a page can do
itself. So a :class:`FirefoxHarness` serves a page (``tests/browser_call/
call.html``) from a small HTTP server on loopback, starts ``firefox-esr
--headless --no-remote --profile <fresh profile> <page URL>``, and the page
makes the call (POST the offer to the URL it is given), measures it with
``performance.now()`` and ``getStats()``, hangs up with ``DELETE`` and POSTs
its result back as JSON. The profile's ``user.js`` fakes the microphone, grants
it without a prompt, allows loopback ICE candidates and turns off updates,
telemetry and every background connection.

    with FirefoxHarness(log_dir=tmp) as firefox:
        result = firefox.call("http://127.0.0.1:PORT/offer", seconds=5)

The page's origin (``firefox.origin``) differs from the target's, so the
target must allow it by CORS (pionecho allows any; for voiceedge set
``[signaling] cors_origins``). Raises :class:`unittest.SkipTest` when
``firefox-esr`` is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Mapping

from tests.support import REPO_ROOT

__all__ = ["FIREFOX", "FirefoxFailed", "FirefoxHarness", "firefox_call", "require_firefox", "user_prefs"]

FIREFOX = os.environ.get("VOICEEDGE_FIREFOX", "firefox-esr")
PAGE = REPO_ROOT / "tests" / "browser_call" / "call.html"

# A fresh profile's user.js: a fake microphone granted without a prompt,
# loopback ICE candidates, and no updates, telemetry or background traffic.
_PREFS: dict[str, object] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    # Loopback candidates: the tests' servers listen on 127.0.0.1 only. Firefox
    # gathers on the default route's interface alone unless the page holds a
    # microphone permission: a granted prompt, or this default.
    "media.peerconnection.ice.loopback": True,
    "permissions.default.microphone": 1,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-gmpopenh264.enabled": False,
    "media.gmp-gmpopenh264.autoupdate": False,
    "devtools.console.stdout.content": True,
    # Microsecond performance.now() for the page's timings (1 ms steps otherwise).
    "privacy.reduceTimerPrecision": False,
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.update.checkInstallTime": False,
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.sessionstore.resume_from_crash": False,
    "browser.tabs.warnOnClose": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.search.update": False,
    "browser.region.update.enabled": False,
    "browser.region.network.url": "",
    "browser.ping-centre.telemetry": False,
    "browser.discovery.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.startup.max_resumed_crashes": -1,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "services.settings.server": "http://127.0.0.1:1/",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.predictor.enabled": False,
    "network.trr.mode": 5,
    "network.proxy.type": 0,
    "dom.push.enabled": False,
    "dom.push.connection.enabled": False,
    "security.OCSP.enabled": 0,
    "security.remote_settings.crlite_filters.enabled": False,
}


class FirefoxFailed(RuntimeError):
    """Firefox did not report a result: it did not start, crashed, or the page hung."""


def require_firefox() -> str:
    """The path of firefox-esr, or :class:`unittest.SkipTest` when it is not installed."""
    path = shutil.which(FIREFOX)
    if path is None:
        raise unittest.SkipTest(f"{FIREFOX} is not installed (apt-get install firefox-esr)")
    return path


def user_prefs(extra: Mapping[str, object] | None = None) -> str:
    """The text of a user.js: the harness's prefs, then ``extra`` over them."""
    prefs = dict(_PREFS)
    prefs.update(extra or {})
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


class _Reports:
    """What pages POSTed back, by call id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, list[str]] = {}
        self.arrived = threading.Condition(self.lock)


def _handler(reports: _Reports, page: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if urllib.parse.urlsplit(self.path).path == "/call.html":
                self._reply(200, page, "text/html; charset=utf-8")
            else:
                self._reply(404)

        def do_POST(self) -> None:  # noqa: N802
            length = min(int(self.headers.get("Content-Length") or 0), 4 << 20)
            body = self.rfile.read(length)
            kind, _, call_id = self.path.strip("/").partition("/")
            with reports.lock:
                if kind == "report":
                    reports.results[call_id] = json.loads(body)
                    reports.arrived.notify_all()
                elif kind == "log":
                    reports.logs.setdefault(call_id, []).append(body.decode("utf-8", "replace"))
                else:
                    self._reply(404)
                    return
            self._reply(204)

    return Handler


class FirefoxHarness:
    """A page server on a free loopback port, and Firefox runs that call from it.

    Use as a context manager; :meth:`call` starts one headless Firefox with a
    fresh profile per call and returns the page's result (a dict: ``ok``,
    ``error``, timings in ms since the PeerConnection was made —
    ``offer_ready_ms``, ``http_answer_ms``, ``ice_connected_ms``,
    ``dtls_connected_ms``, ``pc_connected_ms``, ``datachannel_open_ms``,
    ``first_audio_ms``, ``first_dc_message_ms`` —, ``in_pps``, ``inbound``
    (getStats: packets, loss, jitter, concealment), ``candidate_pair``,
    ``dc_types``, ``restart``, ``ended``, ``delete_status``, ``states``).
    """

    def __init__(self, log_dir: Path | None = None) -> None:
        self.firefox = require_firefox()
        # Absolute: Firefox gets it as HOME and --profile (trial's mktemp() is relative).
        self.log_dir = (Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="firefox-"))).resolve()
        self._reports = _Reports()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``: the page's origin, for the target's CORS."""
        assert self._server is not None, "use FirefoxHarness as a context manager"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FirefoxHarness":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handler = _handler(self._reports, PAGE.read_bytes())
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="firefox-page", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def call(
        self,
        offer_url: str,
        *,
        seconds: float = 5.0,
        datachannel: str = "oai-events",
        events: Iterable[str | dict[str, Any]] = (),
        token: str | None = None,
        restart_at: float | None = None,
        wait_gathering: bool = True,
        setup_timeout: float = 10.0,
        sdp: bool = False,
        prefs: Mapping[str, object] | None = None,
        start_timeout: float = 60.0,
    ) -> dict[str, Any]:
        """One call from a fresh headless Firefox to ``offer_url``; the page's result.

        ``events`` go on the data channel once it opens; ``restart_at`` makes
        ``restartIce()`` that many seconds in and PATCHes the new offer
        (application/sdp); ``wait_gathering`` POSTs the offer once ICE
        gathering completes (non-trickle, as the Realtime clients do);
        ``sdp`` adds ``offer_sdp`` and ``answer_sdp``; ``prefs`` are extra user.js prefs. ``start_timeout`` bounds Firefox's
        start-up on a loaded machine, on top of the call itself.
        """
        call_id = uuid.uuid4().hex
        config = {
            "id": call_id,
            "offer_url": offer_url,
            "seconds": seconds,
            "datachannel": datachannel,
            "events": [e if isinstance(e, str) else json.dumps(e) for e in events],
            "token": token,
            "restart_at": restart_at,
            "wait_gathering": wait_gathering,
            "setup_timeout": setup_timeout,
            "sdp": sdp,
        }
        url = f"{self.origin}/call.html?" + urllib.parse.urlencode({"config": json.dumps(config)})
        run_dir = self.log_dir / f"firefox-{call_id[:8]}"
        profile, home = run_dir / "profile", run_dir / "home"
        profile.mkdir(parents=True)
        home.mkdir()
        (profile / "user.js").write_text(user_prefs(prefs))
        env = dict(os.environ)
        env.update(
            HOME=str(home),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_CONFIG_HOME=str(home / ".config"),
            MOZ_HEADLESS="1",
            MOZ_CRASHREPORTER_DISABLE="1",
            MOZ_DISABLE_AUTO_SAFE_MODE="1",
        )
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
        log_path = run_dir / "firefox.log"
        argv = [self.firefox, "--headless", "--no-remote", "--new-instance", "--profile", str(profile), url]
        with log_path.open("wb") as log:
            # Its own session, so that stopping it reaches its content processes too.
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            result = self._wait(call_id, proc, timeout=start_timeout + seconds + setup_timeout)
        except FirefoxFailed as e:
            logs = "\n".join(self._reports.logs.get(call_id, []))
            tail = log_path.read_text("utf-8", "replace")[-3000:]
            raise FirefoxFailed(f"{e}\npage log:\n{logs}\nfirefox log ({log_path}):\n{tail}") from None
        finally:
            _stop_group(proc)
        result["page_log"] = self._reports.logs.get(call_id, [])
        return result

    def _wait(self, call_id: str, proc: "subprocess.Popen[bytes]", timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._reports.arrived:
            while call_id not in self._reports.results:
                if proc.poll() is not None:
                    raise FirefoxFailed(f"firefox exited with {proc.returncode} before the page reported")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FirefoxFailed(f"no result from the page within {timeout:.0f} s")
                self._reports.arrived.wait(min(left, 0.5))
            return self._reports.results.pop(call_id)


def _stop_group(proc: "subprocess.Popen[bytes]") -> None:
    """SIGTERM Firefox's process group (it is the leader), then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def firefox_call(offer_url: str, *, log_dir: Path | None = None, **options: Any) -> dict[str, Any]:
    """One call from headless Firefox (options as :meth:`FirefoxHarness.call`) to a target that allows any origin."""
    with FirefoxHarness(log_dir=log_dir) as harness:
        return harness.call(offer_url, **options)
