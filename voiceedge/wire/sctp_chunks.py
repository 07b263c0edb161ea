# -*- test-case-name: tests.test_sctp -*-
"""SCTP packet and chunk codec (RFC 9260, RFC 6525 RE-CONFIG, RFC 3758 FORWARD-TSN) with CRC32c."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Union

from voiceedge.wire.errors import WireError

__all__ = [
    "AbortChunk",
    "Chunk",
    "CookieAckChunk",
    "CookieEchoChunk",
    "DataChunk",
    "ErrorChunk",
    "ForwardTsnChunk",
    "HeartbeatAckChunk",
    "HeartbeatChunk",
    "IncomingResetRequest",
    "InitAckChunk",
    "InitChunk",
    "OutgoingResetRequest",
    "ReconfigChunk",
    "ReconfigParam",
    "ReconfigResponse",
    "AddStreamsRequest",
    "SackChunk",
    "SctpError",
    "SctpPacket",
    "ShutdownAckChunk",
    "ShutdownChunk",
    "ShutdownCompleteChunk",
    "UnknownChunk",
    "build_packet",
    "crc32c",
    "crc32c_table",
    "decode_params",
    "encode_params",
    "parse_packet",
    "parse_reconfig_param",
]

# Chunk types (RFC 9260 §3.2, RFC 6525 §3.1, RFC 3758 §3.2).
DATA = 0
INIT = 1
INIT_ACK = 2
SACK = 3
HEARTBEAT = 4
HEARTBEAT_ACK = 5
ABORT = 6
SHUTDOWN = 7
SHUTDOWN_ACK = 8
ERROR = 9
COOKIE_ECHO = 10
COOKIE_ACK = 11
SHUTDOWN_COMPLETE = 14
RECONFIG = 130
FORWARD_TSN = 192

# Parameter types.
PARAM_HEARTBEAT_INFO = 1
PARAM_STATE_COOKIE = 7
PARAM_OUTGOING_RESET = 13
PARAM_INCOMING_RESET = 14
PARAM_RECONFIG_RESPONSE = 16
PARAM_ADD_OUTGOING_STREAMS = 17
PARAM_ADD_INCOMING_STREAMS = 18
PARAM_SUPPORTED_EXTENSIONS = 0x8008
PARAM_FORWARD_TSN_SUPPORTED = 0xC000

# Error causes.
CAUSE_STALE_COOKIE = 3
CAUSE_PROTOCOL_VIOLATION = 13
CAUSE_USER_INITIATED_ABORT = 12

# DATA chunk flags.
FLAG_END = 0x01
FLAG_BEGIN = 0x02
FLAG_UNORDERED = 0x04
# ABORT / SHUTDOWN-COMPLETE: the verification tag is the sender's own ("T" bit).
FLAG_T = 0x01

COMMON_HEADER_SIZE = 12
DATA_HEADER_SIZE = 16

_COMMON = struct.Struct("!HHII")
_CHUNK_HEADER = struct.Struct("!BBH")
_DATA = struct.Struct("!IHHI")
_INIT = struct.Struct("!IIHHI")
_SACK = struct.Struct("!IIHH")
_U32 = struct.Struct("!I")
_LE_U32 = struct.Struct("<I")
_U16_PAIR = struct.Struct("!HH")
_PARAM_HEADER = struct.Struct("!HH")
_OUT_RESET = struct.Struct("!III")
_IN_RESET = struct.Struct("!I")
_RESPONSE = struct.Struct("!II")
_RESPONSE_TSNS = struct.Struct("!IIII")
_ADD_STREAMS = struct.Struct("!IHH")

_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF


class SctpError(WireError):
    """Bytes that are not a valid SCTP packet, chunk or parameter, or values that cannot be encoded."""


# -- CRC32c (RFC 9260 Appendix A): reflected Castagnoli polynomial --------------------------


def _make_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _make_table()


def crc32c_table(data: bytes) -> int:
    """CRC32c of ``data`` computed with the precomputed byte table (the reference implementation)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # A C implementation ships with aiortc; it gives the same values about 100x faster.
    from google_crc32c import value as _fast_crc32c

    def crc32c(data: bytes) -> int:
        """CRC32c of ``data`` (hardware-accelerated when google_crc32c is importable)."""
        return int(_fast_crc32c(data))

