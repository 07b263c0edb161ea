# -*- test-case-name: tests.test_signaling -*-
"""Tests for voiceedge.signaling.resource: the real Site fed raw HTTP bytes over an in-memory transport."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Mapping

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from voiceedge.signaling.interfaces import ISessionHost, OpenedSession, SessionRefused
from voiceedge.signaling.resource import STATIC_DIR, build_site
from voiceedge.signaling.settings import SignalingSettings

from tests.cases import case
from tests.http_support import (
    ANSWER,
    OFFER,
    Connection,
    FakeHost,
    Response,
    chunked,
    request_bytes,
)

def make_site(host: FakeHost, extra: Mapping[bytes, Any] = {}, **settings: Any) -> server.Site:
    """build_site on a Clock so no timeout touches the global reactor; ``settings`` are [signaling] keys."""
    return build_site(host, SignalingSettings(**settings), extra=extra, reactor=Clock())


def call(site: server.Site, method: str, path: str, body: bytes = b"", **headers: str) -> Response:
    """One request on a fresh connection; header names use ``_`` for ``-``."""
    conn = Connection(site)
    conn.send(request_bytes(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()}))
    return conn.response()


def post_offer(site: server.Site, path: str = "/v1/realtime/calls", body: bytes | None = None, **headers: str) -> Response:
    """POST an SDP offer (``application/sdp`` unless a Content_Type is given)."""
    headers.setdefault("Content_Type", "application/sdp")
    return call(site, "POST", path, OFFER.encode() if body is None else body, **headers)


class SiteTestCase(SynchronousTestCase):
    """A fresh fake session host, and the signaling site on it with default options."""

    def setUp(self) -> None:
        self.fresh()

    def fresh(self) -> None:
        """A new host and site: each case of a loop starts clean."""
        self.host = FakeHost()
        self.site = make_site(self.host)

    def assertNothingAllocated(self, host: FakeHost) -> None:  # noqa: N802
        """The host was never asked for a session."""
        self.assertEqual(host.offers, [])
        self.assertEqual(host.sessions, {})


def static_texts() -> Iterator[tuple[str, str]]:
    """(name, text) of every file of the demo page."""
    for path in sorted(STATIC_DIR.iterdir()):
        yield path.name, path.read_text("utf-8")


class PostTests(SiteTestCase):
    """POST an offer: 201 with the answer; asynchronous hosts; bad input refused with nothing allocated; the host's refusals and crashes."""

    def test_fake_host_provides_interface(self) -> None:
        """The fake matches ISessionHost, so these tests exercise the real contract."""
        self.assertTrue(verifyObject(ISessionHost, self.host))

    def test_post_offer_answers_201(self) -> None:
        """An SDP offer gets 201, the answer as application/sdp, and the session's Location."""
        resp = post_offer(self.site)
        self.assertEqual(resp.status, 201)
        self.assertEqual(resp.header("content-type"), "application/sdp")
        self.assertEqual(resp.header("location"), "/v1/realtime/calls/s1")
        self.assertEqual(resp.header("cache-control"), "no-store")
        self.assertEqual(resp.body, ANSWER.encode())
        self.assertEqual(self.host.offers, [OFFER])
        self.assertEqual(list(self.host.sessions), ["s1"])

    def test_post_whip_spelling(self) -> None:
        """WHIP (RFC 9725) POST has the same semantics; Location is under /v1/whip."""
        resp = post_offer(self.site, "/v1/whip")
        self.assertEqual(resp.status, 201)
        self.assertEqual(resp.header("location"), "/v1/whip/s1")
        self.assertEqual(resp.body, ANSWER.encode())
        self.assertEqual(self.host.offers, [OFFER])

    def test_content_type_parameters_tolerated(self) -> None:
        """Parameters and case in the media type do not matter."""
        for content_type in ["application/sdp; charset=utf-8", "Application/SDP", "application/sdp ;charset=UTF-8"]:
            with case(content_type):
                self.fresh()
                self.assertEqual(post_offer(self.site, Content_Type=content_type).status, 201)
                self.assertEqual(self.host.offers, [OFFER])

    def test_trailing_slash_collection(self) -> None:
        """``/v1/realtime/calls/`` is the collection too."""
        self.assertEqual(post_offer(self.site, "/v1/realtime/calls/").status, 201)

    def test_chunked_offer_within_cap(self) -> None:
        """A chunked body under the cap is reassembled and accepted."""
        site = make_site(self.host, max_body_bytes=len(OFFER) + 10)
        conn = Connection(site)
        head = request_bytes(
            "POST",
            "/v1/realtime/calls",
            headers={"Content-Type": "application/sdp", "Transfer-Encoding": "chunked"},
            content_length=False,
        )
        conn.send(head + chunked(OFFER.encode(), 7))
        resp = conn.response()
        self.assertEqual(resp.status, 201)
        self.assertEqual(self.host.offers, [OFFER])

    def test_session_id_is_quoted_in_location(self) -> None:
        """An id with URL-special characters is percent-encoded in Location and found again by DELETE."""

        @implementer(ISessionHost)
        class OddIds(FakeHost):
            """Hands out one awkward id."""

            def open_session(self, offer_sdp: str, settings: object = None, client: str | None = None) -> OpenedSession:
                return OpenedSession("a/b c", ANSWER)

        odd = OddIds()
        odd.sessions["a/b c"] = OFFER
        site = make_site(odd)
        resp = post_offer(site)
        self.assertEqual(resp.header("location"), "/v1/realtime/calls/a%2Fb%20c")
        self.assertEqual(call(site, "DELETE", "/v1/realtime/calls/a%2Fb%20c").status, 204)
        self.assertEqual(odd.closed, [("a/b c", "client hung up")])

    def test_asynchronous_host(self) -> None:
        """A host answering with a Deferred (a fleet front door) is waited for."""
        self.host.asynchronous = True
        conn = Connection(self.site)
        conn.send(request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp"}))
        self.assertEqual(conn.transport.value(), b"")
        self.host.waiting[0].callback(None)
        resp = conn.response()
        self.assertEqual(resp.status, 201)
        self.assertEqual(resp.header("location"), "/v1/realtime/calls/s1")

    def test_client_gone_before_answer_closes_session(self) -> None:
        """If the client leaves before the answer, the new session is closed: nobody could DELETE it."""
        self.host.asynchronous = True
        conn = Connection(self.site)
        conn.send(request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp"}))
        conn.drop()
        self.host.waiting[0].callback(None)
        self.assertEqual(self.host.sessions, {})
        self.assertEqual([sid for sid, _ in self.host.closed], ["s1"])

    def test_asynchronous_refusal(self) -> None:
        """A Deferred failing with SessionRefused is answered like a synchronous refusal."""
        self.host.asynchronous = True
        conn = Connection(self.site)
        conn.send(request_bytes("POST", "/v1/whip", OFFER.encode(), {"Content-Type": "application/sdp"}))
        self.host.waiting[0].errback(SessionRefused(503, "draining"))
        resp = conn.response()
        self.assertEqual(resp.status, 503)
        self.assertEqual(resp.body, b"draining\n")

    def test_wrong_content_type_415(self) -> None:
        """Anything but application/sdp (or no Content-Type) is 415."""
        for content_type in [None, "text/plain", "application/sdpx", "application/json"]:
            with case(f"Content-Type {content_type}"):
                self.fresh()
                conn = Connection(self.site)
                headers = {} if content_type is None else {"Content-Type": content_type}
                conn.send(request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), headers))
                resp = conn.response()
                self.assertEqual(resp.status, 415)
                self.assertEqual(resp.header("content-type"), "text/plain; charset=utf-8")
                self.assertNothingAllocated(self.host)

    def test_too_large_by_content_length_413(self) -> None:
        """A declared length over the cap is 413 at once, before any of the body is sent or read."""
        site = make_site(self.host, max_body_bytes=100)
        conn = Connection(site)
        conn.send(
            b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: 5000\r\n\r\n"
        )
        resp = conn.response()
        self.assertEqual(resp.status, 413)
        self.assertEqual(resp.header("connection"), "close")
        self.assertTrue(conn.transport.disconnecting)
        self.assertNothingAllocated(self.host)

    def test_too_large_chunked_413(self) -> None:
        """A chunked body is cut off once it crosses the cap: 413."""
        site = make_site(self.host, max_body_bytes=100)
        conn = Connection(site)
        head = request_bytes(
            "POST",
            "/v1/realtime/calls",
            headers={"Content-Type": "application/sdp", "Transfer-Encoding": "chunked"},
            content_length=False,
        )
        conn.send(head + chunked(b"v" * 300, 64))
        resp = conn.response()
        self.assertEqual(resp.status, 413)
        self.assertNothingAllocated(self.host)

    def test_exactly_at_cap_accepted(self) -> None:
        """The cap is inclusive."""
        body = OFFER.encode()
        site = make_site(self.host, max_body_bytes=len(body))
        self.assertEqual(post_offer(site, body=body).status, 201)

    def test_non_utf8_400(self) -> None:
        """A body that is not UTF-8 is 400."""
        resp = post_offer(self.site, body=b"v=0\r\n\xff\xfe\r\n")
        self.assertEqual(resp.status, 400)
        self.assertIn(b"UTF-8", resp.body)
        self.assertNothingAllocated(self.host)

    def test_empty_offer_400(self) -> None:
        """An empty body is 400 without bothering the host."""
        resp = post_offer(self.site, body=b"")
        self.assertEqual(resp.status, 400)
        self.assertNothingAllocated(self.host)

    def test_host_refusal_passed_through(self) -> None:
        """The host's SessionRefused becomes its status with the reason as text/plain."""
        for status, reason in [(400, "offer has no ICE credentials"), (406, "no Opus offered"), (503, "session cap reached")]:
            with case(f"{status} {reason}"):
                self.fresh()
                self.host.refusal = SessionRefused(status, reason)
                resp = post_offer(self.site)
                self.assertEqual(resp.status, status)
                self.assertEqual(resp.header("content-type"), "text/plain; charset=utf-8")
                self.assertEqual(resp.body, reason.encode() + b"\n")
                self.assertIsNone(resp.header("location"))
                self.assertEqual(self.host.sessions, {})

    def test_host_refusal_with_odd_status_is_500(self) -> None:
        """A refusal carrying a non-error status cannot pass for success."""
        self.host.refusal = SessionRefused(200, "huh")
        self.assertEqual(post_offer(self.site).status, 500)

    def test_host_crash_500_without_traceback(self) -> None:
        """Any other exception is 500 with a log line and no details for the client."""
        self.host.crash = RuntimeError("secret internal detail")
        with capturedLogs() as events:
            resp = post_offer(self.site)
        self.assertEqual(resp.status, 500)
        self.assertNotIn(b"secret", resp.raw)
        self.assertNotIn(b"Traceback", resp.raw)
        self.assertNotIn(b"RuntimeError", resp.raw)
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertTrue(failures[0]["log_failure"].check(RuntimeError))
        # trial's own observer saw the logged failure too: it is expected here.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class DeleteTests(SiteTestCase):
    """DELETE on a session's Location ends it; anything else is 404."""

    def test_delete_existing_204(self) -> None:
        """DELETE on the Location ends the session: 204."""
        location = post_offer(self.site).header("location")
        self.assertIsNotNone(location)
        resp = call(self.site, "DELETE", location)
        self.assertEqual(resp.status, 204)
        self.assertEqual(resp.body, b"")
        self.assertEqual(self.host.closed, [("s1", "client hung up")])
        self.assertEqual(self.host.sessions, {})

    def test_delete_whip_204(self) -> None:
        """DELETE on the WHIP spelling works the same."""
        post_offer(self.site, "/v1/whip")
        self.assertEqual(call(self.site, "DELETE", "/v1/whip/s1").status, 204)
        self.assertEqual(self.host.sessions, {})

    def test_delete_unknown_404(self) -> None:
        """DELETE of an unknown id is 404, and the host is not even asked."""
        resp = call(self.site, "DELETE", "/v1/realtime/calls/nope")
        self.assertEqual(resp.status, 404)
        self.assertEqual(self.host.closed, [])

    def test_delete_twice_404(self) -> None:
        """The second DELETE of a session finds nothing."""
        post_offer(self.site)
        self.assertEqual(call(self.site, "DELETE", "/v1/realtime/calls/s1").status, 204)
        self.assertEqual(call(self.site, "DELETE", "/v1/realtime/calls/s1").status, 404)

    def test_path_below_session_404(self) -> None:
        """``/calls/<id>/more`` names nothing, and nothing is closed."""
        post_offer(self.site)
        self.assertEqual(call(self.site, "DELETE", "/v1/realtime/calls/s1/more").status, 404)
        self.assertEqual(list(self.host.sessions), ["s1"])


