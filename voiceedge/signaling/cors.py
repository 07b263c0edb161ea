# -*- test-case-name: tests.test_http_security -*-
"""CORS for browser SDKs: only configured origins, never ``null``, the headers the preflight asks for.

``*`` is a deliberate choice, not a reflection: the answer says
``Access-Control-Allow-Origin: *`` (the ``null`` origin of sandboxed frames
and files still gets nothing) and never ``Access-Control-Allow-Credentials``,
so a browser sends no cookies and reads no cookie-authenticated answer. The
API takes no cookies anyway: a page still needs a Bearer credential, so
``*`` only lets any page use a credential it already holds.
"""

from __future__ import annotations

import re
from typing import Sequence
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

__all__ = ["CorsPolicy", "parse_origin"]

ALLOWED_METHODS = b"GET, POST, PATCH, DELETE, OPTIONS"
#: Always allowed in a preflight: what OpenAI's SDKs send.
BASE_HEADERS = ("authorization", "content-type", "x-openai-agents-sdk")
EXPOSED_HEADERS = b"Location, ETag, Retry-After, WWW-Authenticate"
MAX_AGE = b"600"
# A preflight may ask for more headers; allow those that are valid names, up to a bound.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}\Z")
_MAX_REQUESTED_HEADERS = 32


def parse_origin(text: str) -> str:
    """An origin as configured: ``*``, or ``scheme://host[:port]`` and nothing else, lower-cased."""
    if text == "*":
        return text
    if text.lower() == "null":
        raise ValueError("'null' is the origin of sandboxed frames and files; it cannot be allowed")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin like https://app.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r} is not an origin: no path, query or user")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has a bad port") from None
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


class CorsPolicy:
    """Which origins may call the API from a browser, and the headers that say so."""

    def __init__(self, origins: Sequence[str]) -> None:
        normalised = [parse_origin(o) for o in origins]
        self.any = "*" in normalised
        self.origins = frozenset(o.encode("ascii") for o in normalised if o != "*")
        self.enabled = self.any or bool(self.origins)

    def allowed_origin(self, request: IRequest) -> bytes | None:
        """What ``Access-Control-Allow-Origin`` says for this request, or ``None``."""
        if not self.enabled:
            return None
        origin = request.getHeader(b"origin")
        if origin is None or origin == b"null":
            return None
        if origin.lower() in self.origins:
            return origin
        if self.any:
            return b"*"
        return None

    def decorate(self, request: IRequest) -> bool:
        """Add the CORS response headers when allowed; ``True`` if they were added."""
        if not self.enabled:
            return False
        # Caches must not hand one origin's answer to another.
        request.setHeader(b"Vary", b"Origin")
        origin = self.allowed_origin(request)
        if origin is None:
            return False
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Access-Control-Expose-Headers", EXPOSED_HEADERS)
        return True

    def preflight(self, request: IRequest) -> None:
        """Add a preflight's allowances: methods, the requested headers, max age."""
        if self.allowed_origin(request) is None:
            return
        request.setHeader(b"Access-Control-Allow-Methods", ALLOWED_METHODS)
        request.setHeader(b"Access-Control-Allow-Headers", self._allowed_headers(request))
        request.setHeader(b"Access-Control-Max-Age", MAX_AGE)
        request.setHeader(b"Vary", b"Origin, Access-Control-Request-Headers")

    @staticmethod
    def _allowed_headers(request: IRequest) -> bytes:
        names = list(BASE_HEADERS)
        asked = request.getHeader(b"access-control-request-headers") or b""
        for raw in asked.split(b",")[:_MAX_REQUESTED_HEADERS]:
            name = raw.strip().lower()
            if _TOKEN.match(name):
                text = name.decode("ascii")
                if text not in names:
                    names.append(text)
        return ", ".join(names).encode("ascii")
