# -*- test-case-name: tests.test_credentials -*-
"""The server-side ICE credentials and the id of a new session."""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, slots=True)
class IceCredentials:
    """The ufrag and password a session's answer carries."""

    ufrag: str
    pwd: str


def _ice_chars(n_bytes: int) -> str:
    # Standard base64 without padding is exactly ICE's ice-char set
    # (ALPHA / DIGIT / "+" / "/"), so random bytes need no other mapping.
    return base64.b64encode(os.urandom(n_bytes)).decode("ascii").rstrip("=")


def random_ufrag() -> str:
    """A random 8-character ufrag: the default when no relay routes by token."""
    return _ice_chars(6)


def new_credentials(make_ufrag: Callable[[], str] = random_ufrag) -> IceCredentials:
    """Credentials for a new session.

    ``make_ufrag`` is where the ufrag comes from: random on a standalone
    transceiver, a routing token (see :mod:`voiceedge.wire.route_token`) when
    a relay routes by it. The password is 144 random bits, 24 characters
    (RFC 8839 asks for at least 128 bits in at least 22 characters).
    """
    return IceCredentials(make_ufrag(), _ice_chars(18))


#: Random bytes in a session id: the id in a Location is unguessable (issue 9).
SESSION_ID_BYTES = 16
#: Characters of a session id that logs show; the rest stays secret.
LOGGED_ID_CHARS = 6


def new_session_id() -> str:
    """A session id: 128 random bits, URL-safe base64 (22 characters)."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def loggable_id(session_id: str) -> str:
    """What a log line may show of a session id: a short prefix, enough to correlate.

    The full id names a session in signaling URLs; logs are read by more
    people than should be able to act on a session, so they never carry it.
    """
    return session_id[:LOGGED_ID_CHARS] + "..."
