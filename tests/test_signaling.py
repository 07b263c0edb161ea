# -*- test-case-name: tests.test_signaling -*-
"""Tests for voiceedge.signaling.resource: the real Site fed raw HTTP bytes over an in-memory transport."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Mapping

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from voiceedge.signaling.interfaces import ISessionHost, OpenedSession, PatchedSession, SessionRefused
from voiceedge.signaling.resource import STATIC_DIR, build_site
from voiceedge.signaling.settings import SignalingSettings

from tests.http_support import (
    ANSWER,
    OFFER,
    Connection,
    FakeHost,
    Response,
    chunked,
    request_bytes,
)

@pytest.fixture
def host() -> FakeHost:
    """A fresh fake session host."""
    return FakeHost()


def make_site(host: FakeHost, extra: Mapping[bytes, Any] = {}, **settings: Any) -> server.Site:
    """build_site on a Clock so no timeout touches the global reactor; ``settings`` are [signaling] keys."""
    return build_site(host, SignalingSettings(**settings), extra=extra, reactor=Clock())


@pytest.fixture
def site(host: FakeHost) -> server.Site:
    """The signaling site with default options."""
    return make_site(host)


def call(site: server.Site, method: str, path: str, body: bytes = b"", **headers: str) -> Response:
    """One request on a fresh connection; header names use ``_`` for ``-``."""
    conn = Connection(site)
    conn.send(request_bytes(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()}))
    return conn.response()


def post_offer(site: server.Site, path: str = "/v1/realtime/calls", body: bytes | None = None, **headers: str) -> Response:
    """POST an SDP offer (``application/sdp`` unless a Content_Type is given)."""
    headers.setdefault("Content_Type", "application/sdp")
    return call(site, "POST", path, OFFER.encode() if body is None else body, **headers)


def assert_nothing_allocated(host: FakeHost) -> None:
    """The host was never asked for a session."""
    assert host.offers == []
    assert host.sessions == {}


# -- the fake itself ---------------------------------------------------------


def test_fake_host_provides_interface(host: FakeHost) -> None:
    """The fake matches ISessionHost, so these tests exercise the real contract."""
    assert verifyObject(ISessionHost, host)


# -- POST: the good path -----------------------------------------------------


def test_post_offer_answers_201(site: server.Site, host: FakeHost) -> None:
    """An SDP offer gets 201, the answer as application/sdp, and the session's Location."""
    resp = post_offer(site)
    assert resp.status == 201
    assert resp.header("content-type") == "application/sdp"
    assert resp.header("location") == "/v1/realtime/calls/s1"
    assert resp.header("cache-control") == "no-store"
    assert resp.body == ANSWER.encode()
    assert host.offers == [OFFER]
    assert list(host.sessions) == ["s1"]


def test_post_whip_spelling(site: server.Site, host: FakeHost) -> None:
    """WHIP (RFC 9725) POST has the same semantics; Location is under /v1/whip."""
    resp = post_offer(site, "/v1/whip")
    assert resp.status == 201
    assert resp.header("location") == "/v1/whip/s1"
    assert resp.body == ANSWER.encode()
    assert host.offers == [OFFER]


@pytest.mark.parametrize(
    "content_type",
    ["application/sdp; charset=utf-8", "Application/SDP", "application/sdp ;charset=UTF-8"],
)
def test_content_type_parameters_tolerated(site: server.Site, host: FakeHost, content_type: str) -> None:
    """Parameters and case in the media type do not matter."""
    assert post_offer(site, Content_Type=content_type).status == 201
    assert host.offers == [OFFER]


def test_trailing_slash_collection(site: server.Site, host: FakeHost) -> None:
    """``/v1/realtime/calls/`` is the collection too."""
    assert post_offer(site, "/v1/realtime/calls/").status == 201


def test_chunked_offer_within_cap(host: FakeHost) -> None:
    """A chunked body under the cap is reassembled and accepted."""
    site = make_site(host, max_body_bytes=len(OFFER) + 10)
    conn = Connection(site)
    head = request_bytes(
        "POST",
        "/v1/realtime/calls",
        headers={"Content-Type": "application/sdp", "Transfer-Encoding": "chunked"},
        content_length=False,
    )
    conn.send(head + chunked(OFFER.encode(), 7))
    resp = conn.response()
    assert resp.status == 201
    assert host.offers == [OFFER]


def test_session_id_is_quoted_in_location() -> None:
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
    assert resp.header("location") == "/v1/realtime/calls/a%2Fb%20c"
    assert call(site, "DELETE", "/v1/realtime/calls/a%2Fb%20c").status == 204
    assert odd.closed == [("a/b c", "client hung up")]


