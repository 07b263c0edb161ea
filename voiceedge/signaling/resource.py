# -*- test-case-name: tests.test_signaling -*-
"""HTTP signaling: SDP offer/answer over POST (OpenAI Realtime and WHIP spellings), client secrets, DELETE, health, demo page.

Every API request passes a :class:`Gate` first: CORS, the client address's
rate, the caller's credential (``401``), the key's rate and concurrent calls
(``429``); a session is read, restarted or ended only by the credential that
opened it (``404`` for anyone else).
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar, cast
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource, Resource

from voiceedge.signaling.auth import (
    Caller,
    ICredentialChecker,
    Maybe,
    Purpose,
    TooManySecrets,
    Unauthorized,
)
from voiceedge.signaling.cors import CorsPolicy
from voiceedge.signaling.client_address import Network, client_address
from voiceedge.signaling.interfaces import (
    SDPFRAG_TYPE,
    ISessionHost,
    OpenedSession,
    PatchedSession,
    SessionRefused,
)
from voiceedge.signaling.limits import CallLimits, TokenBuckets, address_key
from voiceedge.signaling.ownership import ISessionLedger, Reservation, SessionLedger
from voiceedge.signaling.settings import SignalingSettings
from voiceedge.signaling.site import SignalingRequest, SignalingSite

__all__ = ["build_site", "Gate", "HttpRefusal", "SignalingSite", "SignalingRequest", "STATIC_DIR"]

log = Logger()

T = TypeVar("T")

STATIC_DIR = Path(__file__).resolve().parent / "static"

_SDP_TYPE = b"application/sdp"
_TEXT_TYPE = b"text/plain; charset=utf-8"
_JSON_TYPE = b"application/json"
# A client secret's session settings, as JSON: bounded, since each unspent
# secret keeps its settings in memory.
MAX_SETTINGS_BYTES = 8192
MIN_SECRET_TTL = 10

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


def _text(request: server.Request, status: int, message: str) -> bytes:
    """Answer ``status`` with a one-line text/plain body."""
    body = (message.rstrip("\n") + "\n").encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", _TEXT_TYPE)
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def _json_error(request: server.Request, status: int, message: str) -> bytes:
    """Answer ``status`` with an error body shaped as OpenAI's API shapes them."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps({"error": {"message": message, "type": kind}}).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", _JSON_TYPE)
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def _media_type(request: server.Request) -> bytes | None:
    """The bare, lower-cased media type of the request body, parameters dropped."""
    value = request.getHeader(b"content-type")
    if value is None:
        return None
    return value.split(b";", 1)[0].strip().lower()


class HttpRefusal(Exception):
    """Stop handling a request and answer ``status`` with ``reason`` and ``headers``."""

    def __init__(self, status: int, reason: str, headers: Mapping[bytes, bytes] = {}) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers)


