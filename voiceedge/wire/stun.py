# -*- test-case-name: tests.test_stun -*-
"""STUN message codec (RFC 8489) with the short-term credentials ICE uses (RFC 8445)."""

from __future__ import annotations

import binascii
import enum
import hmac
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from voiceedge.wire.errors import WireError

__all__ = [
    "Attr",
    "HEADER_LENGTH",
    "MAGIC_COOKIE",
    "METHOD_BINDING",
    "StunClass",
    "StunError",
    "StunMessage",
    "binding_error",
    "binding_success",
    "build_message",
    "decode_error_code",
    "decode_priority",
    "decode_tie_breaker",
    "decode_unknown_attributes",
    "decode_xor_address",
    "encode_error_code",
    "encode_priority",
    "encode_tie_breaker",
    "encode_unknown_attributes",
    "encode_xor_address",
    "is_stun",
    "parse_message",
    "peek_username",
    "verify_fingerprint",
    "verify_integrity",
]


class StunError(WireError):
    """Bytes that are not a well-formed STUN message, or a bad attribute value."""


class StunClass(enum.IntEnum):
    """The two class bits of the STUN message type."""

    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


class Attr(enum.IntEnum):
    """Attribute types voiceedge reads or writes (IANA STUN registry)."""

    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    GOOG_NETWORK_INFO = 0xC057


METHOD_BINDING = 0x001
MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E

_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_HEADER = struct.Struct("!HHI")
_TLV = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_XOR_V4 = struct.Struct("!BBHI")

# Plain ints in the hot loops: comparing against IntEnum members is slower.
_MI = 0x0008
_MI256 = 0x001C
_FP = 0x8028
_USERNAME = 0x0006
_MI_LEN = 20
_FP_LEN = 4
# Attributes whose value has one legal length; checked once in the walk so
# the typed accessors can unpack without re-checking.
_FIXED_LENGTH = {
    _MI: _MI_LEN,
    _FP: _FP_LEN,
    0x0024: 4,  # PRIORITY
    0x0025: 0,  # USE-CANDIDATE
    0x8029: 8,  # ICE-CONTROLLED
    0x802A: 8,  # ICE-CONTROLLING
}
_TRAILERS = frozenset((_MI, _MI256, _FP))
_CLASSES = tuple(StunClass)
_KNOWN = frozenset(int(a) for a in Attr)

# Walk states: which trailing attributes have been seen so far.
_BODY, _AFTER_MI, _AFTER_MI256, _AFTER_FP = 0, 1, 2, 3


def _check_header(data: bytes) -> int:
    """Validate the fixed header; return the message type."""
    if len(data) < HEADER_LENGTH:
        raise StunError("shorter than a STUN header")
    msg_type, length, cookie = _HEADER.unpack_from(data, 0)
    if msg_type & 0xC000:
        raise StunError("top two bits not zero")
    if cookie != MAGIC_COOKIE:
        raise StunError("bad magic cookie")
    if length & 3:
        raise StunError("length not a multiple of 4")
    if length != len(data) - HEADER_LENGTH:
        raise StunError("length does not match datagram size")
    return int(msg_type)


def _walk(data: bytes, out: list[tuple[int, bytes]] | None) -> tuple[int, int, int]:
    """Check every attribute of a message whose header is already valid.

    Appends ``(type, value)`` to *out* when given. Returns the offsets of the
    MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT attribute
    headers, -1 for each one absent.
    """
    pos = HEADER_LENGTH
    end = len(data)
    state = _BODY
    mi = mi256 = fp = -1
    unpack = _TLV.unpack_from
    fixed = _FIXED_LENGTH
    while pos < end:
        # pos and end are both multiples of 4, so a header always fits.
        atype, alen = unpack(data, pos)
        vstart = pos + 4
        vend = vstart + alen
        if vend > end:
            raise StunError("attribute overruns message")
        if state:
            if state == _AFTER_FP:
                raise StunError("attribute after FINGERPRINT")
            if atype != _FP and not (atype == _MI256 and state == _AFTER_MI):
                raise StunError("attribute after MESSAGE-INTEGRITY")
        want = fixed.get(atype)
        if want is not None and alen != want:
            raise StunError(f"attribute 0x{atype:04x} has bad length {alen}")
        if atype in _TRAILERS:
            if atype == _MI:
                mi, state = pos, _AFTER_MI
            elif atype == _MI256:
                if alen < 16 or alen > 32 or alen & 3:
                    raise StunError("MESSAGE-INTEGRITY-SHA256 has bad length")
                mi256, state = pos, _AFTER_MI256
            else:
                fp, state = pos, _AFTER_FP
        if out is not None:
            out.append((atype, data[vstart:vend]))
        pos = vstart + ((alen + 3) & ~3)
    return mi, mi256, fp


