# -*- test-case-name: tests.test_audio -*-
"""A session's audio both ways: Opus in to PCM frames and speech events, PCM out to Opus frames."""

from __future__ import annotations

import collections
from typing import Callable

from voiceedge.agents.interfaces import AudioFrame
from voiceedge.media.jitter import JitterBuffer
from voiceedge.media.opus import CodecError, OpusDecoder, OpusEncoder
from voiceedge.media.speech import SpeechDetector, SpeechEvent
from voiceedge.transceiver.settings import SpeechSettings

# Enough for an agent to queue a long answer ahead of playout, small enough
# that a runaway agent cannot eat the process: 60 s.
MAX_QUEUED_FRAMES = 3000


class InboundAudio:
    """Caller's Opus packets in; decoded 20 ms frames and speech events out.

    It is the :class:`~voiceedge.transceiver.rtp_receiver.RtpReceiver`'s sink.
    Packets go through a jitter buffer that adds no delay on a clean network
    (in-order packets come straight out) and waits briefly for a missing one
    only once reordering has been seen; a frame that does not come is
    concealed by the decoder.
    """

    def __init__(
        self,
        sample_rate: int,
        speech: SpeechSettings,
        on_frame: Callable[[AudioFrame], None],
        on_speech: Callable[[SpeechEvent], None],
    ) -> None:
        self.sample_rate = sample_rate
        self._jitter = JitterBuffer()
        self._decoder = OpusDecoder(sample_rate)
        self._detector = SpeechDetector(
            sample_rate,
            threshold_db=speech.threshold_db,
            min_speech_ms=speech.min_speech_ms,
            silence_ms=speech.silence_ms,
        )
        self._on_frame = on_frame
        self._on_speech = on_speech
        self.frames_decoded = 0
        self.frames_concealed = 0
        self.decode_errors = 0

    def packet_received(self, sequence_number: int, timestamp: int, payload: bytes, now: float) -> None:
        """One Opus packet arrived."""
        self._jitter.push(sequence_number, timestamp, payload, now)
        self.drain(now)

    def drain(self, now: float) -> None:
        """Decode every frame the jitter buffer releases at ``now``."""
        while (frame := self._jitter.pop(now)) is not None:
            if frame.lost:
                pcm = self._conceal(frame.next_payload)
            else:
                try:
                    pcm = self._decoder.decode(frame.payload)
                    self.frames_decoded += 1
                except CodecError:
                    self.decode_errors += 1
                    pcm = self._conceal(None)
            for event in self._detector.feed(pcm, now):
                self._on_speech(event)
            self._on_frame(AudioFrame(pcm, self.sample_rate, frame.timestamp, now, frame.lost))
        for event in self._detector.poll(now):
            self._on_speech(event)

    def update_speech(self, threshold_db: float, silence_ms: float) -> None:
        """Retune the speech detector (a client's ``turn_detection``)."""
        self._detector.update(
            threshold_db=threshold_db, hysteresis_db=min(3.0, threshold_db), silence_ms=silence_ms
        )

    def _conceal(self, next_payload: bytes | None) -> bytes:
        self.frames_concealed += 1
        if next_payload is not None and self._decoder.supports_fec:
            return self._decoder.decode_fec(next_payload)
        return self._decoder.conceal()

    def deadline(self) -> float | None:
        """When :meth:`drain` is due: the jitter buffer gives up on a missing packet, or
        the speech detector ends a turn because no audio came (a sender in DTX)."""
        jitter = self._jitter.deadline()
        speech = self._detector.deadline()
        if jitter is None:
            return speech
        return jitter if speech is None else min(jitter, speech)

    @property
    def jitter_stats(self) -> object:
        """The jitter buffer's counters."""
        return self._jitter.stats


class OutboundAudio:
    """The agent's PCM in, any length; 20 ms Opus frames out, encoded when taken.

    PCM waits in 20 ms frames and is encoded only by :meth:`pop`, when the
    sender is about to put it on the wire: audio cleared before it is sent
    (barge-in) costs no encode, and the encoder's state never runs ahead of
    what the caller has received.
    """

    def __init__(self, sample_rate: int, complexity: int = 5) -> None:
        self.sample_rate = sample_rate
        self._frame_bytes = sample_rate // 50 * 2
        self._encoder = OpusEncoder(sample_rate, complexity=complexity)
        self._pcm = bytearray()
        self._frames: collections.deque[bytes] = collections.deque()
        self.frames_dropped = 0
        self.frames_encoded = 0

    def add(self, pcm: bytes) -> None:
        """Queue PCM16 mono; odd trailing bytes wait for the rest of their frame."""
        self._pcm += pcm
        size = self._frame_bytes
        while len(self._pcm) >= size:
            chunk = bytes(self._pcm[:size])
            del self._pcm[:size]
            if len(self._frames) >= MAX_QUEUED_FRAMES:
                self.frames_dropped += 1
                continue
            self._frames.append(chunk)

    def pop(self) -> bytes | None:
        """Encode and return the next Opus frame to send, if any."""
        if not self._frames:
            return None
        self.frames_encoded += 1
        return self._encoder.encode(self._frames.popleft())

    def __bool__(self) -> bool:
        return bool(self._frames)

    def queued_ms(self) -> int:
        """Milliseconds of audio waiting, whole frames and the partial one."""
        return len(self._frames) * 20 + len(self._pcm) * 1000 // (2 * self.sample_rate)

    def clear(self) -> int:
        """Drop everything queued; return how many milliseconds that was."""
        dropped = self.queued_ms()
        self._frames.clear()
        self._pcm.clear()
        return dropped
