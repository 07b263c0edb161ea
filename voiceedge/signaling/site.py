# -*- test-case-name: tests.test_http_security -*-
"""The HTTP server of signaling: a deadline per request, a body cap enforced before reading, connections per address.

Twisted's own idle timeout restarts on every byte, so a client that sends
one byte every few seconds keeps a connection forever (issue 9, finding 5).
Here each request must arrive whole, headers and body, within
``request_timeout`` of the moment the server is ready for it (the
connection opening, or the previous response finishing); the clock does not
restart on a byte. A declared ``Content-Length`` over the cap is answered
``413`` at once, before any of the body is read, and the connection closed.
"""

from __future__ import annotations

import collections
import io
import re
from dataclasses import dataclass
from typing import IO, Any, Iterator, Sequence, cast

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import IResource

from voiceedge.metrics import Sample
from voiceedge.signaling.client_address import Network, is_trusted
from voiceedge.signaling.limits import CountedCap, address_key
from voiceedge.transceiver.credentials import loggable_id

__all__ = ["HttpLimits", "SignalingChannel", "SignalingRequest", "SignalingSite", "SERVER_NAME"]

#: What the ``Server`` header says: no software version (issue 9, finding 7).
SERVER_NAME = b"voiceedge"

log = Logger()


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on one client's use of the HTTP server."""

    #: Largest request body; a larger declared Content-Length is refused unread.
    max_body_bytes: int = 65536
    #: Seconds for a whole request (headers and body) to arrive; does not restart on a byte.
    request_timeout: float = 10.0
    #: Open connections from one address (IPv6: one /64) at once; 0 is no cap.
    max_connections_per_address: int = 32

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, not {self.max_body_bytes}")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if self.max_connections_per_address < 0:
            raise ValueError("max_connections_per_address cannot be negative")


class SignalingRequest(server.Request):
    """A request that never buffers more than the site's body cap, and names no server version.

    A chunked body is cut off as soon as it crosses the cap; the rest of it
    is discarded unread into memory.
    """

    body_too_large: bool = False

    def _body_cap(self) -> int | None:
        site = getattr(self.channel, "site", None)
        cap = getattr(site, "max_body_bytes", None)
        return cap if isinstance(cap, int) else None

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        """Set a response header; ``Server`` always says only :data:`SERVER_NAME`."""
        if isinstance(name, (bytes, str)) and (name.lower() in (b"server", "server")):
            value = SERVER_NAME
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        """Keep nothing of a body declared over the cap (the channel refuses it)."""
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


def _raw_response(status: int, message: bytes, reason: str) -> bytes:
    body = reason.encode("utf-8") + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\nServer: %s\r\nConnection: close\r\nCache-Control: no-store\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s"
        % (status, message, SERVER_NAME, len(body), body)
    )


