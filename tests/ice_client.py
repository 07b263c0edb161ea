"""A minimal ICE client side for tests: builds the checks a browser sends."""

from __future__ import annotations

import os

from voiceedge.wire import stun


def binding_request(
    username: str,
    password: str,
    *,
    use_candidate: bool = False,
    controlled: bool = False,
    sha256: bool = False,
    transaction_id: bytes | None = None,
) -> bytes:
    """A connectivity check as a controlling full agent sends it."""
    attributes: list[tuple[int, bytes]] = [
        (stun.Attr.USERNAME, username.encode()),
        (stun.Attr.PRIORITY, stun.encode_priority(1853824767)),
        (
            stun.Attr.ICE_CONTROLLED if controlled else stun.Attr.ICE_CONTROLLING,
            stun.encode_tie_breaker(0x1122334455667788),
        ),
    ]
    if use_candidate:
        attributes.append((stun.Attr.USE_CANDIDATE, b""))
    return stun.build_message(
        stun.METHOD_BINDING,
        stun.StunClass.REQUEST,
        transaction_id or os.urandom(12),
        attributes,
        integrity_key=password.encode(),
        integrity_sha256=sha256,
    )
