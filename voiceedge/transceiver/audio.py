# -*- test-case-name: tests.test_audio -*-
"""A session's audio both ways: Opus in to PCM frames and speech events, PCM out to Opus frames; or Opus both ways (passthrough)."""

from __future__ import annotations

import array
import collections
import dataclasses
import functools
import math
import sys
from typing import Callable, Literal

import numpy as np

from voiceedge.agents.interfaces import AudioFrame, OpusFrame
from voiceedge.media.jitter import JitterBuffer
from voiceedge.media.opus import CodecError, OpusDecoder, OpusEncoder
from voiceedge.media.detection import DetectionSettings, make_speech_detector
from voiceedge.media.speech import SpeechEvent, SpeechStopped
from voiceedge.media.silero_batch import SileroBatcher
from voiceedge.media.timeline import MediaTimeline
from voiceedge.wire.errors import WireError
from voiceedge.wire.opus import SINGLE_FRAME_SECONDS, packet_duration

# Enough for an agent to queue a long answer ahead of playout, small enough
# that a runaway agent cannot eat the process: 60 s.
MAX_QUEUED_FRAMES = 3000
#: libopus complexity of agent audio unless configured. Measured with
#: ``python bench/codec.py --complexity --instructions`` (espeak-ng speech, 48 kHz,
#: 32 kbit/s target): with ``lowdelay`` complexity 5 costs 0.56 M instructions per
#: frame for PESQ-WB 3.67; 7 costs 0.75 M for 3.79; 8-10 0.8 M for 3.96; 1-4
#: 0.36-0.43 M for 3.4. With ``voip``, 5 costs 1.48 M for 3.77 and 10 2.03 M for 4.02.
DEFAULT_COMPLEXITY = 5
#: libopus application of agent audio unless configured: ``lowdelay`` codes
#: with CELT alone, 0.38 of the instructions of ``voip``'s hybrid mode for
#: speech at complexity 5, spending 54 kbit/s for PESQ-WB 3.67 where ``voip``
#: spends 31 for 3.77 (``bench/codec.py --complexity``).
DEFAULT_APPLICATION = "lowdelay"
#: The applications ``[transceiver] opus_application`` accepts.
APPLICATIONS = ("lowdelay", "voip", "audio")
#: A frame of agent audio whose RMS is below this (dBFS) is inaudible: after
#: the first one it is neither encoded nor sent (the caller's jitter buffer
#: plays silence through the gap, as for Opus DTX).
SILENCE_DB = -70.0
# The same as a sum of squares over one 20 ms frame at 48 kHz (scaled per rate).
_SILENCE_MEAN_SQUARE = 32768.0**2 * 10 ** (SILENCE_DB / 10)
_PCM16 = np.dtype("<i2")
#: How a lost caller frame is filled in (``InboundAudio.repairs``' keys):
#: ``fec`` from the next packet's in-band FEC copy, ``plc`` by libopus's
#: concealment (no next packet in time, or it carried no FEC), ``fec_or_plc``
#: the former tried where libopus (before 1.5) cannot tell which it did,
#: ``backend`` left to a passthrough agent's decoder.
REPAIRS = ("fec", "plc", "fec_or_plc", "backend")
#: What :meth:`OutboundAudio.pop` returns for a slot of silence: send nothing.
SILENT = b""
#: How a cut talkspurt ends for the caller's decoder: a fade, a silent frame
#: and an Opus DTX frame (the default: the receiver knows the stream stopped and
#: conceals nothing, measured in Chromium and Firefox: bench/caller_view.py); a
#: fade then encoded silence (the receiver conceals after it, quietly); or, for
#: comparison only, nothing: the decoder conceals the cut word.
StopTail = Literal["silence", "dtx", "abrupt"]
STOP_TAILS: tuple[StopTail, ...] = ("silence", "dtx", "abrupt")


def parse_stop_tail(text: str) -> StopTail:
    """An INI value naming a :data:`StopTail`; ``ValueError`` names the choices."""
    for name in STOP_TAILS:
        if text.strip().lower() == name:
            return name
    raise ValueError(f"must be one of {', '.join(STOP_TAILS)}")