class PatchTests(SiteTestCase):
    """PATCH for trickle ICE and ICE restarts (RFC 9725 §4.3), with ETags."""

    def test_post_names_the_ice_credentials_with_an_etag(self) -> None:
        """201 carries the ETag a PATCH may name in If-Match."""
        self.assertEqual(post_offer(self.site).header("etag"), '"e1"')

    def test_patch_restart_200_with_the_answer_and_a_new_etag(self) -> None:
        """An ICE restart fragment is answered 200 with ours, as a fragment, and a new ETag."""
        post_offer(self.site)
        frag = b"a=ice-ufrag:abcd\r\na=ice-pwd:restart-restart-restart\r\n"
        resp = call(
            self.site, "PATCH", "/v1/realtime/calls/s1", frag,
            Content_Type="application/trickle-ice-sdpfrag", If_Match="*",
        )
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("content-type"), "application/trickle-ice-sdpfrag")
        self.assertEqual(resp.header("etag"), '"e2"')
        self.assertEqual(resp.body, b"a=ice-ufrag:new1\r\n")
        self.assertEqual(self.host.patches, [("s1", "application/trickle-ice-sdpfrag", frag.decode(), "*")])

    def test_patch_trickle_204(self) -> None:
        """Candidates under the current credentials: 204, nothing else to say."""
        post_offer(self.site, "/v1/whip")
        resp = call(self.site, "PATCH", "/v1/whip/s1", b"a=candidate:x\r\n", Content_Type="application/trickle-ice-sdpfrag")
        self.assertEqual(resp.status, 204)
        self.assertEqual(resp.body, b"")
        self.assertEqual(resp.header("etag"), '"e1"')

    def test_patch_full_reoffer_passes_through(self) -> None:
        """A whole re-offer (a browser's restartIce()) is application/sdp both ways."""
        post_offer(self.site)
        resp = call(self.site, "PATCH", "/v1/realtime/calls/s1", b"v=0 restart", Content_Type="application/sdp")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("content-type"), "application/sdp")

    def test_patch_refusals(self) -> None:
        """Wrong media type, unknown session, stale If-Match: a clear status each."""
        for path, content_type, if_match, status in [
            ("/v1/realtime/calls/s1", "text/plain", None, 415),
            ("/v1/realtime/calls/nope", "application/trickle-ice-sdpfrag", None, 404),
            ("/v1/realtime/calls/s1", "application/trickle-ice-sdpfrag", '"stale"', 412),
        ]:
            self.fresh()
            post_offer(self.site)
            headers = {"Content_Type": content_type}
            if if_match is not None:
                headers["If_Match"] = if_match
            self.assertEqual(
                call(self.site, "PATCH", path, b"a=ice-ufrag:x\r\n", **headers).status, status,
                f"PATCH {path} ({content_type}, If-Match {if_match})",
            )