# -- POST: asynchronous hosts ------------------------------------------------


def test_asynchronous_host(site: server.Site, host: FakeHost) -> None:
    """A host answering with a Deferred (a fleet front door) is waited for."""
    host.asynchronous = True
    conn = Connection(site)
    conn.send(request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp"}))
    assert conn.transport.value() == b""
    host.waiting[0].callback(None)
    resp = conn.response()
    assert resp.status == 201
    assert resp.header("location") == "/v1/realtime/calls/s1"


def test_client_gone_before_answer_closes_session(site: server.Site, host: FakeHost) -> None:
    """If the client leaves before the answer, the new session is closed: nobody could DELETE it."""
    host.asynchronous = True
    conn = Connection(site)
    conn.send(request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp"}))
    conn.drop()
    host.waiting[0].callback(None)
    assert host.sessions == {}
    assert [sid for sid, _ in host.closed] == ["s1"]


def test_asynchronous_refusal(site: server.Site, host: FakeHost) -> None:
    """A Deferred failing with SessionRefused is answered like a synchronous refusal."""
    host.asynchronous = True
    conn = Connection(site)
    conn.send(request_bytes("POST", "/v1/whip", OFFER.encode(), {"Content-Type": "application/sdp"}))
    host.waiting[0].errback(SessionRefused(503, "draining"))
    resp = conn.response()
    assert resp.status == 503
    assert resp.body == b"draining\n"


# -- POST: bad input, nothing allocated --------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/sdpx", "application/json"])
def test_wrong_content_type_415(site: server.Site, host: FakeHost, content_type: str | None) -> None:
    """Anything but application/sdp (or no Content-Type) is 415."""
    conn = Connection(site)
    headers = {} if content_type is None else {"Content-Type": content_type}
    conn.send(request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), headers))
    resp = conn.response()
    assert resp.status == 415
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert_nothing_allocated(host)


def test_too_large_by_content_length_413(host: FakeHost) -> None:
    """A declared length over the cap is 413 at once, before any of the body is sent or read."""
    site = make_site(host, max_body_bytes=100)
    conn = Connection(site)
    conn.send(
        b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
        b"Content-Length: 5000\r\n\r\n"
    )
    resp = conn.response()
    assert resp.status == 413
    assert resp.header("connection") == "close"
    assert conn.transport.disconnecting
    assert_nothing_allocated(host)


def test_too_large_chunked_413(host: FakeHost) -> None:
    """A chunked body is cut off once it crosses the cap: 413."""
    site = make_site(host, max_body_bytes=100)
    conn = Connection(site)
    head = request_bytes(
        "POST",
        "/v1/realtime/calls",
        headers={"Content-Type": "application/sdp", "Transfer-Encoding": "chunked"},
        content_length=False,
    )
    conn.send(head + chunked(b"v" * 300, 64))
    resp = conn.response()
    assert resp.status == 413
    assert_nothing_allocated(host)


def test_exactly_at_cap_accepted(host: FakeHost) -> None:
    """The cap is inclusive."""
    body = OFFER.encode()
    site = make_site(host, max_body_bytes=len(body))
    assert post_offer(site, body=body).status == 201


def test_non_utf8_400(site: server.Site, host: FakeHost) -> None:
    """A body that is not UTF-8 is 400."""
    resp = post_offer(site, body=b"v=0\r\n\xff\xfe\r\n")
    assert resp.status == 400
    assert b"UTF-8" in resp.body
    assert_nothing_allocated(host)


def test_empty_offer_400(site: server.Site, host: FakeHost) -> None:
    """An empty body is 400 without bothering the host."""
    resp = post_offer(site, body=b"")
    assert resp.status == 400
    assert_nothing_allocated(host)


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "offer has no ICE credentials"), (406, "no Opus offered"), (503, "session cap reached")],
)
def test_host_refusal_passed_through(site: server.Site, host: FakeHost, status: int, reason: str) -> None:
    """The host's SessionRefused becomes its status with the reason as text/plain."""
    host.refusal = SessionRefused(status, reason)
    resp = post_offer(site)
    assert resp.status == status
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert resp.body == reason.encode() + b"\n"
    assert resp.header("location") is None
    assert host.sessions == {}


def test_host_refusal_with_odd_status_is_500(site: server.Site, host: FakeHost) -> None:
    """A refusal carrying a non-error status cannot pass for success."""
    host.refusal = SessionRefused(200, "huh")
    assert post_offer(site).status == 500