@dataclass(slots=True)
class StunMessage:
    """A parsed or to-be-built STUN message.

    ``attributes`` holds raw values in wire order, MESSAGE-INTEGRITY and
    FINGERPRINT included as they appeared. ``use_candidate`` is a property;
    the other accessors are methods.
    """

    method: int
    message_class: StunClass
    transaction_id: bytes
    attributes: list[tuple[int, bytes]]

    def get(self, attr: int) -> bytes | None:
        """Value of the first attribute of type *attr*, or None."""
        for atype, value in self.attributes:
            if atype == attr:
                return value
        return None

    def username(self) -> bytes | None:
        """USERNAME, raw (``<receiver ufrag>:<sender ufrag>`` in ICE)."""
        return self.get(_USERNAME)

    def priority(self) -> int | None:
        """ICE PRIORITY."""
        value = self.get(Attr.PRIORITY)
        return None if value is None else decode_priority(value)

    @property
    def use_candidate(self) -> bool:
        """Whether USE-CANDIDATE is present."""
        return self.get(Attr.USE_CANDIDATE) is not None

    def ice_controlling(self) -> int | None:
        """ICE-CONTROLLING tie-breaker (64-bit)."""
        value = self.get(Attr.ICE_CONTROLLING)
        return None if value is None else decode_tie_breaker(value)

    def ice_controlled(self) -> int | None:
        """ICE-CONTROLLED tie-breaker (64-bit)."""
        value = self.get(Attr.ICE_CONTROLLED)
        return None if value is None else decode_tie_breaker(value)

    def xor_mapped_address(self) -> tuple[str, int] | None:
        """XOR-MAPPED-ADDRESS as ``(host, port)``; StunError if malformed."""
        value = self.get(Attr.XOR_MAPPED_ADDRESS)
        return None if value is None else decode_xor_address(value, self.transaction_id)

    def error_code(self) -> tuple[int, str] | None:
        """ERROR-CODE as ``(code, reason)``; StunError if malformed."""
        value = self.get(Attr.ERROR_CODE)
        return None if value is None else decode_error_code(value)

    def software(self) -> str | None:
        """SOFTWARE, decoded leniently (it is only for logs)."""
        value = self.get(Attr.SOFTWARE)
        return None if value is None else value.decode("utf-8", "replace")

    def unknown_required(self) -> list[int]:
        """Comprehension-required types (< 0x8000) this codec does not know.

        A request carrying any must be answered with 420 (RFC 8489 §6.3.1).
        """
        return [t for t, _ in self.attributes if t < 0x8000 and t not in _KNOWN]


def parse_message(data: bytes) -> StunMessage:
    """Parse one STUN message, checking framing and trailer placement.

    Integrity and fingerprint values are not checked here; see
    :func:`verify_integrity` and :func:`verify_fingerprint`.
    """
    msg_type = _check_header(data)
    attributes: list[tuple[int, bytes]] = []
    _walk(data, attributes)
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = ((msg_type >> 4) & 1) | ((msg_type >> 7) & 2)
    return StunMessage(method, _CLASSES[cls], data[8:20], attributes)


def _covered(data: bytes, upto: int, claimed_end: int) -> bytes:
    """``data[:upto]`` with the header length saying the message ends at *claimed_end*."""
    return data[:2] + _U16.pack(claimed_end - HEADER_LENGTH) + data[4:upto]


