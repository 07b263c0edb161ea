# -*- test-case-name: tests.test_internal_api -*-
"""The transceiver's internal HTTP API: what the front door calls, on a listener of its own.

Clients never reach it: it listens on the internal network, and every
request but the probes must carry ``Authorization: Bearer <fleet secret>``
(compared in constant time). It trusts what the front door says, which the
public signaling never does: the session id to use (so the front door can
end a session whose answer it lost) and the relay address to offer (the
client's region's relay)::

    POST   /internal/v1/sessions          JSON {"offer", "session_id", "candidate", "settings"}
                                          -> 201, SDP answer, Location | 4xx/503 text reason
    GET    /internal/v1/sessions          -> 200 JSON {"sessions": [ids of every open session]}
    GET    /internal/v1/sessions/<id>     -> 200 JSON stats | 404
    DELETE /internal/v1/sessions/<id>     -> 204 | 404
    PATCH  /internal/v1/sessions/<id>     the client's PATCH (ICE restart), passed on as it came
    POST   /internal/v1/drain             -> 202: start draining (as SIGTERM does)
    GET    /internal/v1/drain             -> 200 JSON: state, sessions, seconds of grace left, load
    GET    /healthz                       -> 200 while the process answers (liveness)
    GET    /readyz                        -> 200 serving | 503 draining (readiness)
    GET    /metrics                       -> Prometheus text
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.resource import IResource

from voiceedge import config as c
from voiceedge.config import Address
from voiceedge.fleet.drain import Drain
from voiceedge.fleet.settings import session_id
from voiceedge.metrics import MetricsResource, Sample, make_registry
from voiceedge.fleet.interfaces import IFleetTransceiver
from voiceedge.signaling.interfaces import OpenedSession, SessionRefused
from voiceedge.signaling.site import SignalingRequest

__all__ = [
    "SESSIONS_PATH",
    "OpenRequest",
    "build_internal_site",
]

log = Logger()

SESSIONS_PATH = "/internal/v1/sessions"
_TEXT = b"text/plain; charset=utf-8"
_SDP = b"application/sdp"
_JSON = b"application/json"
MAX_REQUEST_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """The body of ``POST /internal/v1/sessions``, as JSON."""

    #: The client's SDP offer.
    offer: str
    #: The id to give the session (the front door's choice), if any.
    session_id: str | None = None
    #: The relay address to put in the answer, if not the transceiver's own.
    candidate: Address | None = None
    #: Session settings a client secret carried, if any.
    settings: Mapping[str, Any] | None = None

    def to_json(self) -> bytes:
        """The request body."""
        document: dict[str, Any] = {"offer": self.offer}
        if self.session_id is not None:
            document["session_id"] = self.session_id
        if self.candidate is not None:
            document["candidate"] = c.format_address(self.candidate)
        if self.settings is not None:
            document["settings"] = dict(self.settings)
        return json.dumps(document).encode("utf-8")

    @classmethod
    def from_json(cls, body: bytes) -> OpenRequest:
        """Parse a request body; ValueError saying what is wrong."""
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise ValueError("not JSON") from None
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        offer = document.get("offer")
        if not isinstance(offer, str) or not offer.strip():
            raise ValueError("offer must be a non-empty string")
        chosen = document.get("session_id")
        if chosen is not None and not isinstance(chosen, str):
            raise ValueError("session_id must be a string")
        candidate = document.get("candidate")
        if candidate is not None and not isinstance(candidate, str):
            raise ValueError("candidate must be host:port")
        settings = document.get("settings")
        if settings is not None and not isinstance(settings, dict):
            raise ValueError("settings must be an object")
        return cls(
            offer,
            session_id(chosen) if chosen is not None else None,
            c.address(candidate) if candidate is not None else None,
            settings,
        )


def _text(request: server.Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", _TEXT)
    request.setHeader(b"cache-control", b"no-store")
    return (message.rstrip("\n") + "\n").encode("utf-8")


class _Authenticated(resource.Resource):
    """A resource whose every request must carry the fleet secret."""

    def __init__(self, secret: bytes) -> None:
        super().__init__()
        self._expected = b"Bearer " + secret

    def render(self, request: server.Request) -> Any:
        """401 without the secret; the method's handler with it."""
        given = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(given, self._expected):
            request.setHeader(b"www-authenticate", b'Bearer realm="voiceedge-internal"')
            return _text(request, http.UNAUTHORIZED, "the fleet secret is required")
        return super().render(request)


