"""Tests for voiceedge.wire.stun: RFC 5769 / RFC 8489 vectors, framing rules, round trips."""

from __future__ import annotations

import hashlib
import hmac
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from voiceedge.wire.errors import WireError
from voiceedge.wire.stun import (
    MAGIC_COOKIE,
    METHOD_BINDING,
    Attr,
    StunClass,
    StunError,
    StunMessage,
    binding_error,
    binding_success,
    build_message,
    decode_error_code,
    decode_priority,
    decode_tie_breaker,
    decode_unknown_attributes,
    decode_xor_address,
    encode_error_code,
    encode_priority,
    encode_tie_breaker,
    encode_unknown_attributes,
    encode_xor_address,
    is_stun,
    parse_message,
    peek_username,
    verify_fingerprint,
    verify_integrity,
)


def unhex(text: str) -> bytes:
    """Bytes from hex with whitespace and ``#`` comments allowed."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


# RFC 5769 §2.1-2.3 share this password and transaction id.
SHORT_TERM_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
TID = unhex("b7e7a701 bc34d686 fa87dfae")

# RFC 5769 §2.1 Sample Request (padding bytes are spaces, as printed there).
REQUEST = unhex(
    """
    0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
    8022 0010 5354554e 20746573 7420636c 69656e74   # SOFTWARE "STUN test client"
    0024 0004 6e0001ff                              # PRIORITY
    8029 0008 932ff9b1 51263b36                     # ICE-CONTROLLED
    0006 0009 6576746a 3a683676 59202020            # USERNAME "evtj:h6vY"
    0008 0014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
    8028 0004 e57a3bcf
    """
)

# RFC 5769 §2.2 Sample IPv4 Response: 192.0.2.1 port 32853.
IPV4_RESPONSE = unhex(
    """
    0101 003c 2112a442 b7e7a701 bc34d686 fa87dfae
    8022 000b 74657374 20766563 746f7220            # SOFTWARE "test vector"
    0020 0008 0001a147 e112a643                     # XOR-MAPPED-ADDRESS
    0008 0014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
    8028 0004 c07d4c96
    """
)

# RFC 5769 §2.3 Sample IPv6 Response: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
IPV6_RESPONSE = unhex(
    """
    0101 0048 2112a442 b7e7a701 bc34d686 fa87dfae
    8022 000b 74657374 20766563 746f7220
    0020 0014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
    0008 0014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
    8028 0004 c8fb0b4c
    """
)

# RFC 5769 §2.4 Sample Request with Long-Term Authentication (no FINGERPRINT).
LONG_TERM_REQUEST = unhex(
    """
    0001 0060 2112a442 78ad3433 c6ad72c0 29da412e
    0006 0012 e3839ee3 8388e383 aae38383 e382afe3 82b90000   # USERNAME
    0015 001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
    0014 000b 6578616d 706c652e 6f726700                      # REALM
    0008 0014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666
    """
)
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
# Key = MD5(username ":" realm ":" SASLprep(password)); "The\u00adM\u00aatr\u2168" -> "TheMatrIX".
LONG_TERM_KEY = hashlib.md5(f"{LT_USERNAME}:example.org:TheMatrIX".encode()).digest()

# RFC 8489 Appendix B.1: MESSAGE-INTEGRITY-SHA256 with USERHASH (key = SHA-256 of the same string).
SHA256_REQUEST = unhex(
    """
    0001 0090 2112a442 78ad3433 c6ad72c0 29da412e
    001e 0020 4a3cf38f ef6992bd a952c678 0417da0f 24819415 569e60b2 05c46e41 407f1704
    0015 0029 6f624d61 744a6f73 32414141 43662f2f 3439396b 39353464 364f4c33 346f4c39
              46535476 79363473 41000000
    0014 000b 6578616d 706c652e 6f726700
    001d 0004 00020000                                        # PASSWORD-ALGORITHM
    001c 0020 b5c7bf00 5b6c52a2 1c51c5e8 92f81924 136296cb 927c4314 9309278c c6518e65
    """
)
SHA256_KEY = hashlib.sha256(f"{LT_USERNAME}:example.org:TheMatrIX".encode()).digest()

VECTORS = [
    (REQUEST, SHORT_TERM_KEY, True),
    (IPV4_RESPONSE, SHORT_TERM_KEY, True),
    (IPV6_RESPONSE, SHORT_TERM_KEY, True),
    (LONG_TERM_REQUEST, LONG_TERM_KEY, False),
    (SHA256_REQUEST, SHA256_KEY, False),
]


def with_length(data: bytes, length: int) -> bytes:
    """*data* with the header length field replaced."""
    return data[:2] + struct.pack("!H", length) + data[4:]


def raw_message(body: bytes, msg_type: int = 0x0001) -> bytes:
    """A header with a correct length in front of *body*."""
    return struct.pack("!HHI", msg_type, len(body), MAGIC_COOKIE) + TID + body


ATTR_MI = struct.pack("!HH", 0x0008, 20) + b"\0" * 20
ATTR_FP = struct.pack("!HH", 0x8028, 4) + b"\0" * 4
ATTR_SW = struct.pack("!HH", 0x8022, 3) + b"abc\0"


MALFORMED = [
    ("empty", b""),
    ("short-header", REQUEST[:19]),
    ("top-bit-01", bytes([0x40]) + REQUEST[1:]),
    ("top-bit-10", bytes([0x80]) + REQUEST[1:]),
    ("cookie", REQUEST[:4] + b"\x21\x12\xa4\x43" + REQUEST[8:]),
    ("length-not-4n", with_length(REQUEST, 0x57)),
    ("length-short", with_length(REQUEST, 0x54)),
    ("trailing-bytes", REQUEST + b"\0\0\0\0"),
    ("truncated", REQUEST[:-4]),
    ("attr-overrun", raw_message(struct.pack("!HH", 0x8022, 5) + b"abcd")),
    ("attr-after-fingerprint", raw_message(ATTR_FP + ATTR_SW)),
    ("two-fingerprints", raw_message(ATTR_FP + ATTR_FP)),
    ("attr-after-integrity", raw_message(ATTR_MI + ATTR_SW)),
    ("two-integrities", raw_message(ATTR_MI + ATTR_MI)),
    ("integrity-after-fingerprint", raw_message(ATTR_FP + ATTR_MI)),
    ("sha1-after-sha256", raw_message(struct.pack("!HH", 0x001C, 32) + b"\0" * 32 + ATTR_MI)),
    ("attr-after-sha256", raw_message(struct.pack("!HH", 0x001C, 32) + b"\0" * 32 + ATTR_SW)),
    ("mi-16", raw_message(struct.pack("!HH", 0x0008, 16) + b"\0" * 16)),
    ("mi256-12", raw_message(struct.pack("!HH", 0x001C, 12) + b"\0" * 12)),
    ("mi256-36", raw_message(struct.pack("!HH", 0x001C, 36) + b"\0" * 36)),
    ("mi256-18", raw_message(struct.pack("!HH", 0x001C, 18) + b"\0" * 20)),
    ("fp-8", raw_message(struct.pack("!HH", 0x8028, 8) + b"\0" * 8)),
    ("priority-8", raw_message(struct.pack("!HH", 0x0024, 8) + b"\0" * 8)),
    ("tiebreak-4", raw_message(struct.pack("!HH", 0x802A, 4) + b"\0" * 4)),
    ("use-cand-4", raw_message(struct.pack("!HH", 0x0025, 4) + b"\0" * 4)),
]


BAD_BUILD_ARGUMENTS = [
    {"method": 0x1000},
    {"method": -1},
    {"transaction_id": b"short"},
    {"attributes": [(0x10000, b"")]},
    {"attributes": [(0x8022, b"x" * 0x10000)]},
    {"attributes": [(Attr.FINGERPRINT, b"\0" * 4)]},
    {"attributes": [(Attr.MESSAGE_INTEGRITY, b"\0" * 20)]},
    {"padding": b""},
]


# Types with placement or length rules are exercised by the tests above.
CONSTRAINED = {0x0008, 0x001C, 0x8028, 0x0024, 0x0025, 0x8029, 0x802A}

attributes_strategy = st.lists(
    st.tuples(
        st.integers(0, 0xFFFF).filter(lambda t: t not in CONSTRAINED),
        st.binary(max_size=40),
    ),
    max_size=8,
)
message_strategy = st.builds(
    StunMessage,
    method=st.integers(0, 0xFFF),
    message_class=st.sampled_from(StunClass),
    transaction_id=st.binary(min_size=12, max_size=12),
    attributes=attributes_strategy,
)


def check_hostile(data: bytes) -> None:
    """Every entry point either succeeds or raises StunError only."""
    try:
        msg = parse_message(data)
    except StunError:
        msg = None
    if msg is not None:
        assert peek_username(data) == msg.username()
        for accessor in (msg.xor_mapped_address, msg.error_code, msg.priority, msg.ice_controlled):
            try:
                accessor()
            except StunError:
                pass
    else:
        try:
            peek_username(data)
        except StunError:
            pass
    assert isinstance(verify_integrity(data, b"k"), bool)
    assert isinstance(verify_fingerprint(data), bool)
    assert isinstance(is_stun(data), bool)


class VectorTests(SynchronousTestCase):
    """The RFC 5769 and RFC 8489 test vectors parse, verify and rebuild byte for byte."""

    def test_rfc5769_request(self) -> None:
        """§2.1 parses into the documented values and both checks pass."""
        msg = parse_message(REQUEST)
        self.assertEqual(msg.method, METHOD_BINDING)
        self.assertIs(msg.message_class, StunClass.REQUEST)
        self.assertEqual(msg.transaction_id, TID)
        self.assertEqual(
            [t for t, _ in msg.attributes],
            [
                Attr.SOFTWARE,
                Attr.PRIORITY,
                Attr.ICE_CONTROLLED,
                Attr.USERNAME,
                Attr.MESSAGE_INTEGRITY,
                Attr.FINGERPRINT,
            ],
        )
        self.assertEqual(msg.software(), "STUN test client")
        self.assertEqual(msg.username(), b"evtj:h6vY")
        self.assertEqual(msg.priority(), 0x6E0001FF)
        self.assertEqual(msg.ice_controlled(), 0x932FF9B151263B36)
        self.assertIsNone(msg.ice_controlling())
        self.assertIs(msg.use_candidate, False)
        self.assertIsNone(msg.xor_mapped_address())
        self.assertIsNone(msg.error_code())
        self.assertEqual(msg.unknown_required(), [])
        self.assertTrue(verify_integrity(REQUEST, SHORT_TERM_KEY))
        self.assertTrue(verify_fingerprint(REQUEST))
        self.assertFalse(verify_integrity(REQUEST, b"wrong password"))

    def test_rfc5769_ipv4_response(self) -> None:
        """§2.2 decodes to 192.0.2.1:32853."""
        msg = parse_message(IPV4_RESPONSE)
        self.assertEqual((msg.method, msg.message_class), (METHOD_BINDING, StunClass.SUCCESS))
        self.assertEqual(msg.software(), "test vector")
        self.assertEqual(msg.xor_mapped_address(), ("192.0.2.1", 32853))
        self.assertTrue(verify_integrity(IPV4_RESPONSE, SHORT_TERM_KEY))
        self.assertTrue(verify_fingerprint(IPV4_RESPONSE))

    def test_rfc5769_ipv6_response(self) -> None:
        """§2.3 decodes to the documented IPv6 address."""
        msg = parse_message(IPV6_RESPONSE)
        self.assertIs(msg.message_class, StunClass.SUCCESS)
        self.assertEqual(msg.xor_mapped_address(), ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
        self.assertTrue(verify_integrity(IPV6_RESPONSE, SHORT_TERM_KEY))
        self.assertTrue(verify_fingerprint(IPV6_RESPONSE))

    def test_rfc5769_long_term_request(self) -> None:
        """§2.4 verifies with the MD5 long-term key and has no FINGERPRINT."""
        msg = parse_message(LONG_TERM_REQUEST)
        self.assertEqual(msg.username(), LT_USERNAME.encode())
        self.assertEqual(msg.get(Attr.NONCE), b"f//499k954d6OL34oL9FSTvy64sA")
        self.assertEqual(msg.get(Attr.REALM), b"example.org")
        self.assertTrue(verify_integrity(LONG_TERM_REQUEST, LONG_TERM_KEY))
        self.assertFalse(verify_integrity(LONG_TERM_REQUEST, SHORT_TERM_KEY))
        self.assertFalse(verify_fingerprint(LONG_TERM_REQUEST))

    def test_rfc8489_sha256_request(self) -> None:
        """RFC 8489 B.1 verifies through MESSAGE-INTEGRITY-SHA256."""
        msg = parse_message(SHA256_REQUEST)
        self.assertIsNotNone(msg.get(Attr.USERHASH))
        self.assertEqual(msg.get(Attr.NONCE), b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
        self.assertIsNone(msg.username())
        self.assertTrue(verify_integrity(SHA256_REQUEST, SHA256_KEY))
        self.assertFalse(verify_integrity(SHA256_REQUEST, LONG_TERM_KEY))

    def test_any_single_byte_flip_is_caught(self) -> None:
        """Flipping any bit pattern in any byte breaks parse, integrity or fingerprint.

        Before the FINGERPRINT attribute it is integrity (or parse) that fails.
        """
        for index in range(len(VECTORS)):
            with case(f"vector {index}"):
                data, key, has_fp = VECTORS[index]
                fp_start = len(data) - 8 if has_fp else len(data)
                for i in range(len(data)):
                    for mask in (0x01, 0x80, 0xFF):
                        bad = bytearray(data)
                        bad[i] ^= mask
                        mutated = bytes(bad)
                        try:
                            parse_message(mutated)
                        except StunError:
                            continue
                        if i < fp_start:
                            self.assertFalse(verify_integrity(mutated, key), (i, mask))
                        else:
                            self.assertTrue(verify_integrity(mutated, key))
                            self.assertFalse(verify_fingerprint(mutated), (i, mask))

    def test_build_reproduces_rfc5769_bytes(self) -> None:
        """Rebuilding the vectors with space padding gives the RFC bytes exactly."""
        for data in (REQUEST, IPV4_RESPONSE, IPV6_RESPONSE):
            msg = parse_message(data)
            rebuilt = build_message(
                msg.method,
                msg.message_class,
                msg.transaction_id,
                msg.attributes[:-2],
                integrity_key=SHORT_TERM_KEY,
                padding=b" ",
            )
            self.assertEqual(rebuilt, data)
        msg = parse_message(LONG_TERM_REQUEST)
        rebuilt = build_message(
            msg.method,
            msg.message_class,
            msg.transaction_id,
            msg.attributes[:-1],
            integrity_key=LONG_TERM_KEY,
            fingerprint=False,
        )
        self.assertEqual(rebuilt, LONG_TERM_REQUEST)

    def test_encode_xor_address_matches_vectors(self) -> None:
        """The address helpers reproduce the vector values."""
        v4 = parse_message(IPV4_RESPONSE).get(Attr.XOR_MAPPED_ADDRESS)
        v6 = parse_message(IPV6_RESPONSE).get(Attr.XOR_MAPPED_ADDRESS)
        self.assertEqual(encode_xor_address("192.0.2.1", 32853, TID), v4)
        self.assertEqual(encode_xor_address("2001:db8:1234:5678:11:2233:4455:6677", 32853, TID), v6)


class FramingTests(SynchronousTestCase):
    """Framing and attribute placement (RFC 8489 §5, §14): violations are StunErrors."""

    def test_malformed_raises_stun_error(self) -> None:
        """Every framing or placement violation is a StunError, and the checks say False."""
        for name, data in MALFORMED:
            with case(name):
                with self.assertRaises(StunError):
                    parse_message(data)
                self.assertFalse(verify_integrity(data, SHORT_TERM_KEY))
                self.assertFalse(verify_fingerprint(data))

    def test_stun_error_is_wire_error(self) -> None:
        """Callers on the packet path catch one type."""
        self.assertTrue(issubclass(StunError, WireError))
        self.assertTrue(issubclass(StunError, ValueError))

    def test_trailer_orders_that_are_allowed(self) -> None:
        """MI, then MI-SHA256, then FINGERPRINT is legal; each alone too."""
        mi256 = struct.pack("!HH", 0x001C, 16) + b"\0" * 16
        for body in (ATTR_MI + mi256 + ATTR_FP, ATTR_MI + ATTR_FP, mi256 + ATTR_FP, ATTR_SW + mi256):
            parse_message(raw_message(body))

    def test_empty_message_and_no_trailers(self) -> None:
        """A bare header parses; the checks are False without their attributes."""
        data = raw_message(b"")
        msg = parse_message(data)
        self.assertEqual(msg.attributes, [])
        self.assertFalse(verify_integrity(data, SHORT_TERM_KEY))
        self.assertFalse(verify_fingerprint(data))


class BuildTests(SynchronousTestCase):
    """build_message: type bits, argument checks, SHA-256 integrity."""

    def test_method_and_class_bits(self) -> None:
        """Method and class are interleaved in the type field as RFC 8489 §5 draws."""
        data = build_message(0xFFF, StunClass.ERROR, TID, [], fingerprint=False)
        self.assertEqual(data[:2], b"\x3f\xff")
        data = build_message(0x001, StunClass.SUCCESS, TID, [], fingerprint=False)
        self.assertEqual(data[:2], b"\x01\x01")
        data = build_message(0x001, StunClass.INDICATION, TID, [], fingerprint=False)
        self.assertEqual(data[:2], b"\x00\x11")
        msg = parse_message(build_message(0xABC, StunClass.INDICATION, TID, [], fingerprint=False))
        self.assertEqual((msg.method, msg.message_class), (0xABC, StunClass.INDICATION))

    def test_build_rejects_bad_arguments(self) -> None:
        """Out-of-range arguments are StunErrors, not silently mangled bytes."""
        for kwargs in BAD_BUILD_ARGUMENTS:
            with case(str(kwargs)):
                args: dict[str, object] = {
                    "method": METHOD_BINDING,
                    "message_class": StunClass.REQUEST,
                    "transaction_id": TID,
                    "attributes": [],
                }
                args.update(kwargs)
                with self.assertRaises(StunError):
                    build_message(**args)  # type: ignore[arg-type]

    def test_build_sha256_integrity(self) -> None:
        """integrity_sha256 writes a 32-byte MESSAGE-INTEGRITY-SHA256 that verifies."""
        data = build_message(
            METHOD_BINDING,
            StunClass.REQUEST,
            TID,
            [(Attr.USERNAME, b"a:b")],
            integrity_key=b"pw",
            integrity_sha256=True,
        )
        msg = parse_message(data)
        self.assertEqual(
            [t for t, _ in msg.attributes], [Attr.USERNAME, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT]
        )
        self.assertEqual(len(msg.get(Attr.MESSAGE_INTEGRITY_SHA256) or b""), 32)
        self.assertTrue(verify_integrity(data, b"pw"))
        self.assertTrue(verify_fingerprint(data))
        self.assertFalse(verify_integrity(data, b"px"))

    def test_truncated_sha256_integrity_verifies(self) -> None:
        """A MESSAGE-INTEGRITY-SHA256 truncated to 16 bytes (RFC 8489 §14.6) verifies."""
        body = struct.pack("!HH", 0x0006, 3) + b"a:b\0"
        header_len = len(body) + 4 + 16
        covered = struct.pack("!HHI", 0x0001, header_len, MAGIC_COOKIE) + TID + body
        mac = hmac.digest(b"pw", covered, "sha256")[:16]
        data = raw_message(body + struct.pack("!HH", 0x001C, 16) + mac)
        self.assertTrue(verify_integrity(data, b"pw"))
        self.assertFalse(verify_integrity(data, b"px"))

    def test_sha256_preferred_over_sha1(self) -> None:
        """With both present, MI-SHA256 decides (a bad MI does not matter, a bad MI-SHA256 does)."""
        body = struct.pack("!HH", 0x0006, 3) + b"a:b\0" + ATTR_MI
        covered = struct.pack("!HHI", 0x0001, len(body) + 36, MAGIC_COOKIE) + TID + body
        mac = hmac.digest(b"pw", covered, "sha256")
        good = raw_message(body + struct.pack("!HH", 0x001C, 32) + mac)
        self.assertTrue(verify_integrity(good, b"pw"))
        bad = raw_message(body + struct.pack("!HH", 0x001C, 32) + bytes(32))
        self.assertFalse(verify_integrity(bad, b"pw"))


BAD_XOR_ADDRESSES = [
    b"",
    b"\0\x01\0",
    b"\0\x01" + b"\0" * 4,
    b"\0\x01" + b"\0" * 18,
    b"\0\x02" + b"\0" * 6,
    b"\0\x03" + b"\0" * 6,
]


class ValueHelperTests(SynchronousTestCase):
    """Attribute value codecs: XOR addresses, ERROR-CODE, integers, UNKNOWN-ATTRIBUTES."""

    def test_xor_address_round_trip(self) -> None:
        """IPv4 and IPv6 addresses survive encode/decode, IPv6 depends on the tid."""
        for host in ("127.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "fe80::1:2", "2001:db8::"):
            for port in (0, 1, 3478, 65535):
                self.assertEqual(decode_xor_address(encode_xor_address(host, port, TID), TID), (host, port))

    def test_decode_xor_address_rejects(self) -> None:
        """Short values, wrong lengths per family and unknown families are StunErrors."""
        for value in BAD_XOR_ADDRESSES:
            with case(f"value {value.hex()}"):
                with self.assertRaises(StunError):
                    decode_xor_address(value, TID)

    def test_encode_xor_address_rejects_non_ip(self) -> None:
        """Only literal IP addresses encode."""
        for host in ["example.org", "1.2.3", "::g", "", "1.2.3.4\0"]:
            with case(f"host {host!r}"):
                with self.assertRaises(StunError):
                    encode_xor_address(host, 1, TID)

    def test_error_code_round_trip_and_limits(self) -> None:
        """ERROR-CODE splits class/number; out-of-range codes are refused both ways."""
        for code in (300, 400, 401, 420, 487, 500, 699):
            self.assertEqual(decode_error_code(encode_error_code(code, "Role Conflict")), (code, "Role Conflict"))
        self.assertEqual(encode_error_code(487, "x"), b"\0\0\x04\x57x")
        for code in (299, 700, 0):
            with self.assertRaises(StunError):
                encode_error_code(code, "")
        for value in (b"\0\0\x04", b"\0\0\x02\x00", b"\0\0\x07\x00", b"\0\0\x04\x64"):
            with self.assertRaises(StunError):
                decode_error_code(value)
        self.assertEqual(decode_error_code(b"\0\0\x04\x00\xff"), (400, "\ufffd"))

    def test_integer_helpers(self) -> None:
        """PRIORITY, tie-breakers and UNKNOWN-ATTRIBUTES encode and decode."""
        self.assertEqual(decode_priority(encode_priority(0x6E0001FF)), 0x6E0001FF)
        self.assertEqual(decode_tie_breaker(encode_tie_breaker(2**64 - 1)), 2**64 - 1)
        self.assertEqual(decode_unknown_attributes(encode_unknown_attributes([0x0003, 0x7FFF])), [3, 0x7FFF])
        for bad in (lambda: encode_priority(2**32), lambda: encode_tie_breaker(-1)):
            with self.assertRaises(StunError):
                bad()
        for bad_value in (lambda: decode_priority(b"\0"), lambda: decode_tie_breaker(b"\0" * 4)):
            with self.assertRaises(StunError):
                bad_value()
        with self.assertRaises(StunError):
            decode_unknown_attributes(b"\0\0\0")

    def test_unknown_required(self) -> None:
        """Unknown comprehension-required types are listed; optional ones are not."""
        data = build_message(METHOD_BINDING, StunClass.REQUEST, TID, [(0x0003, b""), (0xBEEF, b""), (0x0006, b"u")])
        self.assertEqual(parse_message(data).unknown_required(), [0x0003])


class BindingResponseTests(SynchronousTestCase):
    """The ICE-lite conveniences that answer a binding request."""

    def test_binding_success_answers_rfc5769_request(self) -> None:
        """The response echoes the tid, maps the address, and verifies with the same key."""
        request = parse_message(REQUEST)
        data = binding_success(request, ("192.0.2.1", 32853), SHORT_TERM_KEY)
        msg = parse_message(data)
        self.assertEqual((msg.method, msg.message_class), (METHOD_BINDING, StunClass.SUCCESS))
        self.assertEqual(msg.transaction_id, TID)
        self.assertEqual(msg.xor_mapped_address(), ("192.0.2.1", 32853))
        self.assertIsNotNone(msg.get(Attr.MESSAGE_INTEGRITY))
        self.assertIsNone(msg.get(Attr.MESSAGE_INTEGRITY_SHA256))
        self.assertTrue(verify_integrity(data, SHORT_TERM_KEY))
        self.assertTrue(verify_fingerprint(data))
        # Same attributes and key as the RFC's response minus SOFTWARE, so the
        # XOR-MAPPED-ADDRESS bytes are those of §2.2.
        self.assertEqual(msg.get(Attr.XOR_MAPPED_ADDRESS), parse_message(IPV4_RESPONSE).get(Attr.XOR_MAPPED_ADDRESS))

    def test_binding_success_follows_sha256_request(self) -> None:
        """A request with MESSAGE-INTEGRITY-SHA256 gets one back; sha256=True forces it."""
        req_bytes = build_message(
            METHOD_BINDING, StunClass.REQUEST, TID, [(Attr.USERNAME, b"a:b")], integrity_key=b"k", integrity_sha256=True
        )
        out = parse_message(binding_success(parse_message(req_bytes), ("::1", 9), b"k"))
        self.assertIsNotNone(out.get(Attr.MESSAGE_INTEGRITY_SHA256))
        self.assertEqual(out.xor_mapped_address(), ("::1", 9))
        forced = parse_message(binding_success(parse_message(REQUEST), ("10.0.0.1", 9), b"k", sha256=True))
        self.assertIsNotNone(forced.get(Attr.MESSAGE_INTEGRITY_SHA256))
        self.assertIsNone(forced.get(Attr.MESSAGE_INTEGRITY))

    def test_binding_error(self) -> None:
        """487 carries integrity when keyed; 400 without key has only FINGERPRINT; 420 lists types."""
        request = parse_message(REQUEST)
        data = binding_error(request, 487, "Role Conflict", SHORT_TERM_KEY)
        msg = parse_message(data)
        self.assertIs(msg.message_class, StunClass.ERROR)
        self.assertEqual(msg.error_code(), (487, "Role Conflict"))
        self.assertTrue(verify_integrity(data, SHORT_TERM_KEY))
        self.assertTrue(verify_fingerprint(data))
        data = binding_error(request, 400, "Bad Request", None)
        msg = parse_message(data)
        self.assertIsNone(msg.get(Attr.MESSAGE_INTEGRITY))
        self.assertTrue(verify_fingerprint(data))
        msg = parse_message(binding_error(request, 420, "Unknown Attribute", None, unknown=[3, 0x7000]))
        self.assertEqual(decode_unknown_attributes(msg.get(Attr.UNKNOWN_ATTRIBUTES) or b""), [3, 0x7000])


class RelayFastPathTests(SynchronousTestCase):
    """is_stun and peek_username, which the relay uses without a full parse."""

    def test_is_stun(self) -> None:
        """Length, top bits and cookie decide; nothing else is parsed."""
        self.assertTrue(is_stun(REQUEST))
        self.assertTrue(is_stun(REQUEST[:20]))
        self.assertFalse(is_stun(REQUEST[:19]))
        self.assertFalse(is_stun(bytes([0x40]) + REQUEST[1:]))
        self.assertFalse(is_stun(REQUEST[:4] + b"\0\0\0\0" + REQUEST[8:]))
        self.assertFalse(is_stun(b""))

    def test_peek_username(self) -> None:
        """Agrees with parse on the vectors; None without USERNAME or after the trailers."""
        for data, _, _ in VECTORS:
            self.assertEqual(peek_username(data), parse_message(data).username())
        self.assertIsNone(peek_username(raw_message(b"")))
        self.assertIsNone(peek_username(raw_message(ATTR_MI + struct.pack("!HH", 6, 4) + b"a:bc")))
        overrun = raw_message(struct.pack("!HH", 0x8022, 8) + b"abcd")
        for bad in (b"", REQUEST[:-4], with_length(REQUEST, 0x57), overrun):
            with self.assertRaises(StunError):
                peek_username(bad)


class RoundTripPropertyTests(SynchronousTestCase):
    """parse(build(x)) == x for generated messages, with and without trailers."""

    @given(message_strategy)
    def test_round_trip_plain(self, msg: StunMessage) -> None:
        """parse(build(x)) == x without trailers; peek_username agrees with parse."""
        data = build_message(msg.method, msg.message_class, msg.transaction_id, msg.attributes, fingerprint=False)
        self.assertEqual(parse_message(data), msg)
        self.assertEqual(peek_username(data), msg.username())

    @given(message_strategy, st.binary(min_size=1, max_size=32), st.booleans(), st.booleans())
    def test_round_trip_with_trailers(self, msg: StunMessage, key: bytes, sha256: bool, fingerprint: bool) -> None:
        """Trailers are appended after the given attributes and both checks pass."""
        data = build_message(
            msg.method,
            msg.message_class,
            msg.transaction_id,
            msg.attributes,
            integrity_key=key,
            integrity_sha256=sha256,
            fingerprint=fingerprint,
        )
        parsed = parse_message(data)
        n = len(msg.attributes)
        self.assertEqual(parsed.attributes[:n], msg.attributes)
        self.assertEqual(
            (parsed.method, parsed.message_class, parsed.transaction_id),
            (msg.method, msg.message_class, msg.transaction_id),
        )
        self.assertTrue(verify_integrity(data, key))
        self.assertIs(verify_integrity(data, key + b"x"), False)
        self.assertIs(verify_fingerprint(data), fingerprint)
        self.assertEqual(peek_username(data), msg.username())


class HostileInputTests(SynchronousTestCase):
    """Random and mutated datagrams raise only StunError from every entry point."""

    @given(st.binary(max_size=200))
    def test_random_bytes_raise_only_stun_error(self, data: bytes) -> None:
        """Arbitrary datagrams never escape as anything but StunError."""
        check_hostile(data)

    @settings(max_examples=300)
    @given(st.integers(0, 0x3FFF), st.lists(st.integers(0, 255), max_size=120))
    def test_random_bodies_behind_valid_header(self, msg_type: int, body: list[int]) -> None:
        """Random attribute areas behind a good header reach the TLV walk."""
        raw = bytes(body)
        raw += b"\0" * (-len(raw) & 3)
        check_hostile(raw_message(raw, msg_type))

    @settings(max_examples=300)
    @given(st.sampled_from([v[0] for v in VECTORS]), st.data())
    def test_mutated_vectors_raise_only_stun_error(self, base: bytes, data: st.DataObject) -> None:
        """Vectors with random bytes overwritten stay within StunError."""
        mutated = bytearray(base)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(base) - 1))
            mutated[i] = data.draw(st.integers(0, 255))
        check_hostile(bytes(mutated))