class Gate:
    """What every API request passes before it acts: credentials, rates, caps, ownership.

    One gate serves one site; a fleet front door builds its own around its
    own :class:`ICredentialChecker` and :class:`ISessionLedger`. The checker
    and the ledger may answer later (a store in Redis): the methods that ask
    them are coroutines, which finish at once when the answers are there at
    once. A store that fails is answered ``503`` with ``Retry-After``.
    """

    #: Retry-After of the 503 when a shared store cannot answer.
    retry_after_store = 2
    #: Seconds between two warnings about a failing store.
    warn_interval = 10.0

    def __init__(
        self,
        checker: ICredentialChecker,
        cors: CorsPolicy,
        ledger: ISessionLedger,
        limits: CallLimits,
        clock: IReactorTime,
        refusals: collections.Counter[str] | None = None,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.checker = checker
        self.cors = cors
        self.ledger = ledger
        self.limits = limits
        self.clock = clock
        self.address_rate = TokenBuckets(clock, limits.per_address)
        self.key_rate = TokenBuckets(clock, limits.per_key)
        self.refusals: collections.Counter[str] = collections.Counter() if refusals is None else refusals
        self.trusted_proxies = tuple(trusted_proxies)
        self.store_errors = 0
        self._warned_at = float("-inf")

    def client(self, request: server.Request) -> str:
        """The caller's address: the TCP peer, or further left in ``X-Forwarded-For`` behind trusted proxies.

        What the per-address rate limit counts and what places a call in a
        region. A peer that is not an IP address (a UNIX socket) is its own name.
        """
        peer = str(getattr(request.getClientAddress(), "host", ""))
        address = client_address(
            peer, request.requestHeaders.getRawHeaders(b"x-forwarded-for") or [], self.trusted_proxies
        )
        return peer if address is None else str(address)

    async def asked(self, what: str, call: Callable[[], Maybe[T]]) -> T:
        """``call()``'s answer, now or once its Deferred fires; a store failure becomes a ``503`` refusal.

        The stores' own answers (:class:`Unauthorized`, :class:`TooManySecrets`)
        pass through as they are.
        """
        try:
            return await _settled(call())
        except (HttpRefusal, Unauthorized, TooManySecrets):
            raise
        except Exception:
            self.refusals["store_unavailable"] += 1
            self._store_failed(what, Failure())
            raise HttpRefusal(
                http.SERVICE_UNAVAILABLE,
                "cannot check this request now; try again shortly",
                {b"Retry-After": str(self.retry_after_store).encode("ascii")},
            ) from None

    def _store_failed(self, what: str, failure: Failure) -> None:
        self.store_errors += 1
        now = self.clock.seconds()
        if now - self._warned_at >= self.warn_interval:
            self._warned_at = now
            log.warn("signaling: {what} failed ({why}); answering 503 ({n} so far)", what=what,
                     why=failure.getErrorMessage() or failure.type.__name__, n=self.store_errors)

    def background(self, what: str, result: Maybe[object]) -> None:
        """Let ``result`` finish on its own; a failure is logged (as a store failure), not raised."""
        if isinstance(result, defer.Deferred):
            result.addErrback(lambda f: self._store_failed(what, f))

    async def caller(self, request: server.Request, purpose: Purpose) -> Caller:
        """The authenticated caller, or a ``401`` refusal with ``WWW-Authenticate``."""
        authorization = request.getHeader(b"authorization")
        try:
            return await self.asked("checking a credential", lambda: self.checker.caller_for(authorization, purpose))
        except Unauthorized as e:
            self.refusals["unauthorized"] += 1
            raise HttpRefusal(http.UNAUTHORIZED, e.reason, {b"WWW-Authenticate": e.challenge()}) from None

    def limit_address(self, request: server.Request) -> None:
        """Take a token from the client address's bucket, or refuse with ``429``.

        The client address is the one :meth:`client` finds: behind a load
        balancer listed in ``trusted_proxies``, the caller's, not the balancer's.
        """
        wait = self.address_rate.take(address_key(self.client(request)))
        if wait:
            self.refusals["rate_per_address"] += 1
            raise _too_many("too many calls from this address", wait)

    async def admit_call(self, request: server.Request) -> Reservation:
        """Check everything a new call needs before its offer is read; hold its key's place.

        The reservation returned holds a place under its key's cap (and its
        caller may have spent a client secret): :meth:`call_opened` or
        :meth:`call_failed` must follow.
        """
        self.limit_address(request)
        caller = await self.caller(request, Purpose.NEW_CALL)
        if caller.key_name is not None:
            wait = self.key_rate.take(caller.key_name)
            if wait:
                self.refusals["rate_per_key"] += 1
                self.background("giving back a client secret", self.checker.refund(caller))
                raise _too_many("too many calls for this key", wait)
        try:
            reservation = await self.asked("holding a call's place", lambda: self.ledger.reserve(caller))
        except HttpRefusal:
            self.background("giving back a client secret", self.checker.refund(caller))
            raise
        if reservation is None:
            self.refusals["calls_per_key"] += 1
            self.background("giving back a client secret", self.checker.refund(caller))
            raise _too_many("this key has as many calls open as it may", self.limits.retry_after_at_cap)
        return reservation

    async def call_opened(self, session_id: str, reservation: Reservation) -> None:
        """The admitted call is open as ``session_id``; a ``503`` refusal when that cannot be recorded."""
        await self.asked("recording a call's owner", lambda: self.ledger.opened(session_id, reservation))

    def call_failed(self, reservation: Reservation) -> None:
        """The admitted call did not open: free its place, give back its secret."""
        self.background("freeing a call's place", self.ledger.cancel(reservation))
        self.background("giving back a client secret", self.checker.refund(reservation.caller))

    def session_ended(self, session_id: str) -> None:
        """A session ended, however it ended: forget its owner, free its key's place (an end listener)."""
        self.background("forgetting a call's owner", self.ledger.ended(session_id))

    async def session_caller(self, request: server.Request, session_id: str) -> Caller:
        """The caller, if it may manage ``session_id``; ``401`` without a credential, else ``404``."""
        caller = await self.caller(request, Purpose.SESSION)
        if not await self.asked("looking up a call's owner", lambda: self.ledger.may_manage(session_id, caller)):
            self.refusals["not_owner"] += 1
            raise HttpRefusal(http.NOT_FOUND, "no such session")
        return caller


async def _settled(value: Maybe[T]) -> T:
    """``value``, or what it fires with when it is a Deferred."""
    if isinstance(value, defer.Deferred):
        return cast(T, await value)
    return value


def _too_many(reason: str, wait: float) -> HttpRefusal:
    seconds = max(1, math.ceil(wait))
    return HttpRefusal(429, reason, {b"Retry-After": str(seconds).encode("ascii")})


class _Endpoint(Resource):
    """A resource that answers a fixed set of methods, CORS included, in plain text."""

    methods: ClassVar[tuple[bytes, ...]] = ()

    def __init__(self, cors: CorsPolicy) -> None:
        super().__init__()
        self.cors = cors

    def _allow(self) -> bytes:
        return b", ".join(self.methods + (b"OPTIONS",))

    def _error(self, request: server.Request, status: int, reason: str) -> bytes:
        return _text(request, status, reason)

    def render(self, request: server.Request) -> bytes | int:
        """Dispatch on the method; OPTIONS, unknown methods and refusals are answered here."""
        self.cors.decorate(request)
        if self.isLeaf and request.postpath:
            # A path below a leaf (``/healthz/x``, ``/calls/<id>/x``) names nothing.
            return self._error(request, http.NOT_FOUND, "not found")
        method = request.method
        if method == b"HEAD" and b"GET" in self.methods:
            method = b"GET"
        if method == b"OPTIONS":
            return self._options(request)
        if method not in self.methods:
            request.setHeader(b"Allow", self._allow())
            return self._error(request, http.NOT_ALLOWED, "method not allowed")
        handler: Callable[[server.Request], Maybe[bytes | int]] = getattr(
            self, "render_" + method.decode("ascii")
        )
        return self._deliver(request, defer.ensureDeferred(self._checked(request, handler)))

    async def _checked(
        self, request: server.Request, handler: Callable[[server.Request], Maybe[bytes | int]]
    ) -> bytes | int:
        await _settled(self.check(request))
        if request._disconnected:
            return server.NOT_DONE_YET  # it left while it was checked; its body is gone
        return await _settled(handler(request))

    def _deliver(self, request: server.Request, outcome: defer.Deferred[bytes | int]) -> bytes | int:
        """What to return from ``render``: the body when ``outcome`` has fired, else ``NOT_DONE_YET``.

        A check or handler that waited for a store answers later; its body (or
        refusal) is written then, unless the client has gone. A handler that
        returns ``NOT_DONE_YET`` writes its own response.
        """
        now: list[bytes | int] = []
        rendering = True

        def settle(result: bytes | int | Failure) -> None:
            body = self._body(request, result)
            if rendering:
                now.append(body)
            elif body is not server.NOT_DONE_YET and not (request.finished or request._disconnected):
                request.write(cast(bytes, body))
                request.finish()

        outcome.addBoth(settle)
        rendering = False
        return now[0] if now else server.NOT_DONE_YET

    def _body(self, request: server.Request, result: bytes | int | Failure) -> bytes | int:
        if not isinstance(result, Failure):
            return result
        if result.check(HttpRefusal):
            refusal = cast(HttpRefusal, result.value)
            for name, value in refusal.headers.items():
                request.setHeader(name, value)
            return self._error(request, refusal.status, refusal.reason)
        log.failure("answering {method} failed", result, method=request.method)
        return self._error(request, http.INTERNAL_SERVER_ERROR, "internal error")

    def check(self, request: server.Request) -> Maybe[object]:
        """Raise (or fail with) :class:`HttpRefusal` before any method runs (a subclass's access rule)."""
        return None

    def _options(self, request: server.Request) -> bytes:
        """Answer a CORS preflight (or a plain OPTIONS) with what is allowed; no credential needed."""
        request.setResponseCode(http.NO_CONTENT)
        request.setHeader(b"Allow", self._allow())
        self.cors.preflight(request)
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
    """``POST`` an SDP offer here to open a session; ``/<id>`` children are the sessions."""

    methods = (b"POST",)

    def __init__(
        self,
        host: ISessionHost,
        gate: Gate,
        location_prefix: str,
        max_body_bytes: int,
    ) -> None:
        super().__init__(gate.cors)
        self.host = host
        self.gate = gate
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
        return SessionResource(self.host, self.gate, session_id, self.max_body_bytes)

    def render_POST(self, request: server.Request) -> defer.Deferred[int]:
        """Admit the caller, validate the offer, ask the host for an answer, answer 201 with it."""
        return defer.ensureDeferred(self._post(request))

    async def _post(self, request: server.Request) -> int:
        reservation = await self.gate.admit_call(request)
        if request._disconnected:
            # It left while its credential was checked (its body is gone too): open nothing.
            self.gate.call_failed(reservation)
            return server.NOT_DONE_YET
        try:
            offer = self._offer(request)
        except HttpRefusal:
            self.gate.call_failed(reservation)
            raise

        finished = request.notifyFinish()
        gone: list[Failure] = []
        finished.addErrback(gone.append)
        d: defer.Deferred[OpenedSession] = defer.maybeDeferred(
            cast(Callable[..., OpenedSession], self.host.open_session),
            offer,
            reservation.caller.settings,
            client=self.gate.client(request) or None,
        )
        d.addCallbacks(
            self._answered,
            self._refused,
            callbackArgs=(request, gone, reservation),
            errbackArgs=(request, gone, reservation),
        )
        d.addErrback(self._crashed, request, gone, reservation)
        return server.NOT_DONE_YET

    def _offer(self, request: server.Request) -> str:
        if _media_type(request) != _SDP_TYPE:
            raise HttpRefusal(http.UNSUPPORTED_MEDIA_TYPE, "the offer must be Content-Type: application/sdp")
        if getattr(request, "body_too_large", False):
            self._close_after(request)
            raise HttpRefusal(http.REQUEST_ENTITY_TOO_LARGE, "the offer is too large")
        body = request.content.read() if request.content is not None else b""
        if len(body) > self.max_body_bytes:
            self._close_after(request)
            raise HttpRefusal(http.REQUEST_ENTITY_TOO_LARGE, "the offer is too large")
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpRefusal(http.BAD_REQUEST, "the offer is not UTF-8") from None
        if not offer.strip():
            raise HttpRefusal(http.BAD_REQUEST, "the offer is empty")
        return offer

    @staticmethod
    def _close_after(request: server.Request) -> None:
        # The rest of the body was never read into memory; do not keep the
        # connection for another request behind it.
        request.setHeader(b"Connection", b"close")
        if request.channel is not None:
            request.channel.persistent = False

    def _answered(
        self, opened: OpenedSession, request: server.Request, gone: list[Failure], reservation: Reservation
    ) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._record(opened, request, gone, reservation))

    async def _record(
        self, opened: OpenedSession, request: server.Request, gone: list[Failure], reservation: Reservation
    ) -> None:
        """Record the owner (before the client can learn the Location), then answer 201."""
        try:
            await self.gate.call_opened(opened.session_id, reservation)
        except HttpRefusal as refusal:
            # Nobody could manage the call: end it rather than leave it unowned.
            self.host.close_session(opened.session_id, "its owner could not be recorded")
            self.gate.call_failed(reservation)
            if not (gone or request._disconnected):
                for name, value in refusal.headers.items():
                    request.setHeader(name, value)
                request.write(_text(request, refusal.status, refusal.reason))
                request.finish()
            return
        if gone or request._disconnected:
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

    def _refused(
        self, failure: Failure, request: server.Request, gone: list[Failure], reservation: Reservation
    ) -> None:
        failure.trap(SessionRefused)
        self.gate.call_failed(reservation)
        refusal = cast(SessionRefused, failure.value)
        if gone or request._disconnected:
            return
        status = refusal.status if 400 <= refusal.status <= 599 else http.INTERNAL_SERVER_ERROR
        if refusal.retry_after is not None:
            request.setHeader(b"Retry-After", str(refusal.retry_after).encode("ascii"))
        request.write(_text(request, status, refusal.reason))
        request.finish()

    def _crashed(
        self, failure: Failure, request: server.Request, gone: list[Failure], reservation: Reservation
    ) -> None:
        log.failure("opening a session failed", failure)
        if not failure.check(SessionRefused):
            self.gate.call_failed(reservation)
        if gone or request.finished or request._disconnected:
            return
        request.write(_text(request, http.INTERNAL_SERVER_ERROR, "internal error"))
        request.finish()