except ImportError:  # pragma: no cover - depends on the environment
    crc32c = crc32c_table


# -- parameters ----------------------------------------------------------------------------------


def decode_params(body: bytes, offset: int = 0) -> list[tuple[int, bytes]]:
    """Split a TLV parameter list (4-byte aligned, RFC 9260 §3.2.1) into (type, value) pairs."""
    params: list[tuple[int, bytes]] = []
    end = len(body)
    pos = offset
    while pos < end:
        if end - pos < 4:
            raise SctpError("truncated SCTP parameter header")
        ptype, plen = _PARAM_HEADER.unpack_from(body, pos)
        if plen < 4 or pos + plen > end:
            raise SctpError("bad SCTP parameter length")
        params.append((ptype, bytes(body[pos + 4 : pos + plen])))
        pos += (plen + 3) & ~3
    return params


def encode_params(params: tuple[tuple[int, bytes], ...] | list[tuple[int, bytes]]) -> bytes:
    """Encode (type, value) pairs as padded TLV parameters."""
    out = []
    for ptype, value in params:
        plen = 4 + len(value)
        if not 0 <= ptype <= _MAX_U16 or plen > _MAX_U16:
            raise SctpError("SCTP parameter out of range")
        out.append(_PARAM_HEADER.pack(ptype, plen) + value + b"\x00" * (-plen % 4))
    return b"".join(out)


# -- RE-CONFIG parameters (RFC 6525 §4) -----------------------------------------------------------


@dataclass(slots=True, frozen=True)
class OutgoingResetRequest:
    """Outgoing SSN Reset Request: the sender resets its outgoing streams (empty = all)."""

    request_seq: int
    response_seq: int
    last_tsn: int
    streams: tuple[int, ...] = ()

    TYPE: ClassVar[int] = PARAM_OUTGOING_RESET

    def encode_value(self) -> bytes:
        """The parameter value (without its TLV header)."""
        return _OUT_RESET.pack(self.request_seq, self.response_seq, self.last_tsn) + _pack_streams(self.streams)


@dataclass(slots=True, frozen=True)
class IncomingResetRequest:
    """Incoming SSN Reset Request: the sender asks the peer to reset the peer's outgoing streams."""

    request_seq: int
    streams: tuple[int, ...] = ()

    TYPE: ClassVar[int] = PARAM_INCOMING_RESET

    def encode_value(self) -> bytes:
        """The parameter value (without its TLV header)."""
        return _IN_RESET.pack(self.request_seq) + _pack_streams(self.streams)


@dataclass(slots=True, frozen=True)
class ReconfigResponse:
    """Re-configuration Response: the result of one request."""

    response_seq: int
    result: int
    sender_next_tsn: int | None = None
    receiver_next_tsn: int | None = None

    TYPE: ClassVar[int] = PARAM_RECONFIG_RESPONSE

    def encode_value(self) -> bytes:
        """The parameter value (without its TLV header)."""
        if self.sender_next_tsn is None or self.receiver_next_tsn is None:
            return _RESPONSE.pack(self.response_seq, self.result)
        return _RESPONSE_TSNS.pack(self.response_seq, self.result, self.sender_next_tsn, self.receiver_next_tsn)


@dataclass(slots=True, frozen=True)
class AddStreamsRequest:
    """Add Outgoing (17) or Add Incoming (18) Streams Request."""

    param_type: int
    request_seq: int
    new_streams: int

    @property
    def TYPE(self) -> int:  # noqa: N802 - mirrors the ClassVar of the other parameters
        """The parameter type."""
        return self.param_type

    def encode_value(self) -> bytes:
        """The parameter value (without its TLV header)."""
        return _ADD_STREAMS.pack(self.request_seq, self.new_streams, 0)