class SiteTests(SiteTestCase):
    """Other methods, health, unknown paths, extra resources, keep-alive, session stats and the body cap setting."""

    def test_other_methods_405(self) -> None:
        """Methods a resource does not answer are 405 with Allow."""
        for method, path, allowed in [
            ("GET", "/v1/realtime/calls", "POST"),
            ("PUT", "/v1/whip", "POST"),
            ("PUT", "/v1/realtime/calls/s1", "DELETE"),
            ("POST", "/v1/realtime/calls/s1", "DELETE"),
            ("POST", "/healthz", "GET"),
        ]:
            with case(f"{method} {path}"):
                self.fresh()
                resp = call(self.site, method, path)
                self.assertEqual(resp.status, 405)
                allow = [m.strip() for m in (resp.header("allow") or "").split(",")]
                self.assertIn(allowed, allow)
                self.assertIn("OPTIONS", allow)
                self.assertNothingAllocated(self.host)
                self.assertEqual(self.host.closed, [])

    def test_healthz(self) -> None:
        """GET /healthz is 200 ``ok`` with the session count."""
        resp = call(self.site, "GET", "/healthz")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("content-type"), "text/plain; charset=utf-8")
        self.assertEqual(resp.body, b"ok sessions=0\n")
        post_offer(self.site)
        post_offer(self.site)
        self.assertEqual(call(self.site, "GET", "/healthz").body, b"ok sessions=2\n")

    def test_healthz_head(self) -> None:
        """HEAD /healthz answers like GET, without a body."""
        conn = Connection(self.site)
        conn.send(request_bytes("HEAD", "/healthz"))
        raw = conn.transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 200 "))
        self.assertTrue(raw.endswith(b"\r\n\r\n"))

    def test_unknown_path_404(self) -> None:
        """Paths that are not mounted are plain-text 404."""
        for path in ("/nope", "/v1", "/v1/realtime", "/v1/realtime/nope", "/healthz/x", "/healthz/"):
            resp = call(self.site, "GET", path)
            self.assertEqual(resp.status, 404, path)

    def test_extra_children_mounted(self) -> None:
        """``extra`` resources (metrics, ...) sit at the root."""
        metrics = Resource()
        metrics.isLeaf = True
        metrics.render_GET = lambda request: b"voiceedge_sessions 0\n"  # type: ignore[attr-defined]
        site = make_site(self.host, extra={b"metrics": metrics})
        resp = call(site, "GET", "/metrics")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.body, b"voiceedge_sessions 0\n")

    def test_keep_alive_two_requests(self) -> None:
        """Two requests on one persistent connection are both answered."""
        conn = Connection(self.site)
        post = request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp"})
        conn.send(post + request_bytes("DELETE", "/v1/realtime/calls/s1"))
        raw = conn.transport.value()
        self.assertEqual(raw.count(b"HTTP/1.1 201 "), 1)
        self.assertEqual(raw.count(b"HTTP/1.1 204 "), 1)
        self.assertEqual(self.host.sessions, {})

    def test_invalid_cap_rejected(self) -> None:
        """A non-positive body cap is a configuration error."""
        with self.assertRaises(ValueError):
            build_site(self.host, SignalingSettings(max_body_bytes=0))

    def test_get_session_stats(self) -> None:
        """GET on a session's Location gives its live numbers as JSON; 404 when gone."""
        created = post_offer(self.site)
        location = created.header("location")
        self.assertIsNotNone(location)
        resp = call(self.site, "GET", location)
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("content-type"), "application/json")
        self.assertEqual(json.loads(resp.body), {"state": "connected"})
        self.assertEqual(call(self.site, "DELETE", location).status, 204)
        self.assertEqual(call(self.site, "GET", location).status, 404)


