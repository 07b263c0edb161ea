# -*- test-case-name: tests.test_frontdoor -*-
"""The front door's HTTP client for transceivers' internal APIs: persistent connections, a deadline per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import Interface, implementer

from voiceedge.config import Address

__all__ = ["IInternalApi", "InternalApiClient", "InternalResponse"]


@dataclass(frozen=True, slots=True)
class InternalResponse:
    """What a transceiver answered."""

    status: int
    body: bytes
    content_type: bytes = b""
    location: bytes | None = None
    etag: bytes | None = None


class IInternalApi(Interface):
    """Requests to a transceiver's internal API."""

    def request(
        api: Address,
        method: bytes,
        path: str,
        body: bytes | None,
        content_type: bytes | None = None,
        headers: Mapping[bytes, bytes] = {},
    ) -> "defer.Deferred[InternalResponse]":
        """Send one request with the fleet secret; fails on a connection error or the deadline."""


@implementer(IBodyProducer)
class _Bytes:
    """A request body already in memory."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> "defer.Deferred[None]":
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        """Nothing to pause: it is written at once."""

    def resumeProducing(self) -> None:
        """Nothing to resume."""

    def stopProducing(self) -> None:
        """Nothing to stop."""




@implementer(IInternalApi)
class InternalApiClient:
    """:class:`IInternalApi` over plain HTTP on the internal network, connections kept open."""

    def __init__(self, reactor: Any, secret: str, timeout: float, max_per_host: int = 8) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self._authorization = b"Bearer " + secret.encode("ascii")
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_per_host
        self.pool.cachedConnectionTimeout = 30
        self.agent = Agent(reactor, pool=self.pool, connectTimeout=timeout)

    def request(
        self,
        api: Address,
        method: bytes,
        path: str,
        body: bytes | None = None,
        content_type: bytes | None = None,
        headers: Mapping[bytes, bytes] = {},
    ) -> "defer.Deferred[InternalResponse]":
        """One request; the whole exchange (connect, send, read the body) within ``timeout``."""
        host, port = api
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        sent: dict[bytes, list[bytes]] = {name: [value] for name, value in headers.items()}
        sent[b"authorization"] = [self._authorization]
        if content_type is not None:
            sent[b"content-type"] = [content_type]
        d = self.agent.request(
            method,
            f"http://{authority}{path}".encode("ascii"),
            Headers(sent),
            _Bytes(body) if body is not None else None,
        )

        def read(response: Any) -> "defer.Deferred[InternalResponse]":
            def done(data: bytes) -> InternalResponse:
                return InternalResponse(
                    response.code,
                    data,
                    _first(response.headers, b"content-type") or b"",
                    _first(response.headers, b"location"),
                    _first(response.headers, b"etag"),
                )

            return readBody(response).addCallback(done)

        answered: defer.Deferred[InternalResponse] = d.addCallback(read)
        answered.addTimeout(self.timeout, self.reactor)
        return answered

    def close(self) -> "defer.Deferred[Any]":
        """Close the kept connections."""
        return self.pool.closeCachedConnections()


def _first(headers: Headers, name: bytes) -> bytes | None:
    values = headers.getRawHeaders(name)
    return values[0] if values else None
