# -*- test-case-name: tests.test_srtp -*-
"""SRTP/SRTCP protection for one DTLS-SRTP association, on pylibsrtp (RFC 3711, RFC 7714)."""

from __future__ import annotations

import os
import struct
import weakref
from typing import Any, Callable, Iterable

import pylibsrtp
from pylibsrtp import Policy, Session
from pylibsrtp._binding import ffi, lib
from twisted.logger import Logger

from voiceedge.transceiver.dtls import SrtpKeys
from voiceedge.wire.errors import WireError
from voiceedge.wire.rtp import RtpError, parse_rtp

try:
    from voiceedge.transceiver import _srtpio
except ImportError:  # not built (no compiler at install time): the python path
    _srtpio = None  # type: ignore[assignment]

__all__ = [
    "MAX_LEARNED_SSRCS",
    "MAX_OFFERED_SSRCS",
    "PacketBudget",
    "RtpFields",
    "SrtpAuthError",
    "SrtpError",
    "SrtpReplayError",
    "SrtpSession",
    "log_srtp_io_backend",
    "srtp_io_backend",
]

# The caller's packets' replay window, in packets. libsrtp shifts the whole
# window on every packet that advances the index (1024 bits cost about 1,600
# instructions a packet). Nothing older than the jitter buffer's window (50
# frames, one second) is of use anyway: 128 is 2.5 s of 20 ms audio and 1.3 s
# at the rare 10 ms ptime, and twice RFC 3711's minimum of 64.
_REPLAY_WINDOW = 128
# Our own packets' index window: libsrtp's smallest. Outbound it only backs
# allow_repeat_tx = False (our indexes only grow), and libsrtp shifts the
# whole window on every packet: 1024 bits cost about 2,000 instructions a
# packet, 64 a sixteenth of that.
_TX_WINDOW = 64
# libsrtp keeps one stream (about 400 bytes, found by a linear search) per SSRC
# it accepts. A caller sends one or two SSRCs (audio, maybe RTX or a separate
# RTCP sender): these bounds keep the search short whatever the caller sends.
MAX_OFFERED_SSRCS = 16
MAX_LEARNED_SSRCS = 4
_RTP_HEADER = 12
_RTCP_HEADER = 8
_SRTCP_INDEX = 4
# libsrtp works in place: one buffer per session, the size of pylibsrtp's, and
# the same bounds on what goes in (room for the trailer protection adds).
_BUFFER_SIZE = 1500
_MAX_RTP = _BUFFER_SIZE - pylibsrtp.SRTP_MAX_TRAILER_LEN
_MAX_RTCP = _BUFFER_SIZE - pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN
_srtp_protect = lib.srtp_protect
_srtp_unprotect = lib.srtp_unprotect
_srtp_protect_rtcp = lib.srtp_protect_rtcp
_srtp_unprotect_rtcp = lib.srtp_unprotect_rtcp
_header_pack = struct.Struct("!BBHII").pack
_header_unpack_from = struct.Struct("!BBHII").unpack_from

#: What :meth:`SrtpSession.read_rtp` returns: payload type, sequence number, timestamp, SSRC, payload.
RtpFields = tuple[int, int, int, int, bytes]

# VOICEEDGE_SRTP_IO=python makes every session protect and parse in Python even
# where the compiled helper (voiceedge.transceiver._srtpio) is built (the tests
# run both paths with it); any other value, or none, means the helper where it is built.
_FORCE_ENV = "VOICEEDGE_SRTP_IO"
# The helper's failure codes, by meaning (see _srtpio.c); parse_rtp's messages for its own.
if _srtpio is not None:
    _ELSEWHERE = _srtpio.CODE_ELSEWHERE
    _TOO_LONG = _srtpio.CODE_TOO_LONG
    _RTP_MESSAGES = {
        _srtpio.CODE_RTP_SHORT: "RTP packet shorter than 12 bytes",
        _srtpio.CODE_RTP_VERSION: "RTP version is not 2",
        _srtpio.CODE_RTP_CSRC: "RTP CSRC list is truncated",
        _srtpio.CODE_RTP_EXTENSION: "RTP header extension is truncated",
        _srtpio.CODE_RTP_PADDING: "RTP padding count is invalid",
    }
    _SRTPIO_ADDRESSES = (
        int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect"))),
        int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_unprotect"))),
    )