class SessionsResource(_Authenticated):
    """``POST`` an offer, ``GET`` the open sessions' ids; ``/<id>`` children read and end sessions."""

    def __init__(self, host: IFleetTransceiver, secret: bytes) -> None:
        super().__init__(secret)
        self.host = host
        self.secret = secret

    def getChild(self, path: bytes, request: server.Request) -> IResource:
        """``/<id>``: one session."""
        if path == b"":
            return self
        return SessionResource(self.host, self.secret, path.decode("utf-8", "replace"))

    def render_GET(self, request: server.Request) -> bytes:
        """The ids of every open session, for front doors to reconcile what they recorded."""
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps({"sessions": [s.session_id for s in self.host.sessions()]}).encode("utf-8")

    def render_POST(self, request: server.Request) -> Any:
        """Open a session with the id and candidate the front door chose."""
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != _JSON:
            return _text(request, http.UNSUPPORTED_MEDIA_TYPE, "the request must be application/json")
        body = request.content.read(MAX_REQUEST_BYTES + 1) if request.content is not None else b""
        if len(body) > MAX_REQUEST_BYTES:
            return _text(request, http.REQUEST_ENTITY_TOO_LARGE, "the request is too large")
        try:
            opening = OpenRequest.from_json(body)
        except ValueError as e:
            return _text(request, http.BAD_REQUEST, f"bad request: {e}")
        d = defer.maybeDeferred(
            lambda: self.host.open_session(
                opening.offer, opening.settings, candidate=opening.candidate, session_id=opening.session_id
            )
        )
        d.addCallbacks(self._opened, self._refused, callbackArgs=(request,), errbackArgs=(request,))
        return server.NOT_DONE_YET

    def _opened(self, opened: OpenedSession, request: server.Request) -> None:
        if request._disconnected:
            # The front door gave up; it will DELETE by the id it chose, but
            # do not keep what nobody can learn about.
            self.host.close_session(opened.session_id, "front door went away before the answer")
            return
        body = opened.answer_sdp.encode("utf-8")
        request.setResponseCode(http.CREATED)
        request.setHeader(b"content-type", _SDP)
        if opened.etag:
            request.setHeader(b"etag", opened.etag.encode("ascii"))
        request.setHeader(b"location", f"{SESSIONS_PATH}/{opened.session_id}".encode("ascii"))
        request.write(body)
        request.finish()

    def _refused(self, failure: Failure, request: server.Request) -> None:
        if failure.check(SessionRefused):
            refusal: SessionRefused = failure.value
            status, reason = refusal.status, refusal.reason
        else:
            log.failure("internal API: opening a session failed", failure)
            status, reason = http.INTERNAL_SERVER_ERROR, "internal error"
        if request._disconnected:
            return
        if isinstance(failure.value, SessionRefused) and failure.value.retry_after is not None:
            request.setHeader(b"retry-after", str(failure.value.retry_after).encode("ascii"))
        request.write(_text(request, status, reason))
        request.finish()


