# -*- test-case-name: tests.test_opus -*-
"""Opus decode/encode between RTP payloads and PCM16 mono, on PyAV's bundled libopus.

Why PyAV (``av``) and not opuslib, measured with ``python bench/codec.py``:

- PyAV is maintained (aiortc builds on it) and its wheel bundles a current
  libopus (1.6.1 in PyAV 18), so a fresh ``pip install`` is enough on any
  machine; opuslib's last release is from 2018 and it needs the system
  ``libopus0`` (Debian bookworm ships 1.3.1).
- Speed is a wash (CPU µs per 20 ms frame, speech-like input, 32 kbit/s, default
  complexity 10; PyAV / opuslib): encode about 200 / 250 at every rate (~1 % of a
  core per stream; complexity 5 costs ~150, 0 ~70); decode 47 / 32 at 16 kHz,
  56 / 55 at 24 kHz, 32 / 64 at 48 kHz.  opuslib wins at 16 kHz only because it
  decodes at the target rate where PyAV resamples from 48 kHz.
- What PyAV costs us: FFmpeg's libopus wrapper always decodes at 48 kHz, so lower
  rates go through swresample (a constant 1 ms delay, which we fill with leading
  zeros so every call returns exactly the samples of its packet), and it always calls
  ``opus_decode`` with ``decode_fec=0``, so **Opus in-band FEC is not reachable**:
  :meth:`OpusDecoder.decode_fec` falls back to concealment
  (:attr:`OpusDecoder.supports_fec` is ``False``).  Packet loss concealment still
  works: a TOC-only Opus packet (one frame of length zero) is how RFC 6716 §3.2.1
  signals a lost or DTX frame, and libopus runs its PLC for it.

PCM is signed 16-bit little-endian mono at the decoder's or encoder's sample rate.
Stereo Opus (some browsers send it) is downmixed by libopus itself, since the
decoder is opened with one channel.  The RTP clock of Opus is always 48 kHz
(RFC 7587 §4.1) whatever the PCM rate: one 20 ms frame advances the RTP timestamp
by :data:`RTP_TIMESTAMP_STEP`.
"""

from __future__ import annotations

import ctypes
import sys
from fractions import Fraction
from typing import ClassVar

import av
import av.error
from av import AudioFrame, AudioResampler, CodecContext, Packet

from voiceedge.wire.errors import WireError

__all__ = [
    "FRAME_MS",
    "RTP_CLOCK_RATE",
    "RTP_TIMESTAMP_STEP",
    "SUPPORTED_RATES",
    "CodecError",
    "OpusDecoder",
    "OpusEncoder",
]

#: PCM sample rates Opus encodes and decodes natively.
SUPPORTED_RATES = (8000, 12000, 16000, 24000, 48000)
#: Opus's RTP clock rate, whatever the PCM rate (RFC 7587 §4.1).
RTP_CLOCK_RATE = 48000
#: The frame length voiceedge sends and expects, in milliseconds.
FRAME_MS = 20
#: RTP timestamp increment of one 20 ms Opus frame.
RTP_TIMESTAMP_STEP = RTP_CLOCK_RATE * FRAME_MS // 1000

_DECODE_RATE = 48000  # FFmpeg's libopus decoder always outputs 48 kHz
_LITTLE_ENDIAN = sys.byteorder == "little"
_MAX_CONCEAL_MS = 120  # the longest an Opus packet can be


class CodecError(WireError):
    """An Opus payload that does not decode, or PCM that does not encode.

    A :class:`~voiceedge.wire.errors.WireError` (so a ``ValueError``): the one type
    the media path catches for hostile or malformed audio.
    """


def _plc_tocs(toc: int) -> tuple[bytes, bytes]:
    """Return TOC-only packets (20 ms, 10 ms) in the mode and bandwidth of ``toc``.

    RFC 6716 §3.1: configs 0-11 are SILK (10/20/40/60 ms), 12-15 hybrid (10/20 ms),
    16-31 CELT (2.5/5/10/20 ms); all have a 10 ms and a 20 ms variant.  Keeping the
    mode, bandwidth and stereo flag of the last real packet keeps the decoder's state
    coherent; the code bits are 0 (one frame), and its empty length means "lost".
    """
    config = toc >> 3
    stereo = toc & 0x04
    if config < 12:
        ten = config & ~3
        twenty = ten + 1
    elif config < 16:
        ten = config & ~1
        twenty = ten + 1
    else:
        twenty = config | 3
        ten = twenty - 1
    return bytes([twenty << 3 | stereo]), bytes([ten << 3 | stereo])