def log_srtp_io_backend(log: Logger) -> str:
    """Say in ``log`` which SRTP I/O path sessions take, and why; return it (:func:`srtp_io_backend`)."""
    chosen = srtp_io_backend()
    if chosen == "compiled":
        log.info("transceiver: SRTP and RTP headers in one compiled call each way (voiceedge.transceiver._srtpio)")
    elif _srtpio is None:
        log.warn(
            "transceiver: voiceedge.transceiver._srtpio is not built (no C compiler or Python headers at install):"
            " SRTP and RTP headers in Python (srtp_io python)"
        )
    else:
        log.info("transceiver: SRTP and RTP headers in Python (srtp_io python, {env}=python)", env=_FORCE_ENV)
    return chosen


def srtp_io_backend() -> str:
    """``compiled`` where the helper is built (and not turned off with ``VOICEEDGE_SRTP_IO=python``), else ``python``."""
    if _srtpio is None or os.environ.get(_FORCE_ENV, "") == "python":
        return "python"
    return "compiled"

# Authentication tag length by profile; shorter packets cannot be genuine.
_TAG_LENGTH = {
    Policy.SRTP_PROFILE_AEAD_AES_128_GCM: 16,
    Policy.SRTP_PROFILE_AEAD_AES_256_GCM: 16,
    Policy.SRTP_PROFILE_AES128_CM_SHA1_80: 10,
    Policy.SRTP_PROFILE_AES128_CM_SHA1_32: 4,
}


class SrtpError(WireError):
    """An SRTP/SRTCP packet was rejected; ``reason`` is "replay", "auth", "ssrc" or "malformed"."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SrtpReplayError(SrtpError):
    """The packet index was already seen or is older than the replay window."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("replay", detail)


class SrtpAuthError(SrtpError):
    """The authentication tag did not verify: forged, corrupted or keyed differently."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("auth", detail)


# pylibsrtp raises one Error type with libsrtp's status text as the message.
_ERRORS: list[str] = pylibsrtp.ERRORS
_REPLAY_MESSAGES = frozenset((_ERRORS[9], _ERRORS[10], _ERRORS[26]))
# GCM reports a bad tag as auth_fail, but a cipher failure also means "did not verify".
_AUTH_MESSAGES = frozenset((_ERRORS[7], _ERRORS[8]))


class PacketBudget:
    """A token bucket of packets: ``rate`` a second, bursts up to ``burst``.

    The receive path asks it before decrypting, so a flood costs one
    comparison per packet instead of a decryption.
    """

    __slots__ = ("rate", "burst", "_tokens", "_at", "refused")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None
        self.refused = 0

    def allow(self, now: float) -> bool:
        """Take one packet's token at ``now``; False (and counted) when there is none."""
        at = self._at
        elapsed = 0.0 if at is None or now < at else now - at
        tokens = self._tokens + elapsed * self.rate
        if tokens > self.burst:  # min(), without the call: once per packet
            tokens = self.burst
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            self.refused += 1
            return False
        self._tokens = tokens - 1.0
        return True


def _failure_handler(session: weakref.ref[SrtpSession]) -> Callable[[int, bytes | None], RtpFields]:
    """The helper's ``failed``: the session's :meth:`SrtpSession._io_failed`, through a weak
    reference, so the session and its helper make no cycle (a call's SRTP state is freed when
    the call ends, not at the next garbage collection)."""

    def failed(code: int, packet: bytes | None) -> RtpFields:
        owner = session()
        if owner is None:
            raise SrtpError("malformed", "the SRTP session is gone")
        return owner._io_failed(code, packet)

    return failed


