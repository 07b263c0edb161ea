# -*- test-case-name: tests.test_signaling -*-
"""HTTP signaling: SDP offer/answer over POST (OpenAI Realtime and WHIP spellings), DELETE, health, demo page."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import IO, Callable, cast, ClassVar, Mapping, Sequence
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource, Resource

from voiceedge.signaling.interfaces import SDPFRAG_TYPE, ISessionHost, OpenedSession, SessionRefused
from voiceedge.signaling.settings import SignalingSettings

__all__ = ["build_site", "SignalingSite", "SignalingRequest", "STATIC_DIR"]

log = Logger()

STATIC_DIR = Path(__file__).resolve().parent / "static"

_SDP_TYPE = b"application/sdp"
_TEXT_TYPE = b"text/plain; charset=utf-8"
_CORS_METHODS = b"POST, PATCH, DELETE, OPTIONS"
_CORS_HEADERS = b"Content-Type, Authorization"
_CORS_MAX_AGE = b"600"

# Content types for the demo page's assets; anything else is not served.
_ASSET_TYPES: Mapping[str, bytes] = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}
# The demo page loads nothing from elsewhere; say so to the browser.
_DEMO_CSP = (
    b"default-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class SignalingRequest(server.Request):
    """A request that never buffers more than the site's body cap.

    Twisted reads the whole body before a resource sees it; this keeps at most
    ``max_body_bytes`` of it (discarding the rest) and remembers that the cap
    was crossed, so an oversized offer costs bandwidth but not memory. A
    declared ``Content-Length`` over the cap is refused without buffering a
    single byte; a chunked body is cut off as soon as it crosses the cap.
    """

    body_too_large: bool = False

    def _body_cap(self) -> int | None:
        site = getattr(self.channel, "site", None)
        cap = getattr(site, "max_body_bytes", None)
        return cap if isinstance(cap, int) else None

    def gotLength(self, length: int | None) -> None:
        """Refuse a declared length over the cap before any byte arrives."""
        cap = self._body_cap()
        if cap is not None and length is not None and length > cap:
            self.body_too_large = True
            self.content = io.BytesIO()  # type: ignore[assignment]
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Keep body bytes up to the cap; past it keep nothing."""
        if self.body_too_large:
            return
        cap = self._body_cap()
        content = cast(IO[bytes], self.content)
        if cap is not None and content.tell() + len(data) > cap:
            self.body_too_large = True
            # Drop what was buffered too: none of it will be used.
            content.close()
            self.content = io.BytesIO()  # type: ignore[assignment]
            return
        content.write(data)


class SignalingSite(server.Site):
    """A :class:`~twisted.web.server.Site` that caps request bodies."""

    requestFactory = SignalingRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        max_body_bytes: int,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__(resource, requestFactory=SignalingRequest, reactor=reactor)
        self.max_body_bytes = max_body_bytes


class _Cors:
    """Which origins may call the API from a browser, and the headers that say so."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.encode("ascii", "replace") for o in origins if o != "*")
        self.enabled = self.any or bool(self.origins)

    def allowed_origin(self, request: server.Request) -> bytes | None:
        """The request's Origin if it may read our answers, else ``None``."""
        if not self.enabled:
            return None
        origin = request.getHeader(b"origin")
        if origin is None:
            return None
        if self.any or origin in self.origins:
            return origin
        return None

    def decorate(self, request: server.Request) -> bool:
        """Add the CORS response headers when allowed; ``True`` if they were added."""
        if not self.enabled:
            return False
        # Caches must not hand one origin's answer to another.
        request.setHeader(b"Vary", b"Origin")
        origin = self.allowed_origin(request)
        if origin is None:
            return False
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Access-Control-Expose-Headers", b"Location, ETag")
        return True


def _text(request: server.Request, status: int, message: str) -> bytes:
    """Answer ``status`` with a one-line text/plain body."""
    body = (message.rstrip("\n") + "\n").encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", _TEXT_TYPE)
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def _media_type(request: server.Request) -> bytes | None:
    """The bare, lower-cased media type of the request body, parameters dropped."""
    value = request.getHeader(b"content-type")
    if value is None:
        return None
    return value.split(b";", 1)[0].strip().lower()


