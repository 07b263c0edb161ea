# -*- test-case-name: tests.test_rtp_receiver -*-
"""The caller's audio off the wire: SRTP unprotect, checks, statistics, then the audio sink.

One incoming RTP stream: each SRTP packet is first counted against a packet
budget (a flood costs a comparison, not a decryption), then authenticated and decrypted,
parsed, checked (payload type, a well-formed Opus packet of at most 60 ms,
no faster than real time), counted in the RFC 3550 statistics, and handed to
the *sink* (:class:`voiceedge.transceiver.audio.InboundAudio`: jitter buffer,
decode, speech detection), which reports frames and speech events itself.

Sans-I/O: every call takes ``now``; drops are counted in the ``drops``
counter the owner passes in.
"""

from __future__ import annotations

import collections
from typing import Protocol

from voiceedge.transceiver.rtp_stats import ReceiveStatistics
from voiceedge.transceiver.srtp import PacketBudget, SrtpError, SrtpSession
from voiceedge.wire.errors import WireError
from voiceedge.wire.opus import SINGLE_FRAME_SECONDS, packet_duration

__all__ = [
    "AUDIO_BURST",
    "MAX_PACKET_DURATION",
    "RTP_PACKET_BURST",
    "RTP_PACKET_RATE",
    "AudioSink",
    "RtpReceiver",
]

OPUS_CLOCK_RATE = 48000
# The caller's audio is decoded no faster than real time, with this much burst
# (a late reactor, a network hiccup): a peer sending tiny packets that each
# claim 120 ms cannot make us decode without end.
AUDIO_BURST = 1.0
MAX_PACKET_DURATION = 0.06
# Packets a second that may be decrypted, checked before any cryptography.
# Real callers send Opus at 50 packets/s (20 ms frames; Chromium, Firefox,
# Pion, aiortc), 100/s at the rare 10 ms ptime, never more: DTX and FEC
# send fewer or the same. 200/s leaves twice the fastest of them. The burst
# is what a stall releases at once (a Wi-Fi queue, a paused sender catching
# up): 200 packets is 4 s of 20 ms audio. A flood from the caller's address
# then costs at most 200 decryptions a second, whatever its rate.
RTP_PACKET_RATE = 200.0
RTP_PACKET_BURST = 200.0


class AudioSink(Protocol):
    """What takes the checked payloads: a jitter buffer and decoder, or a passthrough."""

    def packet_received(self, sequence_number: int, timestamp: int, payload: bytes, now: float) -> None:
        """One checked Opus payload arrived at ``now``."""

    def deadline(self) -> float | None:
        """When :meth:`drain` is due (a missing packet given up on)."""

    def drain(self, now: float) -> None:
        """Release what is due at ``now``."""


class RtpReceiver:
    """One incoming SRTP audio stream, from authentication to the sink."""

    def __init__(
        self,
        srtp: SrtpSession,
        payload_type: int,
        sink: AudioSink,
        now: float,
        drops: collections.Counter[str] | None = None,
    ) -> None:
        self.srtp = srtp
        self.payload_type = payload_type
        self.sink = sink
        self.drops: collections.Counter[str] = collections.Counter() if drops is None else drops
        self.stats = ReceiveStatistics(OPUS_CLOCK_RATE)
        self.remote_ssrc: int | None = None
        self.first_packet_at: float | None = None
        self.last_packet_at: float | None = None
        self.budget = PacketBudget(RTP_PACKET_RATE, RTP_PACKET_BURST)
        self._credit = AUDIO_BURST
        self._credit_at = now

    def receive(self, data: bytes, now: float) -> bool:
        """Take one SRTP packet; ``True`` if it authenticated (the peer is alive), used or not."""
        drops = self.drops
        if not self.budget.allow(now):
            drops["rtp_over_rate"] += 1
            return False
        try:
            # Unprotect and parse the header: one compiled call where the helper is built.
            payload_type, sequence_number, timestamp, ssrc, payload = self.srtp.read_rtp(data)
        except SrtpError as e:
            drops["srtp_" + e.reason] += 1
            return False
        except WireError:
            # It authenticated, but is not RTP that parses.
            drops["rtp_malformed"] += 1
            return True
        if payload_type != self.payload_type:
            drops["rtp_other_payload"] += 1
            return True
        if payload and not payload[0] & 3:
            # One frame (code 0), what browsers send: packet_duration without the call.
            duration = SINGLE_FRAME_SECONDS[payload[0] >> 3]
        else:
            try:
                duration = packet_duration(payload)
            except WireError:
                drops["rtp_opus_malformed"] += 1
                return True
        if duration > MAX_PACKET_DURATION:
            drops["rtp_opus_too_long"] += 1
            return True
        credit = self._credit + now - self._credit_at
        if credit > AUDIO_BURST:
            credit = AUDIO_BURST
        self._credit_at = now
        if credit < duration - 1e-9:  # fifty 20 ms frames fit one second, whatever the rounding
            self._credit = credit
            drops["rtp_over_real_time"] += 1
            return True
        self._credit = credit - duration
        if self.remote_ssrc != ssrc:
            if self.remote_ssrc is not None:
                self.stats = ReceiveStatistics(OPUS_CLOCK_RATE)
            self.remote_ssrc = ssrc
        self.stats.on_packet(sequence_number, timestamp, now)
        if self.first_packet_at is None:
            self.first_packet_at = now
        self.last_packet_at = now
        self.sink.packet_received(sequence_number, timestamp, payload, now)
        return True

    def deadline(self) -> float | None:
        """When :meth:`handle_timeout` is due."""
        return self.sink.deadline()

    def handle_timeout(self, now: float) -> None:
        """Release frames the jitter buffer held for a packet that did not come."""
        deadline = self.sink.deadline()
        if deadline is not None and deadline <= now:
            self.sink.drain(now)
