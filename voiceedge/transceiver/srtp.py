# -*- test-case-name: tests.test_srtp -*-
"""SRTP/SRTCP protection for one DTLS-SRTP association, on pylibsrtp (RFC 3711, RFC 7714)."""

from __future__ import annotations

import pylibsrtp
from pylibsrtp import Policy, Session

from voiceedge.transceiver.dtls import SrtpKeys
from voiceedge.wire.errors import WireError

__all__ = ["SrtpAuthError", "SrtpError", "SrtpReplayError", "SrtpSession"]

_REPLAY_WINDOW = 1024
_RTP_HEADER = 12
_RTCP_HEADER = 8
_SRTCP_INDEX = 4

# Authentication tag length by profile; shorter packets cannot be genuine.
_TAG_LENGTH = {
    Policy.SRTP_PROFILE_AEAD_AES_128_GCM: 16,
    Policy.SRTP_PROFILE_AEAD_AES_256_GCM: 16,
    Policy.SRTP_PROFILE_AES128_CM_SHA1_80: 10,
    Policy.SRTP_PROFILE_AES128_CM_SHA1_32: 4,
}


class SrtpError(WireError):
    """An SRTP/SRTCP packet was rejected; ``reason`` is "replay", "auth" or "malformed"."""

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


class SrtpSession:
    """Protects what we send with ``keys.local_key`` and unprotects with ``keys.remote_key``.

    Counters ``replayed``, ``auth_failed`` and ``malformed`` count rejected
    packets; each failure raises a subclass of :class:`SrtpError`.
    """

    __slots__ = ("_tx", "_rx", "_min_rtp", "_min_rtcp", "replayed", "auth_failed", "malformed")

    def __init__(self, keys: SrtpKeys, replay_window: int = _REPLAY_WINDOW) -> None:
        try:
            tx_policy = Policy(
                key=keys.local_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=keys.profile
            )
            rx_policy = Policy(
                key=keys.remote_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=keys.profile
            )
            for policy in (tx_policy, rx_policy):
                policy.window_size = replay_window
                # Never encrypt two packets under one index: with GCM that reuses the nonce.
                policy.allow_repeat_tx = False
            self._tx = Session(tx_policy)
            self._rx = Session(rx_policy)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise ValueError(f"bad SRTP keys or profile: {exc}") from exc
        tag = _TAG_LENGTH.get(keys.profile, 4)
        self._min_rtp = _RTP_HEADER + tag
        self._min_rtcp = _RTCP_HEADER + _SRTCP_INDEX + tag
        self.replayed = 0
        self.auth_failed = 0
        self.malformed = 0

    def protect_rtp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTP packet."""
        if len(packet) < _RTP_HEADER or packet[0] >> 6 != 2:
            self.malformed += 1
            raise SrtpError("malformed", "not an RTP packet")
        try:
            return self._tx.protect(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise self._classify(exc) from None

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """Verify and decrypt one SRTP packet."""
        if len(packet) < self._min_rtp or packet[0] >> 6 != 2:
            self.malformed += 1
            raise SrtpError("malformed", "too short for SRTP")
        try:
            return self._rx.unprotect(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise self._classify(exc) from None

    def protect_rtcp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one (compound) RTCP packet."""
        if len(packet) < _RTCP_HEADER or packet[0] >> 6 != 2:
            self.malformed += 1
            raise SrtpError("malformed", "not an RTCP packet")
        try:
            return self._tx.protect_rtcp(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise self._classify(exc) from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """Verify and decrypt one SRTCP packet."""
        if len(packet) < self._min_rtcp or packet[0] >> 6 != 2:
            self.malformed += 1
            raise SrtpError("malformed", "too short for SRTCP")
        try:
            return self._rx.unprotect_rtcp(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise self._classify(exc) from None

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