def _answer(
    request: server.Request,
    call: Callable[[], Any],
    respond: Callable[[server.Request, Any], bytes],
    what: str,
) -> bytes | int:
    """``respond(request, call())``, now or, when the host answers with a Deferred, once it fires.

    A host that is a proxy to another process (the fleet's front door)
    answers later; a :class:`SessionRefused` becomes its status either way,
    anything else a logged 500.
    """

    def refused(failure: Failure) -> bytes:
        if failure.check(SessionRefused):
            refusal = cast(SessionRefused, failure.value)
            status = refusal.status if 400 <= refusal.status <= 599 else http.INTERNAL_SERVER_ERROR
            return _text(request, status, refusal.reason)
        log.failure("{what} of a session failed", failure, what=what)
        return _text(request, http.INTERNAL_SERVER_ERROR, "internal error")

    try:
        result = call()
    except Exception:
        return refused(Failure())
    if not isinstance(result, defer.Deferred):
        return respond(request, result)

    def write(body: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.write(body)
        request.finish()

    result.addCallbacks(lambda value: respond(request, value), refused).addCallback(write)
    result.addErrback(lambda f: log.failure("answering a {what} failed", f, what=what))
    return server.NOT_DONE_YET


class SessionResource(_Endpoint):
    """One session: ``GET`` its live numbers, ``PATCH`` an ICE restart, ``DELETE`` it to hang up; only for whoever opened it."""

    methods = (b"GET", b"PATCH", b"DELETE")
    isLeaf = True

    def __init__(self, host: ISessionHost, gate: Gate, session_id: str, max_body_bytes: int = 65536) -> None:
        super().__init__(gate.cors)
        self.host = host
        self.gate = gate
        self.session_id = session_id
        self.max_body_bytes = max_body_bytes

    def check(self, request: server.Request) -> defer.Deferred[Caller]:
        """Every method needs the credential that opened the session: ``401`` without one, ``404`` for another."""
        return defer.ensureDeferred(self.gate.session_caller(request, self.session_id))

    def render_PATCH(self, request: server.Request) -> bytes | int:
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
        return _answer(
            request,
            lambda: self.host.patch_session(
                self.session_id,
                media_type.decode("ascii"),
                text,
                None if if_match is None else if_match.decode("latin-1"),
            ),
            self._patched,
            "PATCH",
        )

    def _patched(self, request: server.Request, patched: PatchedSession) -> bytes:
        request.setHeader(b"ETag", patched.etag.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setResponseCode(patched.status)
        if patched.status == http.NO_CONTENT:
            return b""
        answer = patched.body.encode("utf-8")
        request.setHeader(b"Content-Type", patched.media_type.encode("ascii"))
        request.setHeader(b"Content-Length", str(len(answer)).encode("ascii"))
        return answer

    def render_GET(self, request: server.Request) -> bytes | int:
        """200 with the session's stats as JSON, 404 when it is not open."""
        return _answer(request, lambda: self.host.session_stats(self.session_id), self._stats, "GET")

    @staticmethod
    def _stats(request: server.Request, stats: dict[str, object] | None) -> bytes:
        if stats is None:
            return _text(request, http.NOT_FOUND, "no such session")
        request.setHeader(b"Content-Type", _JSON_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(stats).encode("utf-8")

    def render_DELETE(self, request: server.Request) -> bytes | int:
        """204 when the session existed and is now closed, 404 when it did not."""
        return _answer(
            request, lambda: self.host.close_session(self.session_id, "client hung up"), self._closed, "DELETE"
        )

    @staticmethod
    def _closed(request: server.Request, closed: bool) -> bytes:
        if not closed:
            return _text(request, http.NOT_FOUND, "no such session")
        request.setResponseCode(http.NO_CONTENT)
        return b""


class ClientSecretsResource(_Endpoint):
    """``POST /v1/realtime/client_secrets``: an API key gets a short-lived ``ek_`` secret for a browser.

    The body is OpenAI's: ``{"expires_after": {"anchor": "created_at",
    "seconds": N}, "session": {...}}``, both optional. The answer is
    ``{"value": "ek_...", "expires_at": <unix seconds>, "session": {...}}``.
    The secret opens one call, which gets the ``session`` settings.
    """

    methods = (b"POST",)

    def __init__(self, gate: Gate, max_ttl: float) -> None:
        super().__init__(gate.cors)
        self.gate = gate
        self.max_ttl = max_ttl

    def _error(self, request: server.Request, status: int, reason: str) -> bytes:
        return _json_error(request, status, reason)

    def render_POST(self, request: server.Request) -> defer.Deferred[bytes | int]:
        """Check the API key and the body; answer 200 with the new secret."""
        return defer.ensureDeferred(self._mint(request))

    async def _mint(self, request: server.Request) -> bytes | int:
        self.gate.limit_address(request)
        issuer = await self.gate.caller(request, Purpose.MINT_SECRET)
        if request._disconnected:
            return server.NOT_DONE_YET  # it left while its key was checked
        ttl, settings = self._parse(request)
        checker = self.gate.checker
        try:
            issued = await self.gate.asked("issuing a client secret", lambda: checker.issue_secret(issuer, ttl, settings))
        except TooManySecrets:
            self.gate.refusals["client_secrets_full"] += 1
            raise _too_many("too many unused client secrets; try again shortly", 10) from None
        body = json.dumps(
            {
                "value": issued.value,
                "expires_at": int(issued.expires_at),
                "session": dict(issued.settings) if issued.settings is not None else {"type": "realtime"},
            }
        ).encode("utf-8")
        request.setHeader(b"Content-Type", _JSON_TYPE)
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    def _parse(self, request: server.Request) -> tuple[float | None, Mapping[str, Any] | None]:
        if getattr(request, "body_too_large", False):
            raise HttpRefusal(http.REQUEST_ENTITY_TOO_LARGE, "the request is too large")
        body = request.content.read() if request.content is not None else b""
        if not body.strip():
            return None, None
        if _media_type(request) != _JSON_TYPE:
            raise HttpRefusal(http.UNSUPPORTED_MEDIA_TYPE, "the body must be Content-Type: application/json")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise HttpRefusal(http.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(document, dict):
            raise HttpRefusal(http.BAD_REQUEST, "the body must be a JSON object")
        return self._ttl(document.get("expires_after")), self._settings(document.get("session"))

    def _ttl(self, expires_after: Any) -> float | None:
        if expires_after is None:
            return None
        if not isinstance(expires_after, dict):
            raise HttpRefusal(http.BAD_REQUEST, "expires_after must be an object")
        anchor = expires_after.get("anchor", "created_at")
        if anchor != "created_at":
            raise HttpRefusal(http.BAD_REQUEST, "expires_after.anchor must be 'created_at'")
        seconds = expires_after.get("seconds")
        if seconds is None:
            return None
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not MIN_SECRET_TTL <= seconds <= self.max_ttl:
            raise HttpRefusal(
                http.BAD_REQUEST,
                f"expires_after.seconds must be a whole number from {MIN_SECRET_TTL} to {int(self.max_ttl)}",
            )
        return float(seconds)

    @staticmethod
    def _settings(session: Any) -> Mapping[str, Any] | None:
        if session is None:
            return None
        if not isinstance(session, dict):
            raise HttpRefusal(http.BAD_REQUEST, "session must be an object")
        if session.get("type", "realtime") != "realtime":
            raise HttpRefusal(http.BAD_REQUEST, "session.type must be 'realtime'")
        if not isinstance(session.get("agent", ""), str):
            raise HttpRefusal(http.BAD_REQUEST, "session.agent must be an agent's name")
        if len(json.dumps(session)) > MAX_SETTINGS_BYTES:
            raise HttpRefusal(http.REQUEST_ENTITY_TOO_LARGE, f"session is over {MAX_SETTINGS_BYTES} bytes as JSON")
        return session


class AdminResource(_Endpoint):
    """An operator endpoint (``/metrics``): an API key, unless the service is open."""

    methods = (b"GET",)
    isLeaf = True

    def __init__(self, gate: Gate, inner: IResource) -> None:
        super().__init__(gate.cors)
        self.gate = gate
        self.inner = inner

    def check(self, request: server.Request) -> defer.Deferred[Caller]:
        """Only an API key may read it."""
        return defer.ensureDeferred(self.gate.caller(request, Purpose.ADMIN))

    def render_GET(self, request: server.Request) -> bytes:
        """What the wrapped resource renders."""
        return cast(bytes, self.inner.render(request))


class HealthResource(_Endpoint):
    """``GET /healthz``: ``ok sessions=<n>`` while the host answers."""

    methods = (b"GET",)
    isLeaf = True

    def __init__(self, host: ISessionHost, cors: CorsPolicy) -> None:
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

    def __init__(self, cors: CorsPolicy, body: bytes, content_type: bytes) -> None:
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

    def __init__(self, cors: CorsPolicy) -> None:
        super().__init__()
        self.cors = cors

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        """Anything not mounted is not found."""
        return _NotFound(self.cors)

    def render(self, request: server.Request) -> bytes:
        """Only reached for ``/`` without a demo page."""
        return _NotFound(self.cors).render(request)


def _demo_assets(cors: CorsPolicy, directory: Path = STATIC_DIR) -> dict[bytes, Resource]:
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
    checker: ICredentialChecker | None = None,
    ledger: ISessionLedger | None = None,
    extra: Mapping[bytes, IResource] = {},
    admin: Mapping[bytes, IResource] = {},
    reactor: IReactorTime | None = None,
) -> SignalingSite:
    """Build the signaling site for ``host`` as ``settings`` say.

    Routes: ``POST /v1/realtime/calls`` and ``POST /v1/whip`` (an SDP offer in,
    ``201`` with the answer and ``Location`` out), ``GET``/``DELETE`` on that
    ``Location``, ``POST /v1/realtime/client_secrets``, ``GET /healthz``, and
    with ``demo_page`` the demo at ``/``. ``extra`` children are mounted at
    the root as they are; ``admin`` children (``b"metrics"``) need an API
    key unless the service is open. ``checker`` defaults to the one
    ``settings`` describe (its keys file loaded now, client secrets in
    memory); ``ledger`` to a :class:`SessionLedger` in memory (a fleet's front
    doors pass stores they share). ``reactor`` is the clock of deadlines and
    rate limits (tests pass a Clock).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = cast(IReactorTime, global_reactor)
    if checker is None:
        checker = settings.checker(reactor)
    http_limits = settings.http_limits
    call_limits = settings.call_limits
    cors = CorsPolicy(settings.cors_origins)
    root = _Root(cors)
    proxies = settings.trusted_proxies
    site = SignalingSite(root, limits=http_limits, reactor=reactor, trusted_proxies=proxies)
    if ledger is None:
        ledger = SessionLedger(call_limits.max_calls_per_key)
    gate = Gate(checker, cors, ledger, call_limits, reactor, site.refusals, proxies)
    host.add_end_listener(gate.session_ended)
    site.gate = gate
    cap = http_limits.max_body_bytes
    v1 = _Root(cors)
    realtime = _Root(cors)
    root.putChild(b"v1", v1)
    v1.putChild(b"realtime", realtime)
    realtime.putChild(b"calls", CallsResource(host, gate, "/v1/realtime/calls", cap))
    realtime.putChild(b"client_secrets", ClientSecretsResource(gate, settings.client_secret_max_ttl))
    v1.putChild(b"whip", CallsResource(host, gate, "/v1/whip", cap))
    root.putChild(b"healthz", HealthResource(host, cors))
    if settings.demo_page:
        for name, asset in _demo_assets(cors).items():
            root.putChild(name, asset)
    for name, child in extra.items():
        root.putChild(name, child)
    for name, child in admin.items():
        root.putChild(name, AdminResource(gate, child))
    return site