class CorsTests(SiteTestCase):
    """CORS: preflights and headers for listed origins only."""

    def test_cors_preflight_allowed(self) -> None:
        """A preflight from a listed origin gets 204 and the allowed methods and headers."""
        site = make_site(self.host, cors_origins=["https://app.example"])
        resp = call(
            site,
            "OPTIONS",
            "/v1/realtime/calls",
            Origin="https://app.example",
            Access_Control_Request_Method="POST",
            Access_Control_Request_Headers="content-type,authorization",
        )
        self.assertEqual(resp.status, 204)
        self.assertEqual(resp.header("access-control-allow-origin"), "https://app.example")
        methods = {m.strip() for m in (resp.header("access-control-allow-methods") or "").split(",")}
        self.assertEqual(methods, {"GET", "POST", "PATCH", "DELETE", "OPTIONS"})
        allowed_headers = {h.strip().lower() for h in (resp.header("access-control-allow-headers") or "").split(",")}
        self.assertLessEqual({"content-type", "authorization"}, allowed_headers)
        self.assertNothingAllocated(self.host)

    def test_cors_preflight_on_session(self) -> None:
        """DELETE on a session is preflighted too."""
        site = make_site(self.host, cors_origins=["*"])
        resp = call(site, "OPTIONS", "/v1/whip/s1", Origin="https://any.example", Access_Control_Request_Method="DELETE")
        self.assertEqual(resp.status, 204)
        self.assertEqual(resp.header("access-control-allow-origin"), "*")
        self.assertEqual(self.host.closed, [])

    def test_cors_other_origin_gets_nothing(self) -> None:
        """An origin not listed gets no CORS headers (the browser then blocks it)."""
        site = make_site(self.host, cors_origins=["https://app.example"])
        resp = call(site, "OPTIONS", "/v1/realtime/calls", Origin="https://evil.example", Access_Control_Request_Method="POST")
        self.assertIsNone(resp.header("access-control-allow-origin"))
        self.assertIsNone(resp.header("access-control-allow-methods"))
        resp = post_offer(site, Origin="https://evil.example")
        self.assertIsNone(resp.header("access-control-allow-origin"))

    def test_cors_post_exposes_location(self) -> None:
        """The actual POST from an allowed origin may read Location."""
        site = make_site(self.host, cors_origins=["https://app.example"])
        resp = post_offer(site, Origin="https://app.example")
        self.assertEqual(resp.status, 201)
        self.assertEqual(resp.header("access-control-allow-origin"), "https://app.example")
        self.assertLessEqual({"Location", "ETag"}, set((resp.header("access-control-expose-headers") or "").split(", ")))
        self.assertEqual(resp.header("vary"), "Origin")

    def test_cors_on_errors_too(self) -> None:
        """A browser can read the reason of a refusal."""
        self.host.refusal = SessionRefused(503, "full")
        site = make_site(self.host, cors_origins=["*"])
        resp = post_offer(site, Origin="http://localhost:3000")
        self.assertEqual(resp.status, 503)
        self.assertEqual(resp.header("access-control-allow-origin"), "*")

    def test_no_cors_by_default(self) -> None:
        """Without cors_origins no CORS header is ever sent."""
        resp = post_offer(self.site, Origin="https://app.example")
        self.assertIsNone(resp.header("access-control-allow-origin"))
        self.assertIsNone(resp.header("vary"))