class SignalingChannel(http.HTTPChannel):
    """An HTTP connection held to a whole-request deadline, counted against its address."""

    site: SignalingSite
    _deadline: IDelayedCall | None = None
    _address_key: str | None = None
    _from_proxy = False
    _bytes_this_request = 0

    def connectionMade(self) -> None:
        """Start the clock on the first request."""
        super().connectionMade()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        """Count the bytes of the request being read (for the 408 decision), then parse."""
        if not self._handlingRequest:
            self._bytes_this_request += len(data)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        """Refuse a declared body over the cap now, before reading any of it (and before any 100 Continue)."""
        length = self.length
        if length is not None and length > self.site.max_body_bytes:
            self.requests[-1].gotLength(length)  # keeps nothing of the body
            self.site.refusals["body_too_large"] += 1
            self._refuse(413, b"Content Too Large", "the request body is too large")
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        """The request is in: stop its clock."""
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        """The response is out: the next request's clock starts now."""
        if self.persistent:
            self._arm()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop the clock and give back the address's place."""
        self._disarm()
        if self._address_key is not None:
            self.site.connections.release(self._address_key)
            self._address_key = None
        if self._from_proxy:
            self.site.proxy_connections -= 1
            self._from_proxy = False
        super().connectionLost(reason)

    def _arm(self) -> None:
        self._disarm()
        self._bytes_this_request = 0
        self._deadline = self.site.clock.callLater(self.site.limits.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._bytes_this_request:
            self.site.refusals["request_timeout"] += 1
            self._refuse(408, b"Request Timeout", "the request did not arrive in time")
        else:
            self.site.refusals["idle_timeout"] += 1
            self._close()

    def _refuse(self, status: int, message: bytes, reason: str) -> None:
        if self.transport is not None:
            self.transport.write(_raw_response(status, message, reason))
        self._close()

    def _close(self) -> None:
        self.persistent = False
        # Nothing more from this client is read; a client that does not read
        # our last words is cut off after abortTimeout.
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self._disarm()
        self.loseConnection()
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.site.clock.callLater(  # type: ignore[assignment]
                self.abortTimeout, self.forceAbortClient
            )


_SESSION_PATH = re.compile(rb"^(/v1/(?:realtime/calls|whip)/)([^/?#]+)")


def redact_uri(uri: bytes) -> bytes:
    """``uri`` with a session id in its path shortened as in other logs."""

    def shorten(match: re.Match[bytes]) -> bytes:
        return match.group(1) + loggable_id(match.group(2).decode("latin-1")).encode("utf-8")

    return _SESSION_PATH.sub(shorten, uri, count=1)


def _access_log_line(timestamp: str, request: Any) -> str:
    """Twisted's combined log line, with session ids in paths shortened."""
    original = request.uri
    try:
        request.uri = redact_uri(original)
        return http.combinedLogFormatter(timestamp, request)
    finally:
        request.uri = original


class SignalingSite(server.Site):
    """A :class:`~twisted.web.server.Site` built of :class:`SignalingChannel` connections.

    The cap on connections per address counts TCP peers, which is all a
    listener sees when a connection opens. A peer in ``trusted_proxies`` (a
    load balancer, a reverse proxy) carries many clients' requests, so its
    connections are not capped; the proxy is where each client's connections
    can be counted.
    """

    protocol = SignalingChannel  # type: ignore[assignment]
    requestFactory = SignalingRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        limits: HttpLimits = HttpLimits(),
        reactor: IReactorTime | None = None,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast(IReactorTime, global_reactor)
        super().__init__(
            resource,
            requestFactory=SignalingRequest,
            reactor=reactor,
            logFormatter=_access_log_line,
            # Twisted's idle timeout restarts on every byte; the channel's
            # request deadline replaces it.
            timeout=None,
        )
        self.clock: IReactorTime = reactor
        self.limits = limits
        self.max_body_bytes = limits.max_body_bytes
        self.connections = CountedCap(limits.max_connections_per_address)
        self.trusted_proxies = tuple(trusted_proxies)
        #: Connections open from trusted proxies (not capped per address).
        self.proxy_connections = 0
        self.refusals: collections.Counter[str] = collections.Counter()
        self.gate: Any = None  # the resource layer's Gate, set by build_site

    def buildProtocol(self, addr: IAddress) -> SignalingChannel | None:  # type: ignore[override]
        """A channel for ``addr``, or ``None`` (the connection is closed) past its address's cap."""
        host = str(getattr(addr, "host", addr))
        if self.trusted_proxies and is_trusted(host, self.trusted_proxies):
            proxied = cast(SignalingChannel | None, super().buildProtocol(addr))
            if proxied is not None:
                proxied._from_proxy = True
                self.proxy_connections += 1
            return proxied
        key = address_key(host)
        if not self.connections.acquire(key):
            self.refusals["connections_per_address"] += 1
            return None
        channel = cast(SignalingChannel | None, super().buildProtocol(addr))
        if channel is None:  # pragma: no cover - HTTPFactory always builds one
            self.connections.release(key)
            return None
        channel._address_key = key
        return channel

    def metrics(self) -> Iterator[Sample]:
        """Samples for :mod:`voiceedge.metrics`: refusals by reason, connections open."""
        for reason, n in sorted(self.refusals.items()):
            yield (
                "counter",
                "voiceedge_signaling_refusals",
                "HTTP requests and connections refused, by reason.",
                {"reason": reason},
                n,
            )
        yield (
            "gauge",
            "voiceedge_signaling_connections",
            "HTTP connections open.",
            {},
            self.connections.total() + self.proxy_connections,
        )
        checker_metrics = getattr(getattr(self.gate, "checker", None), "metrics", None)
        if checker_metrics is not None:
            yield from checker_metrics()