class _Endpoint(Resource):
    """A resource that answers a fixed set of methods, CORS included, in plain text."""

    methods: ClassVar[tuple[bytes, ...]] = ()

    def __init__(self, cors: _Cors) -> None:
        super().__init__()
        self.cors = cors

    def _allow(self) -> bytes:
        return b", ".join(self.methods + (b"OPTIONS",))

    def render(self, request: server.Request) -> bytes | int:
        """Dispatch on the method; OPTIONS and unknown methods are answered here."""
        self.cors.decorate(request)
        if self.isLeaf and request.postpath:
            # A path below a leaf (``/healthz/x``, ``/calls/<id>/x``) names nothing.
            return _text(request, http.NOT_FOUND, "not found")
        method = request.method
        if method == b"HEAD" and b"GET" in self.methods:
            method = b"GET"
        if method == b"OPTIONS":
            return self._options(request)
        if method not in self.methods:
            request.setHeader(b"Allow", self._allow())
            return _text(request, http.NOT_ALLOWED, "method not allowed")
        handler: Callable[[server.Request], bytes | int] = getattr(
            self, "render_" + method.decode("ascii")
        )
        return handler(request)

    def _options(self, request: server.Request) -> bytes:
        """Answer a CORS preflight (or a plain OPTIONS) with what is allowed."""
        request.setResponseCode(http.NO_CONTENT)
        request.setHeader(b"Allow", self._allow())
        if self.cors.allowed_origin(request) is not None:
            request.setHeader(b"Access-Control-Allow-Methods", _CORS_METHODS)
            request.setHeader(b"Access-Control-Allow-Headers", _CORS_HEADERS)
            request.setHeader(b"Access-Control-Max-Age", _CORS_MAX_AGE)
        return b""


class _NotFound(_Endpoint):
    """404 for every method, in plain text."""

    def render(self, request: server.Request) -> bytes:
        """Say there is nothing here."""
        self.cors.decorate(request)
        return _text(request, http.NOT_FOUND, "not found")

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        """Nothing below nothing either."""
        return self


class CallsResource(_Endpoint):
    """``POST`` an SDP offer here to open a session; ``/<id>`` children end them."""

    methods = (b"POST",)

    def __init__(
        self, host: ISessionHost, cors: _Cors, location_prefix: str, max_body_bytes: int
    ) -> None:
        super().__init__(cors)
        self.host = host
        self.max_body_bytes = max_body_bytes
        self.location_prefix = location_prefix.rstrip("/")

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        """``<prefix>/`` is this collection; ``<prefix>/<id>`` is one session."""
        if path == b"":
            return self
        try:
            session_id = path.decode("utf-8")
        except UnicodeDecodeError:
            return _NotFound(self.cors)
        return SessionResource(self.host, self.cors, session_id, self.max_body_bytes)

    def render_POST(self, request: server.Request) -> bytes | int:
        """Validate the offer, ask the host for an answer, answer 201 with it."""
        if _media_type(request) != _SDP_TYPE:
            return _text(
                request, http.UNSUPPORTED_MEDIA_TYPE, "the offer must be Content-Type: application/sdp"
            )
        if getattr(request, "body_too_large", False):
            return self._too_large(request)
        body = request.content.read() if request.content is not None else b""
        if len(body) > self.max_body_bytes:
            return self._too_large(request)
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            return _text(request, http.BAD_REQUEST, "the offer is not UTF-8")
        if not offer.strip():
            return _text(request, http.BAD_REQUEST, "the offer is empty")

        finished = request.notifyFinish()
        gone: list[Failure] = []
        finished.addErrback(gone.append)
        d = defer.maybeDeferred(self.host.open_session, offer)
        d.addCallbacks(
            self._answered,
            self._refused,
            callbackArgs=(request, gone),
            errbackArgs=(request, gone),
        )
        d.addErrback(self._crashed, request, gone)
        return server.NOT_DONE_YET

    def _too_large(self, request: server.Request) -> bytes:
        # The rest of the body was never read into memory; do not keep the
        # connection for another request behind it.
        request.setHeader(b"Connection", b"close")
        if request.channel is not None:
            request.channel.persistent = False
        return _text(request, http.REQUEST_ENTITY_TOO_LARGE, "the offer is too large")

    def _answered(self, opened: OpenedSession, request: server.Request, gone: list[Failure]) -> None:
        if gone:
            # The client left before it could learn the session; nobody will DELETE it.
            self.host.close_session(opened.session_id, "client went away before the answer")
            return
        body = opened.answer_sdp.encode("utf-8")
        request.setResponseCode(http.CREATED)
        request.setHeader(b"Content-Type", _SDP_TYPE)
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        location = f"{self.location_prefix}/{quote(opened.session_id, safe='')}"
        request.setHeader(b"Location", location.encode("ascii"))
        if opened.etag:
            request.setHeader(b"ETag", opened.etag.encode("ascii"))
        request.write(body)
        request.finish()

    def _refused(self, failure: Failure, request: server.Request, gone: list[Failure]) -> None:
        failure.trap(SessionRefused)
        refusal = cast(SessionRefused, failure.value)
        if gone:
            return
        status = refusal.status if 400 <= refusal.status <= 599 else http.INTERNAL_SERVER_ERROR
        request.write(_text(request, status, refusal.reason))
        request.finish()

    def _crashed(self, failure: Failure, request: server.Request, gone: list[Failure]) -> None:
        log.failure("opening a session failed", failure)
        if gone or request.finished:
            return
        request.write(_text(request, http.INTERNAL_SERVER_ERROR, "internal error"))
        request.finish()


