"""Signaling tests' shared parts: a fake ISessionHost, stores that answer later, raw HTTP/1.1 over an in-memory transport."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import address, defer, task
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import server
from zope.interface import implementer

from voiceedge.signaling.auth import Caller, ClientSecrets, IClientSecretStore, IssuedSecret, SecretRecord
from voiceedge.signaling.interfaces import ISessionHost, OpenedSession, PatchedSession, SessionRefused
from voiceedge.signaling.ownership import ISessionLedger, Reservation, SessionLedger

OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
)
ANSWER = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n"


@implementer(ISessionHost)
class FakeHost:
    """Records every call; allocates ``s1``, ``s2``... unless told to refuse, crash or wait."""

    def __init__(self) -> None:
        self.offers: list[str] = []
        self.sessions: dict[str, str] = {}
        self.closed: list[tuple[str, str]] = []
        self.refusal: SessionRefused | None = None
        self.crash: Exception | None = None
        self.asynchronous = False
        self.waiting: list[defer.Deferred[None]] = []
        self.settings: list[object] = []
        self.patches: list[tuple[str, str, str, str | None]] = []
        self.end_listeners: list[object] = []
        self._next = 0

    def _allocate(self, offer_sdp: str) -> OpenedSession:
        self._next += 1
        session_id = f"s{self._next}"
        self.sessions[session_id] = offer_sdp
        return OpenedSession(session_id, ANSWER, '"e1"')

    def open_session(self, offer_sdp: str, settings: object = None, client: str | None = None) -> OpenedSession:
        """Record the offer, then allocate, refuse, crash or (asynchronously) wait."""
        self.offers.append(offer_sdp)
        self.settings.append(settings)
        if self.refusal is not None:
            raise self.refusal
        if self.crash is not None:
            raise self.crash
        if self.asynchronous:
            gate: defer.Deferred[None] = defer.Deferred()
            self.waiting.append(gate)
            return gate.addCallback(lambda _: self._allocate(offer_sdp))  # type: ignore[return-value]
        return self._allocate(offer_sdp)

    def close_session(self, session_id: str, reason: str) -> bool:
        """Record the close; ``False`` for an unknown id."""
        self.closed.append((session_id, reason))
        if self.sessions.pop(session_id, None) is None:
            return False
        self.end(session_id)
        return True

    def end(self, session_id: str) -> None:
        """The session ends (hung up here, or on its own): tell the listeners."""
        self.sessions.pop(session_id, None)
        for listener in self.end_listeners:
            listener(session_id)  # type: ignore[operator]

    def patch_session(self, session_id: str, media_type: str, body: str, if_match: str | None) -> PatchedSession:
        """Record the PATCH; a restart when the body says ``restart``, trickle otherwise."""
        self.patches.append((session_id, media_type, body, if_match))
        if session_id not in self.sessions:
            raise SessionRefused(404, "no such session")
        if if_match not in (None, "*", '"e1"'):
            raise SessionRefused(412, "other credentials")
        if "restart" in body:
            return PatchedSession(200, "a=ice-ufrag:new1\r\n", media_type, '"e2"')
        return PatchedSession(204, "", media_type, '"e1"')

    def add_end_listener(self, listener: object) -> None:
        """Remember who wants to hear of ends."""
        self.end_listeners.append(listener)

    def session_stats(self, session_id: str) -> dict[str, object] | None:
        """A stand-in for live numbers; ``None`` for an unknown id."""
        return {"state": "connected"} if session_id in self.sessions else None

    def session_count(self) -> int:
        """Open sessions."""
        return len(self.sessions)


@dataclass
class Response:
    """A parsed HTTP/1.1 response."""

    status: int
    headers: dict[str, list[str]]
    body: bytes
    raw: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_response(raw: bytes) -> Response:
    """Parse one complete HTTP response (Content-Length, chunked, or no body)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"incomplete response: {raw!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if "content-length" in headers:
        body = rest[: int(headers["content-length"][0])]
    elif headers.get("transfer-encoding") == ["chunked"]:
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    else:
        body = rest
    return Response(int(status), headers, body, raw)


