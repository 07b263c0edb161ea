# -*- test-case-name: tests.test_rtp_sender -*-
"""The agent's audio on the wire: a paced queue of 20 ms frames turned into RTP packets.

Pacing without added delay. Time is cut into 20 ms *slots* on a grid whose
origin the transceiver gives every sender (its shared tick fires at the start
of each slot). A talkspurt's frames take consecutive slots, one each, and a
frame goes out the moment it is produced unless its slot is still to come:

* A frame produced while its slot is taken (the agent is ahead of real time,
  as a text-to-speech backend is) waits; the transceiver's shared tick sends
  it when its slot comes.
* A frame produced after its slot has passed (the agent is behind: the
  caller's audio arrived in a burst after a network or reactor stall, and an
  echo follows it) goes out at once, stamped with its own slot, with the
  others that are overdue, at most :data:`MAX_CATCH_UP` at a time. So a
  stall costs one burst of late packets, never a delay that stays for the
  rest of the call.
* A gap longer than :data:`MAX_CATCH_UP` slots ends the talkspurt: the next
  frame starts a new one in the current slot, with the marker bit set, so a
  pause in the agent's audio is a pause in the timeline too.

The RTP timestamp of a frame is the start of its slot on the 48 kHz clock.
A source may fill a slot with silence (``b""``): nothing is sent for it, as
with Opus DTX, the sequence numbers stay contiguous, and the next packet
carries the marker bit and the timestamp of its own slot.
When the client offered the MID header extension (RFC 8843 §15), every
packet carries it.

A clean stop. :meth:`RtpSender.stop` (barge-in, a cancel) drops the queue
unencoded and takes from the source the frames that end the talkspurt (a
short fade, then silence: :meth:`AudioSource.cut`). The fade goes out at
once, stamped on the slot after the last one, so the caller's audio ends as
soon as the sender knows it must; the frames after it follow on their slots,
unless new audio comes first, which starts a new talkspurt (marker bit set).

Sans-I/O: every call takes ``now``; nothing here reads a clock or sends.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from collections import deque
from typing import Callable, Literal, Protocol

from voiceedge.transceiver.rtp_stats import SendStatistics

__all__ = [
    "FRAME_SECONDS",
    "MAX_CATCH_UP",
    "AudioSource",
    "PlayoutStarted",
    "PlayoutStopped",
    "RtpSender",
    "StopReason",
    "mid_extension",
]

#: One Opus frame, and one slot of the pacing grid.
FRAME_SECONDS = 0.020
#: RTP timestamp units (48 kHz) per frame.
SAMPLES_PER_FRAME = 960
#: Overdue frames one sender may send at once, and the longest gap (in slots)
#: that is still one talkspurt: enough to recover from a 100 ms stall, few
#: enough not to burst a whole queue at the client.
MAX_CATCH_UP = 5
# A tick that fires exactly at a slot's start must count as that slot, not the
# one before it, whatever the float rounding.
_EPSILON = 1e-6
_EXT_HEADER = struct.Struct("!HH")
_header_pack = struct.Struct("!BBHII").pack


class AudioSource(Protocol):
    """Where the sender takes frames from: a queue of encoded 20 ms frames.

    :class:`voiceedge.transceiver.audio.OutboundAudio` is one (PCM in, Opus
    encoded on :meth:`pop`); a passthrough queue of Opus payloads is another.
    """

    def pop(self) -> bytes | None:
        """The next encoded frame to send; ``b""`` for a slot of silence (nothing sent); ``None`` when empty."""

    def __bool__(self) -> bool:
        """Whether a frame is waiting."""

    def cut(self, ending: bool) -> tuple[int, list[bytes]]:
        """Drop everything queued: the milliseconds dropped, and (if ``ending``: the caller
        hears this talkspurt) the encoded frames that end it cleanly, possibly none."""

    def restart(self) -> None:
        """The talkspurt is over: the next one starts afresh (a new encoder state)."""

    def queued_ms(self) -> int:
        """Milliseconds waiting."""


#: Why a talkspurt ended: the agent had nothing more, or it was cut (the
#: caller barged in, or a cancel or clear).
StopReason = Literal["drained", "stopped", "barge_in"]


@dataclass(frozen=True, slots=True)
class PlayoutStarted:
    """The first packet of a talkspurt went out at ``at``."""

    at: float


@dataclass(frozen=True, slots=True)
class PlayoutStopped:
    """A talkspurt ended: its last packet went out at ``last_sent_at``.

    ``reason`` is ``"drained"`` when the agent had nothing more (decided at
    ``at``, :data:`MAX_CATCH_UP` slots after the last frame), or what
    :meth:`RtpSender.stop` was told when it cut it: ``"barge_in"`` (the caller
    spoke over it) or ``"stopped"`` (a cancel, a clear). A cut's
    ``last_sent_at`` is when its fade went out (``at``), the last packet with
    agent audio in it; ``dropped_ms`` is the queued audio that was never sent.
    """

    at: float
    last_sent_at: float
    reason: StopReason
    dropped_ms: int = 0


def mid_extension(extension_id: int, mid: str) -> bytes:
    """The RTP header extension block carrying ``mid`` (RFC 8285 one- or two-byte form)."""
    value = mid.encode("ascii")
    if not value or len(value) > 255 or not 1 <= extension_id <= 255:
        raise ValueError(f"cannot carry mid {mid!r} as extension {extension_id}")
    if extension_id <= 14 and len(value) <= 16:
        body = bytes([extension_id << 4 | (len(value) - 1)]) + value
        profile = 0xBEDE
    else:
        body = bytes([extension_id, len(value)]) + value
        profile = 0x1000
    body += bytes(-len(body) % 4)
    return _EXT_HEADER.pack(profile, len(body) // 4) + body


class RtpSender:
    """One outgoing RTP stream: pacing, sequence numbers, timestamps, marker, stop.

    ``source`` holds the frames; :meth:`poll` returns the RTP packets
    (unprotected) due at ``now``, or with ``write_rtp`` (an
    :class:`~voiceedge.transceiver.srtp.SrtpSession`'s) the SRTP packets, each
    built and protected in one call (:class:`~voiceedge.transceiver.srtp.SrtpError`
    from it propagates). Events for the conversation side (what the
    caller actually hears) collect in :attr:`events` for the owner to take.
    """

    def __init__(
        self,
        payload_type: int,
        ssrc: int,
        source: AudioSource,
        grid_origin: float,
        *,
        header_extension: bytes = b"",
        sequence_number: int | None = None,
        timestamp_base: int | None = None,
        write_rtp: Callable[[int, int, int, int, bytes, bytes], bytes] | None = None,
    ) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"RTP payload type out of range: {payload_type!r}")
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError(f"RTP SSRC out of range: {ssrc!r}")
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.source = source
        self.grid_origin = grid_origin
        self._extension = header_extension
        self._write_rtp = write_rtp
        self._sequence = (
            int.from_bytes(os.urandom(2), "big") if sequence_number is None else sequence_number
        )
        self._timestamp_base = (
            int.from_bytes(os.urandom(4), "big") if timestamp_base is None else timestamp_base
        )
        self._first_slot: int | None = None
        # The last slot used (a frame sent, or silence), and the last one sent.
        self._last_slot: int | None = None
        self._last_sent_slot: int | None = None
        self._talking = False
        self._resume_marked = False
        # Packets built outside poll() (a cut's fade), and the frames that
        # follow it on their slots.
        self._ready: list[bytes] = []
        self._tail: deque[bytes] = deque()
        self.last_sent_at: float | None = None
        self.first_sent_at: float | None = None
        self.stats = SendStatistics()
        self.events: list[PlayoutStarted | PlayoutStopped] = []

    # -- the grid -------------------------------------------------------------

    def slot_at(self, now: float) -> int:
        """The pacing slot ``now`` falls in."""
        return int((now - self.grid_origin) / FRAME_SECONDS + _EPSILON)

    def rtp_time(self, now: float) -> int | None:
        """The RTP timestamp of the instant ``now`` (for sender reports); ``None`` before the first packet."""
        if self._first_slot is None:
            return None
        elapsed = (now - self.grid_origin) / FRAME_SECONDS - self._first_slot
        return (self._timestamp_base + round(elapsed * SAMPLES_PER_FRAME)) & 0xFFFFFFFF

    # -- state ----------------------------------------------------------------

    @property
    def talking(self) -> bool:
        """Whether a talkspurt is under way: frames queued, or one sent within :data:`MAX_CATCH_UP` slots."""
        return self._talking or bool(self.source)

    def wants_tick(self) -> bool:
        """Whether the shared tick must poll this sender: a backlog, a talkspurt to close, or a cut's tail."""
        return self._talking or bool(self.source) or bool(self._tail)

    def tick_slot(self) -> int | None:
        """The first slot whose tick must poll this sender; ``None`` while no tick is needed.

        ``0`` (every tick) while frames or a cut's tail wait for their slots.
        A talkspurt whose frames all went out as they came needs no tick
        until :data:`MAX_CATCH_UP` slots pass with nothing more, when
        :meth:`poll` ends it: any frame that comes first moves that slot on.
        """
        if self.source or self._tail:
            return 0
        last = self._last_slot
        if self._talking and last is not None:
            return last + MAX_CATCH_UP + 1
        return None

    # -- sending --------------------------------------------------------------

    def poll(self, now: float) -> list[bytes]:
        """The RTP packets due by ``now``, oldest first (see the module docstring)."""
        slot = int((now - self.grid_origin) / FRAME_SECONDS + _EPSILON)  # slot_at, inline
        source = self.source
        last = self._last_slot
        if self._talking and last is not None and slot == last + 1 and not self._ready and not self._tail:
            # A talkspurt going on, its next slot come, nothing else pending (a
            # frame that arrives in time): what the general path below does then.
            payload = source.pop()
            if payload:
                return [self._packet(slot, payload, now)]
            if payload is not None:
                # Silence: the slot passes with nothing sent (_first_slot is set while talking).
                self._last_slot = slot
            return []
        return self.poll_slot(slot, now)

    def poll_slot(self, slot: int, now: float) -> list[bytes]:
        """:meth:`poll` at ``now``, in ``slot``, without its shortcut for a frame in time (tests compare the two)."""
        source = self.source
        packets: list[bytes] = []
        if self._ready:
            packets, self._ready = self._ready, []
        if self._tail:
            if source:
                # New audio: the rest of the ending would only delay it.
                self._tail.clear()
            else:
                assert self._last_slot is not None
                start = self._last_slot + 1
                while start <= slot and self._tail:
                    packets.append(self._packet(start, self._tail.popleft(), now, audio=False))
                    start += 1
        last = self._last_slot
        if self._talking and last is not None and slot - last > MAX_CATCH_UP and not source:
            # Nothing to send for longer than jitter explains: the talkspurt is over.
            self._talking = False
            assert self.last_sent_at is not None
            self.events.append(PlayoutStopped(now, self.last_sent_at, "drained"))
            source.restart()
        if not source:
            return packets
        if self._talking and last is not None:
            # Continuing: the next slot, even one that has passed (catch-up),
            # but never more than MAX_CATCH_UP behind.
            start = max(last + 1, slot - MAX_CATCH_UP + 1)
        else:
            # A new talkspurt: now, or after a cut's fade stamped ahead of now.
            start = slot if last is None else max(slot, last + 1)
        while start <= slot:
            payload = source.pop()
            if payload is None:
                break
            if payload:
                packets.append(self._packet(start, payload, now))
            else:
                # Silence: the slot passes with nothing sent.
                if self._first_slot is None:
                    self._first_slot = start
                self._last_slot = start
            start += 1
        return packets

    def _packet(self, slot: int, payload: bytes, now: float, *, audio: bool = True) -> bytes:
        """The RTP packet of ``payload`` in ``slot``; ``audio`` is False for the frames after a cut's fade."""
        if self._first_slot is None:
            self._first_slot = slot
            self.first_sent_at = now
        marker = False
        if audio:
            sent = self._last_sent_slot
            # A new talkspurt, or the first sound after slots of silence.
            marker = self._resume_marked or not self._talking or (sent is not None and slot != sent + 1)
            self._resume_marked = False
            if not self._talking:
                self._talking = True
                self.events.append(PlayoutStarted(now))
            self.last_sent_at = now
        timestamp = (self._timestamp_base + SAMPLES_PER_FRAME * (slot - self._first_slot)) & 0xFFFFFFFF
        sequence = self._sequence
        self._sequence = (sequence + 1) & 0xFFFF
        self._last_slot = self._last_sent_slot = slot
        # SendStatistics.on_packet_sent, inline: once per packet.
        stats = self.stats
        stats.packet_count = (stats.packet_count + 1) & 0xFFFFFFFF
        stats.octet_count = (stats.octet_count + len(payload)) & 0xFFFFFFFF
        extension = self._extension
        write_rtp = self._write_rtp
        if write_rtp is not None:
            # Header and SRTP in one call: the same header as below, then protected.
            return write_rtp(
                (0x80 if marker else 0) | self.payload_type, sequence, timestamp, self.ssrc, extension, payload
            )
        if extension:
            # The header with its X bit set (RFC 3550 §5.3.1), then the extension block.
            return (
                _header_pack(0x90, (0x80 if marker else 0) | self.payload_type, sequence, timestamp, self.ssrc)
                + extension
                + payload
            )
        # build_rtp_header without its checks: __init__ checked the payload type
        # and SSRC, and the sequence number and timestamp are masked.
        second = (0x80 if marker else 0) | self.payload_type
        return _header_pack(0x80, second, sequence, timestamp, self.ssrc) + payload

    def stop(self, now: float, reason: StopReason = "stopped") -> int:
        """Cut the agent's audio now (barge-in, a cancel); the milliseconds of queued audio dropped.

        When the caller is hearing it, the talkspurt ends cleanly: the
        source's fade is ready for the :meth:`poll` that follows (stamped on
        the slot after the last one, even if that slot has not begun), and
        the frames after it follow on their slots. The next frame of new audio
        starts a new talkspurt, with the marker bit set. ``reason`` goes into
        :class:`PlayoutStopped`.
        """
        talking = self._talking and self._last_slot is not None
        dropped, ending = self.source.cut(talking)
        if talking:
            assert self._last_slot is not None
            self._tail.clear()
            if ending:
                slot = max(self._last_slot + 1, self.slot_at(now))
                self._ready.append(self._packet(slot, ending[0], now))
                self._tail.extend(ending[1:])
            assert self.last_sent_at is not None
            self.events.append(PlayoutStopped(now, self.last_sent_at, reason, dropped))
        self._talking = False
        self._resume_marked = True
        return dropped

    def take_events(self) -> list[PlayoutStarted | PlayoutStopped]:
        """The playout events since the last call."""
        events, self.events = self.events, []
        return events
