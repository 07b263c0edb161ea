# -*- test-case-name: tests.test_sctp_parts -*-
"""The SCTP State Cookie: a listener's whole TCB, sealed with an HMAC, so it keeps no state before COOKIE-ECHO.

RFC 9260 §5.1.3. The layout is ours (only we read it back): version, creation time, our tag,
the peer's tag, initial TSN, receiver window and stream counts, a flag for RE-CONFIG support,
then a truncated HMAC-SHA256 under a per-association secret.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

__all__ = ["COOKIE_SIZE", "StateCookie"]

# version, timestamp, our tag, peer tag, peer initial TSN, peer a_rwnd, peer OS, peer MIS, flags
_BODY = struct.Struct("!BdIIIIHHB")
_MAC_SIZE = 16
COOKIE_SIZE = _BODY.size + _MAC_SIZE
_VERSION = 1
_FLAG_RECONFIG = 0x01


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).digest()[:_MAC_SIZE]


@dataclass(slots=True, frozen=True)
class StateCookie:
    """What the INIT told us, and when, as it comes back in a COOKIE-ECHO."""

    created: float
    local_tag: int
    peer_tag: int
    peer_initial_tsn: int
    peer_rwnd: int
    peer_outbound_streams: int
    peer_inbound_streams: int
    peer_reconfig: bool

    def seal(self, secret: bytes) -> bytes:
        """The cookie's bytes, MAC included."""
        body = _BODY.pack(
            _VERSION,
            self.created,
            self.local_tag,
            self.peer_tag,
            self.peer_initial_tsn,
            self.peer_rwnd,
            self.peer_outbound_streams,
            self.peer_inbound_streams,
            _FLAG_RECONFIG if self.peer_reconfig else 0,
        )
        return body + _mac(secret, body)

    @classmethod
    def open(cls, secret: bytes, cookie: bytes) -> StateCookie | None:
        """The cookie sealed in ``cookie`` under ``secret``; None if its size, MAC or version is wrong."""
        if len(cookie) != COOKIE_SIZE:
            return None
        body, mac = cookie[: _BODY.size], cookie[_BODY.size :]
        if not hmac.compare_digest(mac, _mac(secret, body)):
            return None
        version, created, local_tag, peer_tag, peer_tsn, rwnd, os_, mis, flags = _BODY.unpack(body)
        if version != _VERSION:
            return None
        return cls(created, local_tag, peer_tag, peer_tsn, rwnd, os_, mis, bool(flags & _FLAG_RECONFIG))