def test_host_crash_500_without_traceback(site: server.Site, host: FakeHost) -> None:
    """Any other exception is 500 with a log line and no details for the client."""
    host.crash = RuntimeError("secret internal detail")
    with capturedLogs() as events:
        resp = post_offer(site)
    assert resp.status == 500
    assert b"secret" not in resp.raw
    assert b"Traceback" not in resp.raw
    assert b"RuntimeError" not in resp.raw
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)


# -- DELETE ------------------------------------------------------------------


def test_delete_existing_204(site: server.Site, host: FakeHost) -> None:
    """DELETE on the Location ends the session: 204."""
    location = post_offer(site).header("location")
    assert location is not None
    resp = call(site, "DELETE", location)
    assert resp.status == 204
    assert resp.body == b""
    assert host.closed == [("s1", "client hung up")]
    assert host.sessions == {}


def test_delete_whip_204(site: server.Site, host: FakeHost) -> None:
    """DELETE on the WHIP spelling works the same."""
    post_offer(site, "/v1/whip")
    assert call(site, "DELETE", "/v1/whip/s1").status == 204
    assert host.sessions == {}


def test_delete_unknown_404(site: server.Site, host: FakeHost) -> None:
    """DELETE of an unknown id is 404, and the host is not even asked."""
    resp = call(site, "DELETE", "/v1/realtime/calls/nope")
    assert resp.status == 404
    assert host.closed == []


def test_delete_twice_404(site: server.Site, host: FakeHost) -> None:
    """The second DELETE of a session finds nothing."""
    post_offer(site)
    assert call(site, "DELETE", "/v1/realtime/calls/s1").status == 204
    assert call(site, "DELETE", "/v1/realtime/calls/s1").status == 404


def test_path_below_session_404(site: server.Site, host: FakeHost) -> None:
    """``/calls/<id>/more`` names nothing, and nothing is closed."""
    post_offer(site)
    assert call(site, "DELETE", "/v1/realtime/calls/s1/more").status == 404
    assert list(host.sessions) == ["s1"]


# -- PATCH: trickle and ICE restart (RFC 9725 §4.3) ---------------------------


def test_post_names_the_ice_credentials_with_an_etag(site: server.Site) -> None:
    """201 carries the ETag a PATCH may name in If-Match."""
    assert post_offer(site).header("etag") == '"e1"'


def test_patch_restart_200_with_the_answer_and_a_new_etag(site: server.Site, host: FakeHost) -> None:
    """An ICE restart fragment is answered 200 with ours, as a fragment, and a new ETag."""
    post_offer(site)
    frag = b"a=ice-ufrag:abcd\r\na=ice-pwd:restart-restart-restart\r\n"
    resp = call(
        site, "PATCH", "/v1/realtime/calls/s1", frag,
        Content_Type="application/trickle-ice-sdpfrag", If_Match="*",
    )
    assert resp.status == 200
    assert resp.header("content-type") == "application/trickle-ice-sdpfrag"
    assert resp.header("etag") == '"e2"' and resp.body == b"a=ice-ufrag:new1\r\n"
    assert host.patches == [("s1", "application/trickle-ice-sdpfrag", frag.decode(), "*")]


def test_patch_trickle_204(site: server.Site, host: FakeHost) -> None:
    """Candidates under the current credentials: 204, nothing else to say."""
    post_offer(site, "/v1/whip")
    resp = call(site, "PATCH", "/v1/whip/s1", b"a=candidate:x\r\n", Content_Type="application/trickle-ice-sdpfrag")
    assert resp.status == 204 and resp.body == b"" and resp.header("etag") == '"e1"'


def test_patch_full_reoffer_passes_through(site: server.Site, host: FakeHost) -> None:
    """A whole re-offer (a browser's restartIce()) is application/sdp both ways."""
    post_offer(site)
    resp = call(site, "PATCH", "/v1/realtime/calls/s1", b"v=0 restart", Content_Type="application/sdp")
    assert resp.status == 200 and resp.header("content-type") == "application/sdp"


@pytest.mark.parametrize(
    "path, content_type, if_match, status",
    [
        ("/v1/realtime/calls/s1", "text/plain", None, 415),
        ("/v1/realtime/calls/nope", "application/trickle-ice-sdpfrag", None, 404),
        ("/v1/realtime/calls/s1", "application/trickle-ice-sdpfrag", '"stale"', 412),
    ],
)
def test_patch_refusals(site: server.Site, path: str, content_type: str, if_match: str | None, status: int) -> None:
    """Wrong media type, unknown session, stale If-Match: a clear status each."""
    post_offer(site)
    headers = {"Content_Type": content_type}
    if if_match is not None:
        headers["If_Match"] = if_match
    assert call(site, "PATCH", path, b"a=ice-ufrag:x\r\n", **headers).status == status