class SessionResource(_Endpoint):
    """One session: ``GET`` its live numbers, ``PATCH`` an ICE restart, ``DELETE`` it to hang up."""

    methods = (b"GET", b"PATCH", b"DELETE")
    isLeaf = True

    def __init__(self, host: ISessionHost, cors: _Cors, session_id: str, max_body_bytes: int = 65536) -> None:
        super().__init__(cors)
        self.host = host
        self.session_id = session_id
        self.max_body_bytes = max_body_bytes

    def render_PATCH(self, request: server.Request) -> bytes:
        """RFC 9725 §4.3: trickled candidates (204) or an ICE restart (200 with our new credentials).

        ``application/trickle-ice-sdpfrag`` (an RFC 8840 fragment) or
        ``application/sdp`` (a whole re-offer, as a browser's ``restartIce()``
        makes it, answered with a whole SDP answer). ``ETag`` names the ICE
        credentials in force; ``If-Match`` may be ``*`` or that tag.
        """
        media_type = _media_type(request)
        if media_type not in (SDPFRAG_TYPE.encode("ascii"), _SDP_TYPE):
            return _text(
                request,
                http.UNSUPPORTED_MEDIA_TYPE,
                f"PATCH takes Content-Type: {SDPFRAG_TYPE} or application/sdp",
            )
        body = request.content.read() if request.content is not None else b""
        if getattr(request, "body_too_large", False) or len(body) > self.max_body_bytes:
            request.setHeader(b"Connection", b"close")
            return _text(request, http.REQUEST_ENTITY_TOO_LARGE, "the body is too large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _text(request, http.BAD_REQUEST, "the body is not UTF-8")
        if_match = request.getHeader(b"if-match")
        try:
            patched = self.host.patch_session(
                self.session_id,
                media_type.decode("ascii"),
                text,
                None if if_match is None else if_match.decode("latin-1"),
            )
        except SessionRefused as refusal:
            status = refusal.status if 400 <= refusal.status <= 599 else http.INTERNAL_SERVER_ERROR
            return _text(request, status, refusal.reason)
        except Exception:
            log.failure("PATCH of session {session_id!r} failed", session_id=self.session_id)
            return _text(request, http.INTERNAL_SERVER_ERROR, "internal error")
        request.setHeader(b"ETag", patched.etag.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setResponseCode(patched.status)
        if patched.status == http.NO_CONTENT:
            return b""
        answer = patched.body.encode("utf-8")
        request.setHeader(b"Content-Type", patched.media_type.encode("ascii"))
        request.setHeader(b"Content-Length", str(len(answer)).encode("ascii"))
        return answer

    def render_GET(self, request: server.Request) -> bytes:
        """200 with the session's stats as JSON, 404 when it is not open."""
        stats = self.host.session_stats(self.session_id)
        if stats is None:
            return _text(request, http.NOT_FOUND, "no such session")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(stats).encode("utf-8")

    def render_DELETE(self, request: server.Request) -> bytes:
        """204 when the session existed and is now closed, 404 when it did not."""
        try:
            closed = self.host.close_session(self.session_id, "client hung up")
        except Exception:
            log.failure("closing session {session_id!r} failed", session_id=self.session_id)
            return _text(request, http.INTERNAL_SERVER_ERROR, "internal error")
        if not closed:
            return _text(request, http.NOT_FOUND, "no such session")
        request.setResponseCode(http.NO_CONTENT)
        return b""


class HealthResource(_Endpoint):
    """``GET /healthz``: ``ok sessions=<n>`` while the host answers."""

    methods = (b"GET",)
    isLeaf = True

    def __init__(self, host: ISessionHost, cors: _Cors) -> None:
        super().__init__(cors)
        self.host = host

    def render_GET(self, request: server.Request) -> bytes:
        """Report liveness and the open session count."""
        try:
            count = self.host.session_count()
        except Exception:
            log.failure("session_count failed")
            return _text(request, http.SERVICE_UNAVAILABLE, "unhealthy")
        return _text(request, http.OK, f"ok sessions={count}")


class StaticAsset(_Endpoint):
    """One file of the demo page, read at start-up, served uncached."""

    methods = (b"GET",)
    isLeaf = True

    def __init__(self, cors: _Cors, body: bytes, content_type: bytes) -> None:
        super().__init__(cors)
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: server.Request) -> bytes:
        """Serve the file with its content type and ``Cache-Control: no-store``."""
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Content-Length", str(len(self.body)).encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if self.content_type.startswith(b"text/html"):
            request.setHeader(b"Content-Security-Policy", _DEMO_CSP)
        return self.body


class _Root(Resource):
    """The site root: named children, plain-text 404 for the rest."""

    def __init__(self, cors: _Cors) -> None:
        super().__init__()
        self.cors = cors

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        """Anything not mounted is not found."""
        return _NotFound(self.cors)

    def render(self, request: server.Request) -> bytes:
        """Only reached for ``/`` without a demo page."""
        return _NotFound(self.cors).render(request)


def _demo_assets(cors: _Cors, directory: Path = STATIC_DIR) -> dict[bytes, Resource]:
    """The demo page's files, by URL name; ``index.html`` is also the root."""
    assets: dict[bytes, Resource] = {}
    for path in sorted(directory.iterdir()):
        content_type = _ASSET_TYPES.get(path.suffix.lower())
        if content_type is None or not path.is_file():
            continue
        asset = StaticAsset(cors, path.read_bytes(), content_type)
        assets[path.name.encode("utf-8")] = asset
        if path.name == "index.html":
            assets[b""] = asset
    if b"" not in assets:
        raise FileNotFoundError(f"demo page missing: {directory / 'index.html'}")
    return assets


def build_site(
    host: ISessionHost,
    settings: SignalingSettings = SignalingSettings(),
    *,
    extra: Mapping[bytes, IResource] = {},
    reactor: IReactorTime | None = None,
) -> server.Site:
    """Build the signaling site for ``host`` as ``settings`` say.

    Routes: ``POST /v1/realtime/calls`` and ``POST /v1/whip`` (an SDP offer in,
    ``201`` with the answer and ``Location`` out), ``DELETE`` on that
    ``Location``, ``GET /healthz``, and with ``demo_page`` the demo at ``/``.
    ``extra`` children (``b"metrics"``, ...) are mounted at the root.
    ``reactor`` is for connection timeouts (tests pass a clock).
    """
    max_body_bytes = settings.max_body_bytes
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive, not {max_body_bytes}")
    cors = _Cors(settings.cors_origins)
    root = _Root(cors)
    v1 = _Root(cors)
    realtime = _Root(cors)
    root.putChild(b"v1", v1)
    v1.putChild(b"realtime", realtime)
    realtime.putChild(b"calls", CallsResource(host, cors, "/v1/realtime/calls", max_body_bytes))
    v1.putChild(b"whip", CallsResource(host, cors, "/v1/whip", max_body_bytes))
    root.putChild(b"healthz", HealthResource(host, cors))
    if settings.demo_page:
        for name, asset in _demo_assets(cors).items():
            root.putChild(name, asset)
    for name, child in extra.items():
        root.putChild(name, child)
    return SignalingSite(root, max_body_bytes=max_body_bytes, reactor=reactor)