class Connection:
    """One HTTP connection to the site over a StringTransport."""

    def __init__(self, site: server.Site, peer: str = "127.0.0.1") -> None:
        self.transport = StringTransport(
            peerAddress=(address.IPv6Address if ":" in peer else address.IPv4Address)("TCP", peer, 40000),
            hostAddress=address.IPv4Address("TCP", "127.0.0.1", 8080),
        )
        self.protocol = site.buildProtocol(self.transport.getPeer())
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        """Feed raw bytes from the client."""
        self.protocol.dataReceived(data)

    def response(self) -> Response:
        """Parse what the server has written so far."""
        return parse_response(self.transport.value())

    def drop(self) -> None:
        """The client goes away."""
        self.protocol.connectionLost(Failure(ConnectionError("client went away")))


def request_bytes(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: bool = True,
) -> bytes:
    """Build a raw HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:8080"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if content_length and (body or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int) -> bytes:
    """``body`` in chunked transfer coding, ``size`` bytes a chunk."""
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


@implementer(ISessionLedger)
class LaterLedger:
    """A :class:`SessionLedger` that answers ``delay`` seconds later on a Clock, as a shared store does.

    ``down = True`` fails every answer (a store that cannot be reached);
    ``failing`` names the methods that fail while the rest answer.
    """

    def __init__(self, clock: Clock, max_calls_per_key: int = 0, delay: float = 0.01) -> None:
        self.clock = clock
        self.delay = delay
        self.inner = SessionLedger(max_calls_per_key)
        self.down = False
        self.failing: set[str] = set()

    def _later(self, name: str, answer: Callable[[], Any]) -> "defer.Deferred[Any]":
        if self.down or name in self.failing:
            return task.deferLater(self.clock, self.delay, _fail, ConnectionError("the store is down"))
        return task.deferLater(self.clock, self.delay, answer)

    def reserve(self, caller: Caller) -> "defer.Deferred[Reservation | None]":
        return self._later("reserve", lambda: self.inner.reserve(caller))

    def cancel(self, reservation: Reservation) -> "defer.Deferred[None]":
        return self._later("cancel", lambda: self.inner.cancel(reservation))

    def opened(self, session_id: str, reservation: Reservation) -> "defer.Deferred[None]":
        return self._later("opened", lambda: self.inner.opened(session_id, reservation))

    def ended(self, session_id: str) -> "defer.Deferred[bool]":
        return self._later("ended", lambda: self.inner.ended(session_id))

    def may_manage(self, session_id: str, caller: Caller) -> "defer.Deferred[bool]":
        return self._later("may_manage", lambda: self.inner.may_manage(session_id, caller))


@implementer(IClientSecretStore)
class LaterSecrets:
    """:class:`ClientSecrets` answering ``delay`` seconds later on a Clock; ``down = True`` fails them all."""

    def __init__(self, clock: Clock, delay: float = 0.01) -> None:
        self.clock = clock
        self.delay = delay
        self.inner = ClientSecrets(clock, default_ttl=60, max_ttl=600)
        self.default_ttl = self.inner.default_ttl
        self.max_ttl = self.inner.max_ttl
        self.down = False

    @property
    def issued(self) -> int:
        return self.inner.issued

    @property
    def spent(self) -> int:
        return self.inner.spent

    def _later(self, answer: Callable[[], Any]) -> "defer.Deferred[Any]":
        if self.down:
            return task.deferLater(self.clock, self.delay, _fail, ConnectionError("the store is down"))
        return task.deferLater(self.clock, self.delay, answer)

    def issue(self, issuer: Caller, ttl: float | None, settings: Any) -> "defer.Deferred[IssuedSecret]":
        return self._later(lambda: self.inner.issue(issuer, ttl, settings))

    def spend(self, value: str) -> "defer.Deferred[SecretRecord | None]":
        return self._later(lambda: self.inner.spend(value))

    def put_back(self, record: SecretRecord) -> "defer.Deferred[None]":
        return self._later(lambda: self.inner.put_back(record))

    def unspent(self) -> int:
        return self.inner.unspent()


def _fail(error: Exception) -> Any:
    raise error