def single_threaded_ffmpeg() -> bool:
    """Make FFmpeg's automatic thread count 1 in this process; whether it could.

    PyAV encodes every frame through an ``AudioResampler`` (libopus takes fixed
    20 ms frames), as our decoder resamples below 48 kHz, and each resampler is
    an FFmpeg filter graph whose thread count is automatic: a pool of threads
    per graph, two per encoder on two cores (more on bigger machines), started
    again with each fresh encoder, to copy 960 samples. ``tests/test_opus.py``
    counts them; 200 encoders took 71 kB of RSS and 2 threads each, 53 kB and no
    thread with the count forced to 1. PyAV has no knob for the graphs it
    makes, so this calls ``av_cpu_force_count(1)`` (what FFmpeg's "auto"
    reads) in the libavutil PyAV loaded, found in ``/proc/self/maps``. Where
    that fails (no such file, another build), nothing changes but the cost.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if "libavutil" in line}
        path = next(p for p in sorted(paths) if p.startswith("/"))
        ctypes.CDLL(path).av_cpu_force_count(1)
    except (OSError, StopIteration, AttributeError):
        return False
    return True


_SINGLE_THREADED = single_threaded_ffmpeg()


def _check_rate(sample_rate: int) -> None:
    if sample_rate not in SUPPORTED_RATES:
        raise CodecError(
            f"Opus sample rate must be one of {SUPPORTED_RATES}, not {sample_rate!r}"
        )


def _pcm_of(frame: AudioFrame) -> bytes:
    """Return the s16 mono samples of ``frame`` (its plane may carry padding)."""
    data = bytes(memoryview(frame.planes[0])[: frame.samples * 2])
    if not _LITTLE_ENDIAN:
        # PyAV's s16 is native-endian; the wire and our API are little-endian.
        import array

        samples = array.array("h", data)
        samples.byteswap()
        data = samples.tobytes()
    return data


class OpusDecoder:
    """Decode Opus RTP payloads to PCM16 mono at ``sample_rate``.

    Every call returns exactly the audio its packet (or concealment) stands for:
    ``sample_rate / 50`` samples for a 20 ms frame.  One decoder per stream: Opus
    decoding is stateful.
    """

    #: Whether :meth:`decode_fec` uses Opus in-band FEC (PyAV cannot: see module doc).
    supports_fec: ClassVar[bool] = False

    __slots__ = (
        "sample_rate",
        "frame_samples",
        "_codec",
        "_resampler",
        "_plc20",
        "_plc10",
        "_pending",
        "_owed",
    )

    def __init__(self, sample_rate: int) -> None:
        _check_rate(sample_rate)
        self.sample_rate = sample_rate
        #: Samples in one 20 ms frame at ``sample_rate``.
        self.frame_samples = sample_rate * FRAME_MS // 1000
        codec = CodecContext.create("libopus", "r")
        codec.sample_rate = _DECODE_RATE
        codec.layout = "mono"
        codec.format = "s16"
        self._codec = codec
        self._resampler: AudioResampler | None = None
        if sample_rate != _DECODE_RATE:
            self._resampler = AudioResampler(format="s16", layout="mono", rate=sample_rate)
        # Until a real packet tells the mode: CELT fullband, mono.
        self._plc20, self._plc10 = _plc_tocs(31 << 3)
        # Resampler output not yet returned, and samples owed to the caller
        # that the resampler still holds (its filter delay).
        self._pending = bytearray()
        self._owed = 0

    def decode(self, payload: bytes) -> bytes:
        """Decode one Opus packet to PCM16 mono little-endian at ``sample_rate``.

        Raise :class:`CodecError` for an empty or corrupt payload; the decoder
        stays usable.
        """
        if not payload:
            # An empty packet would put FFmpeg's decoder into drain mode.
            raise CodecError("empty Opus payload")
        pcm = self._run(payload)
        toc = payload[0]
        if toc >> 3 != self._plc20[0] >> 3 or toc & 0x04 != self._plc20[0] & 0x04:
            self._plc20, self._plc10 = _plc_tocs(toc)
        return pcm

    def conceal(self, samples: int | None = None) -> bytes:
        """Return concealment audio for a lost frame (libopus PLC).

        ``samples`` defaults to one 20 ms frame; it must be a positive multiple of
        10 ms of samples, at most 120 ms.
        """
        step = self.sample_rate // 100
        if samples is None:
            samples = self.frame_samples
        if samples <= 0 or samples % step or samples > step * _MAX_CONCEAL_MS // 10:
            raise CodecError(
                f"can conceal only multiples of 10 ms up to {_MAX_CONCEAL_MS} ms, "
                f"not {samples!r} samples at {self.sample_rate} Hz"
            )
        tens = samples // step
        parts = [self._run(self._plc20) for _ in range(tens // 2)]
        if tens % 2:
            parts.append(self._run(self._plc10))
        return b"".join(parts)

    def decode_fec(self, next_payload: bytes) -> bytes:
        """Return audio for the frame lost just before ``next_payload``.

        With in-band FEC this would decode the redundant copy of the lost frame
        that ``next_payload`` carries.  PyAV cannot reach it (``supports_fec`` is
        False), so this is :meth:`conceal` for one 20 ms frame; call
        :meth:`decode` on ``next_payload`` afterwards as usual.
        """
        return self.conceal(self.frame_samples)

    def _run(self, payload: bytes) -> bytes:
        """Decode ``payload`` at 48 kHz and bring it to ``sample_rate``."""
        try:
            frames = self._codec.decode(Packet(payload))
        except av.error.FFmpegError as e:
            raise CodecError(f"corrupt Opus payload ({len(payload)} bytes): {e}") from None
        resampler = self._resampler
        if resampler is None:
            if len(frames) == 1:
                return _pcm_of(frames[0])
            return b"".join(_pcm_of(frame) for frame in frames)
        pending = self._pending
        for frame in frames:
            # Every Opus frame is a multiple of 2.5 ms, so this divides exactly.
            self._owed += frame.samples * self.sample_rate // _DECODE_RATE
            for out in resampler.resample(frame):
                pending += _pcm_of(out)
        want = self._owed * 2
        if len(pending) < want:
            # Only at the start: the resampler holds back its filter delay.
            pending[:0] = bytes(want - len(pending))
        pcm = bytes(pending[:want])
        del pending[:want]
        self._owed = 0
        return pcm


class OpusEncoder:
    """Encode 20 ms frames of PCM16 mono at ``sample_rate`` to Opus RTP payloads.

    ``bitrate`` is in bits per second (6000-510000); ``complexity`` is libopus's
    0-10 CPU/quality trade-off (``None``: libopus's default, 10).  A positive
    ``packet_loss_percent`` turns on Opus in-band FEC, tuned for that much loss.
    ``application`` is libopus's ``voip`` (speech, the default), ``audio`` or
    ``lowdelay``.  Each payload advances the RTP timestamp by
    :data:`RTP_TIMESTAMP_STEP` (48 kHz clock) whatever ``sample_rate`` is.
    """

    __slots__ = ("sample_rate", "frame_samples", "_frame_bytes", "_codec", "_pts")

    def __init__(
        self,
        sample_rate: int,
        bitrate: int = 32000,
        complexity: int | None = None,
        *,
        packet_loss_percent: int = 0,
        application: str = "voip",
    ) -> None:
        _check_rate(sample_rate)
        if not 6000 <= bitrate <= 510000:
            raise CodecError(f"Opus bitrate must be 6000-510000 bit/s, not {bitrate!r}")
        if complexity is not None and not 0 <= complexity <= 10:
            raise CodecError(f"Opus complexity must be 0-10, not {complexity!r}")
        if not 0 <= packet_loss_percent <= 100:
            raise CodecError(f"packet loss must be 0-100 %, not {packet_loss_percent!r}")
        if application not in ("voip", "audio", "lowdelay"):
            raise CodecError(f"unknown Opus application {application!r}")
        self.sample_rate = sample_rate
        #: Samples in one 20 ms frame: :meth:`encode` takes exactly this many.
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self._frame_bytes = self.frame_samples * 2
        codec = CodecContext.create("libopus", "w")
        codec.sample_rate = sample_rate
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = bitrate
        codec.time_base = Fraction(1, sample_rate)
        options = {"application": application, "frame_duration": str(FRAME_MS)}
        if complexity is not None:
            options["compression_level"] = str(complexity)
        if packet_loss_percent:
            options["fec"] = "1"
            options["packet_loss"] = str(packet_loss_percent)
        codec.options = options
        try:
            codec.open()
        except av.error.FFmpegError as e:
            raise CodecError(f"cannot open the Opus encoder: {e}") from None
        self._codec = codec
        self._pts = 0

    def encode(self, pcm: bytes) -> bytes:
        """Encode exactly one 20 ms frame of PCM16 mono little-endian to one payload."""
        if len(pcm) != self._frame_bytes:
            raise CodecError(
                f"Opus frame must be {self._frame_bytes} bytes "
                f"({FRAME_MS} ms at {self.sample_rate} Hz), not {len(pcm)}"
            )
        if not _LITTLE_ENDIAN:
            import array

            samples = array.array("h", pcm)
            samples.byteswap()
            pcm = samples.tobytes()
        frame = AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.planes[0].update(pcm)
        self._pts += self.frame_samples
        try:
            packets = self._codec.encode(frame)
        except av.error.FFmpegError as e:
            raise CodecError(f"Opus encoding failed: {e}") from None
        if len(packets) != 1:
            raise CodecError(f"Opus encoder returned {len(packets)} packets for one frame")
        return bytes(packets[0])
