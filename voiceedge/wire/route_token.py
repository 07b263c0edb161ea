# -*- test-case-name: tests.test_route_token -*-
"""The routing token a transceiver hides in its ICE ufrag and a relay reads back.

Layout (version 1), before base64; all integers big-endian::

    0      1      2             10                      n-9       n
    +------+------+-------------+-----------------------+---------+
    | ver  | kid  | nonce (8)   | sealed route (8 | 20) | tag (9) |
    +------+------+-------------+-----------------------+---------+

``sealed route`` is ``cluster (2) | ip (4 or 16) | port (2)`` XORed with the
first bytes of ``HMAC-SHA256(enc_key, nonce)``; ``tag`` is the first 9 bytes
of ``HMAC-SHA256(auth_key, everything before it)``. The token is 27 bytes for
an IPv4 transceiver and 39 for IPv6: multiples of 3, so the base64 text (36 or
52 characters) needs no ``=`` and stays inside ICE's ``ice-char`` grammar.
See docs/route-token.md for the reasoning.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
from binascii import Error as _Base64Error
from binascii import a2b_base64, b2a_base64
from dataclasses import dataclass
from typing import Callable, Mapping

from voiceedge.wire.errors import WireError

__all__ = [
    "TokenError",
    "Route",
    "RouteTokenCodec",
    "VERSION",
    "NONCE_SIZE",
    "TAG_SIZE",
    "MIN_KEY_SIZE",
]

VERSION = 1
NONCE_SIZE = 8
TAG_SIZE = 9
MIN_KEY_SIZE = 16

# Offsets into the decoded token.
_HEAD = 2  # version + key id
_SEALED = _HEAD + NONCE_SIZE
_V4_BODY = 2 + 4 + 2
_V6_BODY = 2 + 16 + 2
_V4_RAW = _SEALED + _V4_BODY + TAG_SIZE  # 27
_V6_RAW = _SEALED + _V6_BODY + TAG_SIZE  # 39
# Base64 text length -> decoded length; anything else is rejected before decoding.
_RAW_BY_TEXT_LEN = {_V4_RAW // 3 * 4: _V4_RAW, _V6_RAW // 3 * 4: _V6_RAW}

_ENC_LABEL = b"voiceedge route-token v1 encryption\x01"
_AUTH_LABEL = b"voiceedge route-token v1 authentication\x01"

# Decoded routes are interned by their plaintext: a fleet has few transceivers,
# so this turns inet_ntop + object construction into one dict lookup. Only
# authenticated plaintexts get in, so a forger cannot grow it; the bound is
# belt and braces.
_ROUTE_CACHE_MAX = 4096


class TokenError(WireError):
    """A ufrag that is not a valid routing token for this fleet."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a session lives: its cluster and its transceiver's media address.

    ``transceiver`` is ``(host, port)`` with the host as IPv4 or IPv6 text;
    :meth:`RouteTokenCodec.decode` returns it in the canonical
    ``socket.inet_ntop`` spelling.
    """

    cluster: int
    transceiver: tuple[str, int]


def _precomputed_hmac(key: bytes) -> Callable[[bytes], bytes]:
    """Return ``msg -> HMAC-SHA256(key, msg)`` with the keyed pads hashed once.

    RFC 2104 HMAC with the inner and outer SHA-256 states kept after their
    first block, so each call costs two short hashes and no key schedule:
    about 0.7 us against 1.7 us for ``hmac.digest`` on this OpenSSL.
    """
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    block = key.ljust(64, b"\x00")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def mac(msg: bytes) -> bytes:
        h = inner.copy()
        h.update(msg)
        o = outer.copy()
        o.update(h.digest())
        return o.digest()

    return mac


class _KeySlot:
    """The two derived MAC functions for one fleet key."""

    __slots__ = ("encrypt", "authenticate")

    def __init__(self, secret: bytes) -> None:
        # HKDF-Expand with the fleet secret as the PRK: one label per purpose,
        # so the keystream and the tag never share a key.
        self.encrypt = _precomputed_hmac(hmac.digest(secret, _ENC_LABEL, "sha256"))
        self.authenticate = _precomputed_hmac(hmac.digest(secret, _AUTH_LABEL, "sha256"))


def _pack_host(host: str) -> bytes:
    """Turn IPv4 or IPv6 text into 4 or 16 bytes, or raise ValueError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.inet_pton(family, host)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"not an IPv4 or IPv6 address: {host!r}") from e


