"""Tests for voiceedge.wire.route_token: the routing token in the server ICE ufrag."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import re
import socket

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from voiceedge.wire.errors import WireError
from voiceedge.wire.route_token import (
    NONCE_SIZE,
    TAG_SIZE,
    Route,
    RouteTokenCodec,
    TokenError,
    _precomputed_hmac,
)

ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]{4,256}$")
KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
OTHER_FLEET = b"another fleet's secret, 32 bytes"

ROUTES = [
    Route(0, ("10.0.0.1", 4000)),
    Route(1, ("192.168.255.254", 65535)),
    Route(65535, ("0.0.0.0", 1)),
    Route(7, ("::1", 3478)),
    Route(300, ("fd00:1234:5678:9abc::42", 50000)),
    Route(42, ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 1)),
]


def codec(keys: dict[int, bytes] | None = None, issuing: int = 1) -> RouteTokenCodec:
    """A codec under test keys."""
    return RouteTokenCodec(keys if keys is not None else {1: KEY_1}, issuing)


def b64(raw: bytes) -> str:
    """Base64 text of raw token bytes."""
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def unb64(token: str) -> bytes:
    """Raw bytes of a token."""
    return binascii.a2b_base64(token)


BAD_ROUTES = [
    Route(-1, ("10.0.0.1", 1)),
    Route(65536, ("10.0.0.1", 1)),
    Route(0, ("10.0.0.1", 0)),
    Route(0, ("10.0.0.1", 65536)),
    Route(0, ("example.com", 1)),
    Route(0, ("fe80::1%eth0", 1)),
    Route(0, ("10.0.0.256", 1)),
]


BAD_KEYS = [
    ({}, 0),
    ({1: KEY_1}, 2),
    ({256: KEY_1}, 256),
    ({-1: KEY_1}, -1),
    ({1: b"too short"}, 1),
]


def _canonical(family: int, packed: bytes) -> str:
    return socket.inet_ntop(family, packed)


routes = st.builds(
    Route,
    st.integers(0, 0xFFFF),
    st.tuples(
        st.one_of(
            st.binary(min_size=4, max_size=4).map(lambda b: _canonical(socket.AF_INET, b)),
            st.binary(min_size=16, max_size=16).map(lambda b: _canonical(socket.AF_INET6, b)),
        ),
        st.integers(1, 0xFFFF),
    ),
)
CODEC = RouteTokenCodec({0: KEY_1, 255: KEY_2}, 255)


_B64ISH = "ABCDEFabcdef0123456789+/=-_ \u00e9"
token_lengths = st.sampled_from([36, 52]).flatmap(
    lambda n: st.text(alphabet=_B64ISH, min_size=n, max_size=n)
)


class RoundTripTests(SynchronousTestCase):
    """A route issued as a token decodes back to the same route."""

    def test_round_trip(self) -> None:
        """decode(issue(route)) gives the route back, IPv4 and IPv6, several clusters."""
        for route in ROUTES:
            with case(str(route)):
                c = codec()
                token = c.issue(route)
                self.assertTrue(ICE_CHARS.match(token))
                self.assertNotIn("=", token)
                self.assertEqual(c.decode(token), route)
                self.assertEqual(c.decode(token.encode("ascii")), route)

    def test_lengths(self) -> None:
        """An IPv4 token is 36 characters and an IPv6 one 52: short, and no padding."""
        c = codec()
        self.assertEqual(len(c.issue(ROUTES[0])), 36)
        self.assertEqual(len(c.issue(ROUTES[3])), 52)

    def test_unique_per_session(self) -> None:
        """The same route gives a different ufrag each time (random nonce)."""
        c = codec()
        tokens = {c.issue(ROUTES[0]) for _ in range(200)}
        self.assertEqual(len(tokens), 200)

    def test_fixed_nonce_is_deterministic(self) -> None:
        """With an explicit nonce, issue is a pure function."""
        c = codec()
        nonce = b"\x00" * NONCE_SIZE
        self.assertEqual(c.issue(ROUTES[0], nonce), c.issue(ROUTES[0], nonce))
        self.assertNotEqual(c.issue(ROUTES[0], nonce), c.issue(ROUTES[1], nonce))

    def test_decode_username(self) -> None:
        """The server ufrag is the part of a STUN USERNAME before the first colon."""
        c = codec()
        token = c.issue(ROUTES[4])
        self.assertEqual(c.decode_username(token.encode() + b":abcd"), ROUTES[4])
        self.assertEqual(c.decode_username(token.encode() + b":ab:cd"), ROUTES[4])
        self.assertEqual(c.decode_username(token.encode()), ROUTES[4])
        with self.assertRaises(TokenError):
            c.decode_username(b"abcd:" + token.encode())
        with self.assertRaises(TokenError):
            c.decode_username(b"")

    def test_decode_canonicalises_host(self) -> None:
        """A host given in a longhand spelling comes back in inet_ntop's canonical form."""
        c = codec()
        route = Route(5, ("0:0:0:0:0:0:0:1", 9))
        self.assertEqual(c.decode(c.issue(route)), Route(5, ("::1", 9)))

    def test_same_route_decodes_to_equal_objects(self) -> None:
        """Decoding many sessions of one transceiver gives equal Routes (interned)."""
        c = codec()
        a = c.decode(c.issue(ROUTES[1]))
        b = c.decode(c.issue(ROUTES[1]))
        self.assertEqual(a, b)
        self.assertIs(a, b)

    @given(routes, st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE))
    def test_hypothesis_round_trip(self, route: Route, nonce: bytes) -> None:
        """Every issued token fits the ice-char grammar and decodes to its route."""
        token = CODEC.issue(route, nonce)
        self.assertTrue(ICE_CHARS.match(token))
        self.assertEqual(CODEC.decode(token), route)


