# -*- test-case-name: tests.test_signaling -*-
"""``[signaling]``: the HTTP listener of a signaling site, typed and frozen."""

from __future__ import annotations

from dataclasses import dataclass

from voiceedge import config as c
from voiceedge.config import setting

__all__ = ["SignalingSettings"]


@dataclass(frozen=True, slots=True)
class SignalingSettings:
    """``[signaling]``: where the HTTP API listens and what it accepts."""

    listen: str = setting(c.nonempty, "tcp:8080:interface=127.0.0.1", "Twisted endpoint for HTTP signaling")
    demo_page: bool = setting(c.boolean, "no", "serve the demo page at /")
    max_body_bytes: int = setting(c.integer(1024, 1 << 20), "65536", "largest SDP offer accepted")
    cors_origins: tuple[str, ...] = setting(c.words, "", "origins allowed to call the API from a browser")