#: The fade that ends a cut talkspurt: short enough to stop at once, long
#: enough not to click.
FADE_MS = 5
#: Encoded silent frames after the fade (``stop_tail = "silence"``): the
#: encoder's look-ahead and the decoder's overlap run out in silence.
SILENCE_FRAMES = 2
#: Inaudible frames at the start of a talkspurt are not sent, up to this many
#: (200 ms): a reply's lead-in is seldom longer, and an agent that streams
#: silence still gets its stream going.
MAX_TRIM_FRAMES = 10
_BIG_ENDIAN = sys.byteorder == "big"
#: A speech deadline met this much late means the event loop was held up, and
#: the caller's packets may be waiting unread: the turn is not ended on the
#: silence until :data:`RECHECK` later (a reactor runs its late timers before it
#: reads its sockets).
LATE_POLL = 0.05
RECHECK = 0.001


class InboundAudio:
    """Caller's Opus packets in; decoded 20 ms frames and speech events out.

    It is the :class:`~voiceedge.transceiver.rtp_receiver.RtpReceiver`'s sink.
    Packets go through a jitter buffer that adds no delay on a clean network
    (in-order packets come straight out) and waits briefly for a missing one
    only once reordering has been seen; a frame that does not come is
    concealed by the decoder. Every frame goes through the call's one speech
    detector (:func:`~voiceedge.media.detection.make_speech_detector`), whose
    events come out before the frame that completed them.

    The detector runs on the audio's own timeline (:class:`MediaTimeline`:
    RTP timestamps anchored to the least-delayed arrival), not on arrival
    times: a backlog read at once after the event loop stalled is the caller
    talking on, not silence. Frames carry that time (``AudioFrame.time``) as
    well as their arrival; speech events carry it as ``time``/``at`` and their
    arrival on the clock as ``arrival``.

    With a Silero ``batcher``, a frame's voice probability comes when the
    batcher has run its window with other calls'. Given ``on_results``, the
    batcher calls it then (once per batch for this call), and the owner calls
    :meth:`drain` at once: the frames waiting for it need no timer of their
    own (:meth:`deadline` leaves them out). Without it, :meth:`deadline` is
    when the batch is due.
    """

    def __init__(
        self,
        sample_rate: int,
        detection: DetectionSettings,
        on_frame: Callable[[AudioFrame], None],
        on_speech: Callable[[SpeechEvent], None],
        repairs: collections.Counter[str] | None = None,
        batcher: SileroBatcher | None = None,
        on_results: Callable[[], None] | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self._batcher = batcher  # the transceiver's: Silero windows run with other calls'
        self._on_results = on_results

        self._jitter = JitterBuffer()
        self._decoder = OpusDecoder(sample_rate)
        self.detection = detection
        self._detector = make_speech_detector(detection, sample_rate, batcher, on_results)
        self._on_frame = on_frame
        self._on_speech = on_speech
        self.timeline = MediaTimeline()
        self._recheck_at: float | None = None
        self.frames_decoded = 0
        self.frames_concealed = 0  # every frame lost or undecodable, however it was filled in
        self.frames_recovered = 0  # of those, decoded from the next packet's in-band FEC
        self.decode_errors = 0
        #: Lost frames by how they were filled in, shared by a process's sessions (:data:`REPAIRS`).
        self.repairs: collections.Counter[str] = collections.Counter() if repairs is None else repairs

    def packet_received(self, sequence_number: int, timestamp: int, payload: bytes, now: float) -> None:
        """One Opus packet arrived."""
        self._jitter.push(sequence_number, timestamp, payload, now)
        self.drain(now)

    def drain(self, now: float) -> None:
        """Decode every frame the jitter buffer releases at ``now``."""
        timeline = self.timeline
        released = False
        while (frame := self._jitter.pop(now)) is not None:
            released = True
            if frame.lost:
                pcm = self._conceal(frame.next_payload)
            else:
                try:
                    pcm = self._decoder.decode(frame.payload)
                    self.frames_decoded += 1
                except CodecError:
                    self.decode_errors += 1
                    pcm = self._conceal(None)
            start = timeline.place(frame.timestamp, now, len(pcm) / 2 / self.sample_rate)
            self._emit(self._detector.feed(pcm, start))
            self._on_frame(AudioFrame(pcm, self.sample_rate, frame.timestamp, now, frame.lost, start))
        if not released and self._recheck_at is None:
            due = self._speech_deadline()
            if due is not None and now - due > LATE_POLL:
                self._recheck_at = now + RECHECK
                return
        self._recheck_at = None
        # Time with no audio, on the timeline: as late as the latest frame came.
        self._emit(self._detector.poll(timeline.media_time(now)))

    def _emit(self, events: list[SpeechEvent]) -> None:
        """Hand on the detector's events, with their time on the clock (for latency metrics)."""
        for event in events:
            self._on_speech(dataclasses.replace(event, arrival=self.timeline.clock_time(event.time)))

    def set_detection(self, settings: DetectionSettings, now: float) -> None:
        """Change the detector's knobs, or the detector (an open turn then ends at ``now``).

        ``ValueError`` for a value the detector refuses; nothing changes then.
        """
        if settings.detector == self.detection.detector:
            self._detector.update(**settings.parameters())
        else:
            detector = make_speech_detector(settings, self.sample_rate, self._batcher, self._on_results)
            if self._detector.speaking:
                media = self.timeline.media_time(now)
                self._on_speech(SpeechStopped(media, media, arrival=now))
            self._detector.close()
            self._detector = detector
        self.detection = settings

    def close(self) -> None:
        """The call ended: its detector lets go of what it holds elsewhere (windows queued in the batcher)."""
        self._detector.close()

    def _conceal(self, next_payload: bytes | None) -> bytes:
        self.frames_concealed += 1
        decoder = self._decoder
        if next_payload is not None and decoder.supports_fec:
            carried = decoder.carries_fec(next_payload)
            if carried is not False:
                if carried:
                    self.frames_recovered += 1
                self.repairs["fec" if carried else "fec_or_plc"] += 1
                return decoder.decode_fec(next_payload)
        self.repairs["plc"] += 1
        return decoder.conceal()

    def deadline(self) -> float | None:
        """When :meth:`drain` is due: the jitter buffer gives up on a missing packet, or
        the speech detector ends a turn because no audio came (a sender in DTX), or
        a late deadline's second look (:data:`LATE_POLL`)."""
        jitter = self._jitter.deadline()
        speech = self._recheck_at if self._recheck_at is not None else self._speech_deadline()
        if jitter is None:
            return speech
        return jitter if speech is None else min(jitter, speech)

    def _speech_deadline(self) -> float | None:
        """When the detector would end the open turn, on the clock."""
        speech = self._detector.deadline()
        return None if speech is None else self.timeline.clock_time(speech)

    @property
    def jitter_stats(self) -> object:
        """The jitter buffer's counters."""
        return self._jitter.stats


def is_inaudible(pcm: bytes) -> bool:
    """Whether a frame of PCM16 little-endian audio is below :data:`SILENCE_DB` RMS."""
    x = np.frombuffer(pcm, dtype=_PCM16).astype(np.float32)
    return float(np.dot(x, x)) <= _SILENCE_MEAN_SQUARE * x.size


class OutboundAudio:
    """The agent's PCM in, any length; 20 ms Opus frames out, encoded when taken.

    PCM waits in 20 ms frames and is encoded only by :meth:`pop`, when the
    sender is about to put it on the wire: audio cleared before it is sent
    (barge-in) costs no encode, and the encoder's state never runs ahead of
    what the caller has received.

    Nothing is encoded that nobody would hear: after one inaudible frame (it
    is encoded and sent, so the caller's decoder and our encoder both end the
    sound the same way), further inaudible frames are :data:`SILENT`: their
    slots pass with nothing sent, as with Opus DTX, until sound comes back.

    A talkspurt cut short (:meth:`cut`) ends the way speech ends, not the way a
    lost packet does: the audio the caller would have heard next is faded out
    over :data:`FADE_MS`, then comes one silent frame and an Opus DTX frame
    (``stop_tail = "dtx"``, the default) or encoded silence (``"silence"``), so
    the caller's decoder plays a fade into silence instead of concealing a word
    cut mid-syllable. Every talkspurt starts from a fresh encoder state
    (:meth:`restart`, ``OPUS_RESET_STATE`` on the one encoder): none opens with
    the last milliseconds of the one before, which the look-ahead still held. ``trim`` drops whole
    inaudible frames at the start of a talkspurt, so a reply's silent lead-in
    is not sent as a delay (at most :data:`MAX_TRIM_FRAMES`).
    """

    def __init__(
        self,
        sample_rate: int,
        complexity: int = DEFAULT_COMPLEXITY,
        *,
        application: str = DEFAULT_APPLICATION,
        stop_tail: StopTail = "dtx",
    ) -> None:
        if stop_tail not in STOP_TAILS:
            raise ValueError(f"stop_tail must be one of {', '.join(STOP_TAILS)}, not {stop_tail!r}")
        if application not in APPLICATIONS:
            raise ValueError(f"application must be one of {', '.join(APPLICATIONS)}, not {application!r}")
        self.sample_rate = sample_rate
        self.complexity = complexity
        self.application = application
        self.stop_tail = stop_tail
        self._frame_bytes = sample_rate // 50 * 2
        self._encoder: OpusEncoder | None = None
        self._fresh = True  # the next frame opens a talkspurt: the encoder starts over
        self._pcm = bytearray()
        self._frames: collections.deque[bytes] = collections.deque()
        self._quiet = False  # the last frame taken was inaudible and was sent
        self._fade = _fade_out(sample_rate)
        self._trimmed = 0  # in this talkspurt's lead-in
        self.frames_dropped = 0
        self.frames_encoded = 0
        self.frames_silent = 0
        self.frames_trimmed = 0
        self.encoder_starts = 0

    def add(self, pcm: bytes, *, trim: bool = False) -> None:
        """Queue PCM16 mono; odd trailing bytes wait for the rest of their frame.

        With ``trim`` (a reply is about to start), whole inaudible frames at
        the head of the audio are dropped until the first one that is not.
        """
        self._pcm += pcm
        size = self._frame_bytes
        trimming = trim and not self._frames
        while len(self._pcm) >= size:
            chunk = bytes(self._pcm[:size])
            del self._pcm[:size]
            if trimming:
                if self._trimmed < MAX_TRIM_FRAMES and is_inaudible(chunk):
                    self._trimmed += 1
                    self.frames_trimmed += 1
                    continue
                trimming = False
            if len(self._frames) >= MAX_QUEUED_FRAMES:
                self.frames_dropped += 1
                continue
            self._frames.append(chunk)

    def pop(self) -> bytes | None:
        """Encode and return the next Opus frame to send; :data:`SILENT` for a slot to skip; ``None`` when empty."""
        if not self._frames:
            return None
        pcm = self._frames.popleft()
        if is_inaudible(pcm):
            if self._quiet:
                self.frames_silent += 1
                return SILENT
            self._quiet = True
        else:
            self._quiet = False
        return self._encode(pcm)

    def _encode(self, pcm: bytes) -> bytes:
        encoder = self._encoder
        if self._fresh:
            if encoder is None:
                encoder = self._encoder = OpusEncoder(
                    self.sample_rate, complexity=self.complexity, application=self.application
                )
            else:
                encoder.reset()
            self._fresh = False
            self.encoder_starts += 1
        assert encoder is not None
        self.frames_encoded += 1
        return encoder.encode(pcm)

    def __bool__(self) -> bool:
        return bool(self._frames)

    def queued_ms(self) -> int:
        """Milliseconds of audio waiting, whole frames and the partial one."""
        return len(self._frames) * 20 + len(self._pcm) * 1000 // (2 * self.sample_rate)

    def restart(self) -> None:
        """The talkspurt is over: the next frame is encoded as by a fresh encoder (reset when needed)."""
        self._fresh = True
        self._quiet = False
        self._trimmed = 0

    def cut(self, ending: bool) -> tuple[int, list[bytes]]:
        """Drop everything queued, unencoded; the milliseconds dropped, and the frames that end the talkspurt.

        With ``ending`` (the caller is hearing this talkspurt), those frames are
        the next 20 ms faded out over :data:`FADE_MS` and then silence, as
        ``stop_tail`` says, all from the encoder that made the frames before
        them. The next talkspurt starts from a fresh encoder either way.
        """
        dropped = self.queued_ms()
        if self._frames:
            following = self._frames[0]
        else:
            following = bytes(self._pcm[: self._frame_bytes])
        self._frames.clear()
        self._pcm.clear()
        frames: list[bytes] = []
        if ending and not self._fresh and self.stop_tail != "abrupt":
            following += bytes(self._frame_bytes - len(following))
            samples = array.array("h", following)
            if _BIG_ENDIAN:
                samples.byteswap()
            faded = array.array("h", map(_scale, samples, self._fade))
            if _BIG_ENDIAN:
                faded.byteswap()
            frames.append(self._encode(faded.tobytes()))
            silence = bytes(self._frame_bytes)
            for _ in range(SILENCE_FRAMES if self.stop_tail == "silence" else 1):
                frames.append(self._encode(silence))
            if self.stop_tail == "dtx":
                # RFC 6716 §3.1: a TOC byte with one frame of length zero; the
                # decoder treats it as DTX (comfort noise after silence: silence).
                frames.append(bytes([frames[-1][0] & 0xFC]))
        self.restart()
        return dropped, frames

    def clear(self) -> int:
        """Drop everything queued without an ending; return how many milliseconds that was."""
        return self.cut(False)[0]


@functools.lru_cache(maxsize=None)
def _fade_out(sample_rate: int) -> tuple[float, ...]:
    """Gains for one 20 ms frame: a half-cosine from 1 to 0 over FADE_MS, then 0.

    One per rate for the process (13 kB at 48 kHz), not one per call.
    """
    n = sample_rate * FADE_MS // 1000
    ramp = [0.5 + 0.5 * math.cos(math.pi * (i + 1) / (n + 1)) for i in range(n)]
    return tuple(ramp + [0.0] * (sample_rate // 50 - n))


def _scale(sample: int, gain: float) -> int:
    return int(sample * gain)


# OpusFrame(payload, rtp_timestamp, arrival), once per caller frame of a passthrough call: a
# frozen dataclass's __init__ sets each field through object.__setattr__, which costs about
# twice the frame's own trip through the jitter buffer; its slots' descriptors set them directly.
# The fields are checked here, so a new one cannot be left unset.
if [field.name for field in dataclasses.fields(OpusFrame)] != ["payload", "rtp_timestamp", "arrival", "lost"]:
    raise TypeError("OpusFrame's fields changed: update _opus_frame")
_new_object = object.__new__
_set_payload = getattr(OpusFrame, "payload").__set__
_set_rtp_timestamp = getattr(OpusFrame, "rtp_timestamp").__set__
_set_arrival = getattr(OpusFrame, "arrival").__set__
_set_lost = getattr(OpusFrame, "lost").__set__


def _opus_frame(payload: bytes, rtp_timestamp: int, arrival: float) -> OpusFrame:
    """``OpusFrame(payload, rtp_timestamp, arrival)`` (not lost), built without its __init__."""
    frame: OpusFrame = _new_object(OpusFrame)
    _set_payload(frame, payload)
    _set_rtp_timestamp(frame, rtp_timestamp)
    _set_arrival(frame, arrival)
    _set_lost(frame, False)
    return frame


class InboundOpus:
    """Caller's Opus packets in; the same payloads out, in order, for a passthrough agent.

    The :class:`~voiceedge.transceiver.rtp_receiver.RtpReceiver`'s sink when
    the agent speaks Opus: the jitter buffer as for :class:`InboundAudio`, no
    decode and no speech detection. A frame that does not come is reported
    lost (an empty payload) for the backend's decoder to conceal.
    """

    def __init__(
        self, on_frame: Callable[[OpusFrame], None], repairs: collections.Counter[str] | None = None
    ) -> None:
        self._jitter = JitterBuffer()
        #: When :meth:`drain` is due (the jitter buffer gives up on a missing packet): the
        #: buffer's own method, bound here, as Session.deadline asks it once per packet.
        self.deadline: Callable[[], float | None] = self._jitter.deadline
        self._on_frame = on_frame
        self.frames_passed = 0
        self.frames_concealed = 0  # lost, left to the backend's decoder
        self.repairs: collections.Counter[str] = collections.Counter() if repairs is None else repairs

    def packet_received(self, sequence_number: int, timestamp: int, payload: bytes, now: float) -> None:
        """One Opus packet arrived."""
        jitter = self._jitter
        if jitter.push_next(sequence_number, timestamp, payload, now):
            # In order with nothing held (nearly every packet): what drain() would pass on.
            self.frames_passed += 1
            self._on_frame(_opus_frame(payload, timestamp, now))
            return
        jitter.push(sequence_number, timestamp, payload, now)
        self.drain(now)

    def drain(self, now: float) -> None:
        """Pass on every frame the jitter buffer releases at ``now``."""
        while (frame := self._jitter.pop(now)) is not None:
            if frame.lost:
                self.frames_concealed += 1
                self.repairs["backend"] += 1
                self._on_frame(OpusFrame(b"", frame.timestamp, now, True))
            else:
                self.frames_passed += 1
                self._on_frame(_opus_frame(frame.payload, frame.timestamp, now))

    def close(self) -> None:
        """The call ended: nothing is held elsewhere."""


class OutboundOpus:
    """The agent's Opus packets in, one 20 ms frame each; the same out, paced by the sender.

    The passthrough :class:`~voiceedge.transceiver.rtp_sender.AudioSource`:
    nothing is encoded. A payload that is not one well-formed 20 ms Opus
    packet is refused (:meth:`add` returns ``False``): the sender's timeline
    has one 20 ms slot per frame.
    """

    def __init__(self) -> None:
        self._frames: collections.deque[bytes] = collections.deque()
        self.frames_dropped = 0

    def add(self, payload: bytes) -> bool:
        """Queue one Opus packet; ``False`` (not queued) unless it is 20 ms of well-formed Opus."""
        if payload and not payload[0] & 3:
            # One frame (code 0), what encoders send: packet_duration without the call.
            duration = SINGLE_FRAME_SECONDS[payload[0] >> 3]
        else:
            try:
                duration = packet_duration(payload)
            except WireError:
                return False
        if abs(duration - 0.02) > 1e-9:
            return False
        if len(self._frames) >= MAX_QUEUED_FRAMES:
            self.frames_dropped += 1
            return True
        self._frames.append(bytes(payload))
        return True

    def pop(self) -> bytes | None:
        """The next packet to send, if any."""
        return self._frames.popleft() if self._frames else None

    def __bool__(self) -> bool:
        return bool(self._frames)

    def queued_ms(self) -> int:
        """Milliseconds of audio waiting."""
        return len(self._frames) * 20

    def cut(self, ending: bool) -> tuple[int, list[bytes]]:
        """Drop everything queued; the milliseconds dropped, and no ending (encoded audio cannot be faded)."""
        dropped = self.queued_ms()
        self._frames.clear()
        return dropped, []

    def restart(self) -> None:
        """Nothing to restart: the agent's encoder is its own."""

    def clear(self) -> int:
        """Drop everything queued; return how many milliseconds that was."""
        return self.cut(False)[0]