class SrtpSession:
    """Protects what we send with ``keys.local_key`` and unprotects with ``keys.remote_key``.

    Inbound, only a bounded set of SSRCs is accepted: those of the offer's
    ``a=ssrc`` lines (``offered_ssrcs``, at most :data:`MAX_OFFERED_SSRCS`), and
    the first ``max_learned`` others whose first packet authenticates. A
    packet of any other SSRC is refused before any cryptography
    (``SrtpError`` with reason "ssrc"), so a caller cannot grow libsrtp's
    per-stream state or its stream search.

    Counters ``replayed``, ``auth_failed``, ``malformed`` and ``ssrc_refused``
    count rejected packets; each failure raises a subclass of :class:`SrtpError`.

    The media path's RTP goes through :attr:`read_rtp` and :attr:`write_rtp`,
    which also parse and build the RTP header: one call to the compiled
    helper (:mod:`voiceedge.transceiver._srtpio`) per packet each way, or
    the same in Python (``io="python"``, or where the helper is not built).
    Both give the same packets, fields, errors and counts.
    """

    __slots__ = (
        "_tx",
        "_rx",
        "_tx_ctx",
        "_rx_ctx",
        "_cdata",
        "_buffer",
        "_length",
        "_profile",
        "_remote_key",
        "_window",
        "_min_rtp",
        "_min_rtcp",
        "_inbound_ssrcs",
        "_learned",
        "_max_learned",
        "_io",
        "io",
        "read_rtp",
        "write_rtp",
        "__weakref__",
        "replayed",
        "auth_failed",
        "malformed",
        "ssrc_refused",
    )

    def __init__(
        self,
        keys: SrtpKeys,
        replay_window: int = _REPLAY_WINDOW,
        offered_ssrcs: Iterable[int] = (),
        max_learned: int = MAX_LEARNED_SSRCS,
        io: str | None = None,
    ) -> None:
        chosen = io or srtp_io_backend()
        if chosen not in ("compiled", "python"):
            raise ValueError(f"unknown SRTP I/O path {chosen!r}")
        if chosen == "compiled" and _srtpio is None:
            raise ValueError("the compiled SRTP I/O path needs voiceedge.transceiver._srtpio, which is not built")
        self._profile = keys.profile
        self._remote_key = keys.remote_key
        self._window = replay_window
        self._inbound_ssrcs: set[int] = set()
        self._learned = 0
        self._max_learned = max_learned
        try:
            tx_policy = Policy(
                key=keys.local_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=keys.profile
            )
            tx_policy.window_size = _TX_WINDOW
            # Never encrypt two packets under one index: with GCM that reuses the nonce.
            tx_policy.allow_repeat_tx = False
            self._tx = Session(tx_policy)
            # No SSRC_ANY_INBOUND template: libsrtp would clone a stream for
            # every SSRC that authenticates, without bound.
            self._rx = Session()
            for ssrc in list(dict.fromkeys(offered_ssrcs))[:MAX_OFFERED_SSRCS]:
                self._rx.add_stream(self._inbound_policy(ssrc & 0xFFFFFFFF))
                self._inbound_ssrcs.add(ssrc & 0xFFFFFFFF)
        except (pylibsrtp.Error, ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"bad SRTP keys or profile: {exc}") from exc
        # libsrtp called directly, fifty times a second each way: pylibsrtp's
        # Session.protect allocates a length cell per packet and adds two calls.
        # Its sessions still own the srtp_t (and free it); the buffer is ours.
        self._tx_ctx = self._tx._srtp[0]
        self._rx_ctx = self._rx._srtp[0]
        self._cdata = ffi.new("char[]", _BUFFER_SIZE)
        self._buffer = ffi.buffer(self._cdata)
        self._length = ffi.new("int *")
        tag = _TAG_LENGTH.get(keys.profile, 4)
        self._min_rtp = _RTP_HEADER + tag
        self._min_rtcp = _RTCP_HEADER + _SRTCP_INDEX + tag
        self.replayed = 0
        self.auth_failed = 0
        self.malformed = 0
        self.ssrc_refused = 0
        #: Which path :attr:`read_rtp` and :attr:`write_rtp` take: ``compiled`` or ``python``.
        self.io = chosen
        self.read_rtp: Callable[[bytes], RtpFields]
        self.write_rtp: Callable[[int, int, int, int, bytes, bytes], bytes]
        self._io: _srtpio.RtpIo | None
        if chosen == "compiled":
            # The helper holds the pylibsrtp Sessions that own the contexts, for as long as it lives.
            io_ = _srtpio.RtpIo(
                *_SRTPIO_ADDRESSES,
                int(ffi.cast("uintptr_t", self._tx_ctx)),
                int(ffi.cast("uintptr_t", self._rx_ctx)),
                (self._tx, self._rx),
                _failure_handler(weakref.ref(self)),
                self._min_rtp,
                _MAX_RTP,
            )
            io_.accept(self._inbound_ssrcs)
            self._io = io_
            self.read_rtp = io_.read_rtp
            self.write_rtp = io_.write_rtp
        else:
            self._io = None
            self.read_rtp = self._read_rtp
            self.write_rtp = self._write_rtp

    @property
    def inbound_ssrcs(self) -> frozenset[int]:
        """The SSRCs inbound packets may carry: offered, and learned so far."""
        return frozenset(self._inbound_ssrcs)

    def _inbound_policy(self, ssrc: int) -> Policy:
        policy = Policy(
            key=self._remote_key,
            ssrc_type=Policy.SSRC_SPECIFIC,
            ssrc_value=ssrc,
            srtp_profile=self._profile,
        )
        policy.window_size = self._window
        return policy

    def _process(self, packet: bytes, ctx: Any, function: Any, limit: int = _BUFFER_SIZE) -> bytes:
        """Run one libsrtp function over ``packet`` (at most ``limit`` bytes) in the session's buffer."""
        size = len(packet)
        if size > limit:
            self.malformed += 1
            raise SrtpError("malformed", "packet is too long")
        length = self._length
        length[0] = size
        buffer = self._buffer
        buffer[0:size] = packet
        status = function(ctx, self._cdata, length)
        if status:
            raise self._classify_status(status)
        return buffer[0 : length[0]]

    def _unprotect(self, packet: bytes, ssrc: int, rtcp: bool) -> bytes:
        """Unprotect with the stream of ``ssrc``, adding one if the bound allows."""
        function = _srtp_unprotect_rtcp if rtcp else _srtp_unprotect
        if ssrc in self._inbound_ssrcs:
            return self._process(packet, self._rx_ctx, function)
        if self._learned >= self._max_learned:
            self.ssrc_refused += 1
            raise SrtpError("ssrc", f"SSRC {ssrc:#010x} is not one this session accepts")
        rx = self._rx
        try:
            rx.add_stream(self._inbound_policy(ssrc))
        except pylibsrtp.Error as exc:
            raise self._classify(exc) from None
        try:
            plain = self._process(packet, self._rx_ctx, function)
        except SrtpError:
            # Only an SSRC whose packet authenticates takes a place: forged
            # packets cannot use up the bound.
            rx.remove_stream(ssrc)
            raise
        self._inbound_ssrcs.add(ssrc)
        self._learned += 1
        if self._io is not None:
            self._io.accept(self._inbound_ssrcs)
        return plain

    def protect_rtp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTP packet."""
        size = len(packet)
        if size < _RTP_HEADER or packet[0] >> 6 != 2:
            self.malformed += 1
            raise SrtpError("malformed", "not an RTP packet")
        if size > _MAX_RTP:
            self.malformed += 1
            raise SrtpError("malformed", "packet is too long")
        # _process, inline: fifty packets a second per call.
        length = self._length
        length[0] = size
        buffer = self._buffer
        buffer[0:size] = packet
        status = _srtp_protect(self._tx_ctx, self._cdata, length)
        if status:
            raise self._classify_status(status)
        return buffer[0 : length[0]]

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """Verify and decrypt one SRTP packet."""
        size = len(packet)
        if size < self._min_rtp or packet[0] >> 6 != 2:
            self.malformed += 1
            raise SrtpError("malformed", "too short for SRTP")
        ssrc = int.from_bytes(packet[8:12], "big")
        if ssrc not in self._inbound_ssrcs or size > _BUFFER_SIZE:
            return self._unprotect(packet, ssrc, rtcp=False)
        # _process, inline: fifty packets a second per call.
        length = self._length
        length[0] = size
        buffer = self._buffer
        buffer[0:size] = packet
        status = _srtp_unprotect(self._rx_ctx, self._cdata, length)
        if status:
            raise self._classify_status(status)
        return buffer[0 : length[0]]

    def _read_rtp(self, packet: bytes) -> RtpFields:
        """:attr:`read_rtp` in Python: :meth:`unprotect_rtp`, then the header's fields.

        ``SrtpError`` (counted) for a packet that does not verify; ``RtpError``
        for one that verifies but does not parse.
        """
        plain = self.unprotect_rtp(packet)
        if len(plain) >= 12 and plain[0] == 0x80:
            # What parse_rtp would make of it, without an RtpPacket per packet.
            _, second, sequence_number, timestamp, ssrc = _header_unpack_from(plain)
            return second & 0x7F, sequence_number, timestamp, ssrc, plain[12:]
        rtp = parse_rtp(plain)
        return rtp.payload_type, rtp.sequence_number, rtp.timestamp, rtp.ssrc, rtp.payload

    def _write_rtp(
        self, marker_payload_type: int, sequence_number: int, timestamp: int, ssrc: int, extension: bytes, payload: bytes
    ) -> bytes:
        """:attr:`write_rtp` in Python: the header (its X bit set with an ``extension``), then :meth:`protect_rtp`."""
        first = 0x90 if extension else 0x80
        return self.protect_rtp(
            _header_pack(first, marker_payload_type, sequence_number, timestamp, ssrc) + extension + payload
        )

    def _io_failed(self, code: int, packet: bytes | None) -> RtpFields:
        """What the compiled helper does not do itself: count and raise as the Python path does.

        Inbound (``packet`` given), a packet not for its path (an SSRC not yet
        accepted, a length or version it does not take) goes the Python path whole.
        """
        if packet is None:
            if code == _TOO_LONG:
                self.malformed += 1
                raise SrtpError("malformed", "packet is too long")
            raise self._classify_status(code)
        if code == _ELSEWHERE:
            return self._read_rtp(packet)
        message = _RTP_MESSAGES.get(code)
        if message is not None:
            raise RtpError(message)
        raise self._classify_status(code)

    def protect_rtcp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one (compound) RTCP packet."""
        if len(packet) < _RTCP_HEADER or packet[0] >> 6 != 2:
            self.malformed += 1
            raise SrtpError("malformed", "not an RTCP packet")
        return self._process(packet, self._tx_ctx, _srtp_protect_rtcp, _MAX_RTCP)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """Verify and decrypt one SRTCP packet."""
        if len(packet) < self._min_rtcp or packet[0] >> 6 != 2:
            self.malformed += 1
            raise SrtpError("malformed", "too short for SRTCP")
        return self._unprotect(packet, int.from_bytes(packet[4:8], "big"), rtcp=True)

    def _classify_status(self, status: int) -> SrtpError:
        """Count a libsrtp failure status and turn it into our error type."""
        message = _ERRORS[status] if 0 <= status < len(_ERRORS) else f"libsrtp status {status}"
        return self._classify(pylibsrtp.Error(message))

    def _classify(self, exc: Exception) -> SrtpError:
        """Count the failure and turn pylibsrtp's message into our error type."""
        message = str(exc)
        if message in _REPLAY_MESSAGES:
            self.replayed += 1
            return SrtpReplayError(message)
        if message in _AUTH_MESSAGES:
            self.auth_failed += 1
            return SrtpAuthError(message)
        self.malformed += 1
        return SrtpError("malformed", message)