ReconfigParam = Union[OutgoingResetRequest, IncomingResetRequest, ReconfigResponse, AddStreamsRequest]


def _pack_streams(streams: tuple[int, ...]) -> bytes:
    try:
        return struct.pack("!%dH" % len(streams), *streams)
    except struct.error as exc:
        raise SctpError("stream identifier out of range") from exc


def _unpack_streams(value: bytes, offset: int) -> tuple[int, ...]:
    rest = len(value) - offset
    if rest % 2:
        raise SctpError("odd stream list length")
    return struct.unpack_from("!%dH" % (rest // 2), value, offset)


def parse_reconfig_param(ptype: int, value: bytes) -> ReconfigParam | None:
    """Decode one RE-CONFIG parameter; ``None`` for a type we do not know."""
    try:
        if ptype == PARAM_OUTGOING_RESET:
            req, resp, last = _OUT_RESET.unpack_from(value)
            return OutgoingResetRequest(req, resp, last, _unpack_streams(value, 12))
        if ptype == PARAM_INCOMING_RESET:
            (req,) = _IN_RESET.unpack_from(value)
            return IncomingResetRequest(req, _unpack_streams(value, 4))
        if ptype == PARAM_RECONFIG_RESPONSE:
            if len(value) == 16:
                return ReconfigResponse(*_RESPONSE_TSNS.unpack(value))
            if len(value) == 8:
                return ReconfigResponse(*_RESPONSE.unpack(value))
            raise SctpError("bad Re-configuration Response length")
        if ptype in (PARAM_ADD_OUTGOING_STREAMS, PARAM_ADD_INCOMING_STREAMS):
            if len(value) != 8:
                raise SctpError("bad Add Streams Request length")
            req, new, _ = _ADD_STREAMS.unpack(value)
            return AddStreamsRequest(ptype, req, new)
    except struct.error as exc:
        raise SctpError("truncated RE-CONFIG parameter") from exc
    return None


# -- chunks ---------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class DataChunk:
    """DATA: one fragment of a user message."""

    tsn: int
    stream_id: int
    ssn: int
    ppid: int
    user_data: bytes
    unordered: bool = False
    begin: bool = True
    end: bool = True

    TYPE: ClassVar[int] = DATA

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        flags = (FLAG_UNORDERED if self.unordered else 0) | (FLAG_BEGIN if self.begin else 0) | (
            FLAG_END if self.end else 0
        )
        length = DATA_HEADER_SIZE + len(self.user_data)
        if not self.user_data or length > _MAX_U16:
            raise SctpError("DATA user data must be 1..65519 bytes")
        try:
            head = _CHUNK_HEADER.pack(DATA, flags, length) + _DATA.pack(self.tsn, self.stream_id, self.ssn, self.ppid)
        except struct.error as exc:
            raise SctpError("DATA field out of range") from exc
        return head + self.user_data + b"\x00" * (-length % 4)


@dataclass(slots=True, frozen=True)
class _InitBase:
    initiate_tag: int
    a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    initial_tsn: int
    params: tuple[tuple[int, bytes], ...] = ()

    def _encode(self, ctype: int) -> bytes:
        try:
            fixed = _INIT.pack(
                self.initiate_tag, self.a_rwnd, self.outbound_streams, self.inbound_streams, self.initial_tsn
            )
        except struct.error as exc:
            raise SctpError("INIT field out of range") from exc
        return _chunk(ctype, 0, fixed + encode_params(self.params))

    def param(self, ptype: int) -> bytes | None:
        """The value of the first parameter of type ``ptype``, if any."""
        for t, v in self.params:
            if t == ptype:
                return v
        return None


@dataclass(slots=True, frozen=True)
class InitChunk(_InitBase):
    """INIT: start an association."""

    TYPE: ClassVar[int] = INIT

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return self._encode(INIT)


@dataclass(slots=True, frozen=True)
class InitAckChunk(_InitBase):
    """INIT-ACK: answer to INIT, carrying the State Cookie parameter."""

    TYPE: ClassVar[int] = INIT_ACK

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return self._encode(INIT_ACK)


@dataclass(slots=True, frozen=True)
class SackChunk:
    """SACK: cumulative TSN ack, gap ack blocks (offsets from it) and duplicate TSNs."""

    cumulative_tsn: int
    a_rwnd: int
    gaps: tuple[tuple[int, int], ...] = ()
    duplicates: tuple[int, ...] = ()

    TYPE: ClassVar[int] = SACK

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        try:
            body = [_SACK.pack(self.cumulative_tsn, self.a_rwnd, len(self.gaps), len(self.duplicates))]
            body.extend(_U16_PAIR.pack(s, e) for s, e in self.gaps)
            body.extend(_U32.pack(d) for d in self.duplicates)
        except struct.error as exc:
            raise SctpError("SACK field out of range") from exc
        return _chunk(SACK, 0, b"".join(body))


@dataclass(slots=True, frozen=True)
class HeartbeatChunk:
    """HEARTBEAT: carries an opaque Heartbeat Info parameter echoed by the peer."""

    info: bytes

    TYPE: ClassVar[int] = HEARTBEAT

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(HEARTBEAT, 0, encode_params([(PARAM_HEARTBEAT_INFO, self.info)]))


@dataclass(slots=True, frozen=True)
class HeartbeatAckChunk:
    """HEARTBEAT-ACK: the Heartbeat Info of a HEARTBEAT, returned."""

    info: bytes

    TYPE: ClassVar[int] = HEARTBEAT_ACK

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(HEARTBEAT_ACK, 0, encode_params([(PARAM_HEARTBEAT_INFO, self.info)]))


@dataclass(slots=True, frozen=True)
class AbortChunk:
    """ABORT: tear the association down at once; ``causes`` are (code, info) error causes."""

    causes: tuple[tuple[int, bytes], ...] = ()
    t_bit: bool = False

    TYPE: ClassVar[int] = ABORT

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(ABORT, FLAG_T if self.t_bit else 0, encode_params(self.causes))


@dataclass(slots=True, frozen=True)
class ErrorChunk:
    """ERROR (OPERATION ERROR): non-fatal error causes."""

    causes: tuple[tuple[int, bytes], ...] = ()

    TYPE: ClassVar[int] = ERROR

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(ERROR, 0, encode_params(self.causes))


@dataclass(slots=True, frozen=True)
class ShutdownChunk:
    """SHUTDOWN: graceful close, with the sender's cumulative TSN ack."""

    cumulative_tsn: int

    TYPE: ClassVar[int] = SHUTDOWN

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        try:
            return _chunk(SHUTDOWN, 0, _U32.pack(self.cumulative_tsn))
        except struct.error as exc:
            raise SctpError("SHUTDOWN TSN out of range") from exc


@dataclass(slots=True, frozen=True)
class ShutdownAckChunk:
    """SHUTDOWN-ACK."""

    TYPE: ClassVar[int] = SHUTDOWN_ACK

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(SHUTDOWN_ACK, 0, b"")


@dataclass(slots=True, frozen=True)
class ShutdownCompleteChunk:
    """SHUTDOWN-COMPLETE."""

    t_bit: bool = False

    TYPE: ClassVar[int] = SHUTDOWN_COMPLETE

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(SHUTDOWN_COMPLETE, FLAG_T if self.t_bit else 0, b"")


@dataclass(slots=True, frozen=True)
class CookieEchoChunk:
    """COOKIE-ECHO: the State Cookie returned to its maker."""

    cookie: bytes

    TYPE: ClassVar[int] = COOKIE_ECHO

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(COOKIE_ECHO, 0, self.cookie)


@dataclass(slots=True, frozen=True)
class CookieAckChunk:
    """COOKIE-ACK."""

    TYPE: ClassVar[int] = COOKIE_ACK

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(COOKIE_ACK, 0, b"")


@dataclass(slots=True, frozen=True)
class ReconfigChunk:
    """RE-CONFIG: one or two stream reconfiguration parameters (RFC 6525 §3.1)."""

    params: tuple[ReconfigParam, ...]

    TYPE: ClassVar[int] = RECONFIG

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(RECONFIG, 0, encode_params([(p.TYPE, p.encode_value()) for p in self.params]))


@dataclass(slots=True, frozen=True)
class ForwardTsnChunk:
    """FORWARD-TSN: move the peer's cumulative TSN past abandoned data (RFC 3758)."""

    new_cumulative_tsn: int
    streams: tuple[tuple[int, int], ...] = ()

    TYPE: ClassVar[int] = FORWARD_TSN

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        try:
            body = _U32.pack(self.new_cumulative_tsn) + b"".join(_U16_PAIR.pack(s, n) for s, n in self.streams)
        except struct.error as exc:
            raise SctpError("FORWARD-TSN field out of range") from exc
        return _chunk(FORWARD_TSN, 0, body)


@dataclass(slots=True, frozen=True)
class UnknownChunk:
    """A chunk of a type we do not handle; its two high type bits say what to do (RFC 9260 §3.2)."""

    chunk_type: int
    flags: int
    body: bytes

    @property
    def TYPE(self) -> int:  # noqa: N802 - mirrors the ClassVar of the other chunks
        """The chunk type."""
        return self.chunk_type

    def encode(self) -> bytes:
        """Chunk bytes including header and padding."""
        return _chunk(self.chunk_type, self.flags, self.body)


Chunk = Union[
    DataChunk,
    InitChunk,
    InitAckChunk,
    SackChunk,
    HeartbeatChunk,
    HeartbeatAckChunk,
    AbortChunk,
    ErrorChunk,
    ShutdownChunk,
    ShutdownAckChunk,
    ShutdownCompleteChunk,
    CookieEchoChunk,
    CookieAckChunk,
    ReconfigChunk,
    ForwardTsnChunk,
    UnknownChunk,
]


def _chunk(ctype: int, flags: int, body: bytes) -> bytes:
    length = 4 + len(body)
    if length > _MAX_U16 or not 0 <= flags <= 0xFF or not 0 <= ctype <= 0xFF:
        raise SctpError("SCTP chunk too long or field out of range")
    return _CHUNK_HEADER.pack(ctype, flags, length) + body + b"\x00" * (-length % 4)


def _heartbeat_info(body: bytes) -> bytes:
    params = decode_params(body)
    if len(params) != 1 or params[0][0] != PARAM_HEARTBEAT_INFO:
        raise SctpError("HEARTBEAT must carry exactly one Heartbeat Info parameter")
    return params[0][1]


def _parse_chunk(ctype: int, flags: int, body: bytes) -> Chunk:
    blen = len(body)
    if ctype == DATA:
        if blen <= 12:
            raise SctpError("DATA chunk without user data")
        tsn, sid, ssn, ppid = _DATA.unpack_from(body)
        unordered, begin, end = bool(flags & FLAG_UNORDERED), bool(flags & FLAG_BEGIN), bool(flags & FLAG_END)
        return DataChunk(tsn, sid, ssn, ppid, body[12:], unordered, begin, end)
    if ctype == SACK:
        if blen < 12:
            raise SctpError("truncated SACK")
        cum, rwnd, ngaps, ndups = _SACK.unpack_from(body)
        if blen != 12 + 4 * (ngaps + ndups):
            raise SctpError("SACK length does not match its block counts")
        gaps = tuple(_U16_PAIR.unpack_from(body, 12 + 4 * i) for i in range(ngaps))
        base = 12 + 4 * ngaps
        dups = tuple(_U32.unpack_from(body, base + 4 * i)[0] for i in range(ndups))
        return SackChunk(cum, rwnd, gaps, dups)
    if ctype in (INIT, INIT_ACK):
        if blen < 16:
            raise SctpError("truncated INIT")
        tag, rwnd, os_, mis, tsn = _INIT.unpack_from(body)
        params = tuple(decode_params(body, 16))
        cls = InitChunk if ctype == INIT else InitAckChunk
        return cls(tag, rwnd, os_, mis, tsn, params)
    if ctype == HEARTBEAT:
        return HeartbeatChunk(_heartbeat_info(body))
    if ctype == HEARTBEAT_ACK:
        return HeartbeatAckChunk(_heartbeat_info(body))
    if ctype == ABORT:
        return AbortChunk(tuple(decode_params(body)), bool(flags & FLAG_T))
    if ctype == ERROR:
        return ErrorChunk(tuple(decode_params(body)))
    if ctype == SHUTDOWN:
        if blen != 4:
            raise SctpError("bad SHUTDOWN length")
        return ShutdownChunk(_U32.unpack(body)[0])
    if ctype == SHUTDOWN_ACK:
        return ShutdownAckChunk()
    if ctype == SHUTDOWN_COMPLETE:
        return ShutdownCompleteChunk(bool(flags & FLAG_T))
    if ctype == COOKIE_ECHO:
        return CookieEchoChunk(bytes(body))
    if ctype == COOKIE_ACK:
        return CookieAckChunk()
    if ctype == RECONFIG:
        reconfig: list[ReconfigParam] = []
        for ptype, value in decode_params(body):
            param = parse_reconfig_param(ptype, value)
            if param is not None:  # requests we do not implement (e.g. SSN/TSN reset) are skipped
                reconfig.append(param)
        return ReconfigChunk(tuple(reconfig))
    if ctype == FORWARD_TSN:
        if blen < 4 or blen % 4:
            raise SctpError("bad FORWARD-TSN length")
        streams = tuple(_U16_PAIR.unpack_from(body, 4 + 4 * i) for i in range((blen - 4) // 4))
        return ForwardTsnChunk(_U32.unpack_from(body)[0], streams)
    return UnknownChunk(ctype, flags, bytes(body))


@dataclass(slots=True, frozen=True)
class SctpPacket:
    """An SCTP packet: common header and its chunks, in order."""

    source_port: int
    destination_port: int
    verification_tag: int
    chunks: tuple[Chunk, ...]


def parse_packet(data: bytes, verify_checksum: bool = True) -> SctpPacket:
    """Decode an SCTP packet; raise :class:`SctpError` for a bad checksum or any malformed chunk."""
    size = len(data)
    if size < COMMON_HEADER_SIZE + 4:
        raise SctpError("SCTP packet too short")
    src, dst, tag, checksum = _COMMON.unpack_from(data)
    if verify_checksum:
        # The checksum is stored in network order of the reflected CRC, i.e. little-endian.
        computed = crc32c(bytes(data[:8]) + b"\x00\x00\x00\x00" + bytes(data[12:]))
        if _LE_U32.unpack_from(data, 8)[0] != computed:
            raise SctpError("bad SCTP checksum")
    chunks: list[Chunk] = []
    pos = COMMON_HEADER_SIZE
    view = memoryview(data)
    try:
        while pos < size:
            if size - pos < 4:
                # Up to three trailing zero bytes are padding of the last chunk.
                if any(view[pos:]):
                    raise SctpError("garbage after the last SCTP chunk")
                break
            ctype, flags, length = _CHUNK_HEADER.unpack_from(data, pos)
            if length < 4 or pos + length > size:
                raise SctpError("bad SCTP chunk length")
            chunks.append(_parse_chunk(ctype, flags, bytes(view[pos + 4 : pos + length])))
            pos += (length + 3) & ~3
    except struct.error as exc:
        raise SctpError("truncated SCTP chunk") from exc
    if not chunks:
        raise SctpError("SCTP packet without chunks")
    return SctpPacket(src, dst, tag, tuple(chunks))


def build_packet(source_port: int, destination_port: int, verification_tag: int, chunks: list[bytes]) -> bytes:
    """Assemble encoded chunks (see each chunk's ``encode``) into a checksummed SCTP packet."""
    try:
        header = _COMMON.pack(source_port, destination_port, verification_tag, 0)
    except struct.error as exc:
        raise SctpError("SCTP common header field out of range") from exc
    body = b"".join(chunks)
    checksum = crc32c(header + body)
    return header[:8] + _LE_U32.pack(checksum) + body