class RouteTokenCodec:
    """Issue and check routing tokens under a set of fleet keys.

    ``keys`` maps key ids (0..255) to fleet secrets (at least 16 random
    bytes); every key in it is accepted by :meth:`decode`, and
    ``issuing_key_id`` names the one :meth:`issue` uses. Rotate by first
    deploying the new key everywhere, then switching the issuing id, then
    removing the old key once sessions issued under it have ended.
    """

    __slots__ = ("_slots", "_issuing_id", "_issuing", "_routes")

    def __init__(self, keys: Mapping[int, bytes], issuing_key_id: int) -> None:
        slots: dict[int, _KeySlot] = {}
        for key_id, secret in keys.items():
            if not isinstance(key_id, int) or not 0 <= key_id <= 255:
                raise ValueError(f"key id must be an integer 0..255, not {key_id!r}")
            if not isinstance(secret, bytes) or len(secret) < MIN_KEY_SIZE:
                raise ValueError(
                    f"key {key_id}: a fleet secret must be at least {MIN_KEY_SIZE} bytes"
                )
            slots[key_id] = _KeySlot(secret)
        if issuing_key_id not in slots:
            raise ValueError(f"issuing key id {issuing_key_id!r} is not among the keys")
        self._slots = slots
        self._issuing_id = issuing_key_id
        self._issuing = slots[issuing_key_id]
        self._routes: dict[bytes, Route] = {}

    @property
    def issuing_key_id(self) -> int:
        """The key id new tokens are issued under."""
        return self._issuing_id

    def issue(self, route: Route, nonce: bytes | None = None) -> str:
        """Return a fresh ufrag that routes to ``route``.

        ``nonce`` (8 bytes) is for tests; by default it comes from
        ``os.urandom`` and is what makes every session's ufrag different.
        Raises ValueError for a route that cannot be encoded.
        """
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        elif len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        cluster = route.cluster
        if not isinstance(cluster, int) or not 0 <= cluster <= 0xFFFF:
            raise ValueError(f"cluster must be 0..65535, not {cluster!r}")
        host, port = route.transceiver
        if not isinstance(port, int) or not 1 <= port <= 0xFFFF:
            raise ValueError(f"port must be 1..65535, not {port!r}")
        plain = cluster.to_bytes(2, "big") + _pack_host(host) + port.to_bytes(2, "big")
        slot = self._issuing
        stream = slot.encrypt(nonce)[: len(plain)]
        sealed = (int.from_bytes(plain, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            len(plain), "big"
        )
        body = bytes((VERSION, self._issuing_id)) + nonce + sealed
        raw = body + slot.authenticate(body)[:TAG_SIZE]
        return b2a_base64(raw, newline=False).decode("ascii")

    def decode(self, ufrag: str | bytes) -> Route:
        """Check a ufrag and return the route it carries.

        Raises TokenError for anything that is not a token issued under one
        of our keys: wrong length, characters outside base64, an unknown
        version or key id, or a tag that does not match.
        """
        raw_len = _RAW_BY_TEXT_LEN.get(len(ufrag))
        if raw_len is None:
            raise TokenError("route token has the wrong length")
        try:
            # strict_mode rejects whitespace, '-', '_' and stray '=' instead of
            # skipping them, so one token has exactly one spelling.
            raw = a2b_base64(ufrag, strict_mode=True)
        except (_Base64Error, ValueError, TypeError):
            raise TokenError("route token is not base64") from None
        if len(raw) != raw_len:
            raise TokenError("route token has the wrong length")
        if raw[0] != VERSION:
            raise TokenError(f"unknown route token version {raw[0]}")
        slot = self._slots.get(raw[1])
        if slot is None:
            raise TokenError(f"unknown route token key id {raw[1]}")
        body_end = raw_len - TAG_SIZE
        if not hmac.compare_digest(slot.authenticate(raw[:body_end])[:TAG_SIZE], raw[body_end:]):
            raise TokenError("route token tag does not match")
        size = body_end - _SEALED
        stream = slot.encrypt(raw[_HEAD:_SEALED])
        plain = (
            int.from_bytes(raw[_SEALED:body_end], "big") ^ int.from_bytes(stream[:size], "big")
        ).to_bytes(size, "big")
        route = self._routes.get(plain)
        if route is None:
            route = self._intern(plain)
        return route

    def decode_username(self, username: bytes) -> Route:
        """Return the route in a STUN USERNAME ``b"<server ufrag>:<client ufrag>"``."""
        return self.decode(username.partition(b":")[0])

    def _intern(self, plain: bytes) -> Route:
        """Build the Route for an authenticated plaintext and remember it."""
        family = socket.AF_INET if len(plain) == _V4_BODY else socket.AF_INET6
        route = Route(
            int.from_bytes(plain[:2], "big"),
            (socket.inet_ntop(family, plain[2:-2]), int.from_bytes(plain[-2:], "big")),
        )
        if len(self._routes) >= _ROUTE_CACHE_MAX:
            self._routes.clear()
        self._routes[plain] = route
        return route