class SessionResource(_Authenticated):
    """One session: ``GET`` its numbers, ``DELETE`` it."""

    isLeaf = True

    def __init__(self, host: IFleetTransceiver, secret: bytes, session_id: str) -> None:
        super().__init__(secret)
        self.host = host
        self.session_id = session_id

    def render_GET(self, request: server.Request) -> bytes:
        """200 with JSON stats, 404 when it is not open."""
        stats = self.host.session_stats(self.session_id)
        if stats is None:
            return _text(request, http.NOT_FOUND, "no such session")
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(stats).encode("utf-8")

    def render_DELETE(self, request: server.Request) -> bytes:
        """204 when it was open and is now ended, 404 otherwise."""
        if not self.host.close_session(self.session_id, "front door hung up"):
            return _text(request, http.NOT_FOUND, "no such session")
        request.setResponseCode(http.NO_CONTENT)
        return b""

    def render_PATCH(self, request: server.Request) -> bytes:
        """The client's PATCH as the front door passed it on (RFC 9725 §4.3); the session's answer back."""
        media_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        body = request.content.read(MAX_REQUEST_BYTES + 1) if request.content is not None else b""
        if len(body) > MAX_REQUEST_BYTES:
            return _text(request, http.REQUEST_ENTITY_TOO_LARGE, "the body is too large")
        if_match = request.getHeader(b"if-match")
        try:
            patched = self.host.patch_session(
                self.session_id,
                media_type.decode("latin-1"),
                body.decode("utf-8"),
                None if if_match is None else if_match.decode("latin-1"),
            )
        except UnicodeDecodeError:
            return _text(request, http.BAD_REQUEST, "the body is not UTF-8")
        except SessionRefused as refusal:
            return _text(request, refusal.status, refusal.reason)
        request.setResponseCode(patched.status)
        request.setHeader(b"etag", patched.etag.encode("ascii"))
        if patched.status == http.NO_CONTENT:
            return b""
        request.setHeader(b"content-type", patched.media_type.encode("ascii"))
        return patched.body.encode("utf-8")


class DrainResource(_Authenticated):
    """``POST`` starts draining; ``GET`` tells how it goes."""

    isLeaf = True

    def __init__(self, drain: Drain, secret: bytes, load: Callable[[], Mapping[str, object]] | None = None) -> None:
        super().__init__(secret)
        self.drain = drain
        self.load = load

    def render_POST(self, request: server.Request) -> bytes:
        """202: draining (again or for the first time)."""
        self.drain.start("admin request")
        request.setResponseCode(http.ACCEPTED)
        return self.render_GET(request)

    def render_GET(self, request: server.Request) -> bytes:
        """The drain's state as JSON, with the process's load (``cpu``, ``loop_lag_ms``, ``admitting``) when measured."""
        request.setHeader(b"content-type", b"application/json")
        state: dict[str, object] = {
            "state": self.drain.state.value,
            "sessions": self.drain.session_count(),
            "grace_remaining": self.drain.remaining(),
        }
        if self.load is not None:
            state.update(self.load())
        return json.dumps(state).encode("utf-8")


class ProbeResource(resource.Resource):
    """``/healthz`` (alive) or ``/readyz`` (alive and taking calls); no secret, for kubelets."""

    isLeaf = True

    def __init__(self, ready: Callable[[], bool] | None, host: IFleetTransceiver) -> None:
        super().__init__()
        self.ready = ready
        self.host = host

    def render_GET(self, request: server.Request) -> bytes:
        """200 or 503 with one line."""
        count = self.host.session_count()
        if self.ready is not None and not self.ready():
            return _text(request, http.SERVICE_UNAVAILABLE, f"draining sessions={count}")
        return _text(request, http.OK, f"ok sessions={count}")


class _QuietSite(server.Site):
    """No access log line per probe and scrape, and no software version in ``Server``."""

    noisy = False
    requestFactory = SignalingRequest
    displayTracebacks = False

    def log(self, request: http.Request) -> None:
        """Probes every few seconds are not worth a line each."""


def build_internal_site(
    host: IFleetTransceiver,
    secret: str,
    drain: Drain,
    metrics: Iterable[Callable[[], Iterable[Sample]]] = (),
    load: Callable[[], Mapping[str, object]] | None = None,
) -> server.Site:
    """The internal API of ``host`` behind ``secret``, with probes, drain and ``/metrics``.

    ``load()`` adds the process's load to ``GET /internal/v1/drain`` (what a
    host's own front door reads of its workers).
    """
    if not secret:
        raise ValueError("the internal API needs a fleet secret")
    key = secret.encode("ascii")
    root = resource.Resource()
    internal = resource.Resource()
    v1 = resource.Resource()
    root.putChild(b"internal", internal)
    internal.putChild(b"v1", v1)
    v1.putChild(b"sessions", SessionsResource(host, key))
    v1.putChild(b"drain", DrainResource(drain, key, load))
    root.putChild(b"healthz", ProbeResource(None, host))
    root.putChild(b"readyz", ProbeResource(lambda: not drain.draining, host))
    root.putChild(b"metrics", MetricsResource(make_registry(*metrics)))
    return _QuietSite(root)