class DemoPageTests(SiteTestCase):
    """The demo page: off by default, served read-only and uncached, self-contained, wired as the browser test expects."""

    def test_demo_page_off_by_default(self) -> None:
        """Without demo_page, ``/`` and the assets are 404."""
        self.assertEqual(call(self.site, "GET", "/").status, 404)
        self.assertEqual(call(self.site, "GET", "/app.js").status, 404)
        self.assertEqual(call(self.site, "GET", "/index.html").status, 404)

    def test_demo_page_served(self) -> None:
        """With demo_page the page and its assets are served uncached with the right types."""
        for path, content_type, filename in [
            ("/", "text/html; charset=utf-8", "index.html"),
            ("/index.html", "text/html; charset=utf-8", "index.html"),
            ("/app.js", "text/javascript; charset=utf-8", "app.js"),
            ("/style.css", "text/css; charset=utf-8", "style.css"),
        ]:
            with case(path):
                site = make_site(FakeHost(), demo_page=True)
                resp = call(site, "GET", path)
                self.assertEqual(resp.status, 200)
                self.assertEqual(resp.header("content-type"), content_type)
                self.assertEqual(resp.header("cache-control"), "no-store")
                self.assertEqual(resp.body, (STATIC_DIR / filename).read_bytes())

    def test_demo_page_post_405(self) -> None:
        """The page is read-only."""
        site = make_site(self.host, demo_page=True)
        self.assertEqual(call(site, "POST", "/").status, 405)

    def test_demo_page_has_no_external_resources(self) -> None:
        """No file of the demo loads anything from another origin."""
        for name, text in static_texts():
            self.assertFalse(re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), name)
            self.assertFalse(re.search(r"""url\(\s*["']?(https?:)?//""", text), name)
            self.assertFalse(re.search(r"""fetch\(\s*["']https?:""", text), name)

    def test_demo_page_wiring(self) -> None:
        """The page has what the browser test and users rely on."""
        html = (STATIC_DIR / "index.html").read_text("utf-8")
        js = (STATIC_DIR / "app.js").read_text("utf-8")
        self.assertIn('id="call"', html)
        self.assertIn(">Call<", html)
        self.assertIn("<audio", html)
        self.assertIn("autoplay", html)
        self.assertIn('src="app.js"', html)
        self.assertIn('href="style.css"', html)
        for needle in (
            "window.voiceedgeStats",
            'createDataChannel("oai-events")',
            "getUserMedia({ audio: true })",
            "iceServers: []",
            '"Content-Type": "application/sdp"',
            'method: "DELETE"',
            "packetsReceived",
            "roundTripTime",
            "currentRoundTripTime",
            "jitter",
            "packetsLost",
        ):
            self.assertIn(needle, js, needle)