# -- other methods, health, unknown paths ------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/realtime/calls", "POST"),
        ("PUT", "/v1/whip", "POST"),
        ("PUT", "/v1/realtime/calls/s1", "DELETE"),
        ("POST", "/v1/realtime/calls/s1", "DELETE"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_other_methods_405(site: server.Site, host: FakeHost, method: str, path: str, allowed: str) -> None:
    """Methods a resource does not answer are 405 with Allow."""
    resp = call(site, method, path)
    assert resp.status == 405
    allow = [m.strip() for m in (resp.header("allow") or "").split(",")]
    assert allowed in allow
    assert "OPTIONS" in allow
    assert_nothing_allocated(host)
    assert host.closed == []


def test_healthz(site: server.Site, host: FakeHost) -> None:
    """GET /healthz is 200 ``ok`` with the session count."""
    resp = call(site, "GET", "/healthz")
    assert resp.status == 200
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert resp.body == b"ok sessions=0\n"
    post_offer(site)
    post_offer(site)
    assert call(site, "GET", "/healthz").body == b"ok sessions=2\n"


def test_healthz_head(site: server.Site) -> None:
    """HEAD /healthz answers like GET, without a body."""
    conn = Connection(site)
    conn.send(request_bytes("HEAD", "/healthz"))
    raw = conn.transport.value()
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\n")


def test_unknown_path_404(site: server.Site) -> None:
    """Paths that are not mounted are plain-text 404."""
    for path in ("/nope", "/v1", "/v1/realtime", "/v1/realtime/nope", "/healthz/x", "/healthz/"):
        resp = call(site, "GET", path)
        assert resp.status == 404, path


def test_extra_children_mounted(host: FakeHost) -> None:
    """``extra`` resources (metrics, ...) sit at the root."""
    metrics = Resource()
    metrics.isLeaf = True
    metrics.render_GET = lambda request: b"voiceedge_sessions 0\n"  # type: ignore[attr-defined]
    site = make_site(host, extra={b"metrics": metrics})
    resp = call(site, "GET", "/metrics")
    assert resp.status == 200
    assert resp.body == b"voiceedge_sessions 0\n"


def test_keep_alive_two_requests(site: server.Site, host: FakeHost) -> None:
    """Two requests on one persistent connection are both answered."""
    conn = Connection(site)
    post = request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp"})
    conn.send(post + request_bytes("DELETE", "/v1/realtime/calls/s1"))
    raw = conn.transport.value()
    assert raw.count(b"HTTP/1.1 201 ") == 1
    assert raw.count(b"HTTP/1.1 204 ") == 1
    assert host.sessions == {}


def test_invalid_cap_rejected(host: FakeHost) -> None:
    """A non-positive body cap is a configuration error."""
    with pytest.raises(ValueError):
        build_site(host, SignalingSettings(max_body_bytes=0))


# -- CORS --------------------------------------------------------------------


def test_cors_preflight_allowed(host: FakeHost) -> None:
    """A preflight from a listed origin gets 204 and the allowed methods and headers."""
    site = make_site(host, cors_origins=["https://app.example"])
    resp = call(
        site,
        "OPTIONS",
        "/v1/realtime/calls",
        Origin="https://app.example",
        Access_Control_Request_Method="POST",
        Access_Control_Request_Headers="content-type,authorization",
    )
    assert resp.status == 204
    assert resp.header("access-control-allow-origin") == "https://app.example"
    methods = {m.strip() for m in (resp.header("access-control-allow-methods") or "").split(",")}
    assert methods == {"GET", "POST", "PATCH", "DELETE", "OPTIONS"}
    allowed_headers = {h.strip().lower() for h in (resp.header("access-control-allow-headers") or "").split(",")}
    assert {"content-type", "authorization"} <= allowed_headers
    assert_nothing_allocated(host)


def test_cors_preflight_on_session(host: FakeHost) -> None:
    """DELETE on a session is preflighted too."""
    site = make_site(host, cors_origins=["*"])
    resp = call(site, "OPTIONS", "/v1/whip/s1", Origin="https://any.example", Access_Control_Request_Method="DELETE")
    assert resp.status == 204
    assert resp.header("access-control-allow-origin") == "*"
    assert host.closed == []


def test_cors_other_origin_gets_nothing(host: FakeHost) -> None:
    """An origin not listed gets no CORS headers (the browser then blocks it)."""
    site = make_site(host, cors_origins=["https://app.example"])
    resp = call(site, "OPTIONS", "/v1/realtime/calls", Origin="https://evil.example", Access_Control_Request_Method="POST")
    assert resp.header("access-control-allow-origin") is None
    assert resp.header("access-control-allow-methods") is None
    resp = post_offer(site, Origin="https://evil.example")
    assert resp.header("access-control-allow-origin") is None


def test_cors_post_exposes_location(host: FakeHost) -> None:
    """The actual POST from an allowed origin may read Location."""
    site = make_site(host, cors_origins=["https://app.example"])
    resp = post_offer(site, Origin="https://app.example")
    assert resp.status == 201
    assert resp.header("access-control-allow-origin") == "https://app.example"
    assert {"Location", "ETag"} <= set((resp.header("access-control-expose-headers") or "").split(", "))
    assert resp.header("vary") == "Origin"


def test_cors_on_errors_too(host: FakeHost) -> None:
    """A browser can read the reason of a refusal."""
    host.refusal = SessionRefused(503, "full")
    site = make_site(host, cors_origins=["*"])
    resp = post_offer(site, Origin="http://localhost:3000")
    assert resp.status == 503
    assert resp.header("access-control-allow-origin") == "*"


def test_no_cors_by_default(site: server.Site) -> None:
    """Without cors_origins no CORS header is ever sent."""
    resp = post_offer(site, Origin="https://app.example")
    assert resp.header("access-control-allow-origin") is None
    assert resp.header("vary") is None


# -- the demo page -----------------------------------------------------------


def test_demo_page_off_by_default(site: server.Site) -> None:
    """Without demo_page, ``/`` and the assets are 404."""
    assert call(site, "GET", "/").status == 404
    assert call(site, "GET", "/app.js").status == 404
    assert call(site, "GET", "/index.html").status == 404


@pytest.mark.parametrize(
    ("path", "content_type", "filename"),
    [
        ("/", "text/html; charset=utf-8", "index.html"),
        ("/index.html", "text/html; charset=utf-8", "index.html"),
        ("/app.js", "text/javascript; charset=utf-8", "app.js"),
        ("/style.css", "text/css; charset=utf-8", "style.css"),
    ],
)
def test_demo_page_served(host: FakeHost, path: str, content_type: str, filename: str) -> None:
    """With demo_page the page and its assets are served uncached with the right types."""
    site = make_site(host, demo_page=True)
    resp = call(site, "GET", path)
    assert resp.status == 200
    assert resp.header("content-type") == content_type
    assert resp.header("cache-control") == "no-store"
    assert resp.body == (STATIC_DIR / filename).read_bytes()


def test_demo_page_post_405(host: FakeHost) -> None:
    """The page is read-only."""
    site = make_site(host, demo_page=True)
    assert call(site, "POST", "/").status == 405


def static_texts() -> Iterator[tuple[str, str]]:
    """(name, text) of every file of the demo page."""
    for path in sorted(STATIC_DIR.iterdir()):
        yield path.name, path.read_text("utf-8")


def test_demo_page_has_no_external_resources() -> None:
    """No file of the demo loads anything from another origin."""
    for name, text in static_texts():
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), name
        assert not re.search(r"""url\(\s*["']?(https?:)?//""", text), name
        assert not re.search(r"""fetch\(\s*["']https?:""", text), name


def test_demo_page_wiring() -> None:
    """The page has what the browser test and users rely on."""
    html = (STATIC_DIR / "index.html").read_text("utf-8")
    js = (STATIC_DIR / "app.js").read_text("utf-8")
    assert 'id="call"' in html and ">Call<" in html
    assert "<audio" in html and "autoplay" in html
    assert 'src="app.js"' in html and 'href="style.css"' in html
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
        assert needle in js, needle


def test_get_session_stats(site: server.Site, host: FakeHost) -> None:
    """GET on a session's Location gives its live numbers as JSON; 404 when gone."""
    created = post_offer(site)
    location = created.header("location")
    assert location is not None
    resp = call(site, "GET", location)
    assert resp.status == 200
    assert resp.header("content-type") == "application/json"
    assert json.loads(resp.body) == {"state": "connected"}
    assert call(site, "DELETE", location).status == 204
    assert call(site, "GET", location).status == 404