def verify_integrity(data: bytes, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY.

    RFC 8489 §14.5/§14.6: the HMAC covers the message up to the attribute,
    with the header length adjusted to end just after it. False when neither
    attribute is present or the message is malformed.
    """
    try:
        _check_header(data)
        mi, mi256, _ = _walk(data, None)
    except StunError:
        return False
    if mi256 >= 0:
        vlen = _U16.unpack_from(data, mi256 + 2)[0]
        start = mi256 + 4
        digest = hmac.digest(key, _covered(data, mi256, start + vlen), "sha256")
        return hmac.compare_digest(digest[:vlen], data[start : start + vlen])
    if mi >= 0:
        start = mi + 4
        digest = hmac.digest(key, _covered(data, mi, start + _MI_LEN), "sha1")
        return hmac.compare_digest(digest, data[start : start + _MI_LEN])
    return False


def verify_fingerprint(data: bytes) -> bool:
    """Check the FINGERPRINT attribute (CRC-32 XOR 0x5354554e, RFC 8489 §14.7).

    False when it is absent or the message is malformed.
    """
    try:
        _check_header(data)
        _, _, fp = _walk(data, None)
    except StunError:
        return False
    if fp < 0:
        return False
    # FINGERPRINT is last, so the header length already ends after it.
    crc = (binascii.crc32(data[:fp]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return bool(crc == _U32.unpack_from(data, fp + 4)[0])


def _pack_attr(atype: int, value: bytes, padding: bytes) -> bytes:
    if not 0 <= atype <= 0xFFFF:
        raise StunError(f"attribute type {atype!r} out of range")
    alen = len(value)
    if alen > 0xFFFF:
        raise StunError("attribute value longer than 65535 bytes")
    return _TLV.pack(atype, alen) + value + padding * (-alen & 3)


def build_message(
    method: int,
    message_class: StunClass,
    transaction_id: bytes,
    attributes: Sequence[tuple[int, bytes]],
    *,
    integrity_key: bytes | None = None,
    integrity_sha256: bool = False,
    fingerprint: bool = True,
    padding: bytes = b"\0",
) -> bytes:
    """Encode a message; append MESSAGE-INTEGRITY(-SHA256) then FINGERPRINT.

    *attributes* must not contain the trailers themselves: they are added
    from *integrity_key* (HMAC-SHA1, or full-length HMAC-SHA256 with
    *integrity_sha256*) and *fingerprint*. *padding* is the fill byte; the
    RFC 5769 vectors use a space.
    """
    if not 0 <= method <= 0xFFF:
        raise StunError(f"method {method!r} out of range")
    if len(transaction_id) != 12:
        raise StunError("transaction id must be 12 bytes")
    if len(padding) != 1:
        raise StunError("padding must be one byte")
    cls = int(message_class)
    msg_type = (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )
    parts = []
    for atype, value in attributes:
        if atype in _TRAILERS:
            raise StunError("pass integrity and fingerprint as keywords, not attributes")
        parts.append(_pack_attr(atype, value, padding))
    body = b"".join(parts)
    if len(body) > 0xFFFF - 44 - 8:
        raise StunError("message too long")
    prefix = _U16.pack(msg_type)
    tail = _COOKIE_BYTES + transaction_id
    if integrity_key is not None:
        if integrity_sha256:
            atype, hash_name, dlen = _MI256, "sha256", 32
        else:
            atype, hash_name, dlen = _MI, "sha1", _MI_LEN
        covered = prefix + _U16.pack(len(body) + 4 + dlen) + tail + body
        body += _TLV.pack(atype, dlen) + hmac.digest(integrity_key, covered, hash_name)
    if fingerprint:
        covered = prefix + _U16.pack(len(body) + 8) + tail + body
        crc = (binascii.crc32(covered) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        body += _TLV.pack(_FP, _FP_LEN) + _U32.pack(crc)
    return prefix + _U16.pack(len(body)) + tail + body


# -- attribute values --------------------------------------------------------


def encode_xor_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value for an IPv4 or IPv6 *host* (RFC 8489 §14.2)."""
    if not 0 <= port <= 0xFFFF:
        raise StunError(f"port {port!r} out of range")
    xport = port ^ (MAGIC_COOKIE >> 16)
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        pass
    else:
        return _XOR_V4.pack(0, 1, xport, int.from_bytes(packed, "big") ^ MAGIC_COOKIE)
    if len(transaction_id) != 12:
        raise StunError("transaction id must be 12 bytes")
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except (OSError, ValueError):
        raise StunError(f"not an IP address: {host!r}") from None
    mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
    addr = (int.from_bytes(packed, "big") ^ mask).to_bytes(16, "big")
    return struct.pack("!BBH", 0, 2, xport) + addr


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """``(host, port)`` from an XOR-MAPPED-ADDRESS value."""
    vlen = len(value)
    if vlen < 4:
        raise StunError("address attribute too short")
    family = value[1]
    port = _U16.unpack_from(value, 2)[0] ^ (MAGIC_COOKIE >> 16)
    if family == 1:
        if vlen != 8:
            raise StunError("IPv4 address attribute must be 8 bytes")
        addr = (_U32.unpack_from(value, 4)[0] ^ MAGIC_COOKIE).to_bytes(4, "big")
        return socket.inet_ntop(socket.AF_INET, addr), port
    if family == 2:
        if vlen != 20:
            raise StunError("IPv6 address attribute must be 20 bytes")
        if len(transaction_id) != 12:
            raise StunError("transaction id must be 12 bytes")
        mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
        addr = (int.from_bytes(value[4:20], "big") ^ mask).to_bytes(16, "big")
        return socket.inet_ntop(socket.AF_INET6, addr), port
    raise StunError(f"unknown address family {family}")


def encode_error_code(code: int, reason: str) -> bytes:
    """ERROR-CODE value: class/number split of *code* (300..699) and a reason."""
    if not 300 <= code <= 699:
        raise StunError(f"error code {code!r} out of range")
    raw = reason.encode("utf-8")
    if len(raw) > 763:
        raise StunError("reason phrase too long")
    return struct.pack("!HBB", 0, code // 100, code % 100) + raw


def decode_error_code(value: bytes) -> tuple[int, str]:
    """``(code, reason)`` from an ERROR-CODE value; the reason is decoded leniently."""
    if len(value) < 4:
        raise StunError("ERROR-CODE too short")
    klass = value[2] & 0x07
    number = value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunError("ERROR-CODE out of range")
    return klass * 100 + number, value[4:].decode("utf-8", "replace")


def encode_unknown_attributes(types: Sequence[int]) -> bytes:
    """UNKNOWN-ATTRIBUTES value: a list of 16-bit types."""
    return b"".join(_U16.pack(t) for t in types)


def decode_unknown_attributes(value: bytes) -> list[int]:
    """Types listed in an UNKNOWN-ATTRIBUTES value."""
    if len(value) & 1:
        raise StunError("UNKNOWN-ATTRIBUTES has odd length")
    return [_U16.unpack_from(value, i)[0] for i in range(0, len(value), 2)]


def encode_priority(priority: int) -> bytes:
    """PRIORITY value (32-bit)."""
    if not 0 <= priority <= 0xFFFFFFFF:
        raise StunError("priority out of range")
    return _U32.pack(priority)


def decode_priority(value: bytes) -> int:
    """PRIORITY from its 4-byte value."""
    if len(value) != 4:
        raise StunError("PRIORITY must be 4 bytes")
    return int(_U32.unpack(value)[0])


def encode_tie_breaker(tie_breaker: int) -> bytes:
    """ICE-CONTROLLING / ICE-CONTROLLED value (64-bit)."""
    if not 0 <= tie_breaker <= 0xFFFFFFFFFFFFFFFF:
        raise StunError("tie-breaker out of range")
    return _U64.pack(tie_breaker)


def decode_tie_breaker(value: bytes) -> int:
    """Tie-breaker from an 8-byte ICE-CONTROLLING / ICE-CONTROLLED value."""
    if len(value) != 8:
        raise StunError("tie-breaker must be 8 bytes")
    return int(_U64.unpack(value)[0])


# -- ICE-lite conveniences ---------------------------------------------------


def _wants_sha256(request: StunMessage) -> bool:
    return request.get(_MI256) is not None


def binding_success(
    request: StunMessage,
    mapped: tuple[str, int],
    key: bytes,
    *,
    sha256: bool = False,
) -> bytes:
    """Binding success response: XOR-MAPPED-ADDRESS, integrity, FINGERPRINT.

    Uses MESSAGE-INTEGRITY-SHA256 when *sha256* is set or the request carried
    it, MESSAGE-INTEGRITY otherwise.
    """
    tid = request.transaction_id
    return build_message(
        request.method,
        StunClass.SUCCESS,
        tid,
        [(Attr.XOR_MAPPED_ADDRESS, encode_xor_address(mapped[0], mapped[1], tid))],
        integrity_key=key,
        integrity_sha256=sha256 or _wants_sha256(request),
    )


def binding_error(
    request: StunMessage,
    code: int,
    reason: str,
    key: bytes | None,
    *,
    unknown: Sequence[int] = (),
) -> bytes:
    """Error response with ERROR-CODE (and UNKNOWN-ATTRIBUTES for 420).

    Integrity is added when *key* is given (e.g. 487 Role Conflict), not for
    400/401 where the request's credentials could not be trusted.
    """
    attrs: list[tuple[int, bytes]] = [(Attr.ERROR_CODE, encode_error_code(code, reason))]
    if unknown:
        attrs.append((Attr.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(unknown)))
    return build_message(
        request.method,
        StunClass.ERROR,
        request.transaction_id,
        attrs,
        integrity_key=key,
        integrity_sha256=key is not None and _wants_sha256(request),
    )


# -- relay fast paths --------------------------------------------------------


def is_stun(data: bytes) -> bool:
    """Cheap test: long enough, top two bits zero, magic cookie in place."""
    return len(data) >= HEADER_LENGTH and data[0] < 0x40 and data[4:8] == _COOKIE_BYTES


def peek_username(data: bytes) -> bytes | None:
    """USERNAME of a STUN message without parsing the rest of it.

    Walks attributes only as far as USERNAME; None if it is absent or would
    come after MESSAGE-INTEGRITY (where it does not count). StunError if the
    header or the attributes walked are malformed.
    """
    _check_header(data)
    pos = HEADER_LENGTH
    end = len(data)
    unpack = _TLV.unpack_from
    while pos < end:
        atype, alen = unpack(data, pos)
        vstart = pos + 4
        if vstart + alen > end:
            raise StunError("attribute overruns message")
        if atype == _USERNAME:
            return data[vstart : vstart + alen]
        if atype in _TRAILERS:
            return None
        pos = vstart + ((alen + 3) & ~3)
    return None