class SecrecyTests(SynchronousTestCase):
    """Only the version, key id and nonce are readable; the address is not."""

    def test_clear_fields(self) -> None:
        """Version and key id are readable in clear; the address is not."""
        c = RouteTokenCodec({1: KEY_1, 200: KEY_2}, 200)
        route = Route(0x0102, ("10.20.30.40", 0x0506))
        raw = unb64(c.issue(route, b"N" * NONCE_SIZE))
        self.assertEqual(raw[0], 1)
        self.assertEqual(raw[1], 200)
        self.assertEqual(raw[2:10], b"N" * NONCE_SIZE)
        self.assertNotIn(socket.inet_aton("10.20.30.40"), raw)
        self.assertNotIn(bytes([1, 2]) + socket.inet_aton("10.20.30.40") + bytes([5, 6]), raw)

    def test_address_hidden_across_nonces(self) -> None:
        """Two tokens for one route share nothing after the nonce (no fixed ciphertext)."""
        c = codec()
        a = unb64(c.issue(ROUTES[0], b"\x01" * NONCE_SIZE))
        b = unb64(c.issue(ROUTES[0], b"\x02" * NONCE_SIZE))
        self.assertNotEqual(a[10:-TAG_SIZE], b[10:-TAG_SIZE])


class TamperingTests(SynchronousTestCase):
    """Altered, foreign or random tokens raise TokenError (a WireError), nothing else."""

    def test_every_bit_flip_rejected(self) -> None:
        """Flipping any single bit of the decoded token makes it invalid."""
        c = RouteTokenCodec({1: KEY_1, 2: KEY_2}, 1)
        for route in (ROUTES[0], ROUTES[3]):
            raw = unb64(c.issue(route))
            for i in range(len(raw) * 8):
                tampered = bytearray(raw)
                tampered[i // 8] ^= 1 << (i % 8)
                with self.assertRaises(TokenError):
                    c.decode(b64(bytes(tampered)))

    def test_truncated_and_extended_rejected(self) -> None:
        """A token cut short or lengthened, as text or as bytes, is rejected."""
        for route in [ROUTES[0], ROUTES[3]]:
            with case(str(route)):
                c = codec()
                token = c.issue(route)
                raw = unb64(token)
                for n in range(len(token)):
                    with self.assertRaises(TokenError):
                        c.decode(token[:n])
                for extra in ("A", "AAAA", "AAA=", "+/+/", " ", "\n"):
                    with self.assertRaises(TokenError):
                        c.decode(token + extra)
                for n in range(1, len(raw)):
                    with self.assertRaises(TokenError):
                        c.decode(b64(raw[:n]))
                with self.assertRaises(TokenError):
                    c.decode(b64(raw + b"\x00\x00\x00"))

    def test_padding_and_foreign_alphabet_rejected(self) -> None:
        """Characters outside plain base64 ('-', '_', '=', spaces, non-ASCII) are rejected."""
        c = codec()
        token = c.issue(ROUTES[0])
        for bad in ("-", "_", "=", " ", "\u00e9", "\x00"):
            with self.assertRaises(TokenError):
                c.decode(bad + token[1:])
            with self.assertRaises(TokenError):
                c.decode(token[:-1] + bad)

    def test_changed_key_id_rejected(self) -> None:
        """Relabelling a token with another known key id breaks its tag."""
        c = RouteTokenCodec({1: KEY_1, 2: KEY_2}, 1)
        raw = bytearray(unb64(c.issue(ROUTES[0])))
        raw[1] = 2
        with self.assertRaises(TokenError) as caught:
            c.decode(b64(bytes(raw)))
        self.assertRegex(str(caught.exception), "tag")
        raw[1] = 3
        with self.assertRaises(TokenError) as caught:
            c.decode(b64(bytes(raw)))
        self.assertRegex(str(caught.exception), "key id")

    def test_unknown_version_rejected(self) -> None:
        """A version other than 1 is rejected by name."""
        c = codec()
        raw = bytearray(unb64(c.issue(ROUTES[0])))
        raw[0] = 2
        with self.assertRaises(TokenError) as caught:
            c.decode(b64(bytes(raw)))
        self.assertRegex(str(caught.exception), "version")

    def test_other_fleet_rejected(self) -> None:
        """A token made under another fleet's secret, same key id, is rejected."""
        ours = codec()
        theirs = RouteTokenCodec({1: OTHER_FLEET}, 1)
        with self.assertRaises(TokenError) as caught:
            ours.decode(theirs.issue(ROUTES[0]))
        self.assertRegex(str(caught.exception), "tag")

    def test_random_strings_rejected(self) -> None:
        """Random base64 of the right lengths never passes (a 72-bit tag)."""
        c = codec()
        for n in (27, 39):
            for _ in range(500):
                raw = bytearray(os.urandom(n))
                raw[0], raw[1] = 1, 1  # get past the clear checks to the tag
                with self.assertRaises(TokenError):
                    c.decode(b64(bytes(raw)))

    def test_token_error_is_wire_error(self) -> None:
        """TokenError is caught by the one type packet paths catch."""
        self.assertTrue(issubclass(TokenError, WireError))
        self.assertTrue(issubclass(TokenError, ValueError))

    @given(st.one_of(st.text(), token_lengths))
    def test_hypothesis_text_raises_only_token_error(self, text: str) -> None:
        """Arbitrary text either decodes (never, in practice) or raises TokenError."""
        try:
            CODEC.decode(text)
        except TokenError:
            pass

    @given(st.binary(max_size=80))
    def test_hypothesis_bytes_raise_only_token_error(self, data: bytes) -> None:
        """Arbitrary bytes as a USERNAME raise only TokenError."""
        try:
            CODEC.decode_username(data)
        except TokenError:
            pass


class KeyTests(SynchronousTestCase):
    """Key ids, secrets, rotation and the HMAC under the tag."""

    def test_key_rotation(self) -> None:
        """Old tokens keep working while both keys are loaded, and stop once the old one is dropped."""
        old = RouteTokenCodec({1: KEY_1}, 1)
        both = RouteTokenCodec({1: KEY_1, 2: KEY_2}, 2)
        new_only = RouteTokenCodec({2: KEY_2}, 2)
        old_token = old.issue(ROUTES[0])
        new_token = both.issue(ROUTES[3])
        self.assertEqual(unb64(new_token)[1], 2)
        self.assertEqual(both.decode(old_token), ROUTES[0])
        self.assertEqual(both.decode(new_token), ROUTES[3])
        self.assertEqual(new_only.decode(new_token), ROUTES[3])
        with self.assertRaises(TokenError) as caught:
            new_only.decode(old_token)
        self.assertRegex(str(caught.exception), "key id")
        with self.assertRaises(TokenError):
            old.decode(new_token)

    def test_bad_keys_rejected(self) -> None:
        """Key ids must be 0..255, secrets at least 16 bytes, and the issuing id present."""
        for keys, issuing in BAD_KEYS:
            with case(f"keys={keys!r}, issuing={issuing!r}"):
                with self.assertRaises(ValueError):
                    RouteTokenCodec(keys, issuing)

    def test_precomputed_hmac_is_hmac_sha256(self) -> None:
        """The precomputed-pad HMAC equals the standard library's, short and long keys."""
        for key in (b"k" * 16, b"k" * 64, b"k" * 100):
            mac = _precomputed_hmac(key)
            for msg in (b"", b"x", b"y" * 200):
                self.assertEqual(mac(msg), hmac.digest(key, msg, hashlib.sha256))


class IssueArgumentTests(SynchronousTestCase):
    """issue refuses what cannot be a route or a nonce."""

    def test_issue_rejects_bad_routes(self) -> None:
        """issue raises ValueError for what cannot be a route."""
        for route in BAD_ROUTES:
            with case(str(route)):
                with self.assertRaises(ValueError):
                    codec().issue(route)

    def test_issue_rejects_bad_nonce(self) -> None:
        """A test-supplied nonce must be exactly NONCE_SIZE bytes."""
        with self.assertRaises(ValueError):
            codec().issue(ROUTES[0], b"short")
